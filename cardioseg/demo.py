"""``python -m cardioseg.demo`` (``make demo``): segment the real ACDC patient in ``samples/``
with the shipped weights, score the masks against its expert labels, and say whether that
patient was among the weights' training data. ``--phantom`` runs the synthetic 4D cine
instead (known truth, no real data needed)."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "acdc" / "patient066"
"""The shipped sample (a source checkout's ``samples/``; see ``samples/README.md``)."""


def _run(args: list[str]) -> int:
    print("$ cardioseg " + " ".join(args), flush=True)
    return subprocess.call([sys.executable, "-m", "cardioseg", *args])


def _training_patients(weights: str | None) -> tuple[str, list[str] | None]:
    """The weights' name and the patients they were trained on (None when they do not say)."""
    from cardioseg.weights import load_weights

    w = load_weights(weights)
    training: Any = w.meta.get("training") or {}
    patients = training.get("train_patients") if isinstance(training, dict) else None
    return str(w.meta.get("name")), list(patients) if isinstance(patients, list) else None


def real_sample(out: Path, weights: str | None, sample: Path = SAMPLE) -> int:
    """predict + evaluate on the real sample; prints the agreement with the expert."""
    if not (sample / "Info.cfg").is_file():
        print(f"the sample patient is not here ({sample}): run from a source checkout, or use --phantom", file=sys.stderr)
        return 1
    name, trained_on = _training_patients(weights)
    if trained_on is None:
        seen = "the weights do not list their training patients"
    elif sample.name in trained_on:
        seen = f"{sample.name} WAS among the {len(trained_on)} training patients of {name}: the scores below are optimistic"
    else:
        seen = f"{sample.name} was not among the {len(trained_on)} training patients of {name}"
    print(f"sample: {sample} (a real ACDC scan, expert labels beside it; {seen})")
    overlay = ["--overlay"] if _has_matplotlib() else []
    rc = _run(["predict", str(sample), "-o", str(out / "predict"), *overlay, *(["-w", weights] if weights else [])])
    if rc != 0:
        return rc
    rc = _run(["evaluate", str(out / "predict"), str(sample), "-o", str(out / "evaluate")])
    if rc != 0:
        return rc
    summary = json.loads((out / "evaluate" / "summary.json").read_text())
    clinical = {r["study"]: r for r in _read_csv(out / "evaluate" / "clinical.csv")}.get(sample.name, {})
    print("\nAgainst the expert's labels:")
    for phase, labels in summary["by_phase"].items():
        dice = " ".join(f"{k} {_num(m['dice']['mean'], '.3f')}" for k, m in labels.items() if k != "average")
        hd = " ".join(f"{k} {_num(m['hd_mm']['mean'], '.1f')}" for k, m in labels.items() if k != "average")
        print(f"  {phase}: Dice {dice}; Hausdorff (mm) {hd}")
    for key, unit in (("lv_ef_pct", "%"), ("rv_ef_pct", "%"), ("lv_edv_ml", " mL"), ("lv_mass_g", " g")):
        if key + "_pred" in clinical:
            p, r = float(clinical[key + "_pred"]), float(clinical[key + "_ref"])
            print(f"  {key:>10}: cardioseg {_num(p, '.1f')}{unit}, expert {_num(r, '.1f')}{unit} "
                  f"(difference {_num(p - r, '+.1f')})")  # fmt: skip
    report = out / "predict" / f"{sample.name}_report.json"
    print(f"\nreport: {report}" + (f"; overlay: {out / 'predict' / (sample.name + '_overlay.png')}" if overlay else ""))
    return 0


def phantom(out: Path, weights: str | None) -> int:
    """predict on a synthetic cine and compare with the phantom's known truth."""
    from cardioseg.clinical import clinical_measures, frame_volumes
    from cardioseg.labels import ACDC
    from cardioseg.phantom import make_phantom, write_phantom

    paths = write_phantom(str(out), name="phantom")
    print(f"wrote a synthetic 4D cine: {paths['image']} (truth: {paths['labels']})")
    rc = _run(["predict", paths["image"], "-o", str(out / "predict"), *(["-w", weights] if weights else [])])
    if rc != 0:
        return rc
    import nibabel as nib

    ph = make_phantom()
    pred = np.asarray(nib.load(str(out / "predict" / "phantom_cine_seg.nii.gz")).dataobj)  # type: ignore[attr-defined]
    report = json.loads((out / "predict" / "phantom_cine_report.json").read_text())
    print("\nAgainst the phantom's known truth (all frames; a synthetic image unlike any scan, so expect errors):")
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


def _num(v: float | None, spec: str) -> str:
    """A number for the text, ``-`` for a missing or NaN one (a structure that was not found)."""
    return "-" if v is None or math.isnan(v) else format(v, spec)


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo", help="folder for the results")
    parser.add_argument("--weights", default=None, help="weights name or path (default: shipped)")
    parser.add_argument("--phantom", action="store_true", help="the synthetic 4D cine instead of the real sample")
    args = parser.parse_args(argv)
    out = Path(args.out)
    return phantom(out, args.weights) if args.phantom else real_sample(out, args.weights)


if __name__ == "__main__":
    raise SystemExit(main())
