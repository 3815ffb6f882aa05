"""Clean-up variants on cross-validated predictions, without running the network again.

    python benchmarks/cv_cleanup.py RUNS --run c128 [--folds 0 1] [--variants cap20 nocap cap0]

1. Every held-out patient's ED and ES frames segmented by the model of the fold that held it
   out (RUNS/RUN/foldK/*.pt), with the shipped inference (two stages, 128-pixel crop, rotations)
   and **no clean-up**: the raw labels go to RUNS/raw_RUN/<frame>.npz (resumable; the network
   runs once whatever the variants).
2. Each variant of ``cardioseg.postprocess.anatomical_clean_up`` applied to them, written as
   RUNS/pred_RUN_cleanup-<variant>/<frame>_seg.nii.gz (the image's own header) and scored by
   ``cardioseg evaluate`` into RUNS/eval_RUN_cleanup-<variant>; compare two with
   ``benchmarks/cv_paired.py``. Variants: ``cap<A>`` keeps apical caps of at least A mm2
   (``cap20``: the default), ``nocap`` drops them (the clean-up until 7 December 2026).

With the default variant the masks are those of ``cardioseg predict`` (checked: 200 of 200
frames identical to ``cv_evaluate.py``'s). docs/cv100/lcc.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def raw_labels(runs: Path, run: str, data: Path, folds: list[int] | None, threads: int) -> Path:
    """RUNS/raw_RUN/<patient>_frameNN.npz: argmax labels (no clean-up) and the frame's affine."""
    import numpy as np
    import torch
    from cv_evaluate import fold_weights

    from cardioseg.api import read_volume
    from cardioseg.inference import PredictOptions, Predictor, argmax_labels
    from cardioseg.io.layouts import read_info_cfg
    from cardioseg.stages import crop_centre
    from cardioseg.weights import load_weights

    torch.set_num_threads(threads)
    out = runs / f"raw_{run}"
    out.mkdir(exist_ok=True)
    for fold, path in fold_weights(runs / run).items():
        if folds is not None and fold not in folds:
            continue
        weights = load_weights(str(path))
        predictor = Predictor(weights, PredictOptions(device="cpu", crop_px=128, tta=True, clean_up="anatomy"))
        for pid in weights.meta["training"]["val_patients"]:
            info = read_info_cfg(data / pid / "Info.cfg")
            frames = [info.ed, info.es]
            if all((out / f"{pid}_frame{f:02d}.npz").is_file() for f in frames):
                continue
            volumes = [read_volume(data / pid / f"{pid}_frame{f:02d}.nii.gz") for f in frames]
            centre = crop_centre(predictor.localise(volumes[0].data, volumes[0].affine))  # as predict: on ED
            for f, v in zip(frames, volumes):
                raw = argmax_labels(predictor.native_probabilities(np.asarray(v.data), v.affine, centre))
                np.savez_compressed(out / f"{pid}_frame{f:02d}.npz", raw=raw, affine=v.affine)
        print(f"fold {fold}: raw labels in {out}", flush=True)
    return out


def clean_up(raw, affine, variant: str):  # type: ignore[no-untyped-def]
    import numpy as np

    from cardioseg.geometry import find_orientation
    from cardioseg.postprocess import anatomical_clean_up

    if variant == "nocap":
        cap = None
    elif variant.startswith("cap"):
        cap = float(variant[3:])
    else:
        raise SystemExit(f"unknown variant {variant!r}: cap<A> or nocap")
    spacing = tuple(float(s) for s in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))
    axis = find_orientation(np.asarray(affine)).perm[2]
    return anatomical_clean_up(raw, spacing, lv=3, myo=2, rv=1, slice_axis=axis, apical_cap_mm2=cap)  # type: ignore[arg-type]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path)
    ap.add_argument("--run", required=True)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "acdc")
    ap.add_argument("--folds", type=int, nargs="+", default=None)
    ap.add_argument("--variants", nargs="+", default=["cap20", "nocap"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"no ACDC data at {args.data}")
        return 0
    import nibabel as nib
    import numpy as np

    raw_dir = raw_labels(args.runs, args.run, args.data, args.folds, args.threads)
    for variant in args.variants:
        pred = args.runs / f"pred_{args.run}_cleanup-{variant}"
        pred.mkdir(exist_ok=True)
        for f in sorted(raw_dir.glob("*.npz")):
            saved = np.load(f)
            image = nib.load(args.data / f.stem.split("_")[0] / f"{f.stem}.nii.gz")
            labels = clean_up(saved["raw"], saved["affine"], variant).astype(np.uint8)
            nib.save(nib.Nifti1Image(labels, image.affine, image.header), pred / f"{f.stem}_seg.nii.gz")
        subprocess.run([sys.executable, "-m", "cardioseg", "evaluate", str(pred), str(args.data), "-o",
                        str(args.runs / f"eval_{args.run}_cleanup-{variant}"), "-q"], check=True)  # fmt: skip
        print(f"{variant}: {args.runs / f'eval_{args.run}_cleanup-{variant}'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
