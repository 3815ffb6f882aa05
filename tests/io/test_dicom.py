"""Reading DICOM short-axis (cine) series: grouping, geometry, refusals, and the real RVSC fragment.

Synthetic series are written with SimpleITK by :func:`dicom_writer.write_dicom_series`.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from dicom_writer import COL_DIR, LPS_TO_RAS, ROW_DIR, SERIES_UID, coded_volume, write_dicom_series

from cardioseg.errors import InputFileNotFoundError, UnreadableInputError, UnsupportedInputError
from cardioseg.io import (
    SeriesInfo,
    VolumeMeta,
    dicom,
    dicom_headers,
    find_dicom_files,
    is_dicom_file,
    list_series,
    read_dicom_series,
    read_volume,
)

RVSC_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "dicom_sample" / "rvsc_patient09"


def _header_numbers(path: Path, tag: str) -> np.ndarray:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return np.array([float(v) for v in reader.GetMetaData(tag).strip().split("\\")])


def _world_ras(path: Path, i: float, j: float) -> np.ndarray:
    """RAS position of pixel (column i, row j) of one file, straight from its header (DICOM PS3.3 C.7.6.2.1.1)."""
    ipp = _header_numbers(path, "0020|0032")
    iop = _header_numbers(path, "0020|0037")
    spacing = _header_numbers(path, "0028|0030")  # (between rows, between columns)
    lps = ipp + i * spacing[1] * iop[:3] + j * spacing[0] * iop[3:]
    return lps * np.array([-1.0, -1.0, 1.0])


def _apply(affine: np.ndarray, ijk: Sequence[float]) -> np.ndarray:
    return (affine @ np.array([*ijk, 1.0]))[:3]


# ---------------------------------------------------------------------------- finding files


def test_find_dicom_files_skips_hidden_and_non_dicom(tmp_path):
    files = write_dicom_series(tmp_path / "series", coded_volume(nz=1, nt=2))
    some = next(iter(files.values()))
    (tmp_path / "series" / "nested").mkdir()
    shutil.copy(some, tmp_path / "series" / "nested" / "deep.dcm")
    shutil.copy(some, tmp_path / "series" / ".hidden.dcm")
    (tmp_path / "series" / ".git").mkdir()
    shutil.copy(some, tmp_path / "series" / ".git" / "x.dcm")
    shutil.copy(some, tmp_path / "series" / "DICOMDIR")
    (tmp_path / "series" / "notes.txt").write_text("contours\n")
    (tmp_path / "series" / "endo.mask").write_bytes(bytes(300))
    (tmp_path / "series" / "tiny").write_bytes(b"DICM")

    found = find_dicom_files(tmp_path / "series")
    assert found == sorted([*files.values(), tmp_path / "series" / "nested" / "deep.dcm"])
    assert is_dicom_file(some)
    assert not is_dicom_file(tmp_path / "series" / "endo.mask")
    assert not is_dicom_file(tmp_path / "series" / "tiny")
    assert not is_dicom_file(tmp_path / "absent.dcm")
    with pytest.raises(InputFileNotFoundError):
        find_dicom_files(tmp_path / "absent")


# ---------------------------------------------------------------------------- layout and geometry


def test_oblique_cine_voxels_and_affine(tmp_path):
    vol = coded_volume()  # X=7 columns, Y=5 rows, Z=4 slices, T=3 phases
    files = write_dicom_series(tmp_path, vol, trigger_times_ms=[0, 33.5, 67])

    v = read_dicom_series(tmp_path)
    assert v.data.shape == (7, 5, 4, 3) and v.data.dtype == np.int16
    assert np.array_equal(v.data, vol)  # every voxel at its own (i, j, k, t)
    assert v.is_cine and v.n_frames == 3
    assert v.path == tmp_path and v.header is None and v.name == tmp_path.name

    # the affine maps voxel (i, j, k) to the world point of the headers of slice k
    for i, j, k in [(0, 0, 0), (6, 0, 0), (0, 4, 0), (6, 4, 3), (3, 2, 2)]:
        assert np.allclose(_apply(v.affine, (i, j, k)), _world_ras(files[(k, 0)], i, j), atol=1e-5)
    assert np.allclose(v.spacing_mm, (0.6, 0.8, 8.0), atol=1e-6)
    assert np.isclose(v.voxel_volume_ml, 0.6 * 0.8 * 8.0 / 1000)
    # RAS columns = LPS directions with x and y negated; the third one is row x col
    lps = LPS_TO_RAS @ v.affine
    assert np.allclose(lps[:3, 0] / 0.6, ROW_DIR, atol=1e-8)
    assert np.allclose(lps[:3, 1] / 0.8, COL_DIR, atol=1e-8)
    assert np.allclose(lps[:3, 2] / 8.0, np.cross(ROW_DIR, COL_DIR), atol=1e-8)

    m = v.meta
    origin_along_normal = np.array([-40.0, 25.0, 60.0]) @ np.cross(ROW_DIR, COL_DIR)
    assert m.source == "dicom" and m.series_uid == SERIES_UID and m.series_description == "SAX cine"
    assert np.allclose(m.slice_positions_mm, origin_along_normal + np.array([0, 8, 16, 24]), atol=1e-6)
    assert m.trigger_times_ms == (0, 33.5, 67)
    assert m.slice_thickness_mm == 7.0 and m.slice_spacing_mm == pytest.approx(8.0)
    assert m.warnings == () and m.dropped_slice_positions_mm == ()
    assert isinstance(m, VolumeMeta) and m.image_orientation_patient == pytest.approx([*ROW_DIR, *COL_DIR], abs=1e-6)
    assert m.n_files == m.n_files_used == 12


def test_slices_are_sorted_ascending_along_the_normal(tmp_path):
    vol = coded_volume(nz=3, nt=2)
    files = write_dicom_series(tmp_path, vol, slice_offsets_mm=[16, 8, 0])  # written top-down
    v = read_dicom_series(tmp_path)
    assert np.array_equal(v.data, vol[:, :, ::-1])
    assert np.all(np.diff(v.meta.slice_positions_mm) > 0)
    assert np.allclose(_apply(v.affine, (2, 3, 0)), _world_ras(files[(2, 0)], 2, 3), atol=1e-5)
    assert np.allclose(_apply(v.affine, (2, 3, 2)), _world_ras(files[(0, 0)], 2, 3), atol=1e-5)


def test_single_phase_matches_simpleitk_series_reader_and_nifti(tmp_path):
    vol = coded_volume(nx=9, ny=6, nz=5, nt=1)[..., 0]
    write_dicom_series(tmp_path / "dcm", vol, pixel_spacing=(1.25, 0.9), slice_gap_mm=6.5)
    v = read_dicom_series(tmp_path / "dcm")
    assert v.data.ndim == 3 and not v.is_cine
    assert np.array_equal(v.data, vol)

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "dcm")))
    ref = reader.Execute()
    ref_lps = np.eye(4)
    ref_lps[:3, :3] = np.array(ref.GetDirection()).reshape(3, 3) * np.array(ref.GetSpacing())
    ref_lps[:3, 3] = ref.GetOrigin()
    assert np.allclose(v.affine, LPS_TO_RAS @ ref_lps, atol=1e-6)
    assert np.array_equal(v.data, sitk.GetArrayFromImage(ref).transpose(2, 1, 0))

    # the same series through SimpleITK's NIfTI writer, read with nibabel: same array and affine
    sitk.WriteImage(ref, str(tmp_path / "ref.nii.gz"))
    img = nib.load(str(tmp_path / "ref.nii.gz"))
    assert np.array_equal(np.asarray(img.dataobj), v.data)
    assert np.allclose(img.affine, v.affine, atol=1e-4)
    assert nib.aff2axcodes(img.affine) == nib.aff2axcodes(v.affine)


def test_axial_orientation_gives_nibabel_lps_axis_codes(tmp_path):
    """Unrotated axial DICOM: columns run to patient left, rows to posterior, slices up (L, P, S)."""
    write_dicom_series(tmp_path, coded_volume(nz=2, nt=1), row_dir=(1, 0, 0), col_dir=(0, 1, 0), origin=(0, 0, 0))
    v = read_dicom_series(tmp_path)
    assert nib.aff2axcodes(v.affine) == ("L", "P", "S")
    assert np.allclose(v.affine, np.diag([-0.6, -0.8, 8.0, 1.0]))


def test_uneven_gaps_use_the_median_and_keep_positions(tmp_path):
    vol = coded_volume(nz=5, nt=2)
    write_dicom_series(tmp_path, vol, slice_offsets_mm=[0, 8, 16, 24, 34], origin=(0, 0, 0))
    v = read_dicom_series(tmp_path)
    assert np.array_equal(v.data, vol)
    assert v.spacing_mm[2] == pytest.approx(8.0)
    assert np.allclose(v.meta.slice_positions_mm, [0, 8, 16, 24, 34], atol=1e-6)
    assert v.meta.warnings == ()  # uneven gaps are reported by cardioseg.qc from the positions


def test_rescale_slope_and_intercept_are_applied(tmp_path):
    vol = 2 * coded_volume(nz=2, nt=2) - 100  # int16: GDCM turns int32 + rescale into Enhanced MR
    write_dicom_series(tmp_path, vol, extra_tags={"0028|1053": "2", "0028|1052": "-100"})
    v = read_dicom_series(tmp_path)
    assert np.issubdtype(v.data.dtype, np.integer)
    assert np.array_equal(v.data, vol)


def test_phases_ordered_by_instance_number_without_trigger_time(tmp_path):
    vol = coded_volume(nz=2, nt=4)
    write_dicom_series(tmp_path, vol, write_trigger_time=False, shuffle_seed=None)
    v = read_dicom_series(tmp_path)
    assert np.array_equal(v.data, vol)
    assert v.meta.trigger_times_ms == (None,) * 4
    assert any("InstanceNumber" in w for w in v.meta.warnings)


@pytest.mark.parametrize(
    ("has_spacing_tag", "expected", "source"), [(True, 9.5, "SpacingBetweenSlices"), (False, 7.0, "SliceThickness")]
)
def test_single_slice_spacing_falls_back_to_headers(tmp_path, monkeypatch, has_spacing_tag, expected, source):
    vol = coded_volume(nz=1, nt=3)
    write_dicom_series(tmp_path, vol, spacing_between_slices_mm=9.5)
    if not has_spacing_tag:  # ITK always writes SpacingBetweenSlices: make the reader look for an absent tag
        monkeypatch.setattr(dicom_headers, "TAG_SPACING_BETWEEN_SLICES", "0018|9999")
    v = read_dicom_series(tmp_path)
    assert v.data.shape == (7, 5, 1, 3)
    assert v.spacing_mm[2] == pytest.approx(expected)
    assert len(v.meta.warnings) == 1 and source in v.meta.warnings[0]


# ---------------------------------------------------------------------------- incomplete, duplicates, mixtures


def test_incomplete_slice_positions_are_dropped_with_a_warning(tmp_path):
    vol = coded_volume(nz=4, nt=3)
    write_dicom_series(tmp_path, vol, origin=(0, 0, 0), skip={(3, 2), (1, 0)})
    v = read_dicom_series(tmp_path)
    assert v.data.shape == (7, 5, 2, 3)
    assert np.array_equal(v.data, vol[:, :, [0, 2]])
    assert np.allclose(v.meta.slice_positions_mm, [0, 16], atol=1e-6)
    assert np.allclose(v.meta.dropped_slice_positions_mm, [8, 24], atol=1e-6)
    assert v.spacing_mm[2] == pytest.approx(16.0)  # median gap of the kept slices
    assert len(v.meta.warnings) == 1
    assert "Dropped 2 of 4 slice positions" in v.meta.warnings[0] and "8.00, 24.00" in v.meta.warnings[0]
    assert v.meta.n_files == 10 and v.meta.n_files_used == 6


def test_identical_copy_is_ignored_but_a_different_duplicate_is_refused(tmp_path):
    vol = coded_volume(nz=2, nt=2)
    files = write_dicom_series(tmp_path, vol)
    shutil.copy(files[(1, 1)], tmp_path / "copy.dcm")
    v = read_dicom_series(tmp_path)
    assert np.array_equal(v.data, vol)
    assert any("identical copy" in w for w in v.meta.warnings)

    write_dicom_series(tmp_path, vol[:, :, :1, :1] + 1, prefix="REPEAT")  # same slice and phase, other pixels
    with pytest.raises(UnsupportedInputError, match="duplicate") as err:
        read_dicom_series(tmp_path)
    assert "REPEAT0000.dcm" in str(err.value) and "trigger time 0 ms" in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"row_dir": (1.0, 0.0, 0.0), "col_dir": (0.0, 1.0, 0.0)}, "different orientations"),
        ({"pixel_spacing": (0.8, 0.7)}, "different pixel spacings"),
        ({"volume": coded_volume(nx=6, nz=1, nt=1)}, "different sizes"),
    ],
)
def test_images_that_are_not_one_stack_are_refused(tmp_path, kwargs, match):
    write_dicom_series(tmp_path, coded_volume(nz=2, nt=2))
    write_dicom_series(
        tmp_path, kwargs.pop("volume", coded_volume(nz=1, nt=1)), prefix="ODD", origin=(0, 0, 90), **kwargs
    )
    with pytest.raises(UnsupportedInputError, match=match) as err:
        read_dicom_series(tmp_path)
    assert "\n" not in str(err.value)


def test_slices_shifted_in_plane_give_a_warning(tmp_path):
    vol = coded_volume(nz=2, nt=2)
    origin = np.array([-40.0, 25.0, 60.0])
    write_dicom_series(tmp_path, vol[:, :, :1], origin=origin)
    write_dicom_series(tmp_path, vol[:, :, 1:], origin=origin + 2.0 * ROW_DIR, slice_offsets_mm=[8.0], prefix="B")
    v = read_dicom_series(tmp_path)
    assert np.array_equal(v.data, vol)
    assert len(v.meta.warnings) == 1 and "shifted in-plane by up to 2.00 mm" in v.meta.warnings[0]


def test_enhanced_multiframe_dicom_is_refused(tmp_path):
    write_dicom_series(tmp_path, coded_volume(nz=1, nt=1), extra_tags={"0008|0016": "1.2.840.10008.5.1.4.1.1.4.1"})
    with pytest.raises(UnsupportedInputError, match="Enhanced MR"):
        read_dicom_series(tmp_path)


def test_two_series_need_a_series_uid(tmp_path):
    cine, other = coded_volume(nz=3, nt=2), coded_volume(nz=2, nt=1) + 7
    write_dicom_series(tmp_path, cine, series_uid="1.2.3.10", description="SAX cine", series_number=10)
    files = write_dicom_series(
        tmp_path / "sub", other, series_uid="1.2.3.20", description="localizer", series_number=2, prefix="LOC"
    )

    with pytest.raises(UnsupportedInputError) as err:
        read_dicom_series(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "--series-uid" in msg and "2 DICOM series" in msg
    assert '1.2.3.10 "SAX cine" (6 files)' in msg and '1.2.3.20 "localizer" (2 files)' in msg

    assert np.array_equal(read_dicom_series(tmp_path, series_uid="1.2.3.10").data, cine)
    assert np.array_equal(read_dicom_series(tmp_path, series_uid="1.2.3.20").data, other[..., 0])
    # one file stands for its series
    assert read_dicom_series(files[(0, 0)]).meta.series_uid == "1.2.3.20"
    with pytest.raises(
        UnsupportedInputError, match=r"No DICOM series with UID 9\.9 in .*it holds: 1\.2\.3\.20 .*1\.2\.3\.10"
    ):
        read_dicom_series(tmp_path, series_uid="9.9")

    infos = list_series(tmp_path)
    assert [i.uid for i in infos] == ["1.2.3.20", "1.2.3.10"]  # by SeriesNumber
    assert infos[1] == SeriesInfo(
        uid="1.2.3.10",
        description="SAX cine",
        n_files=6,
        series_number=10,
        modality="MR",
        rows=5,
        columns=7,
        n_slice_positions=3,
        n_phases=2,
        files=infos[1].files,
    )
    assert len(infos[1].files) == 6 and infos[0].n_slice_positions == 2 and infos[0].n_phases == 1


# ---------------------------------------------------------------------------- refusals


def test_missing_empty_and_non_dicom_folders(tmp_path):
    with pytest.raises(InputFileNotFoundError):
        read_dicom_series(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnsupportedInputError, match="No DICOM files"):
        read_dicom_series(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "contour.txt").write_text("1 2\n")
    (tmp_path / "other" / "endo.mask").write_bytes(bytes(1000))
    with pytest.raises(UnsupportedInputError, match="No DICOM files"):
        read_dicom_series(tmp_path / "other")
    with pytest.raises(UnsupportedInputError, match="not a DICOM file"):
        read_dicom_series(tmp_path / "other" / "endo.mask")


def test_max_voxels_refuses_before_reading_pixels(tmp_path, monkeypatch):
    vol = coded_volume()
    write_dicom_series(tmp_path, vol)

    def no_pixels(header):
        raise AssertionError("pixels read")

    with monkeypatch.context() as m:
        m.setattr(dicom, "_read_pixels", no_pixels)
        with pytest.raises(UnsupportedInputError, match=r"7x5x4x3 = 420 voxels, more than the limit of 419"):
            read_dicom_series(tmp_path, max_voxels=419)
    assert np.array_equal(read_dicom_series(tmp_path, max_voxels=420).data, vol)


def test_truncated_file_is_unreadable_and_named(tmp_path):
    files = write_dicom_series(tmp_path, coded_volume(nz=2, nt=2))
    victim = files[(1, 0)]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(UnreadableInputError) as err:
        read_dicom_series(tmp_path)
    assert victim.name in str(err.value) and "\n" not in str(err.value)


def test_malformed_geometry_tag_is_unreadable(tmp_path):
    write_dicom_series(tmp_path, coded_volume(nz=1, nt=1), extra_tags={"0018|1060": "abc"})
    with pytest.raises(UnreadableInputError, match=r"TriggerTime \(0018\|1060\) is not 1 numbers: 'abc'"):
        read_dicom_series(tmp_path)


# ---------------------------------------------------------------------------- the real RVSC fragment


@pytest.mark.realdata
def test_rvsc_fragment_geometry_matches_headers():
    if not RVSC_DIR.is_dir():
        pytest.skip(f"{RVSC_DIR} absent")
    files = find_dicom_files(RVSC_DIR)  # the .dcm files are in P09dicom/, beside contours and masks
    assert len(files) == 24 and all(f.parent.name == "P09dicom" for f in files)

    v = read_dicom_series(RVSC_DIR)
    # 20 phases at SliceLocation 22.45 (P09-0000..0019), 2 at 30.85 (P09-0020/21), 2 at 39.25 (P09-0022/23):
    # the one complete position is kept
    assert v.data.shape == (216, 256, 1, 20) and v.data.dtype == np.uint16
    first = RVSC_DIR / "P09dicom" / "P09-0000.dcm"
    for t in (0, 19):
        pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(RVSC_DIR / "P09dicom" / f"P09-{t:04d}.dcm")))[0]
        assert np.array_equal(v.data[:, :, 0, t], pixels.T)
    assert v.meta.trigger_times_ms == pytest.approx([48.75 * t for t in range(20)])

    iop = _header_numbers(first, "0020|0037")
    normal = np.cross(iop[:3], iop[3:])
    ipps = {n: _header_numbers(RVSC_DIR / "P09dicom" / f"P09-{n:04d}.dcm", "0020|0032") for n in (0, 20, 22)}
    along = {n: float(p @ normal) for n, p in ipps.items()}
    # the positions are 8.4 mm apart (SliceThickness says 7 mm); row x col points against SliceLocation
    assert along[0] - along[20] == pytest.approx(8.4, abs=1e-3) and along[20] - along[22] == pytest.approx(
        8.4, abs=1e-3
    )
    assert v.meta.slice_positions_mm == pytest.approx([along[0]], abs=1e-6)
    assert v.meta.dropped_slice_positions_mm == pytest.approx([along[22], along[20]], abs=1e-6)
    assert v.meta.slice_thickness_mm == 7.0
    assert v.spacing_mm == pytest.approx((0.70140280561122, 0.70140280561122, 8.4), abs=1e-5)
    assert len(v.meta.warnings) == 2
    assert v.meta.warnings[0].startswith("Dropped 2 of 3 slice positions")
    assert "Only one complete slice position" in v.meta.warnings[1]

    # affine: directions = IOP vectors and their normal in RAS, origin = IPP of P09-0000
    lps = LPS_TO_RAS @ v.affine
    assert np.allclose(lps[:3, 0] / np.linalg.norm(lps[:3, 0]), iop[:3], atol=1e-9)
    assert np.allclose(lps[:3, 1] / np.linalg.norm(lps[:3, 1]), iop[3:], atol=1e-9)
    assert np.allclose(lps[:3, 2] / np.linalg.norm(lps[:3, 2]), normal, atol=1e-9)
    for i, j in [(0, 0), (215, 0), (0, 255), (100, 200)]:
        assert np.allclose(_apply(v.affine, (i, j, 0)), _world_ras(first, i, j), atol=1e-6)

    # nibabel's DICOM wrapper (data indexed [row, column], LPS) has the same in-plane geometry, transposed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nibabel.nicom.dicomwrappers import Wrapper
    spacing = _header_numbers(first, "0028|0030")
    wrapper = Wrapper(
        {
            "ImageOrientationPatient": list(iop),
            "ImagePositionPatient": list(ipps[0]),
            "PixelSpacing": list(spacing),
            "SliceThickness": 7.0,
        }
    )
    assert np.allclose(lps[:3, [1, 0, 3]], wrapper.affine[:3, [0, 1, 3]], atol=1e-9)

    info = list_series(RVSC_DIR)
    assert len(info) == 1 and info[0].n_files == 24 and info[0].n_slice_positions == 3 and info[0].n_phases == 20
    assert (info[0].rows, info[0].columns) == (256, 216) and info[0].description == "PROT VD FEVD JC2"


def test_unexpected_decoder_errors_become_one_unreadable_line(tmp_path, monkeypatch):
    """Whatever a damaged series makes the decoders raise reaches the user as one line naming the input."""
    write_dicom_series(tmp_path / "s", coded_volume(nz=2, nt=1))

    def broken(header):
        raise IndexError("index 7 is out of bounds\nfor axis 0")

    monkeypatch.setattr(dicom, "_read_pixels", broken)
    with pytest.raises(UnreadableInputError) as info:
        read_volume(tmp_path / "s")
    assert str(info.value) == (
        f'DICOM input "{tmp_path / "s"}" could not be read (IndexError: index 7 is out of bounds for axis 0); '
        "is it complete and not corrupted?"
    )
