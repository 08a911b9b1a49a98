"""icm_eval: one evaluation package behind ``icm eval-rd`` and ``icm eval-machine``.

Both commands code images through the same classical codec table and the same learned-package
runners, so a JPEG at one quality (or a base layer) is the same bytes in either report.
"""

from __future__ import annotations

import importlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import icm_eval.classical as classical
from icm_app.menu import entry
from icm_eval import rd
from icm_eval.learned import load_bases, machine_points
from icm_eval.metrics import psnr8


@pytest.fixture
def encodes(monkeypatch) -> list[tuple[str, int, bytes]]:
    """Every classical file written, whichever command writes it."""
    seen: list[tuple[str, int, bytes]] = []
    real = classical.encode

    def spy(name: str, image: np.ndarray, quality: int) -> bytes:
        data = real(name, image, quality)
        seen.append((name, quality, data))
        return data

    monkeypatch.setattr(classical, "encode", spy)
    return seen


def test_both_commands_share_one_classical_table() -> None:
    assert entry("eval-rd").module == "icm_eval.cli"
    assert rd.CLASSICAL is classical.CLASSICAL
    # the machine benchmark keeps no table of its own: its rate points come from icm_eval
    cli = importlib.import_module(entry("eval-machine").module)
    assert not (Path(cli.__file__).parent / "codecs.py").exists()
    assert "from icm_eval.classical import classical_points" in Path(cli.__file__).read_text()
    assert set(classical.RD_QUALITIES) == set(classical.DEFAULT_QUALITIES) == {"JPEG", "WebP",
                                                                             "AVIF"}


def test_a_jpeg_is_the_same_bytes_through_both_commands(photos, encodes) -> None:
    img = np.ascontiguousarray(photos[0][:96, :128])
    # eval-rd: one point of its JPEG curve
    [point] = rd.classical_curve("JPEG", [("a.png", img)], progress=False, qualities=(50,))
    # eval-machine: its rate point for JPEG at quality 50
    [machine] = classical.classical_points(classical.parse_qualities(
        ["JPEG=50", "WebP=", "AVIF="]))
    [(n, dec)] = machine.run([img])
    assert [(name, q) for name, q, _ in encodes] == [("JPEG", 50), ("JPEG", 50)]
    rd_bytes, machine_bytes = encodes[0][2], encodes[1][2]
    assert rd_bytes == machine_bytes
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=50, subsampling=2)
    assert machine_bytes == buf.getvalue()
    assert n == len(rd_bytes) and point.bpp == pytest.approx(8 * n / (96 * 128))
    assert point.label == machine.label == "q50" and point.extra == machine.params
    assert point.psnr == pytest.approx(psnr8(img, dec))


def test_a_base_layer_is_the_same_bytes_through_both_commands(package_factory, photos) -> None:
    """eval-rd's machine curve and eval-machine's base rate point run one coder."""
    base = package_factory("base", seed=1, N=32)
    img = np.ascontiguousarray(photos[1][:64, :96])
    [learned] = load_bases([base])
    nbytes, layer, dec = learned.layers(img)  # what eval-rd measures, one image at a time
    [point] = machine_points([base])
    [(n, dec_batch)] = point.run([img])  # what eval-machine measures, a batch at a time
    assert layer == 0 and n == nbytes > 0
    assert np.array_equal(dec, dec_batch)


def test_eval_rd_takes_model_ids_and_says_which_is_missing(tmp_path: Path, photos) -> None:
    """`--base` etc. name packages as every command does (path, model id or digest); an unknown
    one is a clear error before any image is coded."""
    import subprocess
    import sys

    from icm_codec.registry import default_package

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(photos[0][:64, :64]).save(folder / "a.png")
    run = [sys.executable, "-m", "icm_app", "eval-rd", "--data", str(folder), "--no-classical",
           "--out", str(tmp_path / "rd"), "--enhancement", "--dc", "--single"]
    bad = subprocess.run([*run, "--base", "no-such-base"], capture_output=True, text=True)
    assert bad.returncode == 2 and "no model package 'no-such-base'" in bad.stderr
    base_id = default_package("base").stem
    ok = subprocess.run([*run, "--base", base_id], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert base_id in (tmp_path / "rd" / "rd.md").read_text()
