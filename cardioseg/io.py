"""Reading images into one ``Volume`` type and writing masks/reports atomically.

Readers are looked up in ``READERS`` by file suffix, so new formats (DICOM series) plug in
without touching the callers.
"""

from __future__ import annotations

import contextlib
import os
import re
import string
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cardioseg.errors import (
    InputFileNotFoundError,
    UnreadableInputError,
    UnsupportedInputError,
)


@dataclass(frozen=True, eq=False)
class Volume:
    """An image and its full geometry.

    Attributes:
        data: the voxel array exactly as stored, shape (X, Y, Z) for a frame or (X, Y, Z, T)
            for a cine. Never modified in place by cardioseg.
        affine: 4x4 voxel-index -> world (mm, RAS+ as in NIfTI) matrix.
        path: where it was read from, if anywhere.
        header: the NIfTI header it came with (copied into written masks), or None.
    """

    data: np.ndarray
    affine: np.ndarray
    path: Path | None = None
    header: object | None = field(default=None, repr=False)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along the three spatial array axes, from the affine (mm)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def is_cine(self) -> bool:
        return self.data.ndim == 4

    @property
    def n_frames(self) -> int:
        return self.data.shape[3] if self.is_cine else 1

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


IMAGE_SUFFIXES = (".nii.gz", ".nii")


def strip_image_suffix(name: str) -> str:
    """``"x.nii.gz"`` -> ``"x"``; names without a known suffix are returned as they are."""
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _read_nifti(path: Path) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except (OSError, EOFError, zlib.error, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise UnreadableInputError(
            f'File "{path}" could not be read as NIfTI ({type(exc).__name__}: {exc}); '
            "is it complete and not corrupted?"
        ) from exc
    if data.ndim == 5 and data.shape[3] == 1:  # some writers store (X, Y, Z, 1, T)
        data = data[:, :, :, 0, :]
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim not in (3, 4):
        raise UnsupportedInputError(
            f'File "{path}" has shape {data.shape}: cardioseg needs a 3D frame (X, Y, Z) '
            "or a 4D cine (X, Y, Z, T)"
        )
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise UnsupportedInputError(f'File "{path}" holds {data.dtype} voxels, not real numbers')
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise UnsupportedInputError(f'File "{path}" has a degenerate affine (zero voxel size)')
    return Volume(data=data, affine=affine, path=path, header=img.header)


READERS: dict[str, Callable[[Path], Volume]] = {".nii.gz": _read_nifti, ".nii": _read_nifti}


def read_volume(path: str | os.PathLike[str]) -> Volume:
    """Read one image file.

    Raises:
        InputFileNotFoundError: nothing at ``path``.
        UnsupportedInputError: a format or shape cardioseg does not handle.
        UnreadableInputError: a supported format whose content cannot be decoded.
    """
    p = Path(path)
    if not p.exists():
        raise InputFileNotFoundError(f'File not found: "{p}"')
    if p.is_dir():
        raise UnsupportedInputError(
            f'"{p}" is a folder; give a NIfTI file or an ACDC-style patient folder with Info.cfg'
        )
    lower = p.name.lower()
    for suffix, reader in READERS.items():
        if lower.endswith(suffix):
            return reader(p)
    raise UnsupportedInputError(
        f'File "{p}" is not a supported image ({", ".join(READERS)}); '
        "convert it to NIfTI first"
    )


# ---------------------------------------------------------------------------- ACDC folders


@dataclass(frozen=True)
class PatientInfo:
    """What an ACDC ``Info.cfg`` says: 1-based ED/ES frame numbers, group, height, weight."""

    ed: int | None = None
    es: int | None = None
    group: str | None = None
    height_cm: float | None = None
    weight_kg: float | None = None


def read_info_cfg(path: str | os.PathLike[str]) -> PatientInfo:
    """Parse an ACDC ``Info.cfg`` (``Key: value`` lines)."""
    p = Path(path)
    if not p.is_file():
        raise InputFileNotFoundError(f'File not found: "{p}"')
    values: dict[str, str] = {}
    for line in p.read_text(errors="replace").splitlines():
        if ":" in line:
            key, _, value = line.partition(":")
            values[key.strip().lower()] = value.strip()

    def number(key: str) -> float | None:
        if key not in values:
            return None
        try:
            return float(values[key])
        except ValueError:
            raise UnreadableInputError(f'{p}: "{key}" is not a number: {values[key]!r}') from None

    ed, es = number("ed"), number("es")
    return PatientInfo(
        ed=int(ed) if ed is not None else None,
        es=int(es) if es is not None else None,
        group=values.get("group"),
        height_cm=number("height"),
        weight_kg=number("weight"),
    )


@dataclass(frozen=True)
class PatientFolder:
    """An ACDC-style patient folder: ED/ES frame files (or a 4D cine) plus ``Info.cfg``."""

    name: str
    info: PatientInfo
    ed_path: Path | None
    es_path: Path | None
    cine_path: Path | None


def is_patient_folder(path: Path) -> bool:
    return path.is_dir() and (path / "Info.cfg").is_file()


def read_patient_folder(path: str | os.PathLike[str]) -> PatientFolder:
    """Locate the frames named by ``Info.cfg`` in an ACDC-style folder (no image is read)."""
    p = Path(path)
    if not p.exists():
        raise InputFileNotFoundError(f'Folder not found: "{p}"')
    info = read_info_cfg(p / "Info.cfg")
    name = p.name
    cine = next((c for c in (p / f"{name}_4d.nii.gz", p / f"{name}_4d.nii") if c.is_file()), None)

    def frame_file(number: int | None) -> Path | None:
        if number is None:
            return None
        for suffix in IMAGE_SUFFIXES:
            candidate = p / f"{name}_frame{number:02d}{suffix}"
            if candidate.is_file():
                return candidate
        return None

    ed_path, es_path = frame_file(info.ed), frame_file(info.es)
    if cine is None and (ed_path is None or es_path is None):
        raise UnsupportedInputError(
            f'Folder "{p}": Info.cfg names ED={info.ed}, ES={info.es} but '
            f"{name}_frameNN.nii.gz files for them (or {name}_4d.nii.gz) are missing"
        )
    return PatientFolder(name, info, ed_path, es_path, cine)


# ---------------------------------------------------------------------------- writing


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` only on success."""
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes[-2:]) if final.name.endswith(".nii.gz") else final.suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(text: str, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_mask(mask: np.ndarray, like: Volume, path: Path) -> None:
    """Write a uint8 label mask with ``like``'s affine and header geometry, atomically."""
    import nibabel as nib

    if mask.shape != like.data.shape:
        raise ValueError(f"mask shape {mask.shape} != image shape {like.data.shape}")
    header = like.header.copy() if like.header is not None else None
    img = nib.Nifti1Image(np.asarray(mask, dtype=np.uint8), like.affine, header=header)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0, 0.0)
    if header is not None:
        # keep the exact qform/sform codes and matrices of the input
        img.set_qform(like.header.get_qform(), code=int(like.header["qform_code"]))
        img.set_sform(like.header.get_sform(), code=int(like.header["sform_code"]))
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


_FRAME_RE = re.compile(r"[_\-.]?(frame)?$", re.IGNORECASE)


def study_name(ed: Path, es: Path) -> str:
    """Name of an ED/ES pair: the common stem ``patient001`` of ``patient001_frame01/12``."""
    a, b = strip_image_suffix(ed.name), strip_image_suffix(es.name)
    prefix = os.path.commonprefix([a, b])
    if a[len(prefix) : len(prefix) + 1].isalpha():  # ends inside a word ("case7_e" of _ed/_es)
        prefix = prefix.rstrip(string.ascii_letters)
    prefix = _FRAME_RE.sub("", prefix.rstrip("0123456789")).rstrip("_-. ")
    return prefix or "study"
