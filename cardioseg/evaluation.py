"""``cardioseg evaluate``: predicted masks vs reference masks -> metrics tables.

The flow is: find files -> pair them by name -> attach phase/study/group -> evaluate each case
(every metric of ``cardioseg.metrics`` per label, plus apical/mid/basal Dice) -> summarise per
label and phase, per group -> clinical agreement per study with ED and ES -> (optionally) paired
Wilcoxon tests against a second method -> write ``metrics.csv``, ``summary.json``,
``clinical.csv``, ``compare.csv``.

A case that cannot be evaluated (unreadable file, shape or affine mismatch, values outside the
label map) is recorded as an error; the other cases go on.

Name matching: a file's *key* is its name without ``.nii[.gz]`` and without the side's suffix
(``X_seg.nii.gz`` and ``X_gt.nii.gz`` both have key ``X``). Each side has a list of candidate
suffixes; the first one that any file of that side ends with is the side's convention, and
only files with that suffix count (so the images next to ``_gt`` labels in an ACDC folder are
not mistaken for references). Folders are searched recursively; hidden files are ignored.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cardioseg.clinical import DEFAULT_MYO_DENSITY, FrameVolumes, clinical_measures, frame_volumes
from cardioseg.errors import CardiosegError, ConfigError, InputFileNotFoundError
from cardioseg.io import IMAGE_SUFFIXES, read_info_cfg, read_volume, strip_image_suffix, write_text_atomic
from cardioseg.labels import ACDC, LabelMap
from cardioseg.metrics import REGIONS, agreement, dice, jaccard, slice_regions, surface_distances, wilcoxon_p
from cardioseg.report import json_safe

PRED_SUFFIXES: tuple[str, ...] = ("_seg", "_pred", "")
REF_SUFFIXES: tuple[str, ...] = ("_gt", "_seg", "_label", "")

#: per-label metric columns of metrics.csv, in order (distances in mm, volumes in mL)
METRICS: tuple[str, ...] = (
    "dice", "jaccard", "hd_mm", "hd95_mm", "assd_mm", "msd_mm",
    "mean_pred_to_ref_mm", "mean_ref_to_pred_mm", "vol_pred_ml", "vol_ref_ml", "vol_diff_ml",
    *(f"dice_{r}" for r in REGIONS),
)  # fmt: skip
CASE_COLUMNS: tuple[str, ...] = ("case", "frame", "study", "phase", "group", "label", "value", "pred", "ref")
#: the metrics compared between two methods (Wilcoxon) and shown in the table
COMPARED: tuple[str, ...] = ("dice", "jaccard", "hd_mm", "hd95_mm", "assd_mm", "msd_mm")
CLINICAL_KEYS: tuple[str, ...] = (
    "lv_edv_ml", "lv_esv_ml", "lv_sv_ml", "lv_ef_pct",
    "rv_edv_ml", "rv_esv_ml", "rv_sv_ml", "rv_ef_pct", "lv_mass_g",
)  # fmt: skip
AVERAGE = "average"  # pseudo-label: per case, the mean over the three structures


# ---------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """A prediction file and its reference, with what is known about them."""

    key: str
    pred: Path
    ref: Path
    study: str | None = None  # cases of one study (ED + ES) form a clinical pair
    phase: str | None = None  # "ED" | "ES" | None (for a 4D pair: decided per frame)
    group: str | None = None  # pathology group, e.g. from Info.cfg
    ed_frame: int | None = None  # 0-based ED/ES frames of a 4D pair, when known
    es_frame: int | None = None


@dataclass(frozen=True)
class Pairing:
    cases: list[Case]
    unmatched_pred: list[Path]
    unmatched_ref: list[Path]


def _image_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = []
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).parts
        if any(part.startswith(".") for part in rel) or not p.is_file():
            continue
        if p.name.lower().endswith(IMAGE_SUFFIXES):
            files.append(p)
    return files


def _keyed(files: list[Path], suffixes: Sequence[str], side: str) -> dict[str, Path]:
    """Key -> file for one side, keeping only the files of the side's suffix convention."""
    stems = [(strip_image_suffix(f.name), f) for f in files]
    for suffix in suffixes:
        chosen = [(s[: len(s) - len(suffix)] if suffix else s, f) for s, f in stems if s.endswith(suffix) and s != suffix]
        if chosen:
            break
    else:
        return {}
    keyed: dict[str, Path] = {}
    for key, f in chosen:
        if key in keyed:
            raise ConfigError(f'two {side} files have the name "{key}": "{keyed[key]}" and "{f}"')
        keyed[key] = f
    return keyed


def pair_files(
    pred: Path,
    ref: Path,
    pred_suffixes: Sequence[str] = PRED_SUFFIXES,
    ref_suffixes: Sequence[str] = REF_SUFFIXES,
) -> Pairing:
    """Match prediction files to reference files by key (see the module docstring).

    A pair of single files is matched whatever their names.
    """
    for p in (pred, ref):
        if not p.exists():
            raise InputFileNotFoundError(f'File not found: "{p}"')
    if pred.is_file() and ref.is_file():
        key = next(iter(_keyed([pred], pred_suffixes, "prediction")), strip_image_suffix(pred.name))
        return Pairing([Case(key, pred, ref)], [], [])
    if pred.is_file() != ref.is_file():
        raise ConfigError("give two files or two folders (PRED and REF are one of each)")
    preds = _keyed(_image_files(pred), pred_suffixes, "prediction")
    refs = _keyed(_image_files(ref), ref_suffixes, "reference")
    if not preds:
        raise InputFileNotFoundError(f'no NIfTI masks found in "{pred}"')
    if not refs:
        raise InputFileNotFoundError(f'no NIfTI masks found in "{ref}"')
    cases = [Case(k, preds[k], refs[k]) for k in sorted(preds.keys() & refs.keys())]
    if not cases:
        raise ConfigError(
            f'no prediction in "{pred}" has a reference in "{ref}" with the same name '
            f"(e.g. {next(iter(sorted(preds)))!r}); check --pred-suffix/--ref-suffix"
        )
    return Pairing(
        cases,
        [preds[k] for k in sorted(preds.keys() - refs.keys())],
        [refs[k] for k in sorted(refs.keys() - preds.keys())],
    )


_FRAME_NUMBER = re.compile(r"^(?P<study>.+?)[_\-.]?frame(?P<n>\d+)$", re.IGNORECASE)
_PHASE_SUFFIX = re.compile(r"^(?P<study>.+?)[_\-.](?P<phase>ED|ES)$", re.IGNORECASE)


def read_pairs_csv(path: Path) -> dict[str, tuple[str, str, str | None]]:
    """``--pairs FILE.csv``: columns ``study,ed,es`` (case keys) and optionally ``group``.

    Returns case key -> (study, phase, group).
    """
    if not path.is_file():
        raise InputFileNotFoundError(f'File not found: "{path}"')
    out: dict[str, tuple[str, str, str | None]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"study", "ed", "es"} - set(reader.fieldnames or [])
        if missing:
            raise ConfigError(f'{path}: needs the columns study, ed, es (missing: {", ".join(sorted(missing))})')
        for row in reader:
            group = (row.get("group") or "").strip() or None
            for phase in ("ed", "es"):
                key = strip_image_suffix((row[phase] or "").strip())
                if key:
                    out[key] = (row["study"].strip(), phase.upper(), group)
    return out


def describe_cases(cases: Iterable[Case], pairs: dict[str, tuple[str, str, str | None]] | None = None) -> list[Case]:
    """Attach study, phase and group to each case.

    In order of precedence: ``pairs`` (from ``--pairs``); an ACDC ``Info.cfg`` beside the
    reference (``..._frameNN`` keys; for a 4D reference its ED/ES frame numbers); a key ending in
    ``_ED``/``_ES``. Otherwise the case has no phase and takes no part in clinical agreement.
    """
    out = []
    infos: dict[Path, Any] = {}
    for c in cases:
        if pairs and c.key in pairs:
            study, phase, group = pairs[c.key]
            out.append(replace(c, study=study, phase=phase, group=group))
            continue
        info_path = c.ref.parent / "Info.cfg"
        if info_path not in infos and info_path.is_file():
            infos[info_path] = read_info_cfg(info_path)  # once per folder (ED and ES share it)
        if info_path in infos:
            info = infos[info_path]
            m = _FRAME_NUMBER.match(c.key)
            phase = None
            if m:
                n = int(m.group("n"))
                phase = "ED" if n == info.ed else "ES" if n == info.es else None
            study = c.ref.parent.name if c.key.startswith(c.ref.parent.name) else (m.group("study") if m else c.key)
            out.append(
                replace(
                    c, study=study, phase=phase, group=info.group,
                    ed_frame=info.ed - 1 if info.ed else None, es_frame=info.es - 1 if info.es else None,
                )
            )  # fmt: skip
            continue
        m = _PHASE_SUFFIX.match(c.key)
        if m:
            out.append(replace(c, study=m.group("study"), phase=m.group("phase").upper()))
        else:
            out.append(replace(c, study=c.key))
    return out


# ---------------------------------------------------------------------------- one case


@dataclass(frozen=True)
class EvaluateOptions:
    pred_labels: LabelMap = ACDC  # label values in the predictions
    ref_labels: LabelMap = ACDC  # label values in the references
    regional: bool = True  # apical/mid/basal Dice
    affine_tol_mm: float = 1e-3  # largest tolerated difference between the two affines' entries


@dataclass
class FrameResult:
    """Metrics of one 3D frame of a case: a row per structure plus its volumes."""

    frame: int | None  # None for a 3D case
    phase: str | None
    rows: list[dict[str, Any]]
    pred_volumes: FrameVolumes
    ref_volumes: FrameVolumes


@dataclass
class CaseResult:
    case: Case
    frames: list[FrameResult] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


def _labels_array(data: np.ndarray, lm: LabelMap, path: Path) -> np.ndarray:
    arr = np.asarray(data)
    if not np.issubdtype(arr.dtype, np.integer) and (
        not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr))
    ):
        raise CardiosegError(f'"{path}" is not a label map (it has non-integer values)')
    values = set(np.unique(arr).astype(np.int64).tolist())
    unknown = values - set(lm.as_dict().values())
    if unknown:
        raise CardiosegError(
            f'"{path}" has label values {sorted(unknown)} outside the {lm.name} label map '
            f"{lm.as_dict()}; choose the right --labels/--ref-labels"
        )
    return arr.astype(np.uint8, copy=False)


def _frame_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], volumes: tuple[FrameVolumes, FrameVolumes],
    slice_axis: int, options: EvaluateOptions,
) -> list[dict[str, Any]]:
    pl, rl = options.pred_labels.structures, options.ref_labels.structures
    regions = None
    if options.regional:
        regions = slice_regions(ref, slice_axis, apex_values=[rl["myo"], rl["lv"]])
    rows = []
    for name in pl:
        a, b = pred == pl[name], ref == rl[name]
        sd = surface_distances(a, b, spacing)
        va, vb = (getattr(v, f"{name}_ml") for v in volumes)
        row: dict[str, Any] = {
            "label": name, "value": pl[name],
            "dice": dice(a, b), "jaccard": jaccard(a, b),
            "hd_mm": sd.hd_mm, "hd95_mm": sd.hd95_mm, "assd_mm": sd.assd_mm, "msd_mm": sd.msd_mm,
            "mean_pred_to_ref_mm": sd.mean_pred_to_ref_mm, "mean_ref_to_pred_mm": sd.mean_ref_to_pred_mm,
            "vol_pred_ml": va, "vol_ref_ml": vb, "vol_diff_ml": va - vb,
        }  # fmt: skip
        for region in REGIONS:
            if regions is None:
                row[f"dice_{region}"] = float("nan")
                continue
            index = [slice(None)] * a.ndim
            index[slice_axis] = np.flatnonzero(regions == region)  # type: ignore[call-overload]
            row[f"dice_{region}"] = dice(a[tuple(index)], b[tuple(index)])
        rows.append(row)
    return rows


def evaluate_case(case: Case, options: EvaluateOptions = EvaluateOptions()) -> CaseResult:
    """Every metric for every structure of one case; errors are caught into the result."""
    from cardioseg.geometry import find_orientation

    t0 = time.perf_counter()
    result = CaseResult(case)
    try:
        pv, rv = read_volume(case.pred), read_volume(case.ref)
        if pv.data.shape != rv.data.shape:
            raise CardiosegError(f"shape {pv.data.shape} of the prediction != {rv.data.shape} of the reference")
        diff = float(np.abs(pv.affine - rv.affine).max())
        if diff > options.affine_tol_mm:
            raise CardiosegError(
                f"the prediction's affine differs from the reference's (by up to {diff:.3g} mm): "
                "not the same voxel grid"
            )
        pred = _labels_array(pv.data, options.pred_labels, case.pred)
        ref = _labels_array(rv.data, options.ref_labels, case.ref)
        spacing = rv.spacing_mm
        slice_axis = find_orientation(rv.affine).perm[2]
        voxel_ml = rv.voxel_volume_ml
        if ref.ndim == 3:
            frames: list[tuple[int | None, np.ndarray, np.ndarray]] = [(None, pred, ref)]
        else:  # a 4D pair: the frames the reference labels
            frames = [(t, pred[..., t], ref[..., t]) for t in range(ref.shape[3]) if ref[..., t].any()]
            if not frames:
                raise CardiosegError("the 4D reference labels no frame")
        phases = _phases_4d(case, frames, voxel_ml, options) if ref.ndim == 4 else {None: case.phase}
        for t, p, r in frames:
            volumes = frame_volumes(p, voxel_ml, options.pred_labels), frame_volumes(r, voxel_ml, options.ref_labels)
            rows = _frame_metrics(p, r, spacing, volumes, slice_axis, options)
            result.frames.append(FrameResult(t, phases.get(t), rows, *volumes))
    except CardiosegError as exc:
        result.error = str(exc)
        result.frames = []
    result.seconds = time.perf_counter() - t0
    return result


def _phases_4d(case: Case, frames: list, voxel_ml: float, options: EvaluateOptions) -> dict[int | None, str]:
    """ED/ES of a 4D pair: the case's known frames, else the two labelled frames by LV volume."""
    if case.ed_frame is not None or case.es_frame is not None:
        return {t: "ED" if t == case.ed_frame else "ES" for t, _, _ in frames if t in (case.ed_frame, case.es_frame)}
    if len(frames) == 2:
        lv = [frame_volumes(r, voxel_ml, options.ref_labels).lv_ml for _, _, r in frames]
        if lv[0] != lv[1]:
            big, small = (0, 1) if lv[0] > lv[1] else (1, 0)
            return {frames[big][0]: "ED", frames[small][0]: "ES"}
    return {}


# ---------------------------------------------------------------------------- summaries


def metric_rows(results: Iterable[CaseResult]) -> list[dict[str, Any]]:
    """One flat row per case, frame and structure (the rows of ``metrics.csv``)."""
    rows = []
    for res in results:
        c = res.case
        for fr in res.frames:
            for r in fr.rows:
                rows.append(
                    {"case": c.key, "frame": fr.frame, "study": c.study, "phase": fr.phase, "group": c.group,
                     "pred": str(c.pred), "ref": str(c.ref), **r}
                )  # fmt: skip
    return rows


def _with_average(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add, per case and frame, an ``average`` row: the mean of each metric over the structures.

    NaN structures (absent in both) are left out of the mean; an ``inf`` distance stays inf.
    """
    by_case: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_case[(r["case"], r["frame"])].append(r)
    out = list(rows)
    for group in by_case.values():
        avg = {k: group[0][k] for k in ("case", "frame", "study", "phase", "group")}
        avg["label"] = AVERAGE
        for m in METRICS:
            vals = [float(r[m]) for r in group if not math.isnan(float(r[m]))]
            avg[m] = float(np.mean(vals)) if vals else float("nan")
        out.append(avg)
    return out


def describe(values: Iterable[float]) -> dict[str, Any]:
    """Mean, SD (ddof=1), median, min, max over the finite values, and counts of the others.

    ``n_nan`` counts structures absent from both masks; ``n_inf`` counts distances to a mask
    that is empty on one side only. They are reported, not folded into the statistics.
    """
    v = np.asarray(list(values), dtype=np.float64)
    finite = v[np.isfinite(v)]
    nan = float("nan")
    return {
        "n": int(finite.size),
        "mean": float(finite.mean()) if finite.size else nan,
        "std": float(finite.std(ddof=1)) if finite.size > 1 else nan,
        "median": float(np.median(finite)) if finite.size else nan,
        "min": float(finite.min()) if finite.size else nan,
        "max": float(finite.max()) if finite.size else nan,
        "n_nan": int(np.isnan(v).sum()),
        "n_inf": int(np.isinf(v).sum()),
    }


def summarize(rows: list[dict[str, Any]], by: Callable[[dict[str, Any]], str | None]) -> dict[str, Any]:
    """``{group: {label: {metric: describe(...)}}}`` for the rows' grouping ``by(row)``."""
    buckets: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in _with_average(rows):
        g = by(r)
        if g is not None:
            buckets[g][r["label"]].append(r)
    return {
        g: {label: {m: describe(r[m] for r in rs) for m in METRICS} for label, rs in labels.items()}
        for g, labels in sorted(buckets.items())
    }


def clinical_rows(results: Iterable[CaseResult], myo_density_g_ml: float = DEFAULT_MYO_DENSITY) -> list[dict[str, Any]]:
    """Per study with an ED and an ES frame: clinical numbers from prediction and reference."""
    phases: dict[str, dict[str, tuple[FrameVolumes, FrameVolumes]]] = defaultdict(dict)
    groups: dict[str, str | None] = {}
    for res in results:
        for fr in res.frames:
            if res.case.study is not None and fr.phase in ("ED", "ES"):
                phases[res.case.study][fr.phase] = (fr.pred_volumes, fr.ref_volumes)
                groups[res.case.study] = res.case.group
    rows = []
    for study in sorted(phases):
        if set(phases[study]) != {"ED", "ES"}:
            continue
        (ed_p, ed_r), (es_p, es_r) = phases[study]["ED"], phases[study]["ES"]
        pred = clinical_measures(ed_p, es_p, myo_density_g_ml)
        ref = clinical_measures(ed_r, es_r, myo_density_g_ml)
        row: dict[str, Any] = {"study": study, "group": groups[study]}
        for k in CLINICAL_KEYS:
            p, r = float(pred[k]), float(ref[k])  # type: ignore[arg-type]
            row[f"{k}_pred"], row[f"{k}_ref"], row[f"{k}_diff"] = p, r, p - r
        rows.append(row)
    return rows


def clinical_agreement(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Agreement (n, Pearson r, bias, SD, 95 % limits, MAE) of every clinical number."""
    return {k: asdict(agreement([r[f"{k}_pred"] for r in rows], [r[f"{k}_ref"] for r in rows])) for k in CLINICAL_KEYS}


def compare_rows(rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Paired Wilcoxon signed-rank tests, method A vs B, per structure, phase and metric.

    Rows are paired by case, frame and structure; only cases both methods have are used.
    """
    def index(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
        return {(r["case"], r["frame"], r["label"]): r for r in _with_average(rows)}

    a, b = index(rows_a), index(rows_b)
    keys = sorted(a.keys() & b.keys(), key=str)
    phases = sorted({a[k]["phase"] for k in keys if a[k]["phase"]}) + ["all"]
    labels = list(dict.fromkeys(k[2] for k in keys))
    out = []
    for label in labels:
        for phase in phases:
            sel = [k for k in keys if k[2] == label and (phase == "all" or a[k]["phase"] == phase)]
            if not sel:
                continue
            for m in COMPARED:
                xa = [float(a[k][m]) for k in sel]
                xb = [float(b[k][m]) for k in sel]
                n, p = wilcoxon_p(xa, xb)
                da, db = describe(xa), describe(xb)
                out.append(
                    {"label": label, "phase": phase, "metric": m, "n_pairs": n,
                     "mean_a": da["mean"], "mean_b": db["mean"], "median_a": da["median"], "median_b": db["median"],
                     "p_value": p}
                )  # fmt: skip
    return out


@dataclass
class Evaluation:
    """Everything ``cardioseg evaluate`` writes, as Python objects."""

    results: list[CaseResult]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    clinical: list[dict[str, Any]]
    compare: list[dict[str, Any]] = field(default_factory=list)

    @property
    def errors(self) -> list[CaseResult]:
        return [r for r in self.results if r.error]


def evaluate(
    cases: Sequence[Case],
    options: EvaluateOptions = EvaluateOptions(),
    myo_density_g_ml: float = DEFAULT_MYO_DENSITY,
    progress: Callable[[CaseResult], None] | None = None,
) -> Evaluation:
    """Evaluate cases in order and build every table (no files written)."""
    results = []
    for case in cases:
        res = evaluate_case(case, options)
        results.append(res)
        if progress:
            progress(res)
    rows = metric_rows(results)
    clin = clinical_rows(results, myo_density_g_ml)
    summary: dict[str, Any] = {
        "n_cases": len(results),
        "n_frames": sum(len(r.frames) for r in results),
        "errors": {r.case.key: r.error for r in results if r.error},
        "label_maps": {"pred": options.pred_labels.as_dict(), "ref": options.ref_labels.as_dict()},
        "myo_density_g_ml": myo_density_g_ml,
        "by_phase": summarize(rows, lambda r: r["phase"] or "unknown"),
        "all": summarize(rows, lambda r: "all").get("all", {}),
        "by_group": summarize(rows, lambda r: r["group"]),
        "clinical": clinical_agreement(clin) if clin else {},
        "seconds": sum(r.seconds for r in results),
    }
    return Evaluation(results, rows, summary, clin)


# ---------------------------------------------------------------------------- writing


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else f"{v:.6g}")
    return str(v)


def _csv(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_fmt(r.get(c)) for c in columns])
    return buf.getvalue()


def write_evaluation(ev: Evaluation, out: Path, extra: dict[str, Any] | None = None) -> list[Path]:
    """Write metrics.csv, summary.json and, when present, clinical.csv and compare.csv."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    path = out / "metrics.csv"
    write_text_atomic(_csv(ev.rows, (*CASE_COLUMNS, *METRICS)), path)
    written.append(path)
    if ev.clinical:
        cols = ["study", "group", *(f"{k}_{s}" for k in CLINICAL_KEYS for s in ("pred", "ref", "diff"))]
        path = out / "clinical.csv"
        write_text_atomic(_csv(ev.clinical, cols), path)
        written.append(path)
    if ev.compare:
        cols = ["label", "phase", "metric", "n_pairs", "mean_a", "mean_b", "median_a", "median_b", "p_value"]
        path = out / "compare.csv"
        write_text_atomic(_csv(ev.compare, cols), path)
        written.append(path)
    summary = {**ev.summary, **(extra or {})}
    path = out / "summary.json"
    write_text_atomic(json.dumps(json_safe(summary), indent=2) + "\n", path)
    written.append(path)
    return written
