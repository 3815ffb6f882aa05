"""Fuzzing the readers with damaged headers (the generator of ``benchmarks/fuzz_nifti.py``):
in process, every damaged file is read and its mask written back on exactly its grid, or
refused with one line; through the CLI, a batch of damaged files never stops the good one."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import REPO_ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nifti_helpers import image
from typer.testing import CliRunner

from cardioseg.cli import app

_spec = importlib.util.spec_from_file_location("fuzz_nifti", REPO_ROOT / "benchmarks" / "fuzz_nifti.py")
assert _spec is not None and _spec.loader is not None
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

FAST = ["--device", "cpu", "--precision", "fp32", "--quiet"]


def _rotated_affine() -> np.ndarray:
    """An oblique grid (rotation about z and x), so that the quaternion is not trivial."""
    a, b = np.deg2rad(30), np.deg2rad(-20)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([1.5, 1.5, 8.0])
    affine[:3, 3] = [-30.0, 12.0, 40.0]
    return affine


def _good_file(path: Path, shape: tuple[int, ...]) -> Path:
    """A valid .nii with both forms set (scanner codes) on the oblique grid."""
    img = nib.Nifti1Image(image(shape), _rotated_affine())
    img.set_qform(_rotated_affine(), code=1)
    img.set_sform(_rotated_affine(), code=1)
    nib.save(img, str(path))
    return path


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    folder = tmp_path_factory.mktemp("fuzz_bases")
    return [_good_file(folder / f"base{len(s)}.nii", s).read_bytes() for s in ((12, 10, 4), (10, 8, 3, 3))]


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), which=st.integers(0, 1))
def test_a_damaged_header_is_read_on_its_grid_or_refused_in_one_line(tmp_path, bases, seed, which):
    """Faults in dims, pixdim, datatype, vox_offset, scaling, xform codes, quaternion and sform,
    truncation and bit flips, gzipped or not: ``read_volume`` plus ``write_mask`` never raise
    anything but a one-line CardiosegError, and a written mask has the shape and affine read."""
    rng = random.Random(seed)
    path, faults = fuzz.damaged_copy(bases[which], rng, tmp_path, f"case{seed}")
    try:
        fuzz.check_one(path, tmp_path / f"mask{seed}.nii.gz")
    except Exception as exc:
        raise AssertionError(f"{faults}: {type(exc).__name__}: {exc}") from exc
    finally:
        path.unlink()


def test_the_fuzzer_exercises_both_outcomes(tmp_path, bases):
    """Guards the generator: not everything is refused, not everything is read."""
    rng = random.Random(7)
    outcomes = [fuzz.check_one(fuzz.damaged_copy(bases[k % 2], rng, tmp_path, f"c{k}")[0], tmp_path / "m.nii.gz")
                for k in range(200)]  # fmt: skip
    assert 20 < outcomes.count("read") < 180, outcomes.count("read")


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"quatern_b": 2.0}, "invalid qform"),
        ({"quatern_c": float("nan")}, "invalid qform"),
        ({"sform_code": 9999}, "sform_code 9999"),
        ({"qform_code": -1}, "qform_code -1"),
        ({"scl_slope": 2.0, "scl_inter": float("nan")}, "invalid intensity scaling"),
        ({"scl_slope": float("inf")}, "invalid intensity scaling"),
    ],
)
def test_header_faults_nibabel_would_fail_on_later_are_refused_at_reading(tmp_path, fields, needle):
    """These used to pass the reader and fail when the mask was written (after the work)."""
    from cardioseg.errors import CardiosegError
    from cardioseg.io import read_volume

    path = _good_file(tmp_path / "x.nii", (12, 10, 4))
    with open(path, "rb") as f:
        hdr = nib.Nifti1Header.from_fileobj(f, check=False)
    for key, value in fields.items():
        hdr[key] = value
    raw = bytearray(path.read_bytes())
    raw[:348] = hdr.binaryblock
    path.write_bytes(bytes(raw))
    with pytest.raises(CardiosegError, match=needle) as info:
        read_volume(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_a_sheared_grid_warns_and_an_absurd_one_is_refused(tmp_path):
    from cardioseg.errors import UnsupportedInputError
    from cardioseg.io import read_volume

    sheared = np.diag([1.5, 1.5, 8.0, 1.0])
    sheared[0, 2] = 3.0  # the slice axis leans 20.6 degrees towards x
    nib.save(nib.Nifti1Image(image((12, 10, 4)), sheared), str(tmp_path / "s.nii"))
    vol = read_volume(tmp_path / "s.nii")
    assert np.array_equal(vol.affine, sheared)
    assert any("sheared (two voxel axes 69.4 degrees apart" in w for w in vol.meta.warnings), vol.meta.warnings
    assert not read_volume(_good_file(tmp_path / "g.nii", (12, 10, 4))).meta.warnings
    nib.save(nib.Nifti1Image(image((12, 10, 4)), np.diag([1.5, 1.5, 5000.0, 1.0])), str(tmp_path / "a.nii"))
    with pytest.raises(UnsupportedInputError, match="voxel edges"):
        read_volume(tmp_path / "a.nii")


def test_disagreeing_qform_and_sform_warn_and_the_sform_is_used(tmp_path):
    from cardioseg.io import read_volume

    img = nib.Nifti1Image(image((12, 10, 4)), np.diag([1.5, 1.5, 8.0, 1.0]))
    moved = np.diag([1.5, 1.5, 8.0, 1.0])
    moved[:3, 3] = [20.0, 0, 0]
    img.set_qform(moved, code=1)
    img.set_sform(np.diag([1.5, 1.5, 8.0, 1.0]), code=1)
    nib.save(img, str(tmp_path / "q.nii"))
    vol = read_volume(tmp_path / "q.nii")
    assert np.allclose(vol.affine, np.diag([1.5, 1.5, 8.0, 1.0]))
    assert any("qform and sform disagree by up to 20.0 mm" in w for w in vol.meta.warnings)


def test_a_batch_of_damaged_files_never_stops_the_good_one(tmp_path, bases, small_phantom, tiny_weights_path):
    """One CLI batch: 24 damaged copies and one good frame. Exit code 1, no traceback; the good
    frame and every readable damaged copy segmented on their own grid; every other copy named
    in one error line; no partial output (temporary files, empty folders)."""
    from conftest import save_nifti

    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = random.Random(2024)
    damaged = [fuzz.damaged_copy(bases[0], rng, inputs, f"bad{k:02d}")[0] for k in range(24)]
    good = save_nifti(inputs / "good.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["predict", *map(str, [*damaged, good]), "-o", str(out), "-w", str(tiny_weights_path), "--crop-px", "0", *FAST]
    )
    assert result.exit_code == 1 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("cardioseg: error:")]
    assert all("unexpected error" not in line for line in errors), errors
    written = {p.name for p in out.iterdir()}
    assert {"good_seg.nii.gz", "good_report.json", "summary.csv"} <= written
    assert not [n for n in written if n.startswith(".") or "tmp" in n], written
    for path in [*damaged, good]:
        stem = path.name.split(".nii")[0]
        if f"{stem}_seg.nii.gz" in written:
            mask, source = nib.load(out / f"{stem}_seg.nii.gz"), nib.load(path)
            assert mask.shape == source.shape and np.allclose(mask.affine, source.affine, atol=1e-4), stem
        else:
            assert sum(f"{stem}:" in line for line in errors) == 1, (stem, errors)
    assert len(errors) == 25 - sum(n.endswith("_seg.nii.gz") for n in written)


# ---------------------------------------------------------------------------- DICOM

DICOM_TAGS = [(0x20, 0x32), (0x28, 0x30), (0x20, 0x37), (0x28, 0x10), (0x28, 0x11), (0x7FE0, 0x10), (0x20, 0x0E),
              (0x18, 0x1060), (0x20, 0x13), (0x28, 0x100), (0x8, 0x16), (0x18, 0x50), (0x28, 0x2)]  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    fault=st.sampled_from(["drop", "truncate", "flip", "garbage"]),
    tag=st.sampled_from(DICOM_TAGS),
    which=st.integers(0, 3),
    where=st.floats(0.0, 1.0),
)
def test_a_damaged_dicom_series_is_read_or_refused_in_one_line(tmp_path_factory, fault, tag, which, where):
    """One file of a 2-slice, 2-phase series loses a tag (ImagePositionPatient, PixelSpacing,
    Rows, PixelData, ...), is truncated, has a byte flipped or is replaced by garbage: the
    series is read (a Volume on the grid of its headers) or refused with one line."""
    from dicom_writer import coded_volume, drop_element, write_dicom_series

    from cardioseg.errors import CardiosegError
    from cardioseg.io import read_volume

    folder = tmp_path_factory.mktemp("series")
    files = write_dicom_series(folder, coded_volume(nz=2, nt=2))
    victim = files[sorted(files)[which]]
    raw = victim.read_bytes()
    if fault == "drop":
        drop_element(victim, tag)
    elif fault == "truncate":
        victim.write_bytes(raw[: int(where * len(raw))])
    elif fault == "flip":
        pos = min(len(raw) - 1, int(where * len(raw)))
        victim.write_bytes(raw[:pos] + bytes([raw[pos] ^ 0x5A]) + raw[pos + 1 :])
    else:
        victim.write_bytes(raw[:132] + bytes(random.Random(int(where * 1e6)).randbytes(len(raw) - 132)))
    try:
        vol = read_volume(folder)
    except CardiosegError as exc:
        assert "\n" not in str(exc), str(exc)
    else:
        assert vol.data.shape[:2] == (7, 5) and np.all(np.isfinite(vol.affine))


def test_a_dicom_object_without_pixels_beside_the_images_is_ignored_with_a_warning(tmp_path):
    from dicom_writer import coded_volume, write_dicom_series, write_structured_report

    from cardioseg.errors import UnsupportedInputError
    from cardioseg.io import read_volume

    vol = coded_volume(nz=2, nt=2)
    write_dicom_series(tmp_path / "s", vol)
    write_structured_report(tmp_path / "s" / "SR0001.dcm")
    read = read_volume(tmp_path / "s")
    assert np.array_equal(read.data, vol)
    assert read.meta.warnings == ('Ignored 1 DICOM object(s) without pixel data ("SR0001.dcm": reports or presentation states, not images).',)
    write_structured_report(tmp_path / "only" / "SR0001.dcm") if (tmp_path / "only").mkdir() is None else None
    with pytest.raises(UnsupportedInputError, match="hold no pixel data"):
        read_volume(tmp_path / "only")


def test_a_dicom_series_missing_a_geometry_tag_is_named(tmp_path):
    from dicom_writer import coded_volume, drop_element, write_dicom_series

    from cardioseg.errors import CardiosegError
    from cardioseg.io import read_volume

    files = write_dicom_series(tmp_path, coded_volume(nz=2, nt=2))
    victim = drop_element(files[sorted(files)[1]], (0x28, 0x30))
    with pytest.raises(CardiosegError, match=rf'"{victim}" has no PixelSpacing \(0028,0030\)'):
        read_volume(tmp_path)
