"""Flags both services share (TLS, metrics, logging), so they read the same everywhere."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .logs import setup_logging
from .tls import TLSFiles

__all__ = ["add_common_flags", "apply_logging", "env_default", "metrics_port", "name_list",
           "tls_files"]


def env_default(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def name_list(value: str | None) -> list[str]:
    """A comma-separated flag value as names; empty or ``none`` means no names at all."""
    if not value or value.strip().lower() == "none":
        return []
    return [v.strip() for v in value.split(",") if v.strip()]


def add_common_flags(p: argparse.ArgumentParser, metrics_port: int) -> None:
    g = p.add_argument_group("TLS (PEM files; see `icm certs`)")
    g.add_argument("--tls-ca", default=env_default("ICM_TLS_CA"),
                   help="CA certificate that verifies the peer [$ICM_TLS_CA]")
    g.add_argument("--tls-cert", default=env_default("ICM_TLS_CERT"),
                   help="this side's certificate [$ICM_TLS_CERT]")
    g.add_argument("--tls-key", default=env_default("ICM_TLS_KEY"),
                   help="this side's private key [$ICM_TLS_KEY]")
    p.add_argument("--metrics-port", type=int,
                   default=int(env_default("ICM_METRICS_PORT", str(metrics_port))),
                   help=f"Prometheus /metrics port, -1 for none (default {metrics_port}) "
                        "[$ICM_METRICS_PORT]")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--log-level", default=env_default("ICM_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"],
                   help="log verbosity [$ICM_LOG_LEVEL]")
    p.add_argument("--log-format", default=env_default("ICM_LOG_FORMAT", "text"),
                   choices=["text", "json"],
                   help="json: one object per line, for log collectors [$ICM_LOG_FORMAT]")


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
