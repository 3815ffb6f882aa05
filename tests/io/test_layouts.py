"""Dataset layouts and naming: image suffixes, mask names, ACDC folders and Info.cfg, ED/ES study names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import save_nifti

from cardioseg.errors import InputFileNotFoundError, UnreadableInputError, UnsupportedInputError
from cardioseg.io import (
    MASK_STEM_SUFFIXES,
    PRED_SUFFIXES,
    REF_SUFFIXES,
    PatientInfo,
    is_image_name,
    is_patient_folder,
    looks_like_mask,
    read_info_cfg,
    read_patient_folder,
    strip_image_suffix,
    study_name,
)
from cardioseg.io.layouts import FRAME_NUMBER_RE, PHASE_SUFFIX_RE, acdc_frame_file

INFO = "ED: 1\nES: 12\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n"


def _rng_image(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 2000, size=shape).astype(np.int16)


# ---------------------------------------------------------------------------- names


def test_strip_image_suffix():
    assert strip_image_suffix("x.nii.gz") == "x"
    assert strip_image_suffix("x.NII") == "x"
    assert strip_image_suffix("x.png") == "x.png"


def test_image_and_mask_names():
    assert is_image_name("a.nii") and is_image_name("A.NII.GZ")
    assert not is_image_name(".a.nii.gz") and not is_image_name("a.png")
    assert MASK_STEM_SUFFIXES == ("_seg", "_gt")
    assert looks_like_mask("x_seg.nii.gz") and looks_like_mask("x_GT.nii") and not looks_like_mask("x_4d.nii.gz")
    assert PRED_SUFFIXES == ("_seg", "_pred", "") and REF_SUFFIXES == ("_gt", "_seg", "_label", "")


def test_study_name():
    assert study_name(Path("patient001_frame01.nii.gz"), Path("patient001_frame12.nii.gz")) == "patient001"
    assert study_name(Path("/x/case7_ed.nii"), Path("/x/case7_es.nii")) == "case7"
    assert study_name(Path("001_SA_ED.nii.gz"), Path("001_SA_ES.nii.gz")) == "001_SA"
    assert study_name(Path("sub-01_frame03.nii"), Path("sub-01_frame04.nii")) == "sub-01"
    assert study_name(Path("a.nii.gz"), Path("b.nii.gz")) == "study"


def test_frame_number_and_phase_patterns():
    m = FRAME_NUMBER_RE.match("patient001_frame12")
    assert m and m.group("study", "n") == ("patient001", "12")
    m = PHASE_SUFFIX_RE.match("case7_ed")
    assert m and m.group("study", "phase") == ("case7", "ed")
    assert PHASE_SUFFIX_RE.match("case7") is None


# ---------------------------------------------------------------------------- Info.cfg


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


# ---------------------------------------------------------------------------- ACDC folders


def _patient_folder(root: Path, name="patient042", frames=(1, 12), cine=False, suffix=".nii.gz") -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "Info.cfg").write_text(INFO)
    for f in frames:
        save_nifti(folder / f"{name}_frame{f:02d}{suffix}", _rng_image((6, 6, 3), seed=f))
        save_nifti(folder / f"{name}_frame{f:02d}_gt{suffix}", np.zeros((6, 6, 3), np.uint8))
    if cine:
        save_nifti(folder / f"{name}_4d{suffix}", _rng_image((6, 6, 3, 15)))
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


def test_read_patient_folder_with_uncompressed_files(tmp_path):
    folder = _patient_folder(tmp_path, cine=True, suffix=".nii")
    pf = read_patient_folder(folder)
    assert (pf.ed_path, pf.es_path) == (folder / "patient042_frame01.nii", folder / "patient042_frame12.nii")
    assert pf.cine_path == folder / "patient042_4d.nii"
    assert acdc_frame_file(folder, 12, "_gt") == folder / "patient042_frame12_gt.nii"
    assert acdc_frame_file(folder, 3) is None and acdc_frame_file(folder, None) is None


def test_compressed_frame_is_preferred(tmp_path):
    folder = _patient_folder(tmp_path)
    save_nifti(folder / "patient042_frame01.nii", _rng_image((6, 6, 3)))
    assert read_patient_folder(folder).ed_path == folder / "patient042_frame01.nii.gz"


def test_read_patient_folder_missing_frames(tmp_path):
    folder = _patient_folder(tmp_path, frames=(1,))
    with pytest.raises(UnsupportedInputError, match="frame"):
        read_patient_folder(folder)
    with pytest.raises(InputFileNotFoundError):
        read_patient_folder(tmp_path / "nope")
