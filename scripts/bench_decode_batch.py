"""Batched machine-image decode throughput (a script, not a test): prints a table of medians.

The cloud decodes base layers of one frame size in batches (one entropy-parameter pass, one
synthesis on CUDA). This measures frames/s of ``decode_machine_batch`` for several batch sizes
on real frames of the surveillance clip (or photos), entropy decoding included.

    python scripts/bench_decode_batch.py --base PKG [--device cuda] [--batches 1,8,32,64]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from icm_codec import ScalableCodec


def _frames(n: int, video: str | None) -> list[np.ndarray]:
    if video and Path(video).is_file():
        import cv2

        cap = cv2.VideoCapture(video)
        out = []
        while len(out) < n:
            ok, f = cap.read()
            if not ok:
                break
            out.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
        cap.release()
        if out:
            return out
    from PIL import Image
    from skimage import data

    img = np.asarray(Image.fromarray(data.astronaut()).resize((768, 576), Image.BICUBIC))
    return [np.roll(img, 7 * i, axis=1) for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--frames", type=int, default=64, help="distinct frames encoded")
    ap.add_argument("--video", default=".gpudata/video/vtest.avi")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    enc = ScalableCodec.load(args.base, None, "cpu")
    frames = _frames(args.frames, args.video)
    layers = [enc.encode_base(f, frame_id=i) for i, f in enumerate(frames)]
    dec = ScalableCodec.load(args.base, None, args.device)
    h, w = frames[0].shape[:2]
    bpp = statistics.mean(8 * len(b) / (h * w) for b in layers)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device: {name} | torch {torch.__version__} | {w}x{h} | base {bpp:.3f} bpp")
    print("| batch | median s per batch | frames/s |")
    print("|---|---|---|")
    for b in (int(v) for v in args.batches.split(",")):
        batch = [layers[i % len(layers)] for i in range(b)]
        dec.decode_machine_batch(batch)  # warm-up
        times = []
        for _ in range(args.repeats):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            dec.decode_machine_batch(batch)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        print(f"| {b} | {med:.4f} | {b / med:.1f} |")


if __name__ == "__main__":
    main()
