"""Cloud service benchmark (a script, not a test): prints a table.

N simulated cameras stream pre-encoded base layers of the real surveillance clip to a cloud
process over loopback gRPC. Measured: stored frames/s, p50/p99 capture-to-ack latency (the
cloud acks only after the frame is committed, so this bounds capture-to-stored), and the
cloud process's CPU and peak memory, with

- the no-op decoder (container check + database only: what the service itself costs), and
- the real decoder + detector, sent one frame at a time, compared with the time that decode +
  detection take on their own in this process (the service's overhead), and that run's
  capture-to-ack time split by the cloud's own clocks (its Prometheus metrics): decode,
  detection, commit, the rest of the ingest batch (container check, thumbnail, duplicate
  lookup) and what lies outside the ingest worker (gRPC both ways, the queue, the ack).

    python scripts/bench_cloud.py --video ../shared/data/video/vtest.avi \
        --weights-dir ../shared/assets/detectors [--cameras 8] [--seconds 20]
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from icm_rpc import pb, pb_grpc

REPO = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def _frames(video: str, n: int) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(video)
    out = []
    while len(out) < n:
        ok, bgr = cap.read()
        if not ok:
            break
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    if not out:
        raise SystemExit(f"cannot read frames from {video}")
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CloudProcess:
    def __init__(self, args: list[str], tmp: Path, metrics: bool = False) -> None:
        self.port = _free_port()
        self.metrics_port = _free_port() if metrics else -1
        cmd = [sys.executable, "-m", "icm_app", "cloud", "--listen",
               f"127.0.0.1:{self.port}", "--db", str(tmp / f"cloud-{self.port}.sqlite3"),
               "--metrics-port", str(self.metrics_port), "--log-level", "warning", *args]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL)
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + 120
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while True:
                try:
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        raise SystemExit("the cloud process did not start") from None
                    time.sleep(0.2)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def samples(self) -> dict[str, float]:
        """The cloud's metrics now: sample name -> value, summed over label sets."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _camera(port: int, name: str, layers: list[bytes], stop_at: float, window: int,
            lat: list[float], counts: list[int], one_at_a_time: bool = False,
            limit: int = 0) -> None:
    """One simulated camera: stream frames, keep at most ``window`` unacked, time the acks."""
    sent_at: dict[int, float] = {}
    cond = threading.Condition()
    state = {"acked": 0, "sent": 0}

    def requests():
        yield pb.EdgeMessage(hello=pb.Hello(camera_id=name))
        i = 0
        while time.monotonic() < stop_at and (not limit or i < limit):
            with cond:
                room = 1 if one_at_a_time else window
                while state["sent"] - state["acked"] >= room and time.monotonic() < stop_at:
                    cond.wait(0.1)
            i += 1
            now = time.time()
            sent_at[i] = now
            state["sent"] = i
            yield pb.EdgeMessage(frame=pb.BaseFrame(frame_id=i, capture_time_us=int(now * 1e6),
                                                    layer=layers[i % len(layers)]))
        with cond:
            while state["acked"] < state["sent"]:
                cond.wait(0.1)

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        for msg in pb_grpc.EdgeLinkStub(ch).Connect(requests()):
            if msg.WhichOneof("body") != "ack":
                continue
            now = time.time()
            with cond:
                for fid in range(state["acked"] + 1, msg.ack.frame_id + 1):
                    lat.append(now - sent_at.pop(fid))
                counts.append(msg.ack.frame_id - state["acked"])
                state["acked"] = msg.ack.frame_id
                cond.notify_all()


_RUNS = itertools.count(1)


def run_load(cloud: CloudProcess, layers: list[bytes], cameras: int, seconds: float,
             window: int, one_at_a_time: bool = False, limit: int = 0) -> dict[str, float]:
    """Every run streams as cameras of its own: frame ids restart at 1 for each camera, and a
    camera name used before (the warm-up's) would make them re-sends, acked as duplicates
    without being decoded or stored."""
    run = next(_RUNS)
    lat: list[float] = []
    counts: list[int] = []
    cpu0 = cloud.cpu_seconds()
    t0 = time.monotonic()
    threads = [threading.Thread(target=_camera, args=(cloud.port, f"sim{run}-{k}", layers,
                                                      t0 + seconds, window, lat, counts,
                                                      one_at_a_time, limit))
               for k in range(cameras)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    mean = sum(lat) / len(lat) if lat else float("nan")
    lat.sort()
    return {"frames": len(lat), "fps": len(lat) / wall, "mean_ms": 1e3 * mean,
            "p50_ms": 1e3 * lat[len(lat) // 2] if lat else float("nan"),
            "p99_ms": 1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
            "cpu": (cloud.cpu_seconds() - cpu0) / wall, "rss_mb": cloud.peak_rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", default=str(REPO.parent / "shared/data/video/vtest.avi"))
    ap.add_argument("--weights-dir", default=str(REPO.parent / "shared/assets/detectors"))
    ap.add_argument("--detector", default="yolo11n")
    ap.add_argument("--cameras", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--real-frames", type=int, default=12,
                    help="frames sent one at a time through the real decoder")
    args = ap.parse_args()

    import torch

    from analytics import Detector
    from icm_codec import ScalableCodec
    from icm_codec.registry import default_package

    torch.set_num_threads(1)
    codec = ScalableCodec.load(default_package("base"))
    frames = _frames(args.video, max(8, args.real_frames))
    layers = [codec.encode_base(f, frame_id=i) for i, f in enumerate(frames, 1)]
    pixels = frames[0].shape[0] * frames[0].shape[1]
    bpp = statistics.mean(8 * len(b) / pixels for b in layers)
    print(f"{len(layers)} pre-encoded base layers of {args.video} "
          f"({frames[0].shape[1]}x{frames[0].shape[0]}, {bpp:.3f} bpp, "
          f"{statistics.mean(map(len, layers)) / 1024:.1f} KiB)\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cloud = CloudProcess(["--decoder", "noop", "--detectors", "none"], Path(tmp))
        try:
            run_load(cloud, layers, 1, 2.0, args.window)  # warm-up
            for cams in sorted({1, args.cameras}):
                r = run_load(cloud, layers, cams, args.seconds, args.window)
                rows.append((f"no-op decoder, {cams} cameras", r))
        finally:
            cloud.stop()

        # the real thing: decode + detect, one frame in flight, versus the same work alone
        det = Detector(args.detector, weights_dir=args.weights_dir)
        alone = []
        for b in layers[: args.real_frames]:
            t = time.perf_counter()
            det.detect([codec.decode_machine(b)])
            alone.append(time.perf_counter() - t)
        cloud = CloudProcess(["--detectors", args.detector, "--weights-dir", args.weights_dir,
                              "--threads", "1"], Path(tmp), metrics=True)
        try:
            run_load(cloud, layers, 1, 60, 1, one_at_a_time=True, limit=2)  # warm-up
            before = cloud.samples()
            r = run_load(cloud, layers, 1, 600, 1, one_at_a_time=True, limit=args.real_frames)
            after = cloud.samples()
            rows.append((f"codec + {args.detector}, 1 in flight", r))
        finally:
            cloud.stop()

    print(f"| {'run':34s} | frames | frames/s | p50 ms | p99 ms | cloud CPU cores | "
          "cloud peak RSS MB |")
    print(f"|{'-' * 36}|--------|----------|--------|--------|-----------------|"
          "------------------|")
    for name, r in rows:
        print(f"| {name:34s} | {r['frames']:6d} | {r['fps']:8.1f} | {r['p50_ms']:6.1f} | "
              f"{r['p99_ms']:6.1f} | {r['cpu']:15.2f} | {r['rss_mb']:16.0f} |")
    med = statistics.median(alone)
    svc = rows[-1][1]["p50_ms"] / 1e3
    print(f"\ndecode + {args.detector} alone (this process, 1 thread): median {1e3 * med:.1f} ms;"
          f" through the service: p50 {1e3 * svc:.1f} ms -> overhead {100 * (svc / med - 1):+.1f}%")
    print("\n" + "\n".join(latency_split(before, after, rows[-1][1]["mean_ms"])))


def latency_split(before: dict[str, float], after: dict[str, float], mean_ms: float
                  ) -> list[str]:
    """Mean capture-to-ack of the one-in-flight run split by the cloud's own clocks (the
    differences of its metrics over the run): a Markdown table, ms per frame."""
    delta = {name: value - before.get(name, 0.0) for name, value in after.items()}
    frames = delta.get("icm_cloud_batch_frames_sum", 0.0)
    if frames <= 0:
        return ["(no ingest batches in the cloud's metrics: no split)"]

    def per_frame(name: str) -> float:
        return 1e3 * delta.get(name, 0.0) / frames

    decode = per_frame("icm_cloud_decode_seconds_sum")
    detect = per_frame("icm_cloud_analytics_seconds_sum")
    commit = per_frame("icm_cloud_commit_seconds_sum")
    busy = per_frame("icm_cloud_ingest_busy_seconds_total")
    parts = [("decode (the cloud's decoder)", decode), ("detection", detect),
             ("commit (one transaction)", commit),
             ("rest of the ingest batch (check, thumbnail, duplicate lookup)",
              busy - decode - detect - commit),
             ("outside the ingest worker (gRPC both ways, queue, ack)", mean_ms - busy)]
    lines = [f"where capture-to-ack goes ({frames:.0f} frames, mean {mean_ms:.1f} ms):", "",
             "| part | ms per frame | share |", "|---|---|---|"]
    lines += [f"| {name} | {ms:.1f} | {100 * ms / mean_ms:.0f} % |" for name, ms in parts]
    return lines


if __name__ == "__main__":
    main()
