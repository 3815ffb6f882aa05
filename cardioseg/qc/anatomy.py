"""Checks of the segmented anatomy: missing structures, an LV cavity not ringed by myocardium,
a heart at the image edge, a long axis that is not through the slices."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cardioseg.clinical import FrameVolumes
from cardioseg.labels import LabelMap
from cardioseg.qc.frames import StudyFrames, ranges, stored_slice
from cardioseg.qc.limits import STRUCTURE_NAMES, Flag, QcLimits


def missing_structures(per_frame: Sequence[FrameVolumes], frames: StudyFrames) -> list[Flag]:
    flags = []
    for key, attr in (("lv", "lv_ml"), ("rv", "rv_ml"), ("myo", "myo_ml")):
        missing = [t for t, v in enumerate(per_frame) if getattr(v, attr) <= 0]
        if missing:
            flags.append(Flag(f"{key}_not_found", f"{STRUCTURE_NAMES[key]} not found in {frames.describe(missing)}."))
    return flags


def _leak_fractions(canon: np.ndarray, label_map: LabelMap) -> tuple[np.ndarray, np.ndarray]:
    """Per canonical slice: LV-cavity border pixels, and the fraction of them touching
    background or RV in-plane (4-neighbourhood; outside the image counts as background)."""
    padded = np.pad(canon, ((1, 1), (1, 1), (0, 0)), constant_values=0)
    lv = padded[1:-1, 1:-1] == label_map.lv
    border = np.zeros_like(lv)
    leak = np.zeros_like(lv)
    for neighbour in (padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]):
        border |= neighbour != label_map.lv
        leak |= (neighbour != label_map.lv) & (neighbour != label_map.myo)
    n_border = (border & lv).sum(axis=(0, 1))
    n_leak = (leak & lv).sum(axis=(0, 1))
    return n_border, np.divide(n_leak, n_border, out=np.zeros(n_leak.shape), where=n_border > 0)


def _mid_slices(canon: np.ndarray, label_map: LabelMap) -> np.ndarray:
    """Canonical indices of the mid-ventricular slices: of the n slices that contain LV cavity,
    those whose centre lies in the middle third of their extent (the centre one(s) if none)."""
    with_lv = np.flatnonzero((canon == label_map.lv).any(axis=(0, 1)))
    if with_lv.size == 0:
        return with_lv
    offset = np.abs((np.arange(with_lv.size) + 0.5) / with_lv.size - 0.5)
    mid = offset <= 1.0 / 6.0 + 1e-9
    return with_lv[mid] if mid.any() else with_lv[offset <= offset.min() + 1e-9]


def enclosure(frames: StudyFrames, label_map: LabelMap, limits: QcLimits) -> list[Flag]:
    where: list[str] = []
    worst = 0.0
    n_bad = 0
    for t in frames.key_frames():
        canon, o = frames.frame(t)
        mid = _mid_slices(canon, label_map)
        if mid.size == 0:
            continue  # no LV cavity: lv_not_found says so
        _, fraction = _leak_fractions(canon[:, :, mid], label_map)
        bad = fraction > limits.lv_leak_max_fraction
        if bad.any():
            n_bad += int(bad.sum())
            worst = max(worst, float(fraction.max()))
            slices = sorted(stored_slice(int(k), canon.shape[2], o) for k in mid[bad])
            label = "slice" if len(slices) == 1 else "slices"
            where.append(f"{frames.name(t)}, {label} {', '.join(map(str, slices))}")
    if not where:
        return []
    return [
        Flag(
            "lv_not_enclosed",
            f"LV cavity is not enclosed by myocardium on {n_bad} mid-ventricular "
            f"slice{'s' if n_bad > 1 else ''} ({'; '.join(where)}): up to {worst * 100:.0f} % of its border "
            f"touches background or RV directly (limit {limits.lv_leak_max_fraction * 100:g} %).",
        )
    ]


def fov_edge(frames: StudyFrames, label_map: LabelMap) -> list[Flag]:
    touching: list[int] = []
    slices: set[int] = set()
    for i, canon in enumerate(frames.canonical):
        fg = [canon[[0, -1]] != 0, np.moveaxis(canon[:, [0, -1]], 1, 0) != 0]  # (2, len, S[, T])
        per = np.logical_or(fg[0].any(axis=(0, 1)), fg[1].any(axis=(0, 1)))  # (S[, T])
        n_slices, o = canon.shape[2], frames.orientations[i]
        if frames.kind == "cine":
            touching += [int(t) for t in np.flatnonzero(per.any(axis=0))]
            slices |= {stored_slice(int(k), n_slices, o) for k in np.flatnonzero(per.any(axis=1))}
        elif per.any():
            touching.append(i)
            slices |= {stored_slice(int(k), n_slices, o) for k in np.flatnonzero(per)}
    if not touching:
        return []
    label = "slice" if len(slices) == 1 else "slices"
    return [
        Flag(
            "heart_touches_fov_edge",
            f"The segmented heart touches the in-plane image edge on {label} {ranges(sorted(slices))} "
            f"in {frames.describe(touching)}: part of it may lie outside the field of view.",
        )
    ]


def long_axis(frames: StudyFrames, label_map: LabelMap, limits: QcLimits) -> list[Flag]:
    """``not_short_axis``: the LV's long axis lies in-plane rather than through the slices."""
    t = frames.key_frames()[0]
    canon, o = frames.frame(t)
    volume = frames.volumes[0 if frames.kind == "cine" else t]
    spacing = np.asarray([volume.spacing_mm[i] for i in o.perm])
    lv = np.isin(canon, [label_map.lv, label_map.myo])
    if np.count_nonzero(lv) < 50:
        return []
    points = np.argwhere(lv) * spacing
    points -= points.mean(axis=0)
    _, extent, axes = np.linalg.svd(points, full_matrices=False)
    if extent[1] <= 0 or extent[0] / extent[1] < limits.long_axis_min_elongation:
        return []
    angle = math.degrees(math.acos(min(1.0, abs(float(axes[0][2])))))
    if angle <= limits.long_axis_max_angle_deg:
        return []
    return [
        Flag(
            "not_short_axis",
            f"The LV's long axis lies {angle:.0f} deg from the slice normal in {frames.name(t)}: "
            "the images do not look like a short-axis stack.",
        )
    ]
