"""One layer object, one path: guards against the duplicates issue 12 removed coming back.

- the layer kind is one enum (``icm_codec.kinds.LayerKind``): labels, aliases, clear errors;
- tiling is an option of the model's own compress / synthesize, and the codec goes through
  them (no second analysis or synthesis path in ``api.py``);
- what a dependent layer needs from its base is decided by one function
  (``models.base_reference``), for coding and training alike;
- a received layer is parsed (and its CRC checked) once per ingested frame.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from icm_codec import LayerKind, ScalableCodec, load_package
from icm_codec.api import _pad, frame_to_tensor, tensor_to_frame
from icm_codec.bitstream import ParsedLayer, pack_layer, parse_layer, unpack_layer
from icm_codec.config import KINDS, CodecConfig
from icm_codec.tiling import Tiling

ROOT = Path(__file__).resolve().parents[1]


def _frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / w, yy / h, 0.5 + 0.5 * np.sin(xx / 9 + yy / 13)], -1)
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


# -- the layer kind ----------------------------------------------------------------------------
@pytest.mark.parametrize("text, kind", [
    ("base", LayerKind.BASE), ("enhancement", LayerKind.ENHANCEMENT),
    ("residual", LayerKind.RESIDUAL), ("single", LayerKind.SINGLE), ("dc", LayerKind.RESIDUAL),
    ("DC", LayerKind.RESIDUAL), (" Base ", LayerKind.BASE), (LayerKind.SINGLE, LayerKind.SINGLE),
])
def test_layer_kind_parses_every_label_and_alias(text, kind) -> None:
    assert LayerKind.parse(text) is kind


def test_layer_kind_is_the_one_source() -> None:
    assert LayerKind.choices() == ("base", "enhancement", "residual", "single", "dc")
    assert KINDS == ("base", "enhancement", "residual", "single")
    assert [k.value for k in LayerKind] == [0, 1, 2, 3]  # the header's kind byte
    assert {k for k in LayerKind if k.needs_parent} == {LayerKind.ENHANCEMENT,
                                                        LayerKind.RESIDUAL}
    cfg = CodecConfig(kind="dc")
    assert cfg.kind == "residual" and cfg.layer_kind is LayerKind.RESIDUAL and cfg.needs_base


@pytest.mark.parametrize("junk", ["", "basee", "human", "0", 1, None, "dc,base"])
def test_layer_kind_rejects_junk_clearly(junk) -> None:
    with pytest.raises(ValueError, match=r"unknown layer kind .*expected one of base, "
                                         r"enhancement, residual, single \(dc = residual\)"):
        LayerKind.parse(junk)
    if isinstance(junk, str):
        with pytest.raises(ValueError, match="unknown layer kind"):
            CodecConfig(kind=junk)


def test_no_second_spelling_of_the_kinds_in_the_library() -> None:
    """Kind tuples and the dc alias live in icm_codec/kinds.py only."""
    pattern = re.compile(r'"dc"|"enhancement",\s*"residual"|"base",\s*"single"'
                         r'|"enhancement",\s*"dc"|_KIND_OF\b')
    hits = []
    for pkg in ("icm_codec", "cloud_decoder", "edge_encoder", "analytics", "console",
                "icm_app", "scripts"):
        for path in (ROOT / pkg).rglob("*.py"):
            if path.name == "kinds.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_commands_take_every_kind_spelling() -> None:
    import argparse

    from icm_codec.cli import COMMANDS

    train, model = argparse.ArgumentParser(), argparse.ArgumentParser()
    COMMANDS["train"].configure(train)
    COMMANDS["model"].configure(model)
    for text in LayerKind.choices():
        assert train.parse_args([text, "--data", "x", "--lambda", "0.01"]).kind == text
        assert model.parse_args(["init", "-o", "x", "--kind", text]).kind == text
    with pytest.raises(SystemExit):
        train.parse_args(["junk", "--data", "x", "--lambda", "0.01"])


# -- tiling is an option of the model's own coding path ----------------------------------------
class _Calls:
    def __init__(self, module: torch.nn.Module) -> None:
        self.n = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, *_args) -> None:
        self.n += 1


def test_tiled_codec_is_the_models_compress_and_synthesize(package_factory) -> None:
    """A 128 x 128 frame (8 x 8 latent) in tiles of 4 latent positions: 2 x 2 tiles. The
    codec's layer and machine image are the model's own compress / synthesize, bit-exact."""
    tiling = Tiling(max_pixels=0, tile=4, halo=2)
    pkg = load_package(package_factory("base"))
    model = pkg.model
    codec = ScalableCodec(pkg, tiling=tiling)
    frame = _frame(128, 128, seed=3)
    x = _pad(frame_to_tensor(frame))

    ga, gs = _Calls(model.g_a), _Calls(model.g_s)
    data = codec.encode_base(frame)
    assert ga.n == 4  # 2 x 2 tiles
    with torch.no_grad():
        strings, y_hat = model.compress(x, tiling=tiling)
    assert ga.n == 8
    assert unpack_layer(data).substreams == tuple(strings)

    machine = codec.decode_machine(data)
    assert gs.n == 4
    with torch.no_grad():
        expected = tensor_to_frame(model.synthesize(y_hat, tiling=tiling))
    np.testing.assert_array_equal(machine, expected)
    ga.handle.remove()
    gs.handle.remove()

    # the default tiling runs small frames whole: the model's plain compress, bit-exact
    whole = ScalableCodec(pkg).encode_base(frame)
    with torch.no_grad():
        plain, _ = model.compress(x)
    assert unpack_layer(whole).substreams == tuple(plain)


def test_codec_has_no_compress_of_its_own(package_factory, monkeypatch) -> None:
    """Encoding goes through LayerCodec.compress, decoding through LayerCodec.synthesize."""
    base = package_factory("base")
    codec = ScalableCodec.load(base, package_factory("residual", base=base))
    calls: list[str] = []
    for runner, name in ((codec.base, "base"), (codec.enhancement, "residual")):
        model = runner.model
        for method in ("compress", "synthesize"):
            original = getattr(model, method)

            def spy(*a, _o=original, _n=f"{name}.{method}", **kw):
                calls.append(_n)
                return _o(*a, **kw)
            monkeypatch.setattr(model, method, spy)
    frame = _frame(64, 64)
    b = codec.encode_base(frame)
    e = codec.encode_enhancement(frame, b)
    codec.decode_human(b, e)
    assert calls == ["base.compress",
                     "base.synthesize", "residual.compress",      # x - x̂_machine, coded
                     "base.synthesize", "residual.synthesize"]    # x̂_machine + r̂


# -- one reference rule ------------------------------------------------------------------------
def test_base_reference_rule() -> None:
    from icm_codec.models import base_reference

    y = torch.randn(1, 4, 2, 2)
    image = torch.randn(1, 3, 32, 32)  # a machine image overshoots [0, 1] here and there
    assert base_reference("enhancement", y, lambda _: image) is y
    # DC codes x − x̂_machine of the image as an image is: clamped, in training and coding
    assert torch.equal(base_reference(LayerKind.RESIDUAL, y, lambda _: image), image.clamp(0, 1))
    assert torch.equal(base_reference("dc", y, lambda _: image), image.clamp(0, 1))
    assert base_reference("base", y, lambda _: image) is None
    assert base_reference("single", y, lambda _: image) is None


@pytest.mark.parametrize("kind", ["enhancement", "residual"])
def test_codec_and_trainer_share_the_reference_rule(package_factory, monkeypatch,
                                                    kind: str) -> None:
    import icm_codec.api as api
    import icm_codec.train.trainer as trainer
    from icm_codec.models import base_reference

    seen: list[str] = []

    def spy(k, y, image):
        seen.append(LayerKind.parse(k).label)
        return base_reference(k, y, image)
    monkeypatch.setattr(api, "base_reference", spy)
    monkeypatch.setattr(trainer, "base_reference", spy)

    base = package_factory("base")
    codec = ScalableCodec.load(base, package_factory(kind, base=base))
    frame = _frame(64, 64, seed=1)
    b = codec.encode_base(frame)
    codec.decode_human(b, codec.encode_enhancement(frame, b))
    # the enhancement's analysis does not see the base: only its decode asks
    assert seen == [kind] * (2 if kind == "residual" else 1)

    seen.clear()
    base_model = load_package(base).model
    x = _pad(frame_to_tensor(frame))
    ref = trainer._Reference(base_model, kind)(x)
    assert seen == [kind]
    with torch.no_grad():
        y_train = base_model.coder(base_model.g_a(x))["y_hat"]
        want = y_train if kind == "enhancement" else base_model.g_s(y_train).clamp(0, 1)
    assert torch.equal(ref, want)


# -- one parse per received layer --------------------------------------------------------------
def test_parsed_layer_is_parsed_once(package_factory, monkeypatch) -> None:
    import icm_codec.bitstream as bs

    codec = ScalableCodec.load(package_factory("base"))
    data = codec.encode_base(_frame(64, 96), frame_id=5)
    parsed = parse_layer(data)
    assert isinstance(parsed, ParsedLayer)
    assert parsed.data is data or parsed.data == data
    assert parsed.digest == bs.layer_digest(data)
    assert pack_layer(parsed.layer) == data and parsed.layer == unpack_layer(data)
    parses = _count_parses(monkeypatch)
    assert parse_layer(parsed) is parsed
    image = codec.decode_machine(parsed)
    assert parses() == 0
    np.testing.assert_array_equal(image, codec.decode_machine(data))
    assert parses() == 1


def _count_parses(monkeypatch):
    """Counts bitstream._parse calls: each is one full CRC-32 over the layer."""
    import icm_codec.bitstream as bs

    calls = [0]
    real = bs._parse

    def counting(*a, **kw):
        calls[0] += 1
        return real(*a, **kw)
    monkeypatch.setattr(bs, "_parse", counting)
    return lambda: calls[0]


def test_one_crc_check_per_ingested_frame(tmp_path, monkeypatch) -> None:
    """A real ingest (shipped default base, codec decoder, SQLite store): each frame's layer
    is parsed once, where the cloud receives it, and passed on as a ParsedLayer."""
    pytest.importorskip("grpc")
    from cloud_decoder.decoders import CodecDecoder
    from cloud_decoder.metrics import CloudMetrics
    from cloud_decoder.pipeline import IngestItem, IngestPipeline, now_us
    from cloud_decoder.sessions import EdgeSession
    from cloud_decoder.storage import open_store
    from icm_codec.registry import default_package
    from icm_rpc import pb

    codec = ScalableCodec.load(default_package("base"))
    frames = [_frame(64, 96, seed=i) for i in range(3)]
    layers = [codec.encode_base(f, frame_id=i) for i, f in enumerate(frames, 1)]
    store = open_store(str(tmp_path / "c.sqlite3"))
    store.open_epoch("cam", "e1", now_us())
    session = EdgeSession(pb.Hello(camera_id="cam", epoch="e1"), "test")
    pipeline = IngestPipeline(store, CodecDecoder(), [], CloudMetrics(), thumbnail_width=0)
    items = [IngestItem(session, pb.BaseFrame(frame_id=i, layer=b, capture_time_us=now_us()),
                        now_us()) for i, b in enumerate(layers, 1)]

    parses = _count_parses(monkeypatch)
    rows = pipeline.process(items)
    assert parses() == len(items)  # was 4 per frame: check x2, decode header, codec batch
    assert [r.frame_id for r in rows] == [1, 2, 3]
    for row, b in zip(rows, layers, strict=True):
        assert row.base_layer == b and (row.width, row.height) == (96, 64)
    stored = store.frame("cam", 2, with_layer=True)
    assert stored is not None and stored.base_layer == layers[1]
    monkeypatch.undo()
    assert [r.base_bytes for r in rows] == [len(b) for b in layers]
