"""Robustness to another scanner's intensities, measured on held-out ACDC patients: each
patient's ED and ES frames are re-written with a gamma change and a smooth multiplicative
bias field (what other vendors and coils do to the same anatomy), then segmented by each
model given and scored against the unchanged expert labels.

    python benchmarks/intensity_shift.py --data ../shared/data/acdc --out runs/shift \\
        --models cur=runs/cv100/cur/fold0/dmr-unet2d-acdc-fold0.pt aug=runs/cv100/aug/fold0/dmr-unet2d-acdc-fold0.pt \\
        [--gammas 0.6 1.0 1.6] [--bias 0.4]

The patients are the validation patients recorded in the first model's weights (they must be
held out by every model). Writes OUT/<shift>/<model>/eval (``cardioseg evaluate``) and prints
mean Dice and LV/RV EF MAE per model and shift.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np


def shifted(image: np.ndarray, gamma: float, bias: float, seed: int) -> np.ndarray:
    """``image`` with intensities mapped through ``x ** gamma`` (on [0, 1] by the 99.5th
    percentile) and multiplied by a smooth in-plane field exp(bias * f), f in [-1, 1]."""
    x = np.asarray(image, dtype=np.float64)
    top = float(np.percentile(x, 99.5)) or 1.0
    y = np.clip(x / top, 0, None) ** gamma * top
    if bias > 0:
        rng = np.random.default_rng(seed)
        nx, ny = x.shape[:2]
        gx, gy = np.meshgrid(np.linspace(-1, 1, nx), np.linspace(-1, 1, ny), indexing="ij")
        a, b, c = rng.uniform(-1, 1, 3)
        field = a * gx + b * gy + c * gx * gy
        field /= max(float(np.abs(field).max()), 1e-6)
        y = y * np.exp(bias * field)[(...,) + (None,) * (x.ndim - 2)]
    return y.astype(np.float32)


def write_shifted_patient(src: Path, dst: Path, gamma: float, bias: float, seed: int) -> None:
    import nibabel as nib

    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "Info.cfg", dst / "Info.cfg")
    for f in sorted(src.glob("*_frame[0-9][0-9]*.nii.gz")):
        if f.name.endswith("_gt.nii.gz"):
            shutil.copy(f, dst / f.name)
            continue
        img = nib.load(f)
        out = nib.Nifti1Image(shifted(np.asarray(img.dataobj), gamma, bias, seed), img.affine, img.header)
        out.set_data_dtype(np.float32)
        nib.save(out, dst / f.name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/acdc"))
    ap.add_argument("--out", type=Path, default=Path("runs/shift"))
    ap.add_argument("--models", nargs="+", required=True, help="name=weights.pt ...")
    ap.add_argument("--gammas", type=float, nargs="+", default=[0.6, 1.0, 1.6])
    ap.add_argument("--bias", type=float, default=0.4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--predict-options", default="--crop-px 160 --tta --clean-up anatomy",
                    help="the same inference for every model (fold models recommend none)")
    args = ap.parse_args(argv)
    import torch

    models = dict(m.split("=", 1) for m in args.models)
    first = torch.load(next(iter(models.values())), map_location="cpu", weights_only=True)
    patients = first["training"]["val_patients"]
    cli = [sys.executable, "-m", "cardioseg"]
    table = []
    for gamma in args.gammas:
        bias = args.bias if gamma != 1.0 else 0.0
        shift = f"gamma{gamma:g}_bias{bias:g}"
        data = args.out / shift / "data"
        for k, p in enumerate(patients):
            if not (data / p).is_dir():
                write_shifted_patient(args.data / p, data / p, gamma, bias, seed=k)
        for name, weights in models.items():
            pred, ev = args.out / shift / name / "pred", args.out / shift / name / "eval"
            subprocess.run([*cli, "predict", *[str(data / p) for p in patients], "-o", str(pred), "-w", weights,
                            "--threads", str(args.threads), *args.predict_options.split(), "-q"], check=False)  # fmt: skip
            subprocess.run([*cli, "evaluate", str(pred), str(data), "-o", str(ev), "-q"], check=True)
            summary = json.loads((ev / "summary.json").read_text())
            dice = [summary["by_phase"][ph][s]["dice"]["mean"] for ph in ("ED", "ES") for s in ("rv", "myo", "lv")]
            clin = summary.get("clinical", {})
            mae = {k: (clin.get(k) or {}).get("mae") for k in ("lv_ef_pct", "rv_ef_pct")}
            table.append((shift, name, float(np.mean(dice)), mae["lv_ef_pct"], mae["rv_ef_pct"]))
            print(f"{shift:18s} {name:8s} mean Dice {np.mean(dice):.3f}  LV EF MAE {mae['lv_ef_pct']}  RV EF MAE {mae['rv_ef_pct']}")
    (args.out / "table.json").write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
