"""Would the test-time rotations pay on the unsure frames only?  A policy "rotate a frame only when
its one-pass confidence (``segmentation.confidence``, :func:`cardioseg.stages.soft_confidence`)
is below L" changes a frame's labels and nothing else (stage 1, the crop and the clean-up are per
frame), so its masks are, frame by frame, those of the variant without rotations (confidence >= L)
or with them on every frame (confidence < L): this script scores each L from the two variants'
cross-validated scores, without segmenting again. (It is not an option of ``cardioseg predict``:
on cross-validation the rotations' gain is spread over all frames, docs/cv100/tta_selective.md.)

    python benchmarks/tta_selective.py RUNS --off cur@crop128,anatomy --on cur@crop128,anatomy,tta \\
        [--limits 0.90 0.92 ...] [--train-folds 0 1] [--max-loss 0.001]

Reads RUNS/eval_<variant>/metrics.csv (``cardioseg evaluate`` of ``benchmarks/cv_evaluate.py``)
and the confidence in RUNS/pred_<on>/<study>_report.json. A limit is chosen on the training
folds only: the lowest L (fewest frames rotated) whose mean Dice there is within ``--max-loss``
of rotating every frame; it is then shown on the other folds and on all. Columns: frames
rotated, mean Dice, mean HD95 and HD (mm), LV/RV EF MAE (points), frames with a structure
Dice < 0.70, and the paired Wilcoxon p of the per-patient mean Dice against rotating every frame.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

Frame = tuple[str, str]  # (study, phase)


def read_metrics(path: Path) -> dict[Frame, dict[str, dict[str, float]]]:
    """(study, phase) -> label -> {dice, hd95_mm, hd_mm, vol_pred_ml, vol_ref_ml}."""
    out: dict[Frame, dict[str, dict[str, float]]] = defaultdict(dict)
    with path.open() as f:
        for row in csv.DictReader(f):
            out[(row["study"], row["phase"])][row["label"]] = {
                k: float(row[k]) if row[k] not in ("", "nan", "inf") else math.nan
                for k in ("dice", "hd95_mm", "hd_mm", "vol_pred_ml", "vol_ref_ml")
            }
    return out


def confidences(pred: Path, studies: set[str]) -> dict[Frame, float]:
    """(study, phase) -> the one-pass confidence of that frame in the study's report."""
    out = {}
    for s in studies:
        report = json.loads((pred / f"{s}_report.json").read_text())
        conf = report["segmentation"]["confidence"]
        out[(s, "ED")] = conf[report["ed_frame"]]
        out[(s, "ES")] = conf[report["es_frame"]]
    return out


def ef(frames: dict[str, dict[str, dict[str, float]]], label: str, key: str) -> float:
    edv, esv = frames["ED"][label][key], frames["ES"][label][key]
    return 100.0 * (edv - esv) / edv if edv > 0 else math.nan


def score(chosen: dict[Frame, dict[str, dict[str, float]]], studies: list[str]) -> dict[str, Any]:
    """Means over the studies of the frames in ``chosen``."""
    import numpy as np

    per_patient = []
    hd95, hd, lv_err, rv_err, gross = [], [], [], [], 0
    for s in studies:
        frames = {p: chosen[(s, p)] for p in ("ED", "ES")}
        per_patient.append(float(np.mean([m["dice"] for f in frames.values() for m in f.values()])))
        hd95 += [m["hd95_mm"] for f in frames.values() for m in f.values() if math.isfinite(m["hd95_mm"])]
        hd += [m["hd_mm"] for f in frames.values() for m in f.values() if math.isfinite(m["hd_mm"])]
        gross += sum(any(m["dice"] < 0.70 for m in f.values()) for f in frames.values())
        lv_err.append(abs(ef(frames, "lv", "vol_pred_ml") - ef(frames, "lv", "vol_ref_ml")))
        rv_err.append(abs(ef(frames, "rv", "vol_pred_ml") - ef(frames, "rv", "vol_ref_ml")))
    return {"per_patient": per_patient, "dice": float(np.mean(per_patient)), "hd95": float(np.mean(hd95)),
            "hd": float(np.mean(hd)), "lv_ef_mae": float(np.nanmean(lv_err)), "rv_ef_mae": float(np.nanmean(rv_err)),
            "gross": gross}  # fmt: skip


def main() -> int:
    sys.path.insert(0, str(HERE))
    from cv_table import fold_of_patients
    from scipy.stats import wilcoxon

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path)
    ap.add_argument("--off", required=True, help="the variant without rotations")
    ap.add_argument("--on", required=True, help="the same variant with rotations on every frame")
    ap.add_argument("--limits", type=float, nargs="+",
                    default=[0.0, 0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 1.0])  # fmt: skip
    ap.add_argument("--train-folds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--max-loss", type=float, default=0.001)
    args = ap.parse_args()
    off = read_metrics(args.runs / f"eval_{args.off}" / "metrics.csv")
    on = read_metrics(args.runs / f"eval_{args.on}" / "metrics.csv")
    fold = fold_of_patients(args.runs / args.on.partition("@")[0])
    studies = sorted({s for s, _ in on} & {s for s, _ in off} & set(fold))
    conf = confidences(args.runs / f"pred_{args.on}", set(studies))
    train = [s for s in studies if fold[s] in args.train_folds]
    test = [s for s in studies if fold[s] not in args.train_folds]

    def at(limit: float) -> dict[Frame, dict[str, dict[str, float]]]:
        every = limit >= 1.0
        return {f: on[f] if every or conf[f] < limit else off[f] for f in conf}

    def rotated(limit: float, subset: list[str]) -> float:
        frames = [(s, p) for s in subset for p in ("ED", "ES")]
        return sum(limit >= 1.0 or conf[f] < limit for f in frames) / len(frames)

    full_train = score(at(1.0), train)["dice"]
    chosen = min((L for L in args.limits if score(at(L), train)["dice"] >= full_train - args.max_loss), default=1.0)
    print(f"{len(studies)} patients ({len(train)} in training folds {args.train_folds}); chosen on them: "
          f"L = {chosen:g} (the lowest limit within {args.max_loss:g} mean Dice of rotating every frame)\n")  # fmt: skip
    for name, subset in (("training folds", train), ("other folds", test), ("all", studies)):
        if not subset:
            continue
        full = score(at(1.0), subset)
        print(f"### {name} ({len(subset)} patients)\n")
        print("| L | frames rotated | mean Dice | p vs every frame | mean HD95 mm | mean HD mm "
              "| LV EF MAE | RV EF MAE | frames with a Dice < 0.70 |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        for L in args.limits:
            r = score(at(L), subset)
            diff = [a - b for a, b in zip(r["per_patient"], full["per_patient"])]
            p = wilcoxon(diff).pvalue if any(diff) else 1.0
            mark = " (chosen)" if L == chosen else ""
            print(f"| {L:g}{mark} | {rotated(L, subset):.0%} | {r['dice']:.4f} | {p:.2g} | {r['hd95']:.2f} | "
                  f"{r['hd']:.2f} | {r['lv_ef_mae']:.2f} | {r['rv_ef_mae']:.2f} | {r['gross']} |")  # fmt: skip
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
