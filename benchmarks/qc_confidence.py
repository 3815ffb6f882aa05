"""Can one network pass say when its own segmentation failed?  A QC signal for ``--no-tta``
(the fast path of fp32-only CPUs), where the rotations' agreement (``low_tta_agreement``) is
not there. Raw material, as ``qc_agreement.py`` is for the rotations.

    OMP_NUM_THREADS=1 python benchmarks/qc_confidence.py RUNS/cur [--data ../shared/data/acdc] [--out runs/qc_confidence]

Every ED/ES frame of the 100 ACDC patients is segmented by the fold model that held it out
(RUN/fold*/<exported>.pt), as ``cardioseg predict --no-tta`` does it (the weights' crop, stage 1
then stage 2), and from stage 2's model-space softmax probabilities p (before the clean-up) it
records, per structure c with predicted mask y = argmax == c:

- ``<c>_soft``: the soft Dice of p_c against y, 2 sum(p_c y) / (sum p_c + sum y): 1 when the
  network is certain of every pixel of and around the structure (an "expected Dice");
- ``<c>_unsure``: the voxels with 0.2 < p_c < 0.8 per voxel of y (the uncertain rim's width).

One row per frame in OUT/confidence.csv (resumable: patients already there are skipped). Then

    python benchmarks/qc_confidence.py RUNS/cur --analyse EVAL/metrics.csv [--train-folds 0 1]

chooses each detector's threshold on the training folds (``qc_agreement.choose``) and prints
recall of the gross failures (a structure Dice < 0.70) and false flags on the other folds.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STRUCTURES = {1: "rv", 2: "myo", 3: "lv"}
COLUMNS = ["patient", "fold", "phase", *(f"{s}_{k}" for s in STRUCTURES.values() for k in ("soft", "unsure", "px"))]


def frame_confidence(probs: np.ndarray) -> dict[str, float]:
    """(S, C, H, W) softmax probabilities -> the row's per-structure statistics (nan: absent)."""
    labels = probs.argmax(axis=1)
    row: dict[str, float] = {}
    for c, name in STRUCTURES.items():
        y = labels == c
        p = probs[:, c]
        n = int(y.sum())
        row[f"{name}_px"] = n
        if n == 0:
            row[f"{name}_soft"] = math.nan
            row[f"{name}_unsure"] = math.nan
            continue
        row[f"{name}_soft"] = round(float(2.0 * p[y].sum() / (p.sum() + n)), 5)
        row[f"{name}_unsure"] = round(float(((p > 0.2) & (p < 0.8)).sum() / n), 5)
    return row


def record(run: Path, data: Path, out: Path) -> int:
    import nibabel as nib

    import cardioseg
    from cardioseg.io.layouts import read_info_cfg
    from cardioseg.stages import crop_centre

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cv_evaluate import fold_weights

    out.mkdir(parents=True, exist_ok=True)
    table = out / "confidence.csv"
    done = set()
    if table.is_file():
        with open(table, newline="") as f:
            done = {r["patient"] for r in csv.DictReader(f)}
    new = not table.is_file()
    with open(table, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        for k, weights in fold_weights(run).items():
            patients = [p for p in cardioseg.load_weights(str(weights)).meta["training"]["val_patients"] if p not in done]
            if not patients:
                continue
            predictor = cardioseg.load_predictor(str(weights), threads=1, device="cpu", tta=False)
            for p in patients:
                t0 = time.perf_counter()
                info = read_info_cfg(data / p / "Info.cfg")
                for phase, number in (("ED", info.ed), ("ES", info.es)):
                    img = nib.load(data / p / f"{p}_frame{number:02d}.nii.gz")
                    frame, affine = np.asarray(img.dataobj, dtype=np.float32), img.affine
                    centre = crop_centre(predictor.localise(frame, affine))
                    _, probs = predictor.model_probabilities(frame, affine, centre)
                    writer.writerow({"patient": p, "fold": k, "phase": phase, **frame_confidence(probs)})
                f.flush()
                print(f"fold {k} {p}: {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


def _worst(r: dict[str, str], key: str, sign: float) -> float:
    values = [sign * float(r[f"{s}_{key}"]) for s in STRUCTURES.values() if r[f"{s}_{key}"] not in ("", "nan")]
    return min(values) if values else 1.0


DETECTORS = {
    "worst_soft_dice": lambda r: _worst(r, "soft", 1.0),
    "worst_unsure": lambda r: _worst(r, "unsure", -1.0),
    "rv_soft_dice": lambda r: float(r["rv_soft"]) if r["rv_soft"] not in ("", "nan") else 1.0,
}


def analyse(out: Path, metrics_csv: Path, train_folds: list[int], threshold: float, budget: float) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from qc_agreement import choose, worst_dice

    with open(out / "confidence.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    dice = worst_dice(metrics_csv)
    fold = {r["patient"]: int(r["fold"]) for r in rows}
    patients = sorted(p for p in fold if p in dice)
    gross = {p for p in patients if dice[p] < threshold}
    lines = [f"{len(patients)} patients, {len(gross)} gross failures (a structure Dice < {threshold}): {' '.join(sorted(gross))}",
             "| detector | rule | threshold | training folds | other folds | all | missed (other folds) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, score in DETECTORS.items():
        per: dict[str, float] = {}
        for r in rows:
            per[r["patient"]] = min(per.get(r["patient"], math.inf), score(r))
        train = {p: per[p] for p in patients if fold[p] in train_folds}
        test = [p for p in patients if fold[p] not in train_folds]

        def cell(ps: list[str], t: float, per: dict[str, float] = per) -> str:
            g = [p for p in ps if p in gross]
            ok = [p for p in ps if p not in gross]
            return f"{sum(per[p] < t for p in g)}/{len(g)}, {sum(per[p] < t for p in ok)}/{len(ok)}"

        for rule in ("tight", "budget"):
            t = choose(train, gross & set(train), rule, budget)
            missed = " ".join(p for p in test if p in gross and per[p] >= t) or "-"
            lines.append(f"| {name} | {rule} | {t:.4f} | {cell(sorted(train), t)} | {cell(test, t)} | {cell(patients, t)} | {missed} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "acdc")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "qc_confidence")
    ap.add_argument("--analyse", type=Path, metavar="METRICS_CSV")
    ap.add_argument("--train-folds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--threshold", type=float, default=0.70)
    ap.add_argument("--budget", type=float, default=0.15)
    args = ap.parse_args()
    if args.analyse:
        print(analyse(args.out, args.analyse, args.train_folds, args.threshold, args.budget))
        return 0
    if not args.data.is_dir():
        print(f"no ACDC data at {args.data}")
        return 0
    return record(args.run, args.data, args.out)


if __name__ == "__main__":
    sys.exit(main())
