"""Intensity normalisation and the model-space preparation shared by training and inference."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from cardioseg.geometry import ModelSpace


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


def image_to_model(
    frame: np.ndarray, affine: np.ndarray, cfg: PreprocessConfig, centre_world_mm: np.ndarray | None = None
) -> tuple[ModelSpace, np.ndarray]:
    """One stored 3D frame -> (its ModelSpace, the (S, fov, fov) float32 normalised slices the
    network sees), the grid centred on the image or on ``centre_world_mm``. The one model-space
    preparation of training (the cache), inference and the benchmark; intensities are
    normalised over the whole frame, whatever the grid."""
    from cardioseg.geometry import ModelSpace

    space = ModelSpace.for_image(affine, frame.shape, cfg.spacing_mm, cfg.fov_px, centre_world_mm)
    norm, floor = normalize_intensity(frame, cfg.clip_low_pct, cfg.clip_high_pct)
    return space, space.image_to_model(norm, cval=floor)


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
    lo, hi = percentiles(frame, (low_pct, high_pct))
    data = np.asarray(frame, dtype=np.float32)
    # one float32 working copy, changed in place (the same arithmetic as out-of-place, fewer
    # 2-MB temporaries; ``frame`` itself is never modified)
    clipped = np.clip(data, np.float32(lo), np.float32(hi), out=None if np.may_share_memory(data, frame) else data)
    mean, std = float(clipped.mean(dtype=np.float64)), float(clipped.std(dtype=np.float64))  # float64: no overflow near float32's max
    if std < 1e-8:  # a constant image: nothing to see, map to zeros
        return np.zeros_like(clipped), 0.0
    clipped -= mean  # float32 - Python float: float32 arithmetic, as ``clipped - mean``
    clipped /= std
    return clipped, (lo - mean) / std


def percentiles(frame: np.ndarray, qs: tuple[float, ...]) -> tuple[float, ...]:
    """``np.percentile(frame as float32, list(qs))`` (linear interpolation; a list, whose values
    numpy computes in float64, where a scalar q gives float32), exactly; for
    8- and 16-bit integer voxels (what scanners store) from a histogram instead of a partial
    sort: the two order statistics around each percentile are read off the cumulative counts
    and interpolated as numpy does, several times faster on a cine frame.

    >>> x = np.arange(1000, dtype=np.int16).reshape(10, 10, 10) % 97
    >>> percentiles(x, (1.0, 99.0)) == tuple(float(v) for v in np.percentile(x.astype(np.float32), [1.0, 99.0]))
    True
    """
    a = np.asarray(frame)
    if a.size == 0 or a.dtype.kind not in "iu" or a.dtype.itemsize > 2:
        return tuple(float(v) for v in np.percentile(np.asarray(a, dtype=np.float32), list(qs)))
    flat = a.ravel()
    low = int(flat.min())
    counts = np.bincount((flat.astype(np.int32) - low) if low else flat)
    below = np.cumsum(counts)  # below[v]: voxels with a value <= low + v

    def ranked(k: int) -> float:  # the k-th smallest value (0-based)
        return float(low + int(np.searchsorted(below, k, side="right")))

    n = flat.size
    out = []
    for q in qs:
        at = (n - 1) * (float(q) / 100.0)  # numpy's linear virtual index
        k = int(np.floor(at))
        a_k, b_k = ranked(k), ranked(min(k + 1, n - 1))
        t = at - k
        diff = b_k - a_k  # numpy's _lerp, in float64 as numpy computes it for float32 data
        out.append(b_k - diff * (1.0 - t) if t >= 0.5 else a_k + diff * t)
    return tuple(out)


# ---------------------------------------------------------------------------- distance maps

DISTANCE_TRUNCATION_PX = 250.0  # T of the DMR paper's Eq. 2 ("full distance map")


def truncated_signed_distance(mask: np.ndarray, truncation_px: float = DISTANCE_TRUNCATION_PX) -> np.ndarray:
    """The DMR paper's truncated signed distance map (Eq. 2) of one 2D binary mask, in pixels.

    Inside the object: the distance to the nearest background pixel (> 0; for a mask with no
    background, to just beyond the array border). Outside: minus the
    distance to the nearest object pixel, truncated at ``-truncation_px``. An empty mask gives
    ``-truncation_px`` everywhere.

    >>> m = np.zeros((1, 5), bool); m[0, 1:4] = True
    >>> truncated_signed_distance(m, 2.0).tolist()
    [[-1.0, 1.0, 2.0, 1.0, -1.0]]
    """
    from scipy import ndimage

    m = np.asarray(mask) != 0
    if not m.any():
        return np.full(m.shape, -float(truncation_px), dtype=np.float32)
    if m.all():  # no background at all: measure to just beyond the array border
        inside = ndimage.distance_transform_edt(np.pad(m, 1))[(slice(1, -1),) * m.ndim]
        return inside.astype(np.float32)
    inside = ndimage.distance_transform_edt(m)
    outside = ndimage.distance_transform_edt(~m)
    return np.where(m, inside, -np.minimum(outside, truncation_px)).astype(np.float32)


def distance_maps(labels: np.ndarray, values: tuple[int, ...], truncation_px: float = DISTANCE_TRUNCATION_PX) -> np.ndarray:
    """(len(values), H, W) float32 maps of one 2D label slice, one per foreground value."""
    return np.stack([truncated_signed_distance(labels == v, truncation_px) for v in values])
