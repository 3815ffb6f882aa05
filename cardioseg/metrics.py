"""Segmentation and agreement metrics: pure numpy/scipy functions, distances in mm.

Every function takes masks as arrays (any integer or bool dtype; non-zero = inside) and never
modifies them. Distances use the voxel spacing from the image header (``spacing_mm``, one
value per array axis), never an assumed one.

Definitions (DESIGN.md):

- **Dice** = 2|A∩B| / (|A|+|B|); **Jaccard** = |A∩B| / |A∪B|.
- **Surface** of a mask: its voxels with at least one of their 2·ndim face neighbours outside
  the mask. The array border counts as outside, so a mask touching the border is closed there.
- **Directed surface distances** A→B: for each surface voxel of A, the Euclidean distance (mm,
  between voxel centres) to the nearest surface voxel of B.
- **HD** = max of the two directed maxima. **HD95** = max of the two directed 95th
  percentiles (``numpy.percentile``, linear interpolation over the surface voxels).
- **ASSD** (average symmetric surface distance) = mean of all directed distances of both
  directions pooled, so the larger surface weighs more.
- **MSD** (the DMR paper's mean surface distance, Eq. 9) = the mean of the two directed mean
  distances, each direction weighing one half whatever its size. MSD equals ASSD when both
  surfaces have the same number of voxels.
- **Empty masks:** Dice and Jaccard are NaN when both masks are empty (nothing to agree on)
  and 0 when exactly one is. Every distance is NaN when both are empty and ``inf`` when
  exactly one is.

Work is cropped to the bounding box of A∪B plus a one-voxel margin before any erosion or
distance transform; the crop changes no result (every surface voxel lies inside it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "Agreement",
    "SurfaceDistances",
    "agreement",
    "assd_mm",
    "dice",
    "hausdorff_mm",
    "hd95_mm",
    "jaccard",
    "msd_mm",
    "slice_regions",
    "surface_distances",
    "surface_voxels",
    "volume_difference_ml",
    "wilcoxon_p",
]


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    return a, b


def _spacing(spacing_mm: Sequence[float], ndim: int) -> tuple[float, ...]:
    s = tuple(float(v) for v in spacing_mm)
    if len(s) != ndim:
        raise ValueError(f"spacing_mm has {len(s)} values for a {ndim}-D mask")
    if not all(math.isfinite(v) and v > 0 for v in s):
        raise ValueError(f"spacing_mm must be positive and finite, got {s}")
    return s


# ------------------------------------------------------------------------------ overlap


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient of two masks; NaN when both are empty, 0 when exactly one is.

    >>> dice(np.array([1, 1, 0, 0]), np.array([0, 1, 1, 0]))
    0.5
    >>> dice(np.zeros(3), np.zeros(3))
    nan
    """
    a, b = _pair(pred, ref)
    total = int(a.sum()) + int(b.sum())
    return float("nan") if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def jaccard(pred: np.ndarray, ref: np.ndarray) -> float:
    """Jaccard index (intersection over union); NaN when both are empty, 0 when one is.

    >>> round(jaccard(np.array([1, 1, 0, 0]), np.array([0, 1, 1, 0])), 4)
    0.3333
    """
    a, b = _pair(pred, ref)
    union = int(np.count_nonzero(a | b))
    return float("nan") if union == 0 else int(np.count_nonzero(a & b)) / union


def volume_difference_ml(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Predicted minus reference volume in mL (voxel count x voxel volume).

    >>> pred, ref = np.ones((2, 2, 2)), np.zeros((2, 2, 2))
    >>> ref[..., 0] = 1
    >>> volume_difference_ml(pred, ref, (10, 10, 10))
    4.0
    """
    a, b = _pair(pred, ref)
    voxel_ml = float(np.prod(_spacing(spacing_mm, a.ndim))) / 1000.0
    return (int(a.sum()) - int(b.sum())) * voxel_ml


# ------------------------------------------------------------------------------ surfaces


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boolean array of the mask's surface: voxels with a face neighbour outside the mask.

    >>> surface_voxels(np.ones((3, 3), bool)).astype(int)
    array([[1, 1, 1],
           [1, 0, 1],
           [1, 1, 1]])
    """
    m = np.asarray(mask) != 0
    if not m.any():
        return m
    structure = ndimage.generate_binary_structure(m.ndim, 1)
    return m & ~ndimage.binary_erosion(m, structure=structure, border_value=0)


def _crop_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of a|b plus one voxel on each side, clipped to the array."""
    union = a | b
    box = []
    for axis in range(union.ndim):
        other = tuple(i for i in range(union.ndim) if i != axis)
        idx = np.flatnonzero(union.any(axis=other))
        box.append(slice(max(int(idx[0]) - 1, 0), min(int(idx[-1]) + 2, union.shape[axis])))
    return tuple(box)


@dataclass(frozen=True)
class SurfaceDistances:
    """Directed surface distances between a prediction and a reference (mm).

    Attributes:
        pred_to_ref_mm: for each surface voxel of the prediction, the distance to the nearest
            surface voxel of the reference (1-D, in no particular order).
        ref_to_pred_mm: the same from the reference's surface to the prediction's.
    """

    pred_to_ref_mm: np.ndarray
    ref_to_pred_mm: np.ndarray

    @property
    def _empty(self) -> float | None:
        """NaN if both surfaces are empty, inf if exactly one is, else None."""
        n_a, n_b = self.pred_to_ref_mm.size, self.ref_to_pred_mm.size
        if n_a == 0 and n_b == 0:
            return float("nan")
        if n_a == 0 or n_b == 0:
            return float("inf")
        return None

    def percentile_mm(self, q: float) -> float:
        """Symmetric q-th percentile distance: max of the two directed percentiles."""
        if self._empty is not None:
            return self._empty
        return float(max(np.percentile(self.pred_to_ref_mm, q), np.percentile(self.ref_to_pred_mm, q)))

    @property
    def hd_mm(self) -> float:
        """Hausdorff distance: max of the two directed maxima."""
        if self._empty is not None:
            return self._empty
        return float(max(self.pred_to_ref_mm.max(), self.ref_to_pred_mm.max()))

    @property
    def hd95_mm(self) -> float:
        """95th-percentile Hausdorff distance: max of the two directed 95th percentiles."""
        return self.percentile_mm(95.0)

    @property
    def mean_pred_to_ref_mm(self) -> float:
        """Directed mean distance from the prediction's surface to the reference's."""
        return self._empty if self._empty is not None else float(self.pred_to_ref_mm.mean())

    @property
    def mean_ref_to_pred_mm(self) -> float:
        """Directed mean distance from the reference's surface to the prediction's."""
        return self._empty if self._empty is not None else float(self.ref_to_pred_mm.mean())

    @property
    def assd_mm(self) -> float:
        """Average symmetric surface distance: mean of both directions' distances pooled."""
        if self._empty is not None:
            return self._empty
        total = float(self.pred_to_ref_mm.sum()) + float(self.ref_to_pred_mm.sum())
        return total / (self.pred_to_ref_mm.size + self.ref_to_pred_mm.size)

    @property
    def msd_mm(self) -> float:
        """The DMR paper's MSD (Eq. 9): the mean of the two directed mean distances."""
        if self._empty is not None:
            return self._empty
        return 0.5 * (self.mean_pred_to_ref_mm + self.mean_ref_to_pred_mm)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float]) -> SurfaceDistances:
    """Directed surface distances both ways (see the module docstring for the definitions).

    >>> a, b = np.zeros((5, 1, 1)), np.zeros((5, 1, 1))
    >>> a[0], b[2] = 1, 1  # two single voxels, 2 voxels apart along an axis of 1 mm
    >>> surface_distances(a, b, (1.0, 1.0, 1.0)).hd_mm
    2.0
    """
    a, b = _pair(pred, ref)
    spacing = _spacing(spacing_mm, a.ndim)
    if not a.any() and not b.any():
        return SurfaceDistances(np.zeros(0), np.zeros(0))
    box = _crop_box(a, b)
    a, b = a[box], b[box]
    sa, sb = surface_voxels(a), surface_voxels(b)

    def to(surface: np.ndarray, points: np.ndarray) -> np.ndarray:
        if not points.any():
            return np.zeros(0)
        if not surface.any():  # nothing to reach: the one-empty case, inf by definition
            return np.full(int(points.sum()), np.inf)
        return ndimage.distance_transform_edt(~surface, sampling=spacing)[points]

    return SurfaceDistances(pred_to_ref_mm=to(sb, sa), ref_to_pred_mm=to(sa, sb))


def hausdorff_mm(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Hausdorff distance in mm (NaN both empty, inf one empty)."""
    return surface_distances(pred, ref, spacing_mm).hd_mm


def hd95_mm(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance in mm (NaN both empty, inf one empty)."""
    return surface_distances(pred, ref, spacing_mm).hd95_mm


def assd_mm(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Average symmetric surface distance in mm (NaN both empty, inf one empty)."""
    return surface_distances(pred, ref, spacing_mm).assd_mm


def msd_mm(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Mean surface distance of the DMR paper's Eq. 9 in mm (NaN both empty, inf one empty)."""
    return surface_distances(pred, ref, spacing_mm).msd_mm


# ------------------------------------------------------------------------------ regions

REGIONS = ("apical", "mid", "basal")


def slice_regions(ref_labels: np.ndarray, slice_axis: int, apex_values: Sequence[int] | None = None) -> np.ndarray:
    """Label every slice of a reference mask ``"apical"``, ``"mid"`` or ``"basal"``.

    As in the DMR paper: of the slices where the reference has any foreground, the 25 % at each
    end (``k = max(1, round(n / 4))`` slices, halves rounded up) are apical or basal and the
    rest are mid; slices beyond the reference's extent join the nearer end ("and beyond").
    The apical end is the one whose end slices hold less of ``apex_values`` (the LV: cavity
    and myocardium; all foreground when None or absent). With fewer than 3 foreground slices
    everything is ``"mid"``.

    >>> ref = np.zeros((3, 3, 8), int)
    >>> ref[1, 1, 1:7] = 3  # LV in slices 1..6 (k = 2 slices per end) ...
    >>> ref[:, :, 5:7] = 3  # ... larger towards the base, at the high end
    >>> list(slice_regions(ref, 2, apex_values=[3]))
    ['apical', 'apical', 'apical', 'mid', 'mid', 'basal', 'basal', 'basal']
    """
    ref = np.asarray(ref_labels)
    other = tuple(i for i in range(ref.ndim) if i != slice_axis)
    n_slices = ref.shape[slice_axis]
    present = np.flatnonzero((ref != 0).any(axis=other))
    regions = np.full(n_slices, "mid", dtype=object)
    if present.size < 3:
        return regions
    first, last = int(present[0]), int(present[-1])
    n = last - first + 1
    k = max(1, math.floor(n / 4 + 0.5))
    apex_mask = np.isin(ref, list(apex_values)) if apex_values is not None else ref != 0
    if not apex_mask.any():
        apex_mask = ref != 0
    area = apex_mask.sum(axis=other)
    low_end, high_end = area[first : first + k].sum(), area[last - k + 1 : last + 1].sum()
    low_name, high_name = ("apical", "basal") if low_end <= high_end else ("basal", "apical")
    regions[: first + k] = low_name
    regions[last - k + 1 :] = high_name
    return regions


# ------------------------------------------------------------------------------ statistics


def _finite_pairs(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The paired values as float arrays, without the pairs where either is not finite."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"{x.size} values paired with {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


@dataclass(frozen=True)
class Agreement:
    """Agreement of paired measurements (prediction minus reference), Bland–Altman style.

    ``loa_low``/``loa_high`` are bias ∓ 1.96 SD of the differences (95 % limits of agreement).
    Pairs where either value is not finite are dropped; with fewer than 2 pairs the SD,
    limits and correlation are NaN, and the correlation is NaN when either side is constant.
    """

    n: int
    pearson_r: float
    bias: float
    sd_diff: float
    loa_low: float
    loa_high: float
    mae: float


def agreement(pred: Sequence[float], ref: Sequence[float]) -> Agreement:
    """Pearson r, bias, SD of differences, 95 % limits of agreement and mean absolute error.

    >>> a = agreement([10.0, 20.0, 30.0], [11.0, 19.0, 31.0])
    >>> a.n, round(a.bias, 4), round(a.mae, 4)
    (3, -0.3333, 1.0)
    """
    p, r = _finite_pairs(pred, ref)
    n = int(p.size)
    nan = float("nan")
    if n == 0:
        return Agreement(0, nan, nan, nan, nan, nan, nan)
    d = p - r
    bias = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else nan
    r_coef = nan
    if n > 1 and p.std() > 0 and r.std() > 0:
        r_coef = float(np.corrcoef(p, r)[0, 1])
    return Agreement(n, r_coef, bias, sd, bias - 1.96 * sd, bias + 1.96 * sd, float(np.abs(d).mean()))


def wilcoxon_p(a: Sequence[float], b: Sequence[float]) -> tuple[int, float]:
    """Two-sided paired Wilcoxon signed-rank test of a vs b: ``(n_pairs, p_value)``.

    Pairs where either value is not finite are dropped. All-equal pairs give p = 1; no pairs
    give p = NaN. Zero differences are discarded (scipy's ``zero_method="wilcox"``).

    >>> wilcoxon_p([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    (3, 1.0)
    """
    from scipy.stats import wilcoxon

    x, y = _finite_pairs(a, b)
    n = int(x.size)
    if n == 0:
        return 0, float("nan")
    if np.all(x == y):
        return n, 1.0
    return n, float(wilcoxon(x, y, zero_method="wilcox", alternative="two-sided").pvalue)
