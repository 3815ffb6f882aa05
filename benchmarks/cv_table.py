"""Cross-validation table (like Table II of Dangi et al.) from ``benchmarks/cv_evaluate.py``'s output.

    python benchmarks/cv_table.py RUNS [--variants unet dmr] [--out docs/cv/README.md]

Reads RUNS/eval_<variant>/{summary.json,metrics.csv,clinical.csv} (``cardioseg evaluate`` of
every patient by its own fold's model) and RUNS/eval_<b>_vs_<a>/compare.csv (its paired
Wilcoxon tests, b against the first variant a), plus each run's RUNS/<variant>/fold*/log.csv
(seconds per epoch). Writes one Markdown file: a one-row-per-variant summary (mean Dice and
HD95 per patient, EF and mass errors, p against the first variant, s/epoch); Dice, HD95 and ASSD per structure at ED and ES
(mean ± sd over patients), per-fold mean Dice, LV/RV EF, volumes and LV mass agreement with the
references (Pearson r, bias, limits of agreement, mean absolute error; Wilcoxon p of the
absolute errors against the first variant), and training cost. Copies the evaluation files
next to it (RUNS/... paths are not part of the repository).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np

LABELS = (("lv", "LV"), ("rv", "RV"), ("myo", "MYO"))
METRICS = (("dice", "Dice", "{:.3f}"), ("hd95_mm", "HD95 mm", "{:.1f}"), ("assd_mm", "ASSD mm", "{:.2f}"))
CLINICAL = (
    ("lv_ef_pct", "LV EF %"), ("rv_ef_pct", "RV EF %"), ("lv_mass_g", "LV mass g"),
    ("lv_edv_ml", "LV EDV mL"), ("rv_edv_ml", "RV EDV mL"),
)  # fmt: skip
NAMES = {
    "unet": "U-Net", "dmr": "DMR-U-Net", "ctx3": "2D multi-slice U-Net (3 slices, hybrid loss)",
    "unet3d": "3D U-Net (hybrid loss)", "mapdice": "U-Net, MapDice loss", "explog": "U-Net, exp-log loss",
    "lrnet": "U-Net + LR-Net", "srnn": "SRNN (exp-log + shape)", "scn": "SCN (exp-log + position)",
    "srscn": "SRSCN (exp-log + shape + position)", "acnn": "ACNN (shape codes)", "gan": "U-Net + GAN",
}  # fmt: skip
TITLE = "# 5-fold cross-validation on the 80 ACDC training patients"


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def p_text(p: float | None) -> str:
    if p is None or np.isnan(p):
        return "–"
    return f"{p:.2g}" if p >= 0.001 else "<0.001"


def run_of(variant: str) -> str:
    """The run folder of a variant: ``aug@crop160,tta`` -> ``aug`` (an ensemble ``a+b``: ``a``)."""
    return variant.split("@", 1)[0].split("+", 1)[0]


def fold_of_patients(run: Path) -> dict[str, int]:
    """patient -> the fold whose model scored it (from the exported weights' metadata)."""
    from cardioseg.weights import load_weights

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cv_evaluate import fold_weights  # which *.pt of a fold is its exported weights

    out = {}
    for k, weights in fold_weights(run).items():
        for patient in load_weights(str(weights)).meta["training"]["val_patients"]:
            out[patient] = k
    return out


def epoch_seconds(run: Path) -> tuple[float, int]:
    """Median seconds per training epoch over every fold's log, and the epochs per fold."""
    secs, epochs = [], set()
    for log in sorted(run.glob("fold*/log.csv")):
        rows = read_csv(log)
        secs += [float(r["seconds"]) for r in rows]
        epochs.add(len(rows))
    return (statistics.median(secs) if secs else float("nan")), max(epochs, default=0)


def wilcoxon_p(a: list[float], b: list[float]) -> float:
    """p of the paired Wilcoxon test (``cardioseg.metrics.wilcoxon_p``: the one the evaluation uses)."""
    from cardioseg.metrics import wilcoxon_p as paired

    return paired(a, b)[1]


def per_patient(rows: list[dict[str, str]], key: str) -> dict[str, float]:
    """patient -> mean of ``key`` over the three structures at ED and ES (finite values only)."""
    values: dict[str, list[float]] = {}
    for r in rows:
        if r["label"] in dict(LABELS) and r[key] not in ("", "nan", "inf"):
            values.setdefault(r["study"], []).append(float(r[key]))
    return {s: float(np.mean(v)) for s, v in values.items()}


def summary_table(runs: Path, variants: list[str], names: list[str]) -> list[str]:
    """One row per variant: mean Dice and HD95 per patient, EF and mass errors, p against the first."""
    ref = variants[0]
    metrics = {v: read_csv(runs / f"eval_{v}" / "metrics.csv") for v in variants}
    clinical = {v: {r["study"]: r for r in read_csv(runs / f"eval_{v}" / "clinical.csv")} for v in variants}
    cols = (("lv_ef_pct", "LV EF MAE %"), ("rv_ef_pct", "RV EF MAE %"), ("lv_mass_g", "LV mass MAE g"))
    header = ["", "mean Dice", "p", "mean HD95 mm", "p", *[t for _, t in cols for t in (t, "p")], "s/epoch", "epochs"]
    lines = [
        "## Summary",
        "",
        "Per patient: the mean over LV, RV and MYO at ED and ES (HD95: of the finite values); EF and "
        "mass: absolute error against the reference. p: paired Wilcoxon against " + names[0] + ".",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    ref_vals = {k: per_patient(metrics[ref], k) for k in ("dice", "hd95_mm")}
    for v, name in zip(variants, names):
        cells = [name]
        for key, fmt in (("dice", "{:.3f}"), ("hd95_mm", "{:.2f}")):
            vals = per_patient(metrics[v], key)
            studies = sorted(set(vals) & set(ref_vals[key]))
            cells.append(fmt.format(np.mean([vals[s] for s in studies])))
            same = v == ref
            cells.append(
                "–" if same else p_text(wilcoxon_p([vals[s] for s in studies], [ref_vals[key][s] for s in studies]))
            )
        for key, _ in cols:
            studies = sorted(set(clinical[v]) & set(clinical[ref]))
            err = [abs(float(clinical[v][s][f"{key}_diff"])) for s in studies]
            err_ref = [abs(float(clinical[ref][s][f"{key}_diff"])) for s in studies]
            cells += [f"{np.mean(err):.1f}", "–" if v == ref else p_text(wilcoxon_p(err, err_ref))]
        sec, epochs = epoch_seconds(runs / run_of(v))
        cells += [f"{sec:.1f}", str(epochs)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def build(runs: Path, variants: list[str], title: str = TITLE) -> str:
    ref = variants[0]
    summaries = {v: json.loads((runs / f"eval_{v}" / "summary.json").read_text()) for v in variants}
    compares = {}
    for v in variants[1:]:
        rows = read_csv(runs / f"eval_{v}_vs_{ref}" / "compare.csv")
        compares[v] = {(r["label"], r["phase"], r["metric"]): float(r["p_value"] or "nan") for r in rows}
    names = [NAMES.get(v, v) for v in variants]
    n = summaries[ref]["clinical"]["lv_ef_pct"]["n"]
    scored = {r["study"] for r in read_csv(runs / f"eval_{ref}" / "metrics.csv")}
    folds = {p: k for p, k in fold_of_patients(runs / run_of(ref)).items() if p in scored}
    lines = [
        title,
        "",
        (
            f"Every patient is segmented by the model of the fold that held it out ({n} patients, "
            f"{len(set(folds.values()))} folds, ED and ES frames at native resolution, after the 3D "
            "connected-component clean-up), then scored by `cardioseg evaluate` against the expert "
            f"labels. Mean ± sd over patients; p: two-sided paired Wilcoxon signed-rank test against "
            f"{names[0]} (per patient; for the clinical indices on the absolute errors)."
        ),
        "",
        *summary_table(runs, variants, names),
    ]
    for phase in ("ED", "ES"):
        header = ["", *[f"{label} {m}" for _, m, _ in METRICS for _, label in LABELS]]
        lines += [f"## {phase}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for v, name in zip(variants, names):
            cells = [name]
            for key, _, fmt in METRICS:
                for label, _ in LABELS:
                    s = summaries[v]["by_phase"][phase][label][key]
                    cells.append(f"{fmt.format(s['mean'])} ± {fmt.format(s['std'])}")
            lines.append("| " + " | ".join(cells) + " |")
            if v != ref:
                ps = [p_text(compares[v].get((label, phase, key))) for key, _, _ in METRICS for label, _ in LABELS]
                lines.append("| p vs " + names[0] + " | " + " | ".join(ps) + " |")
        lines.append("")

    lines += ["## Mean Dice per fold (ED and ES, three structures)", ""]
    fold_ids = sorted(set(folds.values()))
    lines += ["| | " + " | ".join(f"fold {k}" for k in fold_ids) + " | all |", "|" + "---|" * (len(fold_ids) + 2)]
    for v, name in zip(variants, names):
        rows = read_csv(runs / f"eval_{v}" / "metrics.csv")
        by_fold: dict[int, list[float]] = {}
        for r in rows:
            if r["label"] in dict(LABELS) and r["dice"]:
                by_fold.setdefault(folds[r["study"]], []).append(float(r["dice"]))
        every = [d for k in fold_ids for d in by_fold.get(k, [])]
        cells = [f"{np.mean(by_fold[k]):.3f}" if by_fold.get(k) else "–" for k in fold_ids]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {np.mean(every):.3f} |")
    lines.append("")

    lines += [
        "## Clinical indices vs the references",
        "",
        "| | | r | bias | 95 % limits of agreement | mean abs. error | p (abs. error) |",
        "|---|---|---|---|---|---|---|",
    ]
    clinical = {v: {r["study"]: r for r in read_csv(runs / f"eval_{v}" / "clinical.csv")} for v in variants}
    for key, row_title in CLINICAL:
        for v, name in zip(variants, names):
            c = summaries[v]["clinical"][key]
            p = "–"
            if v != ref:
                studies = sorted(set(clinical[v]) & set(clinical[ref]))
                err = [abs(float(clinical[v][s][f"{key}_diff"])) for s in studies]
                err_ref = [abs(float(clinical[ref][s][f"{key}_diff"])) for s in studies]
                p = p_text(wilcoxon_p(err, err_ref))
            lines.append(
                f"| {row_title} | {name} | {c['pearson_r']:.3f} | {c['bias']:+.1f} | "
                f"{c['loa_low']:+.1f} to {c['loa_high']:+.1f} | {c['mae']:.1f} | {p} |"
            )
    lines.append("")

    lines += [
        "## Training cost (this repository's 2-core CPU, bf16 autocast)",
        "",
        "| | epochs | median s/epoch |",
        "|---|---|---|",
    ]
    for v, name in zip(variants, names):
        sec, epochs = epoch_seconds(runs / run_of(v))
        lines.append(f"| {name} | {epochs} | {sec:.1f} |")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path)
    ap.add_argument("--variants", nargs="+", default=["unet", "dmr"])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "cv" / "README.md")
    ap.add_argument("--results", type=Path, default=None,
                    help="where the evaluation files behind the table are copied (default: benchmarks/results/<the --out folder's name>)")
    ap.add_argument("--title", default=TITLE, help="the Markdown title line")
    ap.add_argument("--intro", default="", help="a paragraph put under the title (the recipe, the command)")
    args = ap.parse_args()
    text = build(args.runs, args.variants, args.title)
    if args.intro:
        title, rest = text.split("\n", 1)
        text = f"{title}\n\n{args.intro}\n{rest}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    results = args.results or Path(__file__).resolve().parent / "results" / args.out.parent.name
    for v in args.variants:  # the evaluation behind the table
        for name in ("summary.json", "metrics.csv", "clinical.csv"):
            dest = results / f"eval_{v}" / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(args.runs / f"eval_{v}" / name, dest)
    for v in args.variants[1:]:
        dest = results / f"eval_{v}_vs_{args.variants[0]}" / "compare.csv"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.runs / f"eval_{v}_vs_{args.variants[0]}" / "compare.csv", dest)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
