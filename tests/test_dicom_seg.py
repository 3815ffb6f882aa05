"""DICOM-SEG output (cardioseg.io.dicom_seg): written from a synthetic oblique cine, read back
pixel for pixel, references, segment codes, empty structures, refusals, dciodvfy, real data."""

from __future__ import annotations

import locale
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dicom_writer import write_dicom_series

from cardioseg.errors import ConfigError, UnreadableInputError, UnsupportedInputError
from cardioseg.io import Volume, VolumeMeta, read_volume
from cardioseg.io.dicom_seg import (
    INSTALL_HINT,
    SEG_SERIES_NUMBER_OFFSET,
    SEGMENTS,
    read_dicom_seg,
    require_highdicom,
    write_dicom_seg,
)
from cardioseg.labels import ACDC, MNMS
from cardioseg.phantom import PhantomSpec, make_phantom

hd = pytest.importorskip("highdicom")
import pydicom  # highdicom brings pydicom
from pydicom.pixels import unpack_bits

FRAME_OF_REFERENCE = "1.2.826.0.1.3680043.8.498.300"
REAL_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom_sample" / "rvsc_patient09"
SEGMENT_NUMBER = (0x0062, 0x000B)


def write_series(folder: Path, data: np.ndarray, **kwargs: Any) -> dict[tuple[int, int], Path]:
    """``write_dicom_series`` (oblique by default), restoring the locale GDCM's writer leaves at "C"."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        return write_dicom_series(folder, data, **kwargs)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


@pytest.fixture(scope="module")
def cine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Volume, Any]:
    """A 48x40x4 slice, 4-phase phantom cine written as an oblique DICOM series, read back."""
    phantom = make_phantom(PhantomSpec(shape=(48, 40, 4), spacing_mm=(3.0, 3.0, 12.0), n_frames=4))
    folder = tmp_path_factory.mktemp("cine")
    write_series(folder, phantom.image, pixel_spacing=(3.0, 3.0), slice_gap_mm=12.0,
                 extra_tags={"0020|0052": FRAME_OF_REFERENCE})  # fmt: skip
    volume = read_volume(folder)
    assert volume.meta.source == "dicom" and np.array_equal(volume.data, phantom.image)
    return volume, phantom


def seg_frames(path: Path) -> list[tuple[int, str, np.ndarray]]:
    """(segment number, referenced SOPInstanceUID, (rows, columns) bool) of each SEG frame, by plain pydicom."""
    ds = pydicom.dcmread(path)
    n, rows, cols = int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns)
    bits = np.asarray(unpack_bits(ds.PixelData))[: n * rows * cols].reshape(n, rows, cols).astype(bool)
    out = []
    for item, frame in zip(ds.PerFrameFunctionalGroupsSequence, bits):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        out.append((number, uid, frame))
    return out


def sop_uids(volume: Volume, frames: list[int]) -> dict[str, tuple[int, int]]:
    """SOPInstanceUID -> (k, t) of the volume's source files of ``frames``."""
    files = volume.meta.source_files
    assert files is not None
    return {
        str(pydicom.dcmread(files[k][t], stop_before_pixels=True).SOPInstanceUID): (k, t)
        for t in frames
        for k in range(len(files))
    }


# ---------------------------------------------------------------------------- source files


def test_source_files_hold_the_pixels_of_each_slice_and_phase(cine: tuple[Volume, Any]) -> None:
    volume, _ = cine
    files = volume.meta.source_files
    assert files is not None and len(files) == volume.data.shape[2] and {len(f) for f in files} == {4}
    for k, phases in enumerate(files):
        for t, path in enumerate(phases):
            assert np.array_equal(pydicom.dcmread(path).pixel_array, volume.data[:, :, k, t].T), (k, t, path)


# ---------------------------------------------------------------------------- round trip


def test_two_frames_round_trip_pixel_for_pixel(cine: tuple[Volume, Any], tmp_path: Path) -> None:
    volume, phantom = cine
    path = write_dicom_seg(volume, phantom.labels, [0, 2], ACDC, tmp_path / "study_seg.dcm")
    assert path == tmp_path / "study_seg.dcm" and [p.name for p in tmp_path.iterdir()] == ["study_seg.dcm"]
    back = read_dicom_seg(path, volume, [0, 2], ACDC)
    assert back.dtype == np.uint8 and back.shape == (48, 40, 4, 2)
    assert np.array_equal(back, phantom.labels[..., [0, 2]])
    assert np.array_equal(read_dicom_seg(path, volume, [2], ACDC)[..., 0], phantom.labels[..., 2])
    assert np.array_equal(read_dicom_seg(path, volume, [2, 0], ACDC), phantom.labels[..., [2, 0]])


def test_each_frame_overlays_its_source_image(cine: tuple[Volume, Any], tmp_path: Path) -> None:
    """Independently of cardioseg's reader: the SEG frame for a source file, found by its pixels
    in the phantom, is that (slice, phase)'s mask pixel for pixel, and has its geometry."""
    volume, phantom = cine
    path = write_dicom_seg(volume, phantom.labels, [1, 3], ACDC, tmp_path / "s_seg.dcm")
    folder = volume.path
    assert folder is not None
    sources = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in folder.glob("*.dcm"))}
    value = {spec.number: ACDC.structures[spec.structure] for spec in SEGMENTS}
    frames = seg_frames(path)
    assert len(frames) == 3 * 4 * 2
    for number, uid, frame in frames:
        pixels = sources[uid].pixel_array
        (k, t), *others = [
            (k, t) for k in range(4) for t in range(4) if np.array_equal(phantom.image[:, :, k, t].T, pixels)
        ]
        assert not others and t in (1, 3)
        assert np.array_equal(frame, (phantom.labels[:, :, k, t] == value[number]).T), (number, k, t)
    seg = pydicom.dcmread(path)
    for item in seg.PerFrameFunctionalGroupsSequence:
        source = sources[str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)]
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, [float(v) for v in source.ImagePositionPatient])
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    assert np.allclose(orientation, [float(v) for v in volume.meta.image_orientation_patient or ()])
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [3.0, 3.0]


def test_references_are_the_source_instances_of_the_frames(cine: tuple[Volume, Any], tmp_path: Path) -> None:
    volume, phantom = cine
    path = write_dicom_seg(volume, phantom.labels, [0, 2], ACDC, tmp_path / "s_seg.dcm", software_version="9.9")
    expected = sop_uids(volume, [0, 2])
    seg = pydicom.dcmread(path)
    per_frame = {uid for _, uid, _ in seg_frames(path)}
    listed = {str(r.ReferencedSOPInstanceUID) for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    sources = {str(r.ReferencedSOPInstanceUID) for r in seg.SourceImageSequence}
    assert per_frame == listed == sources == set(expected)
    assert len(seg.ReferencedSeriesSequence) == 1
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == volume.meta.series_uid
    assert seg.StudyInstanceUID == volume.meta.study_uid and seg.FrameOfReferenceUID == FRAME_OF_REFERENCE
    assert seg.SeriesInstanceUID != volume.meta.series_uid and seg.Modality == "SEG"
    assert seg.SeriesNumber == (volume.meta.series_number or 0) + SEG_SERIES_NUMBER_OFFSET
    assert seg.SeriesDescription == "cardioseg" and seg.SoftwareVersions == "9.9"
    assert seg.SegmentationType == "BINARY"
    # the temporal dimension: phase 0 -> 1, phase 2 -> 2, in each frame and its dimension index
    assert seg.DimensionOrganizationType == "3D_TEMPORAL"
    pointers = [int(d.DimensionIndexPointer) for d in seg.DimensionIndexSequence]
    assert pointers == [0x0062000B, 0x00209128, 0x00200032]
    for item in seg.PerFrameFunctionalGroupsSequence:
        content = item.FrameContentSequence[0]
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        temporal = {0: 1, 2: 2}[expected[uid][1]]
        assert content.TemporalPositionIndex == temporal and content.DimensionIndexValues[1] == temporal
        assert content.DimensionIndexValues[0] == item.SegmentIdentificationSequence[0].ReferencedSegmentNumber


def test_segments_labels_codes_and_algorithm(cine: tuple[Volume, Any], tmp_path: Path) -> None:
    from pydicom.sr.codedict import codes

    volume, phantom = cine
    path = write_dicom_seg(volume, phantom.labels, [0], ACDC, tmp_path / "s_seg.dcm")
    seg = pydicom.dcmread(path)
    got = [
        (
            int(s.SegmentNumber),
            s.SegmentLabel,
            (s.SegmentedPropertyCategoryCodeSequence[0].CodingSchemeDesignator,
             s.SegmentedPropertyCategoryCodeSequence[0].CodeValue),
            (s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator,
             s.SegmentedPropertyTypeCodeSequence[0].CodeValue),
            s.SegmentAlgorithmType,
            s.SegmentAlgorithmName,
        )
        for s in seg.SegmentSequence
    ]  # fmt: skip
    assert got == [
        (1, "RV cavity", ("SCT", "91723000"), ("SCT", "53085002"), "AUTOMATIC", "cardioseg"),
        (2, "LV myocardium", ("SCT", "85756007"), ("SCT", "49848007"), "AUTOMATIC", "cardioseg"),
        (3, "LV cavity", ("SCT", "91723000"), ("SCT", "87878005"), "AUTOMATIC", "cardioseg"),
    ]
    # the codes are the ones pydicom's dictionary knows, meanings included
    known = [
        (codes.SCT.AnatomicalStructure, codes.SCT.RightVentricle),
        (codes.SCT.Tissue, codes.SCT.LeftVentricleMyocardium),
        (codes.SCT.AnatomicalStructure, codes.SCT.LeftVentricle),
    ]
    for spec, (category, kind) in zip(SEGMENTS, known):
        assert spec.category == (category.scheme_designator, category.value, category.meaning)
        assert spec.type == (kind.scheme_designator, kind.value, kind.meaning)
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "cardioseg" and algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    assert "DimensionOrganizationType" not in seg or seg.DimensionOrganizationType != "3D_TEMPORAL"  # one phase


def test_other_label_map_keeps_the_segments(cine: tuple[Volume, Any], tmp_path: Path) -> None:
    """Segment numbers and codes do not depend on the mask's label values (M&Ms: rv=3, lv=1)."""
    volume, phantom = cine
    acdc = phantom.labels
    mnms = np.select([acdc == 1, acdc == 2, acdc == 3], [MNMS.rv, MNMS.myo, MNMS.lv], 0).astype(np.uint8)
    path = write_dicom_seg(volume, mnms, [0, 2], MNMS, tmp_path / "s_seg.dcm")
    assert np.array_equal(read_dicom_seg(path, volume, [0, 2], ACDC), acdc[..., [0, 2]])
    assert np.array_equal(read_dicom_seg(path, volume, [0, 2], MNMS), mnms[..., [0, 2]])


# ---------------------------------------------------------------------------- empty structures


def test_empty_structures_are_written_as_empty_frames(cine: tuple[Volume, Any], tmp_path: Path) -> None:
    volume, phantom = cine
    mask = phantom.labels.copy()
    mask[mask == ACDC.rv] = 0  # no RV in any frame
    path = write_dicom_seg(volume, mask, [0, 2], ACDC, tmp_path / "no_rv.dcm")
    assert np.array_equal(read_dicom_seg(path, volume, [0, 2], ACDC), mask[..., [0, 2]])
    frames = seg_frames(path)
    assert sorted({n for n, _, _ in frames}) == [1, 2, 3] and len(frames) == 24
    assert not any(frame.any() for n, _, frame in frames if n == 1)
    assert len(pydicom.dcmread(path).SegmentSequence) == 3

    empty = write_dicom_seg(volume, np.zeros_like(mask), [3], ACDC, tmp_path / "empty.dcm")
    assert not read_dicom_seg(empty, volume, [3], ACDC).any()
    assert len(seg_frames(empty)) == 12


def test_single_phase_3d_series(tmp_path: Path) -> None:
    phantom = make_phantom(PhantomSpec(shape=(24, 20, 3), spacing_mm=(6.0, 6.0, 10.0), n_frames=1))
    write_series(tmp_path / "dcm", phantom.image[..., 0], extra_tags={"0020|0052": FRAME_OF_REFERENCE})
    volume = read_volume(tmp_path / "dcm")
    assert not volume.is_cine
    mask = phantom.labels[..., 0]
    path = write_dicom_seg(volume, mask, [0], ACDC, tmp_path / "out" / "s_seg.dcm")
    back = read_dicom_seg(path, volume, [0], ACDC)
    assert back.shape == (24, 20, 3, 1) and np.array_equal(back[..., 0], mask)
    assert {uid for _, uid, _ in seg_frames(path)} == set(sop_uids(volume, [0]))


# ---------------------------------------------------------------------------- refusals


def test_non_dicom_volume_is_refused(tmp_path: Path) -> None:
    data = np.zeros((8, 6, 2), dtype=np.int16)
    for volume in (
        Volume(data=data, affine=np.eye(4), path=tmp_path / "x.nii.gz", meta=VolumeMeta(source="nifti")),
        Volume(data=data, affine=np.eye(4), meta=VolumeMeta(source="dicom")),  # no source_files
    ):
        with pytest.raises(ConfigError, match="needs DICOM input") as info:
            write_dicom_seg(volume, np.zeros(data.shape, np.uint8), [0], ACDC, tmp_path / "s.dcm")
        assert "\n" not in str(info.value)
        with pytest.raises(ConfigError, match="needs DICOM input"):
            read_dicom_seg(tmp_path / "s.dcm", volume, [0], ACDC)
    assert not any(tmp_path.iterdir())


def test_bad_frames_and_masks_are_refused(cine: tuple[Volume, Any], tmp_path: Path) -> None:
    volume, phantom = cine
    out = tmp_path / "s.dcm"
    for frames, message in (([], "at least one frame"), ([0, 4], "frame 4 is outside the cine's frames 0..3"),
                            ([1, 1], "twice")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            write_dicom_seg(volume, phantom.labels, frames, ACDC, out)
    with pytest.raises(ConfigError, match="mask shape"):
        write_dicom_seg(volume, phantom.labels[..., :2], [0], ACDC, out)
    bad = phantom.labels.copy()
    bad[0, 0, 0, 0] = 7
    with pytest.raises(ConfigError, match="label values 7 that label map 'acdc'"):
        write_dicom_seg(volume, bad, [0], ACDC, out)
    assert not out.exists() and not any(tmp_path.iterdir())


def test_reading_a_file_that_is_not_a_seg_is_refused(cine: tuple[Volume, Any], tmp_path: Path) -> None:
    volume, _ = cine
    files = volume.meta.source_files
    assert files is not None
    with pytest.raises(UnreadableInputError, match="is not a readable DICOM Segmentation") as info:
        read_dicom_seg(files[0][0], volume, [0], ACDC)
    assert "\n" not in str(info.value)
    other = tmp_path / "other.dcm"
    other.write_bytes(b"not DICOM at all")
    with pytest.raises(UnreadableInputError, match="is not a readable DICOM Segmentation"):
        read_dicom_seg(other, volume, [0], ACDC)


def test_source_without_frame_of_reference_is_refused(tmp_path: Path) -> None:
    write_series(tmp_path / "dcm", np.zeros((6, 5, 2), dtype=np.int16))  # the test writer omits (0020,0052)
    volume = read_volume(tmp_path / "dcm")
    with pytest.raises(UnsupportedInputError, match=r"no FrameOfReferenceUID \(0020,0052\)") as info:
        write_dicom_seg(volume, np.zeros(volume.data.shape, np.uint8), [0], ACDC, tmp_path / "s.dcm")
    assert "\n" not in str(info.value) and not (tmp_path / "s.dcm").exists()


def test_missing_highdicom_gives_one_line(
    cine: tuple[Volume, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    volume, phantom = cine
    monkeypatch.setitem(sys.modules, "highdicom", None)  # import highdicom -> ImportError
    with pytest.raises(ConfigError) as info:
        require_highdicom()
    assert str(info.value) == INSTALL_HINT == "--dicom-seg needs highdicom: pip install 'cardioseg[dicom-seg]'"
    with pytest.raises(ConfigError, match="needs highdicom"):
        write_dicom_seg(volume, phantom.labels, [0], ACDC, tmp_path / "s.dcm")
    with pytest.raises(ConfigError, match="needs highdicom"):
        read_dicom_seg(tmp_path / "s.dcm", volume, [0], ACDC)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------- validation


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) not installed")
def test_dciodvfy_finds_no_errors(cine: tuple[Volume, Any], tmp_path: Path) -> None:
    volume, phantom = cine
    for frames in ([0, 2], [1]):
        path = write_dicom_seg(volume, phantom.labels, frames, ACDC, tmp_path / f"s{len(frames)}.dcm")
        run = subprocess.run(["dciodvfy", str(path)], check=False, capture_output=True, text=True, timeout=60)
        lines = (run.stdout + run.stderr).splitlines()
        assert "Segmentation" in lines
        assert not [line for line in lines if line.startswith("Error")], lines


# ---------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_sample_round_trip(tmp_path: Path) -> None:
    if not REAL_SAMPLE.is_dir():
        pytest.skip(f"{REAL_SAMPLE} absent")
    volume = read_volume(REAL_SAMPLE)
    nx, ny = volume.data.shape[:2]
    i, j = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    disc = np.zeros((nx, ny), np.uint8)
    r = np.hypot(i - nx / 2, j - ny / 2)
    disc[r < 30], disc[r < 20], disc[np.hypot(i - nx / 2 + 40, j - ny / 2) < 12] = ACDC.myo, ACDC.lv, ACDC.rv
    mask = np.broadcast_to(disc.reshape(nx, ny, *([1] * (volume.data.ndim - 2))), volume.data.shape).copy()
    frames = [0, volume.n_frames // 2] if volume.is_cine else [0]
    path = write_dicom_seg(volume, mask, frames, ACDC, tmp_path / "rvsc_patient09_seg.dcm")
    back = read_dicom_seg(path, volume, frames, ACDC)
    assert np.array_equal(back, (mask if volume.is_cine else mask[..., None])[..., frames])
    assert {uid for _, uid, _ in seg_frames(path)} == set(sop_uids(volume, frames))


def test_predict_dicom_seg_matches_the_nifti_mask(cine: tuple[Volume, Any], tmp_path: Path, tiny_weights_path: Path,
                                                  small_phantom: Any) -> None:  # fmt: skip
    """``predict --dicom-seg``: the SEG holds the ED and ES frames of the NIfTI mask, pixel for pixel;
    a NIfTI input in the same batch gets a warning, not a SEG; a rerun skips the finished study."""
    import json

    import nibabel as nib
    from conftest import save_nifti
    from typer.testing import CliRunner

    from cardioseg.cli import app

    volume, _ = cine
    series = Path(volume.path)  # type: ignore[arg-type]
    nifti = save_nifti(tmp_path / "frame.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    out = tmp_path / "out"
    args = ["predict", str(series), str(nifti), "-o", str(out), "-w", str(tiny_weights_path), "--device", "cpu",
            "--precision", "fp32", "--dicom-seg", "-q"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    name = series.name
    report = json.loads((out / f"{name}_report.json").read_text())
    frames = sorted({report["ed_frame"], report["es_frame"]})  # as written: each phase once, in time order
    mask = np.asarray(nib.load(str(out / f"{name}_seg.nii.gz")).dataobj)
    back = read_dicom_seg(out / f"{name}_seg.dcm", volume, frames, ACDC)
    assert np.array_equal(back, mask[..., frames])
    assert "frame: no DICOM-SEG written (--dicom-seg): the input is not one DICOM series" in result.stderr
    assert not (out / "frame_seg.dcm").exists()
    stamp = (out / f"{name}_seg.dcm").stat().st_mtime_ns
    (out / f"{name}_seg.dcm").unlink()  # a finished study has its SEG: without it, the study runs again
    assert CliRunner().invoke(app, args).exit_code == 0
    assert (out / f"{name}_seg.dcm").stat().st_mtime_ns >= stamp
    stamp = (out / f"{name}_seg.dcm").stat().st_mtime_ns
    assert CliRunner().invoke(app, args).exit_code == 0  # ... and with it, it is skipped
    assert (out / f"{name}_seg.dcm").stat().st_mtime_ns == stamp
