"""Intensity normalisation and the model-space preparation shared by training and inference."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image is prepared for the network (stored in the weights)."""

    spacing_mm: float = 1.5625  # in-plane pixel size of the model grid (DMR paper)
    fov_px: int = 256  # model grid is fov_px x fov_px pixels (256 px = 400 mm)
    clip_low_pct: float = 1.0  # intensities are clipped at these percentiles ...
    clip_high_pct: float = 99.0
    # ... then z-scored per 3D frame (DMR paper, section II-E)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, float]) -> PreprocessConfig:
        return cls(
            spacing_mm=float(d["spacing_mm"]),
            fov_px=int(d["fov_px"]),
            clip_low_pct=float(d["clip_low_pct"]),
            clip_high_pct=float(d["clip_high_pct"]),
        )


def normalize_intensity(frame: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0) -> tuple[np.ndarray, float]:
    """Clip a 3D frame at two percentiles and z-score it.

    Returns:
        (normalised float32 copy, the normalised value of the lower clip bound). The second is
        what padding outside the image should be filled with.

    >>> x = np.arange(100, dtype=float).reshape(10, 10, 1)
    >>> y, floor = normalize_intensity(x)
    >>> bool(abs(y.mean()) < 1e-5 and abs(y.std() - 1) < 1e-5)
    True
    """
    data = np.asarray(frame, dtype=np.float32)
    lo, hi = (float(v) for v in np.percentile(data, [low_pct, high_pct]))
    clipped = np.clip(data, np.float32(lo), np.float32(hi))
    mean, std = float(clipped.mean()), float(clipped.std())
    if std < 1e-8:  # a constant image: nothing to see, map to zeros
        return np.zeros_like(clipped), 0.0
    return ((clipped - mean) / std).astype(np.float32, copy=False), (lo - mean) / std
