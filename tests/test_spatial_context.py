"""The checkerboard spatial context: exact two-pass coding, warm starts, old packages intact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from icm_codec import CodecConfig, ScalableCodec, create_model, load_package, save_package
from icm_codec.api import _pad, frame_to_tensor, tensor_to_frame
from icm_codec.latent import anchor_mask
from icm_codec.train.trainer import warm_start


def _model(spatial: bool, seed: int = 0, kind: str = "single"):
    torch.manual_seed(seed)
    return create_model(CodecConfig(kind=kind, spatial_context=spatial,
                                    model_id=f"{kind}-cb-{spatial}"))


def _stir_spatial(model, std: float = 0.05, seed: int = 1) -> None:
    """Non-zero correction heads (fresh ones are zero, which would test nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for ctx in model.coder.context:
            for head in (ctx.spatial.mean, ctx.spatial.log_scale):
                head.weight.copy_(torch.randn(head.weight.shape, generator=g) * std)


def _latent(seed: int = 0) -> torch.Tensor:
    """A latent with a real spread of symbols (an untrained g_a gives almost all zeros)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 320, 8, 12, generator=g) * 4


def test_anchor_mask_is_a_checkerboard() -> None:
    a = anchor_mask(3, 4)[0, 0]
    assert a.tolist() == [[True, False, True, False], [False, True, False, True],
                          [True, False, True, False]]


def test_stream_decodes_in_parts_what_was_encoded_at_once() -> None:
    model = _model(False)
    model.freeze()
    _, tables = model.coder._tables()
    g = torch.Generator().manual_seed(0)
    index = torch.randint(0, tables.n_tables, (200,), generator=g, dtype=torch.int32)
    sym = torch.randint(-3, 4, (200,), generator=g, dtype=torch.int32)
    data = tables.encode(sym, index)
    stream = tables.stream(data, 200)
    parts = [stream.decode(index[:70]), stream.decode(index[70:])]
    assert torch.equal(torch.cat(parts), sym)
    assert torch.equal(tables.decode(data, index), sym)
    with pytest.raises(ValueError, match="more symbols"):
        stream.decode(index[:1])


def test_two_pass_coding_is_exact_and_uses_the_context() -> None:
    """Encoder's ŷ == decoder's ŷ (alone and in a batch), and the corrections change the
    coded symbols' tables: a context that is never read would pass the first check."""
    model = _model(True)
    model.eval()
    y = _latent()
    model.freeze()
    strings_zero, y_zero = model.coder.compress(y)
    _stir_spatial(model)
    model.freeze()
    strings, y_hat = model.coder.compress(y)
    hw = tuple(y.shape[2:])
    assert torch.equal(model.coder.decompress([strings], hw), y_hat)
    both = model.coder.decompress([strings, strings_zero], hw)
    assert torch.equal(both[0:1], y_hat)
    # the second frame was coded with zero corrections: decoding it with the stirred context
    # reads other tables, so it must not come out as it went in
    assert not torch.equal(both[1:2], y_zero)
    assert strings[1:] != strings_zero[1:]


def test_training_path_matches_the_exact_path() -> None:
    model = _model(True)
    _stir_spatial(model)
    model.eval()
    y = _latent()
    model.freeze()
    with torch.no_grad():
        _, y_exact = model.coder.compress(y)
        y_train = model.coder(y)["y_hat"]
    # identical except where y - μ sits within float noise of a rounding boundary
    assert (y_train - y_exact).abs().gt(1e-3).float().mean() < 1e-3


def test_warm_start_from_a_package_without_it_starts_where_that_package_was(
        tmp_path) -> None:
    old = _model(False, seed=3)
    old.eval()
    old.freeze()
    path = tmp_path / "old.icmpkg"
    save_package(old, path)
    old = load_package(path).model
    new = _model(True, seed=4)
    record = warm_start(new, str(path))
    assert record.copied < record.total  # the spatial nets are new
    new.eval()
    y = _latent()
    with torch.no_grad():
        a, b = old.coder(y), new.coder(y)
    assert torch.equal(a["y_hat"], b["y_hat"])
    assert torch.equal(a["likelihoods"]["y"], b["likelihoods"]["y"])
    new.freeze()
    (s_old, y_old), (s_new, y_new) = old.coder.compress(y), new.coder.compress(y)
    assert torch.equal(y_old, y_new)
    # the same symbols with the same tables, in another order: the same size within a few bytes
    assert abs(sum(map(len, s_old)) - sum(map(len, s_new))) <= 4 * len(s_old)


def test_packages_without_it_keep_their_digest(tmp_path) -> None:
    """Older packages' config JSON has no such field; the digest (every bitstream's model
    identity) must not change because the field exists now."""
    assert "spatial_context" not in json.loads(CodecConfig().to_json())
    assert json.loads(CodecConfig(spatial_context=True).to_json())["spatial_context"] is True
    model = _model(True)
    model.eval()
    model.freeze()
    path = tmp_path / "cb.icmpkg"
    save_package(model, path)
    assert load_package(path).config.spatial_context is True


def test_codec_roundtrip_with_spatial_context(tmp_path, photos) -> None:
    """Through the public codec and real layer bytes: the decoder's machine image is the
    encoder's own reconstruction."""
    model = _model(True, kind="base")
    _stir_spatial(model)
    model.eval()
    model.freeze()
    path = tmp_path / "base-cb.icmpkg"
    save_package(model, path)
    codec = ScalableCodec.load(path)
    frame = np.ascontiguousarray(photos[1][:96, :144])
    data = codec.encode_base(frame)
    x = frame_to_tensor(frame)
    with torch.no_grad():
        _, y_hat = codec.base.encode(_pad(x), tuple(x.shape[-2:]))
        expected = tensor_to_frame(codec.base.synthesize(y_hat)[..., :96, :144])
    np.testing.assert_array_equal(codec.decode_machine(data), expected)


def test_train_the_context_alone_on_a_frozen_trunk(tmp_path, photos) -> None:
    """`icm train --spatial-context --freeze-transforms --init TRUNK`: the transforms come out
    as they went in, the new context has learned something, and the run's package decodes."""
    from PIL import Image

    from icm_app.main import main

    data = tmp_path / "data"
    data.mkdir()
    for i, p in enumerate(photos[:4]):
        Image.fromarray(p[:128, :128]).save(data / f"p{i}.png")
    torch.manual_seed(0)
    trunk = create_model(CodecConfig(kind="single", N=32, model_id="trunk"))
    trunk.eval()
    trunk.freeze()
    save_package(trunk, tmp_path / "trunk.icmpkg")
    run = tmp_path / "run"
    assert main(["train", "single", "--data", str(data), "--lambda", "0.01", "--N", "32",
                 "--steps", "3", "--batch", "2", "--crop", "64", "--warmup", "1",
                 "--decay", "1", "--val-every", "3", "--spatial-context",
                 "--freeze-transforms", "--init", str(tmp_path / "trunk.icmpkg"),
                 "--out", str(run)]) == 0
    before = load_package(tmp_path / "trunk.icmpkg").model.state_dict()
    pkg = load_package(run / "model.icmpkg")
    after = pkg.model.state_dict()
    transforms = [k for k in before if k.startswith(("g_a.", "g_s."))]
    assert transforms and all(torch.equal(before[k], after[k]) for k in transforms)
    # the heads start at zero; an untrained trunk's ŷ is ~0, so their biases move first
    heads = [k for k in after if ".spatial." in k and k.endswith((".weight", ".bias"))
             and (".mean." in k or ".log_scale." in k)]
    assert heads and any(bool(after[k].abs().sum()) for k in heads)
    codec = ScalableCodec(pkg)
    frame = np.ascontiguousarray(photos[0][:64, :64])
    assert codec.decode_machine(codec.encode_base(frame)).shape == frame.shape
