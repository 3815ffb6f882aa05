"""The NIfTI reader (frames, cines, damaged and hostile headers) and the mask writer."""

from __future__ import annotations

import gzip
import logging
import random
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import save_nifti
from hypothesis import given, settings
from hypothesis import strategies as st
from nifti_helpers import image, qform_only_nii, raw_header_edit, signed_perm_affine

from cardioseg.errors import (
    CardiosegError,
    InputFileNotFoundError,
    UnreadableInputError,
    UnsupportedInputError,
)
from cardioseg.io import Volume, read_volume, write_mask
from cardioseg.io.nifti import _quiet_nibabel

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
    assert v.meta.source == "nifti" and v.meta.slice_positions_mm is None


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


def test_plain_image_gets_no_warning(tmp_path, small_phantom):
    vol = read_volume(save_nifti(tmp_path / "x.nii.gz", small_phantom.image, small_phantom.affine))
    assert vol.meta.warnings == ()


def test_missing_file():
    with pytest.raises(InputFileNotFoundError, match="not found"):
        read_volume("/nonexistent/dir/patient.nii.gz")


def test_errors_are_cardioseg_errors_and_distinct():
    kinds = [InputFileNotFoundError, UnreadableInputError, UnsupportedInputError]
    assert all(issubclass(k, CardiosegError) for k in kinds)
    for a in kinds:
        for b in kinds:
            assert (a is b) == issubclass(a, b)


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


# ---------------------------------------------------------------------------- damaged files


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


def test_truncated_uncompressed_is_refused_before_reading(tmp_path):
    path = save_nifti(tmp_path / "t.nii", image())
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UnreadableInputError, match="truncated"):
        read_volume(path)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"datatype": 4096}, "could not be read as NIfTI (HeaderDataError: data code 4096 not recognized)"),
        ({"vox_offset": 1e30}, "could not be read as NIfTI"),
    ],
)
def test_damaged_header_fields_give_one_clear_line(tmp_path, fields, error):
    """Errors nibabel and numpy raise on damaged headers (not only ValueError/OSError) are one line."""
    path = raw_header_edit(save_nifti(tmp_path / "d.nii", image()), **fields)
    with pytest.raises(UnreadableInputError) as info:
        read_volume(path)
    message = str(info.value)
    assert message.startswith(f'File "{path}" {error}') and "\n" not in message


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape read_volume gives for a header shape: trailing singleton axes of 4D/5D dropped."""
    if len(shape) == 5 and shape[3] == 1:
        shape = shape[:3] + shape[4:]
    return shape[:3] if len(shape) == 4 and shape[3] == 1 else shape


@pytest.mark.parametrize("compressed", [False, True], ids=["nii", "nii.gz"])
def test_randomly_damaged_headers_read_or_raise_a_cardioseg_error(tmp_path, compressed):
    """Random bytes of the 348-byte header of a small valid NIfTI (3D and 4D) are overwritten or
    bit-flipped, many times: read_volume returns a Volume with the header's shape or raises a
    CardiosegError, never anything else (nibabel raises HeaderDataError, OverflowError, ... on
    such headers). Seeded, so a failure names a reproducible case."""
    bases = [
        (save_nifti(tmp_path / f"base{len(shape)}.nii", image(shape), np.diag([1.5, 1.5, 8.0, 1.0]))).read_bytes()
        for shape in ((6, 5, 4), (5, 4, 3, 2))
    ]
    rng = random.Random(1234 + compressed)
    outcomes = {"volume": 0, "refused": 0}
    for i in range(600):
        raw = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(348)
            raw[pos] = rng.randrange(256) if rng.random() < 0.5 else raw[pos] ^ (1 << rng.randrange(8))
        path = tmp_path / (f"case{i}.nii.gz" if compressed else f"case{i}.nii")
        path.write_bytes(gzip.compress(bytes(raw)) if compressed else bytes(raw))
        try:
            vol = read_volume(path)
        except CardiosegError as exc:
            assert "\n" not in str(exc), (i, str(exc))
            outcomes["refused"] += 1
        else:
            with _quiet_nibabel():
                header_shape = tuple(int(v) for v in nib.load(path).shape)
            assert vol.data.shape == _squeezed(header_shape), i
            outcomes["volume"] += 1
        path.unlink()
    assert min(outcomes.values()) > 20, outcomes  # both outcomes are exercised


# ---------------------------------------------------------------------------- hostile headers


def test_voxel_limit_is_checked_before_reading(tmp_path, monkeypatch):
    path = save_nifti(tmp_path / "x.nii.gz", image())
    with pytest.raises(UnsupportedInputError, match="9,600 voxels"):
        read_volume(path, max_voxels=9599)
    monkeypatch.setenv("CARDIOSEG_MAX_VOXELS", "1000")
    with pytest.raises(UnsupportedInputError, match="limit of 1,000"):
        read_volume(path)
    # the huge header is refused without touching nibabel's data reader
    big = tmp_path / "big.nii"
    save_nifti(big, image())
    raw_header_edit(big, dim=[4, 4000, 4000, 4000, 50])
    monkeypatch.delenv("CARDIOSEG_MAX_VOXELS")
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", lambda *a, **k: pytest.fail("voxels were read"))
    with pytest.raises(UnsupportedInputError, match="3,200,000,000,000"):
        read_volume(big)


def test_qform_only_spacing_is_used_when_positive(tmp_path):
    vol = read_volume(qform_only_nii(tmp_path / "ok.nii", [1.25, 1.5, 9.0]))
    assert vol.spacing_mm == pytest.approx((1.25, 1.5, 9.0))


@pytest.mark.parametrize("pixdim", [[1.5, 0.0, 8.0], [1.5, -1.5, 8.0]])
def test_qform_only_non_positive_spacing_is_refused(tmp_path, pixdim):
    with pytest.raises(UnsupportedInputError, match="every spacing must be a positive number"):
        read_volume(qform_only_nii(tmp_path / "bad.nii", pixdim))


def test_nibabel_header_repairs_are_silent_for_the_reading_thread_only(tmp_path, caplog):
    """nibabel logs its repair of a zero pixdim (the sform defines the geometry, so cardioseg reads
    it); read_volume keeps that log line from the user without changing any logger level, and a
    load in another thread meanwhile still logs (read-ahead threads must not silence each other)."""
    path = raw_header_edit(save_nifti(tmp_path / "z.nii", image()), pixdim123=[0.0, 1.5, 8.0])
    levels = {name: logging.getLogger(name).level for name in ("nibabel", "nibabel.global")}

    def repairs() -> int:
        return sum("pixdim" in r.getMessage() for r in caplog.records if r.name == "nibabel.global")

    with caplog.at_level(logging.WARNING):
        vol = read_volume(path)
        assert vol.spacing_mm == pytest.approx((1.5, 1.5, 8.0))
        assert repairs() == 0
        assert {name: logging.getLogger(name).level for name in levels} == levels
        nib.load(str(path))
        assert repairs() == 1  # outside read_volume nibabel speaks as usual
        with _quiet_nibabel():
            other = threading.Thread(target=lambda: nib.load(str(path)))
            other.start()
            other.join()
            nib.load(str(path))  # this thread is quiet
        assert repairs() == 2  # the other thread's load only


# ---------------------------------------------------------------------------- properties


@settings(max_examples=30, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 6)),
    frames=st.integers(0, 3),
    orientation=st.tuples(
        st.permutations([0, 1, 2]),
        st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3),
        st.tuples(*[st.floats(0.5, 12.0)] * 3),
        st.tuples(*[st.floats(-300.0, 300.0)] * 3),
    ),
    dtype=st.sampled_from(["int16", "uint8", "float32", "float64"]),
    suffix=st.sampled_from([".nii", ".nii.gz"]),
    seed=st.integers(0, 2**16),
)
def test_reader_round_trip(tmp_path_factory, shape, frames, orientation, dtype, suffix, seed):
    """Whatever NIfTI nibabel writes (3D or 4D, any signed permutation, spacing, origin and
    dtype), read_volume returns exactly its voxels and affine."""
    perm, signs, spacing, origin = orientation
    full_shape = (*shape, frames) if frames > 1 else shape
    data = np.random.default_rng(seed).integers(0, 200, size=full_shape).astype(dtype)
    affine = signed_perm_affine(perm, signs, spacing, origin)
    path = tmp_path_factory.mktemp("rt") / f"rt_{seed}_{len(full_shape)}{suffix}"
    save_nifti(path, data, affine)
    vol = read_volume(path)
    assert vol.data.shape == full_shape and vol.data.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-4 * max(1.0, float(np.abs(origin).max())))


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
