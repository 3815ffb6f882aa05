#!/usr/bin/env bash
# 5-fold cross-validation of U-Net vs DMR-U-Net on the ACDC cache, resumable.
#
#   bash benchmarks/cv_train.sh [CACHE] [RUNS] [EPOCHS]
#
# Trains fold by fold, plain then DMR, into RUNS/{unet,dmr}/foldK (each run resumes from its
# last checkpoint, so rerunning the script after an interruption finishes the rest). Then
# `bash benchmarks/cv_evaluate.sh RUNS` predicts every fold's validation patients with that
# fold's weights and scores them with `cardioseg evaluate --compare`.
set -euo pipefail
CACHE=${1:-cache/acdc}
RUNS=${2:-runs/cv}
EPOCHS=${3:-40}
CLI=${CARDIOSEG:-cardioseg}
COMMON=(--epochs "$EPOCHS" --optimizer adamw --loss ce --threads "${THREADS:-2}" --resume -q)
for k in ${FOLDS:-0 1 2 3 4}; do
  for variant in unet dmr; do
    extra=()
    [ "$variant" = dmr ] && extra=(--dmr)
    if ls "$RUNS/$variant/fold$k/"*.pt 2>/dev/null | grep -qv -e last.pt -e best.pt; then
      echo "$variant fold $k: done"; continue
    fi
    echo "$variant fold $k: training ($(date -u +%H:%M:%S))"
    "$CLI" train "$CACHE" -o "$RUNS/$variant/fold$k" --fold "$k" "${COMMON[@]}" "${extra[@]}"
  done
done
