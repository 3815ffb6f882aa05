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

__all__ = ["FAR_FRACTION", "FAR_MARGIN_PX", "augment_batch", "crop_centres", "jitter_centres"]

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
) -> tuple[Any, ...]:
    """Random similarity transform + crop of (N, K, H, W) images, (N, H, W) or (N, K', H, W)
    labels and optionally (N, K'', H, W) distance maps, all with the same transform per sample
    (the same for every channel: the neighbouring slices of a stack, the slices of a volume).

    ``centres`` (N, 2) are (row, col) crop centres in input pixels; rotation is 0-360 deg and
    isotropic scale 0.8-1.2 (DMR paper II-E). Images and distance maps are sampled bilinearly,
    labels by nearest neighbour; distances are multiplied by the scale (they are in output
    pixels) and kept at or above ``-truncation_px``. A global intensity gain/offset and noise
    are added to the images. Returns (images, labels[, distmaps]).
    """
    n, _, h, w = images.shape
    theta = np.zeros((n, 2, 3), dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi, n)
    scale = rng.uniform(0.8, 1.2, n)
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
