"""Writing synthetic DICOM series for tests (``from dicom_writer import write_dicom_series``).

Used by the DICOM reader's tests (tests/io/test_dicom.py) and by the batch/CLI tests that feed
DICOM folders to ``cardioseg predict``.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
STUDY_UID = "1.2.826.0.1.3680043.8.498.100"
SERIES_UID = "1.2.826.0.1.3680043.8.498.1"


def _unit(v: Sequence[float]) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


# an oblique short-axis-like orientation (LPS): row and column directions, orthonormal
ROW_DIR = _unit([0.62, 0.70, -0.35])
COL_DIR = _unit(np.cross(_unit([0.1, -0.4, -0.9]), ROW_DIR))


def _ds(values: Sequence[float]) -> str:
    """A DICOM decimal-string list (at most 16 characters per value)."""
    return "\\".join(f"{float(v):.10g}" for v in values)


def write_dicom_series(
    folder: Path,
    volume: np.ndarray,
    *,
    row_dir: Sequence[float] = tuple(ROW_DIR),
    col_dir: Sequence[float] = tuple(COL_DIR),
    pixel_spacing: tuple[float, float] = (0.8, 0.6),
    origin: Sequence[float] = (-40.0, 25.0, 60.0),
    slice_offsets_mm: Sequence[float] | None = None,
    slice_gap_mm: float = 8.0,
    trigger_times_ms: Sequence[float] | None = None,
    write_trigger_time: bool = True,
    series_uid: str = SERIES_UID,
    description: str = "SAX cine",
    series_number: int = 5,
    slice_thickness_mm: float = 7.0,
    spacing_between_slices_mm: float = 1.0,
    skip: Collection[tuple[int, int]] = (),
    extra_tags: Mapping[str, str] | None = None,
    shuffle_seed: int | None = 0,
    prefix: str = "IM",
) -> dict[tuple[int, int], Path]:
    """Write ``volume`` as a classic single-frame MR DICOM series, one file per (slice, phase).

    Args:
        folder: where the files go (created).
        volume: (X, Y, Z) or (X, Y, Z, T) in cardioseg's layout: ``volume[i, j, k, t]`` is the
            pixel at DICOM column ``i``, row ``j`` of slice ``k``, phase ``t``. Its dtype is the
            stored pixel type (int16/uint16 recommended).
        row_dir, col_dir: ImageOrientationPatient (LPS); slice normal = row_dir x col_dir.
        pixel_spacing: DICOM PixelSpacing order: (between rows, between columns) mm.
        origin: ImagePositionPatient of slice 0.
        slice_offsets_mm: position of each slice along the normal relative to ``origin``
            (default ``k * slice_gap_mm``); give them descending to write a reversed stack.
        trigger_times_ms: per phase (default ``40 * t``); ``write_trigger_time=False`` omits the tag.
        spacing_between_slices_mm: ITK's DICOM writer always writes SpacingBetweenSlices (0018,0088)
            from the image's third spacing, so it cannot be omitted, only chosen.
        skip: (k, t) images not written (an incomplete acquisition).
        extra_tags: more or overriding tags, e.g. ``{"0028|1053": "2"}``.
        shuffle_seed: file names (``{prefix}NNNN.dcm``) and writing order are a random
            permutation of the (k, t) order; None keeps the (k, t) order.

    Returns:
        ``{(k, t): path}`` of the files written.
    """
    vol = np.asarray(volume)
    if vol.ndim == 3:
        vol = vol[..., None]
    nz, nt = vol.shape[2:]
    offsets = [k * slice_gap_mm for k in range(nz)] if slice_offsets_mm is None else list(slice_offsets_mm)
    triggers = [40.0 * t for t in range(nt)] if trigger_times_ms is None else list(trigger_times_ms)
    row, col = np.asarray(row_dir, dtype=np.float64), np.asarray(col_dir, dtype=np.float64)
    normal = np.cross(row, col)
    cells = [(k, t) for k in range(nz) for t in range(nt)]
    order = (
        np.arange(len(cells)) if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(len(cells))
    )
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    written: dict[tuple[int, int], Path] = {}
    for n in order:
        k, t = cells[n]
        if (k, t) in skip:
            continue
        position = np.asarray(origin, dtype=np.float64) + offsets[k] * normal
        image = sitk.GetImageFromArray(
            np.ascontiguousarray(vol[None, :, :, k, t].transpose(0, 2, 1))
        )  # (1, rows, cols)
        image.SetSpacing((pixel_spacing[1], pixel_spacing[0], spacing_between_slices_mm))
        instance = n + 1
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
            "0008|0018": f"{series_uid}.{instance}",
            "0008|0060": "MR",
            "0008|103e": description,
            "0010|0010": "Phantom^Test",
            "0010|0020": "PHANTOM",
            "0018|0050": f"{slice_thickness_mm:g}",
            "0020|000d": STUDY_UID,
            "0020|000e": series_uid,
            "0020|0011": str(series_number),
            "0020|0013": str(instance),
            "0020|0032": _ds(position),
            "0020|0037": _ds([*row, *col]),
            "0020|1041": f"{offsets[k]:g}",
            "0028|0030": _ds(pixel_spacing),
        }
        if write_trigger_time:
            tags["0018|1060"] = f"{triggers[t]:g}"
        tags.update(extra_tags or {})
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        path = folder / f"{prefix}{n:04d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(image)
        written[(k, t)] = path
    return written


def coded_volume(nx: int = 7, ny: int = 5, nz: int = 4, nt: int = 3) -> np.ndarray:
    """int16 (X, Y, Z, T) whose every voxel tells its own index: ``i + 8 j + 64 k + 512 t``."""
    i, j, k, t = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), np.arange(nt), indexing="ij")
    return (i + 8 * j + 64 * k + 512 * t).astype(np.int16)


# ---------------------------------------------------------------------------- damaging files

_LONG_VRS = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"OD", b"OL", b"UC", b"UR", b"OV", b"SV", b"UV"}


def dicom_elements(raw: bytes) -> list[tuple[int, int, int, int]]:
    """(start, end, group, element) of each top-level element of a file written by
    ``write_dicom_series`` (explicit-VR file meta, then explicit or implicit VR little endian)."""
    out, pos, implicit = [], 132, False
    while pos + 8 <= len(raw):
        group, element = struct.unpack_from("<HH", raw, pos)
        if group != 2 and implicit:
            length, head = struct.unpack_from("<I", raw, pos + 4)[0], 8
        elif raw[pos + 4 : pos + 6] in _LONG_VRS:
            length, head = struct.unpack_from("<I", raw, pos + 8)[0], 12
        else:
            length, head = struct.unpack_from("<H", raw, pos + 6)[0], 8
        if (group, element) == (2, 0x10):
            implicit = raw[pos + head : pos + head + length].rstrip(b"\0 ") == b"1.2.840.10008.1.2"
        out.append((pos, pos + head + length, group, element))
        pos += head + length
    return out


def drop_element(path: Path, tag: tuple[int, int]) -> Path:
    """Remove the top-level element ``tag`` (group, element) from a DICOM file in place."""
    raw = path.read_bytes()
    for start, end, group, element in dicom_elements(raw):
        if (group, element) == tag:
            path.write_bytes(raw[:start] + raw[end:])
            return path
    raise KeyError(tag)


def write_structured_report(path: Path, series_uid: str = SERIES_UID) -> Path:
    """A minimal DICOM object without pixel data (a Basic Text SR) in the series ``series_uid``."""

    def element(group: int, elem: int, vr: str, value: bytes | str) -> bytes:
        data = value.encode() if isinstance(value, str) else value
        if len(data) % 2:
            data += b"\0" if vr == "UI" else b" "
        if vr in ("OB", "UT"):
            return struct.pack("<HH2sHI", group, elem, vr.encode(), 0, len(data)) + data
        return struct.pack("<HH2sH", group, elem, vr.encode(), len(data)) + data

    sr_class, uid = "1.2.840.10008.5.1.4.1.1.88.11", "1.2.826.0.1.3680043.8.498.99"
    meta = (element(2, 1, "OB", b"\0\1") + element(2, 2, "UI", sr_class) + element(2, 3, "UI", uid)
            + element(2, 0x10, "UI", "1.2.840.10008.1.2.1"))  # fmt: skip
    body = (element(8, 0x16, "UI", sr_class) + element(8, 0x18, "UI", uid) + element(8, 0x60, "CS", "SR")
            + element(0x20, 0x0D, "UI", "1.2.3") + element(0x20, 0x0E, "UI", series_uid))  # fmt: skip
    path.write_bytes(b"\0" * 128 + b"DICM" + element(2, 0, "UL", struct.pack("<I", len(meta))) + meta + body)
    return path
