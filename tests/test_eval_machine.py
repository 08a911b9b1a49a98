"""``icm eval-machine`` end to end on a tiny sample, and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from icm_app.main import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def machine_run(shared_dir: Path, package_factory,
                tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """2 vtest frames + 2 COCO8 images, one seeded base (+ its human layer), tiny sweeps."""
    base = package_factory("base", seed=1)
    enh = package_factory("enhancement", m=2, base=base, seed=1)
    out = tmp_path_factory.mktemp("machine")
    rc = main(["eval-machine", "--video", str(shared_dir / "data/video/vtest.avi"),
               "--frames", "2", "--coco8", str(shared_dir / "data/coco8"), "--images", "2",
               "--detectors", str(shared_dir / "assets/detectors"),
               "--models", "yolo11n,yolo26n-seg", "--base", str(base),
               "--enhancement", str(enh),
               "--qualities", "JPEG=10,60", "WebP=30", "AVIF=40", "--out", str(out),
               "--threads", "1", "--no-progress"])
    assert rc == 0
    return out, ""


def test_writes_json_plots_and_report(machine_run: tuple[Path, str]) -> None:
    out, _ = machine_run
    res = json.loads((out / "machine.json").read_text())
    assert {"settings", "sets", "models", "codecs", "original", "points", "curves",
            "bpp_to_keep", "robustness", "target", "timing"} <= set(res)
    assert res["sets"]["vtest"]["reference"] == "pseudo-ground-truth"
    assert res["sets"]["coco8"]["reference"] == "labels"
    assert len(res["sets"]["vtest"]["images"]) == 2 == len(res["sets"]["coco8"]["images"])
    assert res["codecs"] == ["base", "human", "JPEG", "WebP", "AVIF"]
    assert res["models"]["yolo26n-seg"]["task"] == "segment"
    # pseudo-ground-truth: each model on the original frames scores 1 against itself
    assert res["original"]["vtest"]["yolo11n"]["box"]["map"] == pytest.approx(1.0)
    assert res["original"]["vtest"]["yolo26n-seg"]["mask"]["map"] == pytest.approx(1.0)
    assert 0.2 < res["original"]["coco8"]["yolo11n"]["box"]["map"] < 1.0  # real labels
    assert "mask" not in res["original"]["coco8"]["yolo26n-seg"]  # COCO8 labels are boxes
    # bpp from real bytes, growing with quality; every point scored for every model and set
    jpeg = [p for p in res["points"] if p["codec"] == "JPEG"]
    assert jpeg[0]["bpp"]["vtest"] < jpeg[1]["bpp"]["vtest"]
    base = next(p for p in res["points"] if p["codec"] == "base")
    human = next(p for p in res["points"] if p["codec"] == "human")
    assert human["bpp"]["vtest"] > base["bpp"]["vtest"] > 0
    assert base["params"]["trained"] is not True  # seeded package: flagged in the report
    for p in res["points"]:
        for s in ("vtest", "coco8"):
            assert set(p["metrics"][s]) == {"yolo11n", "yolo26n-seg"}
            m = p["metrics"][s]["yolo11n"]["box"]["map"]
            assert m is None or 0.0 <= m <= 1.0
    keep = res["bpp_to_keep"]["vtest"]["yolo11n"]["box"]
    assert set(res["codecs"]) <= set(keep)
    assert keep["JPEG"]["bound"] in ("=", "<=", "not reached")
    assert {r["set"] for r in res["robustness"]} == {"vtest", "coco8"}
    assert "yolo26n-seg (mask)" in res["robustness"][0]["table"]
    assert res["target"]["set"] == "vtest" and res["target"]["model"] == "yolo11n"
    assert res["target"]["met"] in (True, False, None) and res["target"]["view"] == "box"
    assert res["target"]["person"]["view"] == "box/person"
    assert [g["anchor"] for g in res["target"]["goals"]] == ["WebP", "AVIF", "JPEG"]
    for name in ("map_vs_bpp_vtest.png", "map_vs_bpp_coco8.png", "bpp_to_keep.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    for heading in ("## Target", "## Bits per pixel to keep 95%", "## Rate–accuracy",
                    "## Robustness", "Untrained (seeded) packages"):
        assert heading in md


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no evaluation data"),
        (["--video", "nope.avi"], "video not found"),
        (["--video", "{video}", "--qualities", "GIF=5"], "--qualities"),
        (["--video", "{video}", "--models", "/no/such/weights.pt"], "not found"),
        (["--video", "{video}", "--base", "missing.icmpkg"], "model package not found"),
        # model ids resolve as in every other command; one of the wrong kind is refused
        (["--video", "{video}", "--base", "single-gdn-l0.0009-r5d"], "not base"),
        (["--video", "{video}", "--frame-range", "9"], "frame range"),
        (["--video", "{video}", "--frame-range", ":", "--frame-range", "715:"], "once per"),
    ],
)
def test_errors_are_one_clear_line(shared_dir: Path, capsys, tmp_path: Path,
                                   argv: list[str], message: str) -> None:
    argv = [a.format(video=shared_dir / "data/video/vtest.avi") for a in argv]
    rc = main(["eval-machine", *argv, "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert message in err


def test_human_layer_defaults_to_installed_enhancements() -> None:
    """Without --enhancement, eval-machine adds the installed enhancement of a --base package."""
    from icm_codec.registry import SHIPPED_DIR, list_packages
    from icm_eval.learned import installed_enhancements

    shipped = {i.model_id: i for i in list_packages([SHIPPED_DIR])}
    enh = [i for i in shipped.values() if i.kind == "enhancement"]
    if not enh:
        pytest.skip("no enhancement package is installed")
    from icm_codec import load_package

    base_digest = load_package(enh[0].path).config.base_digest
    base = next((i for i in shipped.values() if i.digest == base_digest), None)
    if base is None:
        pytest.skip("the installed enhancement's base package is not installed")
    assert enh[0].path in installed_enhancements([base.path])
    others = [i.path for i in shipped.values() if i.kind == "base" and i.digest != base_digest]
    assert enh[0].path not in installed_enhancements(others)


def test_residual_layer_is_its_own_curve(package_factory) -> None:
    """The difference-compression baseline must not share the enhancement layer's curve."""
    from icm_eval.learned import human_points

    base = package_factory("base", seed=1)
    enh = package_factory("enhancement", m=2, base=base, seed=1)
    dc = package_factory("residual", base=base, seed=1)
    assert [p.codec for p in human_points([enh, dc], [base])] == ["human", "human-dc"]
