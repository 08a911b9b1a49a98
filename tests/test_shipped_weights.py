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
        # a few MB per model: ~5.4 at the default width N = 128, ~8.7 at N = 192
        assert info.path.stat().st_size < (10e6 if pkg.config.N > 128 else 6e6)
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


def test_the_edge_codes_its_enhancement_layer_with_a_dc_package_too(photos) -> None:
    """The human layer may be a difference-compression (residual) package: the edge takes it
    as its enhancement layer, the decoder finds it by digest; a base package named there is a
    clear error."""
    from edge_encoder.encoder import EdgeEncoder
    from icm_codec import ModelPackageError
    from icm_codec.registry import HUMAN_LAYER_KINDS, default_package, find_package

    infos = list_packages([SHIPPED_DIR])
    dcs = [i for i in infos if i.kind == "residual"]
    if not dcs:
        pytest.skip("no residual package shipped")
    # the default human layer when it is a DC package (the strongest shipped), else any
    default = default_package("enhancement").resolve()
    dc = next((i for i in dcs if i.path.resolve() == default), dcs[0])
    parent = load_package(dc.path).config.base_digest
    base = next(i for i in infos if i.digest == parent)
    edge = EdgeEncoder(base=base.model_id, enhancement=dc.model_id, mode="eager")
    assert edge.describe()["enhancement_model_id"] == dc.model_id
    frame = np.ascontiguousarray(photos[0][:256, :320])
    out = edge.encode(frame, frame_id=1)
    codec = ScalableCodec.load(find_package(base.digest[:16]), find_package(dc.digest[:16]))
    human = codec.decode_human(out.base, out.enhancement)
    assert _psnr(frame, human) > _psnr(frame, codec.decode_machine(out.base)) + 1.0
    with pytest.raises(ModelPackageError, match="is a base layer, not enhancement or residual"):
        find_package(base.model_id, HUMAN_LAYER_KINDS)
