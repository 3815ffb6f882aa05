"""Measuring a segmented study: volumes per frame, ED/ES, the clinical numbers, QC flags."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from cardioseg.batch.studies import Study, StudyKind, StudyOptions
from cardioseg.clinical import FrameVolumes, cine_rates, clinical_measures, detect_ed_es, frame_volumes
from cardioseg.errors import ConfigError, QcError
from cardioseg.io import Volume
from cardioseg.qc import Flag, QcLimits, study_flags
from cardioseg.qc.limits import STRUCTURE_NAMES

if TYPE_CHECKING:
    from cardioseg.labels import LabelMap
    from cardioseg.stages import Localisation


@dataclass(frozen=True)
class Measurements:
    """What ``measure_study`` finds: volumes per frame, ED/ES, the clinical measures, QC flags."""

    per_frame: list[FrameVolumes]
    ed_index: int | None
    es_index: int | None
    measures: dict[str, float | None]
    flags: list[Flag]
    height_cm: float | None
    weight_kg: float | None
    warnings: list[str] = field(default_factory=list)  # what could not be measured, and why
    regional: dict[str, Any] = field(default_factory=dict)  # report keys that are not single numbers


def measure_study(
    study: Study, volumes: list[Volume], masks: list[np.ndarray], label_map: LabelMap, options: StudyOptions,
    localisation: Localisation | None = None,
    agreement: list[float] | None = None,
    detected: tuple[int, int] | None = None,
    confidence: list[float] | None = None,
    confidence_min: float | None = None,
    confidence_by_structure: list[dict[str, float]] | None = None,
    confidence_min_by_structure: Mapping[str, float] | None = None,
    crop_missed: Sequence[int] = (),
) -> Measurements:
    """Volumes of every frame, ED/ES, the clinical measures and the QC flags of a segmented study
    (``study.kind`` already FRAME, CINE or PAIR). ``detected``: a cine's ED and ES frames as found
    on a first pass (``predict_cine_key_frames``), used instead of finding them on these masks.
    ``confidence_min``: the weights' ``low_confidence`` limit (None: ``QcLimits``');
    ``confidence_by_structure``: per frame, each structure's confidence (names the unsure one),
    judged against ``confidence_min_by_structure`` where that gives a structure a limit;
    ``crop_missed``: the frames whose crop around stage 1's centre held no heart. Raises QcError for a flag under ``--strict``."""
    height = options.height_cm if options.height_cm is not None else study.height_cm
    weight = options.weight_kg if options.weight_kg is not None else study.weight_kg
    if study.kind is StudyKind.CINE:
        vol = volumes[0]
        per_frame = [frame_volumes(masks[0][..., t], vol.voxel_volume_ml, label_map) for t in range(vol.n_frames)]
    else:
        per_frame = [frame_volumes(m, v.voxel_volume_ml, label_map) for m, v in zip(masks, volumes)]
    ed_i, es_i, overridden = _choose_ed_es(study, per_frame, options, detected)
    if ed_i is None or es_i is None:
        measures: dict[str, float | None] = {
            "lv_ml": per_frame[0].lv_ml, "rv_ml": per_frame[0].rv_ml, "myo_ml": per_frame[0].myo_ml,
            "myo_mass_g": per_frame[0].myo_ml * options.myo_density_g_ml,
        }  # fmt: skip
    else:
        measures = clinical_measures(per_frame[ed_i], per_frame[es_i], options.myo_density_g_ml, height, weight)
    warnings: list[str] = []
    if study.kind is StudyKind.CINE and ed_i is not None and es_i is not None:
        measures.update(_rates(per_frame, ed_i, es_i, volumes[0], warnings))
    try:
        regional = _wall(study, volumes, masks, label_map, ed_i, es_i)
    except Exception as exc:  # noqa: BLE001 - an optional regional number must not cost the study its volumes and EF
        regional = {"wall_thickness_problem": f"the wall thickness could not be measured ({type(exc).__name__}: {exc})"}
        warnings.append(regional["wall_thickness_problem"])
    flags = study_flags(
        masks, volumes, per_frame, ed_i, es_i, measures, label_map, study.kind, ed_es_overridden=overridden
    )
    if agreement is not None and len(agreement) == len(per_frame):
        flags += tta_agreement_flags(agreement, ed_i, es_i)
    if confidence is not None and len(confidence) == len(per_frame):
        limits = QcLimits(confidence_min=QcLimits().confidence_min if confidence_min is None else confidence_min,
                          confidence_min_by_structure=dict(confidence_min_by_structure or {}))  # fmt: skip
        by_structure = confidence_by_structure if confidence_by_structure and len(confidence_by_structure) == len(per_frame) else None
        flags += confidence_flags(confidence, ed_i, es_i, limits, by_structure)
    if localisation is not None and not localisation.found:
        flags.append(Flag("heart_not_localised", "Stage 1 found no heart (LV cavity and myocardium) on the coarse "
                          "grid, so the whole field of view was segmented: check the masks."))  # fmt: skip
    missed = sorted(set(_key_frames(ed_i, es_i, len(per_frame))) & set(crop_missed))
    if missed:
        flags.append(Flag("heart_not_localised", "Stage 1 put the heart where the crop around it held none in "
                          f"frame{'s' if len(missed) > 1 else ''} {', '.join(map(str, missed))}, so the whole field of view was segmented there: "
                          "check the masks."))  # fmt: skip
    if options.strict and flags:
        raise QcError("quality control (--strict): " + " ".join(f.message for f in flags))
    return Measurements(per_frame, ed_i, es_i, measures, flags, height, weight, warnings, regional)


def _wall(study: Study, volumes: list[Volume], masks: list[np.ndarray], label_map: LabelMap,
          ed: int | None, es: int | None) -> dict[str, Any]:  # fmt: skip
    """The regional LV wall thickness (AHA segments) at ED and ES (a single frame: that frame)."""
    from cardioseg.wall import frame_wall_thickness, regional_measures

    def frame(t: int) -> tuple[np.ndarray, np.ndarray]:
        if study.kind is StudyKind.CINE:
            return masks[0][..., t], volumes[0].affine
        return masks[t], volumes[t].affine

    if ed is None or es is None:  # one 3D frame: its thickness, no thickening
        return regional_measures(frame_wall_thickness(*frame(0), label_map), None)
    return regional_measures(frame_wall_thickness(*frame(ed), label_map), frame_wall_thickness(*frame(es), label_map))


def _rates(per_frame: list[FrameVolumes], ed: int, es: int, cine: Volume, warnings: list[str]) -> dict[str, float | None]:
    """The cine's LV ejection and filling rates, or a warning saying why they are left out."""
    interval = cine.meta.frame_interval_ms
    if interval is None:
        why = cine.meta.frame_interval_problem or "the input gives no frame interval"
        warnings.append(f"peak ejection and filling rates left out: {why}")
        return {}
    return cine_rates([v.lv_ml for v in per_frame], ed, es, interval)


def _choose_ed_es(
    study: Study, per_frame: list[FrameVolumes], options: StudyOptions, detected: tuple[int, int] | None = None
) -> tuple[int | None, int | None, bool]:
    """(ED index, ES index, whether both were given rather than detected from the LV curve)."""
    if study.kind is StudyKind.FRAME:
        return None, None, False
    if study.kind is StudyKind.PAIR:
        return 0, 1, True
    n = len(per_frame)
    detected_ed, detected_es = detected if detected is not None else detect_ed_es(per_frame)
    ed = options.ed_frame if options.ed_frame is not None else study.ed_frame
    es = options.es_frame if options.es_frame is not None else study.es_frame
    check_frame_indices(ed, es, n)
    overridden = ed is not None and es is not None
    return (detected_ed if ed is None else ed), (detected_es if es is None else es), overridden


def ed_es_frames(study: Study, per_frame: list[FrameVolumes], options: StudyOptions) -> tuple[int, int]:
    """A cine's (ED, ES) frames: given (``--ed-frame``/``--es-frame``, Info.cfg), else the
    largest and smallest LV cavity of ``per_frame``."""
    ed, es, _ = _choose_ed_es(replace(study, kind=StudyKind.CINE), per_frame, options)
    assert ed is not None and es is not None
    return ed, es


def check_frame_indices(ed: int | None, es: int | None, n: int) -> None:
    """ConfigError for an ED/ES frame index outside a cine of ``n`` frames."""
    for name, value in (("ED", ed), ("ES", es)):
        if value is not None and not 0 <= value < n:
            raise ConfigError(f"{name} frame {value} is outside the cine's frames 0..{n - 1}")


def _key_frames(ed: int | None, es: int | None, n: int) -> list[int]:
    """The frames QC judges per frame: ED and ES, or every frame of a study without them."""
    return sorted({i for i in (ed, es) if i is not None}) or list(range(n))


def _low_key_frames(values: list[float], ed: int | None, es: int | None, limit: float) -> str | None:
    """The key frames whose per-frame value is below ``limit``, as "frame 3 (0.88), ..."; None
    when there are none."""
    low = [f"frame {t} ({values[t]:.2f})" for t in _key_frames(ed, es, len(values)) if values[t] < limit]
    return ", ".join(low) if low else None


def confidence_flags(
    confidence: list[float], ed: int | None, es: int | None, limits: QcLimits | None = None,
    by_structure: list[dict[str, float]] | None = None,
) -> list[Flag]:
    """``low_confidence``: in a key frame one pass of the network is unsure of a structure: its
    soft Dice is below ``QcLimits.confidence_min`` (``confidence``: per frame,
    :func:`cardioseg.stages.soft_confidence`). With ``by_structure`` (per frame, each structure's)
    each structure is judged against its own limit where ``QcLimits.confidence_min_by_structure``
    gives one, and the flag names the unsure structures."""
    limits = limits or QcLimits()
    low = []
    for t in _key_frames(ed, es, len(confidence)):
        if by_structure is None:
            if confidence[t] < limits.confidence_min:
                low.append(f"frame {t} ({confidence[t]:.2f} < {limits.confidence_min:g})")
            continue
        own = {k: limits.confidence_min_by_structure.get(k, limits.confidence_min) for k in by_structure[t]}
        unsure = [f"{STRUCTURE_NAMES.get(k, k)} {v:.2f} < {own[k]:g}" for k, v in by_structure[t].items() if v < own[k]]
        if unsure:
            low.append(f"frame {t} ({', '.join(unsure)})")
    if not low:
        return []
    return [Flag("low_confidence", f"The network is unsure of a structure in {', '.join(low)}: the soft Dice of its "
                 "probabilities against its own mask is below the limit; check the masks.")]  # fmt: skip


def tta_agreement_flags(agreement: list[float], ed: int | None, es: int | None, limits: QcLimits | None = None) -> list[Flag]:
    """``low_tta_agreement`` (off by default): in a key frame the four test-time rotations agree
    less than ``QcLimits.tta_agreement_min`` on the frame's least consistent structure
    (``agreement``: per frame, :func:`cardioseg.stages.tta_agreement`)."""
    limits = limits or QcLimits()
    where = _low_key_frames(agreement, ed, es, limits.tta_agreement_min)
    if where is None:
        return []
    return [Flag("low_tta_agreement", f"The four rotated segmentations disagree in {where}: for the least consistent "
                 f"structure, the mean Dice between each rotation and their combination is below "
                 f"{limits.tta_agreement_min:g}; the model is unsure here.")]  # fmt: skip
