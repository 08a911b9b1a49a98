"""scripts/bd_curves.py: curves made of chosen points of eval-rd results, compared by BD-rate."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bd_curves.py"


def _module():
    spec = importlib.util.spec_from_file_location("bd_curves", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _point(bpp: float, psnr: float, model: str = "") -> dict:
    return {"label": "", "bpp": bpp, "psnr": psnr, "ms_ssim": 0.9,
            "extra": {"model": model} if model else {}}


def test_rounds_are_compared_point_by_point(tmp_path: Path, capsys) -> None:
    psnrs = (26.0, 28.0, 30.0, 32.0)
    rd = {"curves": {
        "JPEG": [_point(0.2 * 2**i, p) for i, p in enumerate(psnrs)],
        "single-layer": [_point(0.2 * 2**i, p, f"/runs/a-{i}/model.icmpkg")
                         for i, p in enumerate(psnrs)]
        + [_point(0.1 * 2**i, p, f"/w/b-{i}.icmpkg") for i, p in enumerate(psnrs)]}}
    path = tmp_path / "rd.json"
    path.write_text(json.dumps(rd))
    mod = _module()
    assert mod.main([str(path), "--", "a=0/model.icmpkg,1/model.icmpkg,2/model.icmpkg,"
                     "3/model.icmpkg", "b=.icmpkg"]) == 0
    out = capsys.readouterr().out
    # "b=.icmpkg" matches every point: suffixes pick by the end of the path
    assert "a BD-rate: vs JPEG +0.0 %" in out
    anchors, points = mod.load_points([path], "single-layer")
    half = mod.pick(points, [f"b-{i}.icmpkg" for i in range(4)])
    assert [p.bpp for p in half] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert mod.bd_rate(anchors["JPEG"], half) == pytest.approx(-50.0, abs=0.1)
    rd["marginal"] = {"single-layer": [_point(0.05, 26.0, "/m/x.icmpkg"),
                                       _point(0.1, 28.0, "/m/y.icmpkg")]}
    path.write_text(json.dumps(rd))
    _, own = mod.load_points([path], "single-layer", marginal=True)
    assert [p.bpp for p in mod.pick(own, ["x.icmpkg", "y.icmpkg"])] == [0.05, 0.1]
    assert mod.main([str(path), "--psnr-range", "28", "30", "--", "b=.icmpkg"]) == 0
    out = capsys.readouterr().out
    assert "b BD-rate: vs JPEG -50.0 %" in out and "over 28–30 dB only" in out
    with pytest.raises(SystemExit):
        mod.main([str(path), "--psnr-range", "30", "28", "--", "b=.icmpkg"])
    with pytest.raises(SystemExit, match="no single-layer point matches"):
        mod.main([str(path), "--", "c=nothing.icmpkg"])
    with pytest.raises(SystemExit, match="cannot read the curves"):
        mod.main([str(tmp_path / "missing.json"), "--", "a=x"])
