"""``icm cloud`` (the service) and ``icm analyst`` (its command-line client)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from icm_codec.commands import CommandTable
from icm_codec.configflags import add_config_flags, add_env_flag, config_from_args
from icm_rpc.cli_common import add_common_flags, apply_logging, metrics_port, tls_files

from .config import ENV_PREFIX, CloudConfig

__all__ = ["COMMANDS"]

COMMANDS = CommandTable()
command = COMMANDS.command


# -- icm cloud -------------------------------------------------------------------------------
def _cloud_configure(p: argparse.ArgumentParser) -> None:
    # every CloudConfig field that is a flag comes from its declaration (cloud_decoder/config.py)
    add_config_flags(p, CloudConfig, env_prefix=ENV_PREFIX)
    add_common_flags(p, 9100)


@command("cloud", "run the cloud decoder: ingest base layers, analytics, analyst API",
         _cloud_configure)
def _cloud(args: argparse.Namespace) -> int:
    import os

    from .server import serve

    apply_logging(args)
    if not 0 <= args.thumbnail_width <= 4096:
        raise ValueError("--thumbnail-width is 0 (none) to 4096 pixels")
    if args.max_workers < 8:
        raise ValueError("--max-workers must be at least 8")
    token = os.environ.get("ICM_ANALYST_TOKEN", "")
    if not token:
        print("icm cloud: warning: ICM_ANALYST_TOKEN is not set: the analyst API is open",
              file=sys.stderr)
    serve(config_from_args(CloudConfig, args, env_prefix=ENV_PREFIX, analyst_token=token,
                           tls=tls_files(args), metrics_port=metrics_port(args),
                           threads=args.threads))
    return 0


# -- icm analyst -----------------------------------------------------------------------------
def _analyst_configure(p: argparse.ArgumentParser) -> None:
    add_env_flag(p, "--cloud", env="ICM_CLOUD", default="localhost:50051",
                 help="cloud analyst address")
    add_env_flag(p, "--tls-ca", env="ICM_TLS_CA", help="CA of the cloud's cert")
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
