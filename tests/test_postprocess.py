"""Largest connected component per label, with slice-gap tolerance (DESIGN.md)."""

from __future__ import annotations

import numpy as np
import pytest

from cardioseg.postprocess import keep_largest_components, largest_component

SPACING = (1.25, 1.25, 10.0)  # mm: in-plane 1.25, slice gap 10


def disc(shape2d, centre_mm, radius_mm, spacing=SPACING):
    x = np.arange(shape2d[0])[:, None] * spacing[0]
    y = np.arange(shape2d[1])[None, :] * spacing[1]
    return (x - centre_mm[0]) ** 2 + (y - centre_mm[1]) ** 2 <= radius_mm**2


def heart_like(shape=(80, 80, 6)):
    """Main structure: a disc of radius 15 mm on slices 1..4 centred at (50, 50) mm."""
    m = np.zeros(shape, bool)
    for k in range(1, 5):
        m[..., k] = disc(shape[:2], (50.0, 50.0), 15.0)
    return m


def basal_piece(shape=(80, 80, 6)):
    """A small piece on slice 0 (10 mm from slice 1) whose edge lies 4 mm beyond the main
    disc's edge in-plane: no voxel of it touches the disc, even 26-connected."""
    m = np.zeros(shape, bool)
    # main disc edge at x = 65 mm; the piece spans x in [68.75, 73.75] mm at y = 50 mm
    m[..., 0] = disc(shape[:2], (71.0, 50.0), 3.0)
    return m


def test_piece_geometry_is_the_slice_gap_case():
    main, piece = heart_like(), basal_piece()
    from scipy import ndimage

    # not touching voxel-for-voxel, not even diagonally across the slice gap
    assert not (ndimage.binary_dilation(main, structure=np.ones((3, 3, 3))) & piece).any()
    xs_main = np.nonzero(main[:, 40, 1])[0] * SPACING[0]
    xs_piece = np.nonzero(piece[:, 40, 0])[0] * SPACING[0]
    gap = xs_piece.min() - xs_main.max()
    assert 3.5 <= gap <= 5.0, gap  # ~4 mm in-plane shift


def test_far_spurious_blob_is_removed():
    main = heart_like()
    blob = np.zeros_like(main)
    blob[2:6, 2:6, 2] = True  # ~60 mm away
    out = largest_component(main | blob, SPACING)
    assert np.array_equal(out, main)
    assert out.dtype == bool


def test_basal_piece_across_a_slice_gap_is_kept():
    main, piece = heart_like(), basal_piece()
    out = largest_component(main | piece, SPACING, slice_axis=2, tolerance_mm=8.0)
    assert np.array_equal(out, main | piece)


def test_basal_piece_is_dropped_without_tolerance():
    main, piece = heart_like(), basal_piece()
    out = largest_component(main | piece, SPACING, slice_axis=2, tolerance_mm=0.0)
    assert np.array_equal(out, main)


def test_piece_and_far_blob_together():
    main, piece = heart_like(), basal_piece()
    blob = np.zeros_like(main)
    blob[70:75, 2:6, 3] = True
    out = largest_component(main | piece | blob, SPACING, tolerance_mm=8.0)
    assert np.array_equal(out, main | piece)
    assert np.array_equal(largest_component(main | piece | blob, SPACING), main)  # the default: 3D connectivity


def test_slice_axis_other_than_the_last():
    """The same scene stored with the slice axis first: the tolerance must follow it."""
    main, piece = heart_like(), basal_piece()
    blob = np.zeros_like(main)
    blob[2:6, 2:6, 2] = True
    scene = np.moveaxis(main | piece | blob, 2, 0)
    spacing = (SPACING[2], SPACING[0], SPACING[1])
    out = largest_component(scene, spacing, slice_axis=0, tolerance_mm=8.0)
    assert np.array_equal(out, np.moveaxis(main | piece, 2, 0))
    out0 = largest_component(scene, spacing, slice_axis=0, tolerance_mm=0.0)
    assert np.array_equal(out0, np.moveaxis(main, 2, 0))


def test_tolerance_is_in_plane_only():
    """Two pieces on slices 20 mm apart (an empty slice between) are not linked."""
    m = np.zeros((40, 40, 5), bool)
    m[10:30, 10:30, 0:2] = True
    m[10:30, 10:30, 3] = True  # one empty slice in between
    out = largest_component(m, SPACING, tolerance_mm=8.0)
    assert out[10:30, 10:30, 0:2].all()
    assert not out[..., 3].any()


def test_empty_and_single_component_masks():
    empty = np.zeros((5, 5, 3), bool)
    out = largest_component(empty, SPACING)
    assert not out.any() and out is not empty
    one = np.zeros((5, 5, 3), bool)
    one[1:3, 1:3, 1] = True
    assert np.array_equal(largest_component(one, SPACING), one)


def test_largest_component_does_not_mutate_its_input():
    m = heart_like() | basal_piece()
    m[2:6, 2:6, 2] = True
    before = m.copy()
    largest_component(m, SPACING, tolerance_mm=0.0)
    assert np.array_equal(m, before)


def test_keep_largest_components_per_label():
    shape = (80, 80, 6)
    labels = np.zeros(shape, np.uint8)
    labels[heart_like(shape)] = 3
    ring = np.zeros(shape, bool)
    for k in range(1, 5):
        ring[..., k] = disc(shape[:2], (50.0, 50.0), 22.0) & ~disc(shape[:2], (50.0, 50.0), 15.0)
    labels[ring] = 2
    rv = np.zeros(shape, bool)
    rv[2:12, 30:70, 1:5] = True
    labels[rv] = 1
    expected = labels.copy()
    # one spurious blob per label, far from its own label's main component
    labels[70:74, 2:6, 2] = 1
    labels[2:6, 2:6, 4] = 2
    labels[70:74, 72:76, 1] = 3
    before = labels.copy()
    out = keep_largest_components(labels, SPACING, (1, 2, 3))
    assert np.array_equal(labels, before), "input must not be modified"
    assert out.dtype == labels.dtype
    assert np.array_equal(out, expected)


def test_keep_largest_components_only_listed_labels_survive():
    labels = np.zeros((20, 20, 3), np.uint8)
    labels[2:8, 2:8, 1] = 1
    labels[12:18, 12:18, 1] = 2
    out = keep_largest_components(labels, SPACING, (1,))
    assert (out == 1).sum() == 36 and not (out == 2).any()


@pytest.mark.parametrize("label_value", [1, 2, 3])
def test_a_label_with_two_equal_halves_keeps_exactly_one(label_value):
    labels = np.zeros((60, 60, 3), np.uint8)
    labels[2:10, 2:10, 1] = label_value
    labels[50:58, 50:58, 1] = label_value
    out = keep_largest_components(labels, SPACING, (1, 2, 3))
    assert (out == label_value).sum() == 64


# ---------------------------------------------------------------------------- anatomy


def _phantom_frame():
    from cardioseg.phantom import PhantomSpec, heart_labels

    spec = PhantomSpec()
    return spec, heart_labels(spec, spec.n_frames // 2)  # ES: the smallest RV


def _with_stomach(labels, spec):
    """A decoy labelled RV where the stomach lies: below the heart (+X, +Y), on the apical
    slices, larger than the true RV and 15 mm from the myocardium at its closest."""
    out = labels.copy()
    heart = np.argwhere(np.isin(labels, (2, 3)))
    x0 = heart[:, 0].max() + round(15 / spec.spacing_mm[0])
    out[x0 : x0 + 50, 20:170, 4:10][out[x0 : x0 + 50, 20:170, 4:10] == 0] = 1
    return out


def test_anatomical_clean_up_keeps_the_rv_beside_the_septum_not_a_larger_decoy():
    from cardioseg.postprocess import anatomical_clean_up

    spec, labels = _phantom_frame()
    noisy = _with_stomach(labels, spec)
    assert (noisy == 1).sum() > 2 * (labels == 1).sum()  # the decoy is the largest RV piece
    largest = keep_largest_components(noisy, spec.spacing_mm, (1, 2, 3))
    assert ((largest == 1) & (labels == 1)).sum() == 0  # what a largest-component rule keeps
    out = anatomical_clean_up(noisy, spec.spacing_mm, lv=3, myo=2, rv=1)
    np.testing.assert_array_equal(out, labels)  # the true heart, exactly


def test_anatomical_clean_up_fills_the_cavity_and_drops_stray_pieces():
    from cardioseg.postprocess import anatomical_clean_up

    spec, labels = _phantom_frame()
    noisy = labels.copy()
    cavity = np.argwhere(labels[..., 3] == 3).mean(axis=0).round().astype(int)
    noisy[cavity[0] - 2 : cavity[0] + 3, cavity[1] - 2 : cavity[1] + 3, 3] = 2  # a papillary muscle
    noisy[5:9, 5:9, 2] = 3  # LV cavity far from the heart
    noisy[180:186, 180:186, 1] = 2  # myocardium far from the heart
    out = anatomical_clean_up(noisy, spec.spacing_mm, lv=3, myo=2, rv=1)
    np.testing.assert_array_equal(out, labels)
    assert not np.shares_memory(out, noisy)


def test_anatomical_clean_up_keeps_the_largest_rv_when_none_touches_the_myocardium():
    from cardioseg.postprocess import anatomical_clean_up

    m = np.zeros((60, 60, 3), np.uint8)
    m[10:20, 10:20] = 2
    m[12:18, 12:18] = 3
    m[50:54, 5:9] = 1  # small, far
    m[30:40, 45:58] = 1  # larger, far
    out = anatomical_clean_up(m, (1.0, 1.0, 8.0), lv=3, myo=2, rv=1, tolerance_mm=2)
    assert (out == 1).sum() == 10 * 13 * 3


@pytest.mark.parametrize("seed", range(4))
def test_filling_holes_on_the_bounding_box_equals_whole_slices(seed: int) -> None:
    from scipy import ndimage

    from cardioseg.postprocess import _fill_holes_in_plane

    rng = np.random.default_rng(seed)
    mask = np.zeros((40, 36, 5), dtype=bool)
    mask[8:30, 5:33] = ndimage.binary_opening(rng.random((22, 28, 5)) > 0.35, np.ones((2, 2, 1)))
    mask[1, :, 2] = True  # a row on the image's edge: its holes reach the border
    for axis in range(3):
        expected = np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(mask, axis, 0)])
        np.testing.assert_array_equal(_fill_holes_in_plane(mask, axis), np.moveaxis(expected, 0, axis))
    assert not _fill_holes_in_plane(np.zeros((4, 4, 2), bool), 2).any()


@pytest.mark.parametrize("seed", range(4))
def test_the_bordering_rv_component_on_a_box_equals_the_whole_volume(seed: int) -> None:
    from scipy import ndimage

    from cardioseg.postprocess import _bordering_component, _ellipsoid, _linked_components

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random((50, 44, 6)), (2.0, 2.0, 0.6))
    mask = field > np.quantile(field, 0.85)  # several blobs: the RV candidates
    wall = np.zeros_like(mask)
    wall[rng.integers(0, 40) :][:10, rng.integers(0, 34) :][:, :10, 1:4] = True
    radii, reach = [3, 3, 0], [2, 2, 0]
    components, n, sizes = _linked_components(mask, radii)  # the whole volume, as before the box
    near = ndimage.binary_dilation(wall, structure=_ellipsoid(reach))
    contact = np.bincount(components[mask & near], minlength=n + 1)
    contact[0] = 0
    best = int(np.argmax(contact)) if contact.max() > 0 else int(np.argmax(sizes))
    expected = mask & (components == best) if n > 1 else mask
    got = _bordering_component(mask, wall, radii, (1.0, 1.0, 8.0), 2, 2.0)
    np.testing.assert_array_equal(got, expected)


def _capped_apex(cap_radius_px: int):
    """The phantom frame with its apex remade as the last slices often are: on slice 7 a small
    cavity and no muscle, on slice 8 a disc of myocardium over that cavity (the apical cap). The
    cap touches the cavity (26-connected) but not the ring of myocardium of slice 6."""
    spec, labels = _phantom_frame()
    centre = np.argwhere(labels[..., 6] == 3).mean(axis=0).round().astype(int)
    x, y = np.ogrid[: labels.shape[0], : labels.shape[1]]
    near = (x - centre[0]) ** 2 + (y - centre[1]) ** 2
    labels = labels.copy()
    labels[..., 7] = np.where(near <= 9, 3, 0)
    labels[..., 8] = np.where(near <= cap_radius_px**2, 2, 0)
    return spec, labels


def test_anatomical_clean_up_keeps_the_apical_cap():
    from cardioseg.postprocess import anatomical_clean_up, keep_largest_components

    spec, labels = _capped_apex(3)
    assert 20 <= (labels[..., 8] == 2).sum() * spec.spacing_mm[0] * spec.spacing_mm[1]
    largest = keep_largest_components(labels, spec.spacing_mm, (1, 2, 3))
    assert not (largest[..., 8] == 2).any()  # the wall's largest component alone drops it
    np.testing.assert_array_equal(anatomical_clean_up(labels, spec.spacing_mm, lv=3, myo=2, rv=1), labels)
    dropped = anatomical_clean_up(labels, spec.spacing_mm, lv=3, myo=2, rv=1, apical_cap_mm2=None)
    assert not (dropped[..., 8] == 2).any()
    np.testing.assert_array_equal(dropped[..., :8], labels[..., :8])


def test_a_speck_beyond_the_apex_is_not_a_cap():
    from cardioseg.postprocess import anatomical_clean_up

    spec, labels = _capped_apex(1)  # 5 pixels, ~10 mm2
    out = anatomical_clean_up(labels, spec.spacing_mm, lv=3, myo=2, rv=1)
    assert not (out[..., 8] == 2).any()
    np.testing.assert_array_equal(out[..., :8], labels[..., :8])


def test_the_apex_is_told_by_the_smaller_cavity_whatever_the_slice_order():
    from cardioseg.postprocess import anatomical_clean_up

    spec, labels = _capped_apex(3)
    flipped = labels[..., ::-1]  # apex first: the cap on slice 1
    np.testing.assert_array_equal(anatomical_clean_up(flipped, spec.spacing_mm, lv=3, myo=2, rv=1), flipped)


@pytest.mark.parametrize("seed", range(3))
def test_anatomical_clean_up_of_a_heart_is_the_same_wherever_it_lies_in_the_field(seed: int) -> None:
    """The clean-up works on the labels' bounding box: a heart with stray pieces, its holes and
    a decoy, placed anywhere in a larger field (at its edges too), is cleaned as it is alone."""
    from scipy import ndimage

    from cardioseg.postprocess import anatomical_clean_up

    rng = np.random.default_rng(seed)
    _, heart = _phantom_frame()
    heart = heart.copy()
    noise = ndimage.binary_opening(rng.random(heart.shape) > 0.93, np.ones((2, 2, 1)))
    heart[noise] = rng.integers(0, 4, size=int(noise.sum()))  # stray pieces and holes of every label
    alone = anatomical_clean_up(heart, SPACING, lv=3, myo=2, rv=1)
    x, y, z = heart.shape
    for at in [(0, 0), (40, 17), (40, 60)]:  # a corner, inside, the opposite corner
        field = np.zeros((x + 40, y + 60, z), np.uint8)
        field[at[0] : at[0] + x, at[1] : at[1] + y] = heart
        got = anatomical_clean_up(field, SPACING, lv=3, myo=2, rv=1)
        expected = np.zeros_like(field)
        expected[at[0] : at[0] + x, at[1] : at[1] + y] = alone
        np.testing.assert_array_equal(got, expected)
    assert not anatomical_clean_up(np.zeros((5, 5, 3), np.uint8), SPACING, lv=3, myo=2, rv=1).any()
