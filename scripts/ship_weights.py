"""Copy trained run packages into icm_codec/weights/ and write index.json + the model card.

    python scripts/ship_weights.py runs/base-l0.013/model.icmpkg ... --default-base base-lite-l0.013

Each package keeps its training record (config.meta); the card lists data, steps, wall time,
device and size, so shipped weights always say where they came from.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent.parent / "icm_codec" / "weights"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("packages", nargs="*", help="new packages (already shipped ones stay listed)")
    ap.add_argument("--default-base", required=True, help="model id of the default base")
    ap.add_argument("--default-enhancement", help="model id of the default enhancement")
    args = ap.parse_args()
    from icm_codec import LayerKind, load_package  # torch: not for --help

    WEIGHTS.mkdir(parents=True, exist_ok=True)
    for src in map(Path, args.packages):
        pkg = load_package(src)  # verifies the digest before anything is copied
        shutil.copyfile(src, WEIGHTS / f"{pkg.config.model_id}.icmpkg")
    # the card lists every shipped package, those shipped earlier included
    pkgs = [(dst, load_package(dst)) for dst in sorted(WEIGHTS.glob("*.icmpkg"))]
    # a dependent layer refines one base by digest: once that base is replaced it can no
    # longer decode anything, so it is retired with it (retrain it on the new base)
    digests = {pkg.digest for _, pkg in pkgs}
    for dst, pkg in pkgs:
        if pkg.config.base_digest and pkg.config.base_digest not in digests:
            print(f"retired {pkg.config.model_id}: its base {pkg.config.base_digest[:16]} "
                  "is no longer shipped")
            dst.unlink()
    pkgs = [(dst, pkg) for dst, pkg in pkgs if dst.exists()]
    id_of = {pkg.digest: pkg.config.model_id for _, pkg in pkgs}
    rows = []  # one dict per package: its keys are the card's columns, in order
    for dst, pkg in pkgs:
        m = pkg.config.meta
        base = pkg.config.base_digest
        init = m.get("init") or {}
        rows.append({
            "model id": pkg.config.model_id, "kind": pkg.config.kind, "arch": pkg.config.arch,
            "N": pkg.config.N, "refines": id_of.get(base, base[:16]) if base else "-",
            "m": pkg.config.m if pkg.config.kind == "enhancement" else "-",
            "λ": m.get("lambda"), "mask": m.get("mask"), "plan job": m.get("plan_job", "-"),
            "warm start": init.get("model_id") or "-", "steps": m.get("steps"),
            "wall s": m.get("wall_s"), "device": m.get("device"),
            "MB": f"{dst.stat().st_size / 1e6:.2f}", "digest": pkg.digest[:16],
            "data": ", ".join(Path(d).name for d in m.get("data", []))})
    rows.sort(key=lambda r: (LayerKind.parse(r["kind"]).value, float(r["λ"] or 0),
                             str(r["model id"])))
    ids = {r["model id"] for r in rows}
    defaults = {"base": args.default_base}
    if args.default_enhancement:
        defaults["enhancement"] = args.default_enhancement
    for kind, mid in defaults.items():
        if mid not in ids:
            raise SystemExit(f"default {kind} {mid!r} is not among the shipped packages")
    (WEIGHTS / "index.json").write_text(json.dumps({"defaults": defaults}, indent=2) + "\n")
    card = WEIGHTS / "README.md"
    columns = list(rows[0]) if rows else []
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    lines = "".join("| " + " | ".join(str(r[c]) for c in columns) + " |\n" for r in rows)
    card.write_text(
        "# Shipped model packages\n\nTrained by `icm train` (see docs/training.md); defaults in "
        "`index.json`. A package with a plan job is reproduced by `icm plan run` from "
        "`plan.toml` (its entry gives kind, λ, m, steps, warm start and base); `steps` counts "
        "every step behind the weights, a warm start's own steps not included; `N` is the "
        "transform's width (192: ~2.2× the multiply-adds of 128 in the N × N layers, ~1.6× "
        "the package); `wall s` is the training loop's time on `device` (one thread per job "
        "on a CPU).\n\n"
        + head + lines)
    print(card.read_text())


if __name__ == "__main__":
    main()
