#!/usr/bin/env bash
# The whole training plan on a lent GPU in one call, then the CUDA exactness check and a
# batched-decode throughput figure; packages and one report come back through $OUT.
#
# Prepare here (both folders are git-ignored; together with the tree they must stay < 64 MiB):
#   python scripts/pack_training_data.py --out .gpudata
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_34_x86_64 -d .whl compressai==1.2.8 && pip download --no-deps -d .whl pytorch-msssim
# Run there (device tool): command "bash scripts/gpu_plan.sh", carry [".gpudata", ".whl"],
#   timeout_s 560. Unpack here: for t in $FILES_AT/*.tar; do tar -xf $t -C ~/.cache/icm/gpu; done
#   (run directories with model.icmpkg and metrics.csv); report.txt holds every table and log.
# Dry run here (CPU, a few steps of every job):
#   ICM_GPU_DRY_RUN=1 PYTHON=.venv/bin/python OUT=/tmp/gpu-out bash scripts/gpu_plan.sh
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?OUT must name the folder that comes back}"
mkdir -p "$OUT"
DEVICE=cuda
SCALE=()
MINUTES=${ICM_GPU_TRAIN_MINUTES:-6.5}
RUNS=${ICM_GPU_RUNS:-/tmp/icm-runs}
REPORT="$OUT/report.txt"  # every table and log in one file (the tool returns 8 files at most)
if [ -n "${ICM_GPU_DRY_RUN:-}" ]; then
    DEVICE=cpu
    SCALE=(--steps-scale 0.0005)
fi
PY=${PYTHON:-python3}
if ! $PY -c "import compressai" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv \
    | tee -a "$REPORT"

# 1. the plan: every ready job of one family (arch) at once; at the deadline running jobs
# export what they have. ICM_GPU_ARCH picks the family (the newest, gdn, by default).
ARCH=${ICM_GPU_ARCH:-gdn}
read -r -a ONLY <<< "$($PY -c "from icm_codec.train.plan import load_plan
print(' '.join(j.id for j in load_plan().order() if j.settings.get('arch', 'lite') == '$ARCH'))")"
$PY -m icm_codec.cli plan run --device "$DEVICE" --jobs 0 --runs "$RUNS" --data-root .gpudata \
    --nice 0 --max-minutes "$MINUTES" "${SCALE[@]}" --only "${ONLY[@]}" 2>&1 | tee -a "$REPORT"
$PY -m icm_codec.cli plan status --device "$DEVICE" --runs "$RUNS" "${SCALE[@]}" 2>&1 \
    | tee -a "$REPORT"

# 2. packages back: the tool returns at most 8 files of 16 MiB, 64 MiB together: tars of three
# packages (shipped kinds first, the m-table layers last) and one tar of every metrics.csv
$PY - "$RUNS" "$OUT" <<'PYEOF' 2>&1 | tee -a "$REPORT"
import sys, tarfile
from pathlib import Path
runs, out = Path(sys.argv[1]), Path(sys.argv[2])
order = ("base-", "enhancement-", "single-", "residual-")
pkgs = sorted(runs.glob("*/model.icmpkg"),
              key=lambda p: next(i for i, o in enumerate(order) if p.parent.name.startswith(o)))
part, size, total, n, sent = None, 0, 0, 0, []
for p in pkgs:
    s = p.stat().st_size
    if total + s > 58 * 2**20:
        print(f"not returned (64 MiB limit): {p.parent.name}")
        continue
    if part is None or size + s > 16 * 2**20 - 65536:
        if part:
            part.close()
        n += 1
        part, size = tarfile.open(out / f"packages-{n}.tar", "w"), 0
    part.add(p, f"{p.parent.name}/model.icmpkg")
    size, total = size + s, total + s
    sent.append(p.parent.name)
if part:
    part.close()
with tarfile.open(out / "metrics.tar", "w") as t:
    for m in runs.glob("*/metrics.csv"):
        t.add(m, f"{m.parent.name}/metrics.csv")
print(f"{len(sent)} of {len(pkgs)} packages in {n} tar files: {', '.join(sent)}")
PYEOF

# 3. CUDA exactness (CPU encode, GPU decode alone and batched) and batched decode throughput
BASE="$RUNS/base-$ARCH-l0.013/model.icmpkg"
ENH="$RUNS/enhancement-$ARCH-m4-l0.0483/model.icmpkg"
if [ "$DEVICE" = cuda ] && [ -f "$BASE" ]; then
    ARGS=(--base "$BASE")
    [ -f "$ENH" ] && ARGS+=(--enhancement "$ENH")
    timeout 120 $PY scripts/check_cuda_exact.py "${ARGS[@]}" 2>&1 | tee -a "$REPORT"
    # the two-pass (checkerboard) coder, on a small base trained here
    timeout 120 $PY scripts/check_cuda_exact.py --spatial-context --steps 100 2>&1 \
        | tee -a "$REPORT"
    timeout 120 $PY scripts/bench_decode_batch.py --base "$BASE" --device cuda 2>&1 \
        | tee -a "$REPORT"
elif [ -f "$BASE" ]; then
    $PY scripts/bench_decode_batch.py --base "$BASE" --device cpu --batches 1,2 --frames 4 2>&1 \
        | tee -a "$REPORT"
fi
ls -la "$OUT"
