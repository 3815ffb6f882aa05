"""Augmentation: similarity transforms that keep image, labels and distance maps aligned (and
every channel of a stack under one transform), and the crop centres' jitter and its draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cardioseg.preprocess import distance_maps, truncated_signed_distance
from cardioseg.train.augment import FAR_FRACTION, FAR_MARGIN_PX, augment_batch, crop_centres, jitter_centres


class ForcedRng:
    """A generator whose rotation and scale draws are fixed (the rest is random)."""

    def __init__(self, angle: float, scale: float) -> None:
        self.rng, self.angle, self.scale = np.random.default_rng(0), angle, scale

    def uniform(self, low=0.0, high=1.0, size=None):
        fixed = {(0, 2 * math.pi): self.angle, (0.8, 1.2): self.scale}.get((low, high))
        return np.full(size, fixed) if fixed is not None else self.rng.uniform(low, high, size)

    def __getattr__(self, name: str):
        return getattr(self.rng, name)


def _square_batch(n: int, t: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    img = np.zeros((n, 1, 64, 64), np.float32)
    lab = np.zeros((n, 64, 64), np.int64)
    img[:, 0, 24:40, 24:40] = 5.0
    lab[:, 24:40, 24:40] = 3
    dm = np.stack([distance_maps(lab[i], (1, 2, 3), t) for i in range(n)])
    return torch.from_numpy(img), torch.from_numpy(lab), torch.from_numpy(dm)


def test_augmentation_keeps_image_labels_and_distance_maps_aligned() -> None:
    img, lab, dm = _square_batch(4, 250.0)
    x, y, d = augment_batch(img, lab, np.full((4, 2), 32.0), 48, np.random.default_rng(0), dm, 250.0)
    assert x.shape == (4, 1, 48, 48) and y.shape == (4, 48, 48) and d.shape == (4, 3, 48, 48)
    assert y.dtype == torch.long and d.dtype == torch.float32
    inside = y == 3
    assert inside.sum() > 400
    assert float(x[inside[:, None]].mean()) > 3.5 and float(x[~inside[:, None]].mean()) < 1.5
    # the warped distance map is positive inside the warped object, negative outside
    assert float(((d[:, 2] > 0) == inside).float().mean()) > 0.98
    assert (d[:, 0] < -190).all() and (d[:, 1] < -190).all()  # absent structures stay far away


@pytest.mark.parametrize("scale", [0.8, 1.2])
def test_warped_distance_maps_are_scaled_distances_of_the_warped_labels(scale: float) -> None:
    img, lab, dm = _square_batch(1, 250.0)
    _, y, d = augment_batch(img, lab, np.array([[31.5, 31.5]]), 48, ForcedRng(0.3, scale), dm, 250.0)
    recomputed = truncated_signed_distance(y[0].numpy() == 3, 250.0)
    near = recomputed > -10  # away from the crop's corners, which may lie outside the image (border padding)
    err = np.abs(d[0, 2].numpy() - recomputed)[near]
    assert near.sum() > 500 and err.max() < 2.0 and err.mean() < 0.5
    assert float(d[0, 2].max()) == pytest.approx(8 * scale, abs=0.6)  # the square's centre: 8 px inside


def test_warped_distance_maps_are_clamped_at_minus_t() -> None:
    img, lab, dm = _square_batch(2, 10.0)
    _, _, d = augment_batch(img, lab, np.full((2, 2), 32.0), 48, ForcedRng(1.0, 1.2), dm, 10.0)
    assert float(d.min()) == -10.0
    assert (d[:, 0] == -10.0).all()  # empty structure: -T, not -1.2 T
    assert float((d[:, 2] == -10.0).float().mean()) > 0.2


def test_augmentation_applies_one_transform_to_every_channel() -> None:
    img = np.zeros((3, 3, 64, 64), np.float32)
    img[:, :, 20:44, 24:40] = 5.0
    lab = (img[:, 0] > 0).astype(np.int64) * 3
    centres = np.full((3, 2), 32.0)
    x, y = augment_batch(torch.from_numpy(img), torch.from_numpy(lab), centres, 48, np.random.default_rng(1))
    assert x.shape == (3, 3, 48, 48) and y.shape == (3, 48, 48)
    inside = (y == 3)[:, None]
    for c in range(3):  # every channel lines up with the centre slice's labels
        assert float(((x[:, c : c + 1] > 2.5) == inside).float().mean()) > 0.99
    stacked = torch.from_numpy(np.repeat(lab[:, None], 4, axis=1))  # (N, D, H, W) labels of a volume
    _, y3 = augment_batch(torch.from_numpy(img), stacked, centres, 48, np.random.default_rng(1))
    assert y3.shape == (3, 4, 48, 48) and all(torch.equal(y3[:, d], y) for d in range(4))


def test_crop_centres_are_the_labels_centroids() -> None:
    labels = np.zeros((3, 8, 8), np.uint8)
    labels[0, 2:4, 4:8] = 1
    labels[2, 7, 0] = 3
    got = crop_centres(labels)
    assert got.dtype == np.float32 and got[0].tolist() == [2.5, 5.5] and got[2].tolist() == [7.0, 0.0]
    assert np.isnan(got[1]).all()


def test_jitter_moves_labelled_centres_by_at_most_an_eighth_and_places_the_others() -> None:
    centres = np.array([[30.0, 34.0], [np.nan, np.nan]] * 200, np.float32)
    got = jitter_centres(centres, 64, 32, np.random.default_rng(0))
    assert not np.isnan(got).any() and np.isnan(centres[1]).all()  # the input is left alone
    assert np.abs(got[0::2] - centres[0::2]).max() <= 8 and np.abs(got[0::2] - centres[0::2]).max() > 7
    assert got[1::2].min() >= 16 and got[1::2].max() <= 48  # the crop stays inside the image
    far = jitter_centres(centres, 64, 32, np.random.default_rng(0), far_fraction=0.2, margin_px=16)
    moved = np.abs(far[0::2] - centres[0::2]).max(axis=1) > 8  # labelled, but placed anywhere
    assert 0.1 < moved.mean() < 0.3 and far.min() >= 0 and far.max() <= 64


def test_jitter_draws_in_a_fixed_order() -> None:
    """The order of the random draws is part of a run's reproducibility: ``rng.random`` for the
    far fraction first (only when it is > 0), then the far centres, then the shifts."""
    centres = np.array([[30.0, 34.0], [np.nan, np.nan], [20.0, 20.0], [40.0, 44.0]], np.float32)
    rng = np.random.default_rng(5)
    far = np.isnan(centres[:, 0]) | (rng.random(4) < FAR_FRACTION)
    expected = centres.copy()
    expected[far] = rng.uniform(16 - FAR_MARGIN_PX, 64 - 16 + FAR_MARGIN_PX, (int(far.sum()), 2))
    expected[~far] += rng.uniform(-8, 8, (int((~far).sum()), 2))
    got = jitter_centres(centres, 64, 32, np.random.default_rng(5), FAR_FRACTION, FAR_MARGIN_PX)
    assert np.array_equal(got, expected)
    rng = np.random.default_rng(5)  # no far fraction: no rng.random draw
    expected = centres.copy()
    expected[1] = rng.uniform(16, 48, (1, 2))
    expected[[0, 2, 3]] += rng.uniform(-8, 8, (3, 2))
    assert np.array_equal(jitter_centres(centres, 64, 32, np.random.default_rng(5)), expected)


def test_intensity_augment_off_changes_nothing_and_on_keeps_shapes_and_channels_together():
    import numpy as np
    import torch

    from cardioseg.train.augment import intensity_augment

    images = torch.randn(6, 3, 32, 32)
    same = intensity_augment(images, np.random.default_rng(0), p=0.0)
    assert torch.equal(same, images) and same is not images
    out = intensity_augment(images, np.random.default_rng(0), p=1.0)
    assert out.shape == images.shape and torch.isfinite(out).all() and not torch.equal(out, images)
    # the channels of a sample (neighbouring slices) get the same transform: equal inputs stay equal
    stack = images[:, :1].repeat(1, 3, 1, 1)
    out = intensity_augment(stack, np.random.default_rng(1), p=1.0)
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 0], out[:, 2])
    again = intensity_augment(stack, np.random.default_rng(1), p=1.0)
    assert torch.equal(out, again)  # seeded: reproducible


def test_gaussian_blur_keeps_a_constant_and_spreads_a_point():
    import torch

    from cardioseg.train.augment import _gaussian_blur

    flat = torch.full((1, 9, 9), 2.0)
    assert torch.allclose(_gaussian_blur(flat, 1.0), flat)
    point = torch.zeros(1, 15, 15)
    point[0, 7, 7] = 1.0
    blurred = _gaussian_blur(point, 1.0)
    assert abs(float(blurred.sum()) - 1.0) < 1e-5 and float(blurred[0, 7, 7]) < 0.2
    assert torch.allclose(blurred, blurred.flip(-1)) and torch.allclose(blurred, blurred.transpose(-1, -2))


def test_scale_range_changes_how_much_of_the_image_a_crop_sees():
    import numpy as np
    import torch

    from cardioseg.train.augment import augment_batch

    labels = torch.zeros(1, 64, 64, dtype=torch.long)
    labels[0, 24:40, 24:40] = 1  # a 16 px square
    images = labels[:, None].float()
    centre = np.array([[31.5, 31.5]])
    def covered(scale: float) -> float:
        out = augment_batch(images, labels, centre, 32, np.random.default_rng(0), scale_range=(scale, scale))[1]
        return float(out.float().mean())

    # the same rotation each time (same seed): the square's share of the crop grows as scale^2
    half, one, double = covered(0.5), covered(1.0), covered(2.0)
    assert abs(half - 0.0625) < 0.02 and abs(one - 0.25) < 0.04 and double > 0.5  # (8, 16, 32 px)^2 of 32^2
