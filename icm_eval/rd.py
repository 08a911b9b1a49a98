"""Rate-distortion evaluation behind ``icm eval-rd``: real bytes, real decoders, BD-rates.

Every rate comes from bytes that were really written: the layer containers of our codecs
(base + enhancement for the scalable codec), and in-memory JPEG / WebP / AVIF files from
Pillow (:mod:`icm_eval.classical`, the table ``icm eval-machine`` uses too). Distortion is
measured on 8-bit RGB: PSNR and MS-SSIM.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .classical import CLASSICAL, RD_QUALITIES, classical_points
from .learned import Learned, load_bases, load_layered, package_lambda
from .metrics import bd_rate, ms_ssim, psnr8
from .points import RatePoint, RDPoint, mean_point

__all__ = ["RDPoint", "bd_rate", "classical_curve", "evaluate", "markdown", "plot",
           "write_report"]

# BD-rate anchors: every curve against JPEG and WebP (and AVIF); the learned curves also
# against each other, so the fusion codec is compared with difference compression directly
CLASSICAL_ANCHORS = ("JPEG", "WebP", "AVIF")
FUSION, DC, SINGLE = "scalable (fusion)", "DC (difference)", "single-layer"
LEARNED_ANCHORS = (DC, SINGLE)


def measure(points: Sequence[RatePoint], images: Sequence[tuple[str, np.ndarray]],
            progress: bool = True, desc: str = "",
            marginal: list[RDPoint] | None = None) -> list[RDPoint]:
    """Each point's mean bpp, PSNR and MS-SSIM over ``images`` (one image at a time). With
    ``marginal``, the same decodes against the top layer's own bytes are appended there (what
    a request for the human view costs once the base layer is paid for)."""
    out = []
    for p in tqdm(points, desc=desc, disable=not progress, leave=False):
        rows, own_rows = [], []
        for _, img in images:
            own_n = None
            if p.layers is not None:
                base_n, own_n, dec = p.layers(img)
                nbytes = base_n + own_n
            else:
                [(nbytes, dec)] = p.run([img])
            px = img.shape[0] * img.shape[1]
            q = (psnr8(img, dec), ms_ssim(img, dec))
            rows.append((8 * nbytes / px, *q))
            if marginal is not None and own_n:
                own_rows.append((8 * own_n / px, *q))
        out.append(mean_point(p.label, rows, **p.params))
        if marginal is not None and own_rows:
            marginal.append(mean_point(p.label, own_rows, **p.params))
    return out


def classical_curve(name: str, images: Sequence[tuple[str, np.ndarray]],
                    progress: bool = True,
                    qualities: Sequence[int] | None = None) -> list[RDPoint]:
    """``name`` (JPEG, WebP, AVIF) at each quality of its ``eval-rd`` sweep."""
    qs = RD_QUALITIES[name] if qualities is None else tuple(qualities)
    return measure(classical_points({name: qs}), images, progress, name)


def _layered_point(e: Learned, label: str, refine: int) -> RatePoint:
    return e.point(e.kind, label, {
        "model": str(e.path), "base": str(e.base_path), "kind": e.kind, "lambda": e.lmbda,
        "base_lambda": package_lambda(e.base), "arch": e.package.config.arch,
        "m": e.package.config.m if e.kind == "enhancement" else None,
        "params": sum(t.numel() for t in e.package.model.parameters()),
        "steps": e.package.config.meta.get("steps"), "refine": refine})


def _families(name: str, points: list[RatePoint], keys: Sequence[str]
              ) -> dict[str, list[RatePoint]]:
    """Split one kind's points into curves, one per family: points that differ in any of
    ``keys`` (arch, base, m) are different codecs, and one curve through them would be a
    hull of unrelated models. A curve is named by the kind and the keys that vary, so a run
    of one family keeps the plain name; an encoder that refines its latents always says so
    (``+refine50``): it is the same decoder with a slower encoder."""
    varying = [k for k in keys if len({str(p.params.get(k)) for p in points}) > 1]
    out: dict[str, list[RatePoint]] = {}
    for p in points:
        tags = [_tag(k, p.params.get(k)) for k in varying]
        if p.params.get("refine"):
            tags.append(f"+refine{p.params['refine']}")
        out.setdefault(" ".join([name, *tags]), []).append(p)
    return out


def _tag(key: str, value) -> str:
    if key == "arch":
        return str(value)
    if key == "base":
        return f"on {Path(str(value)).stem}"
    return f"{key}={value}"


def _known_curve(known: dict, name: str, images: Sequence[tuple[str, np.ndarray]]
                 ) -> list[RDPoint]:
    """``name``'s curve from an earlier result, which must have coded the same images with the
    same qualities (JPEG, WebP and AVIF are deterministic for one Pillow build)."""
    if known.get("images") != [n for n, _ in images]:
        raise ValueError("the earlier result was measured on other images; run without it")
    pts = known.get("curves", {}).get(name)
    want = [f"q{q}" for q in RD_QUALITIES[name]]
    if not pts or sorted(p["label"] for p in pts) != sorted(want):
        raise ValueError(f"the earlier result has no {name} curve at this run's qualities")
    return [RDPoint(**p) for p in pts]


def evaluate(images: Sequence[tuple[str, np.ndarray]], *, bases: Sequence[Path] = (),
             enhancements: Sequence[Path] = (), residuals: Sequence[Path] = (),
             singles: Sequence[Path] = (), classical: Sequence[str] = ("JPEG", "WebP", "AVIF"),
             progress: bool = True, known: dict | None = None,
             refine_steps: Sequence[int] = (0,)) -> dict:
    """All curves, BD-rates and the PSNR-by-(λ, m) table as one JSON-able dict. The learned
    curves are one per family (:func:`_families`); each learned curve is also compared with
    the DC and single-layer curves of its own arch. ``known``: an earlier result (rd.json) on
    the same images whose classical curves are taken instead of coding them again.
    ``refine_steps``: encoder-side latent refinement (:mod:`icm_codec.refine`) of the
    human-image layers, one curve per value (0: the plain encoder)."""
    from icm_codec import Refinement
    from icm_codec.train.masks import edge_mask

    base_runs = load_bases(list(dict.fromkeys(bases)))
    curves: dict[str, list[RDPoint]] = {}
    arch_of: dict[str, str] = {}  # learned curve -> its arch
    for name in classical:
        curves[name] = (_known_curve(known, name, images) if known else
                        classical_curve(name, images, progress))

    # machine image: PSNR inside the SA-ICM edge mask versus base bpp
    masks = [edge_mask(img) for _, img in images] if base_runs else []
    machine = []
    for b in base_runs:
        rows = []
        for (_, img), m in zip(images, masks, strict=True):
            nbytes, _, dec = b.layers(img)
            err = (dec.astype(np.float64) - img.astype(np.float64)) ** 2
            mse_in = err[m].mean() if m.any() else math.nan
            rows.append((8 * nbytes / (img.shape[0] * img.shape[1]),
                         10 * math.log10(255**2 / max(mse_in, 1e-12)), psnr8(img, dec)))
        arr = np.array(rows)
        machine.append(RDPoint(b.package.config.model_id, float(arr[:, 0].mean()),
                               float(np.nanmean(arr[:, 1])), math.nan,
                               {"model": str(b.path), "lambda": b.lmbda,
                                "psnr_full": float(arr[:, 2].mean())}))
    curves_machine = sorted(machine, key=lambda x: x.bpp)

    marginal: dict[str, list[RDPoint]] = {}
    fusion, dc, single = [], [], []
    for steps in dict.fromkeys(refine_steps):
        refine = Refinement(steps=steps)  # 0: the plain encoder
        fusion += [_layered_point(e, f"λ={e.lmbda:g} m={e.package.config.m}", steps)
                   for e in load_layered(enhancements, base_runs, refine=refine)]
        dc += [_layered_point(e, f"λ={e.lmbda:g}", steps)
               for e in load_layered(residuals, base_runs, refine=refine)]
        single += [s.point("single", f"λ={s.lmbda:g}", {
            "model": str(s.path), "lambda": s.lmbda, "arch": s.package.config.arch,
            "refine": steps}) for s in load_bases(singles, refine=refine)]
    for kind_name, points, keys, layered in (
            (FUSION, fusion, ("arch", "base", "m"), True),
            (DC, dc, ("arch", "base"), True),
            (SINGLE, single, ("arch",), False)):
        for name, pts in _families(kind_name, points, keys).items():
            if layered:
                marginal[name] = []
            curves[name] = measure(pts, images, progress, name, marginal.get(name))
            arch_of[name] = pts[0].params["arch"]
    for v in curves.values():
        v.sort(key=lambda x: x.bpp)

    bd, bd_linear = {}, {}
    for name, pts in curves.items():
        learned = [c for c in curves if c.startswith(LEARNED_ANCHORS) and name not in CLASSICAL
                   and arch_of.get(c) == arch_of.get(name)]
        anchors = [a for a in (*CLASSICAL_ANCHORS, *learned) if a in curves and a != name]
        bd[name] = {a: bd_rate(curves[a], pts) for a in anchors}
        # the straight-line reading beside the cubic one: with two or three points a point that
        # adds little PSNR for many bits bends the cubic (docs/rd-report.md, session 14)
        bd_linear[name] = {a: bd_rate(curves[a], pts, "linear") for a in anchors}
    table = [{"lambda": p.extra.get("lambda"), "m": p.extra.get("m"), "arch": p.extra.get("arch"),
              "base_lambda": p.extra.get("base_lambda"), "bpp": p.bpp, "psnr": p.psnr,
              "ms_ssim": p.ms_ssim, "params": p.extra.get("params"),
              "steps": p.extra.get("steps")}
             for name, pts in curves.items() if name.startswith(FUSION) for p in pts]
    # the human view's marginal cost: the layer's own bits against sending the frame again in
    # a classical format (what a deployment could do instead on an analyst's request)
    for pts in marginal.values():
        pts.sort(key=lambda x: x.bpp)
    marginal_bd = {name: {a: bd_rate(curves[a], pts) for a in ("WebP", "AVIF") if a in curves}
                   for name, pts in marginal.items()}
    marginal_bd_linear = {name: {a: bd_rate(curves[a], pts, "linear")
                                 for a in ("WebP", "AVIF") if a in curves}
                          for name, pts in marginal.items()}
    return {
        "images": [n for n, _ in images],
        "curves": {k: [asdict(p) for p in v] for k, v in curves.items()},
        "machine": [asdict(p) for p in curves_machine],
        "bd_rate_percent": bd,
        "bd_rate_linear_percent": bd_linear,
        "psnr_by_lambda_m": table,
        "marginal": {k: [asdict(p) for p in v] for k, v in marginal.items()},
        "marginal_bd_rate_percent": marginal_bd,
        "marginal_bd_rate_linear_percent": marginal_bd_linear,
    }


def plot(result: dict, out_dir: Path) -> list[Path]:
    """PSNR and MS-SSIM versus bpp (human image), machine PSNR in mask versus base bpp."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for metric, ylabel in (("psnr", "PSNR (dB, RGB)"), ("ms_ssim", "MS-SSIM")):
        fig, ax = plt.subplots(figsize=(7, 5))
        for name, pts in result["curves"].items():
            xs = [p["bpp"] for p in pts if p["bpp"] <= 2.0]
            ys = [p[metric] for p in pts if p["bpp"] <= 2.0]
            ax.plot(xs, ys, marker="o", ms=3, label=name)
        ax.set_xlabel("bits per pixel (total, from real bytes)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title(f"human image: {ylabel} vs rate ({len(result['images'])} images)")
        p = out_dir / f"rd_{metric}.png"
        fig.savefig(p, dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(p)
    if result.get("marginal"):
        fig, ax = plt.subplots(figsize=(7, 5))
        for name in ("WebP", "AVIF"):
            pts = [p for p in result["curves"].get(name, []) if p["bpp"] <= 2.0]
            ax.plot([p["bpp"] for p in pts], [p["psnr"] for p in pts], marker="o", ms=3,
                    label=f"{name} (whole frame)")
        for name, pts in result["marginal"].items():
            ax.plot([p["bpp"] for p in pts], [p["psnr"] for p in pts], marker="s",
                    label=f"{name}: layer bits only")
        ax.set_xlabel("bits per pixel sent on request (from real bytes)")
        ax.set_ylabel("PSNR (dB, RGB)")
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title("human view on request: what it costs once the base layer is paid")
        p = out_dir / "rd_marginal.png"
        fig.savefig(p, dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(p)
    if result["machine"]:
        fig, ax = plt.subplots(figsize=(7, 5))
        ax.plot([p["bpp"] for p in result["machine"]], [p["psnr"] for p in result["machine"]],
                marker="o", label="base layer: PSNR inside edge mask")
        ax.plot([p["bpp"] for p in result["machine"]],
                [p["extra"]["psnr_full"] for p in result["machine"]], marker="s",
                label="base layer: PSNR whole frame")
        ax.set_xlabel("base-layer bits per pixel")
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend()
        p = out_dir / "rd_machine.png"
        fig.savefig(p, dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(p)
    return paths


def _f(v, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def markdown(result: dict) -> str:
    """The report's tables as Markdown: human-image curves, machine curve, BD-rates, λ/m."""
    n = len(result["images"])
    out = [f"### Human image: PSNR / MS-SSIM vs total bpp ({n} images, mean per image)\n",
           "| codec | point | bpp | PSNR dB | MS-SSIM |", "|---|---|---|---|---|"]
    for name, pts in result["curves"].items():
        for p in pts:
            out.append(f"| {name} | {p['label']} | {p['bpp']:.3f} | {p['psnr']:.2f} | "
                       f"{_f(p['ms_ssim'], '.4f')} |")
    if result["machine"]:
        out += ["", "### Machine image (base layer only): PSNR inside the SA-ICM edge mask vs "
                "base bpp\n", "| base model | λ | base bpp | PSNR in edge mask dB | "
                "PSNR whole frame dB |", "|---|---|---|---|---|"]
        for p in result["machine"]:
            out.append(f"| {p['label']} | {_f(p['extra'].get('lambda'), 'g')} | {p['bpp']:.3f} | "
                       f"{p['psnr']:.2f} | {p['extra']['psnr_full']:.2f} |")
    bd = result["bd_rate_percent"]
    anchors = list(dict.fromkeys(a for a in CLASSICAL_ANCHORS if any(a in r for r in bd.values()))
                   ) + list(dict.fromkeys(a for r in bd.values() for a in r
                                          if a not in CLASSICAL_ANCHORS))
    if anchors:
        linear = result.get("bd_rate_linear_percent", {})
        out += ["", "### BD-rate (%, PSNR; negative = fewer bits than the anchor; '-' = fewer "
                "than two non-dominated points, or no common PSNR range; in brackets: straight "
                "lines between the points instead of the monotone cubic)\n",
                "| codec | " + " | ".join(f"vs {a}" for a in anchors) + " |",
                "|---|" + "---|" * len(anchors)]
        for name, row in bd.items():
            out.append(f"| {name} | " + " | ".join(
                _bd_cell(row.get(a), linear.get(name, {}).get(a)) for a in anchors) + " |")
    if result["psnr_by_lambda_m"]:
        out += ["", "### Scalable codec: human-image PSNR by enhancement λ and m\n",
                "| arch | enhancement λ | m | base λ | parameters | steps | total bpp | PSNR dB | "
                "MS-SSIM |", "|---|---|---|---|---|---|---|---|---|"]
        for r in result["psnr_by_lambda_m"]:
            params = f"{r['params'] / 1e6:.2f} M" if r.get("params") else "-"
            out.append(f"| {r.get('arch') or '-'} | {_f(r['lambda'], 'g')} | {r['m']} | "
                       f"{_f(r.get('base_lambda'), 'g')} "
                       f"| {params} | {r.get('steps') or '-'} | {r['bpp']:.3f} | "
                       f"{r['psnr']:.2f} | {_f(r.get('ms_ssim'), '.4f')} |")
    if result.get("marginal"):
        out += ["", "### The human view's marginal cost: the enhancement (or residual) layer's "
                "own bpp vs the human-image PSNR, against WebP / AVIF of the whole frame\n",
                "| codec | point | layer bpp | PSNR dB | BD-rate vs WebP | BD-rate vs AVIF |",
                "|---|---|---|---|---|---|"]
        for name, pts in result["marginal"].items():
            bdm = result["marginal_bd_rate_percent"].get(name, {})
            bdl = result.get("marginal_bd_rate_linear_percent", {}).get(name, {})
            for i, p in enumerate(pts):
                extra = (f"{_bd_cell(bdm.get('WebP'), bdl.get('WebP'))} | "
                         f"{_bd_cell(bdm.get('AVIF'), bdl.get('AVIF'))}" if i == 0 else " | ")
                out.append(f"| {name} | {p['label']} | {p['bpp']:.3f} | {p['psnr']:.2f} | "
                           f"{extra} |")
    return "\n".join(out) + "\n"


def _bd_cell(cubic: float | None, linear: float | None) -> str:
    """'+12.3 (+14.0)': the cubic reading, then the straight-line one when there is one."""
    if linear is None or math.isnan(linear):
        return _f(cubic, "+.1f")
    return f"{_f(cubic, '+.1f')} ({linear:+.1f})"


def write_report(result: dict, out_dir: Path) -> Path:
    """``rd.json`` (everything) and ``rd.md`` (the tables) in ``out_dir``; returns the JSON."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "rd.json"
    path.write_text(json.dumps(result, indent=2, allow_nan=True))
    (out_dir / "rd.md").write_text(markdown(result))
    return path
