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
#
# STORED=DIR LIMIT=X: some folds' models are gone (a run folder lost between sessions) but their
# evaluations were kept, as DIR/eval_RECIPE@crop128,anatomy[,tta]. Then the exported folds are scored,
# merged with those (cv_merge.py, RUNS/eval_..._all) for the comparisons, and QC's limit X, chosen
# before on folds 0-1, is measured on the exported folds (their scores: RUNS/qc_scores_RECIPE*.csv).
set -euo pipefail
RECIPE=${1:?usage: cv100_score.sh RECIPE [BASELINE_EVAL] [RUNS]}
# default baseline: the 44-epoch 128-px fold models with the same clean-up (apical cap kept)
BASE=${2:-benchmarks/results/cv100_lcc/eval_c128_cleanup-cap20}
RUNS=${3:-runs/cv100}
PY=${PYTHON:-.venv/bin/python}
exported=$( (ls "$RUNS/$RECIPE"/fold*/*.pt 2>/dev/null || true) | grep -v -e /last.pt -e /best.pt | wc -l)
need=5
[ -z "${STORED:-}" ] || need=1
[ "$exported" -ge "$need" ] || { echo "cv100_score.sh: $RECIPE has $exported of 5 folds exported" >&2; exit 1; }
ON="$RECIPE@crop128,anatomy,tta"
OFF="$RECIPE@crop128,anatomy"
"$PY" benchmarks/cv_evaluate.py "$RUNS" --threads "${THREADS:-2}" --variants "$ON" "$OFF"
EON="$RUNS/eval_$ON"
EOFF="$RUNS/eval_$OFF"
QC=(--train-folds 0 1)
if [ -n "${STORED:-}" ]; then
  "$PY" benchmarks/cv_merge.py "$STORED/eval_$ON" "$EON" -o "${EON}_all"
  "$PY" benchmarks/cv_merge.py "$STORED/eval_$OFF" "$EOFF" -o "${EOFF}_all"
  EON="${EON}_all"
  EOFF="${EOFF}_all"
  QC+=(--limit "${LIMIT:?STORED needs LIMIT, the QC limit chosen before}" --scores-csv "$RUNS/qc_scores_VARIANT.csv")
fi
"$PY" benchmarks/cv_paired.py "$BASE" "$EON" --names baseline "$RECIPE" \
  --out "$RUNS/paired_$RECIPE.md" --worst-csv "$RUNS/worst_$RECIPE.csv" > /dev/null
"$PY" benchmarks/cv_paired.py "$EOFF" "$EON" --names "no rotations" rotations \
  --out "$RUNS/paired_${RECIPE}_tta.md" > /dev/null
"$PY" benchmarks/qc_confidence.py "$RUNS" --variants "$ON" "$OFF" "${QC[@]}" > "$RUNS/qc_confidence_$RECIPE.md"
echo "wrote $RUNS/paired_$RECIPE.md, $RUNS/paired_${RECIPE}_tta.md, $RUNS/qc_confidence_$RECIPE.md"
