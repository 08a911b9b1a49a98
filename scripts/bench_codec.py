"""Codec speed benchmark (a script, not a test): prints a table of medians.

For each model size and frame size: parameter counts, median encode time of each layer
(entropy coding included), median decode time of the machine and human images, frames/s.
Then a breakdown of the lite base-layer encode, to show what limits it.

    python scripts/bench_codec.py [--threads 2] [--repeats 7] [--sizes 640x480,1280x720]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from icm_codec import CodecConfig, ScalableCodec, create_model, save_package
from icm_codec.api import _pad, frame_to_tensor


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _frame(w: int, h: int) -> np.ndarray:
    """A natural-looking test frame: a real photo that scikit-image ships, resized."""
    from PIL import Image
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((w, h), Image.BICUBIC))


def _packages(arch: str, N: int, tmp: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    base = create_model(CodecConfig(kind="base", arch=arch, N=N))
    base.freeze()
    bp = tmp / f"base-{arch}-{N}.icmpkg"
    digest = save_package(base, bp)
    enh = create_model(CodecConfig(kind="enhancement", arch=arch, N=N, m=4, base_digest=digest))
    enh.freeze()
    ep = tmp / f"enh-{arch}-{N}.icmpkg"
    save_package(enh, ep)
    return bp, ep


def _params(module: torch.nn.Module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f}M"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--sizes", default="640x480,1280x720")
    ap.add_argument("--models", default="lite:128,tcm:64",
                    help="comma-separated arch:N (tcm:128 is the paper scale)")
    ap.add_argument("--base", help="benchmark this trained base package instead of lite:128")
    ap.add_argument("--enhancement", help="with --base: its enhancement package")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp())
    rows = []
    models = [m.split(":") for m in args.models.split(",")]
    for arch, n in models:
        if args.base and arch == "lite":
            bp, ep = Path(args.base), Path(args.enhancement) if args.enhancement else None
        else:
            bp, ep = _packages(arch, int(n), tmp)
        codec = ScalableCodec.load(bp, ep)
        base_m = codec.base.model
        enh_m = codec.enhancement.model if codec.enhancement else None
        reps = args.repeats if arch == "lite" else max(1, args.repeats // 3)
        for w, h in sizes:
            frame = _frame(w, h)
            b = codec.encode_base(frame)
            e = codec.encode_enhancement(frame, b) if enh_m else None
            with torch.inference_mode():
                t_enc_b = _median_time(lambda: codec.encode_base(frame), reps)  # noqa: B023
                t_enc_e = (_median_time(lambda: codec.encode_enhancement(frame, b),  # noqa: B023
                                        reps) if e else float("nan"))
                t_dec_m = _median_time(lambda: codec.decode_machine(b), reps)  # noqa: B023
                t_dec_h = (_median_time(lambda: codec.decode_human(b, e), reps)  # noqa: B023
                           if e else float("nan"))
            rows.append((f"{arch}:{n}", f"{w}x{h}", _params(base_m.g_a), _params(base_m),
                         _params(enh_m) if enh_m else "-", t_enc_b, t_enc_e, t_dec_m, t_dec_h,
                         8 * len(b) / (w * h)))
    print(f"\nCPU, {args.threads} torch threads, medians of {args.repeats} runs "
          "(tcm: a third as many); untrained weights unless --base")
    head = ("model", "frame", "edge g_a", "base params", "enh params", "enc base s",
            "enc enh s", "dec machine s", "dec human s", "base fps", "base bpp")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.3f} | {r[6]:.3f} | "
              f"{r[7]:.3f} | {r[8]:.3f} | {1 / r[5]:.1f} | {r[9]:.3f} |")
    _breakdown(tmp, args)


def _breakdown(tmp: Path, args: argparse.Namespace) -> None:
    """Where the lite base-layer encode time goes at 640x480."""
    bp = Path(args.base) if args.base else _packages("lite", 128, tmp)[0]
    codec = ScalableCodec.load(bp)
    model = codec.base.model
    coder = model.coder
    x = _pad(frame_to_tensor(_frame(640, 480)))
    with torch.inference_mode():
        y = model.g_a(x)
        z = coder.h_a(y)
        med = coder._z_medians()
        z_hat = torch.floor(z - med + 0.5) + med
        feats = coder.h_s.forward_exact(z_hat)
        t_ga = _median_time(lambda: model.g_a(x), args.repeats)
        t_ha = _median_time(lambda: coder.h_a(y), args.repeats)
        t_hs = _median_time(lambda: coder.h_s.forward_exact(z_hat), args.repeats)

        def contexts() -> None:
            prev = []
            for k in range(coder.n_slices):
                mu, _ = coder._slice_params(coder.context[k], feats, prev)
                prev.append(coder._as_input(torch.zeros_like(mu), mu))

        t_cc = _median_time(contexts, args.repeats)
        t_all = _median_time(lambda: coder.compress(y), args.repeats)
    t_rans = t_all - t_ha - t_hs - t_cc
    print("\nlite base encode at 640x480 (padded to 640x512), seconds:")
    print("| g_a (float32) | h_a | h_s (exact int) | slice contexts (exact int) | "
          "rANS + quantization | total |")
    print("|---|---|---|---|---|---|")
    print(f"| {t_ga:.3f} | {t_ha:.3f} | {t_hs:.3f} | {t_cc:.3f} | {max(t_rans, 0):.3f} | "
          f"{t_ga + t_all:.3f} |")


if __name__ == "__main__":
    main()
