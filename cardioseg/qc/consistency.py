"""Checks that the segmented structures form one heart, the same heart at ED and ES: an RV
that borders the myocardium, a myocardium whose volume is kept through the cycle, structures
that do not jump between the two phases. The limits come from the 100 ACDC reference label
maps (see :class:`cardioseg.qc.QcLimits`)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cardioseg.clinical import FrameVolumes
from cardioseg.labels import LabelMap
from cardioseg.qc.frames import StudyFrames
from cardioseg.qc.limits import Flag, QcLimits


def _in_plane_ball(spacing: np.ndarray, radius_mm: float) -> np.ndarray:
    """A 3D structuring element reaching ``radius_mm`` in the canonical plane, nothing across slices."""
    reach = [max(1, round(radius_mm / float(s))) for s in spacing[:2]]
    grids = np.ogrid[-reach[0] : reach[0] + 1, -reach[1] : reach[1] + 1]
    disc = (grids[0] / reach[0]) ** 2 + (grids[1] / reach[1]) ** 2 <= 1.0
    return disc[:, :, None]


def rv_contact_fraction(canon: np.ndarray, spacing: np.ndarray, label_map: LabelMap, radius_mm: float) -> float | None:
    """Of the RV voxels of a canonical 3D mask, the fraction within ``radius_mm`` in-plane of
    the myocardium (the septum); None without an RV or a myocardium."""
    rv, myo = canon == label_map.rv, canon == label_map.myo
    if not rv.any() or not myo.any():
        return None
    ball = _in_plane_ball(spacing, radius_mm)
    # on the myocardium's bounding box grown by the ball's reach: the dilation cannot leave it
    (box,) = ndimage.find_objects(myo.astype(np.uint8))
    reach = [r // 2 for r in ball.shape]
    box = tuple(slice(max(b.start - m, 0), min(b.stop + m, n)) for b, m, n in zip(box, reach, myo.shape))
    near = ndimage.binary_dilation(myo[box], structure=ball)
    return float((rv[box] & near).sum() / rv.sum())


def rv_not_bordering(frames: StudyFrames, label_map: LabelMap, limits: QcLimits) -> list[Flag]:
    """``rv_not_bordering_lv``: in an ED/ES frame almost no RV lies next to the myocardium."""
    where = []
    for t in frames.key_frames():
        canon, o = frames.frame(t)
        volume = frames.volumes[0 if frames.kind == "cine" else t]
        spacing = np.asarray([volume.spacing_mm[i] for i in o.perm])
        fraction = rv_contact_fraction(canon, spacing, label_map, limits.rv_contact_mm)
        if fraction is not None and fraction < limits.rv_contact_min_fraction:
            where.append(f"{frames.name(t)} ({fraction * 100:.1f} %)")
    if not where:
        return []
    return [Flag(
        "rv_not_bordering_lv",
        f"The RV cavity hardly touches the septum in {' and '.join(where)} of its voxels lie within "
        f"{limits.rv_contact_mm:g} mm of the myocardium (at least {limits.rv_contact_min_fraction * 100:g} % "
        "in every reference): it may be another organ (stomach, bowel) labelled as RV.",
    )]  # fmt: skip


def _centroid_mm(frames: StudyFrames, t: int, values: tuple[int, ...]) -> np.ndarray | None:
    canon, o = frames.frame(t)
    points = np.argwhere(np.isin(canon, values))
    if len(points) == 0:
        return None
    volume = frames.volumes[0 if frames.kind == "cine" else t]
    spacing = np.asarray([volume.spacing_mm[i] for i in o.perm])
    return points.mean(axis=0) * spacing  # canonical axes in mm (the same grid for ED and ES)


def phase_consistency(
    frames: StudyFrames, per_frame: list[FrameVolumes], ed: int, es: int, label_map: LabelMap, limits: QcLimits
) -> list[Flag]:
    """``structure_moved_between_phases`` and ``myocardium_volume_changes`` of an ED/ES pair."""
    flags = []
    moved = []
    for name, values, limit in (
        ("the LV (cavity + myocardium)", (label_map.lv, label_map.myo), limits.heart_shift_max_mm),
        ("the RV cavity", (label_map.rv,), limits.rv_shift_max_mm),
    ):
        a, b = _centroid_mm(frames, ed, values), _centroid_mm(frames, es, values)
        if a is not None and b is not None and a.shape == b.shape:
            shift = float(np.linalg.norm(a - b))
            if shift > limit:
                moved.append(f"the centre of {name} moves {shift:.0f} mm (limit {limit:g})")
    if moved:
        flags.append(Flag(
            "structure_moved_between_phases",
            f"Between ED and ES {'; '.join(moved)}: the heart does not move that far, "
            "so one of the two segmentations is probably of something else.",
        ))  # fmt: skip
    myo_ed, myo_es = per_frame[ed].myo_ml, per_frame[es].myo_ml
    if myo_ed > 0 and myo_es > 0:
        ratio = myo_es / myo_ed
        if not limits.myo_es_ed_ratio_min <= ratio <= limits.myo_es_ed_ratio_max:
            flags.append(Flag(
                "myocardium_volume_changes",
                f"The myocardial volume at ES is {ratio:.2f}x that at ED ({myo_es:.0f} vs {myo_ed:.0f} mL; "
                f"plausible {limits.myo_es_ed_ratio_min:g}-{limits.myo_es_ed_ratio_max:g}x: the muscle keeps "
                "its volume): cavity and myocardium are probably confused in one phase.",
            ))  # fmt: skip
    return flags
