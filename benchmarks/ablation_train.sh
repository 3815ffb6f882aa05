#!/usr/bin/env bash
# Issue 5's ablation: the other papers' methods against the plain U-Net, same folds, same budget.
#
#   bash benchmarks/ablation_train.sh [CACHE] [RUNS] [EPOCHS]
#   python benchmarks/cv_evaluate.py RUNS --variants unet dmr ctx3 unet3d mapdice lrnet ...
#   python benchmarks/cv_table.py RUNS --variants unet dmr ctx3 ... --out docs/ablation/README.md
#
# Every method trains with the cross-validation recipe of benchmarks/cv_train.sh (AdamW,
# EPOCHS epochs, batch 15, seed 0) on FOLDS (default 0 1) into RUNS/<method>/foldK; runs
# resume from their last checkpoint, and finished ones (exported weights present) are skipped,
# so rerunning finishes the rest. RUNS/unet and RUNS/dmr are cv_train.sh's own runs.
# METHODS="lrnet gan" restricts the list.
set -euo pipefail
CACHE=${1:-cache/acdc}
RUNS=${2:-runs/cv}
EPOCHS=${3:-40}
CLI=${CARDIOSEG:-cardioseg}
COMMON=(--epochs "$EPOCHS" --optimizer adamw --threads "${THREADS:-2}" --resume -q)
declare -A ARGS=(
  [unet]="--loss ce"
  [dmr]="--loss ce --dmr"
  [ctx3]="--loss qure_hybrid --context-slices 3"
  [unet3d]="--loss qure_hybrid --arch unet3d --batch-size 2"
  [mapdice]="--loss mapdice"
  [explog]="--loss explog"
  [lrnet]="--loss ce --regularizer lrnet"
  [srnn]="--loss explog --regularizer srnn"
  [scn]="--loss explog --regularizer scn"
  [srscn]="--loss explog --regularizer srscn"
  [acnn]="--loss ce --regularizer acnn"
  [gan]="--loss ce --regularizer gan"
)
ORDER=(unet dmr ctx3 unet3d mapdice explog lrnet srnn scn srscn acnn gan)
for k in ${FOLDS:-0 1}; do
  for m in ${METHODS:-${ORDER[@]}}; do
    [ -n "${ARGS[$m]+x}" ] || { echo "unknown method $m (choose from: ${ORDER[*]})" >&2; exit 2; }
    if ls "$RUNS/$m/fold$k/"*.pt 2>/dev/null | grep -qv -e last.pt -e best.pt -e shape_ae.pt; then
      echo "$m fold $k: done"; continue
    fi
    echo "$m fold $k: training ($(date -u +%H:%M:%S))"
    # shellcheck disable=SC2086
    "$CLI" train "$CACHE" -o "$RUNS/$m/fold$k" --fold "$k" "${COMMON[@]}" ${ARGS[$m]}
  done
done
