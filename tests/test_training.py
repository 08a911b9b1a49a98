"""Training system: data split, masks, resumable training, export, BD-rate maths."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from icm_codec.train.data import load_dataset
from icm_codec.train.masks import MaskMaker, edge_mask, label_boundaries
from icm_eval.metrics import bd_rate
from icm_eval.points import RDPoint


def test_label_boundaries_are_label_changes() -> None:
    labels = np.zeros((6, 6), dtype=int)
    labels[:, 3:] = 1
    b = label_boundaries(labels)
    assert b[:, 2].all() and b.sum() == 6


def test_lower_alpha_gives_more_edges(photos) -> None:
    img = photos[0][:256, :256]
    fractions = [edge_mask(img, alpha=a).mean() for a in (0.98, 0.93, 0.48)]
    assert fractions[0] <= fractions[1] < fractions[2]
    assert 0.0 < fractions[0] < 1.0


def test_masks_are_cached_on_disk(tmp_path: Path, photos) -> None:
    from icm_codec.train.data import Sample

    s = Sample("photo0", photos[1][:128, :160])
    maker = MaskMaker("edges", tmp_path)
    first = maker(s)
    assert len(list(tmp_path.rglob("*.npz"))) == 1
    np.testing.assert_array_equal(MaskMaker("edges", tmp_path)(s), first)
    # keyed by content: the same pixels under another path hit the cache, other pixels do not
    MaskMaker("edges", tmp_path)(Sample("/elsewhere/photo0", s.image.copy()))
    assert len(list(tmp_path.rglob("*.npz"))) == 1
    MaskMaker("edges", tmp_path)(Sample("photo0", s.image[::-1].copy()))
    assert len(list(tmp_path.rglob("*.npz"))) == 2
    full = MaskMaker("full")(s)
    assert full.all() and full.shape == (128, 160)


def test_object_masks_from_yolo_labels(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.zeros((100, 200, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.2\n")
    train, _ = load_dataset([tmp_path / "images"], val_fraction=0.0, progress=False)
    mask = MaskMaker("objects")(train[0])
    assert mask.sum() == pytest.approx(100 * 20, rel=0.1)


def test_video_split_by_time(tmp_path: Path) -> None:
    import cv2

    path = tmp_path / "clip.avi"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(100):
        vw.write(np.full((48, 64, 3), i * 2, np.uint8))
    vw.release()
    train, val = load_dataset([path], video_stride=1, video_gap=10, val_fraction=0.2,
                              progress=False)
    t_idx = [int(s.key.rsplit("#", 1)[1]) for s in train]
    v_idx = [int(s.key.rsplit("#", 1)[1]) for s in val]
    assert max(t_idx) < min(v_idx) - 10  # a gap: no validation frame sits next to training
    assert len(v_idx) == 20


def test_test_set_is_refused(tmp_path: Path) -> None:
    (tmp_path / "kodak").mkdir()
    with pytest.raises(ValueError, match="never train"):
        load_dataset([tmp_path / "kodak"], progress=False)


def _images(folder: Path, photos) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(photos):
        Image.fromarray(p).save(folder / f"p{i}.png")
    return folder


def test_train_resume_and_export(tmp_path: Path, photos) -> None:
    from icm_app.main import main
    from icm_codec import ScalableCodec, load_package

    data = _images(tmp_path / "data", photos)
    run = tmp_path / "runs" / "base"
    args = ["train", "base", "--data", str(data), "--lambda", "0.01", "--steps", "6",
            "--batch", "2", "--crop", "64", "--val-every", "3", "--out", str(run)]
    assert main(args) == 0
    assert (run / "last.pt").is_file() and (run / "model.icmpkg").is_file()
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert all(0 < float(r["val_z_share"]) < 1 for r in rows if r["val_bpp"])  # z's rate share
    # a log begun by an older version (without that column) keeps its own columns on resume
    old = [r[:-2] + r[-1:] for r in csv.reader((run / "metrics.csv").open())]
    with (run / "metrics.csv").open("w", newline="") as f:
        csv.writer(f).writerows(old)
    # asking for more steps resumes from the checkpoint instead of starting again
    args[args.index("6")] = "9"
    assert main(args) == 0
    table = list(csv.reader((run / "metrics.csv").open()))
    assert "val_z_share" not in table[0] and {len(r) for r in table} == {len(table[0])}
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows if r["val_bpp"]] == [3, 6, 9]
    pkg = load_package(run / "model.icmpkg")
    assert pkg.config.meta["steps"] == 9 and pkg.config.meta["mask"] == "edges"
    codec = ScalableCodec(pkg)
    out = codec.decode_machine(codec.encode_base(photos[0][:64, :64]))
    assert out.shape == (64, 64, 3)
    # the enhancement trains on the frozen base and records which base it refines
    enh_run = tmp_path / "runs" / "enh"
    assert main(["train", "enhancement", "--data", str(data), "--lambda", "0.01",
                 "--steps", "2", "--batch", "2", "--crop", "64", "--m", "2",
                 "--base", str(run / "model.icmpkg"), "--out", str(enh_run)]) == 0
    enh = load_package(enh_run / "model.icmpkg")
    assert enh.config.base_digest == pkg.digest and enh.config.m == 2


def _curve(rates: list[float], psnrs: list[float]) -> list[RDPoint]:
    return [RDPoint("", r, p, math.nan) for r, p in zip(rates, psnrs, strict=True)]


def test_bd_rate() -> None:
    anchor = _curve([0.25, 0.5, 0.75, 1.0], [28.0, 31.0, 33.0, 34.5])
    assert bd_rate(anchor, anchor) == pytest.approx(0.0, abs=1e-9)
    half = _curve([0.125, 0.25, 0.375, 0.5], [28.0, 31.0, 33.0, 34.5])
    assert bd_rate(anchor, half) == pytest.approx(-50.0, abs=1e-6)
    assert math.isnan(bd_rate(anchor, _curve([1, 2], [40, 41])))


def test_bd_rate_over_a_fixed_psnr_range() -> None:
    """A curve that is twice as good below 30 dB and level with the anchor above 32 dB: its
    figure depends on where it is read, and a fixed interval reads the same whatever the
    curves' own spans."""
    anchor = _curve([0.25, 0.5, 1.0, 2.0], [28.0, 30.0, 32.0, 34.0])
    test = _curve([0.0625, 0.125, 0.25, 1.0, 2.0], [26.0, 28.0, 30.0, 32.0, 34.0])
    whole = bd_rate(anchor, test, "linear")
    assert -50.0 < whole < 0.0
    assert bd_rate(anchor, test, "linear", (28.0, 30.0)) == pytest.approx(-50.0, abs=1e-6)
    assert bd_rate(anchor, test, "linear", (32.0, 34.0)) == pytest.approx(0.0, abs=1e-6)
    # clipped to the common range (the anchor starts at 28 dB), never extrapolated
    assert bd_rate(anchor, test, "linear", (20.0, 30.0)) == pytest.approx(-50.0, abs=1e-6)
    assert bd_rate(anchor, test, "linear", (20.0, 99.0)) == pytest.approx(whole)
    assert math.isnan(bd_rate(anchor, test, psnr_range=(35.0, 40.0)))


def test_eval_rd_every_kind_and_report(tmp_path: Path, photos) -> None:
    """eval-rd end to end on seeded packages of every kind: real bytes, all four learned curves,
    BD-rates against the classical anchors and between the learned codecs, and the Markdown."""
    import json

    from icm_app.main import main
    from icm_eval.data import load_images
    from icm_eval.rd import evaluate, markdown, write_report

    base = tmp_path / "base.icmpkg"
    pk = {"enhancement": tmp_path / "enh.icmpkg", "residual": tmp_path / "dc.icmpkg",
          "single": tmp_path / "single.icmpkg"}
    assert main(["model", "init", "-o", str(base), "--N", "32"]) == 0
    for kind, path in pk.items():
        extra = ["--base", str(base)] if kind != "single" else []
        assert main(["model", "init", "--kind", kind, "--N", "32", "--m", "2", "-o", str(path),
                     *extra]) == 0
    data = _images(tmp_path / "test", [p[:96, :128] for p in photos[:2]])
    images = load_images(data)
    result = evaluate(images, bases=[base], enhancements=[pk["enhancement"]],
                      residuals=[pk["residual"]], singles=[pk["single"]], classical=("JPEG",),
                      progress=False)
    assert set(result["curves"]) == {"JPEG", "scalable (fusion)", "DC (difference)",
                                     "single-layer"}
    fusion = result["curves"]["scalable (fusion)"][0]
    assert fusion["bpp"] > result["machine"][0]["bpp"] > 0  # total rate counts both layers
    assert set(result["bd_rate_percent"]["scalable (fusion)"]) == {"JPEG", "DC (difference)",
                                                                   "single-layer"}
    assert set(result["bd_rate_percent"]["JPEG"]) == set()
    # every cubic reading has its straight-line cross-check beside it
    assert {k: set(v) for k, v in result["bd_rate_linear_percent"].items()} == {
        k: set(v) for k, v in result["bd_rate_percent"].items()}
    assert result["psnr_by_lambda_m"][0]["m"] == 2
    assert result["psnr_by_lambda_m"][0]["params"] > 0
    enh_only = result["marginal"]["scalable (fusion)"][0]
    assert 0 < enh_only["bpp"] < fusion["bpp"] and enh_only["psnr"] == fusion["psnr"]
    assert set(result["marginal_bd_rate_percent"]["scalable (fusion)"]) == set()  # no WebP run
    md = markdown(result)
    assert "| scalable (fusion) |" in md and "vs DC (difference)" in md and "edge mask" in md
    assert "marginal cost" in md
    write_report(result, tmp_path / "rd")
    assert json.loads((tmp_path / "rd" / "rd.json").read_text())["images"] == ["p0.png", "p1.png"]
    assert (tmp_path / "rd" / "rd.md").read_text() == md
    # the classical curves of an earlier run on the same images are taken, not coded again
    again = evaluate(images, singles=[pk["single"]], classical=("JPEG",), progress=False,
                     known=json.loads((tmp_path / "rd" / "rd.json").read_text()))
    same = [json.dumps([r["curves"]["JPEG"], r["bd_rate_percent"]["single-layer"]["JPEG"]])
            for r in (again, result)]  # as JSON: NaN equals itself there
    assert same[0] == same[1]
    with pytest.raises(ValueError, match="other images"):
        evaluate(images[:1], classical=("JPEG",), progress=False, known=result)


def test_eval_rd_draws_one_curve_per_family(tmp_path: Path, photos) -> None:
    """Packages of different archs or m are different codecs: each family is its own curve
    (named by what varies), and a learned curve is compared only with its own arch's."""
    from icm_app.main import main
    from icm_eval.data import load_images
    from icm_eval.rd import evaluate

    base = tmp_path / "base.icmpkg"
    assert main(["model", "init", "-o", str(base), "--N", "32"]) == 0
    enh = []
    for m in (1, 2):
        enh.append(tmp_path / f"enh-m{m}.icmpkg")
        assert main(["model", "init", "--kind", "enhancement", "--N", "32", "--m", str(m),
                     "--base", str(base), "-o", str(enh[-1])]) == 0
    singles = []
    for arch in ("lite", "gdn"):
        singles.append(tmp_path / f"single-{arch}.icmpkg")
        assert main(["model", "init", "--kind", "single", "--arch", arch, "--N", "32",
                     "-o", str(singles[-1])]) == 0
    images = load_images(_images(tmp_path / "test", [photos[0][:64, :64]]))
    result = evaluate(images, bases=[base], enhancements=enh, singles=singles,
                      classical=("JPEG",), progress=False)
    assert set(result["curves"]) == {"JPEG", "scalable (fusion) m=1", "scalable (fusion) m=2",
                                     "single-layer lite", "single-layer gdn"}
    assert set(result["bd_rate_percent"]["single-layer gdn"]) == {"JPEG"}
    assert set(result["bd_rate_percent"]["scalable (fusion) m=1"]) == {"JPEG",
                                                                       "single-layer lite"}
    assert sorted(r["m"] for r in result["psnr_by_lambda_m"]) == [1, 2]


def test_bd_rate_ignores_dominated_points() -> None:
    anchor = _curve([0.25, 0.5, 0.75, 1.0], [28.0, 31.0, 33.0, 34.5])
    half = _curve([0.125, 0.25, 0.375, 0.5], [28.0, 31.0, 33.0, 34.5])
    # an extra point with more bits and less PSNR than another must not bend the curve
    worse = [*half, RDPoint("", 0.45, 30.0, math.nan)]
    assert bd_rate(anchor, worse) == pytest.approx(-50.0, abs=1e-6)
    # two points of which one dominates the other: one point left, no BD-rate
    assert math.isnan(bd_rate(anchor, _curve([0.35, 0.6], [31.0, 30.0])))


def test_linear_bd_rate_is_not_bent_by_a_point_that_adds_almost_nothing() -> None:
    """The shipped DC curve's case (docs/rd-report.md, session 14): a third point 0.15 dB above
    the second for 15 % more bits moved the cubic reading by 7 points; straight lines move by
    the share of the range that point adds."""
    jpeg = _curve([0.221, 0.327, 0.423, 0.508, 0.66, 0.786, 0.906, 1.037],
                  [23.85, 26.67, 28.14, 29.14, 30.49, 31.42, 32.17, 32.91])
    two = _curve([0.492, 0.878], [28.84, 30.52])
    three = _curve([0.492, 0.878, 1.008], [28.84, 30.52, 30.67])
    cubic_jump = bd_rate(jpeg, three) - bd_rate(jpeg, two)
    linear_jump = bd_rate(jpeg, three, "linear") - bd_rate(jpeg, two, "linear")
    assert cubic_jump < -5.0
    assert abs(linear_jump) < 2.0
    # on points whose log-rate is linear in PSNR both readings agree
    anchor = _curve([0.25, 0.5, 1.0], [28.0, 31.0, 34.0])
    half = _curve([0.125, 0.25, 0.5], [28.0, 31.0, 34.0])
    assert bd_rate(anchor, half, "linear") == pytest.approx(-50.0, abs=1e-6)
    assert bd_rate(anchor, half) == pytest.approx(-50.0, abs=1e-6)
    with pytest.raises(ValueError, match="interpolation"):
        bd_rate(anchor, half, "spline")
