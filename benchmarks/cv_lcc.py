"""How far should the clean-up link a structure's pieces in adjacent slices?  Every ACDC patient
segmented by the fold model that held it out with the shipped inference (crop 128, rotations,
anatomy clean-up) and one in-plane linking reach (``PredictOptions.lcc_tolerance_mm``), then
scored by ``cardioseg evaluate`` against the variant of ``--compare``.

    python benchmarks/cv_lcc.py RUNS TOL [--compare "RUNS/pred_cur@crop128,anatomy,tta"] [--shift PX --folds 0] [--run RUN]

``--shift PX``: the same on copies of the held-out patients with every other slice rolled by +PX
and the others by -PX pixels in-plane (image and reference alike): slices misregistered against
each other, the case a linking reach exists for. Resumable (patients with a report are skipped).
``--class-weight C W``: an experiment, not an option of ``cardioseg predict``: class C's
probabilities multiplied by W before the argmax (``Predictor._grow_if_cut`` wrapped), to see
whether more RV in the slices the network misses lowers the Hausdorff distance (it did not).
Outputs RUNS/pred_lcc<TOL>[_shift<PX>][_w<C>_<W>] and the same eval_; docs/cv100/lcc.md.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def shifted_copy(src: Path, dst: Path, patients: list[str], px: int) -> None:
    """Copies of the patients' frames and references with alternate slices rolled by +/-px."""
    import nibabel as nib
    import numpy as np

    for p in patients:
        (dst / p).mkdir(parents=True, exist_ok=True)
        shutil.copy(src / p / "Info.cfg", dst / p / "Info.cfg")
        for f in (src / p).glob(f"{p}_frame[0-9][0-9]*.nii.gz"):
            if (dst / p / f.name).is_file():
                continue
            img = nib.load(f)
            a = np.asarray(img.dataobj)
            for z in range(a.shape[2]):
                a[:, :, z] = np.roll(a[:, :, z], px if z % 2 == 0 else -px, axis=0)
            nib.save(nib.Nifti1Image(a, img.affine, img.header), dst / p / f.name)


def main() -> int:
    import cardioseg
    from cardioseg.weights import load_weights

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from cv_evaluate import fold_weights

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path)
    ap.add_argument("tolerance_mm", type=float)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "acdc")
    ap.add_argument("--compare", type=Path, default=None)
    ap.add_argument("--shift", type=int, default=0)
    ap.add_argument("--folds", type=int, nargs="+", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--class-weight", nargs=2, type=float, default=None, metavar=("C", "W"))
    ap.add_argument("--run", default="cur", help="the fold models of RUNS/RUN (default cur); outputs named <RUN>_lcc<TOL> unless cur")
    args = ap.parse_args()
    name = ("" if args.run == "cur" else f"{args.run}_") + f"lcc{args.tolerance_mm:g}" + (f"_shift{args.shift}" if args.shift else "")
    if args.class_weight is not None:
        from cardioseg import inference

        cls, weight = int(args.class_weight[0]), args.class_weight[1]
        name += f"_w{cls}_{weight:g}"
        grow = inference.Predictor._grow_if_cut

        def weighted(self, *a, **k):  # type: ignore[no-untyped-def]
            space, probs = grow(self, *a, **k)
            probs = probs.copy()
            probs[:, cls] *= weight
            return space, probs

        inference.Predictor._grow_if_cut = weighted  # type: ignore[method-assign]
    out = args.runs / f"pred_{name}"
    data = args.data
    folds = {k: w for k, w in fold_weights(args.runs / args.run).items() if args.folds is None or k in args.folds}
    for w in folds.values():
        patients = load_weights(str(w)).meta["training"]["val_patients"]
        if args.shift:
            data = args.runs / f"data_shift{args.shift}"
            shifted_copy(args.data, data, patients, args.shift)
        todo = [data / p for p in patients if not (out / f"{p}_report.json").is_file()]
        if todo:
            cardioseg.predict(todo, out, weights=str(w), threads=args.threads, crop_px=128, tta=True,
                              clean_up="anatomy", lcc_tolerance_mm=args.tolerance_mm)  # fmt: skip
    cmd = [sys.executable, "-m", "cardioseg", "evaluate", str(out), str(data), "-o", str(args.runs / f"eval_{name}"), "-q"]
    if args.compare is not None:
        cmd += ["--compare", str(args.compare)]
    subprocess.run(cmd, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
