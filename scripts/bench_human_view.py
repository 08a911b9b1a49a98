"""What one human view costs in time: the edge's enhancement-layer encode and the cloud's
human-image decode, per human-layer package on its base (fusion and DC differ: DC decodes the
machine image on both sides), on real frames of the shared clip. Prints a Markdown table of
medians; run it alone (one thread by default, as the edge runs).

    python scripts/bench_human_view.py [--packages ID...] [--frames 5] [--threads 1]
                                       [--refine-steps 0 50]

``--refine-steps``: one row per value, the edge refining its layers' latents (``--refine-steps``
of ``icm edge``; 0 is the plain encoder). The warm-up frame is coded without refinement.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    shared = Path(os.environ.get("ICM_SHARED_DIR", ROOT.parent / "shared"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packages", nargs="*", help="human-layer packages (default: every shipped "
                    "enhancement and residual package)")
    ap.add_argument("--video", default=str(shared / "data" / "video" / "vtest.avi"))
    ap.add_argument("--start", type=int, default=715, help="first frame (715: the held-out tail)")
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--refine-steps", type=int, nargs="+", default=[0], metavar="N")
    args = ap.parse_args()

    import torch

    from icm_codec import Refinement, ScalableCodec, load_package
    from icm_codec.registry import HUMAN_LAYER_KINDS, find_package, list_packages
    from icm_eval.data import sample_video
    from icm_eval.metrics import psnr8

    torch.set_num_threads(args.threads)
    # read in order, not seeked to (seeking in MPEG-4 AVI lands on key frames)
    frames = [im.image for im in sample_video(args.video, args.frames,
                                              frame_range=(args.start,
                                                           args.start + args.frames)).images]
    kinds = {k.label for k in HUMAN_LAYER_KINDS}
    ids = args.packages or [p.model_id for p in list_packages() if p.kind in kinds]
    h, w = frames[0].shape[:2]
    print(f"{len(frames)} frames of {Path(args.video).name} from {args.start}, {w}×{h}, "
          f"{args.threads} thread(s), medians\n")
    print("| package | kind | base | refine steps | layer bpp | human PSNR dB | "
          "edge encode ms | cloud decode ms |")
    print("|---|---|---|---|---|---|---|---|")
    for mid in ids:
        layer = load_package(find_package(mid, HUMAN_LAYER_KINDS))
        base = load_package(find_package(layer.config.base_digest[:16], "base"))
        plain = ScalableCodec(base, layer)
        for steps in args.refine_steps:
            codec = ScalableCodec(base, layer, refine=Refinement(steps=steps))
            enc, dec, bpp, psnr = [], [], [], []
            for i, img in enumerate(frames):
                b = codec.encode_base(img, frame_id=i + 1)
                if i == 0:  # warm-up on the plain path (the refined one is all compute)
                    plain.decode_human(b, plain.encode_enhancement(img, b))
                t0 = time.perf_counter()
                e = codec.encode_enhancement(img, b)
                t1 = time.perf_counter()
                human = codec.decode_human(b, e)
                dec.append(time.perf_counter() - t1)
                enc.append(t1 - t0)
                bpp.append(8 * len(e) / (w * h))
                psnr.append(psnr8(img, human))
            print(f"| {layer.config.model_id} | {layer.config.kind} | {base.config.model_id} | "
                  f"{steps} | {statistics.mean(bpp):.3f} | {statistics.mean(psnr):.2f} | "
                  f"{1000 * statistics.median(enc):.0f} | {1000 * statistics.median(dec):.0f} |")


if __name__ == "__main__":
    main()
