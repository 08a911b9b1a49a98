"""``icm eval-rd`` (rate-distortion of the learned packages against JPEG, WebP and AVIF),
imported by ``icm`` when it runs. ``icm eval-machine`` lives in :mod:`analytics.cli` (it needs
the detectors) and takes its codecs and images from this package too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from icm_codec.commands import CommandTable

__all__ = ["COMMANDS"]

COMMANDS = CommandTable()
command = COMMANDS.command


# -- eval-rd ---------------------------------------------------------------------------------
def _eval_rd_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="folder of test images (e.g. Kodak)")
    p.add_argument("--out", default="out/rd", help="folder for rd.json and the PNG plots")
    p.add_argument("--base", nargs="*", help="base packages (default: all installed)")
    p.add_argument("--enhancement", nargs="*", help="enhancement packages")
    p.add_argument("--dc", nargs="*", help="difference-compression (residual) packages")
    p.add_argument("--single", nargs="*", help="single-layer packages")
    p.add_argument("--limit", type=int, help="use only the first N images")
    p.add_argument("--no-classical", action="store_true", help="skip JPEG/WebP/AVIF")
    p.add_argument("--classical-from", metavar="RD_JSON",
                   help="take JPEG/WebP/AVIF from an earlier rd.json of the same images "
                        "(they are deterministic; coding them is most of a Kodak run)")
    p.add_argument("--refine-steps", type=int, nargs="+", default=[0], metavar="N",
                   help="encoder-side latent refinement of the human-image layers (single, "
                        "enhancement, DC): gradient steps per image, one curve per value; 0 is "
                        "the plain encoder (default). The decoder is the same; the encoder is "
                        "~N times slower")


@command("eval-rd", "rate-distortion evaluation against JPEG, WebP and AVIF", _eval_rd_configure)
def _eval_rd(args: argparse.Namespace) -> int:
    from icm_codec.registry import find_package, list_packages

    from .data import load_images
    from .rd import evaluate, plot, write_report

    installed = list_packages()

    def pick(given: list[str] | None, kind: str) -> list[Path]:
        if given is not None:  # paths, model ids or digests, like every other command
            return [find_package(g, kind) for g in given]
        return [i.path for i in installed if i.kind == kind]

    images = load_images(args.data, args.limit)
    known = None
    if args.classical_from:
        import json

        try:
            known = json.loads(Path(args.classical_from).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read {args.classical_from}: {e}") from e
    result = evaluate(images, known=known, bases=pick(args.base, "base"),
                      enhancements=pick(args.enhancement, "enhancement"),
                      residuals=pick(args.dc, "residual"), singles=pick(args.single, "single"),
                      classical=() if args.no_classical else ("JPEG", "WebP", "AVIF"),
                      refine_steps=args.refine_steps)
    out = Path(args.out)
    path = write_report(result, out)
    plots = plot(result, out)
    linear = result["bd_rate_linear_percent"]
    for name, bd in result["bd_rate_percent"].items():
        txt = ", ".join(f"vs {a}: {v:+.1f}% ({linear[name][a]:+.1f})" for a, v in bd.items())
        print(f"{name:22s} BD-rate {txt}")
    for row in result["psnr_by_lambda_m"]:
        print(f"λ={row['lambda']:g} m={row['m']}: {row['bpp']:.3f} bpp, {row['psnr']:.2f} dB")
    marginal_linear = result["marginal_bd_rate_linear_percent"]
    for name, bd in result["marginal_bd_rate_percent"].items():
        txt = ", ".join(f"vs {a}: {v:+.1f}% ({marginal_linear[name][a]:+.1f})"
                        for a, v in bd.items())
        print(f"{name} layer bits only: BD-rate {txt}")
    print("(in brackets: straight lines between the points; docs/rd-report.md on reading them)")
    print(f"wrote {path} and {', '.join(str(p) for p in plots)}")
    return 0
