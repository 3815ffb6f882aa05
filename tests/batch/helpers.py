"""Helpers shared by the batch tests (``from batch.helpers import ...``; fixtures live in conftest.py)."""

from __future__ import annotations

import csv
import locale
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import save_nifti
from dicom_writer import write_dicom_series
from typer.testing import CliRunner

import cardioseg.batch.run

runner = CliRunner()
FAST = ["--device", "cpu", "--precision", "fp32", "--quiet"]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def summary_studies(out: Path) -> list[str]:
    with open(out / "summary.csv", newline="") as f:
        return [row["study"] for row in csv.DictReader(f)]


def names(studies: Iterable[Any]) -> list[str]:
    return [s.name for s in studies]


def patient_folder(root: Path, name: str, phantom: Any, cine: bool = False) -> Path:
    """An ACDC-style patient folder (Info.cfg ED 1, ES 3) with a cine or an ED/ES pair and a label map."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "Info.cfg").write_text("ED: 1\nES: 3\nGroup: NOR\nHeight: 170\nWeight: 70\n")
    if cine:
        save_nifti(folder / f"{name}_4d.nii.gz", phantom.image[..., :4], phantom.affine)
    else:
        save_nifti(folder / f"{name}_frame01.nii.gz", phantom.image[..., 0], phantom.affine)
        save_nifti(folder / f"{name}_frame03.nii.gz", phantom.image[..., 2], phantom.affine)
    save_nifti(folder / f"{name}_frame01_gt.nii.gz", phantom.labels[..., 0].astype(np.uint8), phantom.affine)
    return folder


def write_series(folder: Path, data: np.ndarray) -> None:
    """``write_dicom_series``, restoring the process locale that GDCM's writer leaves at "C"
    (later tests in this process decode subprocess output as UTF-8)."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        write_dicom_series(folder, data, pixel_spacing=(2.5, 2.5), slice_gap_mm=10.0)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


class CountRuns:
    """Wraps ``cardioseg.batch.run.run_study`` and records the studies it ran."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ran: list[str] = []
        real = cardioseg.batch.run.run_study

        def counted(study: Any, *args: Any, **kwargs: Any) -> Any:
            self.ran.append(study.name)
            return real(study, *args, **kwargs)

        monkeypatch.setattr(cardioseg.batch.run, "run_study", counted)
