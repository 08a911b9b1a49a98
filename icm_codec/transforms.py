"""Analysis (g_a) and synthesis (g_s) transforms of each size; total stride 16.

``lite`` and ``gdn`` share one layout (the edge's budget); they differ in the nonlinearity:
LeakyReLU, or GDN in g_a and inverse GDN in g_s. GDN learned ~1 dB more per step from scratch
in the equal-step A/B (docs/training.md) for ~0.25 GMAC more at 640x480.
"""

from __future__ import annotations

from collections.abc import Callable

from compressai.layers import GDN
from torch import nn

from .layers import ConvTransBlock, ResBlock, SubpixelUp, conv

__all__ = ["analysis", "synthesis"]

_Act = Callable[[int], nn.Module]


def _leaky(_channels: int) -> nn.Module:
    return nn.LeakyReLU(inplace=True)


def _gdn(channels: int) -> nn.Module:
    return GDN(channels)


def _igdn(channels: int) -> nn.Module:
    return GDN(channels, inverse=True)


def _lite_analysis(N: int, out_ch: int, act: _Act = _leaky) -> nn.Module:
    """Edge-first: four strided convolutions, ~1.3 GMAC at 640x480 for N=128."""
    c1, c2 = N // 4, N // 2
    return nn.Sequential(
        conv(3, c1, 5, 2), act(c1),
        conv(c1, c2, 3, 2), act(c2),
        conv(c2, N, 3, 2), act(N),
        conv(N, out_ch, 3, 2),
    )


def _lite_synthesis(N: int, in_ch: int, act: _Act = _leaky) -> nn.Module:
    c1, c2, c3 = 3 * N // 4, N // 2, 3 * N // 8
    return nn.Sequential(
        conv(in_ch, N), act(N),
        SubpixelUp(N, c1), act(c1), ResBlock(c1),
        SubpixelUp(c1, c2), act(c2),
        SubpixelUp(c2, c3), act(c3),
        SubpixelUp(c3, 3),
    )


def _gdn_analysis(N: int, out_ch: int) -> nn.Module:
    return _lite_analysis(N, out_ch, _gdn)


def _gdn_synthesis(N: int, in_ch: int) -> nn.Module:
    return _lite_synthesis(N, in_ch, _igdn)


def _heads(ch: int) -> int:
    return max(1, ch // 2 // 32)


def _tcm_analysis(N: int, out_ch: int) -> nn.Module:
    """Paper-scale: strided convs with mixed CNN/Swin blocks (alternating shifted windows)."""
    layers: list[nn.Module] = [conv(3, N, 3, 2)]
    for i in range(3):
        layers += [ConvTransBlock(N, _heads(N), shift=False),
                   ConvTransBlock(N, _heads(N), shift=True)]
        layers.append(conv(N, out_ch if i == 2 else N, 3, 2))
    return nn.Sequential(*layers)


def _tcm_synthesis(N: int, in_ch: int) -> nn.Module:
    layers: list[nn.Module] = [conv(in_ch, N)]
    for _ in range(3):
        layers += [ConvTransBlock(N, _heads(N), shift=False),
                   ConvTransBlock(N, _heads(N), shift=True),
                   SubpixelUp(N, N)]
    layers.append(SubpixelUp(N, 3))
    return nn.Sequential(*layers)


_ANALYSIS = {"lite": _lite_analysis, "gdn": _gdn_analysis, "tcm": _tcm_analysis}
_SYNTHESIS = {"lite": _lite_synthesis, "gdn": _gdn_synthesis, "tcm": _tcm_synthesis}


def analysis(arch: str, N: int, out_ch: int) -> nn.Module:
    return _ANALYSIS[arch](N, out_ch)


def synthesis(arch: str, N: int, in_ch: int) -> nn.Module:
    return _SYNTHESIS[arch](N, in_ch)
