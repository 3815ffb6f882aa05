"""Hostile input through the CLI: every bad input gets exit code 1 and one clear line, no
traceback, no partial output, and leaves the other inputs of the batch unaffected. Plus
property-based tests of the geometry round trip (hypothesis). Reader-level checks of the same
files are in test_nifti.py."""

from __future__ import annotations

import errno
import json
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import save_nifti
from hypothesis import given, settings
from hypothesis import strategies as st
from nifti_helpers import image, qform_only_nii, raw_header_edit, signed_perm_affine
from typer.testing import CliRunner

from cardioseg.cli import app

runner = CliRunner()
FAST = ["--device", "cpu", "--precision", "fp32", "--quiet"]


# one builder per hostile case: (file name, writer, words the error line must contain)
def _truncated(p: Path) -> None:
    full = save_nifti(p.with_name("full_tmp.nii.gz"), image())
    p.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    full.unlink()


def _billions(p: Path) -> None:
    save_nifti(p, image())
    raw_header_edit(p, dim=[3, 4000, 4000, 4000])


HOSTILE = {
    "truncated.nii.gz": (_truncated, ["could not be read"]),
    "text.nii.gz": (lambda p: p.write_text("this is not an image\n"), ["could not be read"]),
    "flat2d.nii.gz": (lambda p: save_nifti(p, image((40, 40))), ["shape", "3d frame"]),
    "five_d.nii.gz": (lambda p: save_nifti(p, image((20, 20, 4, 2, 3))), ["shape"]),
    "nan.nii.gz": (lambda p: save_nifti(p, np.where(np.arange(9600).reshape(40, 40, 6) == 7, np.nan, image())), ["nan"]),
    "inf.nii.gz": (lambda p: save_nifti(p, np.where(np.arange(9600).reshape(40, 40, 6) == 7, np.inf, image())), ["infinite"]),
    "zero_spacing.nii": (lambda p: qform_only_nii(p, [1.5, 0.0, 8.0]), ["voxel size", "positive"]),
    "negative_spacing.nii": (lambda p: qform_only_nii(p, [1.5, -1.5, 8.0]), ["voxel size", "positive"]),
    "billions.nii": (_billions, ["64,000,000,000", "--max-voxels"]),
}


@pytest.fixture
def hostile_dir(tmp_path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    for name, (write, _) in HOSTILE.items():
        write(d / name)
    return d


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_each_hostile_file_exit_1_one_line_nothing_written(tmp_path, hostile_dir, tiny_weights_path, name):
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(hostile_dir / name), "-o", str(out), "-w", str(tiny_weights_path), *FAST])
    assert result.exit_code == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("cardioseg: error:")
    for needle in HOSTILE[name][1]:
        assert needle.lower() in lines[0].lower(), lines[0]
    assert not out.exists()  # the folder this run created is removed again when nothing was written


def test_hostile_batch_leaves_the_good_input_unaffected(tmp_path, hostile_dir, small_phantom, tiny_weights_path):
    good = save_nifti(hostile_dir / "good.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    out = tmp_path / "out"
    inputs = sorted(str(p) for p in hostile_dir.iterdir())
    result = runner.invoke(app, ["predict", *inputs, "-o", str(out), "-w", str(tiny_weights_path), *FAST])
    assert result.exit_code == 1
    lines = error_lines(result.stderr)
    assert len(lines) == len(HOSTILE) and "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["good_report.json", "good_seg.nii.gz", "summary.csv"]
    assert nib.load(out / "good_seg.nii.gz").shape == nib.load(good).shape


def test_max_voxels_option(tmp_path, small_phantom, tiny_weights_path):
    f = save_nifti(tmp_path / "f.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    args = ["predict", str(f), "-o", str(tmp_path / "out"), "-w", str(tiny_weights_path), *FAST]
    result = runner.invoke(app, [*args, "--max-voxels", "100"])
    assert result.exit_code == 1 and "limit of 100" in result.stderr
    assert runner.invoke(app, [*args, "--max-voxels", str(10**8)]).exit_code == 0


@pytest.mark.parametrize(("content", "needle"), [({}, "is empty"), ({"notes.txt": "hi"}, "holds no DICOM files")])
def test_folder_without_images_exit_1(tmp_path, tiny_weights_path, content, needle):
    folder = tmp_path / "study7"
    folder.mkdir()
    for name, text in content.items():
        (folder / name).write_text(text)
    result = runner.invoke(app, ["predict", str(folder), "-o", str(tmp_path / "out"), "-w", str(tiny_weights_path), *FAST])
    assert result.exit_code == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and needle in lines[0] and "study7" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda ph: np.clip(ph.labels[..., 0], 0, 3).astype(np.uint8), "label map"),
        (lambda ph: ph.image[..., 0], "isotropic"),
    ],
    ids=["label-map-as-image", "not-a-slice-stack"],
)
def test_suspicious_inputs_warn_but_run(tmp_path, small_phantom, tiny_weights_path, make, needle):
    affine = small_phantom.affine if needle != "isotropic" else np.diag([1.5, 1.5, 1.5, 1.0])
    f = save_nifti(tmp_path / "odd.nii.gz", make(small_phantom), affine)
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(f), "-o", str(out), "-w", str(tiny_weights_path), *FAST])
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in error_lines(result.stderr) if line.startswith("cardioseg: warning:")]
    assert len(warnings) == 1 and needle in warnings[0]
    report = json.loads((out / "odd_report.json").read_text())
    assert any(needle in w for w in report["warnings"])


# ---------------------------------------------------------------------------- output folder


def test_output_folder_equal_to_the_input_file(tmp_path, small_phantom, tiny_weights_path):
    f = save_nifti(tmp_path / "x.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    before = f.read_bytes()
    result = runner.invoke(app, ["predict", str(f), "-o", str(f), "-w", str(tiny_weights_path), *FAST])
    assert result.exit_code == 1
    assert len(error_lines(result.stderr)) == 1 and "input file" in result.stderr
    assert f.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["x.nii.gz"]


def test_outputs_never_overwrite_an_input(tmp_path, small_phantom, tiny_weights_path):
    a = save_nifti(tmp_path / "x.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    b = save_nifti(tmp_path / "x_seg.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    before = b.read_bytes()
    result = runner.invoke(app, ["predict", str(a), str(b), "-o", str(tmp_path), "-w", str(tiny_weights_path), *FAST])
    assert result.exit_code == 1 and "would overwrite an input" in result.stderr
    assert b.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.nii.gz", "x_seg.nii.gz"]


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "-rf"])
def test_study_names_cannot_escape_the_output_folder(tmp_path, small_phantom, tiny_weights_path, name):
    ed = save_nifti(tmp_path / "p_ed.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    es = save_nifti(tmp_path / "p_es.nii.gz", small_phantom.image[..., 3], small_phantom.affine)
    out = tmp_path / "out"
    args = ["predict", "--ed", str(ed), "--es", str(es), "--study", name, "-o", str(out), "-w", str(tiny_weights_path)]
    result = runner.invoke(app, [*args, *FAST])
    assert result.exit_code == 1 and "study name" in result.stderr
    assert not out.exists() and not (tmp_path / "escape_report.json").exists()


def test_output_folder_inside_a_file_is_refused(tmp_path, small_phantom, tiny_weights_path):
    f = save_nifti(tmp_path / "x.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    result = runner.invoke(app, ["predict", str(f), "-o", str(blocker / "out"), "-w", str(tiny_weights_path), *FAST])
    assert result.exit_code == 1
    assert len(error_lines(result.stderr)) == 1 and "cannot write to output folder" in result.stderr


def test_unwritable_output_folder(tmp_path, small_phantom, tiny_weights_path, monkeypatch):
    """Root ignores permission bits, so the refusal of the write probe is simulated."""
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    f = save_nifti(tmp_path / "x.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", denied)  # the write probe
    result = runner.invoke(app, ["predict", str(f), "-o", str(out), "-w", str(tiny_weights_path), *FAST])
    assert result.exit_code == 1
    assert len(error_lines(result.stderr)) == 1 and "Permission denied" in result.stderr
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("fail_at", ["mask", "report"])
def test_disk_full_at_write_time_leaves_nothing_partial(tmp_path, small_phantom, tiny_weights_path, monkeypatch, fail_at):
    """ENOSPC in the middle of writing a mask (or the report, after the mask was written):
    that study gets one error line and no file at all; the next study is written."""
    import cardioseg.report

    a = save_nifti(tmp_path / "in" / "a.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    b = save_nifti(tmp_path / "in" / "b.nii.gz", small_phantom.image[..., 3], small_phantom.affine)
    real_save, real_write = nib.save, cardioseg.report.write_text_atomic

    def full_save(img, filename):
        if fail_at == "mask" and Path(filename).name.startswith(".a_seg"):
            Path(filename).write_bytes(b"\x1f\x8b half")  # a partial temp file...
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        real_save(img, filename)

    def full_report(text, path):
        if fail_at == "report" and Path(path).name == "a_report.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(text, path)

    monkeypatch.setattr(nib, "save", full_save)
    monkeypatch.setattr(cardioseg.report, "write_text_atomic", full_report)
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(a), str(b), "-o", str(out), "-w", str(tiny_weights_path), *FAST])
    assert result.exit_code == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "No space left on device" in lines[0] and lines[0].startswith("cardioseg: error: a:")
    assert sorted(p.name for p in out.iterdir()) == ["b_report.json", "b_seg.nii.gz", "summary.csv"]


def test_tampered_checkpoint_is_refused(tmp_path, small_phantom, tiny_weights_path):
    f = save_nifti(tmp_path / "x.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    raw = bytearray(tiny_weights_path.read_bytes())
    # flip one byte inside the largest stored tensor (the zip's data, not its directory)
    raw[len(raw) // 2] ^= 0xFF
    bad = tmp_path / "tampered.pt"
    bad.write_bytes(bytes(raw))
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(f), "-o", str(out), "-w", str(bad), *FAST])
    assert result.exit_code == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "tampered.pt" in lines[0] and "Traceback" not in result.stderr
    assert not out.exists()


# ---------------------------------------------------------------------------- properties


orientations = st.tuples(
    st.permutations([0, 1, 2]),
    st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3),
    st.tuples(*[st.floats(0.5, 12.0)] * 3),
    st.tuples(*[st.floats(-300.0, 300.0)] * 3),
)
shapes = st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 6))


@settings(max_examples=40, deadline=None)
@given(shape=shapes, orientation=orientations, seed=st.integers(0, 2**16))
def test_geometry_canonical_view_is_orientation_free(shape, orientation, seed):
    """The same world image stored under any axis order and flips has the same canonical
    (in-plane, in-plane, slice) view, and from_canonical inverts to_canonical exactly."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

    from cardioseg.geometry import find_orientation, from_canonical, to_canonical

    base = np.random.default_rng(seed).integers(0, 9, size=shape).astype(np.int16)
    spacing = (1.25, 1.5, 8.0)  # a short-axis stack: the slice axis has the largest spacing
    base_affine = np.diag([*spacing, 1.0])
    perm, signs, _, origin = orientation
    target = np.array([[perm[i], signs[i]] for i in range(3)])
    transform = ornt_transform(io_orientation(base_affine), target)
    stored = apply_orientation(base, transform)
    affine = base_affine @ inv_ornt_aff(transform, base.shape)
    affine[:3, 3] += origin
    o = find_orientation(affine)
    canon = to_canonical(stored, o)
    np.testing.assert_array_equal(canon, to_canonical(base, find_orientation(base_affine)))
    np.testing.assert_array_equal(from_canonical(canon, o), stored)


@settings(max_examples=25, deadline=None)
@given(
    shape=st.tuples(st.integers(4, 20), st.integers(4, 20), st.integers(1, 5)),
    orientation=orientations,
    seed=st.integers(0, 2**16),
)
def test_model_space_round_trip_of_one_hot_labels(shape, orientation, seed):
    """Labels taken to the model grid and back (as one-hot probabilities) come back exactly in
    the stored shape when the model grid has the native pixel size and the same parity."""
    from cardioseg.geometry import ModelSpace, one_hot

    perm, signs, _, origin = orientation
    spacing = [1.5625, 1.5625, 1.5625]
    spacing[perm.index(2)] = 10.0  # the stored axis along world z is the slice axis
    affine = signed_perm_affine(perm, signs, spacing, origin)
    labels = np.random.default_rng(seed).integers(0, 4, size=shape).astype(np.uint8)
    fov = 24 + (max(shape) % 2 == 1)  # same parity as every in-plane size below
    canonical_inplane = [shape[i] for i in range(3) if i != perm.index(2)]
    if any((n - fov) % 2 for n in canonical_inplane):
        return  # a half-pixel shift between the grids: interpolation, not a round trip
    space = ModelSpace.for_image(affine, shape, spacing_mm=1.5625, fov_px=fov)
    model = space.labels_to_model(labels)  # (S, fov, fov)
    probs = np.moveaxis(one_hot(model, 4), -1, 1)  # (S, C, fov, fov)
    back = space.probabilities_to_labels(probs)
    assert back.shape == labels.shape
    np.testing.assert_array_equal(back, labels)
