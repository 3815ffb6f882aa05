"""How much do the four test-time rotations agree, per structure, on the cross-validated ACDC
patients?  Raw material for choosing the ``low_tta_agreement`` detector (docs/cv100/qc.md).

    OMP_NUM_THREADS=1 python benchmarks/qc_agreement.py RUNS/cur [--data ../shared/data/acdc] [--out runs/qc_agreement]

Every patient is segmented by the fold model that held it out (RUN/fold*/<exported>.pt; the
patients from its metadata, ``meta["training"]["val_patients"]``) with the shipped inference,
``cardioseg.predict(..., crop_px=160, tta=True, clean_up="anatomy")`` on one CPU thread, so
the reports (OUT/pred/<patient>_report.json) carry today's QC flags. While it runs,
``cardioseg.inference.tta_agreement`` is wrapped to record, per ED/ES frame, the voxel counts
behind every agreement statistic: for each rotation r and structure c, |vote_r = c|,
|vote_r = c and combined = c|, and |combined = c| (model space, before the clean-up), whole
frame and per slice. One row per frame goes to OUT/agreement.csv (counts as JSON, plus the
derived per-structure mean / min Dice over rotations and the mean over rotations and
structures, the statistic of the former 0.955 limit); patients already there are skipped
(resumable). Then ``cardioseg evaluate OUT/pred DATA -o OUT/eval`` scores those masks, and

    python benchmarks/qc_agreement.py RUNS/cur --analyse OUT/eval/metrics.csv [--train-folds 0 1]

chooses each detector's threshold on the training folds (rules in :func:`choose`) and prints
recall and false flags there, on the other folds and on all, alone and with the other flags.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STRUCTURES = {1: "rv", 2: "myo", 3: "lv"}
COLUMNS = [
    "patient", "fold", "phase", "frame", "shipped_mean", "reported",
    *(f"{s}_{k}" for s in STRUCTURES.values() for k in ("mean", "min", "vol_cv")),
    "counts", "slice_counts", "qc_flags",
]  # fmt: skip


def frame_counts(votes: Sequence[np.ndarray], ref: np.ndarray) -> dict[str, Any]:
    """Voxel counts of one frame's votes (each (S, H, W) labels) against the combined labels."""
    whole: dict[str, Any] = {}
    per_slice: dict[str, Any] = {}
    for c, name in STRUCTURES.items():
        b = ref == c
        whole[name] = {"ref": int(b.sum()), "vote": [], "both": []}
        per_slice[name] = {"ref": b.sum(axis=(1, 2)).tolist(), "vote": [], "both": []}
        for v in votes:
            a = v == c
            whole[name]["vote"].append(int(a.sum()))
            whole[name]["both"].append(int((a & b).sum()))
            per_slice[name]["vote"].append(a.sum(axis=(1, 2)).tolist())
            per_slice[name]["both"].append((a & b).sum(axis=(1, 2)).tolist())
    return {"whole": whole, "slices": per_slice}


def dice_of(counts: dict[str, Any]) -> list[float]:
    """Per rotation, the Dice of one structure's counts (nan when absent from both)."""
    out = []
    for vote, both in zip(counts["vote"], counts["both"]):
        total = vote + counts["ref"]
        out.append(2.0 * both / total if total else math.nan)
    return out


def shipped_mean(whole: dict[str, Any]) -> float:
    """The shipped statistic (``tta_agreement`` as of its 0.955 limit): the mean over rotations
    and present structures."""
    scores = [d for name in STRUCTURES.values() for d in dice_of(whole[name]) if not math.isnan(d)]
    return float(np.mean(scores)) if scores else 1.0


def record(run: Path, data: Path, out: Path) -> int:
    import cardioseg
    from cardioseg import inference

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cv_evaluate import fold_weights

    out.mkdir(parents=True, exist_ok=True)
    table = out / "agreement.csv"
    done = set()
    if table.is_file():
        with open(table, newline="") as f:
            done = {r["patient"] for r in csv.DictReader(f)}
    captured: list[dict[str, Any]] = []
    original = inference.tta_agreement

    def recording(votes: Sequence[np.ndarray], combined: np.ndarray, frame_slices: Sequence[int]) -> Any:
        start = 0
        for n in frame_slices:
            captured.append(frame_counts([v[start : start + n] for v in votes], combined[start : start + n]))
            start += n
        return original(votes, combined, frame_slices)

    inference.tta_agreement = recording  # type: ignore[assignment]
    new = not table.is_file()
    with open(table, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        for k, weights in fold_weights(run).items():
            patients = [p for p in cardioseg.load_weights(str(weights)).meta["training"]["val_patients"] if p not in done]
            if not patients:
                continue
            predictor = cardioseg.load_predictor(
                str(weights), threads=1, device="cpu", crop_px=160, tta=True, clean_up="anatomy"
            )
            for p in patients:
                t0 = time.perf_counter()
                captured.clear()
                (result,) = cardioseg.predict(data / p, out / "pred", predictor=predictor, skip_existing=False)
                if result.error:
                    print(f"{p}: {result.error}", flush=True)
                    continue
                report = result.report
                reported = report["segmentation"]["tta_agreement"]
                if len(captured) != 2 or len(reported) != 2:
                    raise SystemExit(f"{p}: expected 2 frames, got {len(captured)} captured, {len(reported)} reported")
                for i, (phase, frame) in enumerate((("ED", report["ed_frame"]), ("ES", report["es_frame"]))):
                    whole = captured[i]["whole"]
                    row: dict[str, Any] = {
                        "patient": p, "fold": k, "phase": phase, "frame": frame,
                        "shipped_mean": round(shipped_mean(whole), 5), "reported": reported[i],
                        "counts": json.dumps(whole), "slice_counts": json.dumps(captured[i]["slices"]),
                        "qc_flags": " ".join(dict.fromkeys(report["qc_flags"])),
                    }  # fmt: skip
                    for name in STRUCTURES.values():
                        d = [x for x in dice_of(whole[name]) if not math.isnan(x)]
                        vols = np.asarray(whole[name]["vote"], dtype=float)
                        row[f"{name}_mean"] = round(float(np.mean(d)), 5) if d else ""
                        row[f"{name}_min"] = round(float(np.min(d)), 5) if d else ""
                        row[f"{name}_vol_cv"] = round(float(vols.std() / vols.mean()), 5) if vols.mean() > 0 else ""
                    writer.writerow(row)
                f.flush()
                print(f"fold {k} {p}: {reported} {time.perf_counter() - t0:.1f} s", flush=True)
    inference.tta_agreement = original  # type: ignore[assignment]
    return 0


def _worst(r: dict[str, str], key: str) -> float:
    return min(float(r[f"{s}_{key}"]) for s in STRUCTURES.values())


# name -> per-frame score from a CSV row (lower: the rotations agree less)
DETECTORS: dict[str, Any] = {
    "mean": lambda r: float(r["shipped_mean"]),  # over rotations and structures (the 0.955 limit's)
    "worst_structure": lambda r: _worst(r, "mean"),  # per structure the mean over rotations; the lowest
    "worst_rotation": lambda r: _worst(r, "min"),  # the lowest (rotation, structure) Dice
    "rv_only": lambda r: float(r["rv_mean"]),
    "volume_cv": lambda r: -max(float(r[f"{s}_vol_cv"]) for s in STRUCTURES.values()),  # a volume's spread
}


def worst_dice(metrics_csv: Path) -> dict[str, float]:
    """study -> its lowest structure Dice over ED and ES (structures absent from both left out)."""
    out: dict[str, float] = {}
    with open(metrics_csv, newline="") as f:
        for r in csv.DictReader(f):
            if r["label"] == "average" or r["dice"] in ("", "nan") or math.isnan(float(r["dice"])):
                continue
            out[r["study"]] = min(out.get(r["study"], math.inf), float(r["dice"]))
    return out


def choose(scores: dict[str, float], gross: set[str], rule: str, budget: float) -> float:
    """A threshold (flag below it) from the training studies' scores: "tight": midway between the
    highest-scoring failure and the next study above it; "budget": every failure flagged and as
    many good studies as ``budget`` (a fraction of them) allows, midway to the next study."""
    ordered = sorted(scores.items(), key=lambda kv: kv[1])
    last_failure = max(i for i, (p, _) in enumerate(ordered) if p in gross)
    stop = last_failure
    if rule == "budget":
        allowed = math.floor(budget * sum(p not in gross for p in scores) + 1e-9)
        flagged_good = sum(p not in gross for p, _ in ordered[: last_failure + 1])
        while stop + 1 < len(ordered) - 1 and flagged_good + 1 <= allowed:
            stop += 1
            flagged_good += 1
    if stop + 1 == len(ordered):  # the surest study is a failure: only flagging every study catches it
        return ordered[stop][1] + 1e-6
    return (ordered[stop][1] + ordered[stop + 1][1]) / 2


def analyse(out: Path, metrics_csv: Path, train_folds: list[int], threshold: float, budget: float) -> str:
    """Markdown: each detector's threshold chosen on ``train_folds`` by each rule, with its recall
    and false flags there, on the other folds and on all, alone and with the other QC flags."""
    from cardioseg.qc import QcLimits

    shipped = QcLimits().tta_agreement_min or 0.924  # of the worst structure's agreement (0.924: its limit while it was on)
    with open(out / "agreement.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    dice = worst_dice(metrics_csv)
    fold = {r["patient"]: int(r["fold"]) for r in rows}
    others = {r["patient"]: set(r["qc_flags"].split()) - {"low_tta_agreement"} for r in rows}
    patients = sorted(fold)
    gross = {p for p in patients if dice[p] < threshold}
    train = [p for p in patients if fold[p] in train_folds]
    held = [p for p in patients if fold[p] not in train_folds]

    def counts(flagged: set[str], ps: list[str], union: bool) -> str:
        hit = (lambda p: p in flagged or bool(others[p])) if union else (lambda p: p in flagged)
        g = [p for p in ps if p in gross]
        n = [p for p in ps if p not in gross]
        return f"{sum(map(hit, g))}/{len(g)}, {sum(map(hit, n))}/{len(n)}"

    held_name = "folds " + ", ".join(str(k) for k in sorted(set(fold.values()) - set(train_folds)))
    train_name = "folds " + ", ".join(map(str, train_folds))
    columns = [train_name, held_name, "all", f"{held_name}, union", "all, union", f"missed ({held_name})"]
    lines = [
        f"Gross failure: a structure Dice < {threshold:g} in ED or ES. Each cell: failures flagged / failures, "
        + 'good studies flagged / good studies; "union": with the other QC flags of the reports.',
        "",
        "| detector | threshold | chosen on | " + " | ".join(columns) + " |",
        "|---|---|---|" + "---|" * len(columns),
    ]
    good_flagged: list[str] = []
    for name, score in DETECTORS.items():
        per_study: dict[str, float] = {}
        for r in rows:
            per_study[r["patient"]] = min(per_study.get(r["patient"], math.inf), score(r))
        chosen = {"mean": [("former limit", 0.955)], "worst_structure": [("QcLimits", shipped)]}.get(name, [])
        for rule in ("tight", "budget"):
            chosen.append((rule, choose({p: per_study[p] for p in train}, gross, rule, budget)))
        for rule, t in chosen:
            flagged = {p for p in patients if per_study[p] < t}
            missed = ", ".join(p for p in held if p in gross and p not in flagged) or "-"
            if (name, rule) in (("mean", "former limit"), ("worst_structure", "QcLimits")):
                good = sorted((p for p in flagged if p not in gross), key=lambda p: dice[p])
                good_flagged.append(f"- {name} < {t:.4f} ({rule}): " + ", ".join(f"{p} {dice[p]:.2f}" for p in good))
            lines.append(
                f"| {name} | {t:.4f} | {rule} | {counts(flagged, train, False)} | {counts(flagged, held, False)} | "
                f"{counts(flagged, patients, False)} | {counts(flagged, held, True)} | {counts(flagged, patients, True)} | {missed} |"
            )  # fmt: skip
    flagged = {p for p in patients if others[p]}
    lines.append(f"| (other QC flags only) | | | {counts(flagged, train, False)} | {counts(flagged, held, False)} | "
                 f"{counts(flagged, patients, False)} | | | |")  # fmt: skip
    lines += ["", "Good studies flagged (all folds), with their worst structure Dice:", "", *good_flagged]
    others_good = sorted((p for p in patients if others[p] and p not in gross), key=lambda p: dice[p])
    lines.append("- other QC flags: " + ", ".join(f"{p} {dice[p]:.2f} ({' '.join(sorted(others[p]))})" for p in others_good))
    lines += ["", f"Sweep ({train_name} | {held_name} | all):", ""]
    for name, grid in (("mean", np.arange(0.940, 0.9651, 0.005)), ("worst_structure", np.arange(0.890, 0.9401, 0.005))):
        per_study = {}
        for r in rows:
            per_study[r["patient"]] = min(per_study.get(r["patient"], math.inf), DETECTORS[name](r))
        for t in grid:
            flagged = {p for p in patients if per_study[p] < t}
            cells = " | ".join(counts(flagged, ps, False) for ps in (train, held, patients))
            lines.append(f"- {name} < {t:.3f}: {cells}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path, help="a cross-validation run (RUN/fold*/), e.g. runs/cv100/cur")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "acdc")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "qc_agreement")
    ap.add_argument("--analyse", type=Path, default=None, metavar="METRICS_CSV",
                    help="instead of recording: the detectors' table against this Dice (cardioseg evaluate)")  # fmt: skip
    ap.add_argument("--train-folds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--threshold", type=float, default=0.70, help="gross failure: a structure Dice below this")
    ap.add_argument("--budget", type=float, default=0.15, help='"budget" rule: the false-flag rate allowed on the training folds')
    args = ap.parse_args()
    if args.analyse is not None:
        print(analyse(args.out, args.analyse, args.train_folds, args.threshold, args.budget))
        return 0
    return record(args.run, args.data, args.out)


if __name__ == "__main__":
    sys.exit(main())
