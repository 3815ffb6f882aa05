"""Reading a DICOM short-axis (cine) series into a :class:`~cardioseg.io.Volume`.

Only SimpleITK (GDCM) is used. Headers are read first, without pixels, to pick the series,
group the images into slice positions and cardiac phases, check that they form one regular
stack and compute the geometry; pixels are read last, one file at a time.

Array layout and affine follow NIfTI/nibabel (what ``sitk.ReadImage`` + ``sitk.WriteImage``
to ``.nii.gz`` + ``nibabel.load`` gives for a single-phase series):

* ``data[i, j, k]`` (or ``data[i, j, k, t]`` for a cine): ``i`` runs along the DICOM column
  index (direction: first ImageOrientationPatient vector, spacing ``PixelSpacing[1]``), ``j``
  along the row index (second vector, ``PixelSpacing[0]``), ``k`` over the slice positions
  sorted ascending along the slice normal ``row x col``, ``t`` over the phases sorted by
  TriggerTime (InstanceNumber when TriggerTime is missing).
* ``affine`` = ``diag(-1, -1, 1, 1) @ [row*dx, col*dy, normal*dz, IPP of slice 0]``: DICOM's
  LPS patient coordinates turned into RAS+. The slice spacing ``dz`` is the median gap
  between the slice positions (never SliceThickness); the exact positions are kept in
  ``meta.slice_positions_mm``.
"""

from __future__ import annotations

import filecmp
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cardioseg.errors import InputFileNotFoundError, UnreadableInputError, UnsupportedInputError
from cardioseg.io.dicom_headers import (
    DicomHeader,
    SeriesInfo,
    check_consistent,
    cluster_positions,
    find_dicom_files,
    fmt_mm,
    group_series,
    is_dicom_file,
    list_series,
    new_reader,
    read_header,
    read_image_headers,
    series_info,
    series_sort_key,
    sitk_reason,
    skipped_warning,
)
from cardioseg.io.volume import Volume, VolumeMeta

__all__ = [
    "SeriesInfo",
    "find_dicom_files",
    "is_dicom_file",
    "list_series",
    "read_dicom_series",
]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
TRIGGER_TOL_MS = 1e-3  # trigger times closer than this are the same phase
INPLANE_SHIFT_TOL_PX = 0.1  # slice origins shifted in-plane by more than this fraction of a pixel: warn


# ---------------------------------------------------------------------------- stack assembly


@dataclass(frozen=True)
class _Stack:
    """Which file goes to which (k, t), and the geometry, decided from headers only."""

    grid: list[list[DicomHeader]]  # grid[k][t]
    affine: np.ndarray
    meta: VolumeMeta

    @property
    def shape(self) -> tuple[int, int, int, int]:
        first = self.grid[0][0]
        return (first.columns, first.rows, len(self.grid), len(self.grid[0]))


def _order_phases(
    images: list[DicomHeader], use_trigger: bool, label: str, position: float, warnings: list[str]
) -> list[DicomHeader]:
    """Sort the images of one slice position into phases; drop byte-identical copies, refuse other duplicates."""
    if len(images) == 1:
        return images
    if use_trigger:
        images = sorted(images, key=lambda h: (h.trigger_time, h.instance_number or 0, str(h.path)))
    else:
        images = sorted(images, key=lambda h: (h.instance_number, str(h.path)))
    kept = [images[0]]
    for h in images[1:]:
        prev = kept[-1]
        if use_trigger:
            same = abs(h.trigger_time - prev.trigger_time) <= TRIGGER_TOL_MS  # type: ignore[operator]
            what = f"trigger time {h.trigger_time:g} ms"
        else:
            same = h.instance_number == prev.instance_number
            what = f"InstanceNumber {h.instance_number}"
        if not same:
            kept.append(h)
        elif filecmp.cmp(prev.path, h.path, shallow=False):
            warnings.append(f'Ignored "{h.path.name}", an identical copy of "{prev.path.name}".')
        else:
            raise UnsupportedInputError(
                f'{label}: "{prev.path}" and "{h.path}" are both at slice position {position:.2f} mm with {what}; '
                "remove the duplicate image (repeated acquisition?) or pass the folder of one acquisition"
            )
    return kept


def _slice_directions(ref: DicomHeader) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit row, column and normal (row x col) directions of a checked header (LPS)."""
    assert ref.orientation is not None
    row = ref.orientation[:3] / np.linalg.norm(ref.orientation[:3])
    col = ref.orientation[3:] / np.linalg.norm(ref.orientation[3:])
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    return row, col, normal


@dataclass(frozen=True)
class _Grid:
    """The images of a series sorted into slice positions and phases."""

    grid: list[list[DicomHeader]]  # grid[k][t]: the kept slice positions, ascending along the normal
    positions: list[float]  # every slice position of the series (mm along the normal), ascending
    kept: list[int]  # indices into ``positions`` of the grid's slices
    dropped: list[int]  # indices into ``positions`` of the slices left out


def _phase_grid(headers: list[DicomHeader], normal: np.ndarray, label: str, warnings: list[str]) -> _Grid:
    """Cluster the images into slice positions, order each position's phases, and keep the
    positions with the phase count that keeps the most images (ties: more phases)."""
    projections = np.array([h.position @ normal for h in headers])  # type: ignore[operator]
    clusters = cluster_positions(projections)
    positions = [float(np.mean(projections[c])) for c in clusters]

    use_trigger = all(h.trigger_time is not None for h in headers)
    multi = any(len(c) > 1 for c in clusters)
    if multi and not use_trigger:
        if not all(h.instance_number is not None for h in headers):
            raise UnsupportedInputError(
                f"{label}: several images per slice position but neither TriggerTime (0018,1060) nor "
                "InstanceNumber (0020,0013) in every file to order the cardiac phases"
            )
        warnings.append("Not every image has a TriggerTime; cardiac phases were ordered by InstanceNumber.")
    per_position = [
        _order_phases([headers[i] for i in c], use_trigger, label, pos, warnings) for c, pos in zip(clusters, positions)
    ]

    counts = Counter(len(p) for p in per_position)
    n_phases = max(counts, key=lambda n: (n * counts[n], n))
    keep = [i for i, p in enumerate(per_position) if len(p) == n_phases]
    dropped = [i for i, p in enumerate(per_position) if len(p) != n_phases]
    if dropped:
        kept_text = f"{len(keep)} kept position{'s' if len(keep) > 1 else ''}"
        warnings.append(
            f"Dropped {len(dropped)} of {len(positions)} slice positions ({fmt_mm([positions[i] for i in dropped])} mm "
            f"along the slice normal): they have {_fmt_counts([len(per_position[i]) for i in dropped])} where the "
            f"{kept_text} {'have' if len(keep) > 1 else 'has'} {n_phases} (incomplete or repeated acquisition)."
        )
    return _Grid([per_position[i] for i in keep], positions, keep, dropped)


def _inplane_shift_warning(grid: list[list[DicomHeader]], row: np.ndarray, col: np.ndarray, pixel: float) -> list[str]:
    """A warning when the slice origins do not line up along the normal (shifted in-plane)."""
    origin = grid[0][0].position
    assert origin is not None
    shifts = [
        float(np.hypot((h.position - origin) @ row, (h.position - origin) @ col))  # type: ignore[operator]
        for images in grid
        for h in images
    ]
    if max(shifts) > INPLANE_SHIFT_TOL_PX * pixel:
        warning = (
            f"Slice origins are shifted in-plane by up to {max(shifts):.2f} mm relative to the first slice; "
            "the affine assumes slices stacked straight along the slice normal."
        )
        return [warning]
    return []


def _slice_spacing(kept_positions: list[float], positions: list[float], ref: DicomHeader, warnings: list[str]) -> float:
    """The slice spacing of the affine: the median gap of the kept positions, else of all positions,
    else SpacingBetweenSlices, else SliceThickness, else 1 mm (with a warning for each fallback)."""
    if len(kept_positions) >= 2:
        return float(np.median(np.diff(kept_positions)))
    if len(positions) >= 2:
        dz = float(np.median(np.diff(positions)))
        warnings.append(
            f"Only one complete slice position; slice spacing {dz:.2f} mm taken from the gaps between all "
            f"{len(positions)} slice positions of the series."
        )
        return dz
    between, thickness = ref.spacing_between_slices, ref.slice_thickness
    if between is not None and between > 0:
        dz, source = between, "SpacingBetweenSlices"
    elif thickness is not None and thickness > 0:
        dz, source = thickness, "SliceThickness"
    else:
        dz, source = 1.0, "a default"
    warnings.append(f"Single-slice series; slice spacing {dz:.2f} mm taken from {source}.")
    return dz


def _assemble(headers: list[DicomHeader], label: str) -> _Stack:
    """Group one series' images into a (slice, phase) grid and compute the geometry."""
    headers = sorted(headers, key=lambda h: str(h.path))
    check_consistent(headers, label)
    ref = headers[0]
    assert ref.orientation is not None and ref.pixel_spacing is not None and ref.position is not None
    row, col, normal = _slice_directions(ref)
    warnings: list[str] = []
    g = _phase_grid(headers, normal, label, warnings)
    kept_positions = [g.positions[i] for i in g.kept]
    warnings += _inplane_shift_warning(g.grid, row, col, min(ref.pixel_spacing))
    dz = _slice_spacing(kept_positions, g.positions, ref, warnings)

    dy, dx = ref.pixel_spacing  # PixelSpacing = (between rows, between columns)
    lps = np.eye(4)
    lps[:3, 0] = row * dx
    lps[:3, 1] = col * dy
    lps[:3, 2] = normal * dz
    lps[:3, 3] = g.grid[0][0].position
    interval, problem = trigger_interval_ms([h.trigger_time for h in g.grid[0]])
    meta = VolumeMeta(
        source="dicom",
        frame_interval_ms=interval,
        frame_interval_problem=problem,
        patient_id=ref.patient_id,
        study_uid=ref.study_uid,
        series_number=ref.series_number,
        heart_rate_bpm=ref.heart_rate,
        source_files=tuple(tuple(h.path for h in images) for images in g.grid),
        series_uid=ref.series_uid,
        series_description=ref.description,
        slice_positions_mm=tuple(kept_positions),
        dropped_slice_positions_mm=tuple(g.positions[i] for i in g.dropped),
        trigger_times_ms=tuple(h.trigger_time for h in g.grid[0]),
        slice_thickness_mm=ref.slice_thickness,
        slice_spacing_mm=dz,
        pixel_spacing_mm=(dx, dy),
        image_orientation_patient=tuple(float(v) for v in ref.orientation),
        warnings=tuple(warnings),
        n_files=len(headers),
        n_files_used=sum(len(images) for images in g.grid),
    )
    return _Stack(grid=g.grid, affine=LPS_TO_RAS @ lps, meta=meta)


def trigger_interval_ms(times: Sequence[float | None]) -> tuple[float | None, str | None]:
    """The frame interval of a cine from its phases' trigger times (the median step, ms), or
    (None, why) for a single phase, missing times or times that do not increase.

    >>> trigger_interval_ms([0.0, 40.0, 80.5, 120.0])
    (40.0, None)
    """
    if len(times) < 2:
        return None, None
    if any(t is None for t in times):
        return None, "some DICOM phases have no TriggerTime"
    steps = np.diff(np.asarray(times, dtype=np.float64))
    if not np.all(steps > 0):
        return None, "the DICOM TriggerTimes do not increase from phase to phase"
    return float(np.median(steps)), None


def _fmt_counts(counts: Sequence[int]) -> str:
    return ", ".join(str(c) for c in counts) + (" phase" if counts == [1] else " phases")


# ---------------------------------------------------------------------------- pixels


def _read_pixels(header: DicomHeader) -> np.ndarray:
    """The (rows, columns) pixel array of one file, rescale slope/intercept applied."""
    import SimpleITK as sitk

    reader = new_reader(header.path)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise UnreadableInputError(
            f'DICOM file "{header.path}" could not be read ({sitk_reason(exc)}); is it complete and not corrupted?'
        ) from exc
    size = tuple(int(s) for s in image.GetSize())
    if size[:2] != (header.columns, header.rows) or image.GetNumberOfPixels() != header.rows * header.columns:
        raise UnreadableInputError(
            f'DICOM file "{header.path}" holds {"x".join(map(str, size))} pixels (columns x rows), not the '
            f"{header.columns}x{header.rows} its header announces"
        )
    return sitk.GetArrayFromImage(image).reshape(header.rows, header.columns)


def _common_dtype(dtypes: set[np.dtype]) -> np.dtype:
    if len(dtypes) == 1 and np.issubdtype(next(iter(dtypes)), np.integer):
        return next(iter(dtypes))
    if all(np.issubdtype(d, np.integer) for d in dtypes):
        return np.result_type(*dtypes)
    return np.dtype(np.float32)


# ---------------------------------------------------------------------------- reading


def _select_series(groups: dict[str, list[DicomHeader]], series_uid: str | None, folder: Path) -> list[DicomHeader]:
    infos = sorted((series_info(g) for g in groups.values()), key=series_sort_key)
    listing = "; ".join(i.summary() for i in infos)
    if series_uid is not None:
        if series_uid not in groups:
            raise UnsupportedInputError(f'No DICOM series with UID {series_uid} in "{folder}"; it holds: {listing}')
        return groups[series_uid]
    if len(groups) > 1:
        raise UnsupportedInputError(
            f'"{folder}" holds {len(groups)} DICOM series; choose one with --series-uid: {listing}'
        )
    return next(iter(groups.values()))


def read_dicom_series(
    folder: str | os.PathLike[str],
    series_uid: str | None = None,
    max_voxels: int | None = None,
) -> Volume:
    """Read one DICOM series (single frame or short-axis cine) as a ``Volume``.

    Args:
        folder: a folder searched recursively for DICOM files, or one DICOM file, which stands
            for its series among the files under its own folder.
        series_uid: the SeriesInstanceUID to read; needed when the folder holds several series.
        max_voxels: refuse (before reading any pixel) a series with more voxels than this.

    Returns:
        A ``Volume`` with ``data`` (X, Y, Z) for a single phase or (X, Y, Z, T) for a cine, a RAS+
        affine (see the module docstring), ``path`` = the folder, ``header`` None, and ``meta``
        (:class:`~cardioseg.io.volume.VolumeMeta`) with ``source="dicom"``, ``series_uid``, ``series_description``, ``slice_positions_mm``,
        ``dropped_slice_positions_mm``, ``trigger_times_ms``, ``slice_thickness_mm``,
        ``slice_spacing_mm``, ``pixel_spacing_mm``, ``image_orientation_patient``, ``warnings``,
        ``n_files`` (files of the series), ``n_files_used``. ``pixel_spacing_mm`` is (along i,
        along j); positions are ``ImagePositionPatient . (row x col)``, so they can have the
        opposite sign of SliceLocation.

    Slice positions whose number of phases differs from the others (incomplete or repeated
    acquisition) are dropped with a warning: the phase count kept is the one that keeps the
    most images (ties: more phases). With one kept position, the slice spacing comes from the
    gaps between all positions of the series, else SpacingBetweenSlices, else SliceThickness.

    Raises:
        InputFileNotFoundError: nothing at ``folder``.
        UnsupportedInputError: no DICOM files, several series and no ``series_uid``, an unknown
            UID, images that do not form one stack, or more than ``max_voxels`` voxels.
        UnreadableInputError: a file that cannot be decoded (truncated, corrupt, bad tag values).
    """
    p = Path(folder)
    if not p.exists():
        raise InputFileNotFoundError(f'Not found: "{p}"')
    if p.is_file():
        if not is_dicom_file(p):
            raise UnsupportedInputError(f'File "{p}" is not a DICOM file (no "DICM" marker at byte 128)')
        if series_uid is None:
            series_uid = read_header(p).series_uid
        p = p.parent
    files = find_dicom_files(p)
    if not files:
        raise UnsupportedInputError(f'No DICOM files in "{p}" (looked for files with the "DICM" marker at byte 128)')
    image_headers, skipped = read_image_headers(files)
    if not image_headers:
        raise UnsupportedInputError(f'No DICOM images in "{p}": its {len(files)} DICOM file(s) hold no pixel data')
    groups = group_series(image_headers)
    headers = _select_series(groups, series_uid, p)
    uid = headers[0].series_uid or "(no SeriesInstanceUID)"
    label = f'DICOM series {uid} in "{p}"'
    stack = _assemble(headers, label)

    nx, ny, nz, nt = stack.shape
    n_voxels = nx * ny * nz * nt
    if max_voxels is not None and n_voxels > max_voxels:
        raise UnsupportedInputError(
            f"{label} has {nx}x{ny}x{nz}x{nt} = {n_voxels:,} voxels, more than the limit of {max_voxels:,}"
        )

    data: np.ndarray | None = None
    for k, images in enumerate(stack.grid):
        for t, h in enumerate(images):
            array = _read_pixels(h)
            if data is None:
                data = np.empty((nx, ny, nz, nt), dtype=_common_dtype({array.dtype}))
            elif array.dtype != data.dtype:
                dtype = _common_dtype({data.dtype, array.dtype})
                if dtype != data.dtype:
                    data = data.astype(dtype)
            data[:, :, k, t] = array.T
    assert data is not None
    if nt == 1:
        data = data[..., 0]
    return Volume(data=data, affine=stack.affine, path=p, header=None, meta=stack.meta.with_warnings(*skipped_warning(skipped)))
