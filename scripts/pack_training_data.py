"""Pack the training plan's data into a small folder that can travel to a lent GPU machine.

The device tool carries at most 64 MiB with the working tree (the shipped packages included),
so photos are downscaled (longest side ``--max-side``) and stored as JPEG, and the video keeps
every ``--video-every``-th frame (Motion-JPEG). The folder mirrors the data root's layout, so
``icm plan run --data-root FOLDER`` reads it unchanged.

    python scripts/pack_training_data.py --data-root ../shared/data --out .gpudata
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from icm_codec.train.data import IMAGE_EXTS, VIDEO_EXTS
from icm_codec.train.plan import DEFAULT_PLAN, load_plan


def _pack_video(src: Path, dst: Path, every: int, quality: int) -> int:
    import cv2

    cap = cv2.VideoCapture(str(src))
    if not cap.isOpened():
        raise SystemExit(f"cannot open {src}")
    writer, i, kept = None, 0, 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if i % every == 0:
            if writer is None:
                h, w = frame.shape[:2]
                writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
                writer.set(cv2.VIDEOWRITER_PROP_QUALITY, quality)
            writer.write(frame)
            kept += 1
        i += 1
    cap.release()
    if writer is not None:
        writer.release()
    return kept


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", default=str(DEFAULT_PLAN))
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--out", default=".gpudata")
    ap.add_argument("--max-side", type=int, default=512)
    ap.add_argument("--quality", type=int, default=85)
    ap.add_argument("--video-every", type=int, default=10)
    args = ap.parse_args()
    root, out = Path(args.data_root), Path(args.out)
    entries = sorted({d for j in load_plan(args.plan).jobs.values() for d in j.data})
    n_img = 0
    for entry in entries:
        src = root / entry
        if src.is_file() and src.suffix.lower() in VIDEO_EXTS:
            dst = out / entry
            dst.parent.mkdir(parents=True, exist_ok=True)
            print(f"{entry}: {_pack_video(src, dst, args.video_every, args.quality)} frames")
            continue
        for f in sorted(src.rglob("*")):
            if f.suffix.lower() not in IMAGE_EXTS:
                continue
            rel = f.relative_to(root)
            dst = (out / rel).with_suffix(".jpg")
            dst.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(f) as im:
                im = im.convert("RGB")
                s = min(1.0, args.max_side / max(im.size))
                if s < 1:
                    im = im.resize((round(im.width * s), round(im.height * s)), Image.LANCZOS)
                im.save(dst, quality=args.quality)
            n_img += 1
        labels = src.parent / "labels"  # YOLO labels travel with their images
        if src.name == "images" and labels.is_dir():
            for f in labels.rglob("*.txt"):
                d = out / f.relative_to(root)
                d.parent.mkdir(parents=True, exist_ok=True)
                d.write_bytes(f.read_bytes())
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{n_img} images, {size / 2**20:.1f} MiB in {out}")
    return 0 if np.isfinite(size) else 1


if __name__ == "__main__":
    sys.exit(main())
