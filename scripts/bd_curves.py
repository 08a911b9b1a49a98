"""BD-rates between curves made of chosen points of `icm eval-rd` results.

`icm eval-rd` merges every `--single` package into one curve; comparing training rounds (or any
other grouping) needs curves made of some of those points. This picks them by the package path
(a suffix of the point's `extra.model`) from one or more rd.json files of the same images and
prints each curve's points and its BD-rate (PSNR) against JPEG / WebP / AVIF and every other
curve, each with its linear-interpolation cross-check in brackets:

    python scripts/bd_curves.py out/rd-s13-single/rd.json -- \
        r4=single-gdn-l0.0035.icmpkg,l0.013-r4.icmpkg,l0.0483-r4.icmpkg \
        r5=single-gdn-l0.0035.icmpkg,l0.013-r5/model.icmpkg,l0.0483-r5/model.icmpkg

`--kind` picks another curve of rd.json by its name there (e.g. a DC or enhancement curve);
the default is the single-layer codec's. `--marginal` takes that curve's marginal points
instead (the human layer's own bits, without the base), as `eval-rd`'s marginal table does.
`--psnr-range LO HI` averages over that interval only: a curve that gains a lower point also
gains range where JPEG is weakest, so rounds of different spans are compared over one interval.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from icm_eval.metrics import bd_rate
from icm_eval.points import RDPoint

ANCHORS = ("JPEG", "WebP", "AVIF")


def load_points(paths: list[Path], family: str, marginal: bool = False
                ) -> tuple[dict[str, list[RDPoint]], list[RDPoint]]:
    """The classical curves (the last file that has each wins) and every point of ``family``
    (its marginal points: the layer's own bits, with ``marginal``)."""
    anchors: dict[str, list[RDPoint]] = {}
    points: list[RDPoint] = []
    for path in paths:
        try:
            rd = json.loads(path.read_text())
            curves = rd["curves"]
        except (OSError, ValueError, KeyError) as e:
            raise SystemExit(f"cannot read the curves of {path}: {e}") from None
        for name in ANCHORS:
            if curves.get(name):
                anchors[name] = [RDPoint(**p) for p in curves[name]]
        source = rd.get("marginal", {}) if marginal else curves
        points += [RDPoint(**p) for p in source.get(family, [])]
    return anchors, points


def pick(points: list[RDPoint], suffixes: list[str]) -> list[RDPoint]:
    """The points whose package path ends with one of ``suffixes`` (one per package), by rate."""
    chosen = {str(p.extra.get("model", "")): p for p in points
              if any(str(p.extra.get("model", "")).endswith(s) for s in suffixes)}
    return sorted(chosen.values(), key=lambda p: p.bpp)


def table(curves: dict[str, list[RDPoint]], anchors: dict[str, list[RDPoint]],
          psnr_range: tuple[float, float] | None = None) -> list[str]:
    lines = []
    for name, pts in curves.items():
        lines.append(f"{name}: " + "  ".join(f"{p.bpp:.3f} bpp / {p.psnr:.2f} dB" for p in pts))
    for name, pts in curves.items():
        others = {**anchors, **{n: c for n, c in curves.items() if n != name}}
        lines.append(f"{name} BD-rate: " + ", ".join(
            f"vs {n} {bd_rate(c, pts, psnr_range=psnr_range):+.1f} % "
            f"({bd_rate(c, pts, 'linear', psnr_range):+.1f})"
            for n, c in others.items()))
    if psnr_range:
        lines.append(f"(every BD-rate over {psnr_range[0]:g}–{psnr_range[1]:g} dB only, within "
                     "the two curves' common range)")
    lines.append("(in brackets: the same with straight lines between the points; a large gap "
                 "means a point that adds little PSNR bends the cubic)")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        raise SystemExit("usage: bd_curves.py RD_JSON... [--kind CURVE] [--marginal] -- "
                         "NAME=SUFFIX,... ...")
    cut = argv.index("--")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rd_json", nargs="+", type=Path)
    ap.add_argument("--kind", default="single-layer",
                    help="the rd.json curve whose points are picked")
    ap.add_argument("--marginal", action="store_true",
                    help="its marginal points (the layer's own bits) instead")
    ap.add_argument("--psnr-range", nargs=2, type=float, metavar=("LO", "HI"),
                    help="average over this PSNR interval only (within each common range): "
                         "compares curves of different spans over one fixed interval")
    args = ap.parse_args(argv[:cut])
    if args.psnr_range and not args.psnr_range[0] < args.psnr_range[1]:
        ap.error(f"--psnr-range needs LO < HI, got {args.psnr_range}")
    anchors, points = load_points(args.rd_json, args.kind, args.marginal)
    curves = {}
    for spec in argv[cut + 1:]:
        name, _, suffixes = spec.partition("=")
        pts = pick(points, [s for s in suffixes.split(",") if s])
        if not name or not pts:
            raise SystemExit(f"{spec!r}: no {args.kind} point matches (NAME=SUFFIX,SUFFIX,...)")
        curves[name] = pts
    print("\n".join(table(curves, anchors, tuple(args.psnr_range) if args.psnr_range else None)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
