"""Can one network pass say when its own segmentation failed?  The ``low_confidence`` QC flag
for ``--no-tta`` (the fast path of fp32-only CPUs), where the rotations' agreement
(``low_tta_agreement``) is not there; docs/cv100/qc.md.

    python benchmarks/qc_confidence.py RUNS --variants cur@crop128,anatomy cur@crop128,anatomy,tta [--train-folds 0 1]

Reads, per variant, the reports of ``benchmarks/cv_evaluate.py`` (RUNS/pred_<variant>/<study>_report.json:
``segmentation.confidence`` per frame, :func:`cardioseg.stages.soft_confidence`, and the QC
flags) and its scores (RUNS/eval_<variant>/metrics.csv: a gross failure is a study with a
structure Dice < 0.70 in ED or ES). A study's score is its lower confidence of ED and ES. The
threshold is chosen on the training folds only, by the rules of ``qc_agreement.choose``
("tight": just above the most confident training failure; "budget": every training failure and
up to 15 % of the good training studies flagged), and measured on the other folds and on all:
alone, with the reports' other flags (what a user would see), and for a variant with rotations
also against and with ``low_tta_agreement``. Cells: failures flagged / failures, good studies
flagged / good studies.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def study_scores(pred: Path, studies: list[str]) -> tuple[dict[str, float], dict[str, set[str]]]:
    """study -> (lower ED/ES confidence, its QC flags other than low_confidence)."""
    scores, others = {}, {}
    for s in studies:
        report = json.loads((pred / f"{s}_report.json").read_text())
        conf = report["segmentation"]["confidence"]
        keys = [i for i in (report["ed_frame"], report["es_frame"]) if i is not None] or range(len(conf))
        scores[s] = min(conf[i] for i in keys)
        others[s] = set(report["qc_flags"]) - {"low_confidence"}
    return scores, others


STRUCTURE_DICE = [f"dice_{k}_{ph}" for ph in ("ed", "es") for k in ("rv", "myo", "lv")]


STRUCTURE_CONFIDENCE = [f"confidence_{k}_{ph}" for ph in ("ed", "es") for k in ("rv", "myo", "lv")]


def frame_columns(report: dict) -> list[str]:
    """A report's ED and ES confidence and rotations' agreement, then each structure's ED and ES
    confidence (``STRUCTURE_CONFIDENCE``; "" where it has none)."""
    seg = report["segmentation"]
    out = []
    for key in ("confidence", "tta_agreement"):
        values = seg.get(key) or []
        for i in (report["ed_frame"], report["es_frame"]):
            out.append(f"{values[i]:.4f}" if i is not None and i < len(values) and values[i] is not None else "")
    each = seg.get("confidence_by_structure") or []
    for i in (report["ed_frame"], report["es_frame"]):
        for k in ("rv", "myo", "lv"):
            value = each[i].get(k) if i is not None and i < len(each) else None
            out.append(f"{value:.4f}" if value is not None else "")
    return out


def structure_dice(metrics_csv: Path) -> dict[str, dict[str, str]]:
    """study -> {"dice_rv_ed": ..., ...} from ``cardioseg evaluate``'s metrics.csv."""
    import csv

    out: dict[str, dict[str, str]] = {}
    with open(metrics_csv, newline="") as f:
        for r in csv.DictReader(f):
            if r["label"] in ("rv", "myo", "lv") and r["phase"] in ("ED", "ES"):
                out.setdefault(r["study"], {})[f"dice_{r['label']}_{r['phase'].lower()}"] = r["dice"]
    return out


def main() -> int:
    sys.path.insert(0, str(HERE))
    from cv_table import fold_of_patients
    from qc_agreement import choose, worst_dice

    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path)
    ap.add_argument("--variants", nargs="+", required=True)
    ap.add_argument("--train-folds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--threshold", type=float, default=0.70)
    ap.add_argument("--budget", type=float, default=0.15)
    ap.add_argument("--limit", type=float, help="also measure this limit, chosen before (e.g. on folds whose models are gone)")
    ap.add_argument("--scores-csv", type=Path, help="write each study's score, worst Dice and flags here (one file per variant: VARIANT replaced)")
    args = ap.parse_args()
    for variant in args.variants:
        dice = worst_dice(args.runs / f"eval_{variant}" / "metrics.csv")
        fold = fold_of_patients(args.runs / variant.partition("@")[0].split("+")[0])
        studies = sorted(s for s in dice if s in fold)
        scores, others = study_scores(args.runs / f"pred_{variant}", studies)
        gross = {s for s in studies if dice[s] < args.threshold}
        train = [s for s in studies if fold[s] in args.train_folds]
        test = [s for s in studies if fold[s] not in args.train_folds]

        def cell(group: list[str], flagged: set[str], gross: set[str] = gross) -> str:
            g = [s for s in group if s in gross]
            ok = [s for s in group if s not in gross]
            return f"{sum(s in flagged for s in g)}/{len(g)}, {sum(s in flagged for s in ok)}/{len(ok)}"

        print(f"## {variant}: {len(studies)} studies, {len(gross)} gross failures: {' '.join(sorted(gross))}")
        print("| detector | threshold | training folds | other folds | all | missed (other folds) |")
        print("|---|---|---|---|---|---|")
        others_flagged = {s for s in studies if others[s]}
        print(f"| other flags only | | {cell(train, others_flagged)} | {cell(test, others_flagged)} | {cell(studies, others_flagged)} | |")
        if any("low_tta_agreement" in others[s] for s in studies):
            tta = {s for s in studies if "low_tta_agreement" in others[s]}
            print(f"| low_tta_agreement alone | shipped | {cell(train, tta)} | {cell(test, tta)} | {cell(studies, tta)} | |")
        rules: list[tuple[str, float | None]] = [("tight", None), ("budget", None)] if any(s in gross for s in train) else []
        if args.limit is not None:
            rules.append(("fixed", args.limit))
        for rule, limit in rules:
            t = limit if limit is not None else choose({s: scores[s] for s in train}, gross & set(train), rule, args.budget)
            low = {s for s in studies if scores[s] < t}
            union = low | others_flagged
            missed = " ".join(s for s in test if s in gross and s not in union) or "-"
            print(f"| low_confidence ({rule}) | {t:.4f} | {cell(train, low)} | {cell(test, low)} | {cell(studies, low)} | |")
            print(f"| low_confidence ({rule}) + other flags | {t:.4f} | {cell(train, union)} | {cell(test, union)} | {cell(studies, union)} | {missed} |")
        if args.scores_csv:
            path = Path(str(args.scores_csv).replace("VARIANT", variant))
            per = structure_dice(args.runs / f"eval_{variant}" / "metrics.csv")
            pred = args.runs / f"pred_{variant}"
            with open(path, "w") as f:  # per frame and structure too: QC rules can be tried on stored scores later
                f.write(",".join(["study", "fold", "confidence", "worst_dice", "other_flags", "confidence_ed",
                                  "confidence_es", "tta_agreement_ed", "tta_agreement_es", *STRUCTURE_CONFIDENCE,
                                  *STRUCTURE_DICE]) + "\n")  # fmt: skip
                for s in studies:
                    frames = frame_columns(json.loads((pred / f"{s}_report.json").read_text()))
                    row = [s, str(fold[s]), f"{scores[s]:.4f}", f"{dice[s]:.4f}", " ".join(sorted(others[s])), *frames,
                           *(per.get(s, {}).get(k, "") for k in STRUCTURE_DICE)]  # fmt: skip
                    f.write(",".join(row) + "\n")
        ranked = sorted(studies, key=lambda s: scores[s])
        print("\nlowest confidence: " + ", ".join(f"{s} {scores[s]:.3f}{'*' if s in gross else ''}" for s in ranked[:15]))
        print("failures: " + ", ".join(f"{s} {scores[s]:.3f} (Dice {dice[s]:.2f})" for s in sorted(gross)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
