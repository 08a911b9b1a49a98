"""How long ``icm`` takes to start, beside ``import torch``, measured in one run.

The commands run interleaved (A, B, C, A, B, C, ...) after one unmeasured warm-up each, so
they share the machine's load and disk cache; the table gives the median wall time of each as
a fresh process, and its ratio to ``import torch``. The shell is run from this source tree
(``python -m icm_app``, as the console script does).

    python scripts/bench_cli_startup.py            # 9 repetitions
    python scripts/bench_cli_startup.py --reps 15 --check   # exit 1 unless help < torch / 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CASES: dict[str, list[str]] = {
    'python -c "import torch"': ["-c", "import torch"],
    "icm --help": ["-m", "icm_app", "--help"],
    "icm --version": ["-m", "icm_app", "--version"],
    "icm analyst --help": ["-m", "icm_app", "analyst", "--help"],
    "icm certs --help": ["-m", "icm_app", "certs", "--help"],
    'python -c "pass"': ["-c", "pass"],
}
REFERENCE = 'python -c "import torch"'


def _time_once(args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def measure(reps: int) -> dict[str, list[float]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    for args in CASES.values():  # warm-up: page cache, .pyc files
        _time_once(args, env)
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(reps):
        for name, args in CASES.items():
            times[name].append(_time_once(args, env))
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=9, help="measured runs of each command")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 unless `icm --help` takes under half the time of import torch")
    args = ap.parse_args()
    times = measure(args.reps)
    ref = statistics.median(times[REFERENCE])
    print(f"{args.reps} runs each, interleaved; {sys.executable}; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.2f}")
    print("| command | median s | min s | max s | / import torch |")
    print("|---|---:|---:|---:|---:|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| `{name}` | {med:.3f} | {min(ts):.3f} | {max(ts):.3f} | {med / ref:.2f} |")
    ratio = statistics.median(times["icm --help"]) / ref
    print(f"icm --help / import torch = {ratio:.2f} (goal: well under 0.5)")
    return 1 if args.check and ratio >= 0.5 else 0


if __name__ == "__main__":
    sys.exit(main())
