"""Outputs of ``icm eval-machine``: ``machine.json``, PNG plots and a readable ``report.md``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["plot_machine", "write_machine_outputs", "write_markdown"]

_ORDER = ("base", "human", "human-dc", "JPEG", "WebP", "AVIF")


def _ordered(codecs: list[str]) -> list[str]:
    return sorted(codecs, key=lambda c: (_ORDER.index(c) if c in _ORDER else len(_ORDER), c))


def _f(v: float | None, nd: int = 3) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def target_lines(target: dict[str, Any]) -> list[str]:
    """One line per view of the target: the base layer's bpp and each goal's verdict."""
    out = []
    for t in (target, target.get("person")):
        if not t:
            continue
        if t.get("base") is None:
            out.append(f"{t['view']} mAP: no base-layer rate point was measured")
            continue
        parts = []
        for g in t["goals"]:
            verdict = {True: "met", False: "not met", None: "undetermined"}[g["met"]]
            factor = "" if g["factor"] == 1 else f"{g['factor']:g}× "
            if g["cell"] is None:
                parts.append(f"{g['role']} ≤ {factor}{g['anchor']}: not measured")
                continue
            ratio = ("" if g["ratio"] is None else
                     f", {({'=': '', '<=': '≤ ', '>=': '≥ ', '~': '~'}[g['ratio_bound']])}"
                     f"{g['ratio']:.2f}×")
            parts.append(f"{g['role']} ≤ {factor}{g['anchor']} "
                         f"({_keep_cell(g['cell'], 'JPEG')}{ratio}): **{verdict}**")
        unit = " bpp" if t["base"]["bpp"] is not None else ""
        out.append(f"{t['view']} mAP: base layer {_keep_cell(t['base'], 'JPEG')}{unit}; "
                   + "; ".join(parts))
    return out


def _keep_cell(cell: dict[str, Any] | None, codec: str) -> str:
    if cell is None:
        return "—"
    mark = " †" if cell.get("detector") else ""  # measured with the stock source detector
    if cell["bpp"] is None:
        if cell.get("best_map") is not None:
            return (f"not reached (best {cell['best_map']:.3f} at {cell['at_bpp']:.3f} bpp)"
                    + mark)
        return cell["bound"] + mark
    prefix = "≤ " if cell["bound"] == "<=" else ""
    text = f"{prefix}{cell['bpp']:.3f}"
    if codec != "JPEG" and cell.get("ratio") is not None:
        rb = {"=": "", "<=": "≤ ", ">=": "≥ ", "~": "~"}[cell["ratio_bound"]]
        text += f" ({rb}{cell['ratio']:.2f}× JPEG)"
    return text + mark


def _views_for_tables(result: dict, set_name: str, model: str) -> list[str]:
    return [v for v in result["curves"][set_name][model] if "/" not in v]


def write_markdown(result: dict[str, Any], path: str | Path,
                   plots: list[Path] | None = None) -> Path:
    """A report a person can read: target, bpp to keep 95%, rate–accuracy, robustness."""
    st = result["settings"]
    keep_pct = f"{100 * st['keep']:.0f}%"
    codecs = _ordered(result["codecs"])
    lines = ["# Machine-vision benchmark (`icm eval-machine`)", ""]
    lines += [f"Models: {', '.join(st['models'])} (imgsz {st['imgsz']}, {st['device']}; "
              f"predictions at conf ≥ {st['pred_conf']:g}, pseudo-ground-truth at conf ≥ "
              f"{st['gt_conf']:g}). mAP is COCO mAP@[.50:.95] (pycocotools) unless it says "
              "mAP50. Bits per pixel come from real bytes (layer containers, Pillow files).", ""]
    lines += ["| set | reference | images | sizes |", "|---|---|---|---|"]
    for name, s in result["sets"].items():
        lines.append(f"| {name} | {s['reference']} | {len(s['images'])} | "
                     f"{', '.join(s['sizes'])} |")
    lines.append("")
    untrained = [p["label"] for p in result["points"]
                 if p["codec"] in ("base", "human") and p["params"].get("trained") is not True]
    if untrained:
        lines += [f"> **Untrained (seeded) packages** (not marked as trained): "
                  f"{', '.join(untrained)}. Their numbers test the pipeline, not the method.", ""]

    tg = result["target"]
    lines += ["## Target", "", f"Goal: at {keep_pct} of the original-image mAP on "
              f"`{tg['set']}` ({tg['model']}), the base layer needs no more bits than WebP "
              "(stretch: half of AVIF's; also shown: half of JPEG's, the first benchmark's "
              "goal). Persons are the stable view on surveillance video.", ""]
    lines += [f"- {line}" for line in target_lines(tg)]
    lines.append("")

    lines += [f"## Bits per pixel to keep {keep_pct} of the original-image mAP", "",
              "Interpolated over log bpp on each codec's curve; the last upward crossing "
              "(curves against pseudo-ground-truth are not monotone). “≤” means already kept at "
              "the lowest rate measured.", ""]
    for set_name, per_model in result["bpp_to_keep"].items():
        lines += [f"### {set_name}", "", "| model (view) | original mAP | "
                  + " | ".join(codecs) + " |", "|---|---|" + "---|" * len(codecs)]
        for model, per_view in per_model.items():
            for view, row in per_view.items():
                ref = row["_reference"]["original_map"]
                cells = [_keep_cell(row.get(c), c) for c in codecs]
                lines.append(f"| {model} ({view}) | {_f(ref)} | " + " | ".join(cells) + " |")
        lines.append("")
    if result.get("adapted"):
        lines += ["† An adapted detector's row: JPEG / WebP / AVIF frames are analysed by its "
                  "stock source detector (what the cloud serves), and the bar is the stock "
                  "detector's original-image mAP.", ""]

    lines += ["## Rate–accuracy", "", "mAP@[.50:.95] / mAP50 of each model on the decoded "
              "images, per rate point.", ""]
    for set_name in result["sets"]:
        cols = [(m, v) for m in st["models"] for v in _views_for_tables(result, set_name, m)]
        first = st["models"][0]
        if "box/person" in result["curves"][set_name][first]:
            cols.append((first, "box/person"))
        head = " | ".join(f"{m} {v}" for m, v in cols)
        lines += [f"### {set_name}", "", f"| codec | point | bpp | {head} |",
                  "|---|---|---|" + "---|" * len(cols)]
        orig = result["original"][set_name]
        lines.append("| original | — | — | " + " | ".join(
            f"{_f(orig[m][v]['map'])} / {_f(orig[m][v]['map50'])}" for m, v in cols) + " |")
        for p in sorted(result["points"], key=lambda p: (_ordered(codecs).index(p["codec"]),
                                                         p["bpp"][set_name])):
            met = p["metrics"][set_name]
            cells = " | ".join(f"{_f(met[m][v]['map'])} / {_f(met[m][v]['map50'])}"
                               if m in met else "—" for m, v in cols)
            lines.append(f"| {p['codec']} | {p['label']} | {p['bpp'][set_name]:.3f} | {cells} |")
        lines.append("")

    lines += ["## Robustness: one base layer, every model (matched bpp)", "",
              "mAP@[.50:.95] of each model under each codec at the base layer's bpp "
              "(other codecs interpolated on their curves; — where their sweep does not reach "
              "that rate).", ""]
    if not result["robustness"]:
        lines += ["No base-layer rate point was measured.", ""]
    for rob in result["robustness"]:
        cs = ["original", *codecs]
        lines += [f"### {rob['set']}, base {rob['base']} at {rob['bpp']:.3f} bpp", "",
                  "| model (view) | " + " | ".join(cs) + " |", "|---|" + "---|" * len(cs)]
        for row_name, row in rob["table"].items():
            lines.append(f"| {row_name} | " + " | ".join(_f(row.get(c)) for c in cs) + " |")
        lines.append("")

    lines += _adapted_section(result)

    tm = result["timing"]
    lines += ["## Timing", "", f"Total {tm['total_seconds']:.0f} s. Detection per frame: "
              + ", ".join(f"{m} {ms:.0f} ms" for m, ms in tm["detect_ms_per_frame"].items())
              + ".", ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    out = Path(path)
    out.write_text("\n".join(lines))
    return out


def _adapted_section(result: dict[str, Any]) -> list[str]:
    """Stock vs adapted detector: originals (regression), each rate point it serves, and the
    bpp to keep the stock detector's original accuracy."""
    adapted = result.get("adapted") or {}
    if not adapted:
        return []
    keep_pct = f"{100 * result['settings']['keep']:.0f}%"
    lines = ["## Adapted detectors", "",
             "mAP@[.50:.95] of the stock detector → the adapted one, both scored against the "
             "stock detector's reference (labels, or its own results on the original images). "
             "The adapted detector runs where the cloud would run it: on the base layers it was "
             "adapted to, and on the original and human images as a regression check.", ""]
    for m, a in adapted.items():
        lines += [f"### {m} (adapted from {a['source']})", ""]
        for set_name, per_view in a["sets"].items():
            views = list(per_view)
            first = per_view[views[0]] if views else {"points": []}
            pts = [(p["codec"], p["label"], p["bpp"]) for p in first["points"]]
            head = ["original", *(f"{c} {lab} ({b:.3f} bpp)" for c, lab, b in pts)]
            lines += [f"`{set_name}`:", "", "| view | " + " | ".join(head) + " |",
                      "|---|" + "---|" * len(head)]
            for v in views:
                o = per_view[v]["original"]
                cells = [f"{_f(o['stock'])} → {_f(o['adapted'])}"]
                cells += [f"{_f(p['stock'])} → {_f(p['adapted'])}"
                          for p in per_view[v]["points"]]
                lines.append(f"| {v} | " + " | ".join(cells) + " |")
            lines.append("")
            codecs = list(next(iter(per_view.values()))["keep"]) if per_view else []
            lines += [f"bpp to keep {keep_pct} of the stock detector's original mAP "
                      f"(`{set_name}`):", "",
                      "| view | " + " | ".join(codecs) + " |", "|---|" + "---|" * len(codecs)]
            for v in views:
                k = per_view[v]["keep"]
                lines.append(f"| {v} | " + " | ".join(_keep_cell(k[c], c) for c in codecs)
                             + " |")
            lines.append("")
    return lines


def plot_machine(result: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """mAP versus bpp per set (one panel per model and view) and the bpp-to-keep summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    out_dir = Path(out_dir)
    keep = result["settings"]["keep"]
    codecs = _ordered(result["codecs"])
    colors = {c: f"C{i}" for i, c in enumerate(codecs)}
    paths = []
    for set_name, per_model in result["curves"].items():
        panels = [(m, v) for m in per_model for v in per_model[m] if "/" not in v]
        ncol = min(3, len(panels))
        nrow = math.ceil(len(panels) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(5 * ncol, 3.8 * nrow), squeeze=False)
        for ax, (m, v) in zip(axes.flat, panels, strict=False):
            for c in codecs:
                pts = [x for x in per_model[m][v].get(c, []) if x[1] is not None]
                if pts:
                    ax.plot([x[0] for x in pts], [x[1] for x in pts], marker="o", ms=3,
                            label=c, color=colors[c])
            ref = result["original"][set_name][m][v]["map"]
            if ref is not None:
                ax.axhline(ref, color="k", lw=0.8, ls=":", label="original")
                ax.axhline(keep * ref, color="grey", lw=0.8, ls="--",
                           label=f"{100 * keep:.0f}% of original")
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
            ax.set_title(f"{set_name}: {m} ({v})", fontsize=10)
            ax.set_xlabel("bits per pixel (real bytes)")
            ax.set_ylabel("mAP@[.50:.95]")
            ax.grid(alpha=0.3, which="both")
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=8)
        fig.tight_layout()
        p = out_dir / f"map_vs_bpp_{_safe(set_name)}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)

    tg = result["target"]
    per_model = result["bpp_to_keep"][tg["set"]]
    models = list(per_model)
    # all-class boxes, and persons alone where the models know them (the stable view on video)
    views = [v for v in ("box", "box/person") if any(v in per_model[m] for m in models)]
    fig, axes = plt.subplots(1, len(views), squeeze=False,
                             figsize=(len(views) * min(9.0, 2.0 + 1.3 * len(codecs)), 4.2))
    width = 0.8 / max(1, len(models))
    for ax, view in zip(axes.flat, views, strict=True):
        for j, m in enumerate(models):
            row = per_model[m].get(view)
            if row is None:
                continue
            for i, c in enumerate(codecs):
                cell = row.get(c)
                x = i + (j - (len(models) - 1) / 2) * width
                if cell is None or cell["bpp"] is None:
                    ax.text(x, 0, "n/r", ha="center", va="bottom", fontsize=7, rotation=90,
                            color=f"C{j}")
                    continue
                ax.bar(x, cell["bpp"], width, color=f"C{j}",
                       hatch="//" if cell["bound"] == "<=" else None)
                if c != "JPEG" and cell.get("ratio") is not None:
                    ax.text(x, cell["bpp"], f"{cell['ratio']:.2f}×", ha="center",
                            va="bottom", fontsize=7)
        ax.set_xticks(range(len(codecs)), codecs)
        ax.set_xlim(-0.6, len(codecs) - 0.4)
        ax.set_ylabel(f"bpp to keep {100 * keep:.0f}% of original mAP")
        ax.set_title(f"{tg['set']}, {view}: bpp needed (ratio to JPEG)\n"
                     "hatched = upper bound, n/r = not reached", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    from matplotlib.patches import Patch

    axes.flat[0].legend(handles=[Patch(color=f"C{j}", label=m) for j, m in enumerate(models)],
                        fontsize=8)
    fig.tight_layout()
    p = out_dir / "bpp_to_keep.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _nan_to_none(o: Any) -> Any:
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    if isinstance(o, dict):
        return {k: _nan_to_none(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_nan_to_none(v) for v in o]
    return o


def write_machine_outputs(result: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """``machine.json`` (strict JSON: NaN becomes null), the plots and ``report.md``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = _nan_to_none(result)
    js = out / "machine.json"
    js.write_text(json.dumps(clean, indent=1, default=_json_default, allow_nan=False))
    plots = plot_machine(clean, out)
    md = write_markdown(clean, out / "report.md", plots)
    return {"json": js, "plots": plots, "report": md}
