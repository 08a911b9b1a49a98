"""Flags both services share (TLS, metrics, logging), so they read the same everywhere."""

from __future__ import annotations

import argparse
from pathlib import Path

from icm_codec.configflags import add_env_flag

from .logs import setup_logging
from .tls import TLSFiles

__all__ = ["add_common_flags", "add_logging_flags", "apply_logging", "metrics_port",
           "name_list", "tls_files"]


def name_list(value: str | None) -> list[str]:
    """A comma-separated flag value as names; empty or ``none`` means no names at all."""
    if not value or value.strip().lower() == "none":
        return []
    return [v.strip() for v in value.split(",") if v.strip()]


def add_common_flags(p: argparse.ArgumentParser, metrics_port: int) -> None:
    g = p.add_argument_group("TLS (PEM files; see `icm certs`)")
    add_env_flag(g, "--tls-ca", env="ICM_TLS_CA",
                 help="CA certificate that verifies the peer")
    add_env_flag(g, "--tls-cert", env="ICM_TLS_CERT", help="this side's certificate")
    add_env_flag(g, "--tls-key", env="ICM_TLS_KEY", help="this side's private key")
    add_env_flag(p, "--metrics-port", env="ICM_METRICS_PORT", type=int, default=metrics_port,
                 help="Prometheus /metrics port, -1 for none")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    add_logging_flags(p)


def add_logging_flags(p: argparse.ArgumentParser) -> None:
    add_env_flag(p, "--log-level", env="ICM_LOG_LEVEL", default="info",
                 choices=["debug", "info", "warning", "error"], help="log verbosity")
    add_env_flag(p, "--log-format", env="ICM_LOG_FORMAT", default="text",
                 choices=["text", "json"], help="json: one object per line, for log collectors")


def tls_files(args: argparse.Namespace) -> TLSFiles:
    def path(v: str | None) -> Path | None:
        return Path(v) if v else None

    files = TLSFiles(path(args.tls_ca), path(args.tls_cert), path(args.tls_key))
    if bool(files.cert) != bool(files.key):
        raise ValueError("--tls-cert and --tls-key go together")
    return files


def apply_logging(args: argparse.Namespace) -> None:
    setup_logging(args.log_level, args.log_format)


def metrics_port(args: argparse.Namespace) -> int | None:
    return None if args.metrics_port < 0 else args.metrics_port
