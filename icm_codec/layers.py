"""Building blocks of the analysis/synthesis transforms (float; not on the exact path)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvTransBlock", "ResBlock", "SubpixelUp", "WindowAttention", "conv"]


def conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


class ResBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(ch, ch), nn.LeakyReLU(inplace=True), conv(ch, ch))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class SubpixelUp(nn.Sequential):
    """x2 upsampling by a 3x3 convolution and pixel shuffle (no checkerboard artefacts)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(conv(cin, cout * 4), nn.PixelShuffle(2))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows (Swin), optionally shifted.

    The feature map is padded to a multiple of the window internally, so callers need no
    extra alignment; shifted windows are masked so that attention never wraps around borders.
    """

    def __init__(self, ch: int, heads: int, window: int = 8, shift: bool = False) -> None:
        super().__init__()
        if ch % heads:
            raise ValueError(f"channels {ch} not divisible by heads {heads}")
        self.heads, self.window = heads, window
        self.shift = window // 2 if shift else 0
        self.norm = nn.LayerNorm(ch)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.proj = nn.Linear(ch, ch)
        self.rel_bias = nn.Parameter(torch.zeros(heads, (2 * window - 1) ** 2))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                            indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1
        self.register_buffer("rel_index", rel[..., 0] * (2 * window - 1) + rel[..., 1],
                             persistent=False)

    def _windows(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        ws = self.window
        x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, ws * ws, c)

    def _mask(self, h: int, w: int, valid_h: int, valid_w: int, device: torch.device) -> Tensor:
        """Region ids: tokens of different regions (shift seams, padding) never attend."""
        _ws, sh = self.window, self.shift
        ids = torch.zeros(1, h, w, 1, device=device)
        ids[:, valid_h:, :] += 100
        ids[:, :, valid_w:] += 200
        if sh:
            ids[:, h - sh:, :] += 1
            ids[:, :, w - sh:] += 2
            ids = torch.roll(ids, shifts=(-sh, -sh), dims=(1, 2))
        win = self._windows(ids).squeeze(-1)
        return (win[:, :, None] != win[:, None, :])

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        ws = self.window
        ph, pw = (-h) % ws, (-w) % ws
        t = self.norm(x.permute(0, 2, 3, 1))
        t = F.pad(t, (0, 0, 0, pw, 0, ph))
        hp, wp = h + ph, w + pw
        if self.shift:
            t = torch.roll(t, shifts=(-self.shift, -self.shift), dims=(1, 2))
        win = self._windows(t)
        qkv = self.qkv(win).view(win.shape[0], ws * ws, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        bias = self.rel_bias[:, self.rel_index].unsqueeze(0)  # 1, heads, T, T
        if self.shift or ph or pw:
            mask = self._mask(hp, wp, h, w, x.device)  # nW, T, T
            nw = mask.shape[0]
            bias = bias.unsqueeze(1).expand(b, nw, self.heads, ws * ws, ws * ws)
            bias = bias.masked_fill(mask[None, :, None], float("-inf"))
            bias = bias.reshape(b * nw, self.heads, ws * ws, ws * ws)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        out = self.proj(out.transpose(1, 2).reshape(win.shape[0], ws * ws, c))
        nh, nw_ = hp // ws, wp // ws
        out = out.view(b, nh, nw_, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        if self.shift:
            out = torch.roll(out, shifts=(self.shift, self.shift), dims=(1, 2))
        return x + out[:, :h, :w].permute(0, 3, 1, 2)


class ConvTransBlock(nn.Module):
    """TCM-style mixed block: half the channels through a residual CNN, half through Swin
    window attention (plus an MLP), fused by a 1x1 convolution with a skip connection."""

    def __init__(self, ch: int, heads: int, window: int = 8, shift: bool = False) -> None:
        super().__init__()
        if ch % 2:
            raise ValueError("ConvTransBlock needs an even channel count")
        half = ch // 2
        self.split = nn.Conv2d(ch, ch, 1)
        self.cnn = ResBlock(half)
        self.attn = WindowAttention(half, heads, window, shift)
        self.mlp = nn.Sequential(nn.Conv2d(half, 2 * half, 1), nn.GELU(),
                                 nn.Conv2d(2 * half, half, 1))
        self.fuse = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        a, t = self.split(x).chunk(2, dim=1)
        t = self.attn(t)
        t = t + self.mlp(t)
        return x + self.fuse(torch.cat([self.cnn(a), t], dim=1))
