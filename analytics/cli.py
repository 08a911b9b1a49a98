"""``icm eval-machine`` (the machine-vision benchmark) and ``icm adapt-detector`` (detectors
fine-tuned on machine images), imported by ``icm`` when one of them runs.

Heavy imports (torch, Ultralytics) happen inside the command so ``icm --help`` stays fast.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from icm_codec.commands import CommandTable

__all__ = ["COMMANDS"]

COMMANDS = CommandTable()
command = COMMANDS.command

DEFAULT_MODELS = "yolo11n,yolov8n,yolo26n,yolo26n-seg"


def _configure(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data (at least one)")
    data.add_argument("--video", action="append", default=[],
                      help="video file; frames sampled evenly, scored against pseudo-ground-"
                           "truth (repeatable)")
    data.add_argument("--photos", action="append", default=[],
                      help="folder of photos, scored against pseudo-ground-truth (repeatable)")
    data.add_argument("--coco8", action="append", default=[],
                      help="YOLO dataset folder with images/ and labels/ (ground truth)")
    data.add_argument("--coco8-split", default="",
                      help="only this split of every --coco8 folder (images/<split>), e.g. val "
                           "when a detector under test was adapted on train (default: all)")
    data.add_argument("--frames", type=int, default=16,
                      help="video frames sampled per video (default 16)")
    data.add_argument("--frame-range", metavar="START:END", action="append", default=[],
                      help="sample video frames only from this range (frame indices, END "
                           "exclusive), e.g. 715: for the tail of vtest.avi that `icm train` "
                           "holds out; the set is then named <video>@START-END. Once: for "
                           "every --video; else once per --video, in order (':' = whole clip)")
    data.add_argument("--images", type=int, default=4,
                      help="photos / labelled images used per folder (default 4; 0 = all)")
    data.add_argument("--max-side", type=int, default=1280,
                      help="shrink larger images to this long side first (0 = never)")
    mod = p.add_argument_group("recognition models")
    mod.add_argument("--models", default=DEFAULT_MODELS,
                     help=f"comma-separated model names or weight paths (default {DEFAULT_MODELS})")
    mod.add_argument("--detectors",
                     help="folder with <name>.pt weights (searched before $ICM_DETECTOR_DIR)")
    mod.add_argument("--device", default="cpu", help="cpu or cuda (detectors and codecs)")
    mod.add_argument("--imgsz", type=int, default=640)
    mod.add_argument("--batch", type=int, default=8, help="frames per detector forward pass")
    mod.add_argument("--conf", type=float, default=0.25,
                     help="score threshold of pseudo-ground-truth boxes (default 0.25)")
    mod.add_argument("--pred-conf", type=float, default=0.001,
                     help="score threshold of scored predictions (default 0.001, as for mAP)")
    mod.add_argument("--adapted", nargs="*", metavar="PT_OR_JSON",
                     help="adapted detectors (icm adapt-detector) to compare with their stock "
                          "source on the base layers they were adapted to, on original and "
                          "human images; default: installed ones adapted from one of --models "
                          "to one of --base; give the flag alone for none")
    cod = p.add_argument_group("codecs")
    cod.add_argument("--base", nargs="*",
                     help="base-layer packages = rate points (default: installed base packages)")
    cod.add_argument("--enhancement", nargs="*",
                     help="enhancement packages for the human layer (their base must be in "
                          "--base); default: installed ones that refine a --base package; "
                          "give the flag alone for none")
    cod.add_argument("--qualities", nargs="*", default=[], metavar="CODEC=Q,Q,...",
                     help="quality sweeps, e.g. JPEG=10,30,60 WebP=20 AVIF= (empty drops it)")
    p.add_argument("--keep", type=float, default=0.95,
                   help="fraction of the original-image mAP to keep (default 0.95)")
    p.add_argument("--target-set", help="set of the headline target (default: first unlabelled)")
    p.add_argument("--out", default="out/machine", help="folder for machine.json, plots, report")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default; 1 is fastest on a busy machine)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@command("eval-machine", "machine-vision benchmark: mAP vs bpp of base layer, human layer, "
         "JPEG, WebP, AVIF", _configure)
def _run(args: argparse.Namespace) -> int:
    from icm_eval.classical import classical_points, parse_qualities
    from icm_eval.data import load_photos
    from icm_eval.learned import human_points, installed_enhancements, machine_points

    from .detector import MultiDetector
    from .errors import AnalyticsError
    from .eval_machine import evaluate_machine
    from .labelled import load_labelled
    from .report import write_machine_outputs

    if not (args.video or args.photos or args.coco8):
        raise AnalyticsError("no evaluation data: give --video, --photos and/or --coco8")
    if args.frames < 1:
        raise AnalyticsError("--frames must be at least 1")
    if not 0 < args.keep <= 1:
        raise AnalyticsError("--keep must lie in (0, 1]")
    if args.threads < 0:
        raise AnalyticsError("--threads must be 0 (default) or more")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        raise AnalyticsError("--models names no model")
    qualities = parse_qualities(args.qualities)
    from icm_codec.errors import ModelPackageError
    from icm_codec.registry import HUMAN_LAYER_KINDS, find_package, list_packages

    def resolve(name: str, kind: str | tuple) -> Path:
        """A path, model id or digest, as every other command takes them."""
        try:
            return find_package(name, kind)
        except ModelPackageError as e:
            raise AnalyticsError(f"model package not found: {name} ({e})") from e

    bases = ([i.path for i in list_packages() if i.kind == "base"] if args.base is None
             else [resolve(b, "base") for b in args.base])
    enhancements = (installed_enhancements(bases) if args.enhancement is None
                    else [resolve(e, HUMAN_LAYER_KINDS) for e in args.enhancement])

    n_img = args.images or None
    max_side = args.max_side or None
    sets = _video_sets(args.video, args.frame_range, args.frames, max_side, "--frame-range")
    sets += [load_photos(f, n_img, max_side, name=Path(f).name or "photos") for f in args.photos]
    det_kw = {"weights_dir": args.detectors, "device": args.device, "conf": args.pred_conf,
              "imgsz": args.imgsz, "batch_size": args.batch, "max_det": 100}
    detectors = MultiDetector.load(models, **det_kw)
    adapted, adapted_records = _adapted_models(args.adapted, detectors, bases, det_kw)
    names = detectors.detectors[0].names  # class names of the labels (COCO for all of ours)
    sets += [load_labelled(f, n_img, names, max_side, split=args.coco8_split or None,
                           name=_set_name(f, "labelled", args.coco8_split)) for f in args.coco8]
    _note_training_overlap(adapted_records, sets)
    seen: dict[str, int] = {}
    for s in sets:  # two folders with one name: keep both
        seen[s.name] = seen.get(s.name, 0) + 1
        if seen[s.name] > 1:
            s.name = f"{s.name}-{seen[s.name]}"
    points = machine_points(bases, args.device)
    points += human_points(enhancements, bases, args.device) if enhancements else []
    points += classical_points(qualities)
    if not any(p.codec == "base" for p in points):
        print("note: no base-layer package given or installed: only classical codecs are "
              "measured (pass --base PKG, or create one with `icm model init`)")
    result = evaluate_machine(sets, points, detectors, gt_conf=args.conf, keep=args.keep,
                              target_set=args.target_set, progress=not args.no_progress,
                              adapted=adapted)
    written = write_machine_outputs(result, args.out)

    tg = result["target"]
    print(f"original-image mAP@[.50:.95] ({tg['model']}, box):")
    for set_name, per_model in result["original"].items():
        m = per_model[tg["model"]]["box"]["map"]
        print(f"  {set_name:12s} {'—' if m is None else f'{m:.3f}'}")
    rows = result["bpp_to_keep"][tg["set"]][tg["model"]]
    for t in (tg, tg.get("person")):
        if not t:
            continue
        print(f"bpp to keep {100 * args.keep:.0f}% of the original mAP on {tg['set']} "
              f"({tg['model']}, {t['view']}):")
        for c in result["codecs"]:
            cell = rows[t["view"]][c]
            txt = (cell["bound"] if cell["bpp"] is None
                   else f"{cell['bound']} {cell['bpp']:.3f} bpp")
            if cell.get("ratio") is not None and c != "JPEG":
                txt += f" ({cell['ratio_bound']} {cell['ratio']:.2f}x JPEG)"
            print(f"  {c:6s} {txt}")
        for g in t["goals"]:
            verdict = {True: "met", False: "not met", None: "undetermined"}[g["met"]]
            if g["cell"] is None:
                verdict = f"{g['anchor']} not measured"
            print(f"  {g['role']} (base <= {g['factor']:g}x {g['anchor']} bpp): {verdict}")
    for m, a in result["adapted"].items():
        for set_name, per_view in a["sets"].items():
            view = "box/person" if "box/person" in per_view else "box"
            v = per_view[view]
            pts = ", ".join(f"{p['codec']} {p['label']} {_f(p['stock'])} -> {_f(p['adapted'])}"
                            for p in v["points"])
            print(f"{m} vs {a['source']} on {set_name} ({view} mAP): original "
                  f"{_f(v['original']['stock'])} -> {_f(v['original']['adapted'])}; {pts}")
    print(f"wrote {written['json']}, {written['report']} and "
          f"{', '.join(p.name for p in written['plots'])}")
    return 0


def _f(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def _video_sets(videos: list[str], ranges_text: list[str], frames: int, max_side: int | None,
                flag: str) -> list:
    """Sampled video sets; a frame range given once applies to every video."""
    from icm_eval.data import parse_frame_range, sample_video

    from .errors import AnalyticsError

    ranges = [parse_frame_range(r if r != ":" else None) for r in ranges_text]
    if len(ranges) == 1:
        ranges *= len(videos)
    elif not ranges:
        ranges = [None] * len(videos)
    elif len(ranges) != len(videos):
        raise AnalyticsError(f"{flag} given {len(ranges)} times for {len(videos)} "
                             "videos: give it once, or once per video")
    return [sample_video(v, frames or None, max_side, frame_range=r)
            for v, r in zip(videos, ranges, strict=True)]


def _set_name(folder: str, default: str, split: str = "") -> str:
    name = Path(folder).name or default
    return f"{name}-{split}" if split else name


def _note_training_overlap(records: list, sets: list) -> None:
    """Say where an adapted detector is evaluated on images it was trained on (its figures
    there are not held out): same video and frame range, same photo folder, same YOLO split."""
    from icm_eval.data import parse_frame_range

    for rec in records:
        for s in sets:
            src = Path(s.source).resolve() if s.source else None
            for d in rec.data:
                if src is None or Path(str(d.get("path", ""))).resolve() != src:
                    continue
                keys = {im.key for im in s.images}
                if d.get("kind") == "video":
                    fr = str(d.get("frame_range") or "")
                    start, end = parse_frame_range(fr if fr != ":" else None) or (0, None)
                    hit = any(start <= int(k.rsplit("#", 1)[1]) < (end or 1 << 62)
                              for k in keys)
                elif d.get("kind") == "yolo":
                    root = src / "images" / str(d.get("split") or "")
                    hit = any(f.name in keys for f in root.rglob("*") if f.is_file())
                else:
                    hit = True
                if hit:
                    print(f"note: {rec.id} was adapted on images of the set {s.name!r}: its "
                          "figures there are not held out (use --frame-range / --coco8-split "
                          "to evaluate on other images)")
                    break


def _adapted_models(paths: list[str] | None, detectors: Any, bases: list[Path],
                    det_kw: dict[str, Any]) -> tuple[dict, list]:
    """Adapted detectors to compare (added to ``detectors``), with their stock sources.

    ``paths`` None: the installed ones adapted from one of the models to one of the bases.
    A source missing from the models is added; one whose weights differ from what the record
    names is an error (the comparison would be against other weights). Returns the models and
    their records.
    """
    from icm_codec import load_package

    from .adapted import find_adapted, load_adapted
    from .detector import Detector
    from .errors import AnalyticsError
    from .eval_machine import AdaptedModel

    digests = {load_package(b).digest for b in bases}
    if paths is None:
        found = [a for a in find_adapted() if a.record.source_name in detectors.names
                 and digests & set(a.record.base_digests)]
    else:
        found = [load_adapted(p) for p in paths]
    out = {}
    for ad in found:
        rec = ad.record
        if not digests & set(rec.base_digests):
            raise AnalyticsError(f"{ad.id} is adapted to base packages that are not among "
                                 f"--base ({', '.join(b.get('model_id', '?') for b in rec.bases)})"
                                 ": add one of them to --base")
        if rec.source_name not in detectors.names:
            detectors.detectors.append(Detector(rec.source_name, **det_kw))
            print(f"note: added {rec.source_name}, the stock source of {ad.id}, to the models")
        src = detectors[rec.source_name]
        if src.weights_info.sha256 != str(rec.source.get("sha256", "")).lower():
            raise AnalyticsError(f"{ad.id} was adapted from other {rec.source_name} weights "
                                 f"than {src.weights}: compare it with its own source")
        if ad.id in detectors.names:
            raise AnalyticsError(f"two models are named {ad.id!r}")
        detectors.detectors.append(Detector(ad.weights, name=ad.id, weights_id=ad.id,
                                            adapted=True, **det_kw))
        out[ad.id] = AdaptedModel(rec.source_name, tuple(rec.base_digests))
    return out, [ad.record for ad in found]


# -- icm adapt-detector ----------------------------------------------------------------------
def _adapt_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--detector", required=True,
                   help="stock detector to adapt: a name (yolo11n, yolo26n-seg, ...) or a .pt")
    p.add_argument("--detectors", help="folder with <name>.pt weights (before "
                                       "$ICM_DETECTOR_DIR)")
    p.add_argument("--base", nargs="+", required=True, metavar="PKG",
                   help="base packages (paths, model ids or digests) whose machine images the "
                        "detector learns; one detector serves them all")
    data = p.add_argument_group("training data (at least one)")
    data.add_argument("--video", action="append", default=[], help="video file (repeatable)")
    data.add_argument("--frame-range", action="append", default=[], metavar="START:END",
                      help="frames to sample from (END exclusive): once for every --video, "
                           "or once per --video; keep evaluation frames out (vtest.avi: 0:715)")
    data.add_argument("--frames", type=int, default=240,
                      help="frames sampled evenly per video (default 240; 0 = every frame)")
    data.add_argument("--photos", action="append", default=[],
                      help="folder of photos (repeatable); pseudo-labelled")
    data.add_argument("--images", type=int, default=0,
                      help="photos / labelled images per folder (default 0 = all)")
    data.add_argument("--yolo", action="append", default=[],
                      help="YOLO dataset (images/ and labels/, e.g. COCO8): ground truth")
    data.add_argument("--yolo-split", default="train",
                      help="split of --yolo datasets to train on (default train; '' = all)")
    data.add_argument("--max-side", type=int, default=1280,
                      help="shrink larger images to this long side first (0 = never)")
    ev = p.add_argument_group("held-out evaluation (its figures go into the record)")
    ev.add_argument("--eval-video", action="append", default=[])
    ev.add_argument("--eval-frame-range", action="append", default=[], metavar="START:END")
    ev.add_argument("--eval-frames", type=int, default=20)
    ev.add_argument("--eval-photos", action="append", default=[])
    ev.add_argument("--eval-yolo", action="append", default=[])
    ev.add_argument("--eval-yolo-split", default="val")
    ev.add_argument("--eval-images", type=int, default=0)
    tr = p.add_argument_group("training (Ultralytics)")
    tr.add_argument("--epochs", type=int, default=30)
    tr.add_argument("--imgsz", type=int, default=640)
    tr.add_argument("--batch", type=int, default=8)
    tr.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    tr.add_argument("--workers", type=int, default=0, help="data-loader workers (default 0)")
    tr.add_argument("--optimizer", default="auto",
                    help="Ultralytics optimizer (default auto: AdamW with a small rate for "
                         "short fine-tunes)")
    tr.add_argument("--lr0", type=float, help="initial learning rate (default: Ultralytics')")
    tr.add_argument("--freeze", type=int, help="freeze the first N layers")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--amp", action="store_true",
                    help="mixed precision on CUDA (its check loads yolo26n.pt from "
                         "Ultralytics' weights folder, or downloads it)")
    lab = p.add_argument_group("labels and split")
    lab.add_argument("--pseudo-conf", type=float, default=0.25,
                     help="score threshold of pseudo-labels (default 0.25)")
    lab.add_argument("--val-share", type=float, default=0.1,
                     help="share of source images held out for Ultralytics' validation")
    lab.add_argument("--original-share", type=float, default=0.2,
                     help="share of source images also given as originals (against "
                          "forgetting them; default 0.2)")
    p.add_argument("--id", help="adapted detector id (default <detector>-on-<base ids>)")
    p.add_argument("--work",
                   help="work folder: decoded images, labels, Ultralytics runs; resumable "
                        "(default ~/.cache/icm/adapt/<id>)")
    p.add_argument("--out", default="out/adapted",
                   help="folder for <id>.pt, <id>.json and README.md (default out/adapted)")
    p.add_argument("--fresh", action="store_true", help="start the work folder over")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _command_line(args: argparse.Namespace) -> str:
    """The command, rebuilt from the parsed flags (the record says how to reproduce it)."""
    parts = ["icm", "adapt-detector", "--detector", args.detector]
    if args.detectors:
        parts += ["--detectors", args.detectors]
    parts += ["--base", *args.base]
    for flag in ("video", "frame_range", "photos", "yolo", "eval_video", "eval_frame_range",
                 "eval_photos", "eval_yolo"):
        for v in getattr(args, flag):
            parts += [f"--{flag.replace('_', '-')}", v]
    for flag in ("frames", "images", "yolo_split", "max_side", "eval_frames", "eval_yolo_split",
                 "eval_images", "epochs", "imgsz", "batch", "device", "optimizer", "lr0",
                 "freeze", "seed", "pseudo_conf", "val_share", "original_share", "id"):
        v = getattr(args, flag)
        if v is not None:
            parts += [f"--{flag.replace('_', '-')}", str(v)]
    if args.amp:
        parts.append("--amp")
    parts += ["--out", args.out]
    return " ".join(shlex.quote(x) for x in parts)


@command("adapt-detector", "fine-tune a YOLO detector on machine images of real base layers "
         "(resumable); the cloud serves it for frames of those bases", _adapt_configure)
def _adapt(args: argparse.Namespace) -> int:
    from icm_codec.registry import find_package
    from icm_eval.data import load_photos

    from .adapt import AdaptConfig, Source, adapt_detector
    from .detector import Detector
    from .errors import AnalyticsError
    from .labelled import load_labelled

    if not (args.video or args.photos or args.yolo):
        raise AnalyticsError("no training data: give --video, --photos and/or --yolo")
    if args.frames < 0 or args.eval_frames < 1 or args.images < 0:
        raise AnalyticsError("--frames and --images must be 0 or more, --eval-frames 1 or more")
    if args.threads < 0:
        raise AnalyticsError("--threads must be 0 (default) or more")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    bases = [find_package(b, "base") for b in args.base]
    names = Detector(args.detector, weights_dir=args.detectors).names
    max_side = args.max_side or None
    n_img = args.images or None
    videos = _video_sets(args.video, args.frame_range, args.frames, max_side, "--frame-range")
    ranges = (args.frame_range * len(args.video) if len(args.frame_range) == 1
              else args.frame_range or [":"] * len(args.video))
    sources = [Source(s, "video", {"path": v, "frames": args.frames, "frame_range": r})
               for s, v, r in zip(videos, args.video, ranges, strict=True)]
    sources += [Source(load_photos(f, n_img, max_side, name=Path(f).name or "photos"),
                       "photos", {"path": f}) for f in args.photos]
    sources += [Source(load_labelled(f, n_img, names, max_side, split=args.yolo_split or None,
                                     name=_set_name(f, "yolo", args.yolo_split)),
                       "yolo", {"path": f, "split": args.yolo_split}) for f in args.yolo]
    n_ev = args.eval_images or None
    evals = _video_sets(args.eval_video, args.eval_frame_range, args.eval_frames, max_side,
                        "--eval-frame-range")
    evals += [load_photos(f, n_ev, max_side, name=Path(f).name or "photos")
              for f in args.eval_photos]
    evals += [load_labelled(f, n_ev, names, max_side, split=args.eval_yolo_split or None,
                            name=_set_name(f, "labelled", args.eval_yolo_split))
              for f in args.eval_yolo]
    if not evals:
        print("note: no --eval-* data: the record will carry no measured accuracy")
    cfg = AdaptConfig(
        detector=args.detector, weights_dir=args.detectors, bases=bases, sources=sources,
        work=Path(args.work).expanduser() if args.work else None,
        out=Path(args.out), id=args.id, eval_sets=evals, epochs=args.epochs,
        imgsz=args.imgsz, batch=args.batch, device=args.device, workers=args.workers,
        optimizer=args.optimizer, lr0=args.lr0, freeze=args.freeze, seed=args.seed,
        pseudo_conf=args.pseudo_conf, val_share=args.val_share,
        original_share=args.original_share, amp=args.amp, fresh=args.fresh,
        progress=not args.no_progress, command=_command_line(args))
    ad = adapt_detector(cfg)
    rec = ad.record
    tr = rec.training
    print(f"adapted detector {ad.id}: {ad.weights} ({rec.weights['bytes'] / 1e6:.1f} MB), "
          f"record {ad.record_path}")
    print(f"  {rec.dataset['train_images']} training / {rec.dataset['val_images']} validation "
          f"images, {tr['epochs']} epochs, {tr['wall_seconds']:.0f} s training + "
          f"{tr['prepare_seconds']:.0f} s decoding on {tr['device']}")
    for set_name, per_view in rec.accuracy.get("sets", {}).items():
        for view, v in per_view.items():
            bases_txt = ", ".join(f"{b} ({x['bpp']:.3f} bpp) {_f(x['stock'])} -> "
                                  f"{_f(x['adapted'])}" for b, x in v["bases"].items())
            print(f"  {set_name} {view}: original {_f(v['original']['stock'])} -> "
                  f"{_f(v['original']['adapted'])}; {bases_txt}")
    return 0
