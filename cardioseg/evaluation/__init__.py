"""``cardioseg evaluate``: predicted masks vs reference masks -> metrics tables.

The flow is: find files -> pair them by name -> attach phase/study/group -> evaluate each case
(every metric of ``cardioseg.metrics`` per label, plus apical/mid/basal Dice) -> summarise per
label and phase, per group -> clinical agreement per study with ED and ES -> (optionally) paired
Wilcoxon tests against a second method -> write ``metrics.csv``, ``summary.json``,
``clinical.csv``, ``compare.csv``.

A case that cannot be evaluated (unreadable file, shape or affine mismatch, values outside the
label map) is recorded as an error; the other cases go on.

Modules: ``pairing`` (files -> cases, name matching), ``scoring`` (one case), ``tables``
(rows, summaries, clinical agreement, comparisons), ``writing`` (the files), ``run`` (the
whole flow, as the command and :func:`cardioseg.evaluate` run it).
"""
from cardioseg.evaluation.pairing import (
    PRED_SUFFIXES,
    REF_SUFFIXES,
    Case,
    Pairing,
    describe_cases,
    pair_files,
    read_pairs_csv,
)
from cardioseg.evaluation.run import run_evaluation
from cardioseg.evaluation.scoring import METRICS, CaseResult, EvaluateOptions, FrameResult, evaluate_case
from cardioseg.evaluation.tables import (
    AVERAGE,
    CASE_COLUMNS,
    CLINICAL_KEYS,
    COMPARED,
    MIN_N_CORRELATION,
    MIN_N_WILCOXON,
    Evaluation,
    clinical_agreement,
    clinical_rows,
    compare_rows,
    describe,
    evaluate,
    metric_rows,
    summarize,
    worst_cases,
)
from cardioseg.evaluation.writing import write_evaluation

__all__ = [
    "AVERAGE", "CASE_COLUMNS", "CLINICAL_KEYS", "COMPARED", "METRICS", "MIN_N_CORRELATION", "MIN_N_WILCOXON",
    "PRED_SUFFIXES", "REF_SUFFIXES",
    "Case", "CaseResult", "EvaluateOptions", "Evaluation", "FrameResult", "Pairing",
    "clinical_agreement", "clinical_rows", "compare_rows", "describe", "describe_cases", "evaluate",
    "evaluate_case", "metric_rows", "pair_files", "read_pairs_csv", "run_evaluation", "summarize",
    "worst_cases", "write_evaluation",
]  # fmt: skip
