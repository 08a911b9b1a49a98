"""Rate-distortion evaluation behind ``icm eval-rd``: real bytes, real decoders, BD-rates.

Every rate comes from bytes that were really written: the layer containers of our codecs
(base + enhancement for the scalable codec), and in-memory JPEG / WebP / AVIF files from
Pillow. Distortion is measured on 8-bit RGB: PSNR and MS-SSIM.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

__all__ = ["RDPoint", "bd_rate", "classical_curve", "evaluate", "load_images", "markdown",
           "ms_ssim", "psnr8"]

CLASSICAL = {
    # the lowest qualities reach down to ~20-25 dB, where under-trained learned codecs sit
    "JPEG": ("JPEG", {"subsampling": 2},
             (1, 2, 3, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95)),
    "WebP": ("WEBP", {"method": 4}, (0, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)),
    "AVIF": ("AVIF", {"speed": 6}, (0, 5, 15, 25, 35, 45, 55, 65, 75, 85, 92)),
}


# BD-rate anchors: every curve against JPEG and WebP (and AVIF); the learned curves also
# against each other, so the fusion codec is compared with difference compression directly
CLASSICAL_ANCHORS = ("JPEG", "WebP", "AVIF")
FUSION, DC = "scalable (fusion)", "DC (difference)"
LEARNED_ANCHORS = (DC, "single-layer")


@dataclass
class RDPoint:
    label: str  # e.g. "q50", "λ=0.013 m=4"
    bpp: float
    psnr: float
    ms_ssim: float
    extra: dict = field(default_factory=dict)


def psnr8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM on 8-bit RGB (pytorch-msssim); NaN for images under 161 pixels a side."""
    from pytorch_msssim import ms_ssim as _ms

    if min(a.shape[:2]) < 161:
        return math.nan
    ta = torch.from_numpy(a).permute(2, 0, 1)[None].double()
    tb = torch.from_numpy(b).permute(2, 0, 1)[None].double()
    return float(_ms(ta, tb, data_range=255.0))


def load_images(folder: str | Path, limit: int | None = None) -> list[tuple[str, np.ndarray]]:
    from PIL import Image

    files = sorted(p for p in Path(folder).iterdir()
                   if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".webp"})
    if not files:
        raise ValueError(f"no images in {folder}")
    out = []
    for p in files[:limit]:
        with Image.open(p) as im:
            out.append((p.name, np.asarray(im.convert("RGB"))))
    return out


def _mean_point(label: str, rows: list[tuple[float, float, float]], **extra) -> RDPoint:
    arr = np.array(rows, dtype=np.float64)
    return RDPoint(label, float(arr[:, 0].mean()), float(arr[:, 1].mean()),
                   float(np.nanmean(arr[:, 2])) if not np.isnan(arr[:, 2]).all() else math.nan,
                   extra)


def classical_curve(name: str, images: Sequence[tuple[str, np.ndarray]],
                    progress: bool = True) -> list[RDPoint]:
    from PIL import Image

    fmt, opts, qualities = CLASSICAL[name]
    points = []
    for q in tqdm(qualities, desc=name, disable=not progress, leave=False):
        rows = []
        for _, img in images:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format=fmt, quality=q, **opts)
            data = buf.getvalue()
            dec = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            rows.append((8 * len(data) / (img.shape[0] * img.shape[1]), psnr8(img, dec),
                         ms_ssim(img, dec)))
        points.append(_mean_point(f"q{q}", rows, quality=q))
    return points


def bd_rate(anchor: Sequence[RDPoint], test: Sequence[RDPoint]) -> float:
    """Bjøntegaard delta rate (%) of ``test`` against ``anchor`` over their common PSNR range,
    with monotone piecewise-cubic interpolation of log-rate over PSNR. Negative = fewer bits.
    Dominated points (more bits, no more PSNR than another point) are left out; NaN when a curve
    keeps fewer than two points or the curves share no PSNR range."""
    from scipy.interpolate import PchipInterpolator

    def curve(points: Sequence[RDPoint]) -> tuple[np.ndarray, np.ndarray]:
        # the Pareto front only: a point that costs more bits than another for no more PSNR
        # (an under-trained model can land there) would fold log-rate over PSNR back on itself
        kept: list[tuple[float, float]] = []
        for x in sorted(points, key=lambda x: (x.bpp, -x.psnr)):
            if not kept or x.psnr > kept[-1][0] + 1e-9:
                kept.append((x.psnr, math.log(x.bpp)))
        p, r = (np.array(v) for v in zip(*kept, strict=True)) if kept else (np.zeros(0),) * 2
        return p, r

    pa, ra = curve(anchor)
    pt, rt = curve(test)
    if len(pa) < 2 or len(pt) < 2:
        return math.nan
    lo, hi = max(pa.min(), pt.min()), min(pa.max(), pt.max())
    if hi - lo < 1e-6:
        return math.nan
    grid = np.linspace(lo, hi, 200)
    fa, ft = PchipInterpolator(pa, ra)(grid), PchipInterpolator(pt, rt)(grid)
    return float((math.exp(np.trapz(ft - fa, grid) / (hi - lo)) - 1) * 100)


def _codec_curve(label_fn: Callable[[dict], str], runs: list[dict],
                 images: Sequence[tuple[str, np.ndarray]], progress: bool,
                 desc: str, marginal: list[RDPoint] | None = None) -> list[RDPoint]:
    """``runs``: dicts with an ``encode(img) -> (bytes_total, decoded[, bytes_own])`` callable
    and meta. With ``marginal``, the same decodes against the layer's own bytes are appended
    there (what a request for the human view costs once the base layer is paid for)."""
    points = []
    for run in tqdm(runs, desc=desc, disable=not progress, leave=False):
        rows, own_rows = [], []
        for _, img in images:
            nbytes, dec, *own = run["encode"](img)
            px = img.shape[0] * img.shape[1]
            q = (psnr8(img, dec), ms_ssim(img, dec))
            rows.append((8 * nbytes / px, *q))
            if own:
                own_rows.append((8 * own[0] / px, *q))
        points.append(_mean_point(label_fn(run), rows, **run["meta"]))
        if marginal is not None and own_rows:
            marginal.append(_mean_point(label_fn(run), own_rows, **run["meta"]))
    return points


def evaluate(images: Sequence[tuple[str, np.ndarray]], *, bases: Sequence[Path] = (),
             enhancements: Sequence[Path] = (), residuals: Sequence[Path] = (),
             singles: Sequence[Path] = (), classical: Sequence[str] = ("JPEG", "WebP", "AVIF"),
             progress: bool = True) -> dict:
    """All curves, BD-rates and the PSNR-by-(λ, m) table as one JSON-able dict."""
    from ..api import ScalableCodec
    from ..package import load_package
    from .masks import edge_mask

    base_pkgs = {p: load_package(p) for p in bases}
    by_digest = {pkg.digest: p for p, pkg in base_pkgs.items()}
    curves: dict[str, list[RDPoint]] = {}
    for name in classical:
        curves[name] = classical_curve(name, images, progress)

    def lam(pkg) -> float:
        return float(pkg.config.meta.get("lambda", math.nan))

    # machine image: PSNR inside the SA-ICM edge mask versus base bpp
    masks = [edge_mask(img) for _, img in images]
    machine = []
    for p, pkg in base_pkgs.items():
        codec = ScalableCodec(pkg)
        rows = []
        for (_, img), m in zip(images, masks, strict=True):
            b = codec.encode_base(img)
            dec = codec.decode_machine(b)
            err = (dec.astype(np.float64) - img.astype(np.float64)) ** 2
            mse_in = err[m].mean() if m.any() else math.nan
            rows.append((8 * len(b) / (img.shape[0] * img.shape[1]),
                         10 * math.log10(255**2 / max(mse_in, 1e-12)), psnr8(img, dec)))
        arr = np.array(rows)
        machine.append(RDPoint(pkg.config.model_id, float(arr[:, 0].mean()),
                               float(np.nanmean(arr[:, 1])), math.nan,
                               {"model": str(p), "lambda": lam(pkg),
                                "psnr_full": float(arr[:, 2].mean())}))
    curves_machine = sorted(machine, key=lambda x: x.bpp)

    def layered(paths: Sequence[Path], kind: str) -> list[dict]:
        runs = []
        for p in paths:
            pkg = load_package(p)
            base_path = by_digest.get(pkg.config.base_digest)
            if base_path is None:
                raise ValueError(f"{p} refines a base model that is not among --base packages")
            codec = ScalableCodec(base_pkgs[base_path], pkg)

            def enc(img, codec=codec):
                b = codec.encode_base(img)
                e = codec.encode_enhancement(img, b)
                return len(b) + len(e), codec.decode_human(b, e), len(e)

            runs.append({"encode": enc, "meta": {
                "model": str(p), "base": str(base_path), "kind": kind,
                "lambda": lam(pkg), "base_lambda": lam(base_pkgs[base_path]),
                "m": pkg.config.m if kind == "enhancement" else None,
                "params": sum(t.numel() for t in pkg.model.parameters()),
                "steps": pkg.config.meta.get("steps")}})
        return runs

    fusion = layered(enhancements, "enhancement")
    marginal: dict[str, list[RDPoint]] = {}
    if fusion:
        marginal[FUSION] = []
        curves[FUSION] = _codec_curve(
            lambda r: f"λ={r['meta']['lambda']:g} m={r['meta']['m']}", fusion, images, progress,
            "fusion", marginal[FUSION])
    dc = layered(residuals, "residual")
    if dc:
        marginal[DC] = []
        curves[DC] = _codec_curve(
            lambda r: f"λ={r['meta']['lambda']:g}", dc, images, progress, "DC", marginal[DC])
    single_runs = []
    for p in singles:
        codec = ScalableCodec(load_package(p))

        def enc1(img, codec=codec):
            b = codec.encode_base(img)
            return len(b), codec.decode_machine(b)

        single_runs.append({"encode": enc1, "meta": {"model": str(p),
                                                     "lambda": lam(codec.base.package)}})
    if single_runs:
        curves["single-layer"] = _codec_curve(lambda r: f"λ={r['meta']['lambda']:g}",
                                              single_runs, images, progress, "single")
    for v in curves.values():
        v.sort(key=lambda x: x.bpp)

    bd = {}
    for name, pts in curves.items():
        anchors = CLASSICAL_ANCHORS if name in CLASSICAL else CLASSICAL_ANCHORS + LEARNED_ANCHORS
        bd[name] = {anchor: bd_rate(curves[anchor], pts)
                    for anchor in anchors if anchor in curves and anchor != name}
    table = [{"lambda": p.extra.get("lambda"), "m": p.extra.get("m"),
              "base_lambda": p.extra.get("base_lambda"), "bpp": p.bpp, "psnr": p.psnr,
              "ms_ssim": p.ms_ssim, "params": p.extra.get("params"),
              "steps": p.extra.get("steps")} for p in curves.get(FUSION, [])]
    # the human view's marginal cost: the layer's own bits against sending the frame again in
    # a classical format (what a deployment could do instead on an analyst's request)
    for pts in marginal.values():
        pts.sort(key=lambda x: x.bpp)
    marginal_bd = {name: {a: bd_rate(curves[a], pts) for a in ("WebP", "AVIF") if a in curves}
                   for name, pts in marginal.items()}
    return {
        "images": [n for n, _ in images],
        "curves": {k: [asdict(p) for p in v] for k, v in curves.items()},
        "machine": [asdict(p) for p in curves_machine],
        "bd_rate_percent": bd,
        "psnr_by_lambda_m": table,
        "marginal": {k: [asdict(p) for p in v] for k, v in marginal.items()},
        "marginal_bd_rate_percent": marginal_bd,
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
    anchors = [a for a in CLASSICAL_ANCHORS + LEARNED_ANCHORS
               if any(a in row for row in bd.values())]
    if anchors:
        out += ["", "### BD-rate (%, PSNR; negative = fewer bits than the anchor; '-' = fewer "
                "than two non-dominated points, or no common PSNR range)\n",
                "| codec | " + " | ".join(f"vs {a}" for a in anchors) + " |",
                "|---|" + "---|" * len(anchors)]
        for name, row in bd.items():
            out.append(f"| {name} | " + " | ".join(_f(row.get(a), "+.1f") for a in anchors)
                       + " |")
    if result["psnr_by_lambda_m"]:
        out += ["", "### Scalable codec: human-image PSNR by enhancement λ and m\n",
                "| enhancement λ | m | base λ | parameters | steps | total bpp | PSNR dB | "
                "MS-SSIM |", "|---|---|---|---|---|---|---|---|"]
        for r in result["psnr_by_lambda_m"]:
            params = f"{r['params'] / 1e6:.2f} M" if r.get("params") else "-"
            out.append(f"| {_f(r['lambda'], 'g')} | {r['m']} | {_f(r.get('base_lambda'), 'g')} "
                       f"| {params} | {r.get('steps') or '-'} | {r['bpp']:.3f} | "
                       f"{r['psnr']:.2f} | {_f(r.get('ms_ssim'), '.4f')} |")
    if result.get("marginal"):
        out += ["", "### The human view's marginal cost: the enhancement (or residual) layer's "
                "own bpp vs the human-image PSNR, against WebP / AVIF of the whole frame\n",
                "| codec | point | layer bpp | PSNR dB | BD-rate vs WebP | BD-rate vs AVIF |",
                "|---|---|---|---|---|---|"]
        for name, pts in result["marginal"].items():
            bdm = result["marginal_bd_rate_percent"].get(name, {})
            for i, p in enumerate(pts):
                extra = (f"{_f(bdm.get('WebP'), '+.1f')} | {_f(bdm.get('AVIF'), '+.1f')}"
                         if i == 0 else " | ")
                out.append(f"| {name} | {p['label']} | {p['bpp']:.3f} | {p['psnr']:.2f} | "
                           f"{extra} |")
    return "\n".join(out) + "\n"


def write_report(result: dict, out_dir: Path) -> Path:
    """``rd.json`` (everything) and ``rd.md`` (the tables) in ``out_dir``; returns the JSON."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "rd.json"
    path.write_text(json.dumps(result, indent=2, allow_nan=True))
    (out_dir / "rd.md").write_text(markdown(result))
    return path


def heldout_images(data: Sequence[str | Path], size: int = 512, limit: int = 24
                   ) -> list[tuple[str, np.ndarray]]:
    """The training data's held-out photos (the split ``icm train`` validates on; never video
    frames, never Kodak), centre-cropped to at most ``size`` pixels a side, a multiple of 16."""
    from .data import VIDEO_EXTS, load_dataset

    _, val = load_dataset(list(data), progress=False)
    out = []
    for s in val:
        if Path(s.key.split("#", 1)[0]).suffix.lower() in VIDEO_EXTS:
            continue
        h, w = s.image.shape[:2]
        hh, ww = min(size, h) // 16 * 16, min(size, w) // 16 * 16
        r, c = (h - hh) // 2, (w - ww) // 2
        out.append((Path(s.key).name, np.ascontiguousarray(s.image[r : r + hh, c : c + ww])))
    if not out:
        raise ValueError("the training data holds no held-out photos")
    return out[:limit]


@dataclass
class LayerScore:
    """A package scored with real bytes on a set of images, by its own training objective."""

    bpp: float  # the package's own layer
    total_bpp: float  # with its base layer, for dependent layers
    psnr: float  # of the image the package is trained for (machine for base, human otherwise)
    psnr_mask: float  # inside the SA-ICM edge mask (the base's objective)
    objective: float  # bpp + λ·255²·mse (mse inside the mask for a base), the training loss


def score_package(path: Path, images: Sequence[tuple[str, np.ndarray]],
                  base: Path | None = None, lmbda: float | None = None) -> LayerScore:
    """Encode and decode every image with real bitstreams; ``lmbda`` defaults to the
    package's own (so two packages of one λ compare by the loss they were trained on)."""
    from ..api import ScalableCodec
    from ..package import load_package
    from .masks import edge_mask

    pkg = load_package(path)
    lam = float(lmbda if lmbda is not None else pkg.config.meta.get("lambda", math.nan))
    if pkg.config.needs_base:
        if base is None:
            raise ValueError(f"{path} is a {pkg.config.kind} layer: pass its base package")
        codec = ScalableCodec(load_package(base), pkg)
    else:
        codec = ScalableCodec(pkg)
    rows = []
    for _, img in images:
        px = img.shape[0] * img.shape[1]
        b = codec.encode_base(img)
        if codec.enhancement is not None:
            e = codec.encode_enhancement(img, b)
            own, total, dec = len(e), len(b) + len(e), codec.decode_human(b, e)
        else:
            own = total = len(b)
            dec = codec.decode_machine(b)
        err = ((dec.astype(np.float64) - img.astype(np.float64)) / 255.0) ** 2
        mask = edge_mask(img) if pkg.config.kind == "base" else np.ones(img.shape[:2], bool)
        mse_mask = float((err * mask[..., None]).mean())  # the loss's normalisation
        mse_in = float(err[mask].mean())
        rows.append((8 * own / px, 8 * total / px, float(err.mean()), mse_in,
                     8 * own / px + lam * 255**2 * mse_mask))
    a = np.array(rows)
    return LayerScore(float(a[:, 0].mean()), float(a[:, 1].mean()),
                      float(np.mean([10 * math.log10(1 / max(v, 1e-12)) for v in a[:, 2]])),
                      float(np.mean([10 * math.log10(1 / max(v, 1e-12)) for v in a[:, 3]])),
                      float(a[:, 4].mean()))
