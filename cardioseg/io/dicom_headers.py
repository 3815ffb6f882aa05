"""DICOM headers: finding the files of a folder, reading their header facts (no pixels) and
grouping them into series. :mod:`cardioseg.io.dicom` assembles a series into a ``Volume``.

Only SimpleITK (GDCM) is used.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cardioseg.errors import InputFileNotFoundError, UnreadableInputError, UnsupportedInputError

__all__ = [
    "SeriesInfo",
    "find_dicom_files",
    "is_dicom_file",
    "list_series",
]

# tags as SimpleITK/GDCM names them ("group|element", lower-case hex)
TAG_SOP_CLASS = "0008|0016"
TAG_MODALITY = "0008|0060"
TAG_PATIENT_ID = "0010|0020"
TAG_HEART_RATE = "0018|1088"
TAG_STUDY_UID = "0020|000d"
TAG_SERIES_DESCRIPTION = "0008|103e"
TAG_SLICE_THICKNESS = "0018|0050"
TAG_SPACING_BETWEEN_SLICES = "0018|0088"
TAG_TRIGGER_TIME = "0018|1060"
TAG_SERIES_UID = "0020|000e"
TAG_SERIES_NUMBER = "0020|0011"
TAG_INSTANCE_NUMBER = "0020|0013"
TAG_POSITION = "0020|0032"
TAG_ORIENTATION = "0020|0037"
TAG_ROWS = "0028|0010"
TAG_COLUMNS = "0028|0011"
TAG_PIXEL_SPACING = "0028|0030"


# multi-frame ("enhanced") storage classes keep the geometry in per-frame sequences, which this reader does not parse
ENHANCED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR",
    "1.2.840.10008.5.1.4.1.1.4.3": "Enhanced MR Color",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR",
}

ORIENTATION_TOL = 1e-4  # max difference of ImageOrientationPatient components
SPACING_TOL_MM = 1e-4  # max difference of PixelSpacing
POSITION_TOL_MM = 0.01  # images whose positions along the normal differ by less share a slice



@dataclass(frozen=True)
class SeriesInfo:
    """What the headers of one series say (no pixels read).

    Attributes:
        uid: SeriesInstanceUID (``""`` when the files have none).
        description: SeriesDescription (``""`` when absent).
        n_files: number of files of the series.
        series_number: SeriesNumber, if any.
        modality: Modality (``"MR"``), ``""`` when absent.
        rows, columns: image size of the first file.
        n_slice_positions: distinct positions along the slice normal of the first file's
            orientation (None without geometry tags).
        n_phases: the most images found at one slice position (None without geometry tags).
        files: the files, sorted by path.
    """

    uid: str
    description: str
    n_files: int
    series_number: int | None
    modality: str
    rows: int
    columns: int
    n_slice_positions: int | None
    n_phases: int | None
    files: tuple[Path, ...]

    def summary(self) -> str:
        """``1.2.3 "SAX cine" (240 files)``: how error messages list a series."""
        uid = self.uid or "(no SeriesInstanceUID)"
        return f'{uid} "{self.description}" ({self.n_files} files)'


@dataclass(frozen=True)
class DicomHeader:
    """The header facts of one DICOM file that the reader uses."""

    path: Path
    sop_class_uid: str
    series_uid: str
    description: str
    modality: str
    series_number: int | None
    rows: int
    columns: int
    n_frames: int
    n_components: int
    orientation: np.ndarray | None  # (6,) row direction, column direction (LPS)
    position: np.ndarray | None  # (3,) ImagePositionPatient (LPS, mm)
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns) mm
    trigger_time: float | None
    instance_number: int | None
    slice_thickness: float | None
    spacing_between_slices: float | None
    patient_id: str = ""
    study_uid: str = ""
    heart_rate: float | None = None  # HeartRate (0018,1088), beats per minute


# ---------------------------------------------------------------------------- finding files


def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    """True when the file has the DICOM Part 10 marker ``"DICM"`` at byte offset 128."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def find_dicom_files(folder: str | os.PathLike[str]) -> list[Path]:
    """DICOM files under ``folder`` (recursive, sorted), skipping hidden files/folders, DICOMDIR
    index files and anything without the DICOM marker (text, masks, ...)."""
    root = Path(folder)
    if not root.exists():
        raise InputFileNotFoundError(f'Folder not found: "{root}"')
    if not root.is_dir():
        raise UnsupportedInputError(f'"{root}" is not a folder')
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            p = Path(dirpath) / name
            if p.is_file() and is_dicom_file(p):
                found.append(p)
    return sorted(found)


# ---------------------------------------------------------------------------- headers


def sitk_reason(exc: Exception) -> str:
    """The last meaningful line of a SimpleITK exception, without file/line noise."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    text = re.sub(r"^(ITK ERROR|sitk::ERROR):\s*", "", text)
    return re.sub(r"\(0x[0-9a-fA-F]+\)", "", text)


def new_reader(path: Path) -> Any:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    return reader


def _text(reader: Any, tag: str) -> str | None:
    try:
        if not reader.HasMetaDataKey(tag):
            return None
        value = reader.GetMetaData(tag).strip().strip("\x00").strip()
    except (RuntimeError, UnicodeDecodeError):
        return None
    return value or None


def _numbers(path: Path, reader: Any, tag: str, name: str, count: int) -> np.ndarray | None:
    value = _text(reader, tag)
    if value is None:
        return None
    try:
        numbers = np.array([float(v) for v in value.split("\\")], dtype=np.float64)
    except ValueError:
        numbers = np.array([])
    if numbers.size != count or not np.all(np.isfinite(numbers)):
        raise UnreadableInputError(f'DICOM file "{path}": {name} ({tag}) is not {count} numbers: {value!r}')
    return numbers


def _number(path: Path, reader: Any, tag: str, name: str) -> float | None:
    value = _numbers(path, reader, tag, name, 1)
    return None if value is None else float(value[0])


def read_header(path: Path) -> DicomHeader:
    reader = new_reader(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise UnreadableInputError(
            f'DICOM file "{path}" could not be read ({sitk_reason(exc)}); is it complete and not corrupted?'
        ) from exc
    size = tuple(int(s) for s in reader.GetSize())
    instance = _number(path, reader, TAG_INSTANCE_NUMBER, "InstanceNumber")
    series_number = _number(path, reader, TAG_SERIES_NUMBER, "SeriesNumber")
    spacing = _numbers(path, reader, TAG_PIXEL_SPACING, "PixelSpacing", 2)
    rows = _number(path, reader, TAG_ROWS, "Rows")
    columns = _number(path, reader, TAG_COLUMNS, "Columns")
    return DicomHeader(
        path=path,
        sop_class_uid=_text(reader, TAG_SOP_CLASS) or "",
        series_uid=_text(reader, TAG_SERIES_UID) or "",
        description=_text(reader, TAG_SERIES_DESCRIPTION) or "",
        modality=_text(reader, TAG_MODALITY) or "",
        series_number=None if series_number is None else int(series_number),
        rows=int(rows) if rows is not None else size[1],
        columns=int(columns) if columns is not None else size[0],
        n_frames=size[2] if len(size) > 2 else 1,
        n_components=int(reader.GetNumberOfComponents()),
        orientation=_numbers(path, reader, TAG_ORIENTATION, "ImageOrientationPatient", 6),
        position=_numbers(path, reader, TAG_POSITION, "ImagePositionPatient", 3),
        pixel_spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
        trigger_time=_number(path, reader, TAG_TRIGGER_TIME, "TriggerTime"),
        instance_number=None if instance is None else int(instance),
        slice_thickness=_number(path, reader, TAG_SLICE_THICKNESS, "SliceThickness"),
        spacing_between_slices=_number(path, reader, TAG_SPACING_BETWEEN_SLICES, "SpacingBetweenSlices"),
        patient_id=_text(reader, TAG_PATIENT_ID) or "",
        study_uid=_text(reader, TAG_STUDY_UID) or "",
        heart_rate=_optional_number(reader, TAG_HEART_RATE),
    )


def _optional_number(reader: Any, tag: str) -> float | None:
    """A number the reader does not depend on: None when absent or not a number (never an error)."""
    value = _text(reader, tag)
    try:
        return float(value) if value else None
    except ValueError:
        return None


def group_series(headers: Sequence[DicomHeader]) -> dict[str, list[DicomHeader]]:
    groups: dict[str, list[DicomHeader]] = {}
    for h in headers:
        groups.setdefault(h.series_uid, []).append(h)
    return groups


def _normal(orientation: np.ndarray) -> np.ndarray:
    return np.cross(orientation[:3], orientation[3:])


def cluster_positions(values: np.ndarray) -> list[np.ndarray]:
    """Indices of ``values`` grouped into runs closer than ``POSITION_TOL_MM``, ascending."""
    order = np.argsort(values, kind="stable")
    clusters: list[list[int]] = []
    for idx in order:
        if clusters and values[idx] - values[clusters[-1][-1]] <= POSITION_TOL_MM:
            clusters[-1].append(int(idx))
        else:
            clusters.append([int(idx)])
    return [np.array(c) for c in clusters]


def series_info(headers: Sequence[DicomHeader]) -> SeriesInfo:
    first = headers[0]
    n_positions = n_phases = None
    if first.orientation is not None and all(h.position is not None for h in headers):
        normal = _normal(first.orientation)
        clusters = cluster_positions(np.array([h.position @ normal for h in headers]))  # type: ignore[operator]
        n_positions, n_phases = len(clusters), max(len(c) for c in clusters)
    return SeriesInfo(
        uid=first.series_uid,
        description=first.description,
        n_files=len(headers),
        series_number=first.series_number,
        modality=first.modality,
        rows=first.rows,
        columns=first.columns,
        n_slice_positions=n_positions,
        n_phases=n_phases,
        files=tuple(h.path for h in headers),
    )


def series_sort_key(info: SeriesInfo) -> tuple[int, str]:
    return (info.series_number if info.series_number is not None else 1 << 30, info.uid)


PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) PixelData, little endian as in every file GDCM reads
SOP_CLASS_TAG = b"\x08\x00\x16\x00"  # (0008,0016) SOPClassUID
NON_IMAGE_SOP_CLASSES = (  # storage classes without pixels that PACS exports put beside the images
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports, key object selection
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF/CDA
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, registrations, fiducials
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms (ECG)
    "1.2.840.10008.5.1.4.1.1.481.",  # radiotherapy objects
)


def non_image_sop_class(path: Path) -> str | None:
    """The SOPClassUID of a DICOM object of a storage class without pixels (a structured
    report, presentation state, ECG waveform, ...) that has no PixelData; else None (an image,
    or a damaged image file, which must stay an error)."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    at = raw.find(SOP_CLASS_TAG, 132)
    if at < 0 or PIXEL_DATA_TAG in raw:
        return None
    explicit = raw[at + 4 : at + 6] == b"UI"
    length = int.from_bytes(raw[at + 6 : at + 8] if explicit else raw[at + 4 : at + 8], "little")
    start = at + 8  # explicit VR: tag, "UI", 2-byte length; implicit: tag, 4-byte length
    uid = raw[start : start + min(length, 64)].rstrip(b"\0 ").decode("ascii", "replace")
    return uid if uid.startswith(NON_IMAGE_SOP_CLASSES) else None


def read_image_headers(files: Sequence[Path]) -> tuple[list[DicomHeader], list[Path]]:
    """The headers of the image files among ``files`` and the DICOM objects of a storage class
    without pixels that were left out (``non_image_sop_class``); any other file that cannot be
    read raises UnreadableInputError."""
    headers, skipped = [], []
    for f in files:
        try:
            headers.append(read_header(f))
        except UnreadableInputError:
            if non_image_sop_class(f) is None:
                raise
            skipped.append(f)
    return headers, skipped


def skipped_warning(skipped: Sequence[Path]) -> list[str]:
    if not skipped:
        return []
    names = ", ".join(f'"{p.name}"' for p in skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
    return [f"Ignored {len(skipped)} DICOM object(s) without pixel data ({names}: reports or presentation states, not images)."]


def list_series(folder: str | os.PathLike[str]) -> list[SeriesInfo]:
    """The DICOM series found under ``folder`` (headers only), sorted by SeriesNumber then UID."""
    headers, _ = read_image_headers(find_dicom_files(folder))
    infos = [series_info(group) for group in group_series(headers).values()]
    return sorted(infos, key=series_sort_key)


# ---------------------------------------------------------------------------- one stack?


def fmt_mm(values: Sequence[float] | np.ndarray) -> str:
    """``1.00, 2.50``: numbers as error messages list them."""
    return ", ".join(f"{v:.2f}" for v in values)


def check_consistent(headers: Sequence[DicomHeader], label: str) -> None:
    """Refuse what cannot be one regular short-axis stack (before any geometry is computed)."""
    for h in headers:
        if h.sop_class_uid in ENHANCED_SOP_CLASSES:
            raise UnsupportedInputError(
                f'DICOM file "{h.path}" is {ENHANCED_SOP_CLASSES[h.sop_class_uid]} (multi-frame) DICOM; '
                "cardioseg reads classic single-frame series only"
            )
        if h.n_frames > 1:
            raise UnsupportedInputError(
                f'DICOM file "{h.path}" holds {h.n_frames} frames (enhanced/multi-frame DICOM); '
                "cardioseg reads classic single-frame series only"
            )
        if h.n_components != 1:
            raise UnsupportedInputError(
                f'DICOM file "{h.path}" is not a greyscale image ({h.n_components} samples/pixel)'
            )
        missing = [
            name
            for name, value in (
                ("ImagePositionPatient (0020,0032)", h.position),
                ("ImageOrientationPatient (0020,0037)", h.orientation),
                ("PixelSpacing (0028,0030)", h.pixel_spacing),
            )
            if value is None
        ]
        if missing:
            raise UnsupportedInputError(
                f'DICOM file "{h.path}" has no {" or ".join(missing)}: cardioseg needs the slice geometry'
            )
    ref = headers[0]
    assert ref.orientation is not None and ref.pixel_spacing is not None
    row, col = ref.orientation[:3], ref.orientation[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise UnsupportedInputError(
            f'DICOM file "{ref.path}": ImageOrientationPatient {fmt_mm(ref.orientation)} '
            "is not two orthogonal unit vectors"
        )
    for h in headers[1:]:
        assert h.orientation is not None and h.pixel_spacing is not None
        if np.max(np.abs(h.orientation - ref.orientation)) > ORIENTATION_TOL:
            raise UnsupportedInputError(
                f'{label}: images have different orientations ("{ref.path.name}": {fmt_mm(ref.orientation)}; '
                f'"{h.path.name}": {fmt_mm(h.orientation)}); cardioseg needs one stack of parallel short-axis slices '
                "(is this a localizer or multi-plane series?)"
            )
        if max(abs(a - b) for a, b in zip(h.pixel_spacing, ref.pixel_spacing)) > SPACING_TOL_MM:
            raise UnsupportedInputError(
                f'{label}: images have different pixel spacings ("{ref.path.name}": {fmt_mm(ref.pixel_spacing)} mm; '
                f'"{h.path.name}": {fmt_mm(h.pixel_spacing)} mm)'
            )
        if (h.rows, h.columns) != (ref.rows, ref.columns):
            raise UnsupportedInputError(
                f'{label}: images have different sizes ("{ref.path.name}": {ref.rows}x{ref.columns}; '
                f'"{h.path.name}": {h.rows}x{h.columns} rows x columns)'
            )
