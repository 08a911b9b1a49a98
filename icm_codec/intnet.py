"""Integer networks for the entropy-parameter path (bit-exact on every machine).

The decoder recomputes each latent's mean and scale from values it already decoded. If the edge
(CPU, 1 thread) and the cloud (GPU, or a CPU with other threads) round one of those numbers
differently, the rANS decoder reads the wrong symbols from there on. Following Ballé et al.,
"Integer Networks for Data Compression with Latent-Variable Models" (ICLR 2019), every layer on that
path is trained with its quantization in the loop and, for coding, evaluated with integer weights,
integer activations and an integer rescale. The integers are held in float64 tensors: every product
and partial sum stays below 2**53, so any summation order (threads, SIMD, GEMM blocking, GPU
kernels) yields the same exact integer. Convolutions on that path are computed as products and sums
only (im2col + matmul), never with Winograd or FFT algorithms.

Fixed-point conventions (``frac`` = fractional bits):
    activation (ReLU, clamped)  x_real = x_int / 2**ACT_FRAC, 0 <= x_int < 2**ACT_BITS
    latent inputs (signed)      x_real = x_int / 2**ACT_FRAC, |x_int| <= 2**IN_BITS
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ACT_BITS",
    "ACT_FRAC",
    "IN_BITS",
    "IntConv2d",
    "fake_quant_input",
    "ste_round",
    "to_int_input",
]

ACT_FRAC = 4  # activations live on a 1/16 grid
ACT_BITS = 12  # ReLU activations are clamped to [0, 2**12 - 1] / 16 = [0, 256)
IN_BITS = 15  # signed latent inputs are clamped to +-2**15 / 16 = +-2048
WEIGHT_MAX = 127  # int8 weights, one scale per output channel
_EXACT_LIMIT = 2.0**52  # keep every |partial sum| below this for exact float64 arithmetic


def ste_round(x: Tensor) -> Tensor:
    """Round half up (as the exact path does) with a straight-through gradient."""
    return x + (torch.floor(x + 0.5) - x).detach()


def fake_quant_input(x: Tensor) -> Tensor:
    """Training-time image of :func:`to_int_input` (divided back to real units)."""
    lim = 2.0**IN_BITS / 2**ACT_FRAC
    return ste_round(x.clamp(-lim, lim) * 2**ACT_FRAC) / 2**ACT_FRAC


def to_int_input(x: Tensor) -> Tensor:
    """Real latent values -> exact integer inputs (float64). Deterministic elementwise ops only."""
    q = torch.floor(x.double() * 2**ACT_FRAC + 0.5)
    lim = 2.0**IN_BITS
    return q.clamp_(-lim, lim)


_BAND_ELEMENTS = 1 << 23  # im2col elements per band (64 MiB of float64): bounds memory


def _conv_products(x: Tensor, w: Tensor, pad: tuple[int, int], unfold: bool | None = None
                   ) -> Tensor:
    """One convolution as products and sums only; ``pad`` = (rows, columns). Off the CPU (or
    with ``unfold=True``) it is an explicit im2col + matmul, so no library can pick Winograd."""
    if unfold is None:
        unfold = x.device.type != "cpu"
    if not unfold:
        # On the CPU float64 convolution is im2col + GEMM (no oneDNN, no Winograd): exact.
        return F.conv2d(x, w, padding=pad)
    n = x.shape[0]
    cout, cin, kh, kw = w.shape
    if kh == 1 and kw == 1:
        return torch.einsum("oc,nchw->nohw", w.view(cout, cin), x)
    h_out = x.shape[2] + 2 * pad[0] - kh + 1
    w_out = x.shape[3] + 2 * pad[1] - kw + 1
    cols = F.unfold(x, (kh, kw), padding=pad)  # n, cin*kh*kw, h_out*w_out
    return torch.matmul(w.view(cout, -1), cols).view(n, cout, h_out, w_out)


def _exact_conv(x: Tensor, w: Tensor, padding: int) -> Tensor:
    """Integer convolution, exact for integer-valued float64 input, in row bands when large
    (integer results do not depend on how the rows are grouped)."""
    n, c, h, wd = x.shape
    k = w.shape[-1]
    rows = max(1, _BAND_ELEMENTS // max(1, n * c * k * k * wd))
    if rows >= h:
        return _conv_products(x, w, (padding, padding))
    xp = F.pad(x, (0, 0, padding, padding))
    bands = [_conv_products(xp[:, :, r0 : min(h, r0 + rows) + 2 * padding], w, (0, padding))
             for r0 in range(0, h, rows)]
    return torch.cat(bands, dim=2)


class IntConv2d(nn.Module):
    """Convolution trained with fake quantization and run as exact integer arithmetic.

    Training (:meth:`forward`): ``y = conv(x, Qw(w)) + b``, optional ReLU, output rounded to
    the ``out_frac`` grid with a straight-through gradient; Qw rounds weights to int8 per output
    channel.

    Coding (:meth:`forward_exact`, after :meth:`freeze`): with integer input ``x_int`` on the
    ACT_FRAC grid, ``acc = conv(x_int, w_int)`` and
    ``y_int = floor((acc * mult + bias) / 2**shift)``, all integers below 2**52, so the result
    is identical on any device and thread count.

    Args:
        cin, cout, kernel: convolution shape (odd kernel, "same" padding, stride 1).
        relu: clamp the output to ``[0, 2**ACT_BITS - 1]`` (a hidden layer) or leave it signed.
        out_frac: fractional bits of the output grid.
        out_bits: output clamp for signed outputs (``|y_int| <= 2**out_bits``).
        in_bound: largest |x_int| the layer will see (for the overflow check at freeze time).
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 1,
        *,
        relu: bool = True,
        out_frac: int = ACT_FRAC,
        out_bits: int = 20,
        in_bound: float = 2.0**IN_BITS,
    ) -> None:
        super().__init__()
        self.cin, self.cout, self.kernel = cin, cout, kernel
        self.relu, self.out_frac, self.out_bits = relu, out_frac, out_bits
        self.in_bound = in_bound
        self.weight = nn.Parameter(torch.empty(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        # Frozen integer parameters (filled by freeze(), saved with the model package).
        self.register_buffer("w_int", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("mult", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("bias_int", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("shift", torch.zeros((), dtype=torch.float64))

    # -- training path ---------------------------------------------------------------------
    def _weight_scale(self) -> Tensor:
        amax = self.weight.detach().abs().amax(dim=(1, 2, 3)).clamp_min(1e-8)
        return amax / WEIGHT_MAX

    def _quant_weight(self) -> Tensor:
        s = self._weight_scale().view(-1, 1, 1, 1)
        return ste_round(self.weight / s).clamp(-WEIGHT_MAX, WEIGHT_MAX) * s

    def forward(self, x: Tensor) -> Tensor:
        """Float forward with quantization in the loop; ``x`` on the ACT_FRAC grid (real units)."""
        y = F.conv2d(x, self._quant_weight(), self.bias, padding=self.kernel // 2)
        if self.relu:
            y = y.clamp(0.0, (2**ACT_BITS - 1) / 2**ACT_FRAC)
        else:
            lim = 2.0**self.out_bits / 2**self.out_frac
            y = y.clamp(-lim, lim)
        return ste_round(y * 2**self.out_frac) / 2**self.out_frac

    # -- exact path ------------------------------------------------------------------------
    @torch.no_grad()
    def freeze(self) -> None:
        """Derive the integer weights, multipliers and shift from the float parameters."""
        s = self._weight_scale().double()
        w_int = torch.round(self.weight.detach().double() / s.view(-1, 1, 1, 1))
        w_int = w_int.clamp(-WEIGHT_MAX, WEIGHT_MAX)
        fan_in = self.cin * self.kernel * self.kernel
        acc_bound = fan_in * WEIGHT_MAX * self.in_bound
        real_mult = s * 2.0 ** (self.out_frac - ACT_FRAC)  # per channel, acc -> output grid
        bias_real = self.bias.detach().double() * 2.0**self.out_frac
        # Largest shift keeping |acc * mult + bias| < 2**52 in every channel.
        worst = acc_bound * real_mult.max().item() + bias_real.abs().max().item() + 1.0
        shift = max(0, min(40, math.floor(math.log2(_EXACT_LIMIT / worst)) - 1))
        self.w_int = w_int
        self.mult = torch.round(real_mult * 2.0**shift)
        self.bias_int = torch.round(bias_real * 2.0**shift) + (2.0 ** (shift - 1) if shift else 0)
        self.shift = torch.tensor(float(shift), dtype=torch.float64)

    @torch.no_grad()
    def restore_float(self) -> None:
        """Rebuild the float weights from the frozen integers (packages ship only those).

        The training path then reproduces the integer network: the largest weight of each
        channel is +-127 steps, so re-quantising gives back exactly ``w_int``.
        """
        shift = self.shift.item()
        scale = self.mult / 2.0 ** (shift + self.out_frac - ACT_FRAC)
        self.weight.copy_((self.w_int * scale.view(-1, 1, 1, 1)).to(self.weight.dtype))
        half = 2.0 ** (shift - 1) if shift else 0.0
        self.bias.copy_(((self.bias_int - half) / 2.0 ** (shift + self.out_frac))
                        .to(self.bias.dtype))

    @property
    def frozen(self) -> bool:
        return self.w_int.numel() > 0

    def forward_exact(self, x_int: Tensor) -> Tensor:
        """Integer forward: ``x_int`` integer-valued float64 on the ACT_FRAC grid."""
        if not self.frozen:
            raise RuntimeError("IntConv2d.freeze() must run before exact evaluation")
        acc = _exact_conv(x_int, self.w_int, self.kernel // 2)
        y = torch.floor((acc * self.mult.view(1, -1, 1, 1) + self.bias_int.view(1, -1, 1, 1))
                        / 2.0 ** self.shift.item())
        if self.relu:
            return y.clamp_(0.0, 2.0**ACT_BITS - 1)
        lim = 2.0**self.out_bits
        return y.clamp_(-lim, lim)

    def extra_repr(self) -> str:
        return (f"{self.cin}, {self.cout}, kernel={self.kernel}, relu={self.relu}, "
                f"out_frac={self.out_frac}")
