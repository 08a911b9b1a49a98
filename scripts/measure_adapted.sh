#!/usr/bin/env bash
# Stock vs adapted detectors on the default base layer: the measurement in docs/analytics.md
# ("Measured"). Rerun it when better base packages land; every figure comes from this script.
#
#   scripts/measure_adapted.sh [OUT]          (default out/adapted-measure)
#
# Settings (environment): SHARED (../shared), BASE (the installed default base package),
# FRAMES (vtest training frames for yolo11n, 120), SEG_FRAMES (for yolo26n-seg, 60), EPOCHS (3),
# SEG_EPOCHS (2), THREADS (1), DEVICE (cpu). Work folders are resumable: an interrupted run
# picks up where it stopped.
set -euo pipefail
OUT=${1:-out/adapted-measure}
SHARED=${SHARED:-../shared}
BASE=${BASE:-$(python -c 'from icm_codec.registry import default_package; print(default_package("base"))')}
FRAMES=${FRAMES:-120} SEG_FRAMES=${SEG_FRAMES:-60} EPOCHS=${EPOCHS:-3} SEG_EPOCHS=${SEG_EPOCHS:-2}
THREADS=${THREADS:-1} DEVICE=${DEVICE:-cpu}
VIDEO=$SHARED/data/video/vtest.avi COCO8=$SHARED/data/coco8 DETS=$SHARED/assets/detectors
mkdir -p "$OUT"

adapt() {  # detector, training frames, epochs
    icm adapt-detector --detector "$1" --detectors "$DETS" --base "$BASE" \
        --video "$VIDEO" --frame-range 0:715 --frames "$2" --yolo "$COCO8" \
        --eval-video "$VIDEO" --eval-frame-range 715: --eval-frames 20 --eval-yolo "$COCO8" \
        --epochs "$3" --imgsz 640 --batch 8 --device "$DEVICE" --threads "$THREADS" \
        --work "$OUT/work-$1" --out "$OUT/adapted" 2>&1 | tee "$OUT/adapt-$1.log"
}
adapt yolo11n "$FRAMES" "$EPOCHS"
adapt yolo26n-seg "$SEG_FRAMES" "$SEG_EPOCHS"

# bpp to keep 95 % against JPEG / WebP / AVIF, on held-out images only (vtest 715-, COCO8 val)
icm eval-machine --video "$VIDEO" --frame-range 715: --frames 8 --coco8 "$COCO8" \
    --coco8-split val --detectors "$DETS" --models yolo11n,yolo26n-seg \
    --adapted "$OUT"/adapted/*.pt --enhancement \
    --qualities JPEG=5,15,30,60,90 WebP=5,20,50,80 AVIF=10,30,60 \
    --device "$DEVICE" --threads "$THREADS" --out "$OUT/machine"
echo "records: $OUT/adapted/*.json; comparison: $OUT/machine/report.md"
