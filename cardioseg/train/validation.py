"""Validation during training: each validation frame segmented as ``cardioseg predict`` does
it, scored by model-space 3D Dice per structure of the cache's label map."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cardioseg.dataset import Cache
from cardioseg.labels import LabelMap
from cardioseg.models.inputs import InputSpec
from cardioseg.train.config import N_CLASSES
from cardioseg.train.data import cache_label_map

__all__ = ["dice_per_label", "predict_slices", "validate"]


def dice_per_label(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int]) -> list[float]:
    """3D Dice per label value (NaN when both masks are empty).

    >>> dice_per_label(np.array([1, 1, 2, 0]), np.array([1, 0, 2, 0]), (1, 2, 3))
    [0.6666666666666666, 1.0, nan]
    """
    from cardioseg.metrics import dice

    return [dice(pred == k, ref == k) for k in labels]


def predict_slices(
    model: Any, slices: np.ndarray, device: str, spec: InputSpec | None = None, batch: int = 32
) -> np.ndarray:
    """(S, H, W) slices of one frame, in order -> (S, H, W) uint8 labels, with the inputs and
    forward passes of ``cardioseg.inference`` (neighbour stacks, whole stacks), bf16 autocast."""
    from cardioseg.inference import forward_probabilities, model_batches

    slices = np.asarray(slices, dtype=np.float32)
    batches = model_batches([slices], spec or InputSpec(), batch)
    probs = forward_probabilities(model, batches, device, bf16=True, n_classes=N_CLASSES, plane=slices.shape[1:])
    return probs.argmax(1).astype(np.uint8)


def validate(
    model: Any,
    cache: Cache,
    patients: set[str],
    device: str,
    spec: InputSpec | None = None,
    label_map: LabelMap | None = None,
) -> dict[str, float]:
    """Mean model-space 3D Dice per structure over the patients' frames (ED and ES separately):
    ``dice_{rv,myo,lv}_{ed,es}`` and their mean ``dice_mean``.

    Each frame is segmented as ``cardioseg predict`` does it, by ``spec`` (default one 2D slice);
    the structures' label values are ``label_map``'s (default: the cache's own)."""
    structures = (label_map or cache_label_map(cache)).structures
    model.eval()
    scores: dict[str, list[list[float]]] = {}
    for idx in cache.frame_rows(cache.slices_of(patients)):
        phase = cache.index[idx[0]]["phase"] or "all"
        pred = predict_slices(model, cache.images[idx], device, spec)
        scores.setdefault(phase, []).append(dice_per_label(pred, np.asarray(cache.labels[idx]), list(structures.values())))
    result = {}
    for phase, rows in sorted(scores.items()):
        arr = np.array(rows)
        for j, name in enumerate(structures):
            result[f"dice_{name}_{phase.lower()}"] = float(np.nanmean(arr[:, j]))
    result["dice_mean"] = float(np.mean(list(result.values())))
    return result
