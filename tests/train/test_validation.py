"""Validation: Dice per structure of the cache's label map (not ACDC's values by assumption),
by phase, on frames segmented as ``cardioseg predict`` segments them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cardioseg.dataset import load_cache
from cardioseg.labels import ACDC, MNMS
from cardioseg.train import validation


class _Model:
    """validate() only switches the model to evaluation mode; the predictions are stubbed."""

    def eval(self) -> None:
        pass


@pytest.mark.parametrize("relabel", [False, True])
def test_dice_per_structure_follows_the_caches_label_map(
    relabel: bool, tiny_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same masks stored with ACDC's values or M&Ms' (rv 3, lv 1) score the same per
    structure; the prediction misses the LV, so only ``dice_lv_*`` is 0."""
    cache = load_cache(tiny_cache)
    labels = np.asarray(cache.labels)
    if relabel:  # ACDC rv 1, myo 2, lv 3 -> M&Ms rv 3, myo 2, lv 1
        labels = np.array([0, 3, 2, 1], np.uint8)[labels]
        cache = replace(cache, labels=labels, meta={**cache.meta, "label_map": MNMS.as_dict(), "label_map_name": "mnms"})
    lv = (MNMS if relabel else ACDC).lv
    by_image = {np.asarray(cache.images[i]).tobytes(): labels[i] for i in range(len(cache))}

    def predict(model: Any, images: np.ndarray, device: str, spec: Any = None) -> np.ndarray:
        pred = np.stack([by_image[np.asarray(im).tobytes()] for im in images])
        return np.where(pred == lv, 0, pred).astype(np.uint8)

    monkeypatch.setattr(validation, "predict_slices", predict)
    _, val_names = cache.split(0, 5)
    result = validation.validate(_Model(), cache, set(val_names), "cpu")
    assert list(result) == ["dice_rv_ed", "dice_myo_ed", "dice_lv_ed", "dice_rv_es", "dice_myo_es", "dice_lv_es",
                            "dice_mean"]  # fmt: skip
    assert result["dice_rv_ed"] == result["dice_myo_es"] == 1.0 and result["dice_lv_ed"] == result["dice_lv_es"] == 0
    assert result["dice_mean"] == pytest.approx(4 / 6)
    # an explicit label map wins over the cache's: ACDC's values read the M&Ms masks' rv and lv swapped
    swapped = validation.validate(_Model(), cache, set(val_names), "cpu", label_map=ACDC if relabel else MNMS)
    assert swapped["dice_rv_ed"] == 0 and swapped["dice_lv_ed"] == 1.0


def test_dice_per_label() -> None:
    pred, ref = np.array([[1, 1], [2, 0]]), np.array([[1, 0], [3, 0]])
    assert validation.dice_per_label(pred, ref, (1, 2, 3)) == [pytest.approx(2 / 3), 0.0, 0.0]
    assert np.isnan(validation.dice_per_label(pred, ref, (4,))[0])
