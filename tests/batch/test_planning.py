"""Planning: command-line inputs (files, folders, DICOM series, patient folders, glob patterns)
expanded into studies with cheap checks only, and the usage errors found before anything runs."""

from __future__ import annotations

import numpy as np
import pytest
from batch.helpers import FAST, error_lines, names, patient_folder, runner, summary_studies, write_series
from conftest import save_nifti

import cardioseg.batch.run
from cardioseg.batch import Study, StudyKind, check_output_name, folder_contents, plan_studies
from cardioseg.cli import app
from cardioseg.errors import ConfigError, InputFileNotFoundError


def test_glob_patterns_are_expanded_sorted_and_recursive(frames, small_phantom):
    save_nifti(frames / "deep" / "er" / "d_4d.nii.gz", small_phantom.image, small_phantom.affine)
    assert names(plan_studies([frames / "*.nii.gz"], None, None)) == ["a", "b", "c"]  # masks skipped
    assert names(plan_studies([frames / "**" / "*.nii.gz"], None, None)) == ["a", "b", "c", "d_4d"]
    assert names(plan_studies([frames / "**" / "*_4d.nii.gz"], None, None)) == ["d_4d"]
    assert names(plan_studies([frames / "[bc].nii.gz"], None, None)) == ["b", "c"]
    # a pattern and a folder reaching the same files give each study once
    assert names(plan_studies([frames / "c.nii.gz", frames, frames / "?.nii.gz"], None, None)) == ["c", "a", "b"]
    with pytest.raises(InputFileNotFoundError, match="matches nothing"):
        plan_studies([frames / "*.nii.xz"], None, None)
    with pytest.raises(InputFileNotFoundError, match="masks"):
        plan_studies([frames / "*_seg.nii.gz"], None, None)


def test_pattern_matching_nothing_exit_1_one_line(tmp_path, frames):
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(frames / "*.dcm"), "-o", str(out), *FAST])
    assert result.exit_code == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "matches nothing" in lines[0] and "*.dcm" in lines[0]
    assert not out.exists()


def test_folder_of_niftis(frames):
    assert folder_contents(frames) == [frames / "a.nii.gz", frames / "b.nii.gz", frames / "c.nii.gz"]
    studies = plan_studies([frames], None, None)
    assert names(studies) == ["a", "b", "c"] and {s.kind for s in studies} == {StudyKind.SINGLE}


def test_folder_of_patient_folders(tmp_path, small_phantom):
    root = tmp_path / "acdc"
    patient_folder(root, "patient002", small_phantom, cine=True)
    patient_folder(root, "patient001", small_phantom)
    (root / "MANDATORY_CITATION.md").write_text("cite")
    (root / "empty_dir").mkdir()
    studies = plan_studies([root], None, None)
    assert names(studies) == ["patient001", "patient002"]
    assert [s.kind for s in studies] == [StudyKind.PAIR, StudyKind.CINE]
    assert studies[1].ed_frame == 0 and studies[1].es_frame == 2 and studies[0].group == "NOR"
    assert studies[0].ed_frame is None and studies[0].height_cm == 170.0 and studies[1].weight_kg == 70.0
    # a patient folder itself stays one study
    assert names(plan_studies([root / "patient001"], None, None)) == ["patient001"]


def test_ed_es_options_make_one_pair(tmp_path, small_phantom):
    ed = save_nifti(tmp_path / "x_ed.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    es = save_nifti(tmp_path / "x_es.nii.gz", small_phantom.image[..., 2], small_phantom.affine)
    [study] = plan_studies([], ed, es, "subject7")
    assert (study.name, study.kind, study.paths) == ("subject7", StudyKind.PAIR, (ed, es))
    with pytest.raises(ConfigError, match="go together"):
        plan_studies([], ed, None)


def test_study_kind_is_a_string_enum():
    assert [k.value for k in StudyKind] == ["frame", "cine", "pair", "single"]
    assert StudyKind.CINE == "cine" and f"{StudyKind.PAIR}" == "pair" and str(StudyKind.FRAME) == "frame"
    assert Study("x", "cine", ()).kind is StudyKind.CINE  # type: ignore[arg-type]  # a plain string is coerced
    with pytest.raises(ValueError):
        Study("x", "movie", ())  # type: ignore[arg-type]


def test_dicom_series_folder_stays_one_study(tmp_path, small_phantom):
    data = np.clip(small_phantom.image[..., :2], 0, 4000).astype(np.int16)
    series = tmp_path / "dicom" / "sax"
    write_series(series, data)
    assert folder_contents(series) is None
    assert [(s.name, s.paths) for s in plan_studies([series], None, None)] == [("sax", (series,))]
    # a study folder whose only content is one series sub-folder is that study too; "dicom" says
    # nothing, so the study is named from the header: PatientID and SeriesNumber
    assert [(s.name, s.paths) for s in plan_studies([tmp_path / "dicom"], None, None)] == [
        ("PHANTOM_s5", (tmp_path / "dicom",))]
    # ... but a folder of several series folders (and images) is a batch of them
    write_series(tmp_path / "dicom" / "sax2" / "nested", data)
    save_nifti(tmp_path / "dicom" / "frame.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    studies = plan_studies([tmp_path / "dicom"], None, None)
    assert [(s.name, s.paths[0].name) for s in studies] == [("frame", "frame.nii.gz"), ("sax", "sax"), ("sax2", "sax2")]


def test_what_a_folder_expansion_leaves_out_is_noted(tmp_path, small_phantom, frames, tiny_weights_path):
    """A NIfTI beside a DICOM series, masks, and folders holding no study are named; notes are not."""
    data = np.clip(small_phantom.image[..., :2], 0, 4000).astype(np.int16)
    sunny = tmp_path / "sunnybrook"
    write_series(sunny, data)
    save_nifti(sunny / "cine4d.nii.gz", small_phantom.image, small_phantom.affine)
    notes: list[str] = []
    assert names(plan_studies([sunny], None, None, notes=notes)) == ["sunnybrook"]
    assert notes == [(f"{sunny}: not segmented: cine4d.nii.gz (beside a DICOM series, which is one study; "
                     "give it as an input of its own)")]  # fmt: skip
    (frames / "deeper" / "x").mkdir(parents=True)
    notes = []
    assert names(plan_studies([frames], None, None, notes=notes)) == ["a", "b", "c"]
    assert notes == [(f"{frames}: not segmented: 2 masks (*_seg, *_gt: a_seg.nii.gz, b_gt.nii); deeper/ (not a study "
                     f'here; give it as an input of its own, or a pattern such as "{frames}/**/*.nii.gz")')]  # fmt: skip
    clean = tmp_path / "clean"
    save_nifti(clean / "z.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    (clean / "README.md").write_text("notes are not studies and not worth a note")
    notes = []
    plan_studies([clean, frames / "a.nii.gz"], None, None, notes=notes)
    assert notes == []
    result = runner.invoke(app, ["predict", str(sunny), "-o", str(tmp_path / "out"), "-w", str(tiny_weights_path),
                                 "--device", "cpu", "--dry-run"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "not segmented: cine4d.nii.gz" in " ".join(result.stderr.split())


def test_generic_dicom_folders_are_named_from_their_headers_and_never_collide(tmp_path, small_phantom):
    data = np.clip(small_phantom.image[..., :2], 0, 4000).astype(np.int16)
    for site in ("site1", "site2"):
        write_series(tmp_path / site / "DICOM", data)
    write_series(tmp_path / "series1", data)
    write_series(tmp_path / "patient_a_sax", data)
    studies = plan_studies([tmp_path / "site1" / "DICOM", tmp_path / "site2" / "DICOM", tmp_path / "series1",
                            tmp_path / "patient_a_sax"], None, None)  # fmt: skip
    assert names(studies) == ["PHANTOM_s5", "PHANTOM_s5-2", "PHANTOM_s5-3", "patient_a_sax"]
    from cardioseg.batch import output_paths

    masks = [output_paths(s, tmp_path / "out")[0].name for s in studies]
    assert masks == ["PHANTOM_s5_seg.nii.gz", "PHANTOM_s5-2_seg.nii.gz", "PHANTOM_s5-3_seg.nii.gz", "patient_a_sax_seg.nii.gz"]


def test_planning_reads_no_image(frames, monkeypatch):
    import nibabel as nib

    monkeypatch.setattr(nib, "load", lambda *a, **k: pytest.fail("an image was opened while planning"))
    monkeypatch.setattr(cardioseg.batch.run, "read_volume", lambda *a, **k: pytest.fail("an image was read while planning"))
    assert len(plan_studies([frames, frames / "*.nii.gz"], None, None)) == 3


def test_two_inputs_with_the_same_outputs_exit_1(tmp_path, small_phantom):
    for sub in ("site1", "site2"):
        save_nifti(tmp_path / "data" / sub / "x.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(tmp_path / "data" / "*" / "x.nii.gz"), "-o", str(out), *FAST])
    assert result.exit_code == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "same output" in lines[0] and "site1" in lines[0] and "site2" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", "-x", "nul\0"])
def test_study_names_that_would_escape_the_output_folder(name):
    with pytest.raises(ConfigError, match="--study NAME"):
        check_output_name(name)


def test_a_broken_patient_folder_in_a_batch_fails_alone(tmp_path, small_phantom, tiny_weights_path):
    root = tmp_path / "acdc"
    patient_folder(root, "patient001", small_phantom)
    broken = patient_folder(root, "patient002", small_phantom)
    (broken / "patient002_frame03.nii.gz").unlink()
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(root), "-o", str(out), "-w", str(tiny_weights_path), *FAST])
    assert result.exit_code == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("cardioseg: error: patient002:") and "missing" in lines[0]
    assert summary_studies(out) == ["patient001"]
    # named on its own, the same folder is a usage error before anything runs
    result = runner.invoke(app, ["predict", str(broken), "-o", str(tmp_path / "out2"), *FAST])
    assert result.exit_code == 1 and not (tmp_path / "out2").exists()
