"""Analysis (g_a) and synthesis (g_s) transforms of each size; total stride 16."""

from __future__ import annotations

from torch import nn

from .layers import ConvTransBlock, ResBlock, SubpixelUp, conv

__all__ = ["analysis", "synthesis"]


def _act() -> nn.Module:
    return nn.LeakyReLU(inplace=True)


def _lite_analysis(N: int, out_ch: int) -> nn.Module:
    """Edge-first: four strided convolutions, ~1.3 GMAC at 640x480 for N=128."""
    c1, c2 = N // 4, N // 2
    return nn.Sequential(
        conv(3, c1, 5, 2), _act(),
        conv(c1, c2, 3, 2), _act(),
        conv(c2, N, 3, 2), _act(),
        conv(N, out_ch, 3, 2),
    )


def _lite_synthesis(N: int, in_ch: int) -> nn.Module:
    c1, c2, c3 = 3 * N // 4, N // 2, 3 * N // 8
    return nn.Sequential(
        conv(in_ch, N), _act(),
        SubpixelUp(N, c1), _act(), ResBlock(c1),
        SubpixelUp(c1, c2), _act(),
        SubpixelUp(c2, c3), _act(),
        SubpixelUp(c3, 3),
    )


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


def analysis(arch: str, N: int, out_ch: int) -> nn.Module:
    return {"lite": _lite_analysis, "tcm": _tcm_analysis}[arch](N, out_ch)


def synthesis(arch: str, N: int, in_ch: int) -> nn.Module:
    return {"lite": _lite_synthesis, "tcm": _tcm_synthesis}[arch](N, in_ch)
