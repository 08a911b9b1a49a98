"""Rate-distortion objectives of the family.

SA-ICM base:   L = R(y) + R(z) + λ·mse(x⊙m, x̂⊙m)      (m: edge mask; all ones = plain MSE)
enhancement:   L = R(ya) + R(za) + λ·mse(x, x̂_human)    (base frozen)

Rates are in bits per pixel; distortion uses 255² scaling as in CompressAI so λ values are
comparable with published ones (0.0018 ... 0.0483).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["bpp_of", "loss_weights", "psnr", "rate_distortion_loss"]


def bpp_of(likelihoods: dict[str, Tensor], num_pixels: int) -> Tensor:
    """Estimated bits per pixel from the entropy models' likelihoods."""
    total = sum(torch.log(lik).sum() for lik in likelihoods.values())
    return total / (-math.log(2) * num_pixels)


def psnr(mse: float | Tensor) -> float:
    mse = float(mse)
    return 99.0 if mse <= 1e-10 else 10 * math.log10(1.0 / mse)


def loss_weights(mask: Tensor, outside: float = 0.0) -> Tensor:
    """Per-pixel distortion weights from a {0,1} loss mask: 1 inside, ``outside`` elsewhere.

    SA-ICM counts the mask alone (``outside`` 0), which leaves the rest of the image free to
    drift in colour and lose the texture inside objects; a small weight keeps some of it.
    """
    return mask if outside == 0 else mask + outside * (1.0 - mask)


def rate_distortion_loss(out: dict, x: Tensor, lmbda: float, mask: Tensor | None = None,
                         z_weight: float = 1.0) -> dict[str, Tensor]:
    """Loss terms for one batch; ``mask`` (N,1,H,W, weights in [0,1], e.g. from
    :func:`loss_weights`) restricts the distortion.

    ``z_weight`` scales the hyper-latent's rate in the loss only (``bpp`` stays the whole
    estimate): below 1 early in a run it lets z grow large enough to carry information before
    it pays its full price (``TrainConfig.z_rate_ramp``).
    """
    n, _, h, w = x.shape
    bpp = bpp_of(out["likelihoods"], n * h * w)
    bpp_z = bpp_of({"z": out["likelihoods"]["z"]}, n * h * w)
    err = (out["x_hat"] - x).pow(2)
    mse_full = err.mean()
    # mse(x⊙m, x̂⊙m): masked pixels count, others are free (normalised by all pixels, as in
    # the paper's formulation)
    mse = (err * mask).mean() if mask is not None else mse_full
    loss = bpp - (1.0 - z_weight) * bpp_z + lmbda * 255**2 * mse
    return {"loss": loss, "bpp": bpp, "bpp_z": bpp_z, "mse": mse, "mse_full": mse_full}
