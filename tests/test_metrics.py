"""Segmentation and agreement metrics against hand computation, brute force and SimpleITK."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage, stats
from scipy.spatial.distance import cdist

from cardioseg.metrics import (
    SurfaceDistances,
    agreement,
    assd_mm,
    dice,
    hausdorff_mm,
    hd95_mm,
    jaccard,
    msd_mm,
    slice_regions,
    surface_distances,
    surface_voxels,
    volume_difference_ml,
    wilcoxon_p,
)

ANISO = (1.25, 1.25, 10.0)
NAN, INF = float("nan"), float("inf")
DISTANCES = (hausdorff_mm, hd95_mm, assd_mm, msd_mm)


def voxels(shape, *points) -> np.ndarray:
    m = np.zeros(shape, bool)
    for p in points:
        m[p] = True
    return m


def cube(shape, centre, half: int) -> np.ndarray:
    """A cube of side 2*half+1 voxels centred on ``centre``."""
    m = np.zeros(shape, bool)
    m[tuple(slice(c - half, c + half + 1) for c in centre)] = True
    return m


def sphere(shape, centre, radius: float) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def blob(rng: np.random.Generator, shape, pad: int = 0) -> np.ndarray:
    """Smoothed random noise thresholded; ``pad`` background voxels on every side."""
    m = ndimage.gaussian_filter(rng.standard_normal(shape), 1.2) > 0.05
    if pad:
        m = np.pad(m[tuple(slice(pad, -pad) for _ in shape)], pad)
    assert m.any()
    return m


def brute_surface(m: np.ndarray) -> np.ndarray:
    """Surface by the definition: a face neighbour outside the mask (zero padding = outside)."""
    p = np.pad(m, 1)
    inner = tuple(slice(1, -1) for _ in m.shape)
    outside = np.zeros_like(m)
    for axis in range(m.ndim):
        for step in (-1, 1):
            outside |= ~np.roll(p, step, axis=axis)[inner]
    return m & outside


def brute_directed(a: np.ndarray, b: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    pa = np.argwhere(brute_surface(a)) * np.asarray(spacing)
    pb = np.argwhere(brute_surface(b)) * np.asarray(spacing)
    d = cdist(pa, pb)
    return d.min(axis=1), d.min(axis=0)


def to_sitk(m: np.ndarray, spacing) -> sitk.Image:
    """numpy (x, y, z) -> SimpleITK image (sitk reads the last numpy axis as x)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(m.astype(np.uint8).transpose(2, 1, 0)))
    img.SetSpacing(tuple(float(s) for s in spacing))
    return img


def sitk_contour(m: np.ndarray, spacing) -> np.ndarray:
    """SimpleITK's face-connected binary contour, back as a numpy (x, y, z) bool array."""
    contour = sitk.BinaryContour(to_sitk(m, spacing), fullyConnected=False, backgroundValue=0, foregroundValue=1)
    return sitk.GetArrayFromImage(contour).transpose(2, 1, 0) != 0


def sitk_hausdorff(a: np.ndarray, b: np.ndarray, spacing) -> tuple[float, float]:
    f = sitk.HausdorffDistanceImageFilter()
    f.Execute(to_sitk(a, spacing), to_sitk(b, spacing))
    return f.GetHausdorffDistance(), f.GetAverageHausdorffDistance()


# ------------------------------------------------------------------------------ overlap


def test_dice_and_jaccard_by_hand():
    a = voxels((4, 4, 1), (0, 0, 0), (0, 1, 0), (0, 2, 0))  # 3 voxels
    b = voxels((4, 4, 1), (0, 1, 0), (0, 2, 0), (1, 2, 0), (2, 2, 0), (3, 2, 0))  # 5 voxels, 2 shared
    assert dice(a, b) == pytest.approx(2 * 2 / 8)
    assert jaccard(a, b) == pytest.approx(2 / 6)
    assert dice(np.array([0, 3, -1, 0], np.int16), np.array([0.0, 0.5, 0.0, 0.0])) == pytest.approx(2 / 3)


def test_volume_difference_uses_the_anisotropic_voxel_volume():
    pred, ref = np.zeros((6, 6, 4), np.uint8), np.zeros((6, 6, 4), np.uint8)
    pred[:4, :4, :2] = 1  # 32 voxels
    ref[:2, :2, :3] = 1  # 12 voxels
    assert volume_difference_ml(pred, ref, ANISO) == pytest.approx(20 * 1.25 * 1.25 * 10 / 1000)
    assert volume_difference_ml(ref, pred, ANISO) == pytest.approx(-0.3125)


# ------------------------------------------------------------------------------ surfaces


def test_surface_voxels_of_a_block_and_at_the_border():
    m = np.zeros((5, 5, 5), bool)
    m[1:4, 1:4, 1:4] = True
    expected = m.copy()
    expected[2, 2, 2] = False  # the only voxel with all 6 face neighbours inside
    assert np.array_equal(surface_voxels(m), expected)
    assert surface_voxels(np.ones((3, 3, 3))).sum() == 26  # the array border counts as outside


@pytest.mark.parametrize("seed", range(3))
def test_surface_voxels_match_the_definition_and_sitk_face_connected_contour(seed):
    m = blob(np.random.default_rng(seed), (16, 16, 10), pad=2)
    ours = surface_voxels(m)
    assert np.array_equal(ours, brute_surface(m))
    # BinaryContour with fullyConnected=False is exactly our 6-face-neighbour surface
    # (fullyConnected=True gives a thicker contour); SimpleITK does not treat the image
    # border as outside, which is why the blobs are padded here.
    assert np.array_equal(sitk_contour(m, (1, 1, 1)), ours)


SINGLE_VOXEL_CASES = [
    ((0, 0, 0), (2, 0, 0), (1.0, 1.0, 1.0), 2.0),
    ((0, 0, 0), (1, 0, 0), (2.0, 2.0, 2.0), 2.0),
    ((1, 1, 0), (1, 1, 1), ANISO, 10.0),
    ((0, 1, 0), (3, 1, 2), ANISO, math.hypot(1.25 * 3, 10.0 * 2)),
    ((0, 0, 2), (2, 3, 0), ANISO, math.sqrt((1.25 * 2) ** 2 + (1.25 * 3) ** 2 + 20.0**2)),
]


@pytest.mark.parametrize(("p", "q", "spacing", "expected"), SINGLE_VOXEL_CASES)
def test_two_single_voxels(p, q, spacing, expected):
    a, b = voxels((4, 4, 3), p), voxels((4, 4, 3), q)
    for fn in DISTANCES:
        assert fn(a, b, spacing) == pytest.approx(expected)
        assert fn(b, a, spacing) == pytest.approx(expected)
    assert dice(a, b) == 0.0
    assert jaccard(a, b) == 0.0


def test_identical_masks():
    m = blob(np.random.default_rng(7), (10, 10, 5))
    assert dice(m, m) == 1.0
    assert jaccard(m, m) == 1.0
    for fn in DISTANCES:
        assert fn(m, m.astype(np.uint8), ANISO) == 0.0


def test_concentric_cubes_exact():
    a, b, c = 2, 5, (8, 8, 8)
    inner, outer = cube((17, 17, 17), c, a), cube((17, 17, 17), c, b)
    d = surface_distances(inner, outer, (1.0, 1.0, 1.0))
    n_in, n_out = (2 * a + 1) ** 3 - (2 * a - 1) ** 3, (2 * b + 1) ** 3 - (2 * b - 1) ** 3
    # every inner-surface voxel is b - a voxels from the nearest outer face
    assert d.pred_to_ref_mm.size == n_in
    assert d.pred_to_ref_mm == pytest.approx(b - a)
    # an outer-surface voxel q is sqrt(sum max(|q_i| - a, 0)^2) from the inner cube (its surface)
    q = np.argwhere(brute_surface(outer)) - np.asarray(c)
    analytic = np.sqrt((np.clip(np.abs(q) - a, 0, None) ** 2).sum(axis=1))
    assert np.sort(d.ref_to_pred_mm) == pytest.approx(np.sort(analytic))
    assert d.hd_mm == pytest.approx(math.sqrt(3) * (b - a))  # outer corner to inner corner
    assert d.msd_mm == pytest.approx(0.5 * ((b - a) + analytic.mean()))
    assert d.assd_mm == pytest.approx((n_in * (b - a) + analytic.sum()) / (n_in + n_out))
    assert d.assd_mm > d.msd_mm  # the larger (and farther) outer surface weighs more in ASSD


def test_concentric_spheres_hd_is_the_radius_difference_within_a_voxel():
    inner, outer = sphere((31, 31, 31), (15, 15, 15), 5), sphere((31, 31, 31), (15, 15, 15), 11)
    for spacing in (1.0, 0.7):
        assert abs(hausdorff_mm(inner, outer, (spacing,) * 3) - 6 * spacing) <= spacing


def test_msd_equals_assd_for_translated_copies():
    m = blob(np.random.default_rng(3), (14, 14, 8), pad=3)
    shifted = np.roll(m, (2, -1, 1), axis=(0, 1, 2))
    d = surface_distances(m, shifted, (1.3, 0.9, 7.5))
    assert d.pred_to_ref_mm.size == d.ref_to_pred_mm.size
    assert d.msd_mm == pytest.approx(d.assd_mm)


def test_slab_shifted_one_slice_vs_one_pixel_with_anisotropic_spacing():
    slab = np.zeros((14, 14, 8), bool)
    slab[2:12, 2:12, 2:5] = True
    assert hausdorff_mm(slab, np.roll(slab, 1, axis=2), ANISO) == pytest.approx(10.0)
    assert hausdorff_mm(slab, np.roll(slab, 1, axis=0), ANISO) == pytest.approx(1.25)
    assert hausdorff_mm(slab, np.roll(slab, 1, axis=1), ANISO) == pytest.approx(1.25)


def test_hd95_differs_from_hd_with_one_outlier_voxel():
    ref = np.zeros((20, 20, 6), bool)
    ref[2:10, 2:10, 1:5] = True
    pred = ref.copy()
    pred[18, 18, 3] = True  # a far, isolated false positive
    d = surface_distances(pred, ref, (1.0, 1.0, 1.0))
    assert d.hd_mm == pytest.approx(math.hypot(18 - 9, 18 - 9))
    assert d.hd95_mm == pytest.approx(0.0)  # 1 outlier among ~210 surface voxels: below the 95th percentile
    fwd, bwd = brute_directed(pred, ref, (1.0, 1.0, 1.0))
    assert d.hd95_mm == pytest.approx(max(np.percentile(fwd, 95), np.percentile(bwd, 95)))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("spacing", [(1.3, 0.9, 7.5), (1.0, 1.0, 1.0)])
def test_distances_match_brute_force_on_random_blobs(seed, spacing):
    rng = np.random.default_rng(seed)
    a, b = blob(rng, (12, 12, 6)), blob(rng, (12, 12, 6))  # these touch the array border
    a[11, 0, 5] = b[0, 11, 0] = True  # and certainly so, with isolated corner voxels likely
    fwd, bwd = brute_directed(a, b, spacing)
    d = surface_distances(a, b, spacing)
    assert np.sort(d.pred_to_ref_mm) == pytest.approx(np.sort(fwd))
    assert np.sort(d.ref_to_pred_mm) == pytest.approx(np.sort(bwd))
    assert hausdorff_mm(a, b, spacing) == pytest.approx(max(fwd.max(), bwd.max()))
    assert hd95_mm(a, b, spacing) == pytest.approx(max(np.percentile(fwd, 95), np.percentile(bwd, 95)))
    assert assd_mm(a, b, spacing) == pytest.approx(np.concatenate([fwd, bwd]).mean())
    assert msd_mm(a, b, spacing) == pytest.approx(0.5 * (fwd.mean() + bwd.mean()))


@pytest.mark.parametrize("seed", range(2))
def test_results_do_not_depend_on_where_the_masks_sit_in_the_array(seed):
    rng = np.random.default_rng(seed)
    a, b = blob(rng, (12, 12, 6)), blob(rng, (12, 12, 6))
    reference = surface_distances(a, b, (1.3, 0.9, 7.5))  # the blobs touch this array's border
    for offset in [(0, 0, 0), (5, 1, 3), (9, 9, 9)]:
        big_a, big_b = np.zeros((30, 25, 20), bool), np.zeros((30, 25, 20), bool)
        where = tuple(slice(o, o + s) for o, s in zip(offset, a.shape))
        big_a[where], big_b[where] = a, b
        d = surface_distances(big_a, big_b, (1.3, 0.9, 7.5))
        assert np.array_equal(np.sort(d.pred_to_ref_mm), np.sort(reference.pred_to_ref_mm))
        assert np.array_equal(np.sort(d.ref_to_pred_mm), np.sort(reference.ref_to_pred_mm))
        assert (d.hd_mm, d.hd95_mm, d.assd_mm, d.msd_mm) == (
            reference.hd_mm, reference.hd95_mm, reference.assd_mm, reference.msd_mm
        )


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 0.8, 0.8), (1.3, 0.9, 2.5)])
def test_hd_and_msd_match_sitk_on_surface_images(seed, spacing):
    rng = np.random.default_rng(100 + seed)
    a, b = blob(rng, (18, 18, 12), pad=2), blob(rng, (18, 18, 12), pad=2)
    d = surface_distances(a, b, spacing)
    for sa, sb in [(surface_voxels(a), surface_voxels(b)), (sitk_contour(a, spacing), sitk_contour(b, spacing))]:
        hd, avg = sitk_hausdorff(sa, sb, spacing)
        assert d.hd_mm == pytest.approx(hd)
        assert d.msd_mm == pytest.approx(avg)  # ITK's "average Hausdorff" = mean of the directed means


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 0.8, 0.8)])
def test_hd_matches_sitk_region_hausdorff_for_spheres(spacing):
    # for concentric and for translated spheres the region-based and surface-based HD coincide
    c = (12, 12, 12)
    pairs = [
        (sphere((25, 25, 25), c, 4), sphere((25, 25, 25), c, 8)),
        (sphere((25, 25, 25), c, 6), sphere((25, 25, 25), (14, 11, 13), 6)),
    ]
    for a, b in pairs:
        assert hausdorff_mm(a, b, spacing) == pytest.approx(sitk_hausdorff(a, b, spacing)[0])


# ------------------------------------------------------------------------------ empty masks

EMPTY_CASES = [(True, True, NAN, NAN), (True, False, 0.0, INF), (False, True, 0.0, INF)]


def same(value: float, expected: float) -> bool:
    return value == expected or (math.isnan(expected) and math.isnan(value))


def pred_ref(pred_empty: bool, ref_empty: bool) -> tuple[np.ndarray, np.ndarray]:
    full = cube((7, 7, 3), (3, 3, 1), 1)
    return (np.zeros_like(full) if pred_empty else full), (np.zeros_like(full) if ref_empty else full)


@pytest.mark.parametrize(("pred_empty", "ref_empty", "overlap", "distance"), EMPTY_CASES)
def test_overlap_of_empty_masks(pred_empty, ref_empty, overlap, distance):
    pred, ref = pred_ref(pred_empty, ref_empty)
    assert same(dice(pred, ref), overlap)
    assert same(jaccard(pred, ref), overlap)


@pytest.mark.parametrize(("pred_empty", "ref_empty", "overlap", "distance"), EMPTY_CASES)
def test_distances_of_empty_masks(pred_empty, ref_empty, overlap, distance):
    pred, ref = pred_ref(pred_empty, ref_empty)
    d = surface_distances(pred, ref, ANISO)
    values = [d.hd_mm, d.hd95_mm, d.assd_mm, d.msd_mm, d.mean_pred_to_ref_mm, d.mean_ref_to_pred_mm]
    values += [d.percentile_mm(50), *(fn(pred, ref, ANISO) for fn in DISTANCES)]
    assert [same(v, distance) for v in values] == [True] * len(values), values


@pytest.mark.parametrize(("pred_to_ref", "ref_to_pred", "expected"), [([], [], NAN), ([], [1.0], INF), ([3], [], INF)])
def test_surface_distances_properties_with_an_empty_direction(pred_to_ref, ref_to_pred, expected):
    d = SurfaceDistances(np.array(pred_to_ref, float), np.array(ref_to_pred, float))
    values = [d.hd_mm, d.hd95_mm, d.assd_mm, d.msd_mm, d.mean_pred_to_ref_mm, d.mean_ref_to_pred_mm]
    for value in [*values, d.percentile_mm(50)]:
        assert same(value, expected)


# ------------------------------------------------------------------------------ validation


def test_inputs_are_not_modified():
    rng = np.random.default_rng(5)
    a, b = blob(rng, (10, 10, 5)).astype(np.uint8) * 3, blob(rng, (10, 10, 5))
    a0, b0, spacing = a.copy(), b.copy(), [1.3, 0.9, 7.5]
    _ = dice(a, b), jaccard(a, b), volume_difference_ml(a, b, spacing), surface_voxels(a), slice_regions(a, 2)
    _ = surface_distances(a, b, spacing).hd95_mm
    assert np.array_equal(b, b0)
    assert spacing == [1.3, 0.9, 7.5]
    assert np.array_equal(a, a0) and a.dtype == np.uint8


@pytest.mark.parametrize("fn", [dice, jaccard])
def test_overlap_rejects_mismatched_shapes(fn):
    with pytest.raises(ValueError, match="shape"):
        fn(np.zeros((3, 3, 2)), np.zeros((3, 3, 3)))


@pytest.mark.parametrize("fn", [volume_difference_ml, surface_distances, *DISTANCES])
@pytest.mark.parametrize(
    ("shape_b", "spacing"),
    [((3, 3, 3), (1, 1, 1)), ((3, 3, 2), (1, 1))]  # shapes differ; wrong spacing length
    + [((3, 3, 2), (1, bad, 1)) for bad in (0, -1, INF, NAN)],  # non-positive or non-finite spacing
)
def test_spacing_and_shape_validation(fn, shape_b, spacing):
    a = np.zeros((3, 3, 2))
    a[1, 1, 1] = 1
    with pytest.raises(ValueError):
        fn(a, np.ones(shape_b), spacing)


# ------------------------------------------------------------------------------ regions


def lv_reference(n_slices: int = 12, first: int = 2, last: int = 9) -> np.ndarray:
    """LV (label 3) in slices first..last, growing towards the high (basal) end."""
    ref = np.zeros((8, 8, n_slices), np.uint8)
    for i, z in enumerate(range(first, last + 1)):
        ref[: 1 + i // 2, :4, z] = 3
    return ref


def test_slice_regions_apical_mid_basal_and_beyond():
    got = list(slice_regions(lv_reference(), 2))  # LV in 2..9: n = 8, k = 2 per end
    assert got == ["apical"] * 4 + ["mid"] * 4 + ["basal"] * 4


def test_slice_regions_flip_with_the_array():
    got = list(slice_regions(lv_reference()[..., ::-1], 2))
    assert got == ["basal"] * 4 + ["mid"] * 4 + ["apical"] * 4


@pytest.mark.parametrize(("n", "k"), [(3, 1), (5, 1), (6, 2), (8, 2), (10, 3)])  # n/4 with halves rounded up
def test_slice_regions_end_size(n, k):
    got = list(slice_regions(lv_reference(n, 0, n - 1), 2))
    assert got == ["apical"] * k + ["mid"] * (n - 2 * k) + ["basal"] * k


@pytest.mark.parametrize("n_present", [0, 1, 2])
def test_slice_regions_few_slices_are_all_mid(n_present):
    ref = np.zeros((4, 4, 8), np.uint8)
    ref[1, 1, 3 : 3 + n_present] = 3
    assert list(slice_regions(ref, 2)) == ["mid"] * 8


def test_slice_regions_along_another_axis():
    ref = np.moveaxis(lv_reference(), 2, 0)
    assert list(slice_regions(ref, 0)) == ["apical"] * 4 + ["mid"] * 4 + ["basal"] * 4


def test_slice_regions_apex_decided_by_apex_values_only():
    ref = lv_reference()
    ref[:, 4:, 2:4] = 1  # a big RV (label 1) at the low, apical end
    assert list(slice_regions(ref, 2, apex_values=[3]))[:4] == ["apical"] * 4
    assert list(slice_regions(ref, 2))[:4] == ["basal"] * 4  # all foreground: low end now larger
    assert list(slice_regions(ref, 2, apex_values=[7]))[:4] == ["basal"] * 4  # absent -> all foreground


# ------------------------------------------------------------------------------ statistics


def test_agreement_by_hand():
    pred, ref = [10.0, 12.0, 15.0, 20.0], [11.0, 11.0, 14.0, 16.0]  # differences -1, 1, 1, 4
    a = agreement(pred, ref)
    sd = math.sqrt((2.25**2 + 0.25**2 + 0.25**2 + 2.75**2) / 3)  # ddof = 1, sqrt(4.25)
    assert a.n == 4
    assert a.bias == pytest.approx(1.25)
    assert a.sd_diff == pytest.approx(sd)
    assert (a.loa_low, a.loa_high) == (pytest.approx(1.25 - 1.96 * sd), pytest.approx(1.25 + 1.96 * sd))
    assert a.mae == pytest.approx(1.75)
    assert a.pearson_r == pytest.approx(np.corrcoef(pred, ref)[0, 1])
    assert a.pearson_r == pytest.approx(stats.pearsonr(pred, ref)[0])


def test_agreement_drops_non_finite_pairs():
    clean = agreement([10.0, 12.0, 15.0, 20.0], [11.0, 11.0, 14.0, 16.0])
    dirty = agreement([10.0, NAN, 12.0, 15.0, 3.0, 20.0], [11.0, 5.0, 11.0, 14.0, INF, 16.0])
    assert dirty == clean


def test_agreement_with_one_pair():
    a = agreement([5.0, NAN], [3.0, 1.0])
    assert (a.n, a.bias, a.mae) == (1, 2.0, 2.0)
    assert all(math.isnan(v) for v in (a.sd_diff, a.loa_low, a.loa_high, a.pearson_r))


@pytest.mark.parametrize(("pred", "ref"), [([], []), ([NAN], [1.0])])
def test_agreement_with_no_pairs(pred, ref):
    a = agreement(pred, ref)
    assert a.n == 0
    assert all(math.isnan(v) for v in (a.pearson_r, a.bias, a.sd_diff, a.loa_low, a.loa_high, a.mae))


def test_agreement_constant_side_has_no_correlation():
    a = agreement([2.0, 2.0, 2.0], [1.0, 2.0, 4.0])
    assert math.isnan(a.pearson_r)
    assert a.bias == pytest.approx(-1 / 3)


def test_agreement_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        agreement([1.0, 2.0], [1.0])


def test_wilcoxon_equal_inputs():
    assert wilcoxon_p([1.0, 2.0, 5.0, 7.0], [1.0, 2.0, 5.0, 7.0]) == (4, 1.0)


def test_wilcoxon_clear_shift_matches_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(50, 10, 20)
    y = x + 2.0 + rng.normal(0, 0.5, 20)
    n, p = wilcoxon_p(x, y)
    assert n == 20
    assert p < 0.01
    assert p == pytest.approx(stats.wilcoxon(x, y, zero_method="wilcox").pvalue)


def test_wilcoxon_drops_non_finite_pairs():
    rng = np.random.default_rng(1)
    x, y = rng.normal(0, 1, 12), rng.normal(0.5, 1, 12)
    assert wilcoxon_p(np.append(x, [NAN, 1.0]), np.append(y, [0.0, INF])) == wilcoxon_p(x, y)
    assert wilcoxon_p(x, y)[0] == 12


@pytest.mark.parametrize(("a", "b"), [([], []), ([NAN, 1.0], [1.0, INF])])
def test_wilcoxon_without_pairs(a, b):
    n, p = wilcoxon_p(a, b)
    assert n == 0
    assert math.isnan(p)
