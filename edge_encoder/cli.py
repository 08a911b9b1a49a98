"""``icm edge``: run an edge encoder for one camera."""

from __future__ import annotations

import argparse
import signal

from icm_codec.commands import CommandTable
from icm_codec.configflags import add_config_flags, config_from_args
from icm_rpc.cli_common import add_common_flags, apply_logging, metrics_port, tls_files

from .config import ENV_PREFIX, EdgeConfig

__all__ = ["COMMANDS"]

COMMANDS = CommandTable()
command = COMMANDS.command


def _configure(p: argparse.ArgumentParser) -> None:
    # every EdgeConfig field that is a flag comes from its declaration (edge_encoder/config.py)
    add_config_flags(p, EdgeConfig, env_prefix=ENV_PREFIX)
    p.add_argument("--exit-when-done", action="store_true",
                   help="exit once the source ends and every frame is acked")
    add_common_flags(p, 9101)


@command("edge", "run an edge encoder: capture, encode, stream base layers to the cloud",
         _configure)
def _edge(args: argparse.Namespace) -> int:
    from .service import EdgeService

    apply_logging(args)
    cfg = config_from_args(EdgeConfig, args, env_prefix=ENV_PREFIX, tls=tls_files(args),
                           metrics_port=metrics_port(args), threads=args.threads)
    if not cfg.source:
        raise ValueError("--source is required (a video file, image folder, camera index or "
                         "rtsp:// URL)")
    edge = EdgeService(cfg)

    def on_signal(signum, frame):
        edge.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with edge:
        print(f"icm edge: camera {cfg.camera_id} -> {cfg.cloud}" + (
            f", metrics on :{edge.metrics_server.port}/metrics" if cfg.metrics_port is not None
            else ""), flush=True)
        edge.run(keep_running=not args.exit_when_done)
    return 0
