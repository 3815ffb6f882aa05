"""Synthetic short-axis cine phantoms with known anatomy, for the demo and the tests.

The heart is built from analytic shapes in millimetres: a truncated half-ellipsoid LV cavity,
a myocardial shell around it, and a crescent RV cavity beside the septum, inside a body with
lungs, a chest wall, a descending aorta and a liver. Intensities follow SSFP contrast
(bright blood, dark myocardium), with a smooth bias field, a little blur and Rician noise.
The LV and RV cavities contract over the cardiac cycle; frame 0 is end-diastole and frame
``n_frames // 2`` end-systole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class PhantomSpec:
    shape: tuple[int, int, int] = (192, 192, 10)  # X, Y, Z voxels
    spacing_mm: tuple[float, float, float] = (1.4, 1.4, 10.0)
    n_frames: int = 8
    lv_radius_ed_mm: float = 26.0  # LV cavity semi-axis in-plane at the base, ED
    lv_radius_es_mm: float = 17.0
    lv_length_ed_mm: float = 85.0  # LV cavity long semi-axis (base plane to apex), ED
    lv_length_es_mm: float = 72.0
    wall_mm: float = 9.0  # myocardial thickness
    rv_offset_mm: float = 30.0  # RV centre from LV centre, towards -X
    rv_radius_ed_mm: tuple[float, float] = (32.0, 46.0)  # RV ellipse semi-axes (X, Y), ED
    rv_radius_es_mm: tuple[float, float] = (20.0, 33.0)
    rv_length_mm: float = 70.0
    noise: float = 0.03  # noise std relative to blood signal
    bias: float = 0.25  # amplitude of the multiplicative bias field
    seed: int = 0


@dataclass(frozen=True)
class Phantom:
    image: np.ndarray  # (X, Y, Z, T) int16
    labels: np.ndarray  # (X, Y, Z, T) uint8, ACDC labels
    affine: np.ndarray  # 4x4, LPS-like diagonal as ACDC
    ed_frame: int
    es_frame: int

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0


def _phase(t: int, n: int) -> float:
    """1 at end-diastole (t = 0), 0 at end-systole (t = n // 2), smooth in between."""
    return 0.5 + 0.5 * math.cos(2 * math.pi * t / n) if n > 1 else 1.0


def heart_labels(spec: PhantomSpec, t: int) -> np.ndarray:
    """The label volume (X, Y, Z) of frame ``t``: 1 RV, 2 myocardium, 3 LV cavity."""
    nx, ny, nz = spec.shape
    sx, sy, sz = spec.spacing_mm
    x = (np.arange(nx) - (nx - 1) / 2 + 6) * sx
    y = (np.arange(ny) - (ny - 1) / 2 - 4) * sy
    z = (np.arange(nz) + 0.5) * sz  # distance from the base plane (slice 0 is basal)
    X, Y, Z = np.meshgrid(x, y, z, indexing="ij")
    w = _phase(t, spec.n_frames)
    a = spec.lv_radius_es_mm + w * (spec.lv_radius_ed_mm - spec.lv_radius_es_mm)
    c = spec.lv_length_es_mm + w * (spec.lv_length_ed_mm - spec.lv_length_es_mm)
    wall = spec.wall_mm * (1.0 + 0.35 * (1 - w))  # the wall thickens in systole
    cavity = (X**2 + Y**2) / a**2 + Z**2 / c**2 <= 1.0
    epi = (X**2 + Y**2) / (a + wall) ** 2 + Z**2 / (c + wall) ** 2 <= 1.0
    rx = spec.rv_radius_es_mm[0] + w * (spec.rv_radius_ed_mm[0] - spec.rv_radius_es_mm[0])
    ry = spec.rv_radius_es_mm[1] + w * (spec.rv_radius_ed_mm[1] - spec.rv_radius_es_mm[1])
    taper = np.clip(1 - (Z / spec.rv_length_mm) ** 2, 0, None)
    rv_ellipse = ((X + spec.rv_offset_mm) / rx) ** 2 + (Y / ry) ** 2 <= taper
    septum = (X**2 + Y**2) / (a + wall + 1.0) ** 2 + Z**2 / (c + wall + 1.0) ** 2 <= 1.0
    labels = np.zeros(spec.shape, dtype=np.uint8)
    labels[rv_ellipse & ~septum] = 1
    labels[epi] = 2
    labels[cavity] = 3
    return labels


def make_phantom(spec: PhantomSpec | None = None) -> Phantom:
    """Build the phantom cine (image, labels, affine) deterministically from ``spec.seed``."""
    spec = spec or PhantomSpec()
    rng = np.random.default_rng(spec.seed)
    nx, ny, nz = spec.shape
    sx, sy, sz = spec.spacing_mm
    x = (np.arange(nx) - (nx - 1) / 2) * sx
    y = (np.arange(ny) - (ny - 1) / 2) * sy
    X, Y = np.meshgrid(x, y, indexing="ij")
    # background anatomy (the same for every slice, mildly varying with depth)
    body = (X / 135.0) ** 2 + (Y / 105.0) ** 2 <= 1.0
    inner = (X / 122.0) ** 2 + (Y / 93.0) ** 2 <= 1.0
    lung_l = ((X + 62.0) / 42.0) ** 2 + ((Y + 5.0) / 55.0) ** 2 <= 1.0
    lung_r = ((X - 70.0) / 40.0) ** 2 + ((Y + 5.0) / 55.0) ** 2 <= 1.0
    aorta = ((X - 22.0) ** 2 + (Y - 58.0) ** 2) <= 11.0**2
    spine = ((X - 5.0) ** 2 + (Y - 80.0) ** 2) <= 14.0**2
    liver = ((X - 55.0) / 60.0) ** 2 + ((Y + 40.0) / 45.0) ** 2 <= 1.0
    tissue = np.where(body, 0.30, 0.0) + np.where(body & ~inner, 0.35, 0.0)  # bright subcutaneous fat
    texture = ndimage.gaussian_filter(rng.normal(0, 1, X.shape), 4.0)
    tissue = tissue * (1 + 0.15 * texture / (texture.std() + 1e-9))
    tissue = np.where(lung_l | lung_r, 0.04, tissue)
    tissue = np.where(liver & inner & ~(lung_l | lung_r), 0.22, tissue)
    tissue = np.where(spine & inner, 0.15, tissue)
    tissue = np.where(aorta, 0.75, tissue)
    gx = X / 135.0
    gy = Y / 105.0
    bias = 1.0 + spec.bias * (0.6 * gx - 0.4 * gy + 0.5 * (gx**2 - 0.3))
    contrast = {0: None, 1: 0.85, 2: 0.24, 3: 0.92}  # SSFP: blood bright, myocardium dark
    images, labels = [], []
    for t in range(spec.n_frames):
        lab = heart_labels(spec, t)
        frame = np.repeat(tissue[..., None], nz, axis=2).astype(np.float64)
        # fat and soft tissue around the heart where it is not lung
        pericardium = ndimage.binary_dilation(lab > 0, iterations=3) & ~(lab > 0)
        frame[pericardium] = 0.45
        for k in (1, 2, 3):
            frame[lab == k] = contrast[k]
        frame = ndimage.gaussian_filter(frame, sigma=(0.7, 0.7, 0))
        frame *= bias[..., None]
        real = frame + rng.normal(0, spec.noise, frame.shape)
        imag = rng.normal(0, spec.noise, frame.shape)
        frame = np.sqrt(real**2 + imag**2)  # Rician magnitude noise
        images.append(np.round(frame * 800).astype(np.int16))
        labels.append(lab)
    affine = np.diag([-sx, -sy, sz, 1.0])
    return Phantom(
        image=np.stack(images, axis=-1),
        labels=np.stack(labels, axis=-1),
        affine=affine,
        ed_frame=0,
        es_frame=spec.n_frames // 2,
    )


def write_phantom(out_dir: str, spec: PhantomSpec | None = None, name: str = "phantom") -> dict[str, str]:
    """Write ``{name}_cine.nii.gz`` (4D) and ``{name}_cine_gt.nii.gz`` into ``out_dir``."""
    from pathlib import Path

    import nibabel as nib

    ph = make_phantom(spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    img_path, gt_path = out / f"{name}_cine.nii.gz", out / f"{name}_cine_gt.nii.gz"
    nib.save(nib.Nifti1Image(ph.image, ph.affine), str(img_path))
    nib.save(nib.Nifti1Image(ph.labels, ph.affine), str(gt_path))
    return {"image": str(img_path), "labels": str(gt_path)}
