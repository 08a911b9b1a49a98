"""The packages the product ships: they load, verify, decode, and the human layer adds quality."""

from __future__ import annotations

import json

import numpy as np
import pytest

from icm_codec import ScalableCodec, load_package
from icm_codec.registry import SHIPPED_DIR, default_package, list_packages

pytestmark = pytest.mark.skipif(not (SHIPPED_DIR / "index.json").is_file(),
                                reason="no shipped weights in icm_codec/weights")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / mse)


def test_every_shipped_package_verifies_and_records_its_training() -> None:
    infos = [i for i in list_packages([SHIPPED_DIR])]
    assert infos
    for info in infos:
        pkg = load_package(info.path)  # digest verified on load
        meta = pkg.config.meta
        assert meta["trained"] and meta["steps"] > 0 and meta["data"], info.model_id
        assert info.path.stat().st_size < 8e6  # a few MB per model
    defaults = json.loads((SHIPPED_DIR / "index.json").read_text())["defaults"]
    assert set(defaults) >= {"base", "enhancement"}


def test_default_codec_human_view_beats_machine_view(photos) -> None:
    codec = ScalableCodec.load(default_package("base"), default_package("enhancement"))
    frame = photos[0][:256, :320]
    base = codec.encode_base(frame)
    enh = codec.encode_enhancement(frame, base)
    machine = codec.decode_machine(base)
    human = codec.decode_human(base, enh)
    assert _psnr(frame, human) > _psnr(frame, machine) + 1.0
    assert 8 * len(base) / frame[..., 0].size < 1.0  # the machine layer stays compact
