"""The command-line contract of DESIGN.md: file names, report keys, exit codes, nothing partial."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import REPO_ROOT, export_tiny_weights, save_nifti
from typer.testing import CliRunner

from cardioseg.cli import app
from cardioseg.weights import sha256_file

runner = CliRunner()
FAST = ["--device", "cpu", "--precision", "fp32", "--quiet"]


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m cardioseg ARGS`` in a fresh process (real stderr, real exit code)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "cardioseg", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def assert_one_clean_error_line(stderr: str, *needles: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]


@pytest.fixture
def cine_file(tmp_path, small_phantom) -> Path:
    """An 8-frame 4D phantom cine ``cine.nii.gz`` (48 x 48 x 4 x 8)."""
    return save_nifti(tmp_path / "in" / "cine.nii.gz", small_phantom.image, small_phantom.affine)


# ---------------------------------------------------------------------------- help and usage


def test_help():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "predict" in result.output
    result = runner.invoke(app, ["predict", "--help"])
    assert result.exit_code == 0
    for option in ("--out", "--ed", "--es", "--weights", "--ensemble", "--device", "--ed-frame", "--myo-density"):
        assert option in result.output


def test_help_reads_in_panels_with_short_flag():
    result = runner.invoke(app, ["predict", "-h"], env={"COLUMNS": "100"})
    assert result.exit_code == 0
    for panel in ("Input", "Output", "Model and hardware", "Clinical", "Batch and cluster", "Quality control"):
        assert f"─ {panel} ─" in result.output, panel
    flag_lines = [line for line in result.output.splitlines() if "--overlay" in line or "--strict" in line]
    assert flag_lines and not any("<bool>" in line for line in flag_lines)
    assert runner.invoke(app, ["measure", "-h"]).exit_code == 0


@pytest.mark.parametrize("command", [[], ["predict"], ["evaluate"], ["train"], ["preprocess"], ["measure"], ["weights"]])
def test_help_option_shows_no_type(command):
    result = runner.invoke(app, [*command, "-h"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    help_lines = [line for line in result.output.splitlines() if "--help" in line]
    assert help_lines and not any("<bool>" in line for line in help_lines)


def test_weights_lists_the_registered_models():
    result = runner.invoke(app, ["weights"])
    assert result.exit_code == 0, result.output
    from cardioseg.weights import DEFAULT_WEIGHTS, registry

    for name, entry in registry().items():
        assert name in result.output and entry["sha256"] in result.output
    assert f"{DEFAULT_WEIGHTS} (default)" in result.output and "CC BY-NC-SA 4.0" in result.output
    assert "mean Dice" in result.output
    # the default's recorded inference and QC limit (meta["inference"]), unless --crop-px/--tta say otherwise
    assert "defaults  two stages, 128-px crop, test-time rotations, QC low_confidence below rv 0.931, myo 0.894, lv 0.965" in result.output


def test_version():
    from cardioseg import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_help_does_not_import_torch(tmp_path):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from cardioseg.cli import app\n"
        "r = CliRunner().invoke(app, ['predict', '--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print('torch' in sys.modules)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_no_args_exit_2(tmp_path):
    assert run_cli([], tmp_path).returncode == 2
    result = run_cli(["predict"], tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_unknown_option_exit_2(tmp_path):
    assert run_cli(["predict", "x.nii.gz", "--no-such-option"], tmp_path).returncode == 2


# ---------------------------------------------------------------------------- predict


def test_predict_4d_cine(tmp_path, cine_file, tiny_weights_path, small_phantom):
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(cine_file), "-o", str(out), "--weights", str(tiny_weights_path), *FAST])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["cine_report.json", "cine_seg.nii.gz", "summary.csv"]

    seg = nib.load(str(out / "cine_seg.nii.gz"))
    assert seg.shape == small_phantom.image.shape and len(seg.shape) == 4
    assert np.allclose(seg.affine, nib.load(str(cine_file)).affine)
    assert seg.get_data_dtype() == np.uint8
    labels = np.asarray(seg.dataobj)
    assert labels.dtype == np.uint8 and labels.max() <= 3

    report = json.loads((out / "cine_report.json").read_text())
    for key in ("lv_edv_ml", "lv_esv_ml", "lv_sv_ml", "lv_ef_pct", "rv_edv_ml", "rv_ef_pct", "lv_mass_g",
                "ed_frame", "es_frame", "frames", "qc_flags", "label_map", "myo_density_g_ml", "weights",
                "versions", "device", "runtime_s"):  # fmt: skip
        assert key in report, key
    assert report["kind"] == "cine"
    assert report["weights"]["sha256"] == sha256_file(tiny_weights_path)
    assert report["weights"]["name"] == "tiny-test"
    assert report["device"] == "cpu" and report["precision"] == "fp32"
    assert report["label_map"] == {"background": 0, "rv": 1, "myo": 2, "lv": 3}
    assert report["myo_density_g_ml"] == 1.05
    assert len(report["frames"]) == 8
    # the report's numbers are those of the written mask
    voxel_ml = abs(np.linalg.det(seg.affine[:3, :3])) / 1000
    for t, frame in enumerate(report["frames"]):
        assert frame["frame"] == t
        assert frame["rv_ml"] == pytest.approx((labels[..., t] == 1).sum() * voxel_ml)
        assert frame["myo_ml"] == pytest.approx((labels[..., t] == 2).sum() * voxel_ml)
        assert frame["lv_ml"] == pytest.approx((labels[..., t] == 3).sum() * voxel_ml)
    lv = [f["lv_ml"] for f in report["frames"]]
    assert report["ed_frame"] == int(np.argmax(lv)) and report["es_frame"] == int(np.argmin(lv))
    ed_myo = report["frames"][report["ed_frame"]]["myo_ml"]
    assert report["lv_mass_g"] == pytest.approx(1.05 * ed_myo)
    edv, esv = report["lv_edv_ml"], report["lv_esv_ml"]
    assert edv == pytest.approx(max(lv)) and esv == pytest.approx(min(lv))
    if edv > 0:
        assert report["lv_ef_pct"] == pytest.approx((edv - esv) / edv * 100)
    else:  # EF is NaN, written as null, and flagged
        assert report["lv_ef_pct"] is None and "lv_not_found" in report["qc_flags"]

    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    assert rows[0]["study"] == "cine" and rows[0]["report"] == "cine_report.json"
    assert rows[0]["ed_frame"] == str(report["ed_frame"])


def test_predict_again_replaces_the_summary_row(tmp_path, cine_file, tiny_weights_path):
    out = tmp_path / "out"
    args = ["predict", str(cine_file), "-o", str(out), "--weights", str(tiny_weights_path), *FAST]
    assert runner.invoke(app, [*args, "--myo-density", "2.0"]).exit_code == 0
    first = json.loads((out / "cine_report.json").read_text())
    assert runner.invoke(app, args).exit_code == 0
    second = json.loads((out / "cine_report.json").read_text())
    assert second["lv_mass_g"] != first["lv_mass_g"]
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    assert rows[0]["lv_mass_g"] == f"{second['lv_mass_g']:.3f}"


def test_ed_es_frame_overrides_and_density(tmp_path, cine_file, tiny_weights_path):
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["predict", str(cine_file), "-o", str(out), "--weights", str(tiny_weights_path), *FAST,
         "--ed-frame", "2", "--es-frame", "5", "--myo-density", "1.06"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "cine_report.json").read_text())
    assert report["ed_frame"] == 2 and report["es_frame"] == 5
    assert report["myo_density_g_ml"] == 1.06
    assert report["lv_mass_g"] == pytest.approx(1.06 * report["frames"][2]["myo_ml"])
    assert report["rv_edv_ml"] == pytest.approx(report["frames"][2]["rv_ml"])
    assert report["rv_esv_ml"] == pytest.approx(report["frames"][5]["rv_ml"])


def test_predict_ed_es_pair(tmp_path, small_phantom, tiny_weights_path):
    ed = save_nifti(tmp_path / "in" / "case9_frame01.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    es = save_nifti(tmp_path / "in" / "case9_frame05.nii.gz", small_phantom.image[..., 4], small_phantom.affine)
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["predict", "--ed", str(ed), "--es", str(es), "-o", str(out), "--weights", str(tiny_weights_path), *FAST]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "case9_frame01_seg.nii.gz", "case9_frame05_seg.nii.gz", "case9_report.json", "summary.csv",
    ]  # fmt: skip
    for name in ("case9_frame01_seg.nii.gz", "case9_frame05_seg.nii.gz"):
        seg = nib.load(str(out / name))
        assert seg.shape == small_phantom.image.shape[:3]
        assert np.allclose(seg.affine, small_phantom.affine)
    report = json.loads((out / "case9_report.json").read_text())
    assert report["kind"] == "pair" and report["study"] == "case9"
    assert report["ed_frame"] == 0 and report["es_frame"] == 1 and len(report["frames"]) == 2
    assert report["lv_edv_ml"] == pytest.approx(report["frames"][0]["lv_ml"])
    assert report["lv_esv_ml"] == pytest.approx(report["frames"][1]["lv_ml"])


def test_predict_acdc_style_folder(tmp_path, small_phantom, tiny_weights_path):
    folder = tmp_path / "patient077"
    folder.mkdir()
    (folder / "Info.cfg").write_text("ED: 1\nES: 4\nGroup: NOR\nHeight: 180.0\nNbFrame: 8\nWeight: 80.0\n")
    save_nifti(folder / "patient077_frame01.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    save_nifti(folder / "patient077_frame04.nii.gz", small_phantom.image[..., 3], small_phantom.affine)
    save_nifti(folder / "patient077_frame01_gt.nii.gz", small_phantom.labels[..., 0], small_phantom.affine)
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(folder), "-o", str(out), "--weights", str(tiny_weights_path), *FAST])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "patient077_frame01_seg.nii.gz", "patient077_frame04_seg.nii.gz", "patient077_report.json", "summary.csv",
    ]  # fmt: skip
    report = json.loads((out / "patient077_report.json").read_text())
    assert report["kind"] == "pair"
    assert report["subject"] == {"height_cm": 180.0, "weight_kg": 80.0, "group": "NOR"}
    assert report["bsa_m2"] == pytest.approx(2.0)  # sqrt(180 * 80 / 3600)
    if report["lv_edv_ml"]:
        assert report["lv_edvi_ml_m2"] == pytest.approx(report["lv_edv_ml"] / 2.0)
    assert report["rv_edvi_ml_m2"] == pytest.approx(report["rv_edv_ml"] / 2.0)
    # command-line height/weight override Info.cfg
    out2 = tmp_path / "out2"
    result = runner.invoke(
        app,
        ["predict", str(folder), "-o", str(out2), "--weights", str(tiny_weights_path), *FAST,
         "--height-cm", "160", "--weight-kg", "90"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report2 = json.loads((out2 / "patient077_report.json").read_text())
    assert report2["bsa_m2"] == pytest.approx(2.0)  # sqrt(160 * 90 / 3600)
    assert report2["subject"]["height_cm"] == 160.0 and report2["subject"]["weight_kg"] == 90.0


# ---------------------------------------------------------------------------- failures


def test_missing_input_exit_1_one_line_no_outputs(tmp_path):
    out = tmp_path / "out"
    result = run_cli(["predict", str(tmp_path / "absent.nii.gz"), "-o", str(out)], tmp_path)
    assert result.returncode == 1
    assert_one_clean_error_line(result.stderr, "not found", "absent.nii.gz")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_corrupt_input_exit_1(tmp_path, tiny_weights_path):
    bad = tmp_path / "broken.nii.gz"
    good = save_nifti(tmp_path / "full.nii.gz", np.zeros((8, 8, 3), np.int16))
    bad.write_bytes(good.read_bytes()[:60])
    good.unlink()
    out = tmp_path / "out"
    result = run_cli(["predict", str(bad), "-o", str(out), "--weights", str(tiny_weights_path), *FAST], tmp_path)
    assert result.returncode == 1
    assert_one_clean_error_line(result.stderr, "broken")
    assert not (out / "broken_seg.nii.gz").exists() and not (out / "broken_report.json").exists()
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []


def test_ed_without_es_exit_1(tmp_path, small_phantom):
    ed = save_nifti(tmp_path / "p_frame01.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    result = run_cli(["predict", "--ed", str(ed), "-o", str(tmp_path / "out")], tmp_path)
    assert result.returncode == 1
    assert_one_clean_error_line(result.stderr, "--es")
    assert not (tmp_path / "out").exists()


def test_ed_frame_out_of_range_exit_1_leaves_nothing(tmp_path, cine_file, tiny_weights_path):
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["predict", str(cine_file), "-o", str(out), "--weights", str(tiny_weights_path), *FAST, "--ed-frame", "99"]
    )
    assert result.exit_code == 1
    assert "99" in result.stderr and "Traceback" not in result.stderr
    assert not (out / "cine_seg.nii.gz").exists()
    assert not (out / "cine_report.json").exists()
    assert not out.exists() or not any(p.name.startswith(("cine", ".cine")) for p in out.iterdir())


def test_a_failing_study_does_not_stop_the_others(tmp_path, small_phantom, tiny_weights_path):
    good = save_nifti(tmp_path / "in" / "good.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    bad = tmp_path / "in" / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b garbage")
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["predict", str(bad), str(good), "-o", str(out), "--weights", str(tiny_weights_path), *FAST]
    )
    assert result.exit_code == 1
    assert "bad" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["good_report.json", "good_seg.nii.gz", "summary.csv"]
    report = json.loads((out / "good_report.json").read_text())
    assert report["kind"] == "frame" and report["ed_frame"] is None and "lv_ml" in report


def test_bad_weights_exit_1(tmp_path, cine_file):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"nope")
    result = runner.invoke(app, ["predict", str(cine_file), "-o", str(tmp_path / "out"), "--weights", str(junk), *FAST])
    assert result.exit_code == 1
    assert "junk.pt" in result.stderr
    assert not (tmp_path / "out").exists()


def test_duplicate_study_names_exit_1(tmp_path, small_phantom):
    a = save_nifti(tmp_path / "a" / "x.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    b = save_nifti(tmp_path / "b" / "x.nii", small_phantom.image[..., 0], small_phantom.affine)
    result = runner.invoke(app, ["predict", str(a), str(b), "-o", str(tmp_path / "out"), *FAST])
    assert result.exit_code == 1 and "x" in result.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- ensembles


@pytest.fixture(scope="module")
def second_weights_path(tmp_path_factory) -> Path:
    return export_tiny_weights(tmp_path_factory.mktemp("weights_b") / "tiny_b.pt", seed=1)


def test_predict_ensemble_mean(tmp_path, small_phantom, tiny_weights_path, second_weights_path):
    from cardioseg.ensemble import Ensemble
    from cardioseg.inference import PredictOptions
    from cardioseg.weights import load_weights

    frame = save_nifti(tmp_path / "in" / "frame.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["predict", str(frame), "-o", str(out), "--weights", str(tiny_weights_path),
         "--weights", str(second_weights_path), "--ensemble", "mean", *FAST],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    seg = nib.load(str(out / "frame_seg.nii.gz"))
    assert seg.shape == small_phantom.image.shape[:3]
    assert np.allclose(seg.affine, nib.load(str(frame)).affine)
    members = [load_weights(tiny_weights_path), load_weights(second_weights_path)]
    expected = Ensemble(members, PredictOptions(device="cpu", precision="fp32", ensemble="mean"))
    assert np.array_equal(np.asarray(seg.dataobj), expected.predict(small_phantom.image[..., 0], small_phantom.affine))

    report = json.loads((out / "frame_report.json").read_text())
    assert report["weights"]["ensemble"] == "mean"
    shas = [sha256_file(tiny_weights_path), sha256_file(second_weights_path)]
    assert [m["sha256"] for m in report["weights"]["members"]] == shas
    assert report["weights"]["name"] == "tiny-test+tiny-test"
    with open(out / "summary.csv", newline="") as f:
        assert [r["study"] for r in csv.DictReader(f)] == ["frame"]


def test_predict_ensemble_bogus_mode_exit_2(tmp_path, cine_file, tiny_weights_path, second_weights_path):
    args = ["predict", str(cine_file), "-o", str(tmp_path / "out"), "--weights", str(tiny_weights_path),
            "--weights", str(second_weights_path), "--ensemble", "bogus", *FAST]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "vote" in result.output and "mean" in result.output
    assert not (tmp_path / "out").exists()


def test_predict_ensemble_label_map_mismatch_exit_1(tmp_path, cine_file, tiny_weights_path):
    import torch

    ckpt = torch.load(tiny_weights_path, weights_only=True)
    ckpt.update(name="tiny-mnms", label_map={"background": 0, "rv": 3, "myo": 2, "lv": 1}, label_map_name="mnms")
    mnms = tmp_path / "mnms.pt"
    torch.save(ckpt, mnms)
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["predict", str(cine_file), "-o", str(out), "-w", str(tiny_weights_path), "-w", str(mnms), *FAST]
    )
    assert result.exit_code == 1
    assert "label map" in result.stderr and "tiny-test" in result.stderr and "tiny-mnms" in result.stderr
    assert not out.exists()


def test_values_near_the_float32_maximum_normalise_without_a_numpy_warning():
    import warnings

    from cardioseg.preprocess import normalize_intensity

    data = np.full((32, 32, 3), 3.0e38, np.float32)
    data[4:20, 4:20] = 1.0e38
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        norm, _ = normalize_intensity(data)
    assert np.all(np.isfinite(norm)) and abs(float(norm.std()) - 1) < 1e-3


def test_library_warnings_are_one_cardioseg_line_each(capsys):
    from cardioseg.cli import _SEEN_WARNINGS, _one_line_warning

    _SEEN_WARNINGS.clear()
    for _ in range(2):
        _one_line_warning(RuntimeWarning("overflow encountered\n in reduce"), RuntimeWarning,
                          "/venv/lib/site-packages/numpy/_core/_methods.py", 52)  # fmt: skip
    assert capsys.readouterr().err == "cardioseg: warning: RuntimeWarning from numpy: overflow encountered in reduce\n"


def test_the_results_table_fits_80_columns_marks_flagged_values_and_shows_a_frame(monkeypatch, capsys, tmp_path):
    from cardioseg.batch import Study, StudyKind, StudyResult
    from cardioseg.console import print_predict_results

    monkeypatch.setenv("COLUMNS", "80")
    cine = {"study": "patient_with_a_long_name", "kind": "cine", "ed_frame": 0, "es_frame": 9, "lv_edv_ml": 150.0,
            "lv_esv_ml": 0.0, "lv_ef_pct": 100.0, "rv_edv_ml": 140.0, "rv_ef_pct": 50.0, "lv_mass_g": 120.0,
            "qc_flags": ["lv_ef_implausible", "low_tta_agreement", "rv_not_bordering_lv"]}  # fmt: skip
    frame = {"study": "one", "kind": "frame", "ed_frame": None, "es_frame": None, "qc_flags": [],
             "frames": [{"frame": 0, "lv_ml": 90.5, "rv_ml": 80.0, "myo_ml": 100.0}], "myo_density_g_ml": 1.05}  # fmt: skip
    results = [StudyResult(Study(r["study"], StudyKind.SINGLE, (tmp_path / "x.nii.gz",)), report=r) for r in (cine, frame)]
    print_predict_results(results, tmp_path)
    text = capsys.readouterr().out
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "100.0!" in text and all(code in text for code in cine["qc_flags"])
    row = next(line for line in text.splitlines() if line.strip().startswith("one"))
    assert row.split()[1:] == ["frame", "90.5", "-", "-", "80.0", "-", "105.0", "ok"]
