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
"""Stage 1 finds a heart when its LV cavity + myocardium cover at least this area (all slices together)."""


@dataclass(frozen=True)
class Localisation:
    """Where stage 1 found the heart: the centroid of the largest 3D LV cavity + myocardium
    component on a coarse grid (twice the model's pixel size, the same field of view; the
    model's own grid when the coarse one finds none)."""

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


def tta_agreement(votes: Sequence[np.ndarray], combined: np.ndarray, frame_slices: Sequence[int]) -> list[float]:
    """Per frame, how much the test-time rotations agree: the mean over the rotations and the
    structures (labels 1..C-1 present in either) of the Dice between that rotation's labels and
    the combined labels, in model space. 1: every rotation gives the same mask.

    >>> a = np.zeros((1, 4, 4), np.uint8); a[0, :2] = 1
    >>> tta_agreement([a, a], a, [1])
    [1.0]
    >>> b = np.zeros_like(a); b[0, :1] = 1
    >>> round(tta_agreement([a, b], a, [1])[0], 3)
    0.833
    """
    out = []
    start = 0
    for n in frame_slices:
        ref = combined[start : start + n]
        scores = []
        for vote in votes:
            v = vote[start : start + n]
            for c in np.union1d(np.unique(ref), np.unique(v)):
                if c == 0:
                    continue
                a, b = v == c, ref == c
                scores.append(2.0 * float((a & b).sum()) / float(a.sum() + b.sum()))
        out.append(float(np.mean(scores)) if scores else 1.0)
        start += n
    return out
