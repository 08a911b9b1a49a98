"""``icm edge``: run an edge encoder for one camera."""

from __future__ import annotations

import argparse
import signal

from icm_codec.cli import command
from icm_rpc.cli_common import add_common_flags, apply_logging, env_default, metrics_port, tls_files


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--camera-id", default=env_default("ICM_CAMERA_ID"),
                   help="this camera's id (must match its client certificate) [$ICM_CAMERA_ID]")
    p.add_argument("--cloud", default=env_default("ICM_CLOUD", "localhost:50051"),
                   help="cloud decoder address host:port [$ICM_CLOUD]")
    p.add_argument("--source", default=env_default("ICM_SOURCE"),
                   help="video file, image folder, camera index or rtsp:// URL [$ICM_SOURCE]")
    p.add_argument("--fps", type=float, default=0.0, help="frame-rate limit (0: none)")
    p.add_argument("--loop", action="store_true", help="replay a file or folder forever")
    p.add_argument("--frames", type=int, default=0, help="stop after N frames (0: no limit)")
    p.add_argument("--spool-dir", default=env_default("ICM_SPOOL_DIR", "edge-spool"),
                   help="durable spool of unacked frames and retained layers [$ICM_SPOOL_DIR]")
    p.add_argument("--model", help="base model package (path, id or digest; default shipped)")
    p.add_argument("--enhancement", help="enhancement model package (default shipped; "
                                         "'none' for no enhancement layers)")
    p.add_argument("--enhancement-mode", choices=["lazy", "eager"], default="lazy",
                   help="lazy: keep the raw frame, encode when asked; eager: encode at capture")
    p.add_argument("--retention-s", type=float, default=3600.0,
                   help="keep frames for enhancement requests this long (default 3600)")
    p.add_argument("--max-retained-mb", type=float, default=1024.0)
    p.add_argument("--max-spool-mb", type=float, default=256.0,
                   help="bound on unacked base frames; the oldest are dropped (and counted)")
    p.add_argument("--server-name", default="", help="TLS name to expect from the cloud")
    p.add_argument("--health-listen", default=env_default("ICM_HEALTH_LISTEN", ""),
                   help="serve gRPC health checks here, e.g. 0.0.0.0:50052 [$ICM_HEALTH_LISTEN]")
    p.add_argument("--stall-s", type=float,
                   default=float(env_default("ICM_STALL_S", "10")),
                   help="no frame from the source for this long: capture stalled (health "
                        "NOT_SERVING, a log line, a metric) [$ICM_STALL_S]")
    p.add_argument("--max-backoff-s", type=float,
                   default=float(env_default("ICM_MAX_BACKOFF_S", "30")),
                   help="longest wait between reconnects to the cloud [$ICM_MAX_BACKOFF_S]")
    p.add_argument("--exit-when-done", action="store_true",
                   help="exit once the source ends and every frame is acked")
    add_common_flags(p, 9101)


@command("edge", "run an edge encoder: capture, encode, stream base layers to the cloud",
         _configure)
def _edge(args: argparse.Namespace) -> int:
    from .service import EdgeConfig, EdgeService

    apply_logging(args)
    if not args.camera_id:
        raise ValueError("--camera-id is required (or set ICM_CAMERA_ID)")
    if not args.source:
        raise ValueError("--source is required (a video file, image folder, camera index or "
                         "rtsp:// URL)")
    cfg = EdgeConfig(camera_id=args.camera_id, cloud=args.cloud, source=args.source,
                     max_fps=args.fps, loop=args.loop, frames=args.frames,
                     spool_dir=args.spool_dir, base_model=args.model,
                     enhancement_model="" if args.enhancement == "none" else args.enhancement,
                     enhancement_mode=args.enhancement_mode, retention_s=args.retention_s,
                     max_retained_mb=args.max_retained_mb, max_spool_mb=args.max_spool_mb,
                     tls=tls_files(args), server_name=args.server_name,
                     metrics_port=metrics_port(args), health_listen=args.health_listen,
                     threads=args.threads, stall_s=args.stall_s,
                     max_backoff_s=args.max_backoff_s)
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
