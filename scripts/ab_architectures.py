"""Equal-step A/B of codec architectures on the project's own data pipeline.

    python scripts/ab_architectures.py lite lite-gdn msh64 --steps 600 --lmbda 0.0483

Each variant trains from scratch for ``--steps`` steps (batches of 2 crops of 256², the plan's
data mix, Adam at 3e-4 after a 100-step warm-up, one thread) and the table reports the mean
training-batch bpp and PSNR over the last 100 steps, and seconds per step. It answers "which
transforms learn fastest per step on a CPU", the question behind the lite transforms' slow
start (docs/training.md, "What limits quality now"); it is not an R-D evaluation (that is
``icm eval-rd`` on packages).

Variants:
- ``lite``: the shipped lite transforms (LeakyReLU) with the channel-conditional coder.
- ``lite-gdn``: the same convolutions with GDN / inverse GDN instead of LeakyReLU (the
  arch ``gdn`` that the plan's gdn family ships).
- ``balle128``: Ballé et al.'s 5×5 GDN transforms (N = 128) with the channel-conditional coder.
- ``msh64``: CompressAI's MeanScaleHyperprior(64, 128), its own transforms and hyperprior.
- suffix ``+znoise`` (``lite+znoise``): h_s sees z + U(-½, ½) in training instead of round(z)
  (the hyperprior's dead zone, docs/training.md); the table's z column is z's share of the bpp.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn

SHARED = "../shared/data"


def _model(variant: str) -> nn.Module:
    from compressai.layers import GDN

    if variant.endswith("+znoise"):
        model = _model(variant.removesuffix("+znoise"))
        model.coder.z_noise = True
        return model

    from icm_codec import CodecConfig, create_model

    if variant == "msh64":
        from compressai.models import MeanScaleHyperprior

        return MeanScaleHyperprior(64, 128)
    if variant == "lite-gdn":  # the shipped arch `gdn` (icm_codec/transforms.py)
        return create_model(CodecConfig(kind="single", arch="gdn"))
    model = create_model(CodecConfig(kind="single"))
    latent = model.coder.latent_channels
    n = model.config.N
    if variant == "balle128":
        from compressai.models.utils import conv as cconv
        from compressai.models.utils import deconv

        model.g_a = nn.Sequential(cconv(3, n), GDN(n), cconv(n, n), GDN(n), cconv(n, n), GDN(n),
                                  cconv(n, latent))
        model.g_s = nn.Sequential(deconv(latent, n), GDN(n, inverse=True), deconv(n, n),
                                  GDN(n, inverse=True), deconv(n, n), GDN(n, inverse=True),
                                  deconv(n, 3))
    elif variant != "lite":
        raise SystemExit(f"unknown variant {variant!r}")
    return model


def run(variant: str, steps: int, lmbda: float, batches
        ) -> tuple[float, float, float, float, int]:
    from icm_codec.losses import bpp_of, psnr, rate_distortion_loss

    torch.manual_seed(0)
    model = _model(variant)
    params = sum(p.numel() for p in model.parameters())
    main = [p for n, p in model.named_parameters() if not n.endswith("quantiles")]
    quantiles = [p for n, p in model.named_parameters() if n.endswith("quantiles")]
    opt = torch.optim.Adam(main, lr=3e-4)
    aux_opt = torch.optim.Adam(quantiles, lr=1e-3)
    hist, times = [], []
    for step in range(steps):
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = 3e-4 * min(1.0, (step + 1) / 100)
        x, _ = batches.next(2)
        out = model(x)
        terms = rate_distortion_loss(out, x, lmbda)
        z_bpp = bpp_of({"z": out["likelihoods"]["z"]}, x.shape[0] * x.shape[2] * x.shape[3])
        opt.zero_grad()
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        aux = model.aux_loss()
        aux_opt.zero_grad()
        aux.backward()
        aux_opt.step()
        times.append(time.perf_counter() - t0)
        hist.append((float(terms["bpp"].detach()), psnr(float(terms["mse_full"].detach())),
                     float(z_bpp.detach())))
        if (step + 1) % 100 == 0:
            h = np.array(hist[-100:]).mean(0)
            print(f"{variant} {step + 1}: bpp {h[0]:.3f} (z {h[2]:.4f}) psnr {h[1]:.2f}",
                  flush=True)
    last = np.array(hist[-100:]).mean(0)
    return float(last[0]), float(last[1]), float(last[2]), statistics.median(times), params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lmbda", type=float, default=0.0483)
    ap.add_argument("--data-root", default=SHARED)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from icm_codec.train.data import load_dataset
    from icm_codec.train.trainer import _Batches

    root = args.data_root
    train, _ = load_dataset([f"{root}/photos", f"{root}/photos-extra", f"{root}/video/vtest.avi",
                             f"{root}/coco8/images"], progress=False)
    masks = [np.ones(s.image.shape[:2], bool) for s in train]
    rows = []
    for variant in args.variants:
        batches = _Batches(train, masks, 256, 0, video_share=0.15, min_scale=0.5)
        rows.append((variant, *run(variant, args.steps, args.lmbda, batches)))
    print(f"\nλ {args.lmbda}, {args.steps} steps, mean of the last 100 training batches")
    print("| variant | parameters | bpp | of it z | PSNR (dB) | s/step (median) |\n"
          "|---|---|---|---|---|---|")
    for variant, bpp, db, zb, sec, params in rows:
        print(f"| {variant} | {params / 1e6:.2f} M | {bpp:.3f} | {zb:.4f} | {db:.2f} | {sec:.2f} |")


if __name__ == "__main__":
    main()
