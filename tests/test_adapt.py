"""Detectors adapted to machine images: ``icm adapt-detector`` end to end (real base bitstreams,
real Ultralytics training, killed and resumed, no network), the record, the cloud choosing the
weights by a frame's base digest, and ``icm eval-machine`` comparing stock and adapted."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from analytics import Detector
from analytics.adapt import yolo_label_rows
from analytics.adapted import AdaptedRecord, find_adapted, load_adapted, write_card
from analytics.errors import AnalyticsError
from analytics.results import Detection, FrameResult
from analytics.weights import file_sha256
from icm_app.main import main
from icm_codec import ScalableCodec, load_package
from icm_codec.registry import default_package

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.shared]
REPO = Path(__file__).resolve().parent.parent
_NET_EVENTS = ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "urllib.Request")
_net: dict = {"watch": False, "seen": []}


def _audit(event: str, args: tuple) -> None:
    if _net["watch"] and event in _NET_EVENTS:
        _net["seen"].append((event, repr(args)[:200]))


def _argv(shared: Path, work: Path, out: Path, epochs: int = 3) -> list[str]:
    """A handful of images: 3 vtest frames of the part the codec never holds out, 2 COCO8
    training images; evaluation on 1 held-out vtest frame and 1 COCO8 validation image."""
    video = str(shared / "data/video/vtest.avi")
    return ["adapt-detector", "--detector", "yolo11n", "--detectors",
            str(shared / "assets/detectors"), "--base", str(default_package("base")),
            "--video", video, "--frame-range", "0:715", "--frames", "3",
            "--yolo", str(shared / "data/coco8"), "--images", "2", "--max-side", "320",
            "--eval-video", video, "--eval-frame-range", "715:", "--eval-frames", "1",
            "--eval-yolo", str(shared / "data/coco8"), "--eval-images", "1",
            "--epochs", str(epochs), "--imgsz", "160", "--batch", "2", "--threads", "1",
            "--work", str(work), "--out", str(out), "--no-progress"]


def _offline_prefix() -> list[str]:
    """``unshare -n``: run in a network namespace with no interfaces up, where one can be made."""
    if shutil.which("unshare"):
        try:
            if subprocess.run(["unshare", "-n", "true"], capture_output=True,
                              timeout=10).returncode == 0:
                return ["unshare", "-n"]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return []


@pytest.fixture(scope="module")
def adapted_run(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One real adaptation, killed after its first epoch and resumed.

    The first session runs in a separate process (without network where a namespace can be
    made) and gets SIGKILL once its first epoch's checkpoint is written; the second runs here,
    with an audit hook counting every socket the training opens.
    """
    root = tmp_path_factory.mktemp("adapt")
    work, out = root / "work", root / "out"
    # --work relative to the current folder (root): the run must stay in it, where Ultralytics
    # would put a relative project under its own runs_dir setting
    argv = _argv(shared_dir, Path("work"), out)
    log = root / "first.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "YOLO_OFFLINE": "1"}
    proc = subprocess.Popen([*_offline_prefix(), sys.executable, "-m", "icm_app", *argv],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=root)
    last = work / "runs/train/weights/last.pt"
    try:
        deadline, size = time.monotonic() + 300, -1
        while time.monotonic() < deadline and proc.poll() is None:
            now = last.stat().st_size if last.is_file() else -1
            if now > 0 and now == size:  # written, and not growing
                break
            size = now
            time.sleep(0.15)
        assert proc.poll() is None, log.read_text()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    if not _net.get("hooked"):  # audit hooks cannot be removed: one, switched by "watch"
        sys.addaudithook(_audit)
        _net["hooked"] = True
    err = io.StringIO()
    _net["watch"], _net["seen"] = True, []
    try:
        with contextlib.redirect_stderr(err), contextlib.chdir(root):
            rc = main(argv)
    finally:
        _net["watch"] = False
    assert rc == 0, err.getvalue()[-3000:]
    assert (work / "runs/train/weights/last.pt").is_file()
    record = json.loads(next(out.glob("*.json")).read_text())
    return {"root": root, "work": work, "out": out, "argv": argv, "stderr": err.getvalue(),
            "first_log": log.read_text(), "record": record, "net": list(_net["seen"])}


def test_adaptation_resumes_after_a_kill_and_writes_weights_and_record(adapted_run, shared_dir):
    rec, out = adapted_run["record"], adapted_run["out"]
    base = load_package(default_package("base"))
    assert re.search(r"resuming the training after epoch [12] of 3", adapted_run["stderr"])
    assert rec["format"] == "icm-adapted-detector" and rec["task"] == "detect"
    assert rec["id"] == f"yolo11n-on-{base.config.model_id}"
    assert rec["source"] == {"name": "yolo11n", "file": "yolo11n.pt", "sha256": file_sha256(
        shared_dir / "assets/detectors/yolo11n.pt")}
    assert [b["digest"] for b in rec["bases"]] == [base.digest]
    weights = out / rec["weights"]["file"]
    assert rec["weights"]["sha256"] == file_sha256(weights)
    assert 2e6 < weights.stat().st_size == rec["weights"]["bytes"] < 8e6  # a nano model
    tr, ds = rec["training"], rec["dataset"]
    assert tr["epochs"] == 3 and tr["sessions"] == 2 and tr["wall_seconds"] > 0
    assert ds["source_images"] == 5 and ds["val_images"] >= 1 and ds["train_images"] >= 3
    assert 0.01 < ds["mean_bpp"][base.config.model_id] < 2
    labels = {d["set"]: d["labels"] for d in rec["data"]}
    assert labels["coco8-train"] == "ground truth"
    assert labels["vtest@0-715"].startswith("pseudo")
    acc = rec["accuracy"]["sets"]
    assert set(acc) == {"vtest@715-795", "coco8-val"}
    # pseudo-ground-truth from the stock detector: it scores 1 on the original frame
    assert acc["vtest@715-795"]["box"]["original"]["stock"] == pytest.approx(1.0)
    for per_view in acc.values():
        v = per_view["box"]
        for x in (v["original"]["adapted"], *(b["adapted"] for b in v["bases"].values())):
            assert x is None or 0.0 <= x <= 1.0
    assert "yolo11n-on-" in (out / "README.md").read_text()
    # the training reached no network: no socket here, and the first session ran without one
    assert adapted_run["net"] == [], adapted_run["net"]
    det = Detector(weights, name="yolo11n")
    frame = np.asarray(Image.open(shared_dir / "data/coco8/images/val/000000000042.jpg")
                       .convert("RGB"))
    assert det.detect([frame])[0].image_size == frame.shape[:2]


def test_finished_run_is_reused_and_other_settings_are_refused(adapted_run, tmp_path):
    argv = [a if a != str(adapted_run["out"]) else str(tmp_path / "again")
            for a in adapted_run["argv"]]
    cut = argv.index("--eval-video")
    argv = argv[:cut] + argv[argv.index("--epochs"):]  # no evaluation this time
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.chdir(adapted_run["root"]):
        assert main(argv) == 0
    assert "resuming" not in err.getvalue()
    again = next((tmp_path / "again").glob("*.pt"))
    assert file_sha256(again) == adapted_run["record"]["weights"]["sha256"]
    state = json.loads((adapted_run["work"] / "state.json").read_text())
    assert state["train_sessions"] == 2
    other = [*argv]
    other[other.index("--epochs") + 1] = "4"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.chdir(adapted_run["root"]):
        assert main(other) == 2
    assert "holds a run with other settings (differs in: epochs)" in err.getvalue()


def test_record_round_trip_and_refused_weights(adapted_run, tmp_path):
    src = adapted_run["out"]
    rec_path = next(src.glob("*.json"))
    rec = AdaptedRecord.load(rec_path)
    assert AdaptedRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec
    assert rec.adapted_to(rec.base_digests[0][:32]) and rec.adapted_to(
        bytes.fromhex(rec.base_digests[0][:32]))
    assert not rec.adapted_to("0" * 32)
    d = tmp_path / "adapted"
    d.mkdir()
    for f in (rec_path, rec_path.with_suffix(".pt")):
        shutil.copy(f, d / f.name)
    (d / "other.json").write_text('{"not": "a record"}')
    found = find_adapted([d])
    assert [a.id for a in found] == [rec.id]
    assert load_adapted(d / f"{rec.id}.pt").record == rec
    assert "| " + rec.id in write_card(d).read_text()
    pt = d / f"{rec.id}.pt"
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pt.write_bytes(bytes(data))
    with pytest.raises(AnalyticsError, match="does not match its record"):
        load_adapted(pt)
    pt.unlink()
    with pytest.raises(AnalyticsError, match=r"weights file .* is missing"):
        find_adapted([d])
    lone = tmp_path / "lone.pt"
    lone.write_bytes(b"x")
    with pytest.raises(AnalyticsError, match="has no record beside it"):
        load_adapted(lone)
    bad = d / f"{rec.id}.json"
    bad.write_text(json.dumps({**rec.to_dict(), "bases": [{"digest": "zz"}]}))
    with pytest.raises(AnalyticsError, match="malformed"):
        load_adapted(bad)


@pytest.mark.parametrize(("extra", "message"), [
    (["--base", "no-such-base"], "no model package 'no-such-base'"),
    (["--detector", "yolo99x"], "no weights for detector 'yolo99x'"),
    (["--photos", "{tmp}/nowhere"], "image folder not found"),
    (["--eval-video", "{video}", "--eval-frame-range", "0:715", "--eval-frames", "2"],
     "shares 2 images with the training data"),
])
def test_clear_errors(shared_dir, tmp_path, capsys, extra, message):
    video = str(shared_dir / "data/video/vtest.avi")
    argv = ["adapt-detector", "--detector", "yolo11n", "--detectors",
            str(shared_dir / "assets/detectors"), "--base", str(default_package("base")),
            "--video", video, "--frame-range", "0:715", "--frames", "2", "--epochs", "1",
            "--imgsz", "64", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
            "--no-progress"]
    assert main(argv + [x.format(tmp=tmp_path, video=video) for x in extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("icm adapt-detector: error:") and message in err, err
    assert not (tmp_path / "o").exists()


def test_label_rows_are_normalised_yolo_rows():
    res = FrameResult("m", (100, 200), [
        Detection(0, "person", 0.9, (20.0, 10.0, 60.0, 90.0),
                  [[20, 10, 60, 10, 60, 90, 20, 90], [0, 0, 1, 0, 1, 1]]),
        Detection(2, "car", 0.8, (-5.0, 0.0, 0.5, 50.0))])   # under a pixel wide once clipped
    assert yolo_label_rows(res, (100, 200), "detect") == [
        "0 0.200000 0.500000 0.200000 0.800000"]
    (row,) = yolo_label_rows(res, (100, 200), "segment")  # the car has no outline
    assert row == "0 " + " ".join(f"{v:.6f}" for v in (0.1, 0.1, 0.3, 0.1, 0.3, 0.9, 0.1, 0.9))


# -- the cloud -----------------------------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _retarget(src: Path, dest: Path, base_pkg, new_id: str) -> None:
    """The same adapted network as another weight file adapted to another base (test data: a
    real checkpoint with one metadata field changed, so its SHA-256 differs)."""
    import torch

    from analytics.weights import import_ultralytics

    import_ultralytics()
    ckpt = torch.load(src.with_suffix(".pt"), map_location="cpu", weights_only=False)
    ckpt["date"] = f"{ckpt.get('date')} retargeted"
    torch.save(ckpt, dest / f"{new_id}.pt")
    rec = AdaptedRecord.load(src)
    rec.id = new_id
    rec.weights = {"file": f"{new_id}.pt", "sha256": file_sha256(dest / f"{new_id}.pt"),
                   "bytes": (dest / f"{new_id}.pt").stat().st_size}
    rec.bases = [{"model_id": base_pkg.config.model_id, "digest": base_pkg.digest}]
    rec.save(dest / f"{new_id}.json")


def test_cloud_picks_weights_by_the_base_layers_digest(adapted_run, shared_dir, tmp_path,
                                                       package_factory, photos):
    """A real cloud process, three base models side by side: two have adapted detectors, one
    has none (stock weights); the choice is stored with each frame, shown by the analyst API
    and counted in /metrics."""
    from cloud_decoder.client import AnalystClient
    from icm_rpc import pb, pb_grpc

    rec_path = next(adapted_run["out"].glob("*.json"))
    adapted_dir = tmp_path / "adapted"
    adapted_dir.mkdir()
    for f in (rec_path, rec_path.with_suffix(".pt")):
        shutil.copy(f, adapted_dir / f.name)
    models = tmp_path / "models"
    models.mkdir()
    other_paths = [package_factory("base", seed=s) for s in (11, 12)]
    for p in other_paths:
        shutil.copy(p, models / p.name)
    default = load_package(default_package("base"))
    second, third = (load_package(p) for p in other_paths)
    _retarget(rec_path, adapted_dir, second, "yolo11n-on-second")
    rec_id = AdaptedRecord.load(rec_path).id

    port, mport = _free_port(), _free_port()
    log = tmp_path / "cloud.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ICM_MODEL_PATH": str(models)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "icm_app", "cloud", "--listen", f"127.0.0.1:{port}",
         "--db", str(tmp_path / "c.sqlite3"), "--detectors", "yolo11n", "--weights-dir",
         str(shared_dir / "assets/detectors"), "--adapted", str(adapted_dir),
         "--metrics-port", str(mport), "--threads", "1"],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    frame = np.asarray(Image.fromarray(photos[0]).resize((160, 128)))
    layers = [ScalableCodec(pkg).encode_base(frame) for pkg in (default, second, third)]
    try:
        deadline = time.monotonic() + 180
        while "listening on port" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        msgs = [pb.EdgeMessage(hello=pb.Hello(camera_id="cam-a"))]
        msgs += [pb.EdgeMessage(frame=pb.BaseFrame(frame_id=i, capture_time_us=i, layer=layer))
                 for i, layer in enumerate(layers, 1)]
        acked = threading.Event()

        def requests():
            yield from msgs
            acked.wait(120)

        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            for m in pb_grpc.EdgeLinkStub(ch).Connect(requests(), timeout=120):
                if m.WhichOneof("body") == "ack" and m.ack.frame_id == 3:
                    acked.set()
                    break
        with AnalystClient(f"127.0.0.1:{port}") as client:
            frames = {f.frame_id: f for f in client.frames("cam-a")}
            one = client.frame("cam-a", 1).frame
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics",
                                         timeout=10).read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    text = log.read_text()
    assert f"{default.config.model_id} -> {rec_id}" in text, text[-3000:]
    assert sorted(frames) == [1, 2, 3]
    expect = {1: (default, rec_id, True), 2: (second, "yolo11n-on-second", True),
              3: (third, "yolo11n", False)}
    for fid, (pkg, weights, adapted) in expect.items():
        f = frames[fid]
        assert f.base_model_id == pkg.config.model_id
        assert f.base_model_digest == pkg.digest[:32]
        (run,) = f.analysed_by
        assert (run.model, run.weights, run.adapted) == ("yolo11n", weights, adapted)
        assert all(d.model == "yolo11n" for d in f.detections)
    assert one.analysed_by[0].weights == rec_id
    assert one.analysed_by[0].weights_sha256 == file_sha256(
        adapted_dir / f"{rec_id}.pt")[:16]
    for weights in (rec_id, "yolo11n-on-second", "yolo11n"):
        assert re.search(r'icm_cloud_frames_analysed_total\{model="yolo11n",weights="'
                         + re.escape(weights) + r'"\} 1\.0', metrics), metrics


def test_eval_machine_compares_stock_and_adapted(adapted_run, shared_dir, tmp_path, capsys):
    from icm_eval.learned import installed_enhancements

    rec = adapted_run["record"]
    pt = adapted_run["out"] / rec["weights"]["file"]
    base = default_package("base")
    enh = installed_enhancements([base])[:1]
    out = tmp_path / "machine"
    rc = main(["eval-machine", "--video", str(shared_dir / "data/video/vtest.avi"),
               "--frame-range", "715:", "--frames", "1", "--max-side", "256",
               "--coco8", str(shared_dir / "data/coco8"), "--coco8-split", "train",
               "--images", "1",
               "--detectors", str(shared_dir / "assets/detectors"), "--models", "yolo26n",
               "--base", str(base), "--enhancement", *map(str, enh), "--adapted", str(pt),
               "--qualities", "JPEG=50", "WebP=", "AVIF=", "--out", str(out), "--threads",
               "1", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    m = rec["id"]
    # evaluated on a COCO8 image it was trained on: said, for that set only
    assert f"note: {m} was adapted on images of the set 'coco8-train'" in printed
    assert "'vtest@715-795'" not in printed
    res = json.loads((out / "machine.json").read_text())
    assert res["sets"]["coco8-train"]["reference"] == "labels"
    assert res["settings"]["models"] == ["yolo26n", "yolo11n", m]  # its source was added
    assert res["models"][m]["adapted_from"] == "yolo11n"
    jpeg = next(p for p in res["points"] if p["codec"] == "JPEG")
    assert m not in jpeg["metrics"]["vtest@715-795"]    # JPEG frames get the stock weights
    summary = res["adapted"][m]["sets"]["vtest@715-795"]["box"]
    assert summary["original"]["stock"] == pytest.approx(1.0)
    codecs = {p["codec"] for p in summary["points"]}
    assert "base" in codecs and codecs <= {"base", "human", "human-dc"}
    assert ("human" in codecs or "human-dc" in codecs) == bool(enh)
    row = res["bpp_to_keep"]["vtest@715-795"][m]["box"]
    assert row["JPEG"]["detector"] == "yolo11n" and "detector" not in row["base"]
    assert row["_reference"]["original_map"] == pytest.approx(1.0)
    assert "## Adapted detectors" in (out / "report.md").read_text()
