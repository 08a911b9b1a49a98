"""Hostile layers through the whole decoder: mutated payloads behind a valid checksum.

The container's CRC rejects accidental corruption; these layers carry a recomputed CRC, so the
garbage reaches the rANS decoder and the networks. Each must decode to some image or raise an
ICMError — never crash the process, hang, or return a frame of the wrong size.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from icm_codec import ICMError, ScalableCodec
from icm_codec.bitstream import Layer, pack_layer, unpack_layer


def _reforge(layer: Layer, substreams: list[bytes]) -> bytes:
    return pack_layer(dataclasses.replace(layer, substreams=tuple(substreams)))


def _mutations(layer: Layer, rng: random.Random, n: int):
    subs = [bytearray(s) for s in layer.substreams]
    for _ in range(n):
        out = [bytearray(s) for s in subs]
        k = rng.randrange(len(out))
        s = out[k]
        op = rng.choice(["flip", "truncate", "extend", "zero", "ones", "random"])
        if op == "flip" and s:
            for _ in range(rng.randint(1, 8)):
                s[rng.randrange(len(s))] ^= 1 << rng.randrange(8)
        elif op == "truncate":
            del s[rng.randrange(len(s) + 1):]
        elif op == "extend":
            s.extend(rng.randbytes(rng.randint(1, 64)))
        elif op == "zero":
            out[k] = bytearray(len(s))
        elif op == "ones":
            out[k] = bytearray(b"\xff" * len(s))
        else:
            out[k] = bytearray(rng.randbytes(rng.randint(0, 2 * len(s) + 8)))
        yield [bytes(x) for x in out]


@pytest.mark.parametrize("seed", range(3))
def test_forged_base_layers_decode_or_fail_cleanly(package_factory, seed: int) -> None:
    codec = ScalableCodec.load(package_factory("base"))
    frame = (np.random.default_rng(seed).random((48, 64, 3)) * 255).astype(np.uint8)
    layer = unpack_layer(codec.encode_base(frame))
    rng = random.Random(seed)
    decoded = rejected = 0
    for subs in _mutations(layer, rng, 60):
        try:
            img = codec.decode_machine(_reforge(layer, subs))
        except ICMError:
            rejected += 1
            continue
        assert img.shape == frame.shape and img.dtype == np.uint8
        decoded += 1
    assert decoded + rejected == 60


def test_forged_enhancement_layers_decode_or_fail_cleanly(package_factory) -> None:
    base = package_factory("base")
    codec = ScalableCodec.load(base, package_factory("enhancement", m=2, base=base))
    frame = (np.random.default_rng(5).random((64, 64, 3)) * 255).astype(np.uint8)
    b = codec.encode_base(frame)
    layer = unpack_layer(codec.encode_enhancement(frame, b))
    for subs in _mutations(layer, random.Random(9), 40):
        try:
            img = codec.decode_human(b, _reforge(layer, subs))
        except ICMError:
            continue
        assert img.shape == frame.shape
