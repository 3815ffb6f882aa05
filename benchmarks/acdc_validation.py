"""Accuracy, agreement and speed of shipped weights on the held-out ACDC validation patients.

    python benchmarks/acdc_validation.py --out runs/acdc_validation [--weights NAME|PATH]

Reads ../shared/data/acdc (skips with a message when absent). The validation patients are the
ones recorded in the weights' own training metadata. For every ED/ES frame: native-resolution
3D Dice per label; per patient LV/RV EF and LV mass from the prediction vs the reference
labels; the median seconds per 3D frame with the model loaded; and how many voxels bf16
inference labels identically to fp32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "acdc"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return float("nan") if s == 0 else 2.0 * int((a & b).sum()) / s


def agreement(pred: list[float], ref: list[float]) -> dict[str, float]:
    p, r = np.array(pred), np.array(ref)
    d = p - r
    return {
        "pearson_r": float(np.corrcoef(p, r)[0, 1]),
        "bias": float(d.mean()),
        "loa_low": float(d.mean() - 1.96 * d.std(ddof=1)),
        "loa_high": float(d.mean() + 1.96 * d.std(ddof=1)),
        "mae": float(np.abs(d).mean()),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=None)
    ap.add_argument("--out", default="runs/acdc_validation")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--skip-fp32", action="store_true", help="skip the bf16-vs-fp32 agreement pass")
    args = ap.parse_args()
    data = Path(args.data)
    if not data.is_dir():
        print(f"no ACDC data at {data}; nothing to benchmark")
        return 0

    import torch

    from cardioseg.clinical import clinical_measures, frame_volumes
    from cardioseg.inference import PredictOptions, Predictor
    from cardioseg.io import read_info_cfg, read_volume
    from cardioseg.weights import load_weights

    weights = load_weights(args.weights)
    lm = weights.label_map
    patients = weights.meta["training"]["val_patients"]
    pred_bf16 = Predictor(weights, PredictOptions(device="cpu"))
    pred_fp32 = None if args.skip_fp32 else Predictor(weights, PredictOptions(device="cpu", precision="fp32"))
    rows, clin, seconds = [], [], []
    same = total = 0
    for name in patients:
        info = read_info_cfg(data / name / "Info.cfg")
        vols = {}
        for phase, number in (("ED", info.ed), ("ES", info.es)):
            stem = data / name / f"{name}_frame{number:02d}"
            img = read_volume(f"{stem}.nii.gz")
            ref = np.asarray(read_volume(f"{stem}_gt.nii.gz").data).astype(np.uint8)
            t0 = time.perf_counter()
            mask = pred_bf16.predict_frame(img.data, img.affine)
            seconds.append(time.perf_counter() - t0)
            if pred_fp32 is not None:
                m32 = pred_fp32.predict_frame(img.data, img.affine)
                same += int((m32 == mask).sum())
                total += mask.size
            row = {"patient": name, "group": info.group, "phase": phase}
            for label, k in lm.structures.items():
                row[f"dice_{label}"] = dice(mask == k, ref == k)
            rows.append(row)
            vols[phase] = (
                frame_volumes(mask, img.voxel_volume_ml, lm),
                frame_volumes(ref, img.voxel_volume_ml, lm),
            )
        p = clinical_measures(vols["ED"][0], vols["ES"][0])
        r = clinical_measures(vols["ED"][1], vols["ES"][1])
        clin.append({"patient": name, **{f"pred_{k}": p[k] for k in ("lv_ef_pct", "rv_ef_pct", "lv_mass_g", "lv_edv_ml", "lv_esv_ml")},
                     **{f"ref_{k}": r[k] for k in ("lv_ef_pct", "rv_ef_pct", "lv_mass_g", "lv_edv_ml", "lv_esv_ml")}})
        print(f"{name}: " + " ".join(f"{x['phase']} " + "/".join(f"{x[f'dice_{s}']:.3f}" for s in lm.structures) for x in rows[-2:]), flush=True)

    summary: dict[str, object] = {"weights": weights.name, "sha256": weights.file_sha256, "patients": patients}
    for phase in ("ED", "ES"):
        for label in lm.structures:
            summary[f"dice_{label}_{phase.lower()}"] = float(np.nanmean([r[f"dice_{label}"] for r in rows if r["phase"] == phase]))
    summary["dice_mean_3_structures"] = float(np.mean([np.nanmean([r[f"dice_{s}"] for r in rows]) for s in lm.structures]))
    for key in ("lv_ef_pct", "rv_ef_pct", "lv_mass_g", "lv_edv_ml", "lv_esv_ml"):
        summary[key] = agreement([c[f"pred_{key}"] for c in clin], [c[f"ref_{key}"] for c in clin])
    summary["seconds_per_frame_median"] = statistics.median(seconds)
    summary["precision"] = pred_bf16.precision
    summary["torch_threads"] = torch.get_num_threads()
    if total:
        summary["bf16_fp32_label_agreement_pct"] = 100.0 * same / total

    # wall time of one whole CLI process on an ED/ES pair
    name = patients[0]
    info = read_info_cfg(data / name / "Info.cfg")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "cardioseg", "predict", "--quiet", "-o", tmp,
               "--ed", str(data / name / f"{name}_frame{info.ed:02d}.nii.gz"),
               "--es", str(data / name / f"{name}_frame{info.es:02d}.nii.gz")]
        if args.weights:
            cmd += ["--weights", args.weights]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        summary["cli_pair_wall_s"] = time.perf_counter() - t0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "per_frame.json").write_text(json.dumps(rows, indent=1))
    (out / "clinical.json").write_text(json.dumps(clin, indent=1))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
