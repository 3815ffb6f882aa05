"""A whole evaluation as ``cardioseg evaluate`` runs it: pair the files, score every case (and
a second method's, for paired tests), and write the tables with the run's provenance in
``summary.json``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cardioseg.clinical import DEFAULT_MYO_DENSITY
from cardioseg.errors import ConfigError
from cardioseg.evaluation.pairing import PRED_SUFFIXES, REF_SUFFIXES, describe_cases, pair_files, read_pairs_csv
from cardioseg.evaluation.scoring import CaseResult, EvaluateOptions
from cardioseg.evaluation.tables import Evaluation, compare_rows, evaluate
from cardioseg.evaluation.writing import write_evaluation
from cardioseg.labels import LabelMap


def run_evaluation(
    pred: Path,
    ref: Path,
    out: Path | None = None,
    *,
    pred_labels: LabelMap | None = None,
    ref_labels: LabelMap | None = None,
    pred_suffixes: Sequence[str] = PRED_SUFFIXES,
    ref_suffixes: Sequence[str] = REF_SUFFIXES,
    pairs: Path | None = None,
    compare: Path | None = None,
    plots: bool = False,
    myo_density_g_ml: float = DEFAULT_MYO_DENSITY,
    regional: bool = True,
    progress: Callable[[int, int], Any] | None = None,
    on_note: Callable[[str], Any] | None = None,
) -> Evaluation:
    """Score the masks under ``pred`` against the references under ``ref`` (files or folders).

    ``compare``: a second method's masks, scored against the same references and tested
    against ``pred`` (paired Wilcoxon, ``Evaluation.compare``; its failed cases in
    ``Evaluation.compare_errors``). ``out``: where ``metrics.csv``, ``summary.json`` (with the
    run's inputs, unmatched files and wall time), ``clinical.csv``, ``compare.csv`` and, with
    ``plots``, ``plots/*.png`` are written (``Evaluation.written``); None writes nothing.
    ``progress(done, total)`` is called after each case (of both methods), ``on_note(text)`` for
    files without a partner. Cases that fail are recorded in the result, not raised; usage
    errors (missing paths, no pairs, bad label maps) raise ``CardiosegError``.
    """
    from cardioseg.labels import ACDC

    if myo_density_g_ml <= 0:
        raise ConfigError(f"--myo-density must be positive, got {myo_density_g_ml}")
    if plots:
        from cardioseg.plots import require_matplotlib

        require_matplotlib()
    t0 = time.perf_counter()
    options = EvaluateOptions(pred_labels or ACDC, ref_labels or ACDC, regional)
    pairing = pair_files(pred, ref, pred_suffixes, ref_suffixes)
    pairs_map = read_pairs_csv(pairs) if pairs is not None else None
    cases = describe_cases(pairing.cases, pairs_map)
    pairing_b = pair_files(compare, ref, pred_suffixes, ref_suffixes) if compare is not None else None
    for side, paths in (("prediction", pairing.unmatched_pred), ("reference", pairing.unmatched_ref)):
        if paths and on_note is not None:
            on_note(f"{len(paths)} {side} file(s) without a partner, skipped (e.g. {paths[0]})")
    total = len(cases) + (len(pairing_b.cases) if pairing_b is not None else 0)
    done = 0

    def advance(result: CaseResult) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    ev = evaluate(cases, options, myo_density_g_ml, progress=advance)
    swapped = [r for r in ev.results if r.swapped]
    if swapped and on_note is not None:
        what = sorted({s for r in swapped for s in r.swapped})
        on_note(f"labels look swapped in {len(swapped)} of {len(cases)} case(s) ({'; '.join(what)}; e.g. {swapped[0].case.key}): "
                f"predictions read as {options.pred_labels.name} {options.pred_labels.as_dict()}, references as "
                f"{options.ref_labels.name} {options.ref_labels.as_dict()}; check --labels/--ref-labels")  # fmt: skip
    if pairing_b is not None:
        ev_b = evaluate(describe_cases(pairing_b.cases, pairs_map), options, myo_density_g_ml, progress=advance)
        ev.compare = compare_rows(ev.rows, ev_b.rows)
        ev.compare_errors = {r.case.key: r.error for r in ev_b.errors if r.error}
        ev.other = ev_b
    ev.provenance = {
        "pred": str(pred), "ref": str(ref), "compare_with": str(compare) if compare else None,
        "unmatched_pred": [str(p) for p in pairing.unmatched_pred],
        "unmatched_ref": [str(p) for p in pairing.unmatched_ref],
        "compare": ev.compare, "compare_errors": ev.compare_errors,
        "wall_seconds": time.perf_counter() - t0,
    }  # fmt: skip
    if out is not None:
        ev.written = write_evaluation(ev, out, ev.provenance)
        if plots:
            from cardioseg.plots import write_plots

            ev.written += write_plots(ev, out / "plots")
    return ev
