"""Reorientation to the model's canonical space, in-plane resampling, and exact inverses.

The model sees 2D short-axis slices. A stored array is brought into a canonical voxel order
that depends only on the physical geometry (not on how the file happens to store it):

1. the slice axis is the spatial axis with the largest spacing (ties -> the stored 3rd axis);
2. the two in-plane axes are ordered by the world axis they point closest to (x before y
   before z, nibabel's ``io_orientation``) and every axis is flipped to point along +world.

This is a pure transpose + flips, so it is inverted exactly. In-plane the canonical slices
are then resampled onto a fixed ``fov_px`` x ``fov_px`` grid of ``spacing_mm`` pixels whose
centre is the centre of the image; the inverse maps model-space class probabilities back
onto the native grid before the argmax.
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
    ``(n_a - 1) / 2 + (j - (fov_px - 1) / 2) * spacing_mm / native_spacing_a``: both grids
    share their centre, so flips commute with resampling.
    """

    native_shape: tuple[int, int]
    native_spacing_mm: tuple[float, float]
    spacing_mm: float
    fov_px: int

    def _scale_offset(self) -> tuple[np.ndarray, np.ndarray]:
        scale = np.array([self.spacing_mm / s for s in self.native_spacing_mm])
        centre_native = (np.array(self.native_shape, dtype=np.float64) - 1) / 2
        centre_model = (self.fov_px - 1) / 2
        return scale, centre_native - scale * centre_model

    def to_model(self, slices: np.ndarray, order: int = 1, cval: float = 0.0) -> np.ndarray:
        """(A, B, S) native canonical -> (fov, fov, S) model grid (float32)."""
        scale, offset = self._scale_offset()
        return ndimage.affine_transform(
            np.asarray(slices, dtype=np.float32),
            matrix=np.array([scale[0], scale[1], 1.0]),
            offset=np.array([offset[0], offset[1], 0.0]),
            output_shape=(self.fov_px, self.fov_px, slices.shape[2]),
            order=order,
            mode="constant",
            cval=cval,
            prefilter=False,
        )

    def to_native(self, slices: np.ndarray, order: int = 1, cval: float = 0.0) -> np.ndarray:
        """(fov, fov, S) model grid -> (A, B, S) native canonical grid (float32)."""
        scale, offset = self._scale_offset()
        inv_scale = 1.0 / scale
        return ndimage.affine_transform(
            np.asarray(slices, dtype=np.float32),
            matrix=np.array([inv_scale[0], inv_scale[1], 1.0]),
            offset=np.array([-offset[0] * inv_scale[0], -offset[1] * inv_scale[1], 0.0]),
            output_shape=(self.native_shape[0], self.native_shape[1], slices.shape[2]),
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
    def for_image(cls, affine: np.ndarray, shape: tuple[int, ...], spacing_mm: float, fov_px: int) -> ModelSpace:
        o = find_orientation(affine)
        spacing = canonical_spacing(tuple(np.linalg.norm(affine[:3, :3], axis=0)), o)  # type: ignore[arg-type]
        cshape = tuple(int(shape[i]) for i in o.perm)
        grid = InPlaneGrid((cshape[0], cshape[1]), (spacing[0], spacing[1]), spacing_mm, fov_px)
        return cls(o, grid, tuple(int(s) for s in shape[:3]))  # type: ignore[arg-type]

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
        """(S, C, fov, fov) probabilities -> stored-space uint8 labels (argmax at native resolution)."""
        native = self.probabilities_to_native(probs)
        return np.ascontiguousarray(np.argmax(native, axis=0).astype(np.uint8))


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(...) integer labels -> (..., C) float32 one-hot."""
    return (labels[..., None] == np.arange(n_classes)).astype(np.float32)
