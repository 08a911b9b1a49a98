"""Soak test (a script, not a CI test; tests/test_soak.py runs a short one): many simulated
cameras stream for minutes into one cloud process; prints a table.

Each simulated camera is the edge's real streaming half: its own durable spool
(:class:`edge_encoder.spool.Spool`) and stream (:class:`edge_encoder.link.EdgeLink`, with
heartbeats, acks, reconnects), fed pre-encoded base layers of the real surveillance clip at a
fixed rate, so that 50 cameras fit in one process without 50 encoders. The cloud is a real
``icm cloud`` process (SQLite, one thread), with the no-op decoder or the real codec.

Measured per run: stored frames/s; capture-to-stored latency p50/p99 (from each row's capture
and commit times, one clock); the cloud's resident memory after warm-up, at the end, and its
peak; frames lost (captured but never stored, after a drain) and stored twice (the primary key
forbids it; counted anyway).

    python scripts/soak.py --cameras 50 --minutes 10 --decoder noop --fps 2
    python scripts/soak.py --cameras 50 --minutes 10 --decoder codec --fps 0.05
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _layers(video: str | None, size: tuple[int, int], n: int = 16) -> list[bytes]:
    """Base layers of the clip's first frames at ``size`` (a synthetic scene without one)."""
    from PIL import Image

    from icm_codec import ScalableCodec
    from icm_codec.registry import default_package

    frames: list[np.ndarray] = []
    if video and Path(video).is_file():
        import cv2

        cap = cv2.VideoCapture(video)
        while len(frames) < n:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        cap.release()
    if not frames:
        yy, xx = np.mgrid[0:size[1], 0:size[0]]
        frames = [np.stack([(xx + 7 * i) % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8)
                  for i in range(n)]
    codec = ScalableCodec.load(default_package("base"))
    return [codec.encode_base(np.asarray(Image.fromarray(f).resize(size)), frame_id=i + 1)
            for i, f in enumerate(frames)]


class _Camera:
    """A spool and a real EdgeLink, fed layers at a fixed rate by the soak's clock."""

    def __init__(self, name: str, target: str, folder: Path) -> None:
        from edge_encoder.link import EdgeLink
        from edge_encoder.metrics import EdgeMetrics
        from edge_encoder.spool import Spool
        from icm_rpc.backoff import Backoff

        self.name = name
        self.spool = Spool(folder / f"{name}.sqlite3", name, max_retained_bytes=0)
        self.metrics = EdgeMetrics()
        self.link = EdgeLink(name, target, self.spool, None, self.metrics,  # type: ignore[arg-type]
                             backoff=Backoff(maximum=2.0))
        self.captured = 0

    def capture(self, layer: bytes) -> None:
        fid = self.spool.next_frame_id()
        self.spool.add(fid, time.time_ns() // 1000, layer)
        self.captured = fid
        self.link.notify()

    def close(self) -> None:
        self.link.stop()
        self.spool.close()


def run_soak(*, cameras: int = 50, seconds: float = 600.0, fps: float = 2.0,
             decoder: str = "noop", video: str | None = None, size: tuple[int, int] = (384, 288),
             warmup_s: float = 10.0, drain_s: float = 300.0, work: Path | None = None,
             quiet: bool = False) -> dict:
    """One soak run; returns its figures (the table's row)."""
    layers = _layers(video, size)
    tmp = tempfile.TemporaryDirectory(prefix="icm-soak-", dir=work)
    folder = Path(tmp.name)
    port = _free_port()
    db = folder / "cloud.sqlite3"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = (folder / "cloud.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "icm_codec.cli", "cloud", "--listen", f"127.0.0.1:{port}",
         "--db", str(db), "--decoder", decoder, "--detectors", "none", "--metrics-port", "-1",
         "--threads", "1", "--log-level", "warning"], cwd=REPO, env=env, stdout=log,
        stderr=subprocess.STDOUT)
    cams: list[_Camera] = []
    try:
        _wait_serving(port, proc)
        cams = [_Camera(f"soak-{k:03d}", f"127.0.0.1:{port}", folder) for k in range(cameras)]
        for c in cams:
            c.link.start()
        period = 1.0 / fps
        t0 = time.monotonic()
        rss_start = None
        # cameras start spread over one period, then each captures every `period` seconds
        due = [t0 + period * k / cameras for k in range(cameras)]
        i = 0
        while time.monotonic() - t0 < seconds:
            k = min(range(cameras), key=due.__getitem__)
            delay = due[k] - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            cams[k].capture(layers[i % len(layers)])
            i += 1
            due[k] += period
            if rss_start is None and time.monotonic() - t0 >= warmup_s:
                rss_start = _rss_mb(proc.pid)
        t_end = time.monotonic()
        deadline = t_end + drain_s
        while time.monotonic() < deadline and any(c.spool.pending_stats()[0] for c in cams):
            time.sleep(0.5)
        pending = sum(c.spool.pending_stats()[0] for c in cams)
        rss_end, rss_peak = _rss_mb(proc.pid), _rss_mb(proc.pid, "VmHWM")
        captured = {c.name: c.captured for c in cams}
        reconnects = sum(int(c.metrics.reconnects._value.get()) for c in cams)
        alive = proc.poll() is None
    finally:
        for c in cams:
            c.close()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT camera_id, frame_id, capture_us, stored_us FROM frames "
                            "WHERE capture_us > 0").fetchall()
    stored: dict[str, set[int]] = {}
    twice = 0
    lat: list[float] = []
    for cam, fid, cap_us, st_us in rows:
        ids = stored.setdefault(cam, set())
        twice += fid in ids
        ids.add(fid)
        lat.append((st_us - cap_us) / 1e3)
    lost = sum(len(set(range(1, n + 1)) - stored.get(cam, set())) for cam, n in captured.items())
    lat.sort()
    frames = sum(captured.values())
    out = {"decoder": decoder, "cameras": cameras, "fps_per_camera": fps,
           "seconds": round(seconds), "frame": f"{size[0]}x{size[1]}",
           "captured": frames, "stored": len(rows),
           "stored_per_s": round(len(rows) / (t_end - t0), 1),
           "p50_ms": round(lat[len(lat) // 2], 1) if lat else None,
           "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1) if lat else None,
           "rss_start_mb": round(rss_start or float("nan")), "rss_end_mb": round(rss_end),
           "rss_peak_mb": round(rss_peak), "lost": lost, "stored_twice": twice,
           "left_pending": pending, "reconnects": reconnects, "cloud_alive": alive}
    if not quiet:
        print(json.dumps(out), flush=True)
    tmp.cleanup()
    return out


def _wait_serving(port: int, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            try:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the cloud process did not start") from None
                threading.Event().wait(0.2)


COLUMNS = [("decoder", "decoder"), ("cameras", "cameras"), ("fps_per_camera", "fps/camera"),
           ("seconds", "seconds"), ("frame", "frame"), ("stored", "frames stored"),
           ("stored_per_s", "frames/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
           ("rss_start_mb", "RSS start MB"), ("rss_end_mb", "RSS end MB"),
           ("rss_peak_mb", "peak MB"), ("lost", "lost"), ("stored_twice", "stored twice")]


def table(rows: list[dict]) -> str:
    head = "| " + " | ".join(t for _, t in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(str(r[k]) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cameras", type=int, default=50)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--fps", type=float, default=2.0, help="frames/s per camera")
    ap.add_argument("--decoder", choices=["noop", "codec"], default="noop")
    ap.add_argument("--video", default=str(REPO.parent / "shared/data/video/vtest.avi"))
    ap.add_argument("--size", default="384x288", help="frame size WxH")
    ap.add_argument("--work", default=None, help="folder for spools and the database")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    row = run_soak(cameras=args.cameras, seconds=args.minutes * 60, fps=args.fps,
                   decoder=args.decoder, video=args.video, size=(w, h),
                   work=Path(args.work) if args.work else None)
    print(table([row]))
    ok = row["lost"] == 0 and row["stored_twice"] == 0 and row["cloud_alive"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
