"""Quality-control flags: plain warnings a reader should see before trusting a report.

Each :class:`Flag` has a stable snake_case ``code`` (for scripts, ``summary.csv`` and
``--strict``) and a one-sentence ``message`` with the numbers behind it. Codes are emitted
at most once per study (the message lists every frame/slice concerned), except
``reader_warning``, which passes each distinct reader work-around through on its own.

All checks work on the canonical orientation of :mod:`cardioseg.geometry` (canonical axis 2
is the short-axis slice axis, whatever the file's storage order), so "slice" and "in-plane"
mean the same thing for every file. Slice numbers in messages are 0-based indices along the
*stored* array's slice axis (what a viewer shows for the file); frame numbers are 0-based
cine frame indices, as ``ed_frame``/``es_frame`` in the report.

Codes (see :class:`QcLimits` for the thresholds and why):

* ``lv_not_found`` / ``rv_not_found`` / ``myo_not_found`` - a structure is absent from a
  frame (all cine frames are checked; the ED/ES frames are named).
* ``lv_not_enclosed`` - on mid-ventricular slices of the ED/ES frames the LV cavity touches
  background or RV directly instead of being surrounded by myocardium.
* ``lv_ef_implausible`` / ``rv_ef_implausible`` - EF outside the plausible range.
* ``lv_mass_implausible`` - LV mass outside the plausible range.
* ``rv_much_larger_than_lv`` - RV EDV / LV EDV above the limit.
* ``lv_esv_exceeds_edv`` - the LV is larger at ES than at ED.
* ``flat_volume_curve`` - the LV volume barely changes over an automatically analysed cine,
  so the ED/ES choice is meaningless.
* ``too_few_slices`` - the stack cannot plausibly cover the ventricles.
* ``slices_uneven_or_missing`` - reader slice positions (DICOM) show uneven gaps, a missing
  slice or slices out of order.
* ``heart_touches_fov_edge`` - a segmented voxel lies on the in-plane image border.
* ``reader_warning`` - something the image reader had to work around (``Volume.meta``).
* ``rv_not_bordering_lv`` - the RV cavity hardly touches the septum (another organ as RV?).
* ``structure_moved_between_phases`` - the LV or RV centre jumps between ED and ES.
* ``myocardium_volume_changes`` - the myocardial volume differs too much between ED and ES.
* ``heart_not_localised`` - (added by the batch) stage 1 of ``--crop-px`` found no heart, or the crop
  around what it found held none (those frames were segmented on the full field).

Modules: ``limits`` (Flag, QcLimits), ``frames`` (canonical frames, names in messages),
``anatomy``, ``consistency``, ``measures``, ``acquisition`` (the checks).

Everything is vectorised: a 200 x 200 x 10 frame costs a few milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cardioseg.clinical import FrameVolumes
from cardioseg.io import Volume
from cardioseg.labels import LabelMap
from cardioseg.qc.acquisition import reader_warnings, slice_flags
from cardioseg.qc.anatomy import enclosure, fov_edge, long_axis, missing_structures
from cardioseg.qc.consistency import phase_consistency, rv_not_bordering
from cardioseg.qc.frames import StudyFrames
from cardioseg.qc.limits import STRUCTURE_NAMES, Flag, QcLimits
from cardioseg.qc.measures import flat_curve, measure_flags

__all__ = ["STRUCTURE_NAMES", "Flag", "QcLimits", "study_flags"]


def study_flags(
    masks: Sequence[np.ndarray],
    volumes: Sequence[Volume],
    per_frame: Sequence[FrameVolumes],
    ed_index: int | None,
    es_index: int | None,
    measures: dict[str, float | None],
    label_map: LabelMap,
    kind: str,
    limits: QcLimits | None = None,
    ed_es_overridden: bool = False,
) -> list[Flag]:
    """All quality-control flags of one study, in a fixed order.

    Args:
        masks: stored-orientation label masks: ``[mask4d]`` for a ``"cine"``, ``[ed, es]`` for
            a ``"pair"``, ``[mask3d]`` for a ``"frame"``.
        volumes: the images the masks belong to (same order and shapes; their affines give
            the orientation, their ``meta`` the slice positions and reader warnings).
        per_frame: the volumes of every frame (cine: one per frame; pair: ``[ed, es]``;
            frame: one).
        ed_index, es_index: indices into ``per_frame`` (``None`` for a single frame).
        measures: :func:`cardioseg.clinical.clinical_measures` output (unused for a frame).
        label_map: what the mask values mean.
        kind: ``"cine"``, ``"pair"`` or ``"frame"``; a frame gets structural and geometry
            flags only.
        limits: thresholds (``QcLimits()`` by default).
        ed_es_overridden: True when both ED and ES frames of a cine were given (option or
            Info.cfg) rather than detected from the volume curve; skips ``flat_volume_curve``.
    """
    limits = limits or QcLimits()
    if kind not in ("cine", "pair", "frame"):
        raise ValueError(f"unknown study kind {kind!r}")
    if len(masks) != len(volumes):
        raise ValueError(f"{len(masks)} masks for {len(volumes)} volumes")
    for m, v in zip(masks, volumes):
        if np.shape(m) != v.data.shape:
            raise ValueError(f"mask shape {np.shape(m)} != image shape {v.data.shape}")
    if kind == "frame":
        ed_index = es_index = None
    frames = StudyFrames(masks, volumes, kind, ed_index, es_index)
    if len(per_frame) != frames.n:
        raise ValueError(f"{len(per_frame)} frame volumes for {frames.n} frames")

    flags: list[Flag] = []
    flags += missing_structures(per_frame, frames)
    flags += enclosure(frames, label_map, limits)
    flags += rv_not_bordering(frames, label_map, limits)
    if kind != "frame" and ed_index is not None and es_index is not None:
        flags += measure_flags(measures, per_frame[ed_index], limits)
        flags += phase_consistency(frames, list(per_frame), ed_index, es_index, label_map, limits)
        if kind == "cine" and not ed_es_overridden:
            flags += flat_curve(per_frame, limits)
    flags += slice_flags(frames, limits)
    flags += fov_edge(frames, label_map)
    flags += long_axis(frames, label_map, limits)
    flags += reader_warnings(frames)
    return flags
