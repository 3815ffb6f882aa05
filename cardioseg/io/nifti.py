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

__all__ = ["describe_error", "mask_header", "read_nifti", "squeeze_shape", "write_mask"]

XFORM_CODES = {0: "unknown", 1: "scanner", 2: "aligned", 3: "talairach", 4: "mni", 5: "template"}
SPACING_LIMITS_MM = (1e-3, 1e3)  # a voxel edge outside this range is a damaged header, not an MRI
MAX_SHEAR_COS = 0.02  # |cos| of the angle between two voxel axes beyond this (~1.1 deg off 90): a warning
QFORM_SFORM_TOL_MM = 1.0  # both forms set and disagreeing by more than this anywhere in the grid: warn


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


def squeeze_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Drop the singleton axes some writers add: (X, Y, Z, 1, T) -> (X, Y, Z, T); (X, Y, Z, 1) -> (X, Y, Z)."""
    if len(shape) == 5 and shape[3] == 1:
        shape = shape[:3] + shape[4:]
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    return shape


def _load_header(path: Path) -> tuple[Any, list[str]]:
    """``nib.load`` (header only; voxels are read later) after the raw-header checks, and the
    raw header's warnings."""
    import nibabel as nib

    warnings = _check_raw_header(path)
    with _quiet_nibabel():
        return nib.load(str(path)), warnings


def _read_nifti(path: Path, max_voxels: int | None) -> Volume:
    img, raw_warnings = _load_header(path)
    shape = squeeze_shape(tuple(int(v) for v in img.shape))
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
    warnings = raw_warnings + _check_header(path, img.header, shape)
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
    warnings += _check_grid(path, affine)
    try:  # the header the masks will carry: any fault in it must surface now, not after the work
        mask_header(img.header, data.shape)
    except Exception as exc:
        raise UnsupportedInputError(
            f'File "{path}" has a header that cannot be written back to its masks ({describe_error(exc)})'
        ) from exc
    interval, problem = nifti_frame_interval_ms(img.header) if len(shape) == 4 else (None, None)
    meta = VolumeMeta(source="nifti", warnings=tuple(warnings), frame_interval_ms=interval, frame_interval_problem=problem)
    volume = Volume(data=data, affine=affine, path=path, header=img.header, meta=meta)
    return check_voxels(volume)


#: NIfTI time units (``xyzt_units``) -> milliseconds per unit
_TIME_UNIT_MS = {"sec": 1000.0, "msec": 1.0, "usec": 1e-3}


def nifti_frame_interval_ms(hdr: Any) -> tuple[float | None, str | None]:
    """A 4D NIfTI's frame interval in ms from ``pixdim[4]`` and the time unit of ``xyzt_units``,
    or (None, why) when the unit is not a time or the value is not a positive number (ACDC's
    cines carry a placeholder 1 with no unit)."""
    unit = str(hdr.get_xyzt_units()[1])
    value = float(hdr["pixdim"][4])
    if unit not in _TIME_UNIT_MS:
        return None, f"the NIfTI header gives no time unit (pixdim[4] = {value:g}, unit {unit!r})"
    if not math.isfinite(value) or value <= 0:
        return None, f"the NIfTI header's frame interval pixdim[4] = {value:g} {unit} is not a positive number"
    return value * _TIME_UNIT_MS[unit], None


def _check_header(path: Path, hdr: Any, shape: tuple[int, ...]) -> list[str]:
    """Refuse the header fields nibabel would fail on later: an invalid quaternion, a
    non-finite or singular sform. Returns a warning when qform and sform disagree."""
    codes = {key: int(hdr[key]) for key in ("qform_code", "sform_code")}
    warnings: list[str] = []
    qform = None
    if codes["qform_code"] > 0:
        keys = ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z")
        quat = np.array([float(hdr[k]) for k in keys], dtype=np.float64)
        try:
            if not np.all(np.isfinite(quat)):
                raise ValueError("a quaternion or offset is not a number")
            qform = np.asarray(hdr.get_qform(), dtype=np.float64)
        except ValueError as exc:
            raise UnsupportedInputError(
                f'File "{path}" has an invalid qform in its header (quaternion b, c, d = '
                f"{', '.join(f'{v:.4g}' for v in quat[:3])}: {exc})"
            ) from None
    if codes["sform_code"] > 0:
        sform = np.asarray(hdr.get_sform(), dtype=np.float64)
        if not np.all(np.isfinite(sform)) or not abs(np.linalg.det(sform[:3, :3])) >= 1e-12:
            raise UnsupportedInputError(
                f'File "{path}" has a degenerate sform in its header (not finite, or zero voxel size)'
            )
        if qform is not None and np.all(np.isfinite(qform)):
            corners = np.array(
                [[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)]
            )
            gap = float(np.max(np.linalg.norm((corners @ (sform - qform).T)[:, :3], axis=1)))
            if gap > QFORM_SFORM_TOL_MM:
                warnings.append(
                    f"The header's qform and sform disagree by up to {gap:.1f} mm; the sform is used (as the NIfTI standard says)."
                )
    return warnings


def _check_grid(path: Path, affine: np.ndarray) -> list[str]:
    """Refuse an affine whose voxel edges are absurdly small or large; a warning when two voxel
    axes are not at right angles (a sheared grid is measured as given, but is rare in MRI)."""
    axes = affine[:3, :3]
    edges = np.linalg.norm(axes, axis=0)
    lo, hi = SPACING_LIMITS_MM
    if np.any(edges < lo) or np.any(edges > hi):
        raise UnsupportedInputError(
            f'File "{path}" has voxel edges of {", ".join(f"{e:.4g}" for e in edges)} mm in its affine: '
            f"outside {lo:g}-{hi:g} mm, the header is damaged"
        )
    unit = axes / edges
    cos = float(np.abs(unit.T @ unit - np.eye(3)).max())
    if cos > MAX_SHEAR_COS:
        angle = math.degrees(math.acos(min(1.0, cos)))
        return [f"The grid in the header is sheared (two voxel axes {angle:.1f} degrees apart, not 90); is the header right?"]
    return []


def mask_header(source: Any, shape: tuple[int, ...]) -> Any:
    """The header of a uint8 mask on ``source``'s grid: its geometry, with the exact qform and
    sform codes and matrices, unscaled. Serialised once into memory, so that a header nibabel
    cannot write fails here. ``read_nifti`` calls it on every header it accepts."""
    header = source.copy()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    header.set_qform(source.get_qform(), code=int(source["qform_code"]))
    header.set_sform(source.get_sform(), code=int(source["sform_code"]))
    with _quiet_nibabel():
        header.write_to(io.BytesIO())
    return header


def _check_raw_header(path: Path) -> list[str]:
    """Refuse what nibabel would silently repair in a way that changes the geometry: an unknown
    qform or sform code (nibabel sets it to 0, dropping that form), a voxel size that is zero,
    negative or not a number where it defines the geometry (the qform when there is no sform;
    nibabel makes 0 -> 1 mm, negative -> its absolute value), which would change every volume
    cardioseg measures; an intensity scaling that is not a number (nibabel drops an infinite
    slope). Returns a warning for a qfac that is neither 1 nor -1 (taken as 1)."""
    import nibabel as nib
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path)) as f:
        raw = f.read(540)
    sizes = {int.from_bytes(raw[:4], order) for order in ("little", "big")}
    klass = nib.Nifti2Header if 540 in sizes else nib.Nifti1Header if 348 in sizes else None
    if klass is None or len(raw) < klass.sizeof_hdr:
        return []  # not a NIfTI header: nib.load gives the clear error
    hdr = klass.from_fileobj(io.BytesIO(raw), check=False)
    for key in ("qform_code", "sform_code"):
        code = int(hdr[key])
        if code not in XFORM_CODES:
            raise UnsupportedInputError(
                f'File "{path}" has {key} {code} in its header: valid codes are 0-{max(XFORM_CODES)}, '
                "so which geometry it means is unknown"
            )
    slope, inter = float(hdr["scl_slope"]), float(hdr["scl_inter"])
    if math.isinf(slope) or (math.isfinite(slope) and slope != 0 and not math.isfinite(inter)):
        raise UnsupportedInputError(
            f'File "{path}" has an invalid intensity scaling in its header (scl_slope {slope:g}, scl_inter {inter:g})'
        )
    if int(hdr["sform_code"]) > 0:
        return []  # the sform defines the geometry; nib.load reads it as stored
    zooms = np.asarray(hdr["pixdim"][1:4], dtype=np.float64)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise UnsupportedInputError(
            f'File "{path}" has voxel size {tuple(float(z) for z in zooms)} mm in its header: '
            "every spacing must be a positive number"
        )
    qfac = float(hdr["pixdim"][0])
    if int(hdr["qform_code"]) > 0 and qfac not in (1.0, -1.0):
        return [f"The header's qfac (pixdim[0]) is {qfac:g}, not 1 or -1; taken as 1, as the NIfTI standard says."]
    return []


# ---------------------------------------------------------------------------- writing


def write_mask(mask: np.ndarray, like: Volume, path: Path) -> None:
    """Write a uint8 label mask with ``like``'s affine and header geometry, atomically."""
    import nibabel as nib

    if mask.shape != like.data.shape:
        raise ValueError(f"mask shape {mask.shape} != image shape {like.data.shape}")
    source: Any = like.header
    header = mask_header(source, mask.shape) if source is not None else None
    img = nib.Nifti1Image(np.asarray(mask, dtype=np.uint8), like.affine, header=header)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0, 0.0)
    if header is not None:
        # keep the exact qform/sform codes and matrices of the input
        img.set_qform(source.get_qform(), code=int(source["qform_code"]))
        img.set_sform(source.get_sform(), code=int(source["sform_code"]))
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
