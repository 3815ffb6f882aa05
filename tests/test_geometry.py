"""Reorientation, in-plane resampling and their inverses (DESIGN.md: "exact on geometry").

The central property: how a file happens to store an image (axis order, axis directions, an
oblique slice plane) must not change the mask that comes back in that file's own voxel order.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from conftest import dice

from cardioseg.geometry import (
    ModelSpace,
    Orientation,
    canonical_spacing,
    find_orientation,
    from_canonical,
    one_hot,
    to_canonical,
)
from cardioseg.phantom import PhantomSpec, heart_labels, make_phantom

PERMS = list(itertools.permutations(range(3)))
SIGNS = list(itertools.product((1, -1), repeat=3))
ALL_48 = [(p, s) for p in PERMS for s in SIGNS]


def storage_affine(spacing_world, perm, signs, shape_world, origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    """Affine of a RAS-ordered reference grid stored with axis ``k`` along world axis
    ``perm[k]`` in direction ``signs[k]`` (world positions of every voxel preserved)."""
    a = np.eye(4)
    a[:3, 3] = origin
    for k in range(3):
        w = perm[k]
        a[:3, k] = 0.0
        a[w, k] = signs[k] * spacing_world[w]
        if signs[k] < 0:  # stored index 0 is the last reference voxel along that world axis
            a[w, 3] += spacing_world[w] * (shape_world[w] - 1)
    return a


def store(reference: np.ndarray, perm, signs) -> np.ndarray:
    """The reference (RAS-ordered) array as stored with that permutation/flip."""
    out = np.transpose(reference, tuple(perm) + tuple(range(3, reference.ndim)))
    for k in range(3):
        if signs[k] < 0:
            out = np.flip(out, axis=k)
    return out


def rotation(axis: int, degrees: float) -> np.ndarray:
    """4x4 rotation about a world axis."""
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(4)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


# --------------------------------------------------------------------- to/from canonical


@pytest.mark.parametrize("perm,signs", ALL_48, ids=[f"{p}{s}" for p, s in ALL_48])
def test_canonical_round_trip_is_exact_for_all_48_orientations(perm, signs):
    rng = np.random.default_rng(ALL_48.index((perm, signs)))
    affine = storage_affine((1.3, 1.7, 9.0), perm, signs, (5, 6, 7))
    o = find_orientation(affine)
    for shape in [(5, 6, 7), (5, 6, 7, 3)]:
        x = rng.normal(size=shape).astype(np.float32)
        c = to_canonical(x, o)
        assert c.shape[3:] == x.shape[3:]
        back = from_canonical(c, o)
        assert back.shape == x.shape
        assert np.array_equal(back, x)


@pytest.mark.parametrize("perm,signs", ALL_48, ids=[f"{p}{s}" for p, s in ALL_48])
def test_every_storage_of_one_image_gives_the_same_canonical_array(perm, signs):
    """A RAS-ordered reference with the largest spacing along world z is its own canonical
    form; every one of the 48 ways to store it must be brought back to exactly that."""
    rng = np.random.default_rng(1)
    shape_world, spacing_world = (5, 6, 7), (1.3, 1.7, 9.0)
    reference = rng.integers(0, 1000, size=shape_world).astype(np.int16)
    stored = store(reference, perm, signs)
    affine = storage_affine(spacing_world, perm, signs, shape_world)
    # the helper really preserves world positions: stored voxel (0,0,0) is where it was
    idx_ref = np.array([(shape_world[perm[k]] - 1) if signs[k] < 0 else 0 for k in range(3)])
    idx_ref_world = np.zeros(3, int)
    for k in range(3):
        idx_ref_world[perm[k]] = idx_ref[k]
    assert stored[0, 0, 0] == reference[tuple(idx_ref_world)]
    np.testing.assert_allclose(affine[:3, 3], np.array((10.0, -20.0, 30.0)) + np.array(spacing_world) * idx_ref_world)

    o = find_orientation(affine)
    assert o.perm[2] == perm.index(2), "slice axis must be the stored axis along world z (largest spacing)"
    assert np.array_equal(to_canonical(stored, o), reference)
    assert canonical_spacing(tuple(np.linalg.norm(affine[:3, :3], axis=0)), o) == pytest.approx(spacing_world)


def test_canonical_order_when_the_largest_spacing_is_along_world_x():
    rng = np.random.default_rng(2)
    shape_world, spacing_world = (5, 6, 7), (8.0, 1.2, 1.5)
    reference = rng.normal(size=shape_world)
    expected = np.transpose(reference, (1, 2, 0))  # in-plane (y, z), then the slice axis x
    for perm, signs in [((0, 1, 2), (1, 1, 1)), ((2, 0, 1), (-1, 1, -1)), ((1, 2, 0), (1, -1, 1))]:
        affine = storage_affine(spacing_world, perm, signs, shape_world)
        o = find_orientation(affine)
        assert o.perm[2] == perm.index(0)
        assert np.array_equal(to_canonical(store(reference, perm, signs), o), expected)


@pytest.mark.parametrize(
    "diag,slice_axis",
    [((1.2, 1.2, 8.0), 2), ((8.0, 1.2, 1.5), 0), ((1.2, 10.0, 1.5), 1), ((1.0, 1.0, 1.0), 2), ((3.0, 1.0, 3.0), 2)],
)
def test_slice_axis_is_the_largest_spacing_ties_prefer_the_third_axis(diag, slice_axis):
    o = find_orientation(np.diag(list(diag) + [1.0]))
    assert o.perm[2] == slice_axis
    assert sorted(o.perm) == [0, 1, 2]


def test_tie_between_the_first_two_axes_picks_the_first():
    assert find_orientation(np.diag([5.0, 5.0, 1.0, 1.0])).perm[2] == 0


@pytest.mark.parametrize("degrees", [15.0, -15.0, 30.0])
@pytest.mark.parametrize("perm,signs", [((0, 1, 2), (-1, -1, 1)), ((1, 0, 2), (1, -1, -1)), ((2, 0, 1), (1, 1, -1))])
def test_oblique_rotation_about_the_slice_axis_keeps_the_canonical_array(perm, signs, degrees):
    rng = np.random.default_rng(3)
    shape_world, spacing_world = (5, 6, 7), (1.3, 1.7, 9.0)
    reference = rng.normal(size=shape_world)
    stored = store(reference, perm, signs)
    affine = storage_affine(spacing_world, perm, signs, shape_world)
    oblique = rotation(2, degrees) @ affine  # rotate the slice plane about world z
    assert not np.allclose(oblique, affine)
    o_straight, o_oblique = find_orientation(affine), find_orientation(oblique)
    assert o_oblique == o_straight
    assert np.array_equal(to_canonical(stored, o_oblique), reference)
    # a tilt of the slice axis itself (about world x) does not change the order either
    assert find_orientation(rotation(0, 12.0) @ oblique) == o_straight


def test_orientation_type_is_a_transpose_plus_flips():
    o = Orientation(perm=(2, 0, 1), flip=(True, False, True))
    x = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    c = to_canonical(x, o)
    assert c.shape == (4, 2, 3)
    # c[a, b, s] = x[b, 2 - s, 3 - a]
    assert c[0, 0, 0] == x[0, 2, 3] and c[3, 0, 2] == x[0, 0, 0] and c[1, 1, 0] == x[1, 2, 2]
    assert np.array_equal(from_canonical(c, o), x)


# --------------------------------------------------------------------- resampling round trip


def push_labels_to_model(labels: np.ndarray, space: ModelSpace, n_classes: int = 4) -> np.ndarray:
    """Stored labels -> one-hot -> canonical -> model grid (order 1): (S, C, fov, fov)."""
    canon = to_canonical(one_hot(labels, n_classes), space.orientation)  # (A, B, S, C)
    chans = [np.moveaxis(space.grid.to_model(canon[..., c], order=1), 2, 0) for c in range(n_classes)]
    return np.stack(chans, axis=1)


@pytest.mark.parametrize(
    "spacing_mm,shape,min_dice",
    [
        ((1.5625, 1.5625, 10.0), (128, 128, 8), 0.99),  # native grid == model grid
        ((1.5625, 1.5625, 10.0), (121, 134, 8), 0.99),  # same spacing, half-pixel offsets
        ((1.25, 1.25, 10.0), (160, 160, 8), 0.95),
        ((1.25, 1.4, 8.0), (150, 142, 9), 0.95),
    ],
)
def test_phantom_labels_survive_the_trip_to_model_space_and_back(spacing_mm, shape, min_dice):
    spec = PhantomSpec(shape=shape, spacing_mm=spacing_mm, n_frames=8)
    affine = np.diag([-spacing_mm[0], -spacing_mm[1], spacing_mm[2], 1.0])
    for t in (0, 4):
        labels = heart_labels(spec, t)
        space = ModelSpace.for_image(affine, labels.shape, 1.5625, 128)
        probs = push_labels_to_model(labels, space)
        assert probs.shape == (shape[2], 4, 128, 128)
        back = space.probabilities_to_labels(probs)
        assert back.shape == labels.shape and back.dtype == np.uint8
        for k in (1, 2, 3):
            assert (labels == k).sum() > 100
            d = dice(back == k, labels == k)
            assert d >= min_dice, f"label {k} at {spacing_mm}: Dice {d:.4f} < {min_dice}"


def test_identical_grids_give_the_labels_back_exactly():
    spec = PhantomSpec(shape=(128, 128, 6), spacing_mm=(1.5625, 1.5625, 10.0))
    labels = heart_labels(spec, 0)
    space = ModelSpace.for_image(np.diag([1.5625, 1.5625, 10.0, 1.0]), labels.shape, 1.5625, 128)
    assert np.array_equal(space.probabilities_to_labels(push_labels_to_model(labels, space)), labels)


def test_outside_the_field_of_view_is_background():
    """A native grid larger than the model's field of view gets background outside it."""
    labels = np.full((200, 200, 2), 3, np.uint8)
    space = ModelSpace.for_image(np.diag([1.0, 1.0, 10.0, 1.0]), labels.shape, 1.0, 64)
    back = space.probabilities_to_labels(push_labels_to_model(labels, space))
    assert back[0, 0, 0] == 0 and back[100, 100, 0] == 3
    assert np.all(back[:60] == 0) and np.all(back[140:] == 0)
    assert np.all(back[80:120, 80:120] == 3)


# --------------------------------------------------------------------- predictor invariance


def _flip(data, affine, axis):
    f = np.eye(4)
    f[axis, axis] = -1.0
    f[axis, 3] = data.shape[axis] - 1
    return np.flip(data, axis), affine @ f, np.eye(4), lambda m: np.flip(m, axis)


def _permute(data, affine, perm):
    p = np.zeros((4, 4))
    p[3, 3] = 1.0
    for k in range(3):
        p[perm[k], k] = 1.0  # new index k is old index perm[k]
    inverse = tuple(int(i) for i in np.argsort(perm))
    return np.transpose(data, perm), affine @ p, np.eye(4), lambda m: np.transpose(m, inverse)


def _oblique(data, affine, degrees):
    r = rotation(2, degrees)  # about world z, the direction of the slice axis here
    return data, r @ affine, r, lambda m: m


OPS = {"flip": _flip, "perm": _permute, "rot": _oblique}

VARIANTS = {
    "flip-x": [("flip", 0)],
    "flip-y": [("flip", 1)],
    "flip-z": [("flip", 2)],
    "flip-xyz": [("flip", 0), ("flip", 1), ("flip", 2)],
    "swap-xy": [("perm", (1, 0, 2))],
    "slice-first": [("perm", (2, 0, 1))],
    "slice-middle": [("perm", (0, 2, 1))],
    "oblique-15": [("rot", 15.0)],
    "oblique-minus-15": [("rot", -15.0)],
    "all-combined": [("rot", 15.0), ("flip", 1), ("perm", (2, 1, 0)), ("flip", 0)],
}


def make_variant(data, affine, ops):
    """Apply storage changes. Returns (data, affine, world rotation applied, map back to the
    original voxel order)."""
    undo, world = [], np.eye(4)
    for name, arg in ops:
        data, affine, r, inv = OPS[name](data, affine, arg)
        world = r @ world
        undo.append(inv)

    def back(mask):
        for inv in reversed(undo):
            mask = inv(mask)
        return mask

    return np.ascontiguousarray(data), affine, world, back


@pytest.fixture(scope="module")
def invariance_case(fp32_predictor):
    """A non-square, anisotropic phantom frame and the tiny network's mask of it."""
    spec = PhantomSpec(shape=(40, 52, 5), spacing_mm=(1.9, 2.3, 9.0), n_frames=2, seed=5)
    ph = make_phantom(spec)
    image = ph.image[..., 0]
    affine = ph.affine.copy()
    affine[:3, 3] = (37.0, -12.5, 4.0)
    reference = fp32_predictor.predict(image, affine)
    return image, affine, reference


def test_invariance_reference_is_not_trivial(invariance_case):
    _, _, reference = invariance_case
    counts = np.bincount(reference.ravel(), minlength=4)
    assert (counts > 0).sum() >= 2, counts  # a constant mask would make the invariance test vacuous


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_helper_stores_the_same_physical_image(variant):
    """Check of the test helper itself: every stored voxel keeps its value and its world
    position (up to the deliberate oblique rotation), and ``back`` undoes the storage."""
    shape = (4, 5, 3)
    affine = np.diag([-1.9, -2.3, 9.0, 1.0])
    affine[:3, 3] = (37.0, -12.5, 4.0)
    index = np.arange(int(np.prod(shape))).reshape(shape)
    stored, aff, world, back = make_variant(index, affine, VARIANTS[variant])
    assert np.array_equal(back(stored), index)
    for j in itertools.product(*(range(n) for n in stored.shape)):
        orig = np.unravel_index(stored[j], shape)
        np.testing.assert_allclose(aff @ np.r_[j, 1.0], world @ affine @ np.r_[orig, 1.0], atol=1e-9)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_prediction_does_not_depend_on_how_the_file_stores_the_image(fp32_predictor, invariance_case, variant):
    image, affine, reference = invariance_case
    data, aff, _, back = make_variant(image, affine, VARIANTS[variant])
    mask = fp32_predictor.predict(data, aff)
    assert mask.shape == data.shape and mask.dtype == np.uint8
    restored = back(mask)
    assert restored.shape == reference.shape
    assert np.array_equal(restored, reference), f"{variant}: {(restored != reference).sum()} voxels differ"


# --------------------------------------------------------------------- real data


REAL_PATIENTS = ["patient085", "patient021", "patient009"]  # 1.22, 1.68, 1.37 mm in-plane


@pytest.mark.realdata
@pytest.mark.parametrize("patient", REAL_PATIENTS)
def test_acdc_reference_labels_survive_the_trip_to_model_space(acdc_dir, patient):
    import nibabel as nib

    files = sorted((acdc_dir / patient).glob(f"{patient}_frame*_gt.nii.gz"))
    if not files:
        pytest.skip(f"{patient} not in {acdc_dir}")
    for f in files:
        img = nib.load(str(f))
        labels = np.asarray(img.dataobj).astype(np.uint8)
        space = ModelSpace.for_image(img.affine, labels.shape, 1.5625, 256)
        back = space.probabilities_to_labels(push_labels_to_model(labels, space))
        assert back.shape == labels.shape
        for k in (1, 2, 3):
            d = dice(back == k, labels == k)
            assert d >= 0.99, f"{f.name} label {k}: Dice {d:.4f}"
