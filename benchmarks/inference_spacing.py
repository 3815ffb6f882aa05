"""Does stage 2 segment better on a finer (or coarser) grid than the one the network trained on?
Cross-validated masks with stage 2's pixel size replaced, every ACDC patient segmented by the
fold model that held it out, with the rest of the shipped inference (128-px crop, rotations,
anatomy clean-up).

    OMP_NUM_THREADS=1 python benchmarks/inference_spacing.py runs/cv100/e120 --spacing 1.35 --out runs/spacing
    cardioseg evaluate runs/spacing/pred_s1.35 ../shared/data/acdc -o runs/spacing/eval_s1.35 \\
        --compare "runs/cv100/pred_e120@crop128,anatomy,tta"

Training scales every slice by a random 0.8-1.2, so a pixel of 1.5625 / 1.2 = 1.30 mm to
1.5625 / 0.8 = 1.95 mm shows the network hearts of sizes it has seen; a finer grid gives the
small end-systolic cavities more pixels at the same crop size (the crop then covers less: a
heart it cuts is segmented again on the whole grid, as always). Stage 1 and a frame segmented
again on the full field keep the weights' own grid. ``--phase ed`` (``es``) uses the new pixel size on
the first (second) frame of each patient only: ACDC's ED (ES). An experiment, not an option of
``cardioseg predict``: ``Predictor.to_model`` is replaced for the run. Resumable: patients with
a report in the output are skipped.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from cardioseg import inference
    from cardioseg.preprocess import image_to_model

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from cv_evaluate import predict_held_out

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--spacing", type=float, required=True, help="stage 2's pixel size in mm")
    ap.add_argument("--phase", choices=("all", "ed", "es"), default="all")
    ap.add_argument("--folds", type=int, nargs="*")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "acdc")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "spacing")
    args = ap.parse_args()
    out = args.out / f"pred_s{args.spacing:g}{'' if args.phase == 'all' else '_' + args.phase}"
    seen = {"frames": 0}

    def to_model(
        self: Any, frame: np.ndarray, affine: np.ndarray, centre: Any = None, crop_px: int | None = None
    ) -> Any:
        crop = self.crop_px if crop_px is None else crop_px
        if centre is None or crop <= 0:
            return image_to_model(frame, affine, self.config)
        seen["frames"] += 1
        es = seen["frames"] % 2 == 0  # ACDC order: ED, then ES
        finer = args.phase == "all" or (args.phase == "es") == es
        config = replace(self.config, fov_px=crop, spacing_mm=args.spacing if finer else self.config.spacing_mm)
        return image_to_model(frame, affine, config, centre)

    inference.Predictor.to_model = to_model  # type: ignore[method-assign]
    t_all, n_frames = predict_held_out(
        args.run, args.data, out, args.folds, lambda: seen.update(frames=0), crop_px=128, tta=True, clean_up="anatomy"
    )
    if n_frames:
        print(f"{n_frames} frames, {t_all / n_frames:.3f} s per frame (stage 2 at {args.spacing} mm, 1 thread)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
