"""The codec library's own commands: encode, decode, info, model, train, plan, masks.

They are registered in :data:`COMMANDS`; the ``icm`` shell (``icm_app``) offers them beside the
services' commands. ``python -m icm_codec.cli`` runs them without the shell (``icm plan`` starts
its training jobs that way), and this module names nothing above the codec library.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .commands import CommandTable, HelpParser, run_command
from .config import ARCHS
from .configflags import add_config_flags, config_from_args
from .kinds import LayerKind

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS = CommandTable()
command = COMMANDS.command


def _load_image(path: str):
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError as e:
        raise ValueError(f"image not found: {path}") from e
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


def _save_image(arr, path: str) -> None:
    from PIL import Image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _resolve(name: str | None, kind: str) -> Path:
    from .registry import default_package, find_package

    return find_package(name, None) if name else default_package(kind)


# -- encode ----------------------------------------------------------------------------------
def _encode_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="input image (PNG, JPEG, ...)")
    p.add_argument("-o", "--output", required=True, help="output .icm file")
    p.add_argument("--layers", default="base",
                   help="comma-separated layers to write: base[,enhancement] (default: base)")
    p.add_argument("--model", help="base model package (path, model id or digest)")
    p.add_argument("--enhancement", help="enhancement (or residual) model package")
    p.add_argument("--refine-steps", type=int, default=0, metavar="N",
                   help="spend N gradient steps per layer on a better latent (a single-layer "
                        "base, the enhancement layer; never a machine base layer): fewer bits "
                        "at equal quality, ~N decodes of encoder time; any decoder reads it "
                        "(default 0)")
    p.add_argument("--device", default="cpu")


@command("encode", "encode an image into base (and enhancement) layers", _encode_configure)
def _encode(args: argparse.Namespace) -> int:
    from .api import ScalableCodec
    from .framefile import pack_frame_file
    from .refine import Refinement

    layers = [s.strip() for s in args.layers.split(",") if s.strip()]
    bad = set(layers) - {"base", "enhancement"}
    if not layers or bad or layers[0] != "base":
        raise ValueError("--layers must be 'base' or 'base,enhancement'")
    enh_path = _resolve(args.enhancement, "enhancement") if "enhancement" in layers else None
    codec = ScalableCodec.load(_resolve(args.model, "base"), enh_path, args.device,
                               refine=Refinement(steps=args.refine_steps, progress=True))
    if codec.refine is not None and codec.base.refine is None and codec.enhancement is None:
        raise ValueError("--refine-steps refines a single-layer codec or the enhancement "
                         "layer, and this file holds only a machine base layer: add "
                         "--layers base,enhancement or name a single-layer --model")
    frame = _load_image(args.image)
    out = [codec.encode_base(frame)]
    if enh_path is not None:
        out.append(codec.encode_enhancement(frame, out[0]))
    Path(args.output).write_bytes(pack_frame_file(out))
    pixels = frame.shape[0] * frame.shape[1]
    for name, data in zip(layers, out, strict=True):
        print(f"{name:12s} {len(data):9d} bytes  {8 * len(data) / pixels:.4f} bpp")
    return 0



# -- decode ----------------------------------------------------------------------------------
def _decode_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help=".icm file written by `icm encode`")
    p.add_argument("--machine", help="write the machine image (PNG) here")
    p.add_argument("--human", help="write the human image (PNG) here (needs the enhancement)")
    p.add_argument("--model", help="base model package (default: the one the file names)")
    p.add_argument("--enhancement", help="enhancement model package (default: as named)")
    p.add_argument("--device", default="cpu")


@command("decode", "decode an .icm file into machine and/or human images", _decode_configure)
def _decode(args: argparse.Namespace) -> int:
    from .api import ScalableCodec
    from .bitstream import read_header
    from .framefile import unpack_frame_file
    from .registry import find_package

    if not args.machine and not args.human:
        raise ValueError("nothing to do: pass --machine PATH and/or --human PATH")
    layers = unpack_frame_file(_read(args.file))
    headers = [read_header(lay) for lay in layers]
    base_path = Path(args.model) if args.model else find_package(headers[0].model_digest.hex())
    enh_path = None
    if args.human:
        if len(layers) < 2:
            raise ValueError(f"{args.file} holds no enhancement layer: re-encode with "
                             "--layers base,enhancement")
        enh_path = (Path(args.enhancement) if args.enhancement
                    else find_package(headers[1].model_digest.hex()))
    codec = ScalableCodec.load(base_path, enh_path, args.device)
    if args.machine:
        _save_image(codec.decode_machine(layers[0]), args.machine)
        print(f"machine image -> {args.machine}")
    if args.human:
        _save_image(codec.decode_human(layers[0], layers[1]), args.human)
        print(f"human image   -> {args.human}")
    return 0



def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as e:
        raise ValueError(f"file not found: {path}") from e


# -- info ------------------------------------------------------------------------------------
def _info_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help=".icm file")


@command("info", "print the header fields, sizes and bits per pixel of an .icm file",
         _info_configure)
def _info(args: argparse.Namespace) -> int:
    from .bitstream import unpack_layer
    from .framefile import unpack_frame_file

    data = _read(args.file)
    layers = unpack_frame_file(data)
    print(f"{args.file}: {len(data)} bytes, {len(layers)} layer(s)")
    total = 0
    for i, raw in enumerate(layers):
        lay = unpack_layer(raw)
        h = lay.header
        px = h.width * h.height
        total += len(raw)
        print(f"layer {i + 1}: {h.kind.label}")
        print(f"  model        {h.model_id} (digest {h.model_digest.hex()})")
        print(f"  frame        {h.width}x{h.height} (padded to {h.padded_width}x"
              f"{h.padded_height}), frame id {h.frame_id}")
        print(f"  slices       {h.n_slices}")
        if any(h.parent):
            print(f"  base layer   {h.parent.hex()}")
        sizes = ", ".join(str(len(s)) for s in lay.substreams)
        print(f"  substreams   [{sizes}] bytes (z, slices)")
        print(f"  size         {len(raw)} bytes, {8 * len(raw) / px:.4f} bpp "
              f"(total so far {8 * total / px:.4f} bpp)")
    return 0



# -- model -----------------------------------------------------------------------------------
def _model_configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    init = sub.add_parser("init", help="write a seeded, untrained package (for tests and trials)")
    init.add_argument("-o", "--output", required=True)
    init.add_argument("--kind", default="base", choices=LayerKind.choices(),
                      help="dc = residual")
    init.add_argument("--arch", default="lite", choices=list(ARCHS))
    init.add_argument("--N", type=int, default=None, help="transform width")
    init.add_argument("--m", type=int, default=4, help="enhancement slices (1..5)")
    init.add_argument("--base", help="base package an enhancement/residual model refines")
    init.add_argument("--model-id", default="")
    init.add_argument("--seed", type=int, default=0)
    sub.add_parser("list", help="list the packages on the search path")


@command("model", "create or list model packages", _model_configure)
def _model(args: argparse.Namespace) -> int:
    from .registry import list_packages

    if args.action == "list":
        for info in list_packages():
            print(f"{info.model_id:28s} {info.kind:12s} {info.digest[:16]}  {info.path}")
        return 0
    import torch

    from .config import CodecConfig
    from .models import create_model
    from .package import load_package, save_package

    kind = LayerKind.parse(args.kind)
    base_digest = ""
    if kind.needs_parent:
        if not args.base:
            raise ValueError(f"a {kind.label} model needs --base PATH")
        base_digest = load_package(args.base).digest
    kw = {"N": args.N} if args.N else {}
    cfg = CodecConfig(kind=kind.label, arch=args.arch, m=args.m, model_id=args.model_id,
                      base_digest=base_digest, meta={"trained": False, "seed": args.seed}, **kw)
    torch.manual_seed(args.seed)
    model = create_model(cfg)
    model.freeze()
    digest = save_package(model, args.output)
    print(f"{cfg.model_id} -> {args.output} (digest {digest[:16]})")
    return 0



# -- train -----------------------------------------------------------------------------------
def _train_configure(p: argparse.ArgumentParser) -> None:
    from .train.config import TrainConfig

    p.add_argument("kind", choices=LayerKind.choices(),
                   help="dc = residual, the difference-compression baseline")
    p.add_argument("--out", help="run directory (default runs/<kind>-l<lambda>)")
    # every other TrainConfig field is a flag declared with the field (icm_codec/train/config.py)
    add_config_flags(p, TrainConfig)
    p.add_argument("--export", help="also copy the exported package here")
    p.add_argument("--plan-job", help=argparse.SUPPRESS)  # set by `icm plan run`: on the card


@command("train", "train a codec (resumes from the run directory's last checkpoint)",
         _train_configure)
def _train(args: argparse.Namespace) -> int:
    import shutil

    from .train.trainer import TrainConfig, train

    cfg = config_from_args(
        TrainConfig, args, kind=LayerKind.parse(args.kind).label,
        out=args.out or f"runs/{args.kind}-l{args.lmbda:g}",
        extra={"plan_job": args.plan_job} if args.plan_job else {})
    path = train(cfg)
    if args.export:
        Path(args.export).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, args.export)
        print(f"copied to {args.export}")
    return 0


# -- plan ------------------------------------------------------------------------------------
def _plan_configure(p: argparse.ArgumentParser) -> None:
    from .train.plan import DEFAULT_PLAN

    p.add_argument("action", choices=["run", "status", "compare"],
                   help="run: train every unfinished job; status: steps done per job; "
                   "compare: trained packages against the shipped ones on held-out photos")
    p.add_argument("--plan", default=str(DEFAULT_PLAN), help="plan file (TOML)")
    p.add_argument("--runs", default=str(Path.home() / ".cache" / "icm" / "runs"),
                   help="run directories (keep them outside the work tree)")
    p.add_argument("--data-root", default="../shared/data",
                   help="folder the plan's data paths are relative to")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--jobs", type=int, default=2,
                   help="jobs at once (CPU: single-thread processes; 0: all ready jobs)")
    p.add_argument("--only", nargs="*", help="run (or compare) only these job ids "
                   "(space- or comma-separated)")
    p.add_argument("--nice", type=int, default=10, help="niceness of the training processes")
    p.add_argument("--max-minutes", type=float,
                   help="then interrupt the running jobs (each checkpoints and exports)")
    p.add_argument("--steps-scale", type=float,
                   help="scale every job's steps (default: the plan's device profile; a dry "
                   "run: 0.001)")


@command("plan", "run the declarative training plan behind the shipped packages", _plan_configure)
def _plan(args: argparse.Namespace) -> int:
    from .train.plan import job_status, load_plan, run_plan

    plan = load_plan(args.plan, args.device, args.steps_scale)
    runs = Path(args.runs).expanduser()
    if args.action == "status":
        print(f"{'job':34} {'kind':12} {'steps':>7} {'planned':>8} {'shipped':>8}  state")
        for job in plan.order():
            st = job_status(job, runs)
            state = "finished" if st["finished"] else ("running/partial" if st["steps"]
                                                       else "not started")
            print(f"{job.id:34} {job.kind:12} {st['steps']:>7} {st['planned']:>8} "
                  f"{st['shipped_steps'] if st['shipped_steps'] is not None else '-':>8}  "
                  f"{state}")
        return 0
    data_root = Path(args.data_root)
    if not data_root.is_dir():
        raise ValueError(f"data root not found: {data_root}")
    if args.action == "compare":
        from .train.plan import compare

        print("| job | steps | bpp (total) | PSNR dB | PSNR in mask dB | objective | "
              "shipped | bpp (total) | PSNR dB | PSNR in mask dB | objective | better |")
        print("|---" * 12 + "|")
        for r in compare(plan, runs, data_root, only=args.only):
            n, o = r["new"], r["old"]
            cells = [f"{n.bpp:.3f} ({n.total_bpp:.3f})", f"{n.psnr:.2f}", f"{n.psnr_mask:.2f}",
                     f"{n.objective:.4f}", r["old_package"] or "-"]
            cells += ([f"{o.bpp:.3f} ({o.total_bpp:.3f})", f"{o.psnr:.2f}", f"{o.psnr_mask:.2f}",
                       f"{o.objective:.4f}"] if o else ["-"] * 4)
            verdict = "dominates" if r["dominates"] else ("yes" if r["better"] else "no")
            print(f"| {r['job']} | {r['steps']} | " + " | ".join(cells) + f" | {verdict} |")
        return 0
    failed = run_plan(plan, runs, data_root, device=args.device, jobs=args.jobs,
                      only=args.only, nice=args.nice, max_minutes=args.max_minutes)
    return 1 if failed else 0


# -- masks -----------------------------------------------------------------------------------
def _masks_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", required=True, help="images, folders or videos")
    p.add_argument("--kind", default="edges", choices=["edges", "objects", "full"])
    p.add_argument("--alpha", type=float, nargs="+", default=[0.98, 0.93, 0.48],
                   help="edge-mask knob values to render side by side")
    p.add_argument("--seg-weights", help="instance-segmentation weights (objects)")
    p.add_argument("--sam-checkpoint", help="Segment Anything checkpoint (edges)")
    p.add_argument("-n", type=int, default=4, help="number of examples")
    p.add_argument("--out", default="out/masks")


@command("masks", "render example training masks (image | mask per alpha)", _masks_configure)
def _masks(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from .train.data import load_dataset
    from .train.masks import MaskMaker

    train, val = load_dataset(args.data, val_fraction=0.0, forbid=(), progress=False)
    samples = (train + val)[:: max(1, len(train + val) // args.n)][: args.n]
    alphas = args.alpha if args.kind == "edges" else [args.alpha[0]]
    makers = [MaskMaker(args.kind, alpha=a, sam_checkpoint=args.sam_checkpoint,
                        seg_weights=args.seg_weights) for a in alphas]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(samples):
        tiles = [s.image]
        for mk in makers:
            m = mk(s)
            shown = (s.image * 0.25).astype(np.uint8)
            shown[m] = s.image[m]
            tiles.append(shown)
            print(f"{s.key}: {mk.tag}: {100 * m.mean():.1f}% of pixels in the mask")
        Image.fromarray(np.concatenate(tiles, axis=1)).save(out / f"mask_{i}.png")
    print(f"wrote {len(samples)} examples to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = HelpParser(prog="icm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cmd in COMMANDS.items():
        cmd.configure(sub.add_parser(name, help=cmd.help, description=cmd.help))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("icm", args.command, COMMANDS[args.command], args)


if __name__ == "__main__":
    # run as a module: commands register in `icm_codec.cli`, not in `__main__`
    from icm_codec.cli import main as _main

    sys.exit(_main())
