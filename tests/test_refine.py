"""Encoder-side latent refinement: a better latent for the same decoder, measured on real bytes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from icm_codec import Refinement, ScalableCodec, load_package
from icm_codec.registry import SHIPPED_DIR, default_package, list_packages

pytestmark = pytest.mark.skipif(not (SHIPPED_DIR / "index.json").is_file(),
                                reason="no shipped weights in icm_codec/weights")


def _single() -> Path:
    return next(i.path for i in list_packages([SHIPPED_DIR]) if i.kind == "single")


def _objective(frame: np.ndarray, decoded: np.ndarray, nbytes: int, lmbda: float) -> float:
    """R + λ·255²·mse on real bytes and the 8-bit decoded image (the training objective)."""
    mse = np.mean((frame.astype(np.float64) - decoded.astype(np.float64)) ** 2) / 255**2
    return 8 * nbytes / frame[..., 0].size + lmbda * 255**2 * mse


@pytest.fixture(scope="module")
def frame(photos) -> np.ndarray:
    return photos[0][:120, :184]  # not a multiple of 64: the padding is outside the objective


def test_refined_single_layer_costs_less_and_decodes_with_the_plain_decoder(frame) -> None:
    pkg = load_package(_single())
    lmbda = pkg.config.meta["lambda"]
    plain = ScalableCodec(pkg)
    refined = ScalableCodec(pkg, refine=Refinement(steps=15))
    a, b = plain.encode_base(frame), refined.encode_base(frame)
    assert a != b
    # the plain codec decodes the refined layer: only the encoder changed
    dec_a, dec_b = plain.decode_machine(a), plain.decode_machine(b)
    assert np.array_equal(dec_b, refined.decode_machine(b))
    assert _objective(frame, dec_b, len(b), lmbda) < _objective(frame, dec_a, len(a), lmbda)


def test_refined_human_layer_costs_less_and_the_base_layer_is_untouched(frame) -> None:
    base = load_package(default_package("base"))
    human = load_package(default_package("enhancement"))
    lmbda = human.config.meta["lambda"]
    plain = ScalableCodec(base, human)
    refined = ScalableCodec(base, human, refine=Refinement(steps=15))
    b = plain.encode_base(frame)
    assert refined.encode_base(frame) == b  # base layers are never refined
    e_plain, e_ref = plain.encode_enhancement(frame, b), refined.encode_enhancement(frame, b)
    assert e_plain != e_ref
    costs = [_objective(frame, plain.decode_human(b, e), len(e), lmbda) for e in (e_plain, e_ref)]
    assert costs[1] < costs[0]


def test_refinement_leaves_the_shared_model_as_it_found_it(frame) -> None:
    """Encoders may share one loaded model: no mode switch, no parameter gradients."""
    pkg = load_package(_single())
    model = pkg.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ScalableCodec(pkg, refine=Refinement(steps=3)).encode_base(frame)
    assert not model.training and not any(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_frame_refines_to_the_same_bytes_whatever_the_callers_generator(frame) -> None:
    """The noisy rate is seeded per frame: encodes are reproducible, and the caller's global
    generator is left where it was."""
    codec = ScalableCodec(load_package(_single()), refine=Refinement(steps=3))
    torch.manual_seed(1)
    first = codec.encode_base(frame)
    torch.manual_seed(2)
    before = torch.get_rng_state()
    assert codec.encode_base(frame) == first
    assert torch.equal(torch.get_rng_state(), before)


def test_refinement_settings_fail_clearly(frame, package_factory) -> None:
    for bad in ({"steps": -1}, {"lr": 0.0}, {"lr": math.nan}, {"lmbda": -1.0}):
        with pytest.raises(ValueError, match="refinement"):
            Refinement(**bad)
    base = load_package(default_package("base"))
    with pytest.raises(ValueError, match="base layers are not refined"):
        Refinement().check(base.model, torch.zeros(1, 3, 64, 64))
    untrained = load_package(package_factory("single"))  # no training record, no λ
    with pytest.raises(ValueError, match="no training λ"):
        ScalableCodec(untrained, refine=Refinement(steps=2))
    # an explicit λ works for it; steps=0 is the plain encoder
    ScalableCodec(untrained, refine=Refinement(steps=1, lmbda=0.01)).encode_base(frame[:64, :64])
    assert ScalableCodec(untrained, refine=Refinement(steps=0)).refine is None
    small = ScalableCodec(load_package(_single()), refine=Refinement(steps=2, max_pixels=4096))
    with pytest.raises(ValueError, match="over the refinement limit"):
        small.encode_base(frame)


def test_eval_rd_draws_the_refined_encoder_as_its_own_curve(tmp_path: Path, frame) -> None:
    from PIL import Image

    from icm_eval.data import load_images
    from icm_eval.rd import evaluate

    (tmp_path / "img").mkdir()
    Image.fromarray(frame[:64, :64]).save(tmp_path / "img" / "a.png")
    result = evaluate(load_images(tmp_path / "img"), singles=[_single()], classical=(),
                      progress=False, refine_steps=(0, 2))
    assert set(result["curves"]) == {"single-layer", "single-layer +refine2"}
    assert result["curves"]["single-layer +refine2"][0]["extra"]["refine"] == 2


def test_icm_encode_refines_and_icm_decode_reads_it(tmp_path: Path, frame, capsys) -> None:
    from PIL import Image

    from icm_app.main import main

    img = tmp_path / "in.png"
    Image.fromarray(frame[:64, :96]).save(img)
    plain, refined = tmp_path / "a.icm", tmp_path / "b.icm"
    single = str(_single())
    assert main(["encode", str(img), "-o", str(plain), "--model", single]) == 0
    assert main(["encode", str(img), "-o", str(refined), "--model", single,
                 "--refine-steps", "3"]) == 0
    assert plain.read_bytes() != refined.read_bytes()
    assert main(["decode", str(refined), "--machine", str(tmp_path / "out.png")]) == 0
    assert np.asarray(Image.open(tmp_path / "out.png")).shape == (64, 96, 3)
    capsys.readouterr()
    assert main(["encode", str(img), "-o", str(plain), "--refine-steps", "-2"]) == 2
    assert "refinement steps must be >= 0" in capsys.readouterr().err
    assert main(["encode", str(img), "-o", str(plain), "--refine-steps", "2"]) == 2
    assert "only a machine base layer" in capsys.readouterr().err


def test_edge_refines_lazy_human_layers_without_holding_up_the_live_stream(photos) -> None:
    """A lazy enhancement request runs outside the capture lock: while a (slow, refined) human
    layer is being made, base frames keep coming."""
    import threading

    from edge_encoder.encoder import EdgeEncoder

    edge = EdgeEncoder(mode="lazy", refine_steps=40)
    frame = np.ascontiguousarray(photos[0][:128, :192])
    kept = edge.encode(frame, frame_id=1)
    result: dict[str, bytes] = {}
    worker = threading.Thread(
        target=lambda: result.update(layer=edge.encode_enhancement(kept.raw_png, kept.base)))
    worker.start()
    frames_meanwhile = 0
    while worker.is_alive() and frames_meanwhile < 3:
        edge.encode(frame, frame_id=2 + frames_meanwhile)
        frames_meanwhile += 1
    worker.join()
    assert frames_meanwhile == 3  # three base frames while one refined human layer was made
    plain = EdgeEncoder(mode="lazy").encode_enhancement(kept.raw_png, kept.base)
    assert result["layer"] != plain
    codec = edge.codec
    human = codec.decode_human(kept.base, result["layer"])
    assert human.shape == frame.shape
