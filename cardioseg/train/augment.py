"""Training-time augmentation: random crop centres near the heart and random similarity
transforms of image, labels and distance maps alike (DMR paper II-E).

The random draws of ``jitter_centres`` and ``augment_batch`` come from the caller's numpy
generator (and torch's global one for the image noise), in a fixed order, so a seeded run is
reproducible bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FAR_FRACTION", "FAR_MARGIN_PX", "augment_batch", "crop_centres", "intensity_augment", "jitter_centres"]

FAR_FRACTION = 0.2  # the training loop's crops: this fraction anywhere in the image, ...
FAR_MARGIN_PX = 16.0  # ... up to this far beyond the crop's half-size from the edges


def crop_centres(labels: np.ndarray) -> np.ndarray:
    """(row, col) centre of the labels of each (H, W) slice of ``labels``; NaN for an empty slice.

    >>> crop_centres(np.array([[[0, 0], [0, 3]], [[0, 0], [0, 0]]])).tolist()
    [[1.0, 1.0], [nan, nan]]
    """
    centres = np.full((len(labels), 2), np.nan, dtype=np.float32)
    for i in range(len(labels)):
        rows, cols = np.nonzero(labels[i])
        if len(rows):
            centres[i] = (rows.mean(), cols.mean())
    return centres


def jitter_centres(
    centres: np.ndarray,
    size_px: int,
    crop_px: int,
    rng: np.random.Generator,
    far_fraction: float = 0.0,
    margin_px: float = 0.0,
) -> np.ndarray:
    """Random crop centres for (N, 2) label ``centres`` (``crop_centres``) in a ``size_px``
    square image: each moved by up to 1/8 of the size in each direction (the paper's
    translation), except, drawn uniformly in [crop/2 - margin, size - crop/2 + margin], those
    of empty slices (NaN) and, when ``far_fraction`` > 0, that fraction of the others.

    Draws ``rng.random(N)`` (only when ``far_fraction`` > 0), then the far centres, then the
    shifts. Returns a new (N, 2) array.
    """
    c = np.array(centres, copy=True)
    far = np.isnan(c[:, 0])
    if far_fraction > 0:
        far = far | (rng.random(len(c)) < far_fraction)
    c[far] = rng.uniform(crop_px / 2 - margin_px, size_px - crop_px / 2 + margin_px, (int(far.sum()), 2))
    c[~far] += rng.uniform(-size_px / 8, size_px / 8, (int((~far).sum()), 2))  # translation up to 1/8
    return c


def augment_batch(
    images: Any,
    labels: Any,
    centres: np.ndarray,
    crop: int,
    rng: np.random.Generator,
    distmaps: Any = None,
    truncation_px: float = 250.0,
    scale_range: tuple[float, float] = (0.8, 1.2),
) -> tuple[Any, ...]:
    """Random similarity transform + crop of (N, K, H, W) images, (N, H, W) or (N, K', H, W)
    labels and optionally (N, K'', H, W) distance maps, all with the same transform per sample
    (the same for every channel: the neighbouring slices of a stack, the slices of a volume).

    ``centres`` (N, 2) are (row, col) crop centres in input pixels; rotation is 0-360 deg and
    isotropic scale in ``scale_range`` (DMR paper II-E: 0.8-1.2; below 1 the crop sees more of
    the image at coarser pixels, as stage 1 of two-stage inference does). Images and distance maps are sampled bilinearly,
    labels by nearest neighbour; distances are multiplied by the scale (they are in output
    pixels) and kept at or above ``-truncation_px``. A global intensity gain/offset and noise
    are added to the images. Returns (images, labels[, distmaps]).
    """
    n, _, h, w = images.shape
    theta = np.zeros((n, 2, 3), dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi, n)
    scale = rng.uniform(scale_range[0], scale_range[1], n)
    half = crop / 2
    for i in range(n):
        a = half / (w / 2) / scale[i]
        c, s = math.cos(angle[i]), math.sin(angle[i])
        theta[i] = [
            [a * c, -a * s * (h / w), (centres[i, 1] - (w - 1) / 2) / (w / 2)],
            [a * s * (w / h), a * c, (centres[i, 0] - (h - 1) / 2) / (h / 2)],
        ]
    grid = F.affine_grid(torch.from_numpy(theta), [n, 1, crop, crop], align_corners=False)
    out_img = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    lab = labels[:, None] if labels.ndim == 3 else labels
    out_lab = F.grid_sample(lab.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    out_lab = out_lab[:, 0] if labels.ndim == 3 else out_lab
    gain = torch.from_numpy(rng.uniform(0.85, 1.15, (n, 1, 1, 1)).astype(np.float32))
    bias = torch.from_numpy(rng.uniform(-0.15, 0.15, (n, 1, 1, 1)).astype(np.float32))
    noise = torch.from_numpy(rng.uniform(0, 0.1, (n, 1, 1, 1)).astype(np.float32))
    out_img = out_img * gain + bias + noise * torch.randn_like(out_img)
    if distmaps is None:
        return out_img, out_lab.long()
    out_dm = F.grid_sample(distmaps, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out_dm = (out_dm * torch.from_numpy(scale.astype(np.float32))[:, None, None, None]).clamp_(min=-truncation_px)
    return out_img, out_lab.long(), out_dm


def intensity_augment(images: torch.Tensor, rng: np.random.Generator, p: float = 0.5) -> torch.Tensor:
    """Other scanners and sequences: each of gamma, contrast, a smooth bias field, blur and a
    simulated lower resolution applied to each sample of (N, K, H, W) z-scored images with
    probability ``p`` (the same for all K channels of a sample). Returns a new tensor.

    - gamma in [0.7, 1.5] (log-uniform) on the sample's intensity range;
    - contrast: deviations from the mean scaled by 0.75-1.25;
    - bias field: exp of a random 2nd-order polynomial over the crop (up to about +-30 %);
    - blur: Gaussian, sigma 0.5-1.5 px;
    - low resolution: down-sampled by 1.3-2x (area) and back (bilinear).
    """
    out = images.clone()
    n, _, h, w = out.shape
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    terms = torch.stack([xx, yy, xx * yy, xx**2, yy**2])  # (5, H, W)
    for i in range(n):
        x = out[i]
        if rng.random() < p:
            lo, hi = x.min(), x.max()
            gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.5))))
            x = ((x - lo) / (hi - lo + 1e-6)).clamp_(0, 1) ** gamma * (hi - lo) + lo
        if rng.random() < p:
            mean = x.mean()
            x = (x - mean) * float(rng.uniform(0.75, 1.25)) + mean
        if rng.random() < p:
            coeffs = torch.from_numpy(rng.uniform(-0.15, 0.15, 5).astype(np.float32))
            x = x * torch.exp((coeffs[:, None, None] * terms).sum(0))
        if rng.random() < p:
            x = _gaussian_blur(x, float(rng.uniform(0.5, 1.5)))
        if rng.random() < p:
            factor = float(rng.uniform(1.3, 2.0))
            small = F.interpolate(x[None], scale_factor=1 / factor, mode="area")
            x = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0]
        out[i] = x
    return out


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(K, H, W) -> the same, blurred in-plane (separable Gaussian, reflected borders)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    y = F.pad(x[:, None], (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel.view(1, 1, 1, -1))
    y = F.conv2d(y, kernel.view(1, 1, -1, 1))
    return y[:, 0]
