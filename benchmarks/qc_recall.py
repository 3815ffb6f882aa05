"""Does QC flag every gross failure?  Recall and false-flag rate of the reports' QC flags
against the cross-validated Dice of ``cardioseg evaluate``.

    python benchmarks/qc_recall.py RUNS --variants cur cur@crop160 [--threshold 0.70] [--folds 2 3 4] [--out FILE.md]

Reads RUNS/eval_<variant>/metrics.csv (Dice per frame and structure, every patient scored by
the fold model that never saw it) and RUNS/pred_<variant>/<study>_report.json (qc_flags). A
study is a gross failure when any structure of its ED or ES frame has Dice below the
threshold (a structure absent from both masks does not count); it is flagged when its report
has any QC flag. Prints, per variant: gross failures, how many QC flagged (recall), good studies
flagged (false-flag rate), the flags behind each, and every gross failure with its worst Dice.
``--folds``: only the patients those folds held out (e.g. the folds a QC limit was not chosen on).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import Counter
from pathlib import Path


def worst_dice(metrics_csv: Path) -> dict[str, tuple[float, str]]:
    """study -> (lowest structure Dice over its frames, "phase structure")."""
    worst: dict[str, tuple[float, str]] = {}
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row["label"] == "average" or row["dice"] in ("", "nan"):
                continue
            d = float(row["dice"])
            if math.isnan(d):
                continue
            where = f"{row['phase']} {row['label']}"
            if row["study"] not in worst or d < worst[row["study"]][0]:
                worst[row["study"]] = (d, where)
    return worst


def flags_of(pred_dir: Path, studies: list[str]) -> dict[str, list[str]]:
    out = {}
    for s in studies:
        path = pred_dir / f"{s}_report.json"
        out[s] = list(dict.fromkeys(json.loads(path.read_text())["qc_flags"])) if path.is_file() else ["(no report)"]
    return out


def summary(runs: Path, variant: str, threshold: float, folds: list[int] | None = None) -> list[str]:
    worst = worst_dice(runs / f"eval_{variant}" / "metrics.csv")
    if folds is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from cv_table import fold_of_patients

        fold = fold_of_patients(runs / variant.partition("@")[0].split("+")[0])
        worst = {s: w for s, w in worst.items() if fold.get(s) in folds}
    flags = flags_of(runs / f"pred_{variant}", sorted(worst))
    gross = [s for s in worst if worst[s][0] < threshold]
    good = [s for s in worst if worst[s][0] >= threshold]
    caught = [s for s in gross if flags[s]]
    false = [s for s in good if flags[s]]
    codes_gross = Counter(c for s in gross for c in flags[s])
    codes_good = Counter(c for s in good for c in flags[s])
    pct = lambda a, b: f"{100 * a / b:.0f} %" if b else "–"
    lines = [
        f"### {variant}" + (f" (folds {', '.join(map(str, folds))})" if folds is not None else ""),
        "",
        f"- studies: {len(worst)}; gross failures (a structure Dice < {threshold:g}): {len(gross)}",
        f"- QC recall: {len(caught)} of {len(gross)} flagged ({pct(len(caught), len(gross))})",
        f"- false flags: {len(false)} of {len(good)} good studies flagged ({pct(len(false), len(good))})",
        f"- flags on gross failures: {dict(codes_gross.most_common()) or '-'}",
        f"- flags on good studies: {dict(codes_good.most_common()) or '-'}",
        "",
        "| gross failure | worst Dice | where | QC flags |",
        "|---|---|---|---|",
    ]
    for s in sorted(gross, key=lambda s: worst[s][0]):
        lines.append(f"| {s} | {worst[s][0]:.2f} | {worst[s][1]} | {', '.join(flags[s]) or '**none**'} |")
    return [*lines, ""]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path)
    ap.add_argument("--variants", nargs="+", required=True)
    ap.add_argument("--threshold", type=float, default=0.70)
    ap.add_argument("--folds", type=int, nargs="+", default=None, help="only the patients these folds held out")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    text = "\n".join(line for v in args.variants for line in summary(args.runs, v, args.threshold, args.folds))
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
