"""Tables from the case results: metric rows, summaries per phase/group, clinical agreement,
paired comparisons of two methods."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cardioseg.clinical import DEFAULT_MYO_DENSITY, FrameVolumes, clinical_measures
from cardioseg.evaluation.pairing import Case
from cardioseg.evaluation.scoring import METRICS, CaseResult, EvaluateOptions, evaluate_case
from cardioseg.metrics import agreement, wilcoxon_p

CASE_COLUMNS: tuple[str, ...] = ("case", "frame", "study", "phase", "group", "label", "value", "pred", "ref")
#: the metrics compared between two methods (Wilcoxon) and shown in the table
COMPARED: tuple[str, ...] = ("dice", "jaccard", "hd_mm", "hd95_mm", "assd_mm", "msd_mm")
CLINICAL_KEYS: tuple[str, ...] = (
    "lv_edv_ml", "lv_esv_ml", "lv_sv_ml", "lv_ef_pct",
    "rv_edv_ml", "rv_esv_ml", "rv_sv_ml", "rv_ef_pct", "lv_mass_g",
)  # fmt: skip
AVERAGE = "average"  # pseudo-label: per case, the mean over the three structures
#: below this many pairs a two-sided Wilcoxon signed-rank p can never fall below 0.05 (its
#: smallest value is 2 / 2**n), so the p is not shown
MIN_N_WILCOXON = 6
#: below this many studies a Pearson r says little (r = 0.8 from 9 studies has a 95 % interval
#: of 0.29–0.96), so it is not shown
MIN_N_CORRELATION = 10
#: how many worst cases the summary lists, by Dice and by EF error
N_WORST = 5


def metric_rows(results: Iterable[CaseResult]) -> list[dict[str, Any]]:
    """One flat row per case, frame and structure (the rows of ``metrics.csv``)."""
    rows = []
    for res in results:
        c = res.case
        for fr in res.frames:
            for r in fr.rows:
                rows.append(
                    {"case": c.key, "frame": fr.frame, "study": c.study, "phase": fr.phase, "group": c.group,
                     "pred": str(c.pred), "ref": str(c.ref), **r}
                )  # fmt: skip
    return rows


def _with_average(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add, per case and frame, an ``average`` row: the mean of each metric over the structures.

    NaN structures (absent in both) are left out of the mean; an ``inf`` distance stays inf.
    """
    by_case: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_case[(r["case"], r["frame"])].append(r)
    out = list(rows)
    for group in by_case.values():
        avg = {k: group[0][k] for k in ("case", "frame", "study", "phase", "group")}
        avg["label"] = AVERAGE
        for m in METRICS:
            vals = [float(r[m]) for r in group if not math.isnan(float(r[m]))]
            avg[m] = float(np.mean(vals)) if vals else float("nan")
        out.append(avg)
    return out


def describe(values: Iterable[float]) -> dict[str, Any]:
    """Mean, SD (ddof=1), median, min, max over the finite values, and counts of the others.

    ``n_nan`` counts structures absent from both masks; ``n_inf`` counts distances to a mask
    that is empty on one side only. They are reported, not folded into the statistics.
    """
    v = np.asarray(list(values), dtype=np.float64)
    finite = v[np.isfinite(v)]
    nan = float("nan")
    return {
        "n": int(finite.size),
        "mean": float(finite.mean()) if finite.size else nan,
        "std": float(finite.std(ddof=1)) if finite.size > 1 else nan,
        "median": float(np.median(finite)) if finite.size else nan,
        "min": float(finite.min()) if finite.size else nan,
        "max": float(finite.max()) if finite.size else nan,
        "n_nan": int(np.isnan(v).sum()),
        "n_inf": int(np.isinf(v).sum()),
    }


def summarize(rows: list[dict[str, Any]], by: Callable[[dict[str, Any]], str | None]) -> dict[str, Any]:
    """``{group: {label: {metric: describe(...)}}}`` for the rows' grouping ``by(row)``."""
    buckets: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in _with_average(rows):
        g = by(r)
        if g is not None:
            buckets[g][r["label"]].append(r)
    return {
        g: {label: {m: describe(r[m] for r in rs) for m in METRICS} for label, rs in labels.items()}
        for g, labels in sorted(buckets.items())
    }


def clinical_rows(results: Iterable[CaseResult], myo_density_g_ml: float = DEFAULT_MYO_DENSITY) -> list[dict[str, Any]]:
    """Per study with an ED and an ES frame: clinical numbers from prediction and reference."""
    phases: dict[str, dict[str, tuple[FrameVolumes, FrameVolumes]]] = defaultdict(dict)
    groups: dict[str, str | None] = {}
    for res in results:
        for fr in res.frames:
            if res.case.study is not None and fr.phase in ("ED", "ES"):
                phases[res.case.study][fr.phase] = (fr.pred_volumes, fr.ref_volumes)
                groups[res.case.study] = res.case.group
    rows = []
    for study in sorted(phases):
        if set(phases[study]) != {"ED", "ES"}:
            continue
        (ed_p, ed_r), (es_p, es_r) = phases[study]["ED"], phases[study]["ES"]
        pred = clinical_measures(ed_p, es_p, myo_density_g_ml)
        ref = clinical_measures(ed_r, es_r, myo_density_g_ml)
        row: dict[str, Any] = {"study": study, "group": groups[study]}
        for k in CLINICAL_KEYS:
            p, r = float(pred[k]), float(ref[k])  # type: ignore[arg-type]
            row[f"{k}_pred"], row[f"{k}_ref"], row[f"{k}_diff"] = p, r, p - r
        rows.append(row)
    return rows


def clinical_agreement(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Agreement (n, Pearson r, bias, SD, 95 % limits, MAE) of every clinical number."""
    return {k: asdict(agreement([r[f"{k}_pred"] for r in rows], [r[f"{k}_ref"] for r in rows])) for k in CLINICAL_KEYS}


def compare_rows(rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Paired Wilcoxon signed-rank tests, method A vs B, per structure, phase and metric.

    Rows are paired by case, frame and structure; only cases both methods have are used.
    """
    def index(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
        return {(r["case"], r["frame"], r["label"]): r for r in _with_average(rows)}

    a, b = index(rows_a), index(rows_b)
    keys = sorted(a.keys() & b.keys(), key=str)
    phases = sorted({a[k]["phase"] for k in keys if a[k]["phase"]}) + ["all"]
    labels = list(dict.fromkeys(k[2] for k in keys))
    out = []
    for label in labels:
        for phase in phases:
            sel = [k for k in keys if k[2] == label and (phase == "all" or a[k]["phase"] == phase)]
            if not sel:
                continue
            for m in COMPARED:
                xa = [float(a[k][m]) for k in sel]
                xb = [float(b[k][m]) for k in sel]
                n, p = wilcoxon_p(xa, xb)
                da, db = describe(xa), describe(xb)
                out.append(
                    {"label": label, "phase": phase, "metric": m, "n_pairs": n,
                     "mean_a": da["mean"], "mean_b": db["mean"], "median_a": da["median"], "median_b": db["median"],
                     "p_value": p}
                )  # fmt: skip
    return out


def worst_cases(rows: list[dict[str, Any]], clinical: list[dict[str, Any]], n: int = N_WORST) -> dict[str, list[dict[str, Any]]]:
    """The ``n`` lowest Dice (a frame's structure) and the ``n`` largest LV- and RV-EF errors.

    Structures absent from both masks (Dice NaN) are not ranked; a structure missing on one
    side only has Dice 0 and is ranked first.
    """
    scored = [r for r in rows if r["label"] != AVERAGE and not math.isnan(float(r["dice"]))]
    scored.sort(key=lambda r: (float(r["dice"]), str(r["case"]), str(r["frame"]), r["label"]))
    out: dict[str, list[dict[str, Any]]] = {
        "dice": [{k: r[k] for k in ("case", "frame", "phase", "label", "dice", "hd_mm")} for r in scored[:n]]
    }
    for key in ("lv_ef_pct", "rv_ef_pct"):
        finite = [r for r in clinical if math.isfinite(float(r[f"{key}_diff"]))]
        finite.sort(key=lambda r: (-abs(float(r[f"{key}_diff"])), str(r["study"])))
        out[key] = [
            {"study": r["study"], "pred": r[f"{key}_pred"], "ref": r[f"{key}_ref"], "diff": r[f"{key}_diff"]}
            for r in finite[:n]
        ]
    return out


@dataclass
class Evaluation:
    """Everything ``cardioseg evaluate`` writes, as Python objects."""

    results: list[CaseResult]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    clinical: list[dict[str, Any]]
    compare: list[dict[str, Any]] = field(default_factory=list)
    compare_errors: dict[str, str] = field(default_factory=dict)  # a compared method's failed cases
    other: Evaluation | None = None  # the compared method's own evaluation (``--compare``)
    provenance: dict[str, Any] = field(default_factory=dict)  # inputs and run time, added to summary.json
    written: list[Path] = field(default_factory=list)  # the files written, if any

    @property
    def errors(self) -> list[CaseResult]:
        return [r for r in self.results if r.error]

    @property
    def method_names(self) -> tuple[str, str]:
        """Short names of this method (A) and the compared one (B): their folders' names."""
        a = Path(str(self.provenance.get("pred") or "A")).name or "A"
        b = Path(str(self.provenance.get("compare_with") or "B")).name or "B"
        return (a, b) if a != b else ("A", "B")


def evaluate(
    cases: Sequence[Case],
    options: EvaluateOptions | None = None,
    myo_density_g_ml: float = DEFAULT_MYO_DENSITY,
    progress: Callable[[CaseResult], None] | None = None,
) -> Evaluation:
    """Evaluate cases in order and build every table (no files written)."""
    options = options or EvaluateOptions()
    results = []
    for case in cases:
        res = evaluate_case(case, options)
        results.append(res)
        if progress:
            progress(res)
    rows = metric_rows(results)
    clin = clinical_rows(results, myo_density_g_ml)
    summary: dict[str, Any] = {
        "n_cases": len(results),
        "n_frames": sum(len(r.frames) for r in results),
        "errors": {r.case.key: r.error for r in results if r.error},
        "label_maps": {"pred": options.pred_labels.as_dict(), "ref": options.ref_labels.as_dict()},
        "myo_density_g_ml": myo_density_g_ml,
        "by_phase": summarize(rows, lambda r: r["phase"] or "unknown"),
        "all": summarize(rows, lambda r: "all").get("all", {}),
        "by_group": summarize(rows, lambda r: r["group"]),
        "clinical": clinical_agreement(clin) if clin else {},
        "worst": worst_cases(rows, clin),
        "seconds": sum(r.seconds for r in results),
    }
    return Evaluation(results, rows, summary, clin)

