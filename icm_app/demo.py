"""``icm demo``: the whole system on one machine, on a real video.

It uses the cloud, the edge and the console together, so it belongs to the application shell
above them, not to any one service.

Starts a cloud decoder and one edge encoder (in this process, on loopback sockets), streams
the video, prints each frame's detections and bitrate as the cloud stores it, then asks for
the human view of the busiest frame and writes its machine and human images. The web console
(``icm console``) runs beside them; its login link (with a fresh token) is printed first.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from icm_codec.commands import Command, CommandTable
from icm_codec.configflags import add_env_flag
from icm_rpc.cli_common import name_list

__all__ = ["COMMANDS", "run_demo"]

COMMANDS = CommandTable()


def _check_inputs(args: argparse.Namespace, detectors: list[str]) -> None:
    if not Path(args.video).is_file():
        raise ValueError(f"video not found: {args.video} (pass --video PATH; the project's "
                         "reference clip is ../shared/data/video/vtest.avi)")
    if detectors:
        from analytics import resolve_weights
        from analytics.errors import WeightsNotFoundError

        for name in detectors:
            try:
                resolve_weights(name, args.weights_dir, allow_download=False)
            except WeightsNotFoundError as e:
                raise ValueError(
                    f"{e}\n  detector weights are not downloaded at run time: put {name}.pt in "
                    "a folder and pass --weights-dir DIR (here: ../shared/assets/detectors), "
                    "or run with --detectors none") from e


def _start_console(args: argparse.Namespace, cloud_port: int, analyst_token: str):
    """The web console in this process, or None (``--console-port -1``, or not installed)."""
    if args.console_port < 0:
        return None
    try:
        from console import ConsoleConfig, ConsoleServer, login_url, new_token
    except ImportError as e:
        print(f"console not started ({e.name} is not installed: pip install -e '.[console]')",
              flush=True)
        return None
    token = new_token()
    server = ConsoleServer(ConsoleConfig(cloud=f"127.0.0.1:{cloud_port}",
                                         analyst_token=analyst_token, admin_token=token),
                           host=args.console_host, port=args.console_port).start()
    print(f"web console: {login_url(server.url, token)}", flush=True)
    return server


def run_demo(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from cloud_decoder import CloudConfig, CloudServer
    from cloud_decoder.client import AnalystClient, detection_summary
    from edge_encoder import EdgeConfig, EdgeService
    from icm_rpc.logs import setup_logging

    setup_logging("warning")
    detectors = name_list(args.detectors)
    _check_inputs(args, detectors)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mport = None if args.metrics_port < 0 else args.metrics_port
    print(f"starting cloud (detectors: {', '.join(detectors) or 'none'}) ...", flush=True)
    import secrets

    analyst_token = secrets.token_urlsafe(16)
    cloud = CloudServer(CloudConfig(listen=f"127.0.0.1:{args.port}", db=str(out / "cloud.sqlite3"),
                                    detectors=detectors, weights_dir=args.weights_dir,
                                    metrics_port=mport, instance="demo-cloud",
                                    analyst_token=analyst_token)).start()
    console = _start_console(args, cloud.port, analyst_token)
    edge = EdgeService(EdgeConfig(camera_id="demo-cam", cloud=f"127.0.0.1:{cloud.port}",
                                  source=args.video, frames=args.frames,
                                  spool_dir=out / "edge-spool",
                                  metrics_port=None if mport is None else mport + 1)).start()
    print(f"cloud on 127.0.0.1:{cloud.port}"
          + (f", metrics http://127.0.0.1:{cloud.metrics_server.port}/metrics (cloud), "
             f"http://127.0.0.1:{edge.metrics_server.port}/metrics (edge)" if mport is not None
             else ""), flush=True)
    client = AnalystClient(f"127.0.0.1:{cloud.port}", analyst_token, timeout=300)
    bar = tqdm(total=args.frames, desc="frames stored", unit="frame", file=sys.stdout)
    seen: list = []

    def watch() -> None:
        try:
            for fr in client.watch("demo-cam"):
                seen.append(fr)
                tqdm.write(f"frame {fr.frame_id:5d}  {fr.base_bytes:6d} B  {fr.bpp:.4f} bpp  "
                           f"{detection_summary(fr)}", file=sys.stdout)
                bar.update(1)
        except Exception:  # the stream ends when the demo closes the channel
            pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    try:
        captured = edge.capture()
        edge.wait_drained(timeout=600)
        wall = time.perf_counter() - t0
        time.sleep(0.3)
        bar.close()
        records = client.frames("demo-cam", limit=10000)
        fresh = [r for r in records if r.frame_id in {f.frame_id for f in seen}] or records
        if not fresh:
            print("no frames were stored", file=sys.stderr)
            return 1
        best = max(fresh, key=lambda r: (len(r.detections), r.frame_id))
        machine = client.frame("demo-cam", best.frame_id, image=True)
        human = client.human_view("demo-cam", best.frame_id)
        mpath = out / f"frame{best.frame_id}_machine.png"
        hpath = out / f"frame{best.frame_id}_human.png"
        mpath.write_bytes(machine.machine_png)
        hpath.write_bytes(human.png)
        bpp = sum(r.bpp for r in fresh) / len(fresh)
        print(f"\n{captured} frames in {wall:.1f} s ({captured / wall:.2f} frames/s end to end), "
              f"base layer {bpp:.4f} bpp on average")
        print(f"frame {best.frame_id}: {detection_summary(best)}")
        print(f"  machine image ({best.bpp:.4f} bpp) -> {mpath}")
        print(f"  human image ({human.total_bpp:.4f} bpp base + enhancement) -> {hpath}")
        if console is not None:
            print(f"  in the web console: {console.url}/cameras/demo-cam/frames/{best.frame_id}",
                  flush=True)
        if args.linger > 0:
            print(f"services stay up for {args.linger:.0f} s (Ctrl-C to stop)", flush=True)
            time.sleep(args.linger)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        client.close()
        if console is not None:
            console.stop()
        edge.stop()
        cloud.stop()
    return 0


def _demo_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--video", default="../shared/data/video/vtest.avi", help="video to stream")
    p.add_argument("--frames", type=int, default=30, help="frames to stream (default 30)")
    add_env_flag(p, "--weights-dir", env="ICM_DETECTOR_DIR", default="../shared/assets/detectors",
                 help="folder with detector weights")
    p.add_argument("--detectors", default="yolo11n", help="comma-separated, or 'none'")
    p.add_argument("--out", default="out/demo", help="database, spool and images go here")
    p.add_argument("--port", type=int, default=0, help="cloud port (0: any free port)")
    p.add_argument("--metrics-port", type=int, default=9100,
                   help="cloud /metrics port (the edge's is the next one)")
    p.add_argument("--linger", type=float, default=0.0,
                   help="keep the services (and /metrics) up this many seconds at the end")
    p.add_argument("--console-port", type=int, default=0,
                   help="web console port (0: any free port, -1: no console)")
    p.add_argument("--console-host", default="127.0.0.1",
                   help="web console address (default: this machine only)")


COMMANDS["demo"] = Command(
    _demo_configure, run_demo,
    "cloud + edge on this machine: stream a video, detect, fetch a human view")
