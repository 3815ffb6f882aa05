#!/usr/bin/env bash
# 5-fold cross-validation of the shipped recipe (DMR-U-Net, Dice+CE, AdamW) on the 100 ACDC
# training patients, resumable: each fold trains into RUNS/cur/foldK (rerun to finish).
#
#   bash benchmarks/cv100_train.sh [CACHE] [RUNS] [EPOCHS]
#
# RECIPE=name (default cur) trains into RUNS/name/foldK with the extra options in EXTRA, e.g.
#   RECIPE=aug EXTRA="--intensity-aug 0.3 --scale-min 0.6 --scale-max 1.3" bash benchmarks/cv100_train.sh
#
# Several copies may run side by side (e.g. two with THREADS=1 on a 2-core CPU: more steps per
# second than one with 2 threads): each fold is locked (flock on RUNS/name/foldK.lock) by the
# copy that trains it, and the others move on to the next fold. A killed copy's lock goes with it.
#
# Then score the default inference (and the QC limit) in one go: bash benchmarks/cv100_score.sh RECIPE
# or every inference variant with each patient's own fold model:
#   python benchmarks/cv_evaluate.py RUNS --variants cur cur@crop160,tta ...
#   python benchmarks/cv_table.py RUNS --variants ... --out docs/cv100/README.md
#   python benchmarks/qc_recall.py RUNS --variants ...
set -euo pipefail
CACHE=${1:-cache/acdc}
RUNS=${2:-runs/cv100}
EPOCHS=${3:-20}
CLI=${CARDIOSEG:-cardioseg}
mkdir -p "$RUNS/${RECIPE:-cur}"
for k in ${FOLDS:-0 1 2 3 4}; do
  out="$RUNS/${RECIPE:-cur}/fold$k"
  if ls "$out/"*.pt 2>/dev/null | grep -qv -e last.pt -e best.pt; then echo "fold $k: done"; continue; fi
  exec {lock}>"$out.lock"
  if ! flock -n "$lock"; then echo "fold $k: being trained by another copy"; exec {lock}>&-; continue; fi
  echo "fold $k: training ($(date -u +%H:%M:%S))"
  "$CLI" train "$CACHE" -o "$out" --fold "$k" --dmr --loss dice_ce --optimizer adamw --epochs "$EPOCHS" ${EXTRA:-} \
    --threads "${THREADS:-2}" --resume -q
  exec {lock}>&-
done
