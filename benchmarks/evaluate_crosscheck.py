"""Time ``cardioseg evaluate``'s engine on real masks and check every number against SimpleITK.

    python benchmarks/evaluate_crosscheck.py PRED_DIR [--data ../shared/data/acdc] [--out FILE.json]

PRED_DIR holds ``*_seg.nii.gz`` masks (e.g. from ``cardioseg predict``) for ACDC patients.
For every case and structure, SimpleITK computes independently (its own contour extraction,
its own distance maps, the header's anisotropic spacing):

- Dice and Jaccard with ``LabelOverlapMeasuresImageFilter``;
- HD and the mean of the two directed mean distances (the DMR paper's MSD) with
  ``HausdorffDistanceImageFilter`` on ``BinaryContour(fullyConnected=False)`` surfaces of the
  masks padded by one background voxel (SimpleITK does not treat the array border as outside;
  cardioseg does, and padding makes the two agree on what the surface is).

Prints the largest absolute disagreement of each and the evaluation's wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def sitk_metrics(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    import SimpleITK as sitk

    def image(mask: np.ndarray) -> sitk.Image:
        padded = np.pad(mask.astype(np.uint8), 1)
        img = sitk.GetImageFromArray(np.ascontiguousarray(padded.transpose(2, 1, 0)))  # numpy (x,y,z) -> sitk
        img.SetSpacing(spacing)
        return img

    a, b = image(pred), image(ref)
    out: dict[str, float] = {}
    if pred.any() or ref.any():
        overlap = sitk.LabelOverlapMeasuresImageFilter()
        overlap.Execute(b, a)
        out["dice"], out["jaccard"] = overlap.GetDiceCoefficient(), overlap.GetJaccardCoefficient()
    if pred.any() and ref.any():
        hd = sitk.HausdorffDistanceImageFilter()
        hd.Execute(sitk.BinaryContour(a, fullyConnected=False), sitk.BinaryContour(b, fullyConnected=False))
        out["hd_mm"], out["msd_mm"] = hd.GetHausdorffDistance(), hd.GetAverageHausdorffDistance()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("pred", type=Path)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "acdc")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"no ACDC data at {args.data}; nothing to check")
        return 0

    from cardioseg.evaluation import describe_cases, evaluate, pair_files
    from cardioseg.io import read_volume

    t0 = time.perf_counter()
    pairing = pair_files(args.pred, args.data)
    ev = evaluate(describe_cases(pairing.cases))
    seconds = time.perf_counter() - t0
    worst: dict[str, float] = {}
    compared = 0
    by_case = {r.case.key: r.case for r in ev.results}
    structures = {"rv": 1, "myo": 2, "lv": 3}
    loaded: dict[str, tuple] = {}  # the current case's masks, read once for its three structures
    for row in ev.rows:
        case = by_case[row["case"]]
        if case.key not in loaded:
            loaded.clear()
            ref_vol = read_volume(case.ref)
            loaded[case.key] = (np.asarray(read_volume(case.pred).data), np.asarray(ref_vol.data), ref_vol.spacing_mm)
        pred, ref, spacing = loaded[case.key]
        value = structures[row["label"]]
        theirs = sitk_metrics(pred == value, ref == value, spacing)
        for k, v in theirs.items():
            worst[k] = max(worst.get(k, 0.0), abs(float(row[k]) - v))
        compared += 1
    result = {
        "frames": ev.summary["n_frames"],
        "case_label_pairs_checked": compared,
        "evaluate_seconds": seconds,
        "seconds_per_frame": seconds / max(ev.summary["n_frames"], 1),
        "max_abs_difference_vs_simpleitk": worst,
        "errors": ev.summary["errors"],
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
