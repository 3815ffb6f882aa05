#!/usr/bin/env bash
# Score a recipe's five fold models (benchmarks/cv100_train.sh) with the default inference, with and
# without rotations, and compare it per patient with a stored evaluation; then choose QC's
# low_confidence limit for the recipe on folds 0-1 and measure it on folds 2-4. Rerunnable:
# predictions already made are skipped.
#
#   bash benchmarks/cv100_score.sh RECIPE [BASELINE_EVAL] [RUNS]
#
# Writes RUNS/eval_RECIPE@..., RUNS/paired_RECIPE.md (vs the baseline), RUNS/paired_RECIPE_tta.md
# (what the rotations add) and RUNS/qc_confidence_RECIPE.md.
set -euo pipefail
RECIPE=${1:?usage: cv100_score.sh RECIPE [BASELINE_EVAL] [RUNS]}
# default baseline: the 44-epoch 128-px fold models with the same clean-up (apical cap kept)
BASE=${2:-benchmarks/results/cv100_lcc/eval_c128_cleanup-cap20}
RUNS=${3:-runs/cv100}
PY=${PYTHON:-.venv/bin/python}
exported=$( (ls "$RUNS/$RECIPE"/fold*/*.pt 2>/dev/null || true) | grep -v -e /last.pt -e /best.pt | wc -l)
[ "$exported" -eq 5 ] || { echo "cv100_score.sh: $RECIPE has $exported of 5 folds exported" >&2; exit 1; }
ON="$RECIPE@crop128,anatomy,tta"
OFF="$RECIPE@crop128,anatomy"
"$PY" benchmarks/cv_evaluate.py "$RUNS" --threads "${THREADS:-2}" --variants "$ON" "$OFF"
"$PY" benchmarks/cv_paired.py "$BASE" "$RUNS/eval_$ON" --names baseline "$RECIPE" \
  --out "$RUNS/paired_$RECIPE.md" --worst-csv "$RUNS/worst_$RECIPE.csv" > /dev/null
"$PY" benchmarks/cv_paired.py "$RUNS/eval_$OFF" "$RUNS/eval_$ON" --names "no rotations" rotations \
  --out "$RUNS/paired_${RECIPE}_tta.md" > /dev/null
"$PY" benchmarks/qc_confidence.py "$RUNS" --variants "$ON" "$OFF" --train-folds 0 1 > "$RUNS/qc_confidence_$RECIPE.md"
echo "wrote $RUNS/paired_$RECIPE.md, $RUNS/paired_${RECIPE}_tta.md, $RUNS/qc_confidence_$RECIPE.md"
