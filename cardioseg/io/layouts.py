"""Dataset layouts and naming conventions, in one place.

* Image files: NIfTI ``X.nii.gz`` / ``X.nii`` (:data:`IMAGE_SUFFIXES`, :func:`strip_image_suffix`).
* Mask naming: ``X_seg`` is cardioseg's output, ``X_gt`` a reference (expert) label map
  (:data:`MASK_STEM_SUFFIXES`, :data:`PRED_SUFFIXES`, :data:`REF_SUFFIXES`, :data:`LABEL_SUFFIXES`).
* ACDC patient folders: ``patientNNN/Info.cfg`` (1-based ED/ES frame numbers, group, height,
  weight), the frames ``patientNNN_frameXX.nii[.gz]`` with references ``patientNNN_frameXX_gt.nii[.gz]``,
  and the 4D cine ``patientNNN_4d.nii[.gz]`` (:func:`read_patient_folder`, :func:`acdc_frame_file`).
* ED/ES pairs: :func:`study_name` (the common stem), :data:`FRAME_NUMBER_RE`, :data:`PHASE_SUFFIX_RE`.

Nothing here reads an image.
"""

from __future__ import annotations

import os
import re
import string
from dataclasses import dataclass
from pathlib import Path

from cardioseg.errors import InputFileNotFoundError, UnreadableInputError, UnsupportedInputError

__all__ = [
    "ACDC_INFO_NAME",
    "FRAME_NUMBER_RE",
    "IMAGE_SUFFIXES",
    "LABEL_SUFFIXES",
    "MASK_STEM_SUFFIXES",
    "PHASE_SUFFIX_RE",
    "PRED_SUFFIXES",
    "REFERENCE_SUFFIX",
    "REF_SUFFIXES",
    "PatientFolder",
    "PatientInfo",
    "acdc_frame_file",
    "acdc_frame_stem",
    "find_image_file",
    "is_image_name",
    "is_patient_folder",
    "looks_like_mask",
    "read_info_cfg",
    "read_patient_folder",
    "strip_image_suffix",
    "study_name",
]

# ---------------------------------------------------------------------------- file names

IMAGE_SUFFIXES = (".nii.gz", ".nii")
"""The image file endings cardioseg reads (matched case-insensitively), in order of preference."""


def strip_image_suffix(name: str) -> str:
    """``"x.nii.gz"`` -> ``"x"``; names without a known suffix are returned as they are.

    >>> strip_image_suffix("patient001_frame01.NII.GZ"), strip_image_suffix("notes.txt")
    ('patient001_frame01', 'notes.txt')
    """
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_image_name(name: str) -> bool:
    """A visible file name with an image ending (``x.nii.gz``, not ``.x.nii.gz`` or ``x.png``)."""
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def find_image_file(stem: Path) -> Path | None:
    """The existing file ``stem.nii.gz`` or ``stem.nii`` (in that order), else None."""
    for suffix in IMAGE_SUFFIXES:
        candidate = stem.with_name(stem.name + suffix)
        if candidate.is_file():
            return candidate
    return None


# ---------------------------------------------------------------------------- mask names

MASK_STEM_SUFFIXES: tuple[str, ...] = ("_seg", "_gt")
"""A NIfTI file whose name (without .nii/.nii.gz) ends with one of these is taken for a mask
(cardioseg's own output, or a reference label map) and skipped when a folder or a pattern is
expanded for ``predict``; naming such a file on the command line still segments it."""

PRED_SUFFIXES: tuple[str, ...] = ("_seg", "_pred", "")
"""``evaluate``: the name endings of prediction masks, tried in order (the first that matches
any file of the folder is the folder's convention); the rest of the name is the case key."""

REF_SUFFIXES: tuple[str, ...] = ("_gt", "_seg", "_label", "")
"""``evaluate``: the name endings of reference masks, tried in order (as :data:`PRED_SUFFIXES`)."""

REFERENCE_SUFFIX = "_gt"
"""The reference (expert) label map of image ``X`` is ``X_gt`` (ACDC, and cardioseg's training data)."""

LABEL_SUFFIXES: tuple[str, ...] = ("_gt", "_seg", "")
"""Training data in the generic layout: ``labels/X_gt``, ``labels/X_seg`` or ``labels/X`` label image ``X``."""


def looks_like_mask(name: str) -> bool:
    """``X_seg.nii.gz``, ``X_gt.nii`` ...: a label map, not an image to segment.

    >>> looks_like_mask("case1_SEG.nii.gz"), looks_like_mask("case1.nii.gz")
    (True, False)
    """
    return strip_image_suffix(name).lower().endswith(MASK_STEM_SUFFIXES)


# ---------------------------------------------------------------------------- ED/ES names

FRAME_NUMBER_RE = re.compile(r"^(?P<study>.+?)[_\-.]?frame(?P<n>\d+)$", re.IGNORECASE)
"""``patient001_frame12`` -> study ``patient001``, frame number ``12`` (1-based, as in Info.cfg)."""

PHASE_SUFFIX_RE = re.compile(r"^(?P<study>.+?)[_\-.](?P<phase>ED|ES)$", re.IGNORECASE)
"""``case7_ED`` -> study ``case7``, phase ``ED``."""

_FRAME_RE = re.compile(r"[_\-.]?(frame)?$", re.IGNORECASE)


def study_name(ed: Path, es: Path) -> str:
    """Name of an ED/ES pair: the common stem ``patient001`` of ``patient001_frame01/12``.

    >>> study_name(Path("patient001_frame01.nii.gz"), Path("patient001_frame12.nii.gz"))
    'patient001'
    """
    a, b = strip_image_suffix(ed.name), strip_image_suffix(es.name)
    prefix = os.path.commonprefix([a, b])
    if a[len(prefix) : len(prefix) + 1].isalpha():  # ends inside a word ("case7_e" of _ed/_es)
        prefix = prefix.rstrip(string.ascii_letters)
    prefix = _FRAME_RE.sub("", prefix.rstrip("0123456789")).rstrip("_-. ")
    return prefix or "study"


# ---------------------------------------------------------------------------- ACDC folders

ACDC_INFO_NAME = "Info.cfg"


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
    """A folder with an ``Info.cfg`` (an ACDC-style patient folder)."""
    return path.is_dir() and (path / ACDC_INFO_NAME).is_file()


def acdc_frame_stem(folder: Path, number: int) -> Path:
    """``folder/patientNNN_frameXX`` (no suffix) of the 1-based frame ``number``; the patient is the folder's name."""
    return folder / f"{folder.name}_frame{number:02d}"


def acdc_frame_file(folder: Path, number: int | None, suffix: str = "") -> Path | None:
    """The existing image ``patientNNN_frameXX{suffix}.nii[.gz]`` of frame ``number`` (1-based)
    in an ACDC patient folder (``suffix=REFERENCE_SUFFIX``: its reference label map), else None."""
    if number is None:
        return None
    stem = acdc_frame_stem(folder, number)
    return find_image_file(stem.with_name(stem.name + suffix))


def read_patient_folder(path: str | os.PathLike[str]) -> PatientFolder:
    """Locate the frames named by ``Info.cfg`` in an ACDC-style folder (no image is read)."""
    p = Path(path)
    if not p.exists():
        raise InputFileNotFoundError(f'Folder not found: "{p}"')
    info = read_info_cfg(p / ACDC_INFO_NAME)
    name = p.name
    cine = find_image_file(p / f"{name}_4d")
    ed_path, es_path = acdc_frame_file(p, info.ed), acdc_frame_file(p, info.es)
    if cine is None and (ed_path is None or es_path is None):
        raise UnsupportedInputError(
            f'Folder "{p}": Info.cfg names ED={info.ed}, ES={info.es} but '
            f"{name}_frameNN.nii.gz files for them (or {name}_4d.nii.gz) are missing"
        )
    return PatientFolder(name, info, ed_path, es_path, cine)
