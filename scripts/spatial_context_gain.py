"""What the checkerboard spatial context buys: bits of the anchors vs the other half, per slice.

The anchors ((row + column) even) and the other half of a slice are alike except that the
second half is coded with the spatial context, so without a context both halves cost the same
(check: run it on a package without one) and the ratio of their bits is the context's gain.
Also prints the real bytes of the layer (every substream, z included) beside the estimate, and
the headroom: how much the other half's empirical entropy falls, per slice, when it is
conditioned on its anchor neighbours' energy (what a context could find, without learning).

    python scripts/spatial_context_gain.py PACKAGE [PACKAGE ...] --data ../shared/data/kodak
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def _entropy_bits(symbols: np.ndarray) -> float:
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum() * symbols.size)


def _headroom(y_hat: Tensor, anchors: Tensor) -> tuple[float, float]:
    """Empirical bits of the other half's symbols, per channel, without and with conditioning
    on four quantile bins of the mean |ŷ| of the four anchor neighbours: what a context that
    only sees the neighbours' energy could save (no learning involved)."""
    import torch.nn.functional as F

    a = anchors.to(y_hat.dtype)
    neighbours = F.conv2d(F.pad((y_hat.abs() * a).unsqueeze(1), (1, 1, 1, 1)),
                          torch.tensor([[[[0.0, 1, 0], [1, 0, 1], [0, 1, 0]]]]) / 4)[:, 0]
    other = ~anchors
    plain = conditioned = 0.0
    for c in range(y_hat.shape[0]):
        sym = y_hat[c][other].round().numpy().astype(np.int64)
        energy = neighbours[c][other].numpy()
        bins = np.digitize(energy, np.quantile(energy, [0.25, 0.5, 0.75]))
        plain += _entropy_bits(sym)
        conditioned += sum(_entropy_bits(sym[bins == i]) for i in range(4) if (bins == i).any())
    return plain, conditioned


def _measure(path: str, images: list[Path]) -> dict:
    from PIL import Image

    from icm_codec import load_package
    from icm_codec.api import _pad, frame_to_tensor
    from icm_codec.latent import anchor_mask

    pkg = load_package(path)
    model = pkg.model.eval()
    if pkg.config.needs_base:
        raise SystemExit(f"{path}: a {pkg.config.kind} layer; give a base or single package")
    n = model.coder.n_slices
    anchor_bits, other_bits = np.zeros(n), np.zeros(n)
    plain, conditioned = np.zeros(n), np.zeros(n)
    pixels = real_bits = 0.0
    for p in images:
        frame = np.asarray(Image.open(p).convert("RGB"))
        x = _pad(frame_to_tensor(frame))
        with torch.no_grad():
            out = model(x)
            strings, y_hat = model.compress(x)
        bits = -torch.log2(out["likelihoods"]["y"].clamp_min(1e-9))[0]
        a = anchor_mask(*bits.shape[-2:])[0]
        slices = y_hat[0].split(model.coder.slice_channels, dim=0)
        for k, b in enumerate(bits.split(model.coder.slice_channels, dim=0)):
            anchor_bits[k] += float(b[a.expand_as(b)].sum())
            other_bits[k] += float(b[~a.expand_as(b)].sum())
            p, c = _headroom(slices[k], a[0])
            plain[k] += p
            conditioned[k] += c
        pixels += frame.shape[0] * frame.shape[1]
        real_bits += 8 * sum(map(len, strings))
    return {"package": pkg.config.model_id, "spatial": pkg.config.spatial_context,
            "anchor_bpp": anchor_bits / pixels, "other_bpp": other_bits / pixels,
            "real_bpp": real_bits / pixels, "headroom": 1 - conditioned / plain}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("packages", nargs="+")
    ap.add_argument("--data", default="../shared/data/kodak", help="folder of test images")
    ap.add_argument("--limit", type=int, default=0, help="first N images only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    images = sorted(p for p in Path(args.data).iterdir()
                    if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if args.limit:
        images = images[: args.limit]
    if not images:
        raise SystemExit(f"no images in {args.data}")
    print(f"{len(images)} images from {args.data}; y's estimated bits (eval mode), real bytes "
          "of the whole layer\n")
    print("| package | spatial context | y bpp: anchors | y bpp: other half | other / anchors "
          "per slice | saving on y | real bpp (all substreams) | headroom per slice |")
    print("|---|---|---|---|---|---|---|---|")
    for path in args.packages:
        r = _measure(path, images)
        ratio = r["other_bpp"] / np.maximum(r["anchor_bpp"], 1e-12)
        saving = 1 - r["other_bpp"].sum() / r["anchor_bpp"].sum()
        # with a context the y rate would be 2 x anchors without it: saving = (A - O) / (2A)
        print(f"| {r['package']} | {r['spatial']} | {r['anchor_bpp'].sum():.4f} | "
              f"{r['other_bpp'].sum():.4f} | {' / '.join(f'{v:.2f}' for v in ratio)} | "
              f"{100 * saving / 2:.1f} % | {r['real_bpp']:.4f} | "
              f"{' / '.join(f'{100 * v:.0f} %' for v in r['headroom'])} |")


if __name__ == "__main__":
    main()
