"""Writing hostile NIfTI files for tests: raw header edits that bypass nibabel's repairs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from conftest import save_nifti


def image(shape: tuple[int, ...] = (40, 40, 6), seed: int = 0) -> np.ndarray:
    """A float32 MR-like image (normal noise around 100)."""
    return np.random.default_rng(seed).normal(100, 20, size=shape).astype(np.float32)


def raw_header_edit(path: Path, **fields: Any) -> Path:
    """Rewrite header fields of an uncompressed .nii in place, bypassing nibabel's repairs
    (``pixdim123=[x, y, z]`` sets the voxel size, ``dim=[...]`` the leading dims)."""
    raw = bytearray(path.read_bytes())
    with open(path, "rb") as f:
        hdr = nib.Nifti1Header.from_fileobj(f, check=False)
    for key, value in fields.items():
        if key == "pixdim123":
            hdr["pixdim"][1:4] = value
        elif key == "dim":
            hdr["dim"][: len(value)] = value
        else:
            hdr[key] = value
    raw[:348] = hdr.binaryblock
    path.write_bytes(bytes(raw))
    return path


def qform_only_nii(path: Path, pixdim: list[float]) -> Path:
    """A .nii whose geometry is its qform only (sform_code 0) with voxel size ``pixdim``."""
    save_nifti(path, image(), np.diag([1.5, 1.5, 8.0, 1.0]))
    return raw_header_edit(path, sform_code=0, qform_code=1, pixdim123=pixdim)


def signed_perm_affine(perm: Any, signs: Any, spacing: Any, origin: Any) -> np.ndarray:
    """An affine whose stored axis ``k`` runs along world axis ``perm[k]`` with sign ``signs[k]``."""
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for stored, world in enumerate(perm):
        affine[world, stored] = signs[stored] * spacing[stored]
    affine[:3, 3] = origin
    return affine
