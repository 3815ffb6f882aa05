"""Score cross-validation runs with ``cardioseg evaluate``: every patient by its own fold's model.

    python benchmarks/cv_evaluate.py RUNS [--data ../shared/data/acdc] [--variants unet dmr]

For each variant in RUNS/<variant>/fold*/ with exported weights, the validation patients named
in each fold's weights are segmented by ``cardioseg predict --weights <that fold's .pt>``
into RUNS/pred_<variant>/; then ``cardioseg evaluate`` scores each variant (RUNS/eval_<variant>)
and the first variant against each other one with ``--compare`` (RUNS/eval_<a>_vs_<b>).
Folds missing from any variant are left out of every variant, so comparisons stay paired.
A variant "a+b" is the ensemble of runs a and b (``predict`` with each fold's weights of both,
majority vote): every model in it held out the same patients, so it is scored without leakage.
A variant "a@opt1,opt2" predicts with run a's weights and inference options (``INFERENCE``:
``cropN`` (crop128, crop112, ...) two-stage crops, ``anatomy`` clean-up, ``tta`` test-time rotations);
the options not named are passed explicitly off (full field, largest-component clean-up, no
TTA), whatever the current defaults or the weights' recommendation.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

# a run folder's training checkpoints (the rest of its *.pt is the exported weights)
CHECKPOINTS = ("last.pt", "best.pt", "shape_ae.pt")

ROOT = Path(__file__).resolve().parents[1]

INFERENCE: dict[str, list[str]] = {
    "crop128": ["--crop-px", "128"],
    "crop160": ["--crop-px", "160"],
    "anatomy": ["--clean-up", "anatomy"],
    "tta": ["--tta"],
}


def inference_args(variant: str) -> list[str]:
    """``cardioseg predict`` options of a variant ``run@opt1,opt2`` (none for a plain run)."""
    _, _, opts = variant.partition("@")
    args: list[str] = []
    chosen = [o for o in opts.split(",") if o]
    for opt in chosen:
        if re.fullmatch(r"crop\d+", opt):  # any crop size, e.g. crop112 (a multiple of 16)
            args += ["--crop-px", opt[4:]]
            continue
        if opt not in INFERENCE:
            raise SystemExit(f"unknown inference option {opt!r} in {variant!r}; choose from {', '.join(INFERENCE)}")
        args += INFERENCE[opt]
    # every other option explicit, so that a variant means the same whatever today's defaults
    if "anatomy" not in chosen:
        args += ["--clean-up", "largest"]
    if not any(o.startswith("crop") for o in chosen):
        args += ["--crop-px", "0"]
    if "tta" not in chosen:
        args += ["--no-tta"]
    return args


def fold_weights(run: Path) -> dict[int, Path]:
    out = {}
    for fold_dir in sorted(run.glob("fold*")):
        pts = [p for p in fold_dir.glob("*.pt") if p.name not in CHECKPOINTS]
        if pts:
            out[int(fold_dir.name[4:])] = pts[0]
    return out


def predict_held_out(
    run: Path, data: Path, out: Path, folds: list[int] | None = None, before_patient: Any = None, **options: Any
) -> tuple[float, int]:
    """Segment each fold's validation patients with that fold's weights of ``run`` in process
    (``cardioseg.load_predictor(weights, threads=1, device="cpu", **options)``) into ``out``;
    resumable (patients with a report are skipped). ``before_patient()`` runs before each one.
    Returns (seconds, frames) of the patients segmented (two frames each: ACDC's ED and ES)."""
    import time

    import cardioseg

    t_all, n_frames = 0.0, 0
    for k, weights in fold_weights(run).items():
        if folds and k not in folds:
            continue
        patients = cardioseg.load_weights(str(weights)).meta["training"]["val_patients"]
        todo = [p for p in patients if not (out / f"{p}_report.json").is_file()]
        if not todo:
            continue
        predictor = cardioseg.load_predictor(str(weights), threads=1, device="cpu", **options)
        for p in todo:
            if before_patient is not None:
                before_patient()
            t0 = time.perf_counter()
            (result,) = cardioseg.predict(data / p, out, predictor=predictor, skip_existing=False)
            dt = time.perf_counter() - t0
            t_all, n_frames = t_all + dt, n_frames + 2
            print(f"fold {k} {p}: {'error ' + result.error if result.error else 'ok'} {dt:.1f} s", flush=True)
    return t_all, n_frames


def variant_weights(runs: Path, variant: str) -> dict[int, list[Path]]:
    """fold -> weights of a run, or of every run of an ensemble variant "a+b" (folds they share)."""
    parts = [fold_weights(runs / v) for v in variant.partition("@")[0].split("+")]
    return {k: [w[k] for w in parts] for k in sorted(set.intersection(*(set(w) for w in parts)))}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "acdc")
    ap.add_argument("--variants", nargs="+", default=["unet", "dmr"])
    ap.add_argument("--threads", type=int, default=0, help="CPU threads of each cardioseg predict (0: its default)")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"no ACDC data at {args.data}")
        return 0
    from cardioseg.weights import load_weights

    cli = [sys.executable, "-m", "cardioseg"]
    weights = {v: variant_weights(args.runs, v) for v in args.variants}
    folds = sorted(set.intersection(*(set(w) for w in weights.values())))
    print(f"folds with every variant: {folds}")
    for v in args.variants:
        pred = args.runs / f"pred_{v}"
        for k in folds:
            patients = load_weights(str(weights[v][k][0])).meta["training"]["val_patients"]
            missing = [p for p in patients if not (pred / f"{p}_report.json").is_file()]
            if missing:
                models = [a for w in weights[v][k] for a in ("--weights", str(w))]
                subprocess.run([*cli, "predict", *(str(args.data / p) for p in missing), "-o", str(pred),
                                *models, *inference_args(v), "--threads", str(args.threads), "-q"], check=True)  # fmt: skip
        keep = {p for k in folds for p in load_weights(str(weights[v][k][0])).meta["training"]["val_patients"]}
        for f in pred.glob("*_seg.nii.gz"):  # a fold dropped since: keep the comparison paired
            if f.name.split("_")[0] not in keep:
                f.unlink()
        subprocess.run(
            [*cli, "evaluate", str(pred), str(args.data), "-o", str(args.runs / f"eval_{v}"), "-q"], check=True
        )
    a = args.variants[0]
    for b in args.variants[1:]:
        subprocess.run([*cli, "evaluate", str(args.runs / f"pred_{b}"), str(args.data), "-o",
                        str(args.runs / f"eval_{b}_vs_{a}"), "--compare", str(args.runs / f"pred_{a}")], check=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
