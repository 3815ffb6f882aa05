"""The Python API (``cardioseg.predict``, ``evaluate``, ``segment``, ...) does what the commands
do: the same files, the same numbers; the CLI is a shell over it."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import save_nifti
from typer.testing import CliRunner

import cardioseg
from cardioseg.cli import app
from cardioseg.errors import ConfigError, InputFileNotFoundError


@pytest.fixture
def cine(tmp_path: Path, small_phantom) -> Path:
    return save_nifti(tmp_path / "in" / "cine.nii.gz", small_phantom.image, small_phantom.affine)


def _report(path: Path) -> dict:
    report = json.loads(path.read_text())
    report.pop("runtime_s")
    for key in ("created_utc", "command"):  # when, and how it was asked for: the API has no command line
        report["provenance"].pop(key)
    return report


def test_predict_writes_what_the_command_writes(tmp_path: Path, cine: Path, tiny_weights_path: Path) -> None:
    results = cardioseg.predict(cine, tmp_path / "api", weights=tiny_weights_path, device="cpu", myo_density_g_ml=1.1)
    run = CliRunner().invoke(app, ["predict", str(cine), "-o", str(tmp_path / "cli"), "-w", str(tiny_weights_path),
                                   "--device", "cpu", "--myo-density", "1.1", "-q"])  # fmt: skip
    assert run.exit_code == 0, run.output
    (result,) = results
    assert result.error is None and not result.skipped
    assert [p.name for p in result.outputs] == ["cine_seg.nii.gz", "cine_report.json"]
    assert _report(tmp_path / "api" / "cine_report.json") == _report(tmp_path / "cli" / "cine_report.json")
    a, b = (np.asarray(nib.load(tmp_path / d / "cine_seg.nii.gz").dataobj) for d in ("api", "cli"))
    np.testing.assert_array_equal(a, b)
    assert result.report is not None and result.report["myo_density_g_ml"] == 1.1


def test_segment_in_memory_equals_the_written_mask(tmp_path: Path, cine: Path, tiny_weights_path: Path) -> None:
    predictor = cardioseg.load_predictor(tiny_weights_path, device="cpu")
    volume = cardioseg.read_volume(cine)
    labels = cardioseg.segment(volume, predictor=predictor)
    assert labels.shape == volume.data.shape and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, cardioseg.segment(volume.data, volume.affine, predictor=predictor))
    cardioseg.predict([cine], tmp_path / "out", predictor=predictor)
    np.testing.assert_array_equal(labels, np.asarray(nib.load(tmp_path / "out" / "cine_seg.nii.gz").dataobj))


def test_a_second_run_skips_finished_studies_and_says_so(tmp_path: Path, small_phantom, tiny_weights_path: Path) -> None:
    a = save_nifti(tmp_path / "in" / "a.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    b = save_nifti(tmp_path / "in" / "b.nii.gz", small_phantom.image[..., 4], small_phantom.affine)
    first = cardioseg.predict([a, b], tmp_path / "out", weights=tiny_weights_path)
    notes: list[str] = []
    again = cardioseg.predict([a, b], tmp_path / "out", weights=tiny_weights_path, on_note=notes.append)
    assert [r.skipped for r in first] == [False, False] and [r.skipped for r in again] == [True, True]
    assert [r.report for r in again] == [r.report for r in first]
    assert notes == ["2 of 2 studies done before, skipped (--overwrite recomputes them)"]


def test_usage_errors_are_one_line_exceptions_and_leave_nothing(tmp_path: Path, cine: Path) -> None:
    with pytest.raises(ConfigError, match="unknown option.*colour.*valid: .*batch_size"):
        cardioseg.predict(cine, tmp_path / "a", colour="red")
    with pytest.raises(InputFileNotFoundError, match="File not found"):
        cardioseg.predict(tmp_path / "absent.nii.gz", tmp_path / "b")
    with pytest.raises(ConfigError, match="affine"):
        cardioseg.segment(np.zeros((4, 4, 2)))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_evaluate_returns_what_it_writes(tmp_path: Path, small_phantom) -> None:
    ref = save_nifti(tmp_path / "ref" / "x_gt.nii.gz", small_phantom.labels[..., 0], small_phantom.affine)
    pred = small_phantom.labels[..., 0].copy()
    pred[pred == 1] = 0  # no RV predicted
    save_nifti(tmp_path / "pred" / "x_seg.nii.gz", pred, small_phantom.affine)
    ev = cardioseg.evaluate(tmp_path / "pred", ref.parent, tmp_path / "eval")
    assert [p.name for p in ev.written] == ["metrics.csv", "summary.json"]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["all"]["lv"]["dice"]["mean"] == ev.summary["all"]["lv"]["dice"]["mean"] == 1.0
    assert summary["all"]["rv"]["dice"]["mean"] == 0.0
    assert summary["pred"] == str(tmp_path / "pred") and summary["unmatched_ref"] == []
    assert not cardioseg.evaluate(tmp_path / "pred", ref.parent).written  # no folder: nothing written
