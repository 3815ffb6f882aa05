"""Accuracy, agreement and speed of shipped weights on the held-out ACDC validation patients.

    python benchmarks/acdc_validation.py --out runs/acdc_validation [--weights NAME|PATH]

Reads ../shared/data/acdc (skips with a message when absent). The validation patients are the
ones recorded in the weights' own training metadata. Every ED/ES frame is segmented with the
model loaded once (the median seconds per 3D frame are recorded) and written to OUT/pred;
the masks are then scored with the engine of ``cardioseg evaluate`` (OUT/eval: metrics.csv,
clinical.csv, summary.json). Also recorded: how many voxels bf16 inference labels identically
to fp32, and the wall time of one whole ``cardioseg predict`` process on an ED/ES pair.
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

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "acdc"


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

    from cardioseg.evaluation import EvaluateOptions, describe_cases, evaluate, pair_files, write_evaluation
    from cardioseg.inference import PredictOptions, Predictor
    from cardioseg.io import read_info_cfg, read_volume, write_mask
    from cardioseg.weights import load_weights

    weights = load_weights(args.weights)
    lm = weights.label_map
    patients = weights.meta["training"]["val_patients"]
    pred_bf16 = Predictor(weights, PredictOptions(device="cpu"))
    pred_fp32 = None if args.skip_fp32 else Predictor(weights, PredictOptions(device="cpu", precision="fp32"))
    seconds: list[float] = []
    same = total = 0
    pred_dir = Path(args.out) / "pred"
    for name in patients:
        info = read_info_cfg(data / name / "Info.cfg")
        for number in (info.ed, info.es):
            stem = f"{name}_frame{number:02d}"
            img = read_volume(data / name / f"{stem}.nii.gz")
            t0 = time.perf_counter()
            mask = pred_bf16.predict_frame(img.data, img.affine)
            seconds.append(time.perf_counter() - t0)
            write_mask(mask, img, pred_dir / f"{stem}_seg.nii.gz")
            if pred_fp32 is not None:
                m32 = pred_fp32.predict_frame(img.data, img.affine)
                same += int((m32 == mask).sum())
                total += mask.size
        print(f"{name}: segmented", flush=True)

    ev = evaluate(describe_cases(pair_files(pred_dir, data).cases), EvaluateOptions(lm, lm))
    write_evaluation(ev, Path(args.out) / "eval")
    by_phase = ev.summary["by_phase"]
    summary: dict[str, object] = {"weights": weights.name, "sha256": weights.file_sha256, "patients": patients}
    for phase in ("ED", "ES"):
        for label in lm.structures:
            for m in ("dice", "hd95_mm", "assd_mm"):
                summary[f"{m}_{label}_{phase.lower()}"] = by_phase[phase][label][m]["mean"]
    summary["dice_mean_3_structures"] = ev.summary["all"]["average"]["dice"]["mean"]
    for key in ("lv_ef_pct", "rv_ef_pct", "lv_mass_g", "lv_edv_ml", "lv_esv_ml"):
        summary[key] = ev.summary["clinical"][key]
    summary["seconds_per_frame_median"] = statistics.median(seconds)
    summary["precision"] = pred_bf16.precision
    summary["torch_threads"] = torch.get_num_threads()
    if total:
        summary["bf16_fp32_label_agreement_pct"] = 100.0 * same / total

    # wall time of one whole CLI process on an ED/ES pair
    name = patients[0]
    info = read_info_cfg(data / name / "Info.cfg")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "cardioseg",
            "predict",
            "--quiet",
            "-o",
            tmp,
            "--ed",
            str(data / name / f"{name}_frame{info.ed:02d}.nii.gz"),
            "--es",
            str(data / name / f"{name}_frame{info.es:02d}.nii.gz"),
        ]
        if args.weights:
            cmd += ["--weights", args.weights]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        summary["cli_pair_wall_s"] = time.perf_counter() - t0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
