"""``Segmenter``: what the batch needs of a predictor, as a structural type.

``cardioseg.inference.Predictor`` and ``Ensemble`` satisfy it without naming it; so can a test
double or another model wrapper. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from cardioseg.inference import Centre, Frame, PredictOptions
    from cardioseg.labels import LabelMap
    from cardioseg.stages import Localisation


class Segmenter(Protocol):
    """What the batch needs of a predictor (``cardioseg.inference.Predictor`` and ``Ensemble``)."""

    @property
    def label_map(self) -> LabelMap: ...

    @property
    def device(self) -> str: ...  # "cpu", "cuda", "cuda:1" ... (written into the report)

    @property
    def precision(self) -> str: ...  # "fp32" | "bf16"

    @property
    def batch_size(self) -> int: ...  # 2D slices per forward pass

    @property
    def options(self) -> PredictOptions: ...

    @property
    def crop_px(self) -> int: ...  # 0: the whole field in one stage; else stage 2's crop (model pixels)

    @property
    def tta(self) -> bool: ...  # test-time rotations

    @property
    def confidence_min(self) -> float: ...  # QC's low_confidence limit for these weights

    @property
    def confidence_min_by_structure(self) -> Mapping[str, float]: ...  # its per-structure limits ({}: none)

    @property
    def weights_report(self) -> dict[str, Any]: ...

    def localise(self, data: np.ndarray, affine: np.ndarray) -> Localisation | None:
        """Stage 1 (where the heart is) of a frame or cine; None when segmenting the full field."""
        ...

    def predict(
        self, data: np.ndarray, affine: np.ndarray, on_frame: Callable[[int], Any] | None = None,
        localisation: Localisation | None = None, stats: dict[str, Any] | None = None,
    ) -> np.ndarray:
        """A 3D frame (X, Y, Z) or a cine (X, Y, Z, T) -> uint8 labels of the same shape."""
        ...

    def predict_many(
        self, frames: Sequence[Frame], on_frame: Callable[[int], Any] | None = None,
        centres: Sequence[Centre] | None = None,
    ) -> list[np.ndarray]:
        """Many (frame, affine) pairs, segmented in shared forward passes -> their uint8 labels."""
        ...
