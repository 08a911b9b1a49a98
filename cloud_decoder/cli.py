"""``icm cloud`` (the service) and ``icm analyst`` (its command-line client)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from icm_codec.commands import CommandTable
from icm_rpc.cli_common import (
    add_common_flags,
    apply_logging,
    env_default,
    metrics_port,
    name_list,
    tls_files,
)

from . import defaults

__all__ = ["COMMANDS"]

COMMANDS = CommandTable()
command = COMMANDS.command


# -- icm cloud -------------------------------------------------------------------------------
def _cloud_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", default=env_default("ICM_LISTEN", "127.0.0.1:50051"),
                   help="address for edges (and analysts); a non-loopback address needs TLS "
                        "(or --insecure) [$ICM_LISTEN]")
    p.add_argument("--analyst-listen", default=env_default("ICM_ANALYST_LISTEN", ""),
                   help="separate analyst address (TLS without client certificates) "
                        "[$ICM_ANALYST_LISTEN]")
    p.add_argument("--db", default=env_default("ICM_CLOUD_DB", defaults.DB),
                   help="SQLite path or sqlite:/// URL, or postgresql://... [$ICM_CLOUD_DB]")
    p.add_argument("--decoder", choices=["codec", "noop"], default="codec",
                   help="noop: check containers only (service-overhead benchmark)")
    p.add_argument("--device", default=env_default("ICM_DEVICE", "cpu"),
                   help="cpu or cuda [$ICM_DEVICE]")
    p.add_argument("--detectors", default=env_default("ICM_DETECTORS", "yolo11n"),
                   help="comma-separated detector names or .pt paths, or 'none' "
                        "[$ICM_DETECTORS]")
    p.add_argument("--weights-dir", default=env_default("ICM_DETECTOR_DIR"),
                   help="folder with <name>.pt detector weights [$ICM_DETECTOR_DIR]")
    p.add_argument("--conf", type=float, default=0.25, help="detection score threshold")
    p.add_argument("--adapted", action="append", default=[], metavar="DIR",
                   help="folder of adapted detectors (icm adapt-detector), searched before "
                        "$ICM_ADAPTED_PATH and the shipped ones; frames of a base model with "
                        "one are analysed by it (repeatable)")
    p.add_argument("--no-adapted", action="store_true",
                   help="serve the stock detector weights for every frame")
    p.add_argument("--no-mtls", action="store_true",
                   help="with TLS: do not require edge client certificates")
    p.add_argument("--max-batch", type=int, default=32, help="frames per decode batch")
    p.add_argument("--thumbnail-width", type=int,
                   default=int(env_default("ICM_THUMBNAIL_WIDTH", "256")),
                   help="keep a JPEG thumbnail this wide with each frame, for the web console "
                        "(about 7 KB at 256; 0: none, made when first asked) "
                        "[$ICM_THUMBNAIL_WIDTH]")
    p.add_argument("--instance", default=env_default("ICM_INSTANCE", ""),
                   help="this instance's name (default host:port) [$ICM_INSTANCE]")
    p.add_argument("--advertise", default=env_default("ICM_ADVERTISE", ""),
                   help="analyst address other cloud instances use to reach this one (several "
                        "instances on one PostgreSQL database) [$ICM_ADVERTISE]")
    p.add_argument("--insecure", action="store_true", default=_flag("ICM_INSECURE"),
                   help="allow plaintext edge streams and an analyst API without a token on "
                        "non-loopback addresses (refused otherwise) [$ICM_INSECURE]")
    p.add_argument("--heartbeat-s", type=float, default=2.0,
                   help="edges send a heartbeat this often when idle; a stream silent for 5 "
                        "intervals is closed (default 2)")
    r = p.add_argument_group("retention per camera (0: unbounded; oldest first, every minute)")
    r.add_argument("--frame-retention-s", type=float,
                   default=float(env_default("ICM_FRAME_RETENTION_S", "0")),
                   help="delete frames captured longer ago [$ICM_FRAME_RETENTION_S]")
    r.add_argument("--max-camera-frames-mb", type=float,
                   default=float(env_default("ICM_MAX_CAMERA_FRAMES_MB", "0")),
                   help="base-layer megabytes kept per camera [$ICM_MAX_CAMERA_FRAMES_MB]")
    r.add_argument("--human-view-retention-s", type=float,
                   default=float(env_default("ICM_HUMAN_VIEW_RETENTION_S", "0")),
                   help="drop cached human views of frames captured longer ago "
                        "[$ICM_HUMAN_VIEW_RETENTION_S]")
    r.add_argument("--max-camera-human-views-mb", type=float,
                   default=float(env_default("ICM_MAX_CAMERA_HUMAN_VIEWS_MB", "0")),
                   help="cached human-view megabytes kept per camera "
                        "[$ICM_MAX_CAMERA_HUMAN_VIEWS_MB]")
    o = p.add_argument_group("operations (docs/operations.md)")
    o.add_argument("--max-connection-age-s", type=float,
                   default=float(env_default("ICM_MAX_CONNECTION_AGE_S", "0")),
                   help="end each connection after about this long (0: never), so edge streams "
                        "rebalance over instances added since [$ICM_MAX_CONNECTION_AGE_S]")
    o.add_argument("--max-workers", type=int,
                   default=int(env_default("ICM_MAX_WORKERS", "128")),
                   help="RPC worker threads: each edge stream holds one, 4 are kept back "
                        "(default 128) [$ICM_MAX_WORKERS]")
    o.add_argument("--edge-stats-s", type=float,
                   default=float(env_default("ICM_EDGE_STATS_S", "10")),
                   help="edges send their counters this often, re-exported on /metrics "
                        "(0: never) [$ICM_EDGE_STATS_S]")
    add_common_flags(p, 9100)


def _operations(args: argparse.Namespace) -> dict:
    """CloudConfig fields of the operations flags."""
    if args.max_workers < 8:
        raise ValueError("--max-workers must be at least 8")
    return {"max_connection_age_s": args.max_connection_age_s,
            "max_workers": args.max_workers, "edge_stats_s": args.edge_stats_s}


def _flag(name: str) -> bool:
    return (env_default(name, "") or "").strip().lower() in ("1", "true", "yes", "on")


@command("cloud", "run the cloud decoder: ingest base layers, analytics, analyst API",
         _cloud_configure)
def _cloud(args: argparse.Namespace) -> int:
    import os

    from .server import CloudConfig, serve

    apply_logging(args)
    if not 0 <= args.thumbnail_width <= 4096:
        raise ValueError("--thumbnail-width is 0 (none) to 4096 pixels")
    token = os.environ.get("ICM_ANALYST_TOKEN", "")
    if not token:
        print("icm cloud: warning: ICM_ANALYST_TOKEN is not set: the analyst API is open",
              file=sys.stderr)
    serve(CloudConfig(listen=args.listen, analyst_listen=args.analyst_listen, db=args.db,
                      decoder=args.decoder, device=args.device,
                      detectors=name_list(args.detectors), weights_dir=args.weights_dir,
                      detector_conf=args.conf, analyst_token=token, tls=tls_files(args),
                      mtls=not args.no_mtls, metrics_port=metrics_port(args),
                      max_batch=args.max_batch, instance=args.instance,
                      thumbnail_width=args.thumbnail_width,
                      advertise=args.advertise, threads=args.threads, insecure=args.insecure,
                      heartbeat_s=args.heartbeat_s, frame_retention_s=args.frame_retention_s,
                      max_camera_frames_mb=args.max_camera_frames_mb,
                      human_view_retention_s=args.human_view_retention_s,
                      max_camera_human_views_mb=args.max_camera_human_views_mb,
                      adapted_dirs=args.adapted, use_adapted=not args.no_adapted,
                      **_operations(args)))
    return 0


# -- icm analyst -----------------------------------------------------------------------------
def _analyst_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cloud", default=env_default("ICM_CLOUD", "localhost:50051"),
                   help="cloud analyst address [$ICM_CLOUD]")
    p.add_argument("--tls-ca", default=env_default("ICM_TLS_CA"),
                   help="CA of the cloud's cert [$ICM_TLS_CA]")
    p.add_argument("--server-name", default="", help="TLS name to expect from the cloud")
    p.add_argument("--timeout", type=float, default=60.0)
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("cameras", help="list cameras and their state")
    f = sub.add_parser("frames", help="list stored frames")
    f.add_argument("--camera", default="")
    f.add_argument("--class-name", default="", help="only frames with this detected class")
    f.add_argument("--limit", type=int, default=20)
    for name, help_text in (("frame", "one frame's record (and machine image)"),
                            ("human", "the human view of a frame (from the edge)")):
        g = sub.add_parser(name, help=help_text)
        g.add_argument("camera")
        g.add_argument("frame_id", type=int)
        g.add_argument("-o", "--output", help="write the image (PNG) here")
    w = sub.add_parser("watch", help="print live detections")
    w.add_argument("--camera", default="")
    w.add_argument("--class-name", default="")
    s = sub.add_parser("settings", help="change a camera's settings")
    s.add_argument("camera")
    s.add_argument("--base-model", default="", help="switch the base rate point")
    s.add_argument("--fps", type=float, default=0.0)


def _human_state(frame) -> str:
    """FrameRecord.enhancement in words: can a human view of this frame be had?"""
    from icm_rpc import pb

    return pb.EnhancementState.Name(frame.enhancement).removeprefix("ENHANCEMENT_").lower()


def _adapted(frame) -> str:
    """The adapted weights that analysed a frame, if any (stock weights go unmentioned)."""
    used = [r.weights for r in frame.analysed_by if r.adapted]
    return f"  [adapted: {', '.join(used)}]" if used else ""


@command("analyst", "query the cloud: cameras, frames, detections, human views", _analyst_configure)
def _analyst(args: argparse.Namespace) -> int:
    import os

    import grpc

    from icm_rpc.tls import TLSFiles

    from .client import AnalystClient, detection_summary

    tls = TLSFiles(ca=Path(args.tls_ca)) if args.tls_ca else None
    client = AnalystClient(args.cloud, os.environ.get("ICM_ANALYST_TOKEN", ""), tls,
                           args.server_name, args.timeout)
    try:
        if args.action == "cameras":
            for c in client.cameras():
                print(f"{c.camera_id:20s} {'online ' if c.online else 'offline'} "
                      f"{c.width}x{c.height} {c.base_model_id:20s} frames {c.frames_stored} "
                      f"(last {c.last_frame_id}) on {c.instance}")
        elif args.action == "frames":
            for fr in client.frames(args.camera, args.class_name, args.limit):
                print(f"{fr.camera_id} {fr.frame_id:8d} {fr.bpp:.4f} bpp {fr.base_bytes:7d} B  "
                      f"{detection_summary(fr)}{_adapted(fr)}")
        elif args.action == "frame":
            r = client.frame(args.camera, args.frame_id, image=bool(args.output))
            print(json.dumps({"frame_id": r.frame.frame_id, "bpp": r.frame.bpp,
                              "human_view": _human_state(r.frame),
                              "base_model_id": r.frame.base_model_id,
                              "analysed_by": [[a.model, a.weights, a.adapted]
                                              for a in r.frame.analysed_by],
                              "detections": [[d.class_name, round(d.score, 3), list(d.box)]
                                             for d in r.frame.detections]}))
            if args.output:
                Path(args.output).write_bytes(r.machine_png)
        elif args.action == "human":
            r = client.human_view(args.camera, args.frame_id)
            print(f"human view: {r.enhancement_bytes} enhancement bytes, total "
                  f"{r.total_bpp:.4f} bpp{' (cached)' if r.cached else ''}")
            if args.output:
                Path(args.output).write_bytes(r.png)
        elif args.action == "watch":
            for fr in client.watch(args.camera, args.class_name):
                print(f"{fr.camera_id} {fr.frame_id:8d} {fr.bpp:.4f} bpp  {detection_summary(fr)}",
                      flush=True)
        elif args.action == "settings":
            client.change_settings(args.camera, args.base_model, args.fps)
            print("sent")
    except grpc.RpcError as e:
        print(f"icm analyst: {e.code().name}: {e.details()}", file=sys.stderr)
        return 2
    finally:
        client.close()
    return 0
