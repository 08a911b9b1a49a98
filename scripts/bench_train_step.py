"""Seconds per training step of one codec under each speed option, side by side in one run.

    python scripts/bench_train_step.py --arch gdn --steps 30 --options plain channels_last compile

One process, one thread (the plan's CPU setting), random 256² crops (speed does not depend on
the pixels), the real forward pass, loss, backward and both optimiser steps of ``icm train``.
Options run interleaved in rounds, so drift on a shared machine hits them alike; the table is
the median over rounds, after warm-up steps (and compilation) that are not counted. Run it on a
quiet machine: never beside a trainer.

- ``plain``: what ``icm train`` does.
- ``channels_last``: model and batches in NHWC memory layout.
- ``compile``: ``torch.compile`` of the forward pass (inductor; needs a C++ compiler).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

OPTIONS = ("plain", "channels_last", "compile")


def _setup(option: str, arch: str, lmbda: float, batch: int, crop: int):
    from icm_codec import CodecConfig, create_model
    from icm_codec.training import make_optimizers, train_step

    torch.manual_seed(0)
    model = create_model(CodecConfig(kind="single", arch=arch)).train()
    opt, aux_opt = make_optimizers(model, 1e-4)
    fmt = torch.channels_last if option == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    # a compiled module passes parameters() and aux_loss() through to the model it wraps
    forward = torch.compile(model) if option == "compile" else model
    x = torch.rand(batch, 3, crop, crop).contiguous(memory_format=fmt)

    def step() -> None:
        train_step(forward, opt, aux_opt, x, lmbda)  # icm train's step, clipping included

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="gdn", choices=["lite", "gdn"])
    ap.add_argument("--options", nargs="+", default=list(OPTIONS), choices=OPTIONS)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per option")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per option first")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--lmbda", type=float, default=0.013)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps, setup_s = {}, {}
    for option in args.options:
        t0 = time.perf_counter()
        steps[option] = _setup(option, args.arch, args.lmbda, args.batch, args.crop)
        for _ in range(args.warmup):
            steps[option]()
        setup_s[option] = time.perf_counter() - t0
    per_step: dict[str, list[float]] = {o: [] for o in args.options}
    per_round = max(1, args.steps // args.rounds)
    for _ in range(args.rounds):
        for option in args.options:
            for _ in range(per_round):
                t0 = time.perf_counter()
                steps[option]()
                per_step[option].append(time.perf_counter() - t0)
    plain = statistics.median(per_step[args.options[0]])
    print(f"\narch {args.arch}, batch {args.batch}×{args.crop}², {args.threads} thread(s), "
          f"{per_round * args.rounds} timed steps per option")
    print(f"| option | s/step (median) | vs {args.options[0]} | set-up + warm-up s |\n"
          "|---|---|---|---|")
    for option in args.options:
        med = statistics.median(per_step[option])
        print(f"| {option} | {med:.3f} | {med / plain:.2f}× | {setup_s[option]:.1f} |")


if __name__ == "__main__":
    main()
