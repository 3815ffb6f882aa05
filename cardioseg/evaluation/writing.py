"""Writing an evaluation: ``metrics.csv``, ``summary.json``, ``clinical.csv``, ``compare.csv``."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cardioseg.evaluation.scoring import METRICS
from cardioseg.evaluation.tables import CASE_COLUMNS, CLINICAL_KEYS, Evaluation
from cardioseg.io import write_text_atomic
from cardioseg.report import json_safe


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else f"{v:.6g}")
    return str(v)


def _csv(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_fmt(r.get(c)) for c in columns])
    return buf.getvalue()


def write_evaluation(ev: Evaluation, out: Path, extra: dict[str, Any] | None = None) -> list[Path]:
    """Write metrics.csv, summary.json and, when present, clinical.csv and compare.csv."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    path = out / "metrics.csv"
    write_text_atomic(_csv(ev.rows, (*CASE_COLUMNS, *METRICS)), path)
    written.append(path)
    if ev.clinical:
        cols = ["study", "group", *(f"{k}_{s}" for k in CLINICAL_KEYS for s in ("pred", "ref", "diff"))]
        path = out / "clinical.csv"
        write_text_atomic(_csv(ev.clinical, cols), path)
        written.append(path)
    if ev.compare:
        cols = ["label", "phase", "metric", "n_pairs", "mean_a", "mean_b", "median_a", "median_b", "p_value"]
        path = out / "compare.csv"
        write_text_atomic(_csv(ev.compare, cols), path)
        written.append(path)
    summary = {**ev.summary, **(extra or {})}
    path = out / "summary.json"
    write_text_atomic(json.dumps(json_safe(summary), indent=2) + "\n", path)
    written.append(path)
    return written
