"""Where do the large Hausdorff distances come from?  For every structure-frame of a
cross-validated variant with HD above a limit, whether the farthest point is predicted
structure far from the reference (pred -> ref) or reference the prediction misses
(ref -> pred), and whether whole slices are predicted beyond the reference or missed.

    python benchmarks/hd_sources.py RUNS/eval_<variant> [--above 15]

Reads the variant's metrics.csv (``cardioseg evaluate``), and the masks it names.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def main() -> int:
    import nibabel as nib
    import numpy as np

    from cardioseg.metrics import surface_distances

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_dir", type=Path)
    ap.add_argument("--above", type=float, default=15.0)
    args = ap.parse_args()
    with (args.eval_dir / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["hd_mm"] not in ("", "inf", "nan") and float(r["hd_mm"]) > args.above]
    values = {"rv": 1, "myo": 2, "lv": 3}
    far = {s: [0, 0] for s in values}
    slices = {s: [0, 0] for s in values}
    for r in rows:
        pred, ref = nib.load(r["pred"]), nib.load(r["ref"])
        p = np.asarray(pred.dataobj) == values[r["label"]]
        g = np.asarray(ref.dataobj) == values[r["label"]]
        d = surface_distances(p, g, pred.header.get_zooms()[:3])
        far[r["label"]][0 if float(np.max(d.pred_to_ref_mm)) >= float(np.max(d.ref_to_pred_mm)) else 1] += 1
        zp, zg = set(np.nonzero(p.any(axis=(0, 1)))[0]), set(np.nonzero(g.any(axis=(0, 1)))[0])
        slices[r["label"]][0] += bool(zp - zg)
        slices[r["label"]][1] += bool(zg - zp)
    print(f"{len(rows)} structure-frames with HD > {args.above:g} mm")
    print("| structure | frames | farthest point predicted (pred -> ref) | farthest point missed (ref -> pred) "
          "| a slice predicted beyond the reference | a reference slice missed |\n|---|---|---|---|---|---|")  # fmt: skip
    for s in values:
        print(f"| {s} | {sum(far[s])} | {far[s][0]} | {far[s][1]} | {slices[s][0]} | {slices[s][1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
