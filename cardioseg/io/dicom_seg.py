"""DICOM Segmentation (SEG) objects for masks of DICOM input (``--dicom-seg``; needs highdicom:
``pip install 'cardioseg[dicom-seg]'``).

:func:`write_dicom_seg` writes one SEG instance per study: a BINARY segmentation with three
segments, one mask frame per segment and source image of the chosen phases (empty frames
kept), each frame in the geometry of its source image (same rows, columns, position and
orientation) and referencing it by SOPInstanceUID, so the SEG overlays the original
images exactly. :func:`read_dicom_seg` reads one back into cardioseg's array layout.

Segments (always numbered 1, 2, 3, whatever the label values of the mask; SNOMED CT codes,
scheme designator ``SCT``, as in pydicom's ``pydicom.sr.codedict.codes.SCT``):

====  ==============  ==============================================  =====================================
 #    label           category (DICOM CID 7150)                       type
====  ==============  ==============================================  =====================================
 1    RV cavity       91723000 "Anatomical Structure"                 53085002 "Right ventricle" (CID 7152)
 2    LV myocardium   85756007 "Tissue"                               49848007 "Left Ventricle Myocardium"
 3    LV cavity       91723000 "Anatomical Structure"                 87878005 "Left ventricle" (CID 7152)
====  ==============  ==============================================  =====================================

CID 7152 (Cardiac Structure Segmentation Types) has the two ventricles but no myocardium;
49848007 ("Structure of myocardium of left ventricle") is the code DICOM uses for the LV
myocardium elsewhere (CID 12305). Each segment also carries the algorithm identification
(name ``cardioseg``, its version, family DCM 123110 "Artificial Intelligence"), algorithm
type AUTOMATIC and cardioseg's overlay colour.

Why BINARY and not LABELMAP: the Label Map Segmentation SOP class (2024) is written by
highdicom but not yet read by most viewers and tools (3D Slicer/dcmqi, older OHIF), while
BINARY SEG is read everywhere; with three segments at one bit per pixel it is also smaller
(3 bits against 8 per pixel).

Cine phases: highdicom builds a SEG from source images at distinct positions only (it refuses
a cine's images, which share positions: highdicom issue #369), so each phase is built on its
own and the phases are merged into one instance with a temporal dimension:
``DimensionOrganizationType`` 3D_TEMPORAL, ``TemporalPositionIndex`` (1 = the earliest phase
written) in each frame's Frame Content Sequence and a third dimension index (segment,
temporal position, image position). Every frame still names its own source image, which is
how viewers that handle cine SEGs place it; OHIF has been reported to show only the first
phase's mask over every phase of a cine (OHIF issue #4789). A single phase (a 3D series, or
one frame of a cine) gives a plain highdicom SEG without the temporal dimension.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cardioseg._version import __version__
from cardioseg.errors import ConfigError, UnreadableInputError, UnsupportedInputError
from cardioseg.io.files import atomic_path
from cardioseg.io.volume import Volume
from cardioseg.labels import LabelMap

if TYPE_CHECKING:
    from pydicom import Dataset

__all__ = [
    "INSTALL_HINT",
    "SEGMENTS",
    "SEG_SERIES_NUMBER_OFFSET",
    "SegmentSpec",
    "read_dicom_seg",
    "require_highdicom",
    "write_dicom_seg",
]

INSTALL_HINT = "--dicom-seg needs highdicom: pip install 'cardioseg[dicom-seg]'"
SEG_SERIES_NUMBER_OFFSET = 1000
"""The SEG's SeriesNumber is the source series' number plus this (this alone when it has none)."""

_TEMPORAL_POSITION_INDEX = 0x00209128  # (0020,9128) Temporal Position Index
_FRAME_CONTENT_SEQUENCE = 0x00209111  # (0020,9111) Frame Content Sequence


@dataclass(frozen=True)
class SegmentSpec:
    """One segment of the SEG: its number, the structure it holds and how it is coded."""

    number: int  # SegmentNumber (1-based)
    structure: str  # key of LabelMap.structures
    label: str  # SegmentLabel
    category: tuple[str, str, str]  # SegmentedPropertyCategoryCodeSequence: (scheme, value, meaning)
    type: tuple[str, str, str]  # SegmentedPropertyTypeCodeSequence: (scheme, value, meaning)
    rgb: tuple[int, int, int]  # recommended display colour (cardioseg.overlay.STRUCTURE_STYLE)


_ANATOMICAL_STRUCTURE = ("SCT", "91723000", "Anatomical Structure")
_TISSUE = ("SCT", "85756007", "Tissue")

SEGMENTS: tuple[SegmentSpec, ...] = (
    SegmentSpec(1, "rv", "RV cavity", _ANATOMICAL_STRUCTURE, ("SCT", "53085002", "Right ventricle"), (0, 200, 255)),
    SegmentSpec(2, "myo", "LV myocardium", _TISSUE, ("SCT", "49848007", "Left Ventricle Myocardium"), (48, 224, 48)),
    SegmentSpec(3, "lv", "LV cavity", _ANATOMICAL_STRUCTURE, ("SCT", "87878005", "Left ventricle"), (255, 48, 48)),
)
"""The segments written, in SegmentNumber order (see the module docstring for the codes)."""


def require_highdicom() -> None:
    """Raise a one-line ConfigError that says how to install highdicom when it is missing."""
    try:
        import highdicom  # noqa: F401
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None


# ---------------------------------------------------------------------------- checks


def _source_files(volume: Volume) -> tuple[tuple[Path, ...], ...]:
    """The volume's DICOM files ``[k][t]``, or a ConfigError when it was not read from DICOM."""
    files = volume.meta.source_files
    if volume.meta.source != "dicom" or not files:
        where = f'"{volume.path}"' if volume.path else "the image"
        raise ConfigError(f"--dicom-seg needs DICOM input: {where} was not read from a DICOM series")
    return files


def _check_frames(volume: Volume, frames: Sequence[int]) -> list[int]:
    """``frames`` as a list of ints, refused when empty, repeated or outside the volume's phases."""
    chosen = [int(t) for t in frames]
    n = volume.n_frames
    if not chosen:
        raise ConfigError("--dicom-seg needs at least one frame to write")
    bad = [t for t in chosen if not 0 <= t < n]
    if bad:
        what = f"the cine's frames 0..{n - 1}" if volume.is_cine else "frame 0 of the 3D image"
        raise ConfigError(f"--dicom-seg: frame {bad[0]} is outside {what}")
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"--dicom-seg: frames {chosen} name a frame twice")
    return chosen


def _check_mask(mask: np.ndarray, volume: Volume, label_map: LabelMap) -> np.ndarray:
    """``mask`` as a 4D (X, Y, Z, T) array, refused when its shape or labels do not fit."""
    if mask.shape != volume.data.shape:
        raise ConfigError(f"--dicom-seg: mask shape {mask.shape} differs from the image shape {volume.data.shape}")
    known = np.array([0, *label_map.structures.values()])
    values = np.unique(mask)
    unknown = values[~np.isin(values, known)]
    if unknown.size:
        listed = ", ".join(str(v) for v in unknown[:5].tolist()) + (", ..." if unknown.size > 5 else "")
        raise ConfigError(
            f"--dicom-seg: the mask holds label values {listed} that label map {label_map.name!r} "
            f"(rv={label_map.rv}, myo={label_map.myo}, lv={label_map.lv}) does not define"
        )
    return mask if mask.ndim == 4 else mask[..., None]


def _read_header(path: Path) -> Dataset:
    """The header of one source file (no pixels), with a one-line error when it cannot be read."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise UnreadableInputError(f'DICOM file "{path}" could not be read for --dicom-seg ({exc})') from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------- writing


def _code(triple: tuple[str, str, str]) -> Any:
    from pydicom.sr.coding import Code

    scheme, value, meaning = triple
    return Code(value, scheme, meaning)


def _segment_descriptions(software_version: str) -> list[Any]:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name="cardioseg", version=software_version, family=codes.cid7162.ArtificialIntelligence
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=spec.number,
            segment_label=spec.label,
            segmented_property_category=_code(spec.category),
            segmented_property_type=_code(spec.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*spec.rgb),
        )
        for spec in SEGMENTS
    ]


def _phase_segmentation(
    sources: list[Dataset],
    stacked: np.ndarray,
    descriptions: list[Any],
    uids: tuple[str, str],
    series_number: int,
    series_description: str,
    software_version: str,
) -> Any:
    """A highdicom BINARY Segmentation of one phase: ``stacked`` is (Z, rows, columns, segments)."""
    import highdicom as hd

    series_uid, sop_uid = uids
    try:
        return hd.seg.Segmentation(
            source_images=sources,
            pixel_array=stacked,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=sop_uid,
            instance_number=1,
            manufacturer="cardioseg",
            manufacturer_model_name="cardioseg",
            software_versions=software_version,
            device_serial_number="n/a",
            content_label="CARDIOSEG",
            content_description="RV cavity, LV myocardium and LV cavity (automatic)",
            omit_empty_frames=False,
            series_description=series_description,
        )
    except ValueError as exc:
        raise UnsupportedInputError(f"--dicom-seg: highdicom refused the source images ({_first_line(exc)})") from None


def _merge_phases(phases: list[Any]) -> Any:
    """One SEG with a temporal dimension from per-phase SEGs (same UIDs and segments), in phase order."""
    from pydicom import Dataset
    from pydicom.pixels import pack_bits, unpack_bits
    from pydicom.sequence import Sequence as DicomSequence

    base = phases[0]
    rows, cols = int(base.Rows), int(base.Columns)
    frames: list[tuple[tuple[int, ...], Dataset, np.ndarray]] = []
    source_items: dict[str, Dataset] = {}
    instance_items: dict[str, Dataset] = {}
    for temporal, seg in enumerate(phases, start=1):
        n = int(seg.NumberOfFrames)
        bits = np.asarray(unpack_bits(seg.PixelData))[: n * rows * cols].reshape(n, rows, cols)
        for item, frame in zip(seg.PerFrameFunctionalGroupsSequence, bits):
            item = copy.deepcopy(item)
            content = item.FrameContentSequence[0]
            segment, *position = (int(v) for v in content.DimensionIndexValues)
            index = (segment, temporal, *position)
            content.DimensionIndexValues = list(index)
            content.TemporalPositionIndex = temporal
            frames.append((index, item, frame))
        for ref in seg.get("SourceImageSequence", []):
            source_items.setdefault(str(ref.ReferencedSOPInstanceUID), ref)
        for ref in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence:
            instance_items.setdefault(str(ref.ReferencedSOPInstanceUID), ref)
    frames.sort(key=lambda f: f[0])

    merged = copy.deepcopy(base)
    dimension = Dataset()
    dimension.DimensionOrganizationUID = base.DimensionIndexSequence[0].DimensionOrganizationUID
    dimension.DimensionIndexPointer = _TEMPORAL_POSITION_INDEX
    dimension.FunctionalGroupPointer = _FRAME_CONTENT_SEQUENCE
    dimension.DimensionDescriptionLabel = "Temporal Position Index"
    dimensions = list(base.DimensionIndexSequence)
    merged.DimensionIndexSequence = DicomSequence([dimensions[0], dimension, *dimensions[1:]])
    merged.DimensionOrganizationType = "3D_TEMPORAL"
    merged.PerFrameFunctionalGroupsSequence = DicomSequence([item for _, item, _ in frames])
    merged.NumberOfFrames = len(frames)
    merged.PixelData = pack_bits(np.stack([frame for _, _, frame in frames]).reshape(-1))
    if source_items:
        merged.SourceImageSequence = DicomSequence(list(source_items.values()))
    merged.ReferencedSeriesSequence[0].ReferencedInstanceSequence = DicomSequence(list(instance_items.values()))
    return merged


def write_dicom_seg(
    volume: Volume,
    mask: np.ndarray,
    frames: Sequence[int],
    label_map: LabelMap,
    path: Path,
    series_description: str = "cardioseg",
    software_version: str | None = None,
) -> Path:
    """Write ``mask`` (for the phases ``frames``) as a DICOM Segmentation of ``volume``'s series.

    Args:
        volume: the image, as read from a DICOM series (``meta.source == "dicom"`` with
            ``meta.source_files``).
        mask: labels of ``label_map``, the shape of ``volume.data`` ((X, Y, Z) or (X, Y, Z, T)).
        frames: the phases to write, e.g. the ED and ES indices of a cine; ``[0]`` for a 3D image.
        label_map: what the mask's values mean; the SEG's segments are always 1 RV cavity,
            2 LV myocardium, 3 LV cavity (:data:`SEGMENTS`).
        path: the file written (atomically: a temporary file beside it, renamed at the end).
        series_description: the SEG's SeriesDescription.
        software_version: in SoftwareVersions and the algorithm identification (default: cardioseg's version).

    Returns:
        ``path``. The SEG has one frame per segment and source image (Z per phase), empty ones
        included, in the study, patient and frame of reference of the source series; a new
        series (number: the source's + :data:`SEG_SERIES_NUMBER_OFFSET`) of one instance.

    Raises:
        ConfigError: a volume not read from DICOM, a mask that does not fit, frames outside the
            volume, or highdicom missing.
        UnreadableInputError: a source file that can no longer be read.
        UnsupportedInputError: source images highdicom cannot derive a SEG from (no
            FrameOfReferenceUID, for instance).
    """
    files = _source_files(volume)
    chosen = _check_frames(volume, frames)
    mask4 = _check_mask(np.asarray(mask), volume, label_map)
    require_highdicom()
    import highdicom as hd

    version = software_version or __version__
    descriptions = _segment_descriptions(version)
    uids = (str(hd.UID()), str(hd.UID()))
    series_number = (volume.meta.series_number or 0) + SEG_SERIES_NUMBER_OFFSET
    values = [label_map.structures[spec.structure] for spec in SEGMENTS]
    phases = []
    for t in sorted(chosen):
        sources = [_read_header(files[k][t]) for k in range(len(files))]
        missing = next((p for p, ds in zip(files, sources) if not ds.get("FrameOfReferenceUID")), None)
        if missing is not None:
            raise UnsupportedInputError(
                f'--dicom-seg: "{missing[t]}" has no FrameOfReferenceUID (0020,0052), which a DICOM-SEG must reference'
            )
        # mask4[i, j, k, t] is the pixel at column i, row j: the frame of slice k is mask4[:, :, k, t].T
        stacked = np.stack([mask4[:, :, :, t] == v for v in values], axis=-1).transpose(2, 1, 0, 3)
        phases.append(
            _phase_segmentation(sources, stacked, descriptions, uids, series_number, series_description, version)
        )
    seg = phases[0] if len(phases) == 1 else _merge_phases(phases)
    path = Path(path)
    with atomic_path(path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return path


# ---------------------------------------------------------------------------- reading


def _segment_numbers(seg: Any, path: Path) -> dict[str, int]:
    """Structure key -> SegmentNumber, matched by segmented property type code."""
    by_code = {(spec.type[0], spec.type[1]): spec.structure for spec in SEGMENTS}
    found: dict[str, int] = {}
    for item in seg.SegmentSequence:
        codes = item.get("SegmentedPropertyTypeCodeSequence", [])
        if codes:
            key = by_code.get((str(codes[0].CodingSchemeDesignator), str(codes[0].CodeValue)))
            if key is not None and key not in found:
                found[key] = int(item.SegmentNumber)
    if not found:
        raise UnsupportedInputError(
            f'DICOM-SEG "{path}" has no RV cavity, LV myocardium or LV cavity segment (SNOMED CT 53085002, '
            "49848007, 87878005)"
        )
    return found


def read_dicom_seg(path: Path, volume: Volume, frames: Sequence[int], label_map: LabelMap) -> np.ndarray:
    """Read a DICOM-SEG of ``volume``'s series back into a label array in cardioseg's layout.

    Frames are matched to the source images by referenced SOPInstanceUID, segments to
    structures by segmented property type code (:data:`SEGMENTS`), so SEGs from other tools
    read too; a source image the SEG has no frame for reads as background, and where segments
    overlap the later of RV cavity, LV myocardium, LV cavity wins.

    Returns:
        uint8 (X, Y, Z, len(frames)) with ``label_map``'s values; ``[..., i]`` is phase ``frames[i]``.

    Raises:
        ConfigError: a volume not read from DICOM, frames outside it, or highdicom missing.
        UnreadableInputError: ``path`` is not a readable DICOM Segmentation.
        UnsupportedInputError: the SEG segments none of these images, or none of the three structures.
    """
    files = _source_files(volume)
    chosen = _check_frames(volume, frames)
    require_highdicom()
    import highdicom as hd

    path = Path(path)
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:  # noqa: BLE001 - pydicom and highdicom raise many types for a file that is not a SEG
        raise UnreadableInputError(f'"{path}" is not a readable DICOM Segmentation ({_first_line(exc)})') from None
    numbers = _segment_numbers(seg, path)
    nx, ny, nz = volume.data.shape[:3]
    if (int(seg.Columns), int(seg.Rows)) != (nx, ny):
        raise UnsupportedInputError(
            f'DICOM-SEG "{path}" has {seg.Columns}x{seg.Rows} pixels (columns x rows), the image {nx}x{ny}'
        )
    referenced = {sop for _, _, sop in seg.get_source_image_uids()}
    wanted = [(k, i, str(_read_header(files[k][t]).SOPInstanceUID)) for i, t in enumerate(chosen) for k in range(nz)]
    present = [(k, i, uid) for k, i, uid in wanted if uid in referenced]
    if not present:
        raise UnsupportedInputError(f'DICOM-SEG "{path}" segments none of the images of frames {chosen} of this series')
    keys = [spec.structure for spec in SEGMENTS if spec.structure in numbers]
    try:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[uid for _, _, uid in present],
            segment_numbers=[numbers[key] for key in keys],
            combine_segments=False,
        )  # (images, rows, columns, segments)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise UnsupportedInputError(
            f'DICOM-SEG "{path}" could not be matched to the images ({_first_line(exc)})'
        ) from None
    out = np.zeros((nx, ny, nz, len(chosen)), dtype=np.uint8)
    for (k, i, _), image in zip(present, pixels):
        for s, key in enumerate(keys):
            out[:, :, k, i][image[:, :, s].T > 0] = label_map.structures[key]
    return out
