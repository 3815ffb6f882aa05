"""One case: every metric of :mod:`cardioseg.metrics` per structure and frame."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cardioseg.clinical import FrameVolumes, frame_volumes
from cardioseg.errors import CardiosegError
from cardioseg.evaluation.pairing import Case
from cardioseg.io import read_volume
from cardioseg.labels import ACDC, LabelMap
from cardioseg.metrics import REGIONS, dice, jaccard, slice_regions, surface_distances

#: per-label metric columns of metrics.csv, in order (distances in mm, volumes in mL)
METRICS: tuple[str, ...] = (
    "dice", "jaccard", "hd_mm", "hd95_mm", "assd_mm", "msd_mm",
    "mean_pred_to_ref_mm", "mean_ref_to_pred_mm", "vol_pred_ml", "vol_ref_ml", "vol_diff_ml",
    *(f"dice_{r}" for r in REGIONS),
)  # fmt: skip


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
    swapped: list[str] = field(default_factory=list)  # e.g. "predicted LV in the reference RV" (a label convention mix-up?)


SWAP_FRACTION = 0.5  # a predicted structure with more than this share inside another reference structure...
SWAP_OWN_FRACTION = 0.2  # ...and less than this inside its own: the label conventions look swapped


def swapped_structures(pred: np.ndarray, ref: np.ndarray, options: EvaluateOptions) -> list[str]:
    """The predicted cavities (LV, RV) that lie mostly in the other reference cavity: what a
    swapped label convention (``--labels``/``--ref-labels``) looks like, not a bad method."""
    pl, rl = options.pred_labels.structures, options.ref_labels.structures
    out = []
    for mine, other in (("lv", "rv"), ("rv", "lv")):
        p = pred == pl[mine]
        n = int(p.sum())
        if n == 0:
            continue
        if float((p & (ref == rl[other])).sum()) / n > SWAP_FRACTION and float((p & (ref == rl[mine])).sum()) / n < SWAP_OWN_FRACTION:
            out.append(f"predicted {mine.upper()} in the reference {other.upper()}")
    return out


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
        phases: dict[int | None, str | None] = dict(_phases_4d(case, frames, voxel_ml, options)) if ref.ndim == 4 else {None: case.phase}
        for t, p, r in frames:
            volumes = frame_volumes(p, voxel_ml, options.pred_labels), frame_volumes(r, voxel_ml, options.ref_labels)
            rows = _frame_metrics(p, r, spacing, volumes, slice_axis, options)
            result.frames.append(FrameResult(t, phases.get(t), rows, *volumes))
            result.swapped += [s for s in swapped_structures(p, r, options) if s not in result.swapped]
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

