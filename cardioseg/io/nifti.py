"""Reading NIfTI frames and cines into a :class:`~cardioseg.io.volume.Volume`; writing masks.

The reader checks the raw header before nibabel repairs it, refuses what it cannot measure
(non-positive spacing, a degenerate affine, more voxels than the limit, a file shorter than its
header claims) and turns every failure of decoding a damaged file into one
:class:`~cardioseg.errors.UnreadableInputError` naming the path.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cardioseg.errors import CardiosegError, UnreadableInputError, UnsupportedInputError
from cardioseg.io.files import atomic_path
from cardioseg.io.volume import Volume, VolumeMeta, check_voxel_count, check_voxels

__all__ = ["describe_error", "read_nifti", "write_mask"]


# ---------------------------------------------------------------------------- nibabel's log


class _QuietThreads(logging.Filter):
    """Drops the log records of the threads that are inside :meth:`quiet`, lets others through.

    nibabel logs header repairs (0 spacing -> 1, ...) on stderr through its ``nibabel.global``
    logger; cardioseg refuses such headers itself with one clear line, so while cardioseg loads
    a header that logger says nothing for the loading thread. Other threads, and other users of
    nibabel in the same process, still see their messages: no logger level is changed.
    """

    def __init__(self) -> None:
        super().__init__()
        self._state = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self._state, "depth", 0)

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        self._state.depth = getattr(self._state, "depth", 0) + 1
        try:
            yield
        finally:
            self._state.depth -= 1


_QUIET = _QuietThreads()
_NIBABEL_LOGGER = "nibabel.global"  # nibabel.imageglobals.logger (header checks log here)
_install_lock = threading.Lock()


def _quiet_nibabel() -> contextlib.AbstractContextManager[None]:
    """Silence nibabel's header-repair log lines for the calling thread only."""
    logger = logging.getLogger(_NIBABEL_LOGGER)
    if _QUIET not in logger.filters:
        with _install_lock:
            if _QUIET not in logger.filters:
                logger.addFilter(_QUIET)
    return _QUIET.quiet()


# ---------------------------------------------------------------------------- reading


def describe_error(exc: BaseException) -> str:
    """``ValueError: reason`` on one line (decoder messages can span several)."""
    reason = re.sub(r"\s*\n\s*", " ", str(exc))
    return f"{type(exc).__name__}: {reason}"


def _unreadable(path: Path, exc: BaseException) -> UnreadableInputError:
    return UnreadableInputError(
        f'File "{path}" could not be read as NIfTI ({describe_error(exc)}); is it complete and not corrupted?'
    )


def read_nifti(path: Path, max_voxels: int | None = None) -> Volume:
    """Read a NIfTI file (``.nii`` or ``.nii.gz``) as a ``Volume`` (see :func:`cardioseg.io.read_volume`).

    Raises:
        UnsupportedInputError: a shape, size, spacing, affine or voxel type cardioseg does not handle.
        UnreadableInputError: anything else that goes wrong decoding the file (damaged or truncated
            header or data: nibabel, numpy, gzip and the operating system raise many kinds of errors).
    """
    try:
        with np.errstate(all="ignore"):  # damaged headers overflow in nibabel's arithmetic; refused below
            return _read_nifti(path, max_voxels)
    except CardiosegError:
        raise
    except Exception as exc:  # a damaged file makes the decoders raise anything (MemoryError included)
        raise _unreadable(path, exc) from exc


def _squeeze_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Drop the singleton axes some writers add: (X, Y, Z, 1, T) -> (X, Y, Z, T); (X, Y, Z, 1) -> (X, Y, Z)."""
    if len(shape) == 5 and shape[3] == 1:
        shape = shape[:3] + shape[4:]
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    return shape


def _load_header(path: Path) -> Any:
    """``nib.load`` (header only; voxels are read later) after the raw-spacing check."""
    import nibabel as nib

    _check_raw_spacing(path)
    with _quiet_nibabel():
        return nib.load(str(path))


def _read_nifti(path: Path, max_voxels: int | None) -> Volume:
    img = _load_header(path)
    shape = _squeeze_shape(tuple(int(v) for v in img.shape))
    if len(shape) not in (3, 4) or min(shape) < 1:
        raise UnsupportedInputError(
            f'File "{path}" has shape {shape}: cardioseg needs a 3D frame (X, Y, Z) or a 4D cine (X, Y, Z, T)'
        )
    check_voxel_count(shape, max_voxels, f'File "{path}"')
    dtype = img.header.get_data_dtype()
    if not path.name.lower().endswith(".gz"):  # an uncompressed file must hold every voxel it claims
        need = int(img.header.get_data_offset()) + math.prod(img.shape) * dtype.itemsize
        if path.stat().st_size < need:
            raise UnreadableInputError(
                f'File "{path}" is truncated: {path.stat().st_size:,} bytes, its header needs {need:,}'
            )
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise UnsupportedInputError(
            f'File "{path}" has voxel size {tuple(float(z) for z in zooms)} mm in its header: '
            "every spacing must be a positive number"
        )
    data = np.asarray(img.dataobj).reshape(shape)  # absurd scale factors give Inf: check_voxels refuses them
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise UnsupportedInputError(f'File "{path}" holds {data.dtype} voxels, not real numbers')
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or not abs(np.linalg.det(affine[:3, :3])) >= 1e-12:
        raise UnsupportedInputError(f'File "{path}" has a degenerate affine (zero voxel size)')
    volume = Volume(data=data, affine=affine, path=path, header=img.header, meta=VolumeMeta(source="nifti"))
    return check_voxels(volume)


def _check_raw_spacing(path: Path) -> None:
    """Refuse a header whose voxel size is zero, negative or not a number where it defines the
    geometry (the qform when there is no sform). nibabel would silently repair it (0 -> 1 mm,
    negative -> absolute value), which would change every volume cardioseg measures."""
    import nibabel as nib
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path)) as f:
        raw = f.read(540)
    sizes = {int.from_bytes(raw[:4], order) for order in ("little", "big")}
    klass = nib.Nifti2Header if 540 in sizes else nib.Nifti1Header if 348 in sizes else None
    if klass is None or len(raw) < klass.sizeof_hdr:
        return  # not a NIfTI header: nib.load gives the clear error
    hdr = klass.from_fileobj(io.BytesIO(raw), check=False)
    if int(hdr["sform_code"]) > 0:
        return  # the sform defines the geometry; nib.load reads it as stored
    zooms = np.asarray(hdr["pixdim"][1:4], dtype=np.float64)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise UnsupportedInputError(
            f'File "{path}" has voxel size {tuple(float(z) for z in zooms)} mm in its header: '
            "every spacing must be a positive number"
        )


# ---------------------------------------------------------------------------- writing


def write_mask(mask: np.ndarray, like: Volume, path: Path) -> None:
    """Write a uint8 label mask with ``like``'s affine and header geometry, atomically."""
    import nibabel as nib

    if mask.shape != like.data.shape:
        raise ValueError(f"mask shape {mask.shape} != image shape {like.data.shape}")
    source: Any = like.header
    header = source.copy() if source is not None else None
    img = nib.Nifti1Image(np.asarray(mask, dtype=np.uint8), like.affine, header=header)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0, 0.0)
    if header is not None:
        # keep the exact qform/sform codes and matrices of the input
        img.set_qform(source.get_qform(), code=int(source["qform_code"]))
        img.set_sform(source.get_sform(), code=int(source["sform_code"]))
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
