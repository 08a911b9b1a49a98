"""``icm adapt-detector``: fine-tune a YOLO detector on machine images of real base layers.

::

    sources (video frames, photos, YOLO datasets)
        │ labels: ground truth where the set has it (and it fits the task: polygons for a
        │         segmenter), else pseudo-labels = the stock detector on the ORIGINAL image
        ▼
    encode_base → real bitstream → decode_machine     (every --base package; + a share of
        │                                               originals, against forgetting them)
        ▼
    <work>/dataset/images/{train,val}/<base>__<image>.png + labels/   (YOLO layout, data.yaml)
        ▼
    Ultralytics training (offline, CPU or CUDA; checkpoints every epoch in <work>/runs)
        ▼
    <out>/<id>.pt + <id>.json (the record, :mod:`analytics.adapted`) + README.md (the card)

Everything is resumable: decoded images and labels already in ``<work>`` are kept, an
interrupted training resumes from its last epoch, a finished one is not run again. The work
folder remembers the settings that define the run and refuses to mix runs (``fresh=True``
starts over).

Offline: Ultralytics' dataset check fetches a font (Arial.ttf) from GitHub when it cannot find
one; :func:`offline_training` puts matplotlib's DejaVu Sans in its place, keeps AMP's check
(which downloads yolo26n.pt) off unless asked for, and switches off the integrations (Platform
uploads, MLflow, ...) for the run. Tests check that training opens no socket.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from icm_eval.data import EvalSet

from .adapted import AdaptedDetector, AdaptedRecord, load_adapted, write_card
from .detector import Detector
from .errors import AnalyticsError
from .results import FrameResult
from .weights import file_sha256, import_ultralytics

__all__ = ["AdaptConfig", "Source", "adapt_detector", "offline_training", "yolo_label_rows"]

_INTEGRATIONS = ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")
_FONTS = ("Arial.ttf", "Arial.Unicode.ttf")


@dataclass
class Source:
    """Training images and how they were chosen (written to the record)."""

    set: EvalSet
    kind: str                       # "video", "photos" or "yolo"
    spec: dict[str, Any] = field(default_factory=dict)


@dataclass
class AdaptConfig:
    """One adaptation run. ``bases`` are package paths; ``work`` holds everything resumable
    (default ``~/.cache/icm/adapt/<id>``); ``out`` receives ``<id>.pt``, ``<id>.json`` and the
    folder's ``README.md``."""

    detector: str
    bases: list[Path]
    sources: list[Source]
    work: Path | None
    out: Path
    weights_dir: str | None = None
    id: str | None = None
    eval_sets: list[EvalSet] = field(default_factory=list)
    epochs: int = 30
    imgsz: int = 640
    batch: int = 8
    device: str = "cpu"
    workers: int = 0
    optimizer: str = "auto"
    lr0: float | None = None
    freeze: int | None = None
    seed: int = 0
    pseudo_conf: float = 0.25
    pred_conf: float = 0.001
    val_share: float = 0.1
    original_share: float = 0.2
    amp: bool = False
    fresh: bool = False
    progress: bool = True
    command: str = ""


def safe_name(text: str) -> str:
    """A file-name-safe form of an image key or model id."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "x"


def _unit(text: str) -> float:
    """A stable number in [0, 1) per name: train/val split and original share by hash, so
    they do not move when images are added."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) / 16 ** 12


def _largest(polygons: Sequence[Sequence[float]]) -> list[float] | None:
    best, area = None, -1.0
    for p in polygons:
        if len(p) < 6:
            continue
        x, y = np.asarray(p[0::2], float), np.asarray(p[1::2], float)
        a = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
        if a > area:
            best, area = list(map(float, p)), a
    return best


def yolo_label_rows(result: FrameResult, size: tuple[int, int], task: str) -> list[str]:
    """YOLO label rows (normalised): ``cls cx cy w h`` for detection, ``cls x y x y ...`` (the
    largest outline) for segmentation. Objects without a usable box or outline are left out."""
    h, w = size
    rows = []
    for d in result.detections:
        if task == "segment":
            poly = _largest(d.mask_polygons or [])
            if poly is None:
                continue
            xy = np.asarray(poly, float).reshape(-1, 2) / (w, h)
            xy = np.clip(xy, 0.0, 1.0)
            rows.append(f"{d.class_id} " + " ".join(f"{v:.6f}" for v in xy.reshape(-1)))
            continue
        x1, y1, x2, y2 = d.box_xyxy
        x1, x2 = max(0.0, min(x1, w)), max(0.0, min(x2, w))
        y1, y2 = max(0.0, min(y1, h)), max(0.0, min(y2, h))
        if x2 - x1 < 1 or y2 - y1 < 1:
            continue
        rows.append(f"{d.class_id} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} "
                    f"{(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
    return rows


def _gt_fits(s: EvalSet, task: str) -> bool:
    """Ground truth a task can learn from: boxes for a detector, outlines for a segmenter."""
    if not s.labelled:
        return False
    return task == "detect" or all(d.mask_polygons for im in s.images
                                   for d in im.labels.detections)  # type: ignore[union-attr]


@contextlib.contextmanager
def offline_training() -> Iterator[None]:
    """Ultralytics training that reaches no network and writes nothing outside its folders.

    - A font for the dataset check (it downloads Arial.ttf when none is in its config folder):
      matplotlib's DejaVu Sans under that name; nothing is drawn with it (``plots=False``).
    - Integrations (Platform uploads with an API key, MLflow, Comet, ...) off for the run, in
      memory only: the user's settings file is not rewritten.
    - torch's thread count and deterministic mode put back afterwards (Ultralytics sets both
      process-wide).
    """
    import matplotlib
    import torch

    import_ultralytics()
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in _FONTS:
        target = Path(USER_CONFIG_DIR) / name
        if not target.is_file() and font.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(font, target)
    saved = {k: SETTINGS.get(k) for k in (*_INTEGRATIONS, "api_key", "sync")}
    for k in saved:
        dict.__setitem__(SETTINGS, k, "" if k == "api_key" else False)
    api_env = os.environ.pop("ULTRALYTICS_API_KEY", None)
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        yield
    finally:
        for k, v in saved.items():
            dict.__setitem__(SETTINGS, k, v)
        if api_env is not None:
            os.environ["ULTRALYTICS_API_KEY"] = api_env
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


# -- the run ---------------------------------------------------------------------------------
def _fingerprint(cfg: AdaptConfig, stock: Detector, digests: list[str]) -> dict[str, Any]:
    """What defines a run: a work folder holding another run is refused, not mixed."""
    return {"detector_sha256": stock.weights_info.sha256, "bases": digests,
            "data": [{"kind": s.kind, **s.spec, "images": [im.key for im in s.set.images]}
                     for s in cfg.sources],
            "epochs": cfg.epochs, "imgsz": cfg.imgsz, "batch": cfg.batch,
            "optimizer": cfg.optimizer, "lr0": cfg.lr0, "freeze": cfg.freeze, "seed": cfg.seed,
            "pseudo_conf": cfg.pseudo_conf, "val_share": cfg.val_share,
            "original_share": cfg.original_share}


def _claim_work(cfg: AdaptConfig, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Check (or start) the work folder; returns its state (time spent so far)."""
    work = cfg.work
    settings, state_path = work / "settings.json", work / "state.json"
    if cfg.fresh:
        for name in ("dataset", "labels", "runs"):
            shutil.rmtree(work / name, ignore_errors=True)
        for p in (settings, state_path):
            p.unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    if settings.is_file():
        try:
            before = json.loads(settings.read_text())
        except ValueError as e:
            raise AnalyticsError(f"{settings} is unreadable ({e}): pass --fresh") from e
        if before != fingerprint:
            diff = sorted(k for k in {*before, *fingerprint}
                          if before.get(k) != fingerprint.get(k))
            raise AnalyticsError(
                f"the work folder {work} holds a run with other settings (differs in: "
                f"{', '.join(diff)}); pass --fresh to start it over, or another --work")
    else:
        settings.write_text(json.dumps(fingerprint, indent=1))
    try:
        return json.loads(state_path.read_text()) if state_path.is_file() else {}
    except ValueError:
        return {}


def _save_state(cfg: AdaptConfig, state: dict[str, Any]) -> None:
    (cfg.work / "state.json").write_text(json.dumps(state, indent=1))


def _write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    tmp = path.with_name(path.stem + ".tmp.png")
    Image.fromarray(image).save(tmp)
    tmp.replace(path)  # the image is the completion mark of its pair (label first)


def prepare_dataset(cfg: AdaptConfig, stock: Detector, packages: list[Any]
                    ) -> dict[str, Any]:
    """Decode every source image through every base package into the YOLO layout; returns
    the dataset summary (image counts, mean bpp per base)."""
    from icm_codec import ScalableCodec

    work = Path(cfg.work or ".")
    ds, label_cache = work / "dataset", work / "labels"
    label_cache.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        (ds / "images" / split).mkdir(parents=True, exist_ok=True)
        (ds / "labels" / split).mkdir(parents=True, exist_ok=True)
    manifest_path = ds / "manifest.json"
    manifest: dict[str, Any] = (json.loads(manifest_path.read_text())
                                if manifest_path.is_file() else {})
    codecs = [(safe_name(p.config.model_id), ScalableCodec(p, None, cfg.device))
              for p in packages]
    if len({t for t, _ in codecs}) != len(codecs):
        raise AnalyticsError("two --base packages share a model id: give distinct packages")

    stems = {}
    for s in cfg.sources:
        for im in s.set.images:
            stem = safe_name(f"{s.set.name}__{im.key}")
            if stem in stems:
                raise AnalyticsError(f"two training images are both named {stem!r}")
            stems[stem] = "val" if _unit(stem) < cfg.val_share else "train"
    if len(stems) < 2:
        raise AnalyticsError("adaptation needs at least 2 training images (one is held out "
                             "for validation)")
    for want in ("val", "train"):  # both splits need an image
        if want not in stems.values():
            pick = min(stems, key=_unit) if want == "val" else max(stems, key=_unit)
            stems[pick] = want

    bar = tqdm(total=len(stems), desc="machine images", unit="img", disable=not cfg.progress)
    for s in cfg.sources:
        use_gt = _gt_fits(s.set, stock.task)
        for im in s.set.images:
            stem = safe_name(f"{s.set.name}__{im.key}")
            split = stems[stem]
            targets = [(tag, codec) for tag, codec in codecs]
            if _unit(stem + "/original") < cfg.original_share:
                targets.append(("original", None))
            todo = [(t, c) for t, c in targets
                    if not (ds / "images" / split / f"{t}__{stem}.png").is_file()]
            if todo:
                cached = label_cache / f"{stem}.txt"
                if cached.is_file():
                    rows = cached.read_text().splitlines()
                else:
                    res = (im.labels if use_gt else
                           stock.detect([im.image], conf=cfg.pseudo_conf)[0])
                    rows = yolo_label_rows(res, im.image.shape[:2], stock.task)  # type: ignore[arg-type]
                    cached.write_text("".join(r + "\n" for r in rows))
                for tag, codec in todo:
                    name = f"{tag}__{stem}"
                    if codec is None:
                        image, nbytes = im.image, None
                    else:
                        layer = codec.encode_base(im.image)
                        image, nbytes = codec.decode_machine(layer), len(layer)
                    (ds / "labels" / split / f"{name}.txt").write_text(
                        "".join(r + "\n" for r in rows))
                    _write_png(ds / "images" / split / f"{name}.png", image)
                    manifest[name] = {"split": split, "base": tag, "bytes": nbytes,
                                      "pixels": int(im.image.shape[0] * im.image.shape[1]),
                                      "labels": "ground truth" if use_gt else "pseudo"}
                manifest_path.write_text(json.dumps(manifest, indent=0))
            bar.update(1)
    bar.close()
    (ds / "data.yaml").write_text(json.dumps({  # JSON is YAML
        "path": str(ds.resolve()), "train": "images/train", "val": "images/val",
        "names": {int(k): v for k, v in stock.names.items()}}, indent=1))
    rows = list(manifest.values())
    bpp = {}
    for tag, _ in codecs:
        mine = [8 * m["bytes"] / m["pixels"] for m in rows if m["base"] == tag]
        bpp[tag] = float(np.mean(mine)) if mine else None
    return {"train_images": sum(m["split"] == "train" for m in rows),
            "val_images": sum(m["split"] == "val" for m in rows),
            "source_images": len(stems), "originals": sum(m["base"] == "original" for m in rows),
            "original_share": cfg.original_share, "val_share": cfg.val_share,
            "pseudo_conf": cfg.pseudo_conf, "mean_bpp": bpp}


def _checkpoint_epoch(path: Path) -> int:
    """The epoch a checkpoint ended (-1: training finished and stripped)."""
    import torch

    import_ultralytics()  # the checkpoint pickles Ultralytics' classes
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise AnalyticsError(f"cannot read the checkpoint {path} (interrupted while it was "
                             f"written?): {e}; pass --fresh to start over") from e
    return int(ckpt.get("epoch", -1)) if isinstance(ckpt, dict) else -1


def train(cfg: AdaptConfig, stock_weights: str, data_yaml: Path,
          state: dict[str, Any]) -> Path:
    """Ultralytics training in ``<work>/runs/train`` (resumed from its last epoch, or not run
    again when finished); returns the final checkpoint.

    ``state["train_seconds"]`` is brought up to date after every epoch, so the wall time of a
    run that was interrupted and resumed counts every epoch that was kept.
    """
    run = Path(cfg.work or ".") / "runs" / "train"
    last = run / "weights" / "last.pt"
    ultralytics = import_ultralytics()
    common = {"device": cfg.device, "workers": cfg.workers, "plots": False,
              "batch": cfg.batch, "imgsz": cfg.imgsz}
    t0, before = time.perf_counter(), float(state.get("train_seconds", 0.0))

    def account(trainer: Any = None) -> None:
        state["train_seconds"] = before + time.perf_counter() - t0
        if trainer is not None:  # (also called by the final validation: hence the min)
            state["epochs_done"] = min(int(trainer.epoch) + 1, cfg.epochs)
        _save_state(cfg, state)

    if last.is_file():
        epoch = _checkpoint_epoch(last)
        if epoch < 0:
            return last
        print(f"adapt-detector: resuming the training after epoch {epoch + 1} of {cfg.epochs}",
              file=sys.stderr)
        model = ultralytics.YOLO(str(last))
        args: dict[str, Any] = {**common, "resume": str(last)}
    else:
        model = ultralytics.YOLO(stock_weights)
        args = {
            **common, "data": str(data_yaml), "epochs": cfg.epochs, "project": str(run.parent),
            "name": run.name, "exist_ok": True, "amp": cfg.amp, "seed": cfg.seed,
            "deterministic": True, "optimizer": cfg.optimizer, "pretrained": True, "val": True,
            "close_mosaic": min(10, cfg.epochs // 3), "verbose": cfg.progress}
        if cfg.lr0 is not None:
            args["lr0"] = cfg.lr0
        if cfg.freeze is not None:
            args["freeze"] = cfg.freeze
    state["train_sessions"] = int(state.get("train_sessions", 0)) + 1
    _save_state(cfg, state)
    model.add_callback("on_fit_epoch_end", account)
    with offline_training():
        model.train(**args)
    account()
    if not last.is_file():
        raise AnalyticsError(f"Ultralytics training wrote no checkpoint in {run}")
    return last


def _accuracy_summary(result: dict[str, Any], model: str) -> dict[str, Any]:
    """The record's accuracy: stock → adapted on the originals and each base, per set and view."""
    a = result["adapted"][model]
    out: dict[str, Any] = {"metric": "mAP@[.50:.95] (COCOeval)", "sets": {},
                           "reference": {s: v["reference"] for s, v in result["sets"].items()},
                           "images": {s: len(v["images"]) for s, v in result["sets"].items()}}
    for set_name, per_view in a["sets"].items():
        out["sets"][set_name] = {
            v: {"original": d["original"],
                "bases": {p["label"]: {"bpp": p["bpp"], "stock": p["stock"],
                                       "adapted": p["adapted"]}
                          for p in d["points"] if p["codec"] == "base"}}
            for v, d in per_view.items()}
    return out


def evaluate(cfg: AdaptConfig, stock: Detector, adapted: AdaptedDetector
             ) -> dict[str, Any]:
    """Stock vs adapted on the held-out ``eval_sets``: originals and every base layer."""
    from icm_eval.learned import machine_points

    from .detector import MultiDetector
    from .eval_machine import AdaptedModel, evaluate_machine

    det = Detector(adapted.weights, name=adapted.id, weights_id=adapted.id, adapted=True,
                   device=cfg.device, conf=cfg.pred_conf, max_det=100)
    result = evaluate_machine(
        cfg.eval_sets, machine_points(cfg.bases, cfg.device), MultiDetector([stock, det]),
        gt_conf=cfg.pseudo_conf, progress=cfg.progress,
        adapted={adapted.id: AdaptedModel(stock.name, tuple(adapted.record.base_digests))})
    return _accuracy_summary(result, adapted.id)


def _check_overlap(cfg: AdaptConfig) -> None:
    train = {(s.set.source, im.key) for s in cfg.sources for im in s.set.images}
    for e in cfg.eval_sets:
        both = [k for src, k in ((e.source, im.key) for im in e.images) if (src, k) in train]
        if both:
            raise AnalyticsError(f"evaluation set {e.name!r} shares {len(both)} images with the "
                                 f"training data (e.g. {both[0]}): hold them out (for video, "
                                 "disjoint --frame-range / --eval-frame-range)")


def adapt_detector(cfg: AdaptConfig) -> AdaptedDetector:
    """Run (or resume) one adaptation; returns the written, verified adapted detector."""
    import torch

    from icm_codec import load_package

    if cfg.epochs < 1 or cfg.imgsz < 32 or cfg.batch < 1:
        raise AnalyticsError("--epochs, --batch must be at least 1 and --imgsz at least 32")
    if not 0 <= cfg.val_share < 1 or not 0 <= cfg.original_share <= 1:
        raise AnalyticsError("--val-share must lie in [0, 1) and --original-share in [0, 1]")
    if not cfg.bases:
        raise AnalyticsError("name at least one --base package")
    if not cfg.sources or not any(s.set.images for s in cfg.sources):
        raise AnalyticsError("no training images: give --video, --photos and/or --yolo")
    _check_overlap(cfg)
    t0 = time.perf_counter()
    packages = [load_package(b, cfg.device) for b in cfg.bases]
    for path, pkg in zip(cfg.bases, packages, strict=True):
        if pkg.config.kind != "base":
            raise AnalyticsError(f"{path} is a {pkg.config.kind!r} package, not a base layer")
    stock = Detector(cfg.detector, weights_dir=cfg.weights_dir, device=cfg.device,
                     conf=cfg.pred_conf, max_det=100)
    model_id = cfg.id or f"{stock.name}-on-{'+'.join(p.config.model_id for p in packages)}"
    if safe_name(model_id) != model_id:
        raise AnalyticsError(f"--id {model_id!r}: use letters, digits and . _ - + only")
    digests = [p.digest for p in packages]
    if cfg.work is None:
        cfg.work = Path.home() / ".cache" / "icm" / "adapt" / model_id
    # absolute: Ultralytics puts a relative ``project`` under its own runs_dir setting, which
    # can be another checkout's folder
    cfg.work = cfg.work.expanduser().resolve()
    state = _claim_work(cfg, _fingerprint(cfg, stock, digests))

    dataset = prepare_dataset(cfg, stock, packages)
    state["prepare_seconds"] = state.get("prepare_seconds", 0.0) + time.perf_counter() - t0
    _save_state(cfg, state)

    last = train(cfg, stock.weights, cfg.work / "dataset" / "data.yaml", state)

    cfg.out.mkdir(parents=True, exist_ok=True)
    weights = cfg.out / f"{model_id}.pt"
    shutil.copyfile(last, weights)
    import ultralytics

    record = AdaptedRecord(
        id=model_id, task=stock.task,
        source={"name": stock.name, "file": Path(stock.weights).name,
                "sha256": stock.weights_info.sha256},
        weights={"file": weights.name, "sha256": file_sha256(weights),
                 "bytes": weights.stat().st_size},
        bases=[{"model_id": p.config.model_id, "digest": p.digest,
                "lambda": p.config.meta.get("lambda"), "trained": p.config.meta.get("trained")}
               for p in packages],
        data=[{"set": s.set.name, "kind": s.kind, **s.spec, "images": len(s.set.images),
               "labels": ("ground truth" if _gt_fits(s.set, stock.task)
                          else f"pseudo ({stock.name} on the originals, conf >= "
                               f"{cfg.pseudo_conf:g})")} for s in cfg.sources],
        dataset=dataset,
        training={"epochs": cfg.epochs, "imgsz": cfg.imgsz, "batch": cfg.batch,
                  "optimizer": cfg.optimizer, "lr0": cfg.lr0, "freeze": cfg.freeze,
                  "seed": cfg.seed, "device": cfg.device, "amp": cfg.amp,
                  "wall_seconds": round(state.get("train_seconds", 0.0), 1),
                  "prepare_seconds": round(state.get("prepare_seconds", 0.0), 1),
                  "sessions": state.get("train_sessions", 0),
                  "ultralytics": ultralytics.__version__,
                  "torch": torch.__version__.split("+")[0], "weights": "last epoch (EMA)"},
        created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        command=cfg.command)
    record_path = record.save(weights.with_suffix(".json"))
    adapted = load_adapted(record_path)
    if cfg.eval_sets:
        record.accuracy = evaluate(cfg, stock, adapted)
        record.save(record_path)
        adapted = load_adapted(record_path)
    write_card(cfg.out)
    return adapted
