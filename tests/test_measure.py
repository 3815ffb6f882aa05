"""``cardioseg measure``: the clinical report of existing masks (pairs, cines, ACDC folders,
predict output folders, other label conventions), frame intervals and filling/ejection rates,
the errors for inputs that are not masks, and no torch import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from batch.helpers import error_lines
from conftest import save_nifti
from typer.testing import CliRunner

from cardioseg.batch.masks import mask_study_name, plan_mask_studies
from cardioseg.batch.studies import StudyKind
from cardioseg.cli import app
from cardioseg.clinical import cine_rates, clinical_measures, frame_volumes
from cardioseg.errors import ConfigError
from cardioseg.io import read_volume
from cardioseg.io.dicom import trigger_interval_ms
from cardioseg.labels import ACDC, MNMS

runner = CliRunner()


def measure(*args: object):
    return runner.invoke(app, ["measure", *(str(a) for a in args)])


def report(out: Path, study: str) -> dict:
    return json.loads((out / f"{study}_report.json").read_text())


def expected(ed: np.ndarray, es: np.ndarray, voxel_ml: float) -> dict:
    return clinical_measures(frame_volumes(ed, voxel_ml, ACDC), frame_volumes(es, voxel_ml, ACDC))


def save_cine(path: Path, labels: np.ndarray, affine: np.ndarray, interval: float | None, unit: str = "msec") -> Path:
    img = nib.Nifti1Image(labels.astype(np.uint8), affine)
    if interval is not None:
        zooms = img.header.get_zooms()
        img.header.set_zooms((*zooms[:3], interval))
        img.header.set_xyzt_units("mm", unit)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def test_pair_matches_the_clinical_numbers_of_its_voxels(tmp_path, small_phantom):
    p = small_phantom
    ed, es = p.labels[..., p.ed_frame], p.labels[..., p.es_frame]
    a = save_nifti(tmp_path / "in" / "case_ED_gt.nii.gz", ed, p.affine)
    b = save_nifti(tmp_path / "in" / "case_ES_gt.nii.gz", es, p.affine)
    out = tmp_path / "out"
    result = measure("--ed", a, "--es", b, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    rep = report(out, "case")
    want = expected(ed, es, p.voxel_volume_ml)
    for key in ("lv_edv_ml", "lv_esv_ml", "lv_ef_pct", "rv_ef_pct", "lv_mass_g"):
        assert rep[key] == pytest.approx(want[key], rel=1e-12), key
    assert rep["kind"] == "pair" and rep["weights"]["name"].startswith("masks given")
    assert rep["masks"] == [str(a), str(b)] and "reader_warning" not in rep["qc_flags"]  # a mask is no surprise here
    assert (out / "summary.csv").read_text().splitlines()[1].startswith("case,")
    # a folder of X_ED / X_ES masks pairs them up, with the same numbers
    result = measure(tmp_path / "in", "-o", tmp_path / "out2", "-q")
    assert result.exit_code == 0, result.output
    assert report(tmp_path / "out2", "case")["lv_ef_pct"] == rep["lv_ef_pct"]


def test_cine_mask_with_a_frame_interval_gives_filling_and_ejection_rates(tmp_path, small_phantom):
    p = small_phantom
    path = save_cine(tmp_path / "cine_seg.nii.gz", p.labels, p.affine, interval=40.0)
    out = tmp_path / "out"
    result = measure(path, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    rep = report(out, "cine")
    lv = [frame_volumes(p.labels[..., t], p.voxel_volume_ml, ACDC).lv_ml for t in range(p.labels.shape[3])]
    assert rep["kind"] == "cine" and (rep["ed_frame"], rep["es_frame"]) == (int(np.argmax(lv)), int(np.argmin(lv)))
    want = cine_rates(lv, rep["ed_frame"], rep["es_frame"], 40.0)
    assert rep["lv_peak_filling_rate_ml_s"] == pytest.approx(want["lv_peak_filling_rate_ml_s"])
    assert rep["lv_peak_ejection_rate_ml_s"] > 0 and rep["frame_interval_ms"] == 40.0
    assert rep["warnings"] == []
    # seconds as the unit: the same rates
    save_cine(tmp_path / "s" / "cine_seg.nii.gz", p.labels, p.affine, interval=0.04, unit="sec")
    measure(tmp_path / "s" / "cine_seg.nii.gz", "-o", tmp_path / "out_s", "-q")
    assert report(tmp_path / "out_s", "cine")["lv_peak_filling_rate_ml_s"] == pytest.approx(rep["lv_peak_filling_rate_ml_s"])
    # no time unit (ACDC's placeholder): rates left out, with a warning that says why
    save_cine(tmp_path / "u" / "cine_seg.nii.gz", p.labels, p.affine, interval=1.0, unit="unknown")
    result = measure(tmp_path / "u" / "cine_seg.nii.gz", "-o", tmp_path / "out_u", "-q")
    assert result.exit_code == 0
    assert "peak ejection and filling rates left out: the NIfTI header gives no time unit" in result.stderr
    assert "lv_peak_filling_rate_ml_s" not in report(tmp_path / "out_u", "cine")


def test_cine_rates_analytic():
    # V = 100 + 50 cos(2 pi t / 8) sampled at 8 frames, 50 ms apart: the steepest steps are known
    t = np.arange(8)
    v = 100 + 50 * np.cos(2 * np.pi * t / 8)
    r = cine_rates(v.tolist(), ed=0, es=4, interval_ms=50.0)
    step = 50 * (np.cos(np.pi / 4) - np.cos(np.pi / 2))  # largest fall between two frames in systole
    assert r["lv_peak_ejection_rate_ml_s"] == pytest.approx(step / 0.05)
    assert r["lv_peak_filling_rate_ml_s"] == pytest.approx(step / 0.05)
    steep = cine_rates([150, 140, 110, 80, 60, 75, 120, 140], ed=0, es=4, interval_ms=50.0)
    assert steep["lv_time_to_peak_filling_ms"] == 75.0  # ES (frame 4) to the middle of the steepest rise, frames 5-6
    assert steep["lv_peak_filling_rate_ml_s"] == 900.0 and steep["lv_peak_ejection_rate_ml_s"] == 600.0
    assert r["lv_pfr_edv_per_s"] == pytest.approx(step / 0.05 / 150.0)
    wrapped = cine_rates(np.roll(v, 3).tolist(), ed=3, es=7, interval_ms=50.0)  # ED mid-cine: diastole wraps
    assert wrapped["lv_peak_filling_rate_ml_s"] == pytest.approx(r["lv_peak_filling_rate_ml_s"])
    with pytest.raises(ConfigError):
        cine_rates(v.tolist(), 0, 4, 0.0)


def test_frame_intervals_from_headers(tmp_path, small_phantom):
    p = small_phantom
    assert read_volume(save_cine(tmp_path / "a.nii.gz", p.labels, p.affine, 33.0)).meta.frame_interval_ms == 33.0
    assert read_volume(save_cine(tmp_path / "b.nii.gz", p.labels, p.affine, 0.033, "sec")).meta.frame_interval_ms == pytest.approx(33.0)
    unknown = read_volume(save_cine(tmp_path / "c.nii.gz", p.labels, p.affine, 1.0, "unknown")).meta
    assert unknown.frame_interval_ms is None and "no time unit" in (unknown.frame_interval_problem or "")
    assert read_volume(save_nifti(tmp_path / "d.nii.gz", p.labels[..., 0], p.affine)).meta.frame_interval_problem is None
    assert trigger_interval_ms([0.0, 30.0, 60.0]) == (30.0, None)
    assert trigger_interval_ms([0.0, None, 60.0])[0] is None
    assert trigger_interval_ms([0.0, 30.0, 30.0])[1] == "the DICOM TriggerTimes do not increase from phase to phase"


def test_acdc_folder_and_a_predict_output_folder(tmp_path, small_phantom):
    p = small_phantom
    folder = tmp_path / "acdc" / "patient007"
    folder.mkdir(parents=True)
    (folder / "Info.cfg").write_text("ED: 1\nES: 5\nGroup: HCM\nHeight: 180\nWeight: 80\n")
    save_nifti(folder / "patient007_frame01.nii.gz", p.image[..., 0], p.affine)  # images beside are not measured
    save_nifti(folder / "patient007_frame01_gt.nii.gz", p.labels[..., 0], p.affine)
    save_nifti(folder / "patient007_frame05_gt.nii.gz", p.labels[..., 4], p.affine)
    [study] = plan_mask_studies([tmp_path / "acdc"])
    assert study.kind is StudyKind.PAIR and [q.name for q in study.paths] == ["patient007_frame01_gt.nii.gz",
                                                                                "patient007_frame05_gt.nii.gz"]  # fmt: skip
    out = tmp_path / "out"
    assert measure(tmp_path / "acdc", "-o", out, "-q").exit_code == 0
    rep = report(out, "patient007")
    assert rep["subject"] == {"height_cm": 180.0, "weight_kg": 80.0, "group": "HCM"} and rep["bsa_m2"] == pytest.approx(2.0)
    assert rep["lv_ef_pct"] == pytest.approx(expected(p.labels[..., 0], p.labels[..., 4], p.voxel_volume_ml)["lv_ef_pct"])
    # a folder with cardioseg reports: one study per report, its masks re-measured (say, after an edit)
    pred = tmp_path / "pred"
    pred.mkdir()
    for name, t in (("patient007_frame01_seg.nii.gz", 0), ("patient007_frame05_seg.nii.gz", 4)):
        save_nifti(pred / name, p.labels[..., t], p.affine)
    edited = rep | {"masks": ["patient007_frame01_seg.nii.gz", "patient007_frame05_seg.nii.gz"]}
    (pred / "patient007_report.json").write_text(json.dumps(edited))
    assert measure(pred, "-o", tmp_path / "again", "-q").exit_code == 0
    again = report(tmp_path / "again", "patient007")
    assert again["lv_ef_pct"] == rep["lv_ef_pct"] and again["subject"]["group"] == "HCM"
    # measuring into the folder of the masks would replace the report that lists them
    result = measure(pred, "-o", pred, "-q")
    assert result.exit_code == 1 and "is the report of the masks being measured" in result.stderr


def test_other_label_conventions(tmp_path, small_phantom):
    p = small_phantom
    acdc = p.labels[..., 0]
    mnms = np.where(acdc == 1, MNMS.rv, np.where(acdc == 3, MNMS.lv, acdc)).astype(np.uint8)
    path = save_nifti(tmp_path / "x_seg.nii.gz", mnms, p.affine)
    assert measure(path, "-o", tmp_path / "a", "-q", "--labels", "mnms").exit_code == 0
    rep = report(tmp_path / "a", "x")
    truth = frame_volumes(acdc, p.voxel_volume_ml, ACDC)
    assert rep["frames"][0]["lv_ml"] == pytest.approx(truth.lv_ml) and rep["label_map"] == MNMS.as_dict()


@pytest.mark.parametrize(
    ("data", "needle"),
    [(lambda p: p.image[..., 0], "distinct values: an image, not a label map"),
     (lambda p: np.where(p.labels[..., 0] == 3, 4, p.labels[..., 0]), "label values [4] outside the acdc label map"),
     (lambda p: p.labels[..., 0] + 0.5, "not a label map (it has non-integer values)")],
)  # fmt: skip
def test_inputs_that_are_not_masks_fail_in_one_line_and_others_go_on(tmp_path, small_phantom, data, needle):
    p = small_phantom
    save_nifti(tmp_path / "in" / "bad.nii.gz", np.asarray(data(p)), p.affine)
    save_nifti(tmp_path / "in" / "good_seg.nii.gz", p.labels[..., 0], p.affine)
    result = measure(tmp_path / "in", "-o", tmp_path / "out", "-q")
    assert result.exit_code == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("cardioseg: error: bad: ") and needle in lines[0], result.stderr
    assert (tmp_path / "out" / "good_report.json").is_file() and not (tmp_path / "out" / "bad_report.json").exists()


def test_usage_errors(tmp_path, small_phantom):
    assert "give masks to measure" in measure("-o", tmp_path / "o").stderr
    assert 'File not found: "' in measure(tmp_path / "nowhere.nii.gz", "-o", tmp_path / "o").stderr
    assert "--ed and --es go together" in measure("--ed", tmp_path / "a.nii.gz", "-o", tmp_path / "o").stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no masks" in measure(empty, "-o", tmp_path / "o").stderr
    assert not (tmp_path / "o").exists()
    assert mask_study_name(Path("a_gt.nii")) == "a" and mask_study_name(Path("_seg.nii.gz")) == "_seg"


def test_measure_never_imports_torch(tmp_path, small_phantom):
    path = save_nifti(tmp_path / "m_seg.nii.gz", small_phantom.labels[..., 0], small_phantom.affine)
    code = (
        "import sys\n"
        "from cardioseg.cli import app\n"
        f"try:\n    app(['measure', {str(path)!r}, '-o', {str(tmp_path / 'out')!r}, '-q'])\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False" and (tmp_path / "out" / "m_report.json").is_file()


def test_html_page_beside_the_summary(tmp_path, small_phantom):
    p = small_phantom
    for name, t in (("a_seg", 0), ("b_seg", 4)):
        save_nifti(tmp_path / "in" / f"{name}.nii.gz", p.labels[..., t], p.affine)
    out = tmp_path / "out"
    assert measure(tmp_path / "in", "-o", out, "-q").exit_code == 0
    assert not (out / "report.html").exists()  # only when asked for
    assert measure(tmp_path / "in", "-o", out, "-q", "--html").exit_code == 0
    page = (out / "report.html").read_text()
    assert 'href="./a_report.json"' in page and 'href="./b_report.json"' in page


def test_reports_say_where_they_came_from(tmp_path, small_phantom):
    """Provenance: UTC time, version, the command line, each input's identity, ED/ES as files
    of a pair and as frame plus trigger time of a DICOM cine."""
    from dicom_writer import write_dicom_series

    from cardioseg.report import provenance

    p = small_phantom
    a = save_nifti(tmp_path / "x_ED_seg.nii.gz", p.labels[..., 0], p.affine)
    b = save_nifti(tmp_path / "x_ES_seg.nii.gz", p.labels[..., 4], p.affine)
    assert measure("--ed", a, "--es", b, "-o", tmp_path / "out", "-q").exit_code == 0
    prov = report(tmp_path / "out", "x")["provenance"]
    assert prov["ed"] == {"file": "x_ED_seg.nii.gz"} and prov["es"] == {"file": "x_ES_seg.nii.gz"}
    assert prov["command"].startswith("cardioseg ") and prov["cardioseg"] and prov["created_utc"].endswith("Z")
    assert [i["file"] for i in prov["inputs"]] == ["x_ED_seg.nii.gz", "x_ES_seg.nii.gz"]
    assert prov["inputs"][0]["format"] == "nifti" and "patient_id" not in prov["inputs"][0]
    series = tmp_path / "dicom"
    write_dicom_series(series, np.clip(p.image[..., :3], 0, 4000).astype(np.int16), trigger_times_ms=(0.0, 40.0, 80.0),
                       extra_tags={"0010|0020": "PAT-7", "0020|000d": "1.2.3.4", "0018|1088": "72"})  # fmt: skip
    vol = read_volume(series)
    info = provenance([vol], "cine", 0, 2, None)
    assert info["inputs"][0]["patient_id"] == "PAT-7" and info["inputs"][0]["format"] == "dicom"
    assert info["inputs"][0]["study_uid"] == "1.2.3.4" and info["inputs"][0]["heart_rate_bpm"] == 72.0
    assert info["inputs"][0]["series_number"] == 5 and info["inputs"][0]["frame_interval_ms"] == 40.0
    assert info["es"] == {"frame": 2, "trigger_time_ms": 80.0}


def test_regional_wall_thickness_in_the_report_and_its_bullseye(tmp_path, small_phantom):
    pytest.importorskip("matplotlib")
    p = small_phantom
    a = save_nifti(tmp_path / "y_ED_seg.nii.gz", p.labels[..., p.ed_frame], p.affine)
    b = save_nifti(tmp_path / "y_ES_seg.nii.gz", p.labels[..., p.es_frame], p.affine)
    out = tmp_path / "out"
    assert measure("--ed", a, "--es", b, "-o", out, "-q", "--overlay").exit_code == 0
    rep = report(out, "y")
    assert set(rep["aha_wall_thickness_ed_mm"]) == {str(k) for k in range(1, 17)}
    assert set(rep["aha_thickening_pct"]) == {str(k) for k in range(1, 17)}
    assert rep["lv_max_wall_thickness_mm"] > 0 and 1 <= rep["lv_max_wall_thickness_segment"] <= 16
    assert (out / "y_bullseye.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    frame = save_nifti(tmp_path / "z_seg.nii.gz", p.labels[..., 0], p.affine)  # one frame: no thickening
    assert measure(frame, "-o", out, "-q").exit_code == 0
    assert "ES" in (report(out, "z")["wall_thickness_problem"] or "")
    assert not (out / "z_bullseye.png").exists()  # no --overlay this time


def test_a_failing_wall_measurement_leaves_the_rest_of_the_report(tmp_path, small_phantom, monkeypatch):
    import cardioseg.wall

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the wall code")

    monkeypatch.setattr(cardioseg.wall, "frame_wall_thickness", broken)
    p = small_phantom
    path = save_nifti(tmp_path / "w_seg.nii.gz", p.labels[..., 0], p.affine)
    result = measure(path, "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0 and "the wall thickness could not be measured (RuntimeError" in result.stderr
    rep = report(tmp_path / "out", "w")
    assert rep["lv_ml"] > 0 and "a bug in the wall code" in rep["wall_thickness_problem"]
