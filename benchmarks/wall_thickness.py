"""LV wall thickness on the ACDC patients: from the expert labels (``cardioseg measure``) by
group, and the agreement of the same numbers from predicted masks (a ``predict`` output
folder, e.g. the cross-validation predictions where every patient was segmented by a model
that never saw it).

    python benchmarks/wall_thickness.py ../shared/data/acdc --pred runs/cv100/pred_cur@crop160,anatomy,tta \\
        --out runs/wall   # (benchmarks/results/wall_thickness.json is its wall.json)

Writes ``OUT/expert/``, ``OUT/pred/`` (reports and summary.csv of both), ``OUT/wall.json`` and
prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np


def _by_study(results: list[Any]) -> dict[str, dict[str, Any]]:
    return {r.study.name: r.report for r in results if r.report}


def _agreement(a: list[float], b: list[float]) -> dict[str, float | int | None]:
    from cardioseg.metrics import agreement

    ag = agreement(a, b)
    return {"n": ag.n, "r": ag.pearson_r, "bias": ag.bias, "mae": ag.mae, "loa_low": ag.loa_low, "loa_high": ag.loa_high}


def main(argv: list[str] | None = None) -> int:
    import cardioseg

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("acdc", type=Path, help="ACDC root (patientNNN/ with Info.cfg and _gt masks)")
    parser.add_argument("--pred", type=Path, default=None, help="a predict output folder of the same patients")
    parser.add_argument("--out", type=Path, default=Path("runs/wall"))
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    expert = _by_study(cardioseg.measure(args.acdc, args.out / "expert"))
    seconds_expert = (time.perf_counter() - t0) / max(1, len(expert))
    groups: dict[str, list[float]] = {}
    for rep in expert.values():
        if rep.get("lv_max_wall_thickness_mm") is not None:
            groups.setdefault(rep["subject"]["group"] or "?", []).append(rep["lv_max_wall_thickness_mm"])
    out: dict[str, Any] = {
        "expert_seconds_per_study": seconds_expert,
        "by_group": {g: {"n": len(v), "median": statistics.median(v), "min": min(v), "max": max(v),
                         "n_ge_15mm": sum(x >= 15 for x in v)} for g, v in sorted(groups.items())},
        "missing": sorted(s for s, r in expert.items() if r.get("lv_max_wall_thickness_mm") is None),
    }
    print("| group | n | max wall thickness, median (range) mm | ≥ 15 mm |\n|---|---|---|---|")
    for g, d in out["by_group"].items():
        print(f"| {g} | {d['n']} | {d['median']:.1f} ({d['min']:.1f}–{d['max']:.1f}) | {d['n_ge_15mm']} |")
    print(f"\nexpert labels: {len(expert)} studies, {seconds_expert:.3f} s per study (measure, both frames)")

    if args.pred is not None:
        t0 = time.perf_counter()
        pred = _by_study(cardioseg.measure(args.pred, args.out / "pred"))
        out["pred_seconds_per_study"] = (time.perf_counter() - t0) / max(1, len(pred))
        both = sorted(set(expert) & set(pred))
        pairs = [(pred[s]["lv_max_wall_thickness_mm"], expert[s]["lv_max_wall_thickness_mm"]) for s in both]
        pairs = [(p, e) for p, e in pairs if p is not None and e is not None]
        out["max_thickness"] = _agreement([p for p, _ in pairs], [e for _, e in pairs])
        seg_p, seg_e = [], []
        for s in both:
            for phase in ("ed", "es"):
                a, b = pred[s][f"aha_wall_thickness_{phase}_mm"], expert[s][f"aha_wall_thickness_{phase}_mm"]
                for k in a:
                    if a[k] is not None and b.get(k) is not None:
                        seg_p.append(a[k])
                        seg_e.append(b[k])
        out["segments"] = _agreement(seg_p, seg_e)
        th_p, th_e = [], []
        for s in both:
            a, b = pred[s]["aha_thickening_pct"], expert[s]["aha_thickening_pct"]
            for k in a:
                if a[k] is not None and b.get(k) is not None and np.isfinite(a[k]) and np.isfinite(b[k]):
                    th_p.append(a[k])
                    th_e.append(b[k])
        out["thickening"] = _agreement(th_p, th_e)
        hcm = [s for s in both if expert[s]["subject"]["group"] == "HCM"]
        out["hcm_15mm_agreement"] = sum(
            (pred[s]["lv_max_wall_thickness_mm"] or 0) >= 15 for s in hcm if expert[s]["lv_max_wall_thickness_mm"] >= 15
        ), sum(expert[s]["lv_max_wall_thickness_mm"] >= 15 for s in hcm)
        print(f"\npredicted ({args.pred}) vs expert, {len(both)} patients:")
        print("| measure | n | r | bias | MAE |\n|---|---|---|---|---|")
        for key, label in (("max_thickness", "max wall thickness (mm)"), ("segments", "segment thickness ED+ES (mm)"),
                           ("thickening", "segment thickening (%)")):  # fmt: skip
            a = out[key]
            print(f"| {label} | {a['n']} | {a['r']:.3f} | {a['bias']:+.2f} | {a['mae']:.2f} |")
        print(f"HCM patients at ≥ 15 mm by the expert labels also ≥ 15 mm from the predictions: "
              f"{out['hcm_15mm_agreement'][0]} of {out['hcm_15mm_agreement'][1]}")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "wall.json").write_text(json.dumps(out, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
