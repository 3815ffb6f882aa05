"""Reading NIfTI frames/cines and ACDC folders, typed errors, atomic mask writing."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cardioseg.errors import (
    CardiosegError,
    InputFileNotFoundError,
    UnreadableInputError,
    UnsupportedInputError,
)
from cardioseg.io import (
    PatientInfo,
    Volume,
    atomic_path,
    is_patient_folder,
    read_info_cfg,
    read_patient_folder,
    read_volume,
    strip_image_suffix,
    study_name,
    write_mask,
    write_text_atomic,
)

from conftest import save_nifti

OBLIQUE = np.array(
    [
        [-1.2, 0.3, 0.0, 101.5],
        [0.2, -1.3, 1.5, -80.25],
        [0.0, 0.4, 9.8, 12.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def _rng_image(shape, seed=0, dtype=np.int16):
    return np.random.default_rng(seed).integers(0, 2000, size=shape).astype(dtype)


# ---------------------------------------------------------------------------- reading


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_read_3d_frame(tmp_path, suffix):
    data = _rng_image((7, 6, 5))
    p = save_nifti(tmp_path / f"frame{suffix}", data, OBLIQUE)
    v = read_volume(p)
    assert isinstance(v, Volume)
    assert np.array_equal(v.data, data)
    assert np.allclose(v.affine, OBLIQUE)
    assert not v.is_cine and v.n_frames == 1
    assert np.array_equal(v.frame(0), data)
    with pytest.raises(IndexError):
        v.frame(1)
    assert v.name == "frame"
    assert v.spacing_mm == pytest.approx(tuple(np.linalg.norm(OBLIQUE[:3, :3], axis=0)))
    assert v.voxel_volume_ml == pytest.approx(abs(np.linalg.det(OBLIQUE[:3, :3])) / 1000)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_read_4d_cine(tmp_path, suffix):
    data = _rng_image((7, 6, 5, 4), seed=1)
    p = save_nifti(tmp_path / f"cine{suffix}", data, np.diag([1.5, 1.5, 8.0, 1.0]))
    v = read_volume(str(p))  # str paths are fine too
    assert v.is_cine and v.n_frames == 4
    assert v.data.shape == (7, 6, 5, 4)
    assert np.array_equal(v.frame(2), data[..., 2])
    assert v.spacing_mm == pytest.approx((1.5, 1.5, 8.0))
    assert v.voxel_volume_ml == pytest.approx(0.018)
    assert v.name == "cine"


def test_read_float_data_and_singleton_time_axis(tmp_path):
    data = np.random.default_rng(2).random((6, 5, 4, 1)).astype(np.float32)
    v = read_volume(save_nifti(tmp_path / "one.nii.gz", data))
    assert v.data.shape == (6, 5, 4) and not v.is_cine
    assert np.allclose(v.data, data[..., 0])


def test_uppercase_suffix_is_accepted(tmp_path):
    data = _rng_image((4, 4, 3))
    p = save_nifti(tmp_path / "x.nii.gz", data)
    q = p.rename(tmp_path / "UPPER.NII.GZ")
    assert np.array_equal(read_volume(q).data, data)


def test_missing_file():
    with pytest.raises(InputFileNotFoundError, match="not found"):
        read_volume("/nonexistent/dir/patient.nii.gz")


def test_errors_are_cardioseg_errors_and_distinct():
    kinds = [InputFileNotFoundError, UnreadableInputError, UnsupportedInputError]
    assert all(issubclass(k, CardiosegError) for k in kinds)
    for a in kinds:
        for b in kinds:
            assert (a is b) == issubclass(a, b)


def test_truncated_gzip_is_unreadable(tmp_path):
    p = save_nifti(tmp_path / "full.nii.gz", _rng_image((16, 16, 8)))
    raw = p.read_bytes()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UnreadableInputError):
        read_volume(bad)


def test_garbage_gzip_is_unreadable(tmp_path):
    bad = tmp_path / "garbage.nii.gz"
    bad.write_bytes(b"this is not gzip at all" * 20)
    with pytest.raises(UnreadableInputError):
        read_volume(bad)


def test_gzip_of_garbage_is_unreadable(tmp_path):
    bad = tmp_path / "notnifti.nii.gz"
    bad.write_bytes(gzip.compress(b"\x00\x01 not a nifti header" * 50))
    with pytest.raises(UnreadableInputError):
        read_volume(bad)


def test_truncated_uncompressed_nii_is_unreadable(tmp_path):
    p = save_nifti(tmp_path / "full.nii", _rng_image((16, 16, 8)))
    bad = tmp_path / "short.nii"
    bad.write_bytes(p.read_bytes()[:400])  # header intact, data cut off
    with pytest.raises(UnreadableInputError):
        read_volume(bad)


@pytest.mark.parametrize("name", ["image.png", "notes.txt", "scan.dcm"])
def test_unsupported_suffix(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b"\x89PNG\r\n\x1a\n" if name.endswith(".png") else b"hello")
    with pytest.raises(UnsupportedInputError):
        read_volume(p)


@pytest.mark.parametrize("shape", [(8, 8), (4, 4, 3, 2, 2)])
def test_2d_and_5d_images_are_unsupported(tmp_path, shape):
    p = save_nifti(tmp_path / "odd.nii.gz", np.zeros(shape, np.int16))
    with pytest.raises(UnsupportedInputError):
        read_volume(p)


def test_folder_without_info_is_unsupported(tmp_path):
    with pytest.raises(UnsupportedInputError):
        read_volume(tmp_path)


# ---------------------------------------------------------------------------- ACDC folders

INFO = "ED: 1\nES: 12\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n"


def test_read_info_cfg(tmp_path):
    p = tmp_path / "Info.cfg"
    p.write_text(INFO)
    assert read_info_cfg(p) == PatientInfo(ed=1, es=12, group="DCM", height_cm=184.0, weight_kg=95.0)


def test_read_info_cfg_partial_and_bad(tmp_path):
    p = tmp_path / "Info.cfg"
    p.write_text("ED: 3\nES: 9\n")
    assert read_info_cfg(p) == PatientInfo(ed=3, es=9)
    p.write_text("ED: one\nES: 9\n")
    with pytest.raises(UnreadableInputError):
        read_info_cfg(p)
    with pytest.raises(InputFileNotFoundError):
        read_info_cfg(tmp_path / "missing.cfg")


def _patient_folder(root: Path, name="patient042", frames=(1, 12), cine=False) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "Info.cfg").write_text(INFO)
    for f in frames:
        save_nifti(folder / f"{name}_frame{f:02d}.nii.gz", _rng_image((6, 6, 3), seed=f))
        save_nifti(folder / f"{name}_frame{f:02d}_gt.nii.gz", np.zeros((6, 6, 3), np.uint8))
    if cine:
        save_nifti(folder / f"{name}_4d.nii.gz", _rng_image((6, 6, 3, 15)))
    return folder


def test_read_patient_folder_with_frames(tmp_path):
    folder = _patient_folder(tmp_path)
    assert is_patient_folder(folder) and not is_patient_folder(folder / "Info.cfg")
    pf = read_patient_folder(folder)
    assert pf.name == "patient042"
    assert pf.ed_path == folder / "patient042_frame01.nii.gz"
    assert pf.es_path == folder / "patient042_frame12.nii.gz"
    assert pf.cine_path is None
    assert pf.info.height_cm == 184.0 and pf.info.weight_kg == 95.0 and pf.info.group == "DCM"


def test_read_patient_folder_with_cine_only(tmp_path):
    folder = _patient_folder(tmp_path, frames=(), cine=True)
    pf = read_patient_folder(folder)
    assert pf.cine_path == folder / "patient042_4d.nii.gz"
    assert pf.ed_path is None and pf.es_path is None


def test_read_patient_folder_missing_frames(tmp_path):
    folder = _patient_folder(tmp_path, frames=(1,))
    with pytest.raises(UnsupportedInputError, match="frame"):
        read_patient_folder(folder)
    with pytest.raises(InputFileNotFoundError):
        read_patient_folder(tmp_path / "nope")


# ---------------------------------------------------------------------------- writing


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("codes", [(1, 1), (2, 0), (0, 2), (1, 4)])
def test_write_mask_keeps_geometry_and_codes(tmp_path, codes):
    qform_code, sform_code = codes
    data = _rng_image((9, 8, 5, 3), seed=4)
    img = nib.Nifti1Image(data, OBLIQUE)
    img.set_qform(OBLIQUE, code=qform_code)
    img.set_sform(OBLIQUE, code=sform_code)
    src = tmp_path / "in" / "cine.nii.gz"
    src.parent.mkdir()
    nib.save(img, str(src))
    vol = read_volume(src)

    mask = np.random.default_rng(5).integers(0, 4, size=data.shape).astype(np.int64)
    out_dir = tmp_path / "out"
    out = out_dir / "cine_seg.nii.gz"
    write_mask(mask, vol, out)
    assert _listing(out_dir) == ["cine_seg.nii.gz"], "no temporary files left behind"

    back = nib.load(str(out))
    assert back.shape == data.shape
    assert np.allclose(back.affine, vol.affine)
    assert int(back.header["qform_code"]) == qform_code
    assert int(back.header["sform_code"]) == sform_code
    if qform_code:
        assert np.allclose(back.get_qform(), img.get_qform(), atol=1e-5)
    if sform_code:
        assert np.allclose(back.get_sform(), OBLIQUE, atol=1e-5)
    assert back.get_data_dtype() == np.uint8
    stored = np.asarray(back.dataobj)
    assert stored.dtype == np.uint8
    assert np.array_equal(stored, mask.astype(np.uint8))


def test_write_mask_without_header(tmp_path):
    vol = Volume(data=np.zeros((4, 5, 3)), affine=np.diag([2.0, 2.0, 6.0, 1.0]))
    mask = np.ones((4, 5, 3), np.uint8)
    write_mask(mask, vol, tmp_path / "m.nii.gz")
    back = nib.load(str(tmp_path / "m.nii.gz"))
    assert np.allclose(back.affine, vol.affine) and np.array_equal(np.asarray(back.dataobj), mask)


def test_write_mask_rejects_a_wrong_shape_and_writes_nothing(tmp_path):
    vol = Volume(data=np.zeros((4, 5, 3)), affine=np.eye(4))
    with pytest.raises(ValueError):
        write_mask(np.zeros((4, 5, 2), np.uint8), vol, tmp_path / "m.nii.gz")
    assert not (tmp_path / "m.nii.gz").exists()


def test_atomic_path_leaves_nothing_on_exception(tmp_path):
    final = tmp_path / "sub" / "result.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            assert tmp.parent == final.parent and tmp != final
            tmp.write_bytes(b"half written")
            raise RuntimeError("boom")
    assert not final.exists()
    assert _listing(final.parent) == []


def test_atomic_path_does_not_clobber_an_existing_file_on_failure(tmp_path):
    final = tmp_path / "report.json"
    final.write_text("old")
    with pytest.raises(KeyError):
        with atomic_path(final) as tmp:
            tmp.write_text("new, partial")
            raise KeyError("x")
    assert final.read_text() == "old"
    assert _listing(tmp_path) == ["report.json"]


def test_atomic_path_success_and_write_text_atomic(tmp_path):
    final = tmp_path / "a.txt"
    with atomic_path(final) as tmp:
        tmp.write_text("hello")
        assert not final.exists()
    assert final.read_text() == "hello"
    write_text_atomic("again", final)
    assert final.read_text() == "again"
    assert _listing(tmp_path) == ["a.txt"]


# ---------------------------------------------------------------------------- names


def test_study_name():
    assert study_name(Path("patient001_frame01.nii.gz"), Path("patient001_frame12.nii.gz")) == "patient001"
    assert study_name(Path("/x/case7_ed.nii"), Path("/x/case7_es.nii")) == "case7"
    assert study_name(Path("001_SA_ED.nii.gz"), Path("001_SA_ES.nii.gz")) == "001_SA"
    assert study_name(Path("sub-01_frame03.nii"), Path("sub-01_frame04.nii")) == "sub-01"
    assert study_name(Path("a.nii.gz"), Path("b.nii.gz")) == "study"


def test_strip_image_suffix():
    assert strip_image_suffix("x.nii.gz") == "x"
    assert strip_image_suffix("x.NII") == "x"
    assert strip_image_suffix("x.png") == "x.png"
