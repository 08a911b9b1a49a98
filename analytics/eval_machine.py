"""The machine-vision benchmark behind ``icm eval-machine``.

For every rate point (base layer packages, the human layer, JPEG / WebP / AVIF qualities) every
image of every evaluation set is coded to real bytes, decoded, and analysed by every model. Each
model is scored with COCO mAP against the set's labels (COCO8) or against its own results on the
original images (pseudo-ground-truth: video frames, photos). From the curves of mAP versus bpp:

- the bpp each codec needs to keep ``keep`` (95%) of the original-image mAP, and its ratio to
  JPEG's; the target (``GOALS``): the base layer needs no more bits than WebP on the video
  frames (stretch: half of AVIF's; the first benchmark's goal, half of JPEG's, is kept beside);
- robustness: mAP of every model under every codec at the base layer's bpp (matched bpp);
- adapted detectors (``adapted``): each is scored against its stock source's reference, on the
  original images (its regression), on the base layers it was adapted to and on human images;
  its bpp-to-keep row puts its base layer against the stock detector on JPEG / WebP / AVIF,
  which is what the cloud serves for frames of those codecs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from icm_eval.data import EvalSet
from icm_eval.points import RatePoint

from .detector import MultiDetector
from .errors import AnalyticsError
from .metrics import coco_map
from .results import FrameResult

__all__ = ["RESULT_VERSION", "AdaptedModel", "bpp_to_keep", "evaluate_machine", "metric_views",
           "value_at_bpp"]

RESULT_VERSION = 1
PERSON = "person"
CLASSICAL_ORDER = ("JPEG", "WebP", "AVIF")
OUR_CODECS = ("base", "human", "human-dc")


@dataclass(frozen=True)
class AdaptedModel:
    """A detector adapted to machine images: scored against ``source``'s reference, and run
    only where the cloud would run it (originals as a regression check; base and human images
    of the base packages in ``base_digests``)."""

    source: str
    base_digests: tuple[str, ...]

    def applies(self, point: RatePoint | None) -> bool:
        if point is None:
            return True  # the original images
        digest = str(point.params.get("base_digest", ""))
        return point.codec in OUR_CODECS and bool(digest) and digest in self.base_digests


def metric_views(task: str, eval_set: EvalSet, names: dict[int, str]) -> dict[str, dict]:
    """What to score for one model on one set: ``{view: {iou_type, class_ids}}``.

    Boxes always; masks for a segmenter when the reference has masks (pseudo-ground-truth from
    the segmenter itself, or polygon labels); each also for persons alone when the model knows
    the class (the stable class on surveillance video).
    """
    views: dict[str, dict] = {"box": {"iou_type": "bbox", "class_ids": None}}
    has_masks = task == "segment" and (
        not eval_set.labelled
        or all(d.mask_polygons is not None for im in eval_set.images
               for d in im.labels.detections))  # type: ignore[union-attr]
    if has_masks:
        views["mask"] = {"iou_type": "segm", "class_ids": None}
    person = [c for c, n in names.items() if n == PERSON]
    if person:
        for v in list(views):
            views[f"{v}/{PERSON}"] = {"iou_type": views[v]["iou_type"], "class_ids": person}
    return views


def _score(gt: Sequence[FrameResult], pred: Sequence[FrameResult],
           views: dict[str, dict]) -> dict[str, dict]:
    return {v: coco_map(gt, pred, iou_type=s["iou_type"], class_ids=s["class_ids"]).to_dict()
            for v, s in views.items()}


def _curve(points: Sequence[tuple[float, float | None]]) -> tuple[np.ndarray, np.ndarray]:
    pts = sorted((b, m) for b, m in points if m is not None and b > 0 and not math.isnan(m))
    return np.array([p[0] for p in pts], dtype=np.float64), np.array([p[1] for p in pts])


def value_at_bpp(points: Sequence[tuple[float, float | None]], bpp: float) -> float | None:
    """mAP at ``bpp`` by linear interpolation over log(bpp); None outside the measured range."""
    b, m = _curve(points)
    if len(b) == 0 or bpp < b[0] * (1 - 1e-9) or bpp > b[-1] * (1 + 1e-9):
        return None
    if len(b) == 1:
        return float(m[0])
    return float(np.interp(math.log(bpp), np.log(b), m))


def bpp_to_keep(points: Sequence[tuple[float, float | None]],
                threshold: float) -> dict[str, Any]:
    """The lowest bpp from which the curve stays at or above ``threshold``.

    Curves of mAP against pseudo-ground-truth are not monotone, so this is the last upward
    crossing (interpolated over log bpp), not the first. ``bound`` says how to read ``bpp``:
    ``=`` (interpolated), ``<=`` (already kept at the lowest measured rate), ``not reached``.
    """
    b, m = _curve(points)
    if len(b) == 0 or math.isnan(threshold):
        return {"bpp": None, "bound": "no data"}
    below = np.nonzero(m < threshold - 1e-12)[0]
    if len(below) == 0:
        return {"bpp": float(b[0]), "bound": "<="}
    i = int(below[-1])
    if i == len(b) - 1:
        return {"bpp": None, "bound": "not reached", "best_map": float(m.max()),
                "at_bpp": float(b[int(m.argmax())])}
    lo, hi = math.log(b[i]), math.log(b[i + 1])
    t = (threshold - m[i]) / (m[i + 1] - m[i])
    return {"bpp": float(math.exp(lo + t * (hi - lo))), "bound": "="}


def _ratio(mine: dict[str, Any], anchor: dict[str, Any] | None) -> dict[str, Any]:
    """Ratio of bpp to the anchor's (JPEG's in the tables), with the direction of any bound."""
    if anchor is None or mine["bpp"] is None or anchor["bpp"] is None:
        return {"ratio": None, "ratio_bound": "n/a"}
    r = mine["bpp"] / anchor["bpp"]
    bounds = {mine["bound"], anchor["bound"]}
    if bounds == {"="}:
        rb = "="
    elif mine["bound"] == "<=" and anchor["bound"] == "=":
        rb = "<="
    elif mine["bound"] == "=" and anchor["bound"] == "<=":
        rb = ">="
    else:
        rb = "~"  # both only bounded: the lowest rates tested decide
    return {"ratio": r, "ratio_bound": rb}


# The target's goals, headline first: (anchor codec, most bits as a multiple of its, what it is).
GOALS: tuple[tuple[str, float, str], ...] = (
    ("WebP", 1.0, "target"),
    ("AVIF", 0.5, "stretch"),
    ("JPEG", 0.5, "first goal"),
)


def _target_met(base: dict | None, anchor: dict | None, goal: float = 0.5,
                threshold: float | None = None) -> bool | None:
    """True / False where the measurements decide ``base bpp <= goal x anchor bpp``, else None.

    A base layer that keeps the accuracy at none of its rate points does not meet the target
    when the anchor keeps it at some measured rate (``threshold`` given: the anchor's best mAP
    reaches it, even where a noisy curve dips again at a higher rate).
    """
    if base is None or anchor is None:
        return None
    anchor_reaches = anchor["bpp"] is not None or (
        threshold is not None and anchor.get("best_map") is not None
        and anchor["best_map"] >= threshold - 1e-12)
    if base["bpp"] is None:
        return False if base["bound"] == "not reached" and anchor_reaches else None
    if anchor["bpp"] is None:
        return None  # nothing to compare with (the anchor never keeps the accuracy)
    rel = _ratio(base, anchor)
    r, rb = rel["ratio"], rel["ratio_bound"]
    if r <= goal and rb in ("=", "<="):
        return True
    if r > goal and rb in ("=", ">="):
        return False
    return None  # only bounds: the sweeps do not go low enough to decide


def _target_row(rows: dict, view: str) -> dict[str, Any]:
    """One view's verdicts: the base layer against every goal's anchor (None: not measured)."""
    row = rows[view]
    threshold = row.get("_reference", {}).get("threshold")
    base = row.get("base")
    goals = []
    for anchor, factor, role in GOALS:
        cell = row.get(anchor)
        rel = _ratio(base, cell) if base is not None else {"ratio": None, "ratio_bound": "n/a"}
        goals.append({"anchor": anchor, "factor": factor, "role": role, "cell": cell, **rel,
                      "met": _target_met(base, cell, factor, threshold)})
    return {"view": view, "base": base, "jpeg": row.get("JPEG"), "threshold": threshold,
            "goals": goals, "met": goals[0]["met"]}


def _run_point(point_run, sets: Sequence[EvalSet]) -> tuple[dict, dict, float]:
    """Code every set's images; returns decoded images, mean bpp per set, seconds."""
    t0 = time.perf_counter()
    decoded, bpp = {}, {}
    for s in sets:
        coded = point_run([im.image for im in s.images])
        decoded[s.name] = [d for _, d in coded]
        rates = [8 * n / (im.image.shape[0] * im.image.shape[1])
                 for (n, _), im in zip(coded, s.images, strict=True)]
        bpp[s.name] = float(np.mean(rates))
        for (_, d), im in zip(coded, s.images, strict=True):
            if d.shape != im.image.shape:
                raise AnalyticsError(f"decoded {im.key} has shape {d.shape}, "
                                     f"expected {im.image.shape}")
    return decoded, bpp, time.perf_counter() - t0


def evaluate_machine(sets: Sequence[EvalSet], points: Sequence[RatePoint],
                     detectors: MultiDetector, *, gt_conf: float = 0.25, keep: float = 0.95,
                     target_set: str | None = None, progress: bool = True,
                     adapted: dict[str, AdaptedModel] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready result (see docs/analytics.md).

    ``adapted`` names the detectors among ``detectors`` that are adapted ones, with their
    source (which must be among ``detectors`` too).
    """
    if not sets or any(not s.images for s in sets):
        raise AnalyticsError("no evaluation images: give a video, photos and/or a labelled set")
    if len({s.name for s in sets}) != len(sets):
        raise AnalyticsError(f"evaluation set names must be unique: {[s.name for s in sets]}")
    if not points:
        raise AnalyticsError("no rate points: give base packages and/or classical qualities")
    adapted = dict(adapted or {})
    for m, a in adapted.items():
        if m not in detectors.names or a.source not in detectors.names or a.source in adapted:
            raise AnalyticsError(f"adapted detector {m!r} and its stock source {a.source!r} "
                                 f"must both be among the models {detectors.names}")
    t_start = time.perf_counter()
    views = {s.name: {d.name: metric_views(d.task, s, d.names) for d in detectors}
             for s in sets}
    for s in sets:
        for m, a in adapted.items():
            views[s.name][m] = views[s.name][a.source]
    det_seconds = dict.fromkeys(detectors.names, 0.0)
    det_frames = dict.fromkeys(detectors.names, 0)

    def analyse(images: dict[str, list[np.ndarray]], point: RatePoint | None = None
                ) -> dict[str, dict[str, list[FrameResult]]]:
        out: dict[str, dict[str, list[FrameResult]]] = {}
        for s in sets:
            out[s.name] = {}
            for d in detectors:
                if d.name in adapted and not adapted[d.name].applies(point):
                    continue
                t = time.perf_counter()
                out[s.name][d.name] = d.detect(images[s.name],
                                               frame_ids=[im.key for im in s.images])
                det_seconds[d.name] += time.perf_counter() - t
                det_frames[d.name] += len(s.images)
        return out

    total = 1 + len(points)
    bar = tqdm(total=total, desc="eval-machine", unit="point", disable=not progress)
    bar.set_postfix_str("original images")
    original = analyse({s.name: [im.image for im in s.images] for s in sets})
    reference: dict[str, dict[str, list[FrameResult]]] = {}
    for s in sets:
        reference[s.name] = {}
        for d in detectors:
            if s.labelled:
                reference[s.name][d.name] = [im.labels for im in s.images]  # type: ignore[misc]
            elif d.name not in adapted:
                reference[s.name][d.name] = [r.filtered(gt_conf) for r in original[s.name][d.name]]
        for m, a in adapted.items():  # what the stock detector sees on the originals
            reference[s.name][m] = reference[s.name][a.source]

    def score_all(results: dict[str, dict[str, list[FrameResult]]]) -> dict:
        return {s.name: {m: _score(reference[s.name][m], results[s.name][m], views[s.name][m])
                         for m in detectors.names if m in results[s.name]} for s in sets}

    original_metrics = score_all(original)
    bar.update(1)
    records = []
    for p in points:
        bar.set_postfix_str(f"{p.codec} {p.label}")
        decoded, bpp, seconds = _run_point(p.run, sets)
        metrics = score_all(analyse(decoded, p))
        records.append({"codec": p.codec, "label": p.label, "params": p.params, "bpp": bpp,
                        "codec_seconds": seconds, "metrics": metrics})
        bar.update(1)
    bar.close()

    codecs = list(dict.fromkeys(r["codec"] for r in records))
    curves = _curves(sets, detectors, views, records)
    keep_table = _keep_table(sets, detectors, views, original_metrics, curves, codecs, keep,
                             adapted)
    robustness = _robustness(sets, detectors, views, original_metrics, curves, codecs, records)
    tgt_set = target_set or next((s.name for s in sets if not s.labelled), sets[0].name)
    if tgt_set not in {s.name for s in sets}:
        raise AnalyticsError(f"target set {tgt_set!r} is not among {[s.name for s in sets]}")
    first = detectors.names[0]
    rows = keep_table[tgt_set][first]
    target = {"set": tgt_set, "model": first, "keep": keep,
              "goal": "base-layer bpp <= WebP bpp at equal accuracy (stretch: <= 0.5 x AVIF)",
              **_target_row(rows, "box"),
              # persons: the stable class on surveillance video (the all-class mAP is noisy)
              "person": _target_row(rows, f"box/{PERSON}") if f"box/{PERSON}" in rows else None}
    return {
        "version": RESULT_VERSION,
        "settings": {"models": detectors.names, "gt_conf": gt_conf, "keep": keep,
                     "pred_conf": detectors.detectors[0].conf,
                     "imgsz": detectors.detectors[0].imgsz,
                     "device": detectors.detectors[0].device,
                     "weights": {d.name: str(d.weights) for d in detectors}},
        "sets": {s.name: {"reference": s.reference, "source": s.source,
                          "images": [im.key for im in s.images],
                          "sizes": sorted({f"{im.image.shape[1]}x{im.image.shape[0]}"
                                           for im in s.images})} for s in sets},
        "models": {d.name: {"task": d.task,
                            "views": sorted({v for s in sets for v in views[s.name][d.name]}),
                            **({"adapted_from": adapted[d.name].source,
                                "base_digests": list(adapted[d.name].base_digests)}
                               if d.name in adapted else {})}
                   for d in detectors},
        "codecs": codecs,
        "original": original_metrics,
        "points": records,
        "curves": curves,
        "bpp_to_keep": keep_table,
        "robustness": robustness,
        "adapted": _adapted_summary(sets, views, adapted, original_metrics, records,
                                    keep_table),
        "target": target,
        "timing": {"total_seconds": time.perf_counter() - t_start,
                   "detect_ms_per_frame": {m: 1000 * s / max(det_frames[m], 1)
                                           for m, s in det_seconds.items()}},
    }


def _curves(sets, detectors, views, records) -> dict:
    """``curves[set][model][view][codec] = [[bpp, map, map50], ...]`` sorted by bpp."""
    out: dict = {}
    for s in sets:
        out[s.name] = {}
        for m in detectors.names:
            out[s.name][m] = {}
            for v in views[s.name][m]:
                per_codec: dict[str, list] = {}
                for r in records:
                    if m not in r["metrics"][s.name]:
                        continue  # an adapted detector where the cloud would not run it
                    met = r["metrics"][s.name][m][v]
                    per_codec.setdefault(r["codec"], []).append(
                        [r["bpp"][s.name], met["map"], met["map50"], r["label"]])
                for c in per_codec:
                    per_codec[c].sort(key=lambda x: x[0])
                out[s.name][m][v] = per_codec
    return out


def _keep_table(sets, detectors, views, original, curves, codecs, keep, adapted) -> dict:
    """bpp to keep ``keep`` of the original mAP. An adapted detector's row keeps its stock
    source's original mAP as the bar and takes the classical codecs' cells from the source:
    frames of those codecs are analysed by the stock weights."""
    out: dict = {}
    for s in sets:
        out[s.name] = {}
        for m in detectors.names:
            src = adapted[m].source if m in adapted else m
            out[s.name][m] = {}
            for v in views[s.name][m]:
                ref = original[s.name][src][v]["map"]
                threshold = math.nan if ref is None else keep * ref
                row = {}
                for c in codecs:
                    by = m if c in OUR_CODECS else src
                    pts = [(x[0], x[1]) for x in curves[s.name][by][v].get(c, [])]
                    row[c] = bpp_to_keep(pts, threshold)
                    if by != m:
                        row[c]["detector"] = by
                jpeg = row.get("JPEG")
                for c in codecs:
                    row[c].update(_ratio(row[c], jpeg))
                row["_reference"] = {"original_map": ref,
                                     "threshold": None if math.isnan(threshold) else threshold}
                if m in adapted:
                    row["_reference"]["own_original_map"] = original[s.name][m][v]["map"]
                out[s.name][m][v] = row
    return out


def _adapted_summary(sets, views, adapted, original, records, keep_table) -> dict:
    """Per adapted detector, set and view: stock vs adapted on the originals and on every
    rate point it applies to, and the bpp-to-keep cells side by side."""
    out: dict = {}
    for m, a in adapted.items():
        per_set: dict = {}
        for s in sets:
            per_view: dict = {}
            for v in views[s.name][m]:
                pts = [{"codec": r["codec"], "label": r["label"], "bpp": r["bpp"][s.name],
                        "stock": r["metrics"][s.name][a.source][v]["map"],
                        "adapted": r["metrics"][s.name][m][v]["map"]}
                       for r in records if m in r["metrics"][s.name]]
                src_row, row = keep_table[s.name][a.source][v], keep_table[s.name][m][v]
                keep = {"base (stock)": src_row.get("base"), "base (adapted)": row.get("base")}
                keep.update({c: cell for c, cell in row.items()
                             if c not in ("base", "_reference")})
                per_view[v] = {"original": {"stock": original[s.name][a.source][v]["map"],
                                            "adapted": original[s.name][m][v]["map"]},
                               "points": pts, "keep": keep}
            per_set[s.name] = per_view
        out[m] = {"source": a.source, "base_digests": list(a.base_digests), "sets": per_set}
    return out


def _robustness(sets, detectors, views, original, curves, codecs, records) -> list[dict]:
    """mAP of each model/view under each codec at each base rate point's bpp."""
    out = []
    for s in sets:
        for r in (r for r in records if r["codec"] == "base"):
            bpp = r["bpp"][s.name]
            table: dict = {}
            for m in detectors.names:
                if m not in r["metrics"][s.name]:
                    continue  # an adapted detector not adapted to this base
                for v in views[s.name][m]:
                    if "/" in v:
                        continue  # the person-only views stay in the curves
                    row = {"original": original[s.name][m][v]["map"]}
                    for c in codecs:
                        pts = [(x[0], x[1]) for x in curves[s.name][m][v].get(c, [])]
                        row[c] = (r["metrics"][s.name][m][v]["map"] if c == "base"
                                  else value_at_bpp(pts, bpp))
                    table[f"{m} ({v})"] = row
            out.append({"set": s.name, "base": r["label"], "bpp": bpp, "table": table})
    return out
