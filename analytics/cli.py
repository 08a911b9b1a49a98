"""``icm eval-machine``: the machine-vision benchmark (imported by ``icm`` when it runs).

Heavy imports (torch, Ultralytics) happen inside the command so ``icm --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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
    from .codecs import (
        classical_points,
        human_points,
        installed_enhancements,
        machine_points,
        parse_qualities,
    )
    from .data import load_labelled, load_photos, parse_frame_range, sample_video
    from .detector import MultiDetector
    from .errors import AnalyticsError
    from .eval_machine import evaluate_machine
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
    if args.base is None:
        from icm_codec.registry import list_packages

        bases = [i.path for i in list_packages() if i.kind == "base"]
    else:
        bases = [Path(b) for b in args.base]
    for b in [*bases, *(args.enhancement or [])]:
        if not Path(b).is_file():
            raise AnalyticsError(f"model package not found: {b}")
    enhancements = (installed_enhancements(bases) if args.enhancement is None
                    else [Path(e) for e in args.enhancement])

    n_img = args.images or None
    max_side = args.max_side or None
    ranges = [parse_frame_range(r if r != ":" else None) for r in args.frame_range]
    if len(ranges) == 1:
        ranges *= len(args.video)
    elif not ranges:
        ranges = [None] * len(args.video)
    elif len(ranges) != len(args.video):
        raise AnalyticsError(f"--frame-range given {len(ranges)} times for {len(args.video)} "
                             "videos: give it once, or once per --video")
    sets = [sample_video(v, args.frames, max_side, frame_range=r)
            for v, r in zip(args.video, ranges, strict=True)]
    sets += [load_photos(f, n_img, max_side, name=Path(f).name or "photos") for f in args.photos]
    detectors = MultiDetector.load(models, weights_dir=args.detectors, device=args.device,
                                   conf=args.pred_conf, imgsz=args.imgsz, batch_size=args.batch,
                                   max_det=100)
    names = detectors.detectors[0].names  # class names of the labels (COCO for all of ours)
    sets += [load_labelled(f, n_img, names, max_side, name=Path(f).name or "labelled")
             for f in args.coco8]
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
                              target_set=args.target_set, progress=not args.no_progress)
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
        verdict = {True: "met", False: "not met", None: "undetermined"}[t["met"]]
        print(f"  target (base <= 0.5x JPEG bpp): {verdict}")
    print(f"wrote {written['json']}, {written['report']} and "
          f"{', '.join(p.name for p in written['plots'])}")
    return 0
