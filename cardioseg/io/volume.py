"""``Volume``: an image with its geometry and what its reader learnt; the checks every reader applies.

Readers (:mod:`cardioseg.io.nifti`, :mod:`cardioseg.io.dicom`) build a ``Volume`` and pass it
through :func:`check_voxels`; nothing in cardioseg modifies a ``Volume`` or its array after that.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cardioseg.errors import ConfigError, UnsupportedInputError
from cardioseg.io.layouts import strip_image_suffix

__all__ = [
    "DEFAULT_MAX_VOXELS",
    "LABEL_MAP_WARNING",
    "Volume",
    "VolumeMeta",
    "check_voxel_count",
    "check_voxels",
    "max_voxels_default",
]


@dataclass(frozen=True)
class VolumeMeta:
    """What a reader learnt beyond the array and affine, for quality control and the report.

    Every field but ``source`` and ``warnings`` is None when the reader does not know it
    (NIfTI files give only those two); the DICOM fields are described in :mod:`cardioseg.io.dicom`.
    """

    source: str | None = None  # "nifti" | "dicom"; None for a Volume built in memory
    slice_positions_mm: tuple[float, ...] | None = None  # position of each array slice along the slice normal
    warnings: tuple[str, ...] = ()  # things the reader worked around (dropped slices) or that look wrong
    series_uid: str | None = None  # DICOM SeriesInstanceUID ("" when the files have none)
    series_description: str | None = None  # DICOM SeriesDescription ("" when absent)
    trigger_times_ms: tuple[float | None, ...] | None = None  # per phase (the first slice's), None where missing
    dropped_slice_positions_mm: tuple[float, ...] | None = None  # slice positions left out (incomplete phases)
    slice_thickness_mm: float | None = None  # DICOM SliceThickness, as stored
    slice_spacing_mm: float | None = None  # the slice spacing used in the affine (median gap of the positions)
    pixel_spacing_mm: tuple[float, float] | None = None  # in-plane spacing along array axes (i, j)
    image_orientation_patient: tuple[float, ...] | None = None  # DICOM row and column directions (LPS)
    n_files: int | None = None  # files of the DICOM series
    n_files_used: int | None = None  # of those, the files in the array (duplicates, dropped slices left out)
    frame_interval_ms: float | None = None  # time between cine frames (NIfTI pixdim[4] with its unit; DICOM TriggerTime)
    frame_interval_problem: str | None = None  # why a cine's frame interval is unknown
    patient_id: str | None = None  # DICOM PatientID ("" when the files have none)
    study_uid: str | None = None  # DICOM StudyInstanceUID
    series_number: int | None = None  # DICOM SeriesNumber
    heart_rate_bpm: float | None = None  # DICOM HeartRate (0018,1088)
    source_files: tuple[tuple[Path, ...], ...] | None = None  # DICOM: the file of each array slice k, phase t: [k][t]

    def with_warnings(self, *warnings: str) -> VolumeMeta:
        """A copy with ``warnings`` appended."""
        return replace(self, warnings=(*self.warnings, *warnings))


@dataclass(frozen=True, eq=False)
class Volume:
    """An image and its full geometry.

    Attributes:
        data: the voxel array exactly as stored, shape (X, Y, Z) for a frame or (X, Y, Z, T)
            for a cine. Never modified in place by cardioseg.
        affine: 4x4 voxel-index -> world (mm, RAS+ as in NIfTI) matrix.
        path: where it was read from, if anywhere.
        header: the NIfTI header it came with (copied into written masks), or None.
        meta: what the reader learnt beyond the array and affine (:class:`VolumeMeta`).
    """

    data: np.ndarray
    affine: np.ndarray
    path: Path | None = None
    header: object | None = field(default=None, repr=False)
    meta: VolumeMeta = field(default_factory=VolumeMeta, repr=False)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along the three spatial array axes, from the affine (mm)."""
        x, y, z = (float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))
        return x, y, z

    @property
    def is_cine(self) -> bool:
        return self.data.ndim == 4

    @property
    def n_frames(self) -> int:
        return int(self.data.shape[3]) if self.is_cine else 1

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL (|det| of the affine's 3x3 part, mm^3 / 1000)."""
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    def frame(self, t: int) -> np.ndarray:
        """The 3D array of frame ``t`` (0-based); a 3D volume has only frame 0."""
        if not self.is_cine:
            if t != 0:
                raise IndexError(t)
            return self.data
        return self.data[..., t]

    @property
    def name(self) -> str:
        """File name without .nii/.nii.gz (``"volume"`` when not read from a file)."""
        return strip_image_suffix(self.path.name) if self.path else "volume"


# ---------------------------------------------------------------------------- size limits

DEFAULT_MAX_VOXELS = 1 << 29  # 537 M voxels: 2 GiB as float32, ~18x a 256x256x15x30 cine
"""Largest image (X*Y*Z*T) read by default; ``CARDIOSEG_MAX_VOXELS`` or ``--max-voxels`` change it."""


def max_voxels_default() -> int:
    """The voxel limit: ``$CARDIOSEG_MAX_VOXELS`` when set, else ``DEFAULT_MAX_VOXELS``."""
    raw = os.environ.get("CARDIOSEG_MAX_VOXELS")
    if raw is None:
        return DEFAULT_MAX_VOXELS
    try:
        value = int(float(raw))
    except (ValueError, OverflowError):
        raise ConfigError(f"CARDIOSEG_MAX_VOXELS must be a number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"CARDIOSEG_MAX_VOXELS must be positive, got {raw!r}")
    return value


def check_voxel_count(shape: tuple[int, ...], limit: int | None, what: str) -> None:
    """Refuse an image whose header claims more than ``limit`` voxels, before allocating it."""
    limit = max_voxels_default() if limit is None else limit
    n = math.prod(int(v) for v in shape)
    if n > limit:
        raise UnsupportedInputError(
            f"{what} claims {n:,} voxels (shape {tuple(int(v) for v in shape)}), more than the limit of "
            f"{limit:,}; raise it with --max-voxels (or CARDIOSEG_MAX_VOXELS) if the image is genuine"
        )


# ---------------------------------------------------------------------------- content checks

LABEL_MAP_WARNING = "is it a label map rather than an MR image?"
"""The end of the warning for an image that holds a few small integers only (``measure`` expects it)."""


def check_voxels(volume: Volume) -> Volume:
    """Refuse NaN/Inf voxels; return ``volume`` with warnings (``meta.warnings``) about inputs
    that do not look like a short-axis cine: a label map given as the image, near-isotropic voxels.

    Raises:
        UnsupportedInputError: NaN or infinite voxels.
    """
    data, where = volume.data, f'"{volume.path}"' if volume.path else "the image"
    if np.issubdtype(data.dtype, np.floating):
        finite = np.isfinite(data)
        if not finite.all():
            n_bad = int(finite.size - np.count_nonzero(finite))
            raise UnsupportedInputError(
                f"{where} has {n_bad:,} NaN or infinite voxels; fix or mask them before segmenting"
            )
    warnings: list[str] = []
    sample = data.reshape(-1)[:: max(1, data.size // 100_000)]
    if np.all(sample == np.round(sample)) and np.unique(sample).size <= 8:
        values = np.unique(data)
        if values.size <= 8 and np.all(values == np.round(values)) and values.min() >= 0:
            warnings.append(
                f"the image holds only the values {', '.join(str(int(v)) for v in values)}: "
                + LABEL_MAP_WARNING
            )
    spacing = sorted(volume.spacing_mm)
    if spacing[2] < 1.5 * spacing[1]:
        warnings.append(
            "voxels are nearly isotropic ({} mm): cardioseg expects a stack of 2D short-axis slices "
            "(slices thicker than the in-plane pixels)".format(" x ".join(f"{v:.2g}" for v in volume.spacing_mm))
        )
    return replace(volume, meta=volume.meta.with_warnings(*warnings))
