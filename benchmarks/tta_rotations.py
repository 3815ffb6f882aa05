"""How many test-time rotations are worth their CPU time?  Cross-validated masks with a subset
of the four in-plane rotations (0/90/180/270 degrees), every ACDC patient segmented by the
fold model that held it out, with the rest of the shipped inference (160-px crop, anatomy
clean-up).

    OMP_NUM_THREADS=1 python benchmarks/tta_rotations.py runs/cv100/cur --rotations 0 2 --out runs/tta_rot
    cardioseg evaluate runs/tta_rot/pred_r02 ../shared/data/acdc -o runs/tta_rot/eval_r02 \\
        --compare "runs/cv100/pred_cur@crop160,anatomy,tta"

``--rotations``: quarter turns to average (``0 1 2 3`` is the shipped TTA, ``0`` none). An
experiment, not an option of ``cardioseg predict``: ``Predictor._probabilities`` is replaced
for the run. Resumable: patients with a report in the output are skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from cardioseg import inference

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from cv_evaluate import predict_held_out

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--rotations", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "acdc")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "tta_rot")
    args = ap.parse_args()
    turns = sorted(set(args.rotations))
    if turns[0] != 0:
        raise SystemExit("--rotations must include 0 (the image as it is)")
    out = args.out / ("pred_r" + "".join(map(str, turns)))

    def probabilities(self: Any, frames: Any, plane: tuple[int, ...]) -> np.ndarray:
        total = None
        for k in turns:
            turned = [np.ascontiguousarray(np.rot90(f, k, axes=(-2, -1))) for f in frames] if k else list(frames)
            probs = self._forward(turned, plane[::-1] if k % 2 else plane)
            probs = np.rot90(probs, -k, axes=(-2, -1)) if k else probs
            total = probs.copy() if total is None else total + probs
        return np.ascontiguousarray(total / len(turns))

    inference.Predictor._probabilities = probabilities  # type: ignore[method-assign]
    t_all, n_frames = predict_held_out(args.run, args.data, out, crop_px=160, tta=False, clean_up="anatomy")
    if n_frames:
        print(f"{n_frames} frames, {t_all / n_frames:.3f} s per frame (rotations {turns}, 1 thread)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
