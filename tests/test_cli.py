"""The `icm` tool end to end: model init, encode, info, decode, and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from icm_app.main import main


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli-models")
    base, enh = d / "base.icmpkg", d / "enh.icmpkg"
    assert main(["model", "init", "-o", str(base), "--model-id", "cli-base"]) == 0
    assert main(["model", "init", "--kind", "enhancement", "--m", "2", "--base", str(base),
                 "-o", str(enh)]) == 0
    return {"base": base, "enh": enh, "dir": d}


@pytest.fixture()
def image(tmp_path: Path, photos) -> Path:
    p = tmp_path / "in.png"
    Image.fromarray(photos[1][:77, :101]).save(p)
    return p


def test_encode_info_decode(models, image: Path, tmp_path: Path, capsys,
                            monkeypatch) -> None:
    out = tmp_path / "f.icm"
    rc = main(["encode", str(image), "-o", str(out), "--layers", "base,enhancement",
               "--model", str(models["base"]), "--enhancement", str(models["enh"])])
    assert rc == 0
    text = capsys.readouterr().out
    assert "base" in text and "enhancement" in text and "bpp" in text
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "101x77" in info and "cli-base" in info and "enhancement" in info
    # decode finds both packages by the digests written in the layers
    monkeypatch.setenv("ICM_MODEL_PATH", str(models["dir"]))
    m, h = tmp_path / "m.png", tmp_path / "h.png"
    assert main(["decode", str(out), "--machine", str(m), "--human", str(h)]) == 0
    assert np.asarray(Image.open(m)).shape == (77, 101, 3)
    assert np.asarray(Image.open(h)).shape == (77, 101, 3)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["encode", "missing.png", "-o", "x.icm", "--model", "{base}"], "image not found"),
        (["encode", "{image}", "-o", "x.icm", "--model", "nope.icmpkg"], "no model package"),
        (["encode", "{image}", "-o", "x.icm", "--layers", "enhancement", "--model", "{base}"],
         "--layers"),
        (["decode", "{garbage}", "--machine", "m.png", "--model", "{base}"], "magic"),
        (["decode", "{garbage}"], "nothing to do"),
        (["info", "missing.icm"], "file not found"),
    ],
)
def test_errors_are_one_clear_line(models, image: Path, tmp_path: Path, capsys,
                                   argv: list[str], message: str) -> None:
    garbage = tmp_path / "g.icm"
    garbage.write_bytes(b"\x00" * 40)
    argv = [a.format(base=models["base"], image=image, garbage=garbage) for a in argv]
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert message in err


def test_console_script_runs_as_a_process(models, image: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.icm"
    res = subprocess.run([sys.executable, "-m", "icm_app", "encode", str(image), "-o",
                          str(out), "--model", str(models["base"])],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    bad = subprocess.run([sys.executable, "-m", "icm_app", "info", str(image)],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "error" in bad.stderr and "Traceback" not in bad.stderr
