"""Capacity model for a fleet of cameras (docs/capacity.md), from measured figures.

Two steps, so that the model is re-run whenever a figure changes (new codec packages lower the
bits per frame; a GPU measurement fills in decode + detect on GPU)::

    python scripts/capacity.py measure      # encode vtest frames with every shipped base
                                            # package, detect, store: docs/capacity/measured.json
    python scripts/capacity.py render       # the tables of docs/capacity.md from that file
    python scripts/capacity.py render --check   # exit 1 when docs/capacity.md is stale
    python scripts/capacity.py render --cameras 20000 --fps 2 --stdout   # another fleet

``measure`` needs the shared clip and detector weights (../shared); ``render`` is arithmetic
only. Figures measured elsewhere are in :data:`SOURCES` with the document that has them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEASURED = ROOT / "docs" / "capacity" / "measured.json"
DOC = ROOT / "docs" / "capacity.md"
BEGIN, END = "<!-- capacity:begin (scripts/capacity.py render) -->", "<!-- capacity:end -->"

# Figures measured by other parts of the project, with where they are documented.
SOURCES = {
    "cpu_detect_ms": (142.0, "docs/analytics.md, Throughput: yolo11n, 768×576, 1 thread, "
                             "batch 1"),
    "service_fps_per_instance": (2572.0, "docs/services.md, Benchmark: no-op decoder, 8 "
                                         "cameras, SQLite, 2-core machine (0.88 cores used)"),
    "service_cores_at_that_rate": (0.88, "docs/services.md, Benchmark"),
    "cloud_rss_mb": (1311.0, "docs/services.md, Benchmark: codec + yolo11n, peak RSS"),
    "thumbnail_bytes": (7 * 1024, "docs/services.md, Analyst API for pages: about 7 KB per "
                                  "768×576 frame"),
}
DEFAULTS = {"cameras": 10_000, "fps": 5.0, "gpu_fps": [500, 1000, 2000, 4000],
            "target_utilisation": 0.7, "retention_days": 7}


# -- measure -------------------------------------------------------------------------------------
def measure(video: Path, detectors: Path, frames: int) -> dict:
    """Base-layer bytes per frame for every shipped base package, encode time, detections per
    frame and the database bytes a stored frame costs."""
    import cv2
    import numpy as np
    import torch

    from cloud_decoder.storage import FrameRow, open_store
    from cloud_decoder.thumbnails import jpeg_thumbnail
    from icm_codec import ScalableCodec
    from icm_codec.registry import default_package, list_packages

    torch.set_num_threads(1)
    cap = cv2.VideoCapture(str(video))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    images = []
    for i in range(frames):   # spread over the clip
        cap.set(cv2.CAP_PROP_POS_FRAMES, i * max(1, total // frames))
        ok, bgr = cap.read()
        if ok:
            images.append(np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    h, w = images[0].shape[:2]
    out: dict = {"video": video.name, "width": w, "height": h, "frames": len(images),
                 "measured_at": time.strftime("%Y-%m-%d"), "torch_threads": 1,
                 "rate_points": []}
    bases = sorted((p for p in list_packages() if p.kind == "base"), key=lambda p: p.model_id)
    for pkg in bases:
        codec = ScalableCodec.load(pkg.path)
        lmbda = codec.base.model.config.meta.get("lambda")  # the training record's λ
        codec.encode_base(images[0], frame_id=0)   # warm-up
        sizes, times = [], []
        for i, img in enumerate(images):
            t0 = time.perf_counter()
            sizes.append(len(codec.encode_base(img, frame_id=i + 1)))
            times.append(time.perf_counter() - t0)
        mean = sum(sizes) / len(sizes)
        out["rate_points"].append({
            "package": pkg.model_id, "digest": pkg.digest, "lambda": lmbda,
            "bytes_per_frame": round(mean),
            "bpp": round(8 * mean / (w * h), 4),
            "encode_ms_median": round(1000 * sorted(times)[len(times) // 2], 1)})
    out["rate_points"].sort(key=lambda r: (r["lambda"] is None, r["lambda"] or 0, r["package"]))
    from analytics import Detector

    det = Detector("yolo11n", weights_dir=str(detectors))
    results = det.detect(images)
    dets = [[d.tagged("yolo11n") for d in r.detections] for r in results]
    out["detections_per_frame"] = round(sum(map(len, dets)) / len(dets), 2)
    out["classes_per_frame"] = round(sum(len({d.class_name for d in f}) for f in dets)
                                     / len(dets), 2)
    # what a stored frame costs in the database (SQLite here; PostgreSQL's rows are similar)
    default_path = default_package("base").resolve()
    default = next(p for p, pkg in zip(out["rate_points"], bases, strict=True)
                   if pkg.path.resolve() == default_path)
    out["default_package"] = default["package"]
    codec = ScalableCodec.load(default_path)
    layers = [codec.encode_base(img, frame_id=i + 1) for i, img in enumerate(images)]
    codec.decode_machine(layers[0])   # warm-up
    times = []
    for layer in layers:
        t0 = time.perf_counter()
        codec.decode_machine(layer)
        times.append(time.perf_counter() - t0)
    out["decode_ms_median"] = round(1000 * sorted(times)[len(times) // 2], 1)
    machine = codec.decode_machine_batch(layers)
    thumbs = [jpeg_thumbnail(m, 256) for m in machine]
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(str(Path(tmp) / "c.sqlite3"))
        empty = store.size_bytes()
        reps = max(1, 2000 // len(images))
        rows = []
        for r in range(reps):
            for i in range(len(images)):
                fid = r * len(images) + i + 1
                rows.append(FrameRow("cam-1", fid, fid, fid, fid, w, h, len(layers[i]),
                                     8 * len(layers[i]) / (w * h), dets[i],
                                     base_layer=layers[i], thumbnail=thumbs[i]))
        store.add_frames(rows)
        per_frame = (store.size_bytes() - empty) / len(rows)
        store.close()
    out["db_bytes_per_frame"] = round(per_frame)
    out["postgres_frames_per_s"] = _postgres_rate(rows)
    out["db_frame_base_bytes"] = round(sum(map(len, layers)) / len(layers))
    out["thumbnail_bytes"] = round(sum(map(len, thumbs)) / len(thumbs))
    return out


def _postgres_rate(rows: list) -> float | None:
    """Frames/s one connection commits into a throw-away PostgreSQL server (the test suite's
    helper: initdb + pg_ctl, fsync off), in the cloud's batches of 32; None without the server
    binaries."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import PgServer, PgUnavailableError

    from cloud_decoder.storage import open_store

    try:
        pg = PgServer()
    except PgUnavailableError as e:
        print(f"no PostgreSQL measurement: {e}", file=sys.stderr)
        return None
    try:
        store = open_store(pg.url)
        t0 = time.perf_counter()
        for i in range(0, len(rows), 32):
            store.add_frames(rows[i:i + 32])
        rate = len(rows) / (time.perf_counter() - t0)
        store.close()
    finally:
        pg.cleanup()
    return round(rate)


# -- render --------------------------------------------------------------------------------------
def _si(n: float, unit: str) -> str:
    for div, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g} {prefix}{unit}"
    return f"{n:.3g} {unit}"


def render(m: dict, cameras: int, fps: float, gpu_fps: list[float], util: float,
           days: int) -> str:
    """The Markdown tables of the model (everything between the markers of capacity.md)."""
    rate = cameras * fps                       # frames/s for the fleet
    per_day = rate * 86_400
    lines = [f"Fleet: **{cameras:,} cameras at {fps:g} frames/s = {rate:,.0f} frames/s, "
             f"{per_day / 1e9:.2f} billion frames a day**. Measured frame: "
             f"{m['video']} {m['width']}×{m['height']}, {m['frames']} frames, "
             f"{m['measured_at']} (`docs/capacity/measured.json`).", "",
             "### Bits per frame and what they cost the network and storage", "",
             f"| base rate point | bpp | bytes/frame ({m['width']}×{m['height']}) | bytes/frame at "
             "1080p (same bpp) "
             "| uplink per camera | cloud ingress | base layers per day | encode ms/frame "
             "(1 thread, the shared 2-core machine under load) |",
             "|---|---|---|---|---|---|---|---|"]
    for p in m["rate_points"]:
        b = p["bytes_per_frame"]
        b1080 = p["bpp"] * 1920 * 1080 / 8
        lines.append(f"| {p['package']} | {p['bpp']:.3f} | {b:,} | {b1080:,.0f} | "
                     f"{_si(8 * b * fps, 'bit/s')} | {_si(8 * b * rate, 'bit/s')} | "
                     f"{_si(b * per_day, 'B')} | {p['encode_ms_median']:.0f} |")
    default = next(p for p in m["rate_points"] if p["package"] == m["default_package"])
    thumb = m["thumbnail_bytes"]
    dbb = m["db_bytes_per_frame"]
    rows_s = rate * (1 + m["classes_per_frame"])
    lines += ["", f"Per stored frame at the default rate point ({default['package']}): "
              f"{m['db_frame_base_bytes']:,} B of base layer, a {thumb:,} B thumbnail, "
              f"{m['detections_per_frame']:g} detections (yolo11n) in "
              f"{m['classes_per_frame']:g} classes: **{dbb:,} B in the database** "
              "(SQLite page bytes per row with its indexes and the class index).", "",
              "### The database", "",
              "| | per second | per day | kept "
              f"{days} days |", "|---|---|---|---|",
              f"| frames (rows) | {rate:,.0f} | {per_day / 1e9:.2f} billion | "
              f"{per_day * days / 1e9:.1f} billion |",
              f"| rows written (frames + class index) | {rows_s:,.0f} | "
              f"{rows_s * 86_400 / 1e9:.2f} billion | |",
              f"| bytes with layers and thumbnails in the database | {_si(dbb * rate, 'B')} | "
              f"{_si(dbb * per_day, 'B')} | {_si(dbb * per_day * days, 'B')} |",
              f"| bytes without them (layers and thumbnails in object storage) | "
              f"{_si((dbb - m['db_frame_base_bytes'] - thumb) * rate, 'B')} | "
              f"{_si((dbb - m['db_frame_base_bytes'] - thumb) * per_day, 'B')} | "
              f"{_si((dbb - m['db_frame_base_bytes'] - thumb) * per_day * days, 'B')} |",
              f"| thumbnails (`--thumbnail-width 256`) | {_si(thumb * rate, 'B')} | "
              f"{_si(thumb * per_day, 'B')} | {_si(thumb * per_day * days, 'B')} |"]
    pg = m.get("postgres_frames_per_s")
    if pg:
        lines += ["", f"One PostgreSQL server took **{pg:,.0f} frames/s** with layers and "
                  "thumbnails in the rows (one connection, batches of 32, a throw-away server "
                  "with fsync off on the shared 2-core machine: an optimistic figure for this "
                  f"machine, not for a database server): {pg / fps:,.0f} cameras at {fps:g} "
                  f"frames/s, {pg / rate:.1%} of the fleet's write rate."]
    cpu_ms = m["decode_ms_median"] + SOURCES["cpu_detect_ms"][0]
    cpu_threads = rate * cpu_ms / 1000
    svc = SOURCES["service_fps_per_instance"][0]
    min_instances = math.ceil(rate / (svc * util))
    lines += ["", "### Cloud compute", "",
              f"- **CPU only**: decode + yolo11n take {cpu_ms:.0f} ms per frame on one thread "
              f"({default['package']} decode {m['decode_ms_median']:.0f} ms measured here, "
              f"1 thread, batch 1; {SOURCES['cpu_detect_ms'][1]}): "
              f"**{cpu_threads:,.0f} busy CPU threads** for the fleet, "
              f"{cpu_threads / util:,.0f} at {util:.0%} utilisation. Not a design: GPUs.",
              f"- **The service itself** (gRPC, container checks, batching, commit, acks) "
              f"moved {svc:,.0f} frames/s per instance with the no-op decoder "
              f"({SOURCES['service_fps_per_instance'][1]}). Whatever the GPU, the fleet needs "
              f"**at least {min_instances} cloud instances** at {util:.0%} of that "
              f"({cameras / min_instances:,.0f} streams each: `ICM_MAX_WORKERS` ≥ "
              f"{math.ceil(cameras / min_instances) + 4}).",
              "- **GPU**: decode + detect on a GPU has not been measured yet (no GPU was lent to "
              "this measurement; `scripts/gpu_plan.sh` runs `scripts/bench_decode_batch.py` on "
              "one). GPUs needed for a GPU throughput of:", "",
              "| decode + detect frames/s per GPU | GPUs at "
              f"{util:.0%} | cloud instances (1 GPU each, ≥ the service bound) | streams per "
              "instance |", "|---|---|---|---|"]
    for g in gpu_fps:
        gpus = math.ceil(rate / (g * util))
        inst = max(gpus, min_instances)
        lines.append(f"| {g:,.0f} | {gpus} | {inst} | {cameras / inst:,.0f} |")
    lines.append("")
    return "\n".join(lines)


def _replace(doc: str, body: str) -> str:
    i, j = doc.index(BEGIN), doc.index(END)
    return doc[:i + len(BEGIN)] + "\n" + body + doc[j:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="measure and write docs/capacity/measured.json")
    m.add_argument("--video", default=str(ROOT.parent / "shared/data/video/vtest.avi"))
    m.add_argument("--detectors", default=str(ROOT.parent / "shared/assets/detectors"))
    m.add_argument("--frames", type=int, default=12)
    r = sub.add_parser("render", help="write the tables of docs/capacity.md")
    r.add_argument("--cameras", type=int, default=DEFAULTS["cameras"])
    r.add_argument("--fps", type=float, default=DEFAULTS["fps"])
    r.add_argument("--gpu-fps", type=float, nargs="+", default=DEFAULTS["gpu_fps"])
    r.add_argument("--utilisation", type=float, default=DEFAULTS["target_utilisation"])
    r.add_argument("--retention-days", type=int, default=DEFAULTS["retention_days"])
    r.add_argument("--check", action="store_true", help="exit 1 when capacity.md is stale")
    r.add_argument("--stdout", action="store_true", help="print instead of writing the doc")
    args = p.parse_args(argv)
    if args.cmd == "measure":
        result = measure(Path(args.video), Path(args.detectors), args.frames)
        MEASURED.parent.mkdir(parents=True, exist_ok=True)
        MEASURED.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return 0
    body = render(json.loads(MEASURED.read_text()), args.cameras, args.fps, args.gpu_fps,
                  args.utilisation, args.retention_days)
    if args.stdout:
        print(body)
        return 0
    doc = DOC.read_text()
    new = _replace(doc, body)
    if args.check:
        if new != doc:
            print("docs/capacity.md is stale: run python scripts/capacity.py render",
                  file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
