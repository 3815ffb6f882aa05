"""``python -m cardioseg.demo``: write a synthetic cine, run ``cardioseg predict`` on it with
the shipped weights, and compare the result with the phantom's known truth."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo", help="folder for the phantom and the results")
    parser.add_argument("--weights", default=None, help="weights name or path (default: shipped)")
    args = parser.parse_args(argv)

    from cardioseg.clinical import clinical_measures, frame_volumes
    from cardioseg.labels import ACDC
    from cardioseg.phantom import make_phantom, write_phantom

    out = Path(args.out)
    paths = write_phantom(str(out), name="phantom")
    print(f"wrote a synthetic 4D cine: {paths['image']} (truth: {paths['labels']})")
    cmd = [sys.executable, "-m", "cardioseg", "predict", paths["image"], "-o", str(out / "predict")]
    if args.weights:
        cmd += ["--weights", args.weights]
    print("$ cardioseg " + " ".join(cmd[3:]), flush=True)
    rc = subprocess.call(cmd)
    if rc != 0:
        return rc

    import nibabel as nib

    ph = make_phantom()
    pred = np.asarray(nib.load(str(out / "predict" / "phantom_cine_seg.nii.gz")).dataobj)  # type: ignore[attr-defined]
    report = json.loads((out / "predict" / "phantom_cine_report.json").read_text())
    print("\nAgainst the phantom's known truth (all frames):")
    for name, k in ACDC.structures.items():
        a, b = pred == k, ph.labels == k
        print(f"  Dice {name:>3}: {2 * (a & b).sum() / max(1, a.sum() + b.sum()):.3f}")
    truth = clinical_measures(
        frame_volumes(ph.labels[..., ph.ed_frame], ph.voxel_volume_ml, ACDC),
        frame_volumes(ph.labels[..., ph.es_frame], ph.voxel_volume_ml, ACDC),
    )
    print(f"  ED/ES frame: predicted {report['ed_frame']}/{report['es_frame']}, true {ph.ed_frame}/{ph.es_frame}")
    for key in ("lv_edv_ml", "lv_esv_ml", "lv_ef_pct", "rv_ef_pct", "lv_mass_g"):
        p, t = report.get(key), truth[key]
        print(f"  {key:>10}: predicted {p if p is None else round(p, 1)}, true {t:.1f}")
    print(f"\nreport: {out / 'predict' / 'phantom_cine_report.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
