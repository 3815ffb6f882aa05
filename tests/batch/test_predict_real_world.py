"""``cardioseg predict`` on real-world input: DICOM series folders, quality-control flags in
every report, ``--strict`` and ``--overlay``."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import save_nifti
from dicom_writer import write_dicom_series
from typer.testing import CliRunner

from cardioseg.cli import app
from cardioseg.io import read_dicom_series

runner = CliRunner()
FAST = ["--device", "cpu", "--precision", "fp32", "--quiet"]
DICOM_SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "dicom_sample" / "rvsc_patient09"


@pytest.fixture
def dicom_cine(tmp_path, small_phantom) -> Path:
    """The small phantom cine as an oblique DICOM series (one file per slice and phase)."""
    data = np.clip(small_phantom.image, 0, 4000).astype(np.int16)
    folder = tmp_path / "dicom" / "sax_cine"
    write_dicom_series(folder, data, pixel_spacing=(2.5, 2.5), slice_gap_mm=10.0)
    return folder


def test_predict_dicom_folder_writes_nifti_in_the_dicom_geometry(tmp_path, dicom_cine, small_phantom, tiny_weights_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(dicom_cine), "-o", str(out), "-w", str(tiny_weights_path), *FAST])
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["sax_cine_report.json", "sax_cine_seg.nii.gz", "summary.csv"]
    volume = read_dicom_series(dicom_cine)
    mask = nib.load(out / "sax_cine_seg.nii.gz")
    assert mask.shape == volume.data.shape == small_phantom.image.shape
    np.testing.assert_allclose(mask.affine, volume.affine, atol=1e-4)
    assert not np.allclose(volume.affine[:3, :3], np.diag(np.diag(volume.affine[:3, :3])))  # really oblique
    report = json.loads((out / "sax_cine_report.json").read_text())
    assert report["kind"] == "cine" and len(report["frames"]) == small_phantom.image.shape[3]
    # the same voxels as a NIfTI file give the same mask: the reader is the only difference
    nifti = save_nifti(tmp_path / "nifti" / "sax_cine.nii.gz", volume.data, volume.affine)
    out2 = tmp_path / "out2"
    assert runner.invoke(app, ["predict", str(nifti), "-o", str(out2), "-w", str(tiny_weights_path), *FAST]).exit_code == 0
    np.testing.assert_array_equal(np.asarray(mask.dataobj), np.asarray(nib.load(out2 / "sax_cine_seg.nii.gz").dataobj))


def test_several_series_need_series_uid(tmp_path, dicom_cine, small_phantom, tiny_weights_path):
    other = np.clip(small_phantom.image[..., :2], 0, 4000).astype(np.int16)
    write_dicom_series(dicom_cine, other, series_uid="1.2.826.0.1.99", description="localiser", prefix="LOC")
    out = tmp_path / "out"
    args = ["predict", str(dicom_cine), "-o", str(out), "-w", str(tiny_weights_path), *FAST]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "1.2.826.0.1.99" in lines[0] and "--series-uid" in lines[0]
    assert not out.exists()
    result = runner.invoke(app, [*args, "--series-uid", "1.2.826.0.1.99"])
    assert result.exit_code == 0, result.stderr
    assert nib.load(out / "sax_cine_seg.nii.gz").shape == other.shape


def test_every_report_has_qc_flags_and_strict_makes_them_errors(tmp_path, small_phantom, tiny_weights_path):
    """The 4-slice phantom is flagged (too few slices for a real heart): reported by default,
    an error with no outputs under --strict."""
    f = save_nifti(tmp_path / "in" / "cine.nii.gz", small_phantom.image, small_phantom.affine)
    out = tmp_path / "out"
    args = ["predict", str(f), "-o", str(out), "-w", str(tiny_weights_path), *FAST]
    assert runner.invoke(app, args).exit_code == 0
    report = json.loads((out / "cine_report.json").read_text())
    assert "too_few_slices" in report["qc_flags"]
    assert [q["code"] for q in report["qc"]] == report["qc_flags"]
    assert all(q["message"] for q in report["qc"])
    strict_out = tmp_path / "strict"
    result = runner.invoke(app, ["predict", str(f), "-o", str(strict_out), "-w", str(tiny_weights_path), *FAST, "--strict"])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--strict" in lines[0] and "slice" in lines[0]
    assert not strict_out.exists()


def test_overlay_png(tmp_path, small_phantom, tiny_weights_path):
    pytest.importorskip("matplotlib")
    f = save_nifti(tmp_path / "in" / "cine.nii.gz", small_phantom.image, small_phantom.affine)
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(f), "-o", str(out), "-w", str(tiny_weights_path), *FAST, "--overlay"])
    assert result.exit_code == 0, result.stderr
    png = out / "cine_overlay.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "cine_report.json").read_text())
    assert "cine_overlay.png" not in report["masks"]


@pytest.mark.realdata
def test_real_dicom_fragment(tmp_path, tiny_weights_path):
    if not DICOM_SAMPLE.is_dir():
        pytest.skip("../shared/data/dicom_sample is absent")
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(DICOM_SAMPLE), "-o", str(out), "-w", str(tiny_weights_path), *FAST])
    assert result.exit_code == 0, result.stderr
    volume = read_dicom_series(DICOM_SAMPLE)
    mask = nib.load(out / "rvsc_patient09_seg.nii.gz")
    assert mask.shape == volume.data.shape == (216, 256, 1, 20)
    np.testing.assert_allclose(mask.affine, volume.affine, atol=1e-4)
    report = json.loads((out / "rvsc_patient09_report.json").read_text())
    assert "too_few_slices" in report["qc_flags"] and "reader_warning" in report["qc_flags"]
    assert any("Dropped 2 of 3 slice positions" in w for w in report["warnings"])
    warnings = [line for line in result.stderr.splitlines() if line.startswith("cardioseg: warning:")]
    assert len(warnings) == 2
