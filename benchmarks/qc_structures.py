"""Does QC flag fewer good studies when each structure's confidence is judged against that
structure's own usual value?  docs/cv100/qc.md.

    python benchmarks/qc_structures.py SCORES.csv [SCORES.csv ...] --train-folds 0 1 [--out FILE.md]

Reads the per-study scores of ``benchmarks/qc_confidence.py --scores-csv`` (each structure's ED
and ES one-pass confidence, ``confidence_{rv,myo,lv}_{ed,es}``, and its Dice; a gross failure is
a study with a structure Dice < 0.70) and compares detectors, each with its threshold chosen on
the training folds only by the rules of ``qc_agreement.choose`` ("tight": just past the training
failure the detector is least sure of; "budget": every training failure and up to 15 % of the
good training studies flagged), measured on the other folds:

- ``worst``: the lowest confidence of any structure and phase (the shipped ``low_confidence``);
- ``ratio``: each structure's uncertainty, 1 - confidence, divided by the median of that
  structure's uncertainty over the good training studies (ED and ES pooled, as a flag on a
  frame of unknown phase would need it); a study's score is minus its largest ratio, so that a
  low score means unsure, as for ``worst``;
- ``ratio_phase``: the same with a median per structure and phase.

Cells: failures flagged / failures, good studies flagged / good studies.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STRUCTURES = ("rv", "myo", "lv")
PHASES = ("ed", "es")


def read_scores(paths: list[Path], threshold: float) -> list[dict]:
    """The studies of the CSVs (a study in several: the last file's row), with ``gross``."""
    rows: dict[str, dict] = {}
    for path in paths:
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                if not r.get("confidence_rv_ed"):
                    raise SystemExit(f"{path}: no per-structure confidence (rerun qc_confidence.py --scores-csv on new reports)")
                r["gross"] = float(r["worst_dice"]) < threshold
                rows[r["study"]] = r
    return [rows[s] for s in sorted(rows)]


def uncertainty(r: dict, k: str, ph: str) -> float:
    """1 - the confidence of structure ``k`` in phase ``ph`` (0 where the structure is absent: certain)."""
    value = r[f"confidence_{k}_{ph}"]
    return 1.0 - float(value) if value else 0.0


def scores(rows: list[dict], train: list[dict]) -> dict[str, dict[str, float]]:
    """detector -> study -> score (low: unsure), the medians from the good training studies."""
    good = [r for r in train if not r["gross"]]
    pooled = {k: statistics.median(uncertainty(r, k, ph) for r in good for ph in PHASES) for k in STRUCTURES}
    per_phase = {(k, ph): statistics.median(uncertainty(r, k, ph) for r in good) for k in STRUCTURES for ph in PHASES}
    out: dict[str, dict[str, float]] = {"worst": {}, "ratio": {}, "ratio_phase": {}}
    for r in rows:
        s = r["study"]
        out["worst"][s] = -max(uncertainty(r, k, ph) for k in STRUCTURES for ph in PHASES)
        out["ratio"][s] = -max(uncertainty(r, k, ph) / pooled[k] for k in STRUCTURES for ph in PHASES)
        out["ratio_phase"][s] = -max(uncertainty(r, k, ph) / per_phase[k, ph] for k in STRUCTURES for ph in PHASES)
    return out | {"_medians": {f"{k}": v for k, v in pooled.items()} | {f"{k}_{ph}": v for (k, ph), v in per_phase.items()}}


def main() -> int:
    sys.path.insert(0, str(HERE))
    from qc_agreement import choose

    ap = argparse.ArgumentParser()
    ap.add_argument("scores", type=Path, nargs="+")
    ap.add_argument("--train-folds", type=int, nargs="+", required=True)
    ap.add_argument("--threshold", type=float, default=0.70)
    ap.add_argument("--budget", type=float, default=0.15)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = read_scores(args.scores, args.threshold)
    train = [r for r in rows if int(r["fold"]) in args.train_folds]
    test = [r for r in rows if int(r["fold"]) not in args.train_folds]
    gross = {r["study"] for r in rows if r["gross"]}
    if not any(r["gross"] for r in train):
        raise SystemExit("no gross failure in the training folds: nothing to choose a threshold on")
    by_detector = scores(rows, train)
    medians = by_detector.pop("_medians")

    def cell(group: list[dict], flagged: set[str]) -> str:
        g = [r["study"] for r in group if r["gross"]]
        ok = [r["study"] for r in group if not r["gross"]]
        return f"{sum(s in flagged for s in g)}/{len(g)}, {sum(s in flagged for s in ok)}/{len(ok)}"

    lines = [
        (f"{len(rows)} studies ({', '.join(str(p) for p in args.scores)}); training folds {args.train_folds}: "
         f"{len(train)} studies; gross failures: {' '.join(sorted(gross))}"),
        "",
        ("median uncertainty (1 - confidence) of the good training studies: "
         + ", ".join(f"{k} {v:.4f}" for k, v in medians.items())),
        "",
        "| detector | rule | threshold | training folds | other folds | all | missed (other folds) | other folds' failures: rank among their studies |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, score in by_detector.items():
        for rule in ("tight", "budget"):
            t = choose({r["study"]: score[r["study"]] for r in train}, gross & {r["study"] for r in train}, rule, args.budget)
            low = {s for s, v in score.items() if v < t}
            missed = " ".join(r["study"] for r in test if r["gross"] and r["study"] not in low) or "-"
            ranked = sorted((r["study"] for r in test), key=lambda s: score[s])
            ranks = " ".join(f"{s} {ranked.index(s) + 1}" for s in sorted(gross) if s in ranked) or "-"
            lines.append(f"| {name} | {rule} | {t:.4f} | {cell(train, low)} | {cell(test, low)} | {cell(rows, low)} | {missed} | {ranks} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
