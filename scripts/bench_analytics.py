"""Cloud-side throughput (a script, not a test): decode base layers + detect, frames/s.

For each batch size: the median time to decode a batch of base layers into machine images
(``decode_machine_batch``) and, per recognition model, the median time to analyse them
(``Detector.detect``). Prints a Markdown table of medians (``--json`` also writes them). Runs on
CPU or CUDA.

    python scripts/bench_analytics.py --video ../shared/data/video/vtest.avi \\
        --detectors ../shared/assets/detectors [--base PKG] [--device cuda] [--batches 1,8,32]

Without ``--base`` the installed default base package is used, else a seeded (untrained) one:
decode time depends on the architecture and, a little, on the bitrate, so an untrained package
of the same arch decodes at about the same speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from analytics import Detector  # noqa: E402
from icm_codec import ScalableCodec  # noqa: E402
from icm_eval.data import sample_video  # noqa: E402

# the same data setting as the tests: ICM_SHARED_DIR, default ../shared beside the checkout
SHARED = Path(os.environ.get("ICM_SHARED_DIR", REPO.parent / "shared"))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _median(fn, repeats: int, device: str) -> float:
    fn()  # warm-up (also builds the Ultralytics predictor for this batch shape)
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _base_package(given: str | None, tmp: Path) -> tuple[Path, str]:
    if given:
        return Path(given), "given"
    from icm_codec.registry import default_package

    try:
        return default_package("base"), "installed default"
    except ValueError:
        from icm_codec import CodecConfig, create_model, save_package

        torch.manual_seed(0)
        model = create_model(CodecConfig(kind="base", model_id="bench-seeded"))
        model.freeze()
        path = tmp / "base.icmpkg"
        save_package(model, path)
        return path, "seeded, untrained"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", default=str(SHARED / "data" / "video" / "vtest.avi"),
                    help="source of frames (default: vtest.avi in $ICM_SHARED_DIR or ../shared)")
    ap.add_argument("--detectors",
                    help="folder with <name>.pt (default: $ICM_DETECTOR_DIR, else "
                         "assets/detectors in $ICM_SHARED_DIR or ../shared)")
    ap.add_argument("--models", default="yolo11n,yolov8n,yolo26n,yolo26n-seg")
    ap.add_argument("--base", help="base-layer package (default: installed, else seeded)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--batches", default="1,8,32", help="batch sizes")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per cell (median)")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--half", action="store_true", help="fp16 detectors (CUDA)")
    ap.add_argument("--json", help="also write the table (and settings) to this JSON file")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.detectors is None and not os.environ.get("ICM_DETECTOR_DIR"):
        args.detectors = str(SHARED / "assets" / "detectors")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    frames = [im.image for im in sample_video(args.video, max(batches)).images]
    while len(frames) < max(batches):
        frames += frames[: max(batches) - len(frames)]

    with tempfile.TemporaryDirectory() as tmp:
        base_path, base_note = _base_package(args.base, Path(tmp))
        codec = ScalableCodec.load(base_path, device=args.device)
        layers = [codec.encode_base(f, frame_id=i) for i, f in enumerate(frames)]
    h, w = frames[0].shape[:2]
    bpp = float(np.mean([8 * len(b) / (h * w) for b in layers]))
    dets = [Detector(m, weights_dir=args.detectors, device=args.device, imgsz=args.imgsz,
                     batch_size=max(batches), half=args.half) for m in models]

    device_name = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
                   else f"CPU, {torch.get_num_threads()} torch threads")
    print(f"device: {device_name}; frames {w}x{h} from {args.video}; base package "
          f"{base_path.name} ({base_note}, {bpp:.3f} bpp); repeats {args.repeats} (median)\n")
    print("| model | batch | decode ms/frame | detect ms/frame | decode+detect frames/s |")
    print("|---|---|---|---|---|")
    rows = []
    for b in batches:
        batch_layers = layers[:b]
        t_dec = _median(lambda bl=batch_layers: codec.decode_machine_batch(bl), args.repeats,
                        args.device)
        machine = codec.decode_machine_batch(batch_layers)
        for det in dets:
            t_det = _median(lambda m=machine, d=det: d.detect(m), args.repeats, args.device)
            fps = b / (t_dec + t_det)
            print(f"| {det.name} | {b} | {1000 * t_dec / b:.1f} | {1000 * t_det / b:.1f} | "
                  f"{fps:.2f} |", flush=True)
            rows.append({"model": det.name, "batch": b, "decode_ms_per_frame": 1000 * t_dec / b,
                         "detect_ms_per_frame": 1000 * t_det / b, "frames_per_s": fps})
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "device": device_name, "frame_size": [w, h], "video": args.video,
            "base_package": str(base_path), "base_note": base_note, "bpp": bpp,
            "repeats": args.repeats, "imgsz": args.imgsz, "half": args.half,
            "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
