"""``read_volume``: one entry point for every image cardioseg reads (NIfTI file, DICOM series).

Readers are looked up in ``READERS`` by file suffix, so new formats plug in without touching
the callers; a folder (or a file with the DICOM marker) is read as a DICOM series.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from cardioseg.errors import CardiosegError, InputFileNotFoundError, UnreadableInputError, UnsupportedInputError
from cardioseg.io.dicom import find_dicom_files, is_dicom_file, read_dicom_series
from cardioseg.io.nifti import describe_error, read_nifti
from cardioseg.io.volume import Volume, check_voxels, max_voxels_default

__all__ = ["READERS", "read_volume"]

READERS: dict[str, Callable[[Path, int | None], Volume]] = {".nii.gz": read_nifti, ".nii": read_nifti}


def read_volume(
    path: str | os.PathLike[str], max_voxels: int | None = None, series_uid: str | None = None
) -> Volume:
    """Read one image: a NIfTI file, or a folder (or file) of one DICOM short-axis series.

    ``max_voxels`` (default: ``max_voxels_default()``) is checked against the header(s) before
    any voxel is read, so a header claiming billions of voxels is refused without allocating
    them. ``series_uid`` picks one series of a DICOM folder that holds several.

    Raises:
        InputFileNotFoundError: nothing at ``path``.
        UnsupportedInputError: a format, shape, size or content cardioseg does not handle
            (including NaN/Inf voxels, non-positive spacing, an empty folder, several DICOM
            series without ``series_uid``).
        UnreadableInputError: a supported format whose content cannot be decoded (truncated,
            damaged header, not what its name says).
    """
    p = Path(path)
    if not p.exists():
        raise InputFileNotFoundError(f'File not found: "{p}"')
    lower = p.name.lower()
    reader = next((r for suffix, r in READERS.items() if lower.endswith(suffix)), None)
    if reader is not None and p.is_file():
        return reader(p, max_voxels)
    if p.is_dir():
        if not find_dicom_files(p):
            what = "is empty" if not any(p.iterdir()) else "holds no DICOM files"
            raise UnsupportedInputError(
                f'Folder "{p}" {what}; give a NIfTI file, a DICOM series folder or an ACDC-style '
                "patient folder with Info.cfg"
            )
    elif not is_dicom_file(p):
        raise UnsupportedInputError(
            f'File "{p}" is not a supported image (NIfTI {", ".join(READERS)} or DICOM); convert it to NIfTI first'
        )
    limit = max_voxels_default() if max_voxels is None else max_voxels
    try:
        volume = read_dicom_series(p, series_uid=series_uid, max_voxels=limit)
    except CardiosegError:
        raise
    except Exception as exc:  # a damaged file the header checks let through: still one line, no traceback
        raise UnreadableInputError(
            f'DICOM input "{p}" could not be read ({describe_error(exc)}); is it complete and not corrupted?'
        ) from exc
    return check_voxels(volume)
