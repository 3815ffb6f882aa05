"""Fixtures of the batch tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import save_nifti


@pytest.fixture
def frames(tmp_path: Path, small_phantom: Any) -> Path:
    """``data/`` with three 3D frames a, b, c (fast to segment), a mask and a label map to skip."""
    data = tmp_path / "data"
    for i, name in enumerate("abc"):
        save_nifti(data / f"{name}.nii.gz", small_phantom.image[..., 2 * i], small_phantom.affine)
    save_nifti(data / "a_seg.nii.gz", small_phantom.labels[..., 0].astype(np.uint8), small_phantom.affine)
    save_nifti(data / "b_gt.nii", small_phantom.labels[..., 0].astype(np.uint8), small_phantom.affine)
    (data / "notes.txt").write_text("not an image")
    (data / ".a.nii.gz.x1y2.tmp.nii.gz").write_bytes(b"hidden temp")
    return data
