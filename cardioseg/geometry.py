"""Reorientation to the model's canonical space, in-plane resampling, and exact inverses.

The model sees 2D short-axis slices. A stored array is brought into a canonical voxel order
that depends only on the physical geometry (not on how the file happens to store it):

1. the slice axis is the spatial axis with the largest spacing (ties -> the stored 3rd axis);
2. the two in-plane axes are ordered by the world axis they point closest to (x before y
   before z, nibabel's ``io_orientation``) and every axis is flipped to point along +world.

This is a pure transpose + flips, so it is inverted exactly. In-plane the canonical slices
are then resampled onto a fixed ``fov_px`` x ``fov_px`` grid of ``spacing_mm`` pixels whose
centre is the centre of the image, or a given point (a heart-centred crop); the inverse maps
model-space class probabilities back onto the native grid before the argmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Orientation:
    """How a stored (X, Y, Z[, ...]) array maps onto canonical (in-plane 0, in-plane 1, slice).

    ``perm[k]`` is the stored axis that becomes canonical axis ``k``; ``flip[k]`` says whether
    canonical axis ``k`` is reversed after the transpose.
    """

    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]


def find_orientation(affine: np.ndarray) -> Orientation:
    """The canonical orientation of an image with this 4x4 voxel->world affine."""
    from nibabel.orientations import io_orientation

    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    largest = float(spacing.max())
    candidates = [i for i in range(3) if spacing[i] >= largest * (1 - 1e-3)]
    slice_axis = 2 if 2 in candidates or len(candidates) == 3 else candidates[0]
    ornt = io_orientation(affine)  # rows: stored axis -> (world axis, +1/-1)
    inplane = sorted((i for i in range(3) if i != slice_axis), key=lambda i: ornt[i, 0])
    perm = (inplane[0], inplane[1], slice_axis)
    flip = tuple(bool(ornt[i, 1] < 0) for i in perm)
    return Orientation(perm=perm, flip=flip)  # type: ignore[arg-type]


def to_canonical(array: np.ndarray, o: Orientation) -> np.ndarray:
    """Stored (X, Y, Z, *rest) -> canonical (A, B, S, *rest). Returns a view where possible."""
    rest = tuple(range(3, array.ndim))
    out = np.transpose(array, o.perm + rest)
    for axis, f in enumerate(o.flip):
        if f:
            out = np.flip(out, axis=axis)
    return out


def from_canonical(array: np.ndarray, o: Orientation) -> np.ndarray:
    """Exact inverse of :func:`to_canonical`."""
    out = array
    for axis, f in enumerate(o.flip):
        if f:
            out = np.flip(out, axis=axis)
    rest = tuple(range(3, array.ndim))
    inverse = tuple(int(i) for i in np.argsort(o.perm)) + rest
    return np.transpose(out, inverse)


def canonical_spacing(spacing_mm: tuple[float, float, float], o: Orientation) -> tuple[float, float, float]:
    return tuple(float(spacing_mm[i]) for i in o.perm)  # type: ignore[return-value]


@dataclass(frozen=True)
class InPlaneGrid:
    """The mapping between a native canonical slice grid and the model's square grid.

    Model pixel ``j`` along in-plane axis ``a`` sits at native index
    ``c_a + (j - (fov_px - 1) / 2) * spacing_mm / native_spacing_a``, where ``c`` is
    ``centre`` (canonical native indices, e.g. the heart) or, by default, the image centre
    ``(n_a - 1) / 2`` (then flips commute with resampling).
    """

    native_shape: tuple[int, int]
    native_spacing_mm: tuple[float, float]
    spacing_mm: float
    fov_px: int
    centre: tuple[float, float] | None = None

    def _scale_offset(self) -> tuple[np.ndarray, np.ndarray]:
        scale = np.array([self.spacing_mm / s for s in self.native_spacing_mm])
        if self.centre is not None:
            centre_native = np.array(self.centre, dtype=np.float64)
        else:
            centre_native = (np.array(self.native_shape, dtype=np.float64) - 1) / 2
        centre_model = (self.fov_px - 1) / 2
        return scale, centre_native - scale * centre_model

    def model_to_native(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) model pixel coordinates -> (N, 2) canonical native indices (fractional)."""
        scale, offset = self._scale_offset()
        return offset + np.asarray(points, dtype=np.float64) * scale

    def to_model(self, slices: np.ndarray, order: int = 1, cval: float = 0.0) -> np.ndarray:
        """(A, B, S) native canonical -> (fov, fov, S) model grid (float32; a view of an (S, fov, fov) array)."""
        scale, offset = self._scale_offset()
        out = _resample_slices(slices, scale, offset, (self.fov_px, self.fov_px), order, cval)
        return np.moveaxis(out, 0, 2)

    def to_native(self, slices: np.ndarray, order: int = 1, cval: float = 0.0) -> np.ndarray:
        """(fov, fov, S) model grid -> (A, B, S) native canonical grid (float32; a view of an (S, A, B) array)."""
        scale, offset = self._scale_offset()
        inv_scale = 1.0 / scale
        out = _resample_slices(slices, inv_scale, -offset * inv_scale, self.native_shape, order, cval)
        return np.moveaxis(out, 0, 2)

    def native_window(self, axis: int, lo: int, hi: int) -> tuple[int, int, float]:
        """The native indices ``[start, stop)`` along in-plane ``axis`` whose linear interpolation
        can touch model pixels ``lo..hi`` (with a margin), and the offset that makes
        ``affine_transform`` on the window compute exactly the same coordinates as on the
        whole grid (``(start, full offset)`` when no exact shifted offset exists).

        scipy computes the input coordinate of output index ``k`` as ``(k + offset / zoom) * zoom``;
        a window starting at ``start`` reproduces it bit for bit when ``start + offset / zoom`` is
        exact in floating point and the new offset divides back to it.
        """
        scale, offset = self._scale_offset()
        zoom = 1.0 / float(scale[axis])
        full_offset = float(-offset[axis] * zoom)
        shift = full_offset / zoom
        n = self.native_shape[axis]
        cc = (np.arange(n, dtype=np.float64) + shift) * zoom  # model coordinate of each native index
        inside = np.flatnonzero((cc > lo - 2) & (cc < hi + 2))
        if inside.size == 0:
            return 0, 0, full_offset
        start, stop = int(inside[0]), int(inside[-1]) + 1
        for k0 in range(start, max(start - 32, 0), -1):
            found = _exact_window_offset(k0, shift, zoom)
            if found is not None:
                return k0, stop, found
        return 0, stop, full_offset


def _exact_window_offset(k0: int, shift: float, zoom: float) -> float | None:
    """An offset ``o`` with ``o / zoom == k0 + shift`` exactly (and ``k0 + shift`` exact), or None."""
    target = k0 + shift
    if (k0 - (target - (target - k0))) + (shift - (target - k0)) != 0.0:  # TwoSum error term
        return None
    guess = target * zoom
    for candidate in (guess, np.nextafter(guess, np.inf), np.nextafter(guess, -np.inf)):
        if float(candidate) / zoom == target:
            return float(candidate)
    return None


def _resample_slices(
    slices: np.ndarray,
    matrix: np.ndarray,
    offset: np.ndarray,
    shape: tuple[int, int],
    order: int,
    cval: float,
) -> np.ndarray:
    """(H, W, S) -> (S, *shape) float32: a 2D ``affine_transform`` per slice.

    Bit for bit what one 3D transform with matrix ``(m0, m1, 1)`` and offset ``(o0, o1, 0)``
    gives (its taps along the slice axis have weights exactly 1 and 0), at half the work.
    """
    src = np.moveaxis(np.asarray(slices, dtype=np.float32), 2, 0)
    out = np.empty((src.shape[0], *shape), dtype=np.float32)
    for s in range(src.shape[0]):
        _affine_2d(src[s], matrix, offset, out[s], order, cval)
    return out


def _affine_2d(
    src: np.ndarray,
    matrix: np.ndarray,
    offset: np.ndarray | tuple[float, float],
    out: np.ndarray,
    order: int,
    cval: float,
) -> None:
    ndimage.affine_transform(
        src,
        matrix=np.asarray(matrix, dtype=np.float64),
        offset=np.asarray(offset, dtype=np.float64),
        output=out,
        order=order,
        mode="constant",
        cval=cval,
        prefilter=False,
    )


@dataclass(frozen=True)
class ModelSpace:
    """Everything needed to go from a stored 3D frame to model slices and back exactly."""

    orientation: Orientation
    grid: InPlaneGrid
    native_shape: tuple[int, int, int]

    @classmethod
    def for_image(
        cls, affine: np.ndarray, shape: tuple[int, ...], spacing_mm: float, fov_px: int,
        centre_world_mm: np.ndarray | None = None,
    ) -> ModelSpace:
        """The model grid of an image; centred on the image, or on the in-plane projection of
        the world point ``centre_world_mm`` (x, y, z in mm)."""
        o = find_orientation(affine)
        spacing = canonical_spacing(tuple(np.linalg.norm(affine[:3, :3], axis=0)), o)  # type: ignore[arg-type]
        cshape = tuple(int(shape[i]) for i in o.perm)
        centre = None
        if centre_world_mm is not None:
            stored = np.linalg.solve(np.asarray(affine, dtype=np.float64), [*centre_world_mm, 1.0])[:3]
            canon = [cshape[k] - 1 - stored[o.perm[k]] if o.flip[k] else stored[o.perm[k]] for k in range(2)]
            centre = (float(canon[0]), float(canon[1]))
        grid = InPlaneGrid((cshape[0], cshape[1]), (spacing[0], spacing[1]), spacing_mm, fov_px, centre)
        return cls(o, grid, tuple(int(s) for s in shape[:3]))  # type: ignore[arg-type]

    def model_to_world(self, points: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """(N, 3) model coordinates (slice, row, column) -> (N, 3) world points (mm)."""
        points = np.asarray(points, dtype=np.float64)
        native = self.grid.model_to_native(points[:, 1:])
        canon = np.column_stack([native, points[:, 0]])
        cshape = [self.native_shape[i] for i in self.orientation.perm]
        stored = np.zeros_like(canon)
        for k in range(3):
            values = cshape[k] - 1 - canon[:, k] if self.orientation.flip[k] else canon[:, k]
            stored[:, self.orientation.perm[k]] = values
        return (np.asarray(affine, dtype=np.float64) @ np.column_stack([stored, np.ones(len(stored))]).T).T[:, :3]

    def image_to_model(self, frame: np.ndarray, cval: float) -> np.ndarray:
        """Stored 3D frame (already intensity-normalised) -> (S, fov, fov) float32 slices."""
        canon = to_canonical(frame, self.orientation)
        return np.moveaxis(self.grid.to_model(canon, order=1, cval=cval), 2, 0)

    def labels_to_model(self, labels: np.ndarray) -> np.ndarray:
        """Stored 3D label frame -> (S, fov, fov) uint8 (nearest neighbour; for training)."""
        canon = to_canonical(labels, self.orientation)
        return np.moveaxis(self.grid.to_model(canon, order=0, cval=0), 2, 0).astype(np.uint8)

    def probabilities_to_native(self, probs: np.ndarray) -> np.ndarray:
        """(S, C, fov, fov) model-space probabilities -> stored-space (C, X, Y, Z) float32.

        Outside the model's field of view the background (class 0) has probability 1.
        """
        n_classes = probs.shape[1]
        out = []
        for c in range(n_classes):
            chan = np.moveaxis(probs[:, c], 0, 2)  # (fov, fov, S)
            native = self.grid.to_native(chan, order=1, cval=1.0 if c == 0 else 0.0)
            out.append(from_canonical(native, self.orientation))
        return np.stack(out, axis=0)

    def probabilities_to_labels(self, probs: np.ndarray) -> np.ndarray:
        """(S, C, fov, fov) probabilities -> stored-space uint8 labels (argmax at native resolution).

        Exactly ``argmax(probabilities_to_native(probs))`` (ties: the lowest label), computed
        only where it can differ from background: linear interpolation with non-negative
        weights is monotone, so a native pixel whose model-space neighbours all have
        background as (one of) their largest class, or that lies outside the field of view,
        comes back as background. The rest, a window around the heart per slice, is
        resampled with the same coordinates as the whole grid (see ``native_window``).
        """
        probs = np.asarray(probs, dtype=np.float32)
        if probs.shape[1] < 2 or not np.isfinite(probs.sum()):  # NaN/Inf: the general path keeps argmax's NaN rules
            native = self.probabilities_to_native(probs)
            return np.ascontiguousarray(np.argmax(native, axis=0).astype(np.uint8))
        n_slices, n_classes = probs.shape[:2]
        grid = self.grid
        inv_scale = 1.0 / grid._scale_offset()[0]
        canon = np.zeros((n_slices, *grid.native_shape), dtype=np.uint8)
        foreground = probs[:, 1:].max(axis=1) > probs[:, 0]  # model-space argmax != 0
        for s in range(n_slices):
            fg = foreground[s]
            rows = np.flatnonzero(fg.any(axis=1))
            if rows.size == 0:
                continue
            cols = np.flatnonzero(fg.any(axis=0))
            r0, r1, o0 = grid.native_window(0, int(rows[0]), int(rows[-1]))
            c0, c1, o1 = grid.native_window(1, int(cols[0]), int(cols[-1]))
            if r1 <= r0 or c1 <= c0:
                continue
            window = np.empty((n_classes, r1 - r0, c1 - c0), dtype=np.float32)
            for c in range(n_classes):
                _affine_2d(probs[s, c], inv_scale, (o0, o1), window[c], 1, 1.0 if c == 0 else 0.0)
            canon[s, r0:r1, c0:c1] = _argmax_classes(window)
        return np.ascontiguousarray(from_canonical(np.moveaxis(canon, 0, 2), self.orientation))


def _argmax_classes(scores: np.ndarray) -> np.ndarray:
    """(C, ...) -> uint8 index of the largest score, the lowest on ties (``np.argmax`` without NaN)."""
    labels = np.zeros(scores.shape[1:], dtype=np.uint8)
    best = scores[0].copy()
    for c in range(1, len(scores)):
        better = scores[c] > best
        labels[better] = c
        np.maximum(best, scores[c], out=best)
    return labels


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(...) integer labels -> (..., C) float32 one-hot."""
    return (labels[..., None] == np.arange(n_classes)).astype(np.float32)
