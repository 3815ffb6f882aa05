"""Two cross-validated evaluations side by side, paired per patient, from their files alone.

    python benchmarks/cv_paired.py EVAL_A EVAL_B [--names A B] [--out FILE.md] [--worst-csv FILE.csv]

EVAL_A and EVAL_B are ``cardioseg evaluate`` folders (``metrics.csv``, ``clinical.csv``) of the
same patients, each patient scored by a model that never saw it (``cv_evaluate.py``,
``cv_lcc.py``). Unlike ``cardioseg evaluate --compare`` this needs no masks, so a stored
evaluation (``benchmarks/results/...``) can be the baseline of a new one. Writes Markdown:

- per structure and phase: mean Dice, Hausdorff distance (HD) and HD95 of A and B, and the
  two-sided paired Wilcoxon p over the frames;
- per patient: the mean Dice (three structures, ED and ES), the mean HD, the worst structure
  Dice, and the frames with a structure Dice below 0.70;
- LV EF, RV EF and LV mass against the references: Pearson r, bias, mean absolute error (MAE),
  and the Wilcoxon p of the absolute errors.

``--worst-csv``: each patient's worst structure Dice in A and in B, and where (phase, structure).
Only the patients present in both are used (the count is printed).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import numpy as np

from cardioseg.metrics import agreement, wilcoxon_p

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cv_table import p_text  # the CV tables' p format

STRUCTURES = (("lv", "LV"), ("myo", "MYO"), ("rv", "RV"))
PHASES = ("ED", "ES")
CLINICAL = (("lv_ef_pct", "LV EF %"), ("rv_ef_pct", "RV EF %"), ("lv_mass_g", "LV mass g"))
GROSS = 0.70


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def read_metrics(folder: Path) -> dict[tuple[str, str, str], dict[str, float]]:
    """(study, phase, structure) -> {dice, hd_mm, hd95_mm} of ``metrics.csv``."""
    out: dict[tuple[str, str, str], dict[str, float]] = {}
    with open(folder / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["label"] in dict(STRUCTURES) and row["phase"] in PHASES:
                out[(row["study"], row["phase"], row["label"])] = {
                    k: _float(row[k]) for k in ("dice", "hd_mm", "hd95_mm")
                }
    return out


def read_clinical(folder: Path) -> dict[str, dict[str, float]]:
    """study -> {<index>_pred, <index>_ref} of ``clinical.csv``."""
    with open(folder / "clinical.csv", newline="") as f:
        return {row["study"]: {k: _float(v) for k, v in row.items() if k not in ("study", "group")} for row in csv.DictReader(f)}


def per_patient(metrics: dict[tuple[str, str, str], dict[str, float]], studies: list[str], key: str, how: str) -> np.ndarray:
    """One value per study: the mean (``how`` = "mean") or minimum of ``key`` over its frames and structures."""
    values = []
    for s in studies:
        v = [metrics[(s, ph, lab)][key] for ph in PHASES for lab, _ in STRUCTURES if (s, ph, lab) in metrics]
        v = [x for x in v if math.isfinite(x)]
        values.append((np.mean(v) if how == "mean" else np.min(v)) if v else math.nan)
    return np.asarray(values)


def gross_frames(metrics: dict[tuple[str, str, str], dict[str, float]], studies: list[str]) -> list[str]:
    """'study phase' of every frame with a structure Dice below ``GROSS``."""
    out = []
    for s in studies:
        for ph in PHASES:
            worst = [metrics[(s, ph, lab)]["dice"] for lab, _ in STRUCTURES if (s, ph, lab) in metrics]
            if any(d < GROSS for d in worst if math.isfinite(d)):
                out.append(f"{s} {ph}")
    return out


def read_both(a_dir: Path, b_dir: Path) -> tuple[dict, dict, list[str]]:
    """Both evaluations' metrics and the studies they share, sorted."""
    ma, mb = read_metrics(a_dir), read_metrics(b_dir)
    return ma, mb, sorted({k[0] for k in ma} & {k[0] for k in mb})


def worst_rows(a_dir: Path, b_dir: Path) -> list[list[str]]:
    """[study, worst Dice A, where, worst Dice B, where] for the patients in both."""
    ma, mb, studies = read_both(a_dir, b_dir)
    rows = []
    for s in studies:
        row = [s]
        for m in (ma, mb):
            d, where = min(((v["dice"], f"{ph} {lab}") for (st, ph, lab), v in m.items() if st == s and math.isfinite(v["dice"])),
                           default=(math.nan, ""))  # fmt: skip
            row += [f"{d:.4f}", where]
        rows.append(row)
    return rows


def table(a_dir: Path, b_dir: Path, name_a: str, name_b: str) -> str:
    ma, mb, studies = read_both(a_dir, b_dir)
    lines = [(f"{len(studies)} patients in both (`{a_dir}` = {name_a}, `{b_dir}` = {name_b}); "
             "p: two-sided paired Wilcoxon signed-rank test."), ""]  # fmt: skip

    lines += ["| per patient | " + name_a + " | " + name_b + " | p |", "|---|---|---|---|"]
    for label, key, how, fmt in (("mean Dice", "dice", "mean", "{:.4f}"), ("mean HD mm", "hd_mm", "mean", "{:.2f}"),
                                 ("mean HD95 mm", "hd95_mm", "mean", "{:.2f}"),
                                 ("worst structure Dice", "dice", "min", "{:.3f}")):  # fmt: skip
        xa, xb = per_patient(ma, studies, key, how), per_patient(mb, studies, key, how)
        _, p = wilcoxon_p(xa, xb)
        lines.append(f"| {label} | {fmt.format(np.nanmean(xa))} | {fmt.format(np.nanmean(xb))} | {p_text(p)} |")
    ga, gb = gross_frames(ma, studies), gross_frames(mb, studies)
    lines.append(f"| frames with a structure Dice < {GROSS:.2f} | {len(ga)} | {len(gb)} | |")
    lines.append("")

    lines += [(f"| structure | phase | Dice {name_a} | Dice {name_b} | p | HD mm {name_a} | HD mm {name_b} | p "
              f"| HD95 mm {name_a} | HD95 mm {name_b} | p |"), "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for lab, lab_name in STRUCTURES:
        for ph in PHASES:
            cells = [lab_name, ph]
            for key, fmt in (("dice", "{:.3f}"), ("hd_mm", "{:.1f}"), ("hd95_mm", "{:.1f}")):
                xa = np.array([ma[(s, ph, lab)][key] if (s, ph, lab) in ma else math.nan for s in studies])
                xb = np.array([mb[(s, ph, lab)][key] if (s, ph, lab) in mb else math.nan for s in studies])
                _, p = wilcoxon_p(xa, xb)
                cells += [fmt.format(np.nanmean(xa)), fmt.format(np.nanmean(xb)), p_text(p)]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")

    ca, cb = read_clinical(a_dir), read_clinical(b_dir)
    both = [s for s in studies if s in ca and s in cb]
    lines += ["| index | | r | bias | MAE | p (abs. error) |", "|---|---|---|---|---|---|"]
    for key, key_name in CLINICAL:
        errs = {}
        for name, c in ((name_a, ca), (name_b, cb)):
            pred = [c[s][f"{key}_pred"] for s in both]
            ref = [c[s][f"{key}_ref"] for s in both]
            ag = agreement(pred, ref)
            errs[name] = np.abs(np.asarray(pred) - np.asarray(ref))
            p = wilcoxon_p(errs[name_a], errs[name])[1] if name == name_b else math.nan
            lines.append(f"| {key_name} | {name} | {ag.pearson_r:.3f} | {ag.bias:+.1f} | {ag.mae:.2f} | {p_text(p)} |")
    lines += ["", (f"Frames with a structure Dice < {GROSS:.2f}: {name_a}: {', '.join(ga) or 'none'}; "
              f"{name_b}: {', '.join(gb) or 'none'}."), ""]  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_a", type=Path)
    ap.add_argument("eval_b", type=Path)
    ap.add_argument("--names", nargs=2, default=("A", "B"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--worst-csv", type=Path, default=None)
    args = ap.parse_args()
    for d in (args.eval_a, args.eval_b):
        if not (d / "metrics.csv").is_file() or not (d / "clinical.csv").is_file():
            print(f"error: {d} has no metrics.csv and clinical.csv (a cardioseg evaluate folder)", file=sys.stderr)
            return 1
    text = table(args.eval_a, args.eval_b, *args.names)
    if args.out is not None:
        args.out.write_text(text)
    if args.worst_csv is not None:
        a, b = args.names
        with open(args.worst_csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["study", f"worst_dice_{a}", f"where_{a}", f"worst_dice_{b}", f"where_{b}"])
            w.writerows(worst_rows(args.eval_a, args.eval_b))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
