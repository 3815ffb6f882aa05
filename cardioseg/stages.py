"""The two stages and the test-time rotations of inference: where stage 1 found the heart
(:class:`Localisation`), the crop centre it gives stage 2, how much the rotations agree, and
what the weights recommend when the options leave it open."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cardioseg.errors import WeightsError

if TYPE_CHECKING:
    from cardioseg.weights import LoadedWeights

LOCATE_MIN_HEART_MM2 = 500.0


def middle_slices(n: int) -> tuple[int, int]:
    """(first, stop) of the middle half of ``n`` slices, at least 3 (all of 4 or fewer): where
    stage 1 looks for the heart. A short-axis stack runs from the base to the apex, so its middle
    holds the LV whatever the coverage beyond; the centre found there is the stack's in-plane
    centre of the heart, for half the work of every slice.

    >>> middle_slices(10), middle_slices(16), middle_slices(5), middle_slices(4), middle_slices(1)
    ((2, 8), (4, 12), (1, 4), (0, 4), (0, 1))
    """
    if n <= 4:
        return 0, n
    first = n // 4
    stop = max(n - n // 4, first + 3)
    return first, stop
"""Stage 1 finds a heart when its LV cavity + myocardium cover at least this area (all slices together)."""


@dataclass(frozen=True)
class Localisation:
    """Where stage 1 found the heart: the centroid of the largest 3D LV cavity + myocardium
    component of the middle slices on a coarse grid (twice the model's pixel size, the same
    field of view; every slice on the model's own grid when the coarse one finds none)."""

    centre_world_mm: tuple[float, float, float] | None  # None: no heart found (the full field is used)
    heart_area_mm2: float  # in-plane area of that component, summed over slices

    @property
    def found(self) -> bool:
        return self.centre_world_mm is not None

    def as_dict(self) -> dict[str, Any]:
        centre = None if self.centre_world_mm is None else [round(c, 1) for c in self.centre_world_mm]
        return {"found": self.found, "centre_world_mm": centre, "heart_area_mm2": round(self.heart_area_mm2, 1)}


def crop_centre(localisation: Localisation | None) -> np.ndarray | None:
    if localisation is None or localisation.centre_world_mm is None:
        return None
    return np.asarray(localisation.centre_world_mm, dtype=np.float64)


def resolve_crop_px(requested: int | None, weights: LoadedWeights) -> int:
    """``--crop-px`` (None: the weights' recommendation, ``meta["inference"]["crop_px"]``, else 0)."""
    if requested is not None:
        return int(requested)
    recommended = (weights.meta.get("inference") or {}).get("crop_px", 0)
    if not isinstance(recommended, int) or recommended < 0 or recommended % 16:
        raise WeightsError(f'"{weights.path}": unusable inference crop {recommended!r} (a multiple of 16 expected)')
    return recommended


def resolve_tta(requested: bool | None, weights: LoadedWeights) -> bool:
    """``--tta/--no-tta`` (None: the weights' recommendation, ``meta["inference"]["tta"]``, else off)."""
    if requested is not None:
        return bool(requested)
    recommended = (weights.meta.get("inference") or {}).get("tta", False)
    if not isinstance(recommended, bool):
        raise WeightsError(f'"{weights.path}": unusable inference tta {recommended!r} (true or false expected)')
    return recommended


def resolve_confidence_min(weights: LoadedWeights) -> float:
    """The ``low_confidence`` limit of QC for these weights: ``meta["inference"]["confidence_min"]``
    (chosen by cross-validating fold models of the weights' own recipe: a longer-trained network
    is surer of itself, good segmentations and failures alike), else ``QcLimits.confidence_min``."""
    from cardioseg.qc import QcLimits

    recommended = (weights.meta.get("inference") or {}).get("confidence_min")
    if recommended is None:
        return QcLimits().confidence_min
    if isinstance(recommended, bool) or not isinstance(recommended, (int, float)) or not 0 < recommended < 1:
        raise WeightsError(f'"{weights.path}": unusable QC confidence limit {recommended!r} (a number in (0, 1) expected)')
    return float(recommended)


def resolve_confidence_min_by_structure(weights: LoadedWeights) -> dict[str, float]:
    """QC's per-structure ``low_confidence`` limits for these weights,
    ``meta["inference"]["confidence_min_by_structure"]`` (``{"rv": .., "myo": .., "lv": ..}``, any
    of them; the others keep :func:`resolve_confidence_min`'s); ``{}`` when none are recorded."""
    recorded = (weights.meta.get("inference") or {}).get("confidence_min_by_structure")
    if recorded is None:
        return {}
    if not isinstance(recorded, dict) or not all(
        k in ("rv", "myo", "lv") and not isinstance(v, bool) and isinstance(v, (int, float)) and 0 < v < 1
        for k, v in recorded.items()
    ):
        raise WeightsError(f'"{weights.path}": unusable QC confidence limits per structure {recorded!r} '
                           '(numbers in (0, 1) for "rv", "myo", "lv" expected)')  # fmt: skip
    return {k: float(v) for k, v in recorded.items()}


def soft_confidence(probs: np.ndarray, frame_slices: Sequence[int]) -> list[float]:
    """Per frame, how sure one pass of the network is of its least certain structure: for each
    structure c (label 1..C-1) in the argmax labels y, the soft Dice of its probabilities p_c
    against its mask, 2 sum(p_c [y = c]) / (sum p_c + sum [y = c]); the frame's value is the
    lowest (1.0 when the frame holds no structure). 1: certain of every pixel of and around each
    structure. ``probs``: (sum of frame_slices, C, H, W) softmax probabilities, frame after frame.

    One pass suffices, so it exists without test-time rotations, where ``tta_agreement`` does not
    (cross-validation: ``QcLimits.confidence_min``, docs/cv100/qc.md).

    >>> p = np.zeros((1, 2, 2, 2), np.float32); p[0, 1, 0] = 1.0; p[0, 0, 1] = 1.0
    >>> soft_confidence(p, [1])
    [1.0]
    >>> p[0, :, 0, 0] = (0.4, 0.6)  # one of its two pixels at 0.6: 2 * 1.6 / (1.6 + 2)
    >>> round(soft_confidence(p, [1])[0], 3)
    0.889
    """
    return [min(by_label.values(), default=1.0) for by_label in soft_confidence_by_label(probs, frame_slices)]


def soft_confidence_by_label(probs: np.ndarray, frame_slices: Sequence[int]) -> list[dict[int, float]]:
    """Per frame, :func:`soft_confidence` of each structure present in its argmax labels:
    ``{label: soft Dice}`` (labels 1..C-1; empty when the frame holds no structure).

    >>> p = np.zeros((1, 3, 2, 2), np.float32); p[0, 1, 0] = 1.0; p[0, 2, 1] = 1.0
    >>> p[0, :, 1, 1] = (0.0, 0.4, 0.6)  # label 2 has one of its two pixels at 0.6
    >>> {c: round(v, 3) for c, v in soft_confidence_by_label(p, [1])[0].items()}
    {1: 0.909, 2: 0.889}
    """
    out = []
    start = 0
    n_classes = probs.shape[1]
    for n in frame_slices:
        frame = probs[start : start + n]
        start += n
        labels = frame.argmax(axis=1)
        # where y = c, p_c is the largest probability: sum(p_c [y = c]) per c in one bincount
        top = np.take_along_axis(frame, labels[:, None], axis=1)[:, 0]
        inside = np.bincount(labels.ravel(), weights=top.ravel(), minlength=n_classes)
        size = np.bincount(labels.ravel(), minlength=n_classes)
        total = frame.sum(axis=(0, 2, 3), dtype=np.float64)
        out.append({c: float(2.0 * inside[c] / (total[c] + size[c])) for c in range(1, n_classes) if size[c]})
    return out


def tta_agreement(votes: Sequence[np.ndarray], combined: np.ndarray, frame_slices: Sequence[int]) -> list[float]:
    """Per frame, how much the test-time rotations agree on its least consistent structure: for
    each structure (label 1..C-1 present in the combined labels or in a rotation's), the mean
    over the rotations (those where it is present in either) of the Dice between that
    rotation's labels and the combined labels, in model space; the frame's value is the lowest
    of these. 1: every rotation gives the same mask.

    The worst structure, not the mean over structures: gross failures are mostly one structure
    (the ES RV or LV cavity) that the rotations see differently while the others agree, and
    the mean dilutes it (cross-validation: ``QcLimits.tta_agreement_min``, off by default since
    :func:`soft_confidence` flags the failures better; docs/cv100/qc.md).

    >>> a = np.zeros((1, 4, 4), np.uint8); a[0, :2] = 1
    >>> tta_agreement([a, a], a, [1])
    [1.0]
    >>> b = np.zeros_like(a); b[0, :1] = 1
    >>> round(tta_agreement([a, b], a, [1])[0], 3)
    0.833
    >>> c = a.copy(); c[0, 3] = 2; d = a.copy(); d[0, 3, :2] = 2  # structure 1 agrees, 2 does not
    >>> round(tta_agreement([c, d], c, [1])[0], 3)  # structure 2: (1 + 2*2/(2+4)) / 2 (all four Dice: 0.917)
    0.833
    """
    out = []
    start = 0
    for n in frame_slices:
        ref = combined[start : start + n]
        in_ref = np.bincount(ref.ravel())  # voxels per label (cheaper than np.unique)
        per_structure: dict[int, list[float]] = {}
        for vote in votes:
            v = vote[start : start + n]
            in_vote = np.bincount(v.ravel())
            for c in range(1, max(len(in_ref), len(in_vote))):
                size_ref = int(in_ref[c]) if c < len(in_ref) else 0
                size_vote = int(in_vote[c]) if c < len(in_vote) else 0
                if size_ref + size_vote == 0:
                    continue
                both = int(((v == c) & (ref == c)).sum())
                per_structure.setdefault(c, []).append(2.0 * both / (size_ref + size_vote))
        out.append(min(float(np.mean(s)) for s in per_structure.values()) if per_structure else 1.0)
        start += n
    return out
