"""The ``--overlay`` montage: a valid PNG, orientation-independent, contours in the label colours."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from cardioseg import overlay
from cardioseg.clinical import FrameVolumes, frame_volumes
from cardioseg.errors import ConfigError
from cardioseg.io import Volume
from cardioseg.labels import ACDC, MNMS
from cardioseg.overlay import (
    STRUCTURE_STYLE,
    canonical_stack,
    display_slice,
    orientation_text,
    write_overlay,
    write_study_overlay,
)

requires_mpl = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SPACING = (1.5, 1.2, 8.0)  # anisotropic in-plane on purpose
AFFINE = np.diag([*SPACING, 1.0])  # stored +x = patient right, +y = anterior


def heart(shape=(40, 36, 4), rv=True, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """(image, ACDC mask) in stored (X, Y, Z): LV disc, myocardial ring, RV at high x (patient right)."""
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    r = np.hypot((x - 14) * SPACING[0], (y - 18) * SPACING[1])
    mask2d = np.zeros(shape[:2], np.uint8)
    mask2d[r <= 12] = 2
    mask2d[r <= 7] = 3
    if rv:
        mask2d[(np.abs(x - 30) <= 4) & (np.abs(y - 18) <= 8)] = 1
    mask = np.repeat(mask2d[..., None], shape[2], axis=2)
    mask[..., -1] = np.where(mask[..., -1] == 1, 0, mask[..., -1])  # no RV in the last slice
    rng = np.random.default_rng(seed)
    base = np.choose(mask, [300, 800, 250, 900]).astype(np.float64)
    image = base + 4.0 * x[..., None] + 2.0 * y[..., None] + 10.0 * np.arange(shape[2]) + rng.normal(0, 20, shape)
    return image.astype(np.int16), mask


def png(path: Path) -> np.ndarray:
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return mpimg.imread(str(path))


def colour_pixels(rgba: np.ndarray, hex_colour: str, tol: float = 0.12) -> int:
    from matplotlib.colors import to_rgb

    return int(np.all(np.abs(rgba[..., :3] - np.array(to_rgb(hex_colour))) < tol, axis=-1).sum())


@requires_mpl
def test_png_is_valid_and_sized_by_rows_and_columns(tmp_path: Path) -> None:
    image, mask = heart(shape=(40, 36, 12))
    one = write_overlay([image], [mask], AFFINE, ["frame"], ACDC, tmp_path / "one.png", crop=False)
    two = write_overlay([image, image], [mask, mask], AFFINE, ["ED", "ES"], ACDC, tmp_path / "two.png", crop=False)
    wrapped = write_overlay([image], [mask], AFFINE, ["f"], ACDC, tmp_path / "wrap.png", crop=False, max_cols=4)
    a, b, w = png(one), png(two), png(wrapped)
    panel_w = overlay.PANEL_IN * overlay.DPI
    panel_h = panel_w * (36 * 1.2) / (40 * 1.5)  # physical aspect of the field of view
    # 12 slices, 10 per block: 10 columns, two blocks
    assert a.shape[1] == pytest.approx(10 * panel_w + 9 * overlay.GAP_IN * overlay.DPI + 36, abs=2)
    assert b.shape[0] - a.shape[0] == pytest.approx(2 * (panel_h + overlay.GAP_IN * overlay.DPI), abs=3)
    # max_cols=4: three blocks of four, narrower and taller
    assert w.shape[1] < a.shape[1] and w.shape[0] - a.shape[0] == pytest.approx(panel_h, abs=20)


@requires_mpl
def test_pixels_keep_their_physical_aspect_ratio(tmp_path: Path) -> None:
    """A square array of 1 x 2 mm pixels is drawn twice as tall as wide."""
    flat = np.full((30, 30, 1), 5, np.int16)  # constant -> drawn black (bottom of the window)
    path = write_overlay([flat], [np.zeros_like(flat)], np.diag([1.0, 2.0, 8.0, 1.0]), [""], ACDC,
                         tmp_path / "a.png", crop=False)  # fmt: skip
    rgba = png(path)
    body = rgba[int(overlay.HEADER_IN * overlay.DPI) :, int(overlay.LEFT_IN * overlay.DPI) :, :3]
    rows, cols = np.nonzero(np.all(body < 0.05, axis=-1))
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert width == pytest.approx(overlay.PANEL_IN * overlay.DPI, abs=2)
    assert height / width == pytest.approx(2.0, abs=0.03)


def _stored_variants(image: np.ndarray, mask: np.ndarray):
    """The same physical image stored with flipped / swapped / slice-first axes."""
    nx, ny, _ = image.shape
    flip_xy = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    flip_xy[:3, 3] = [(nx - 1) * SPACING[0], (ny - 1) * SPACING[1], 0]
    yield "flip_xy", image[::-1, ::-1], mask[::-1, ::-1], flip_xy
    swap = AFFINE[:, [1, 0, 2, 3]]
    yield "swap_xy", image.transpose(1, 0, 2), mask.transpose(1, 0, 2), swap
    slice_first = AFFINE[:, [2, 0, 1, 3]]
    yield "slice_first", image.transpose(2, 0, 1), mask.transpose(2, 0, 1), slice_first


@requires_mpl
def test_flipped_or_permuted_storage_gives_the_same_montage(tmp_path: Path) -> None:
    image, mask = heart()
    ref = png(write_overlay([image], [mask], AFFINE, ["f"], ACDC, tmp_path / "ref.png", title="t"))
    for name, img, msk, aff in _stored_variants(image, mask):
        out = png(write_overlay([img], [msk], aff, ["f"], ACDC, tmp_path / f"{name}.png", title="t"))
        assert out.shape == ref.shape, name
        assert np.array_equal(out, ref), name


def test_panels_follow_the_file_slice_order_and_radiological_view() -> None:
    _, mask = heart()
    canon, spacing = canonical_stack(mask, AFFINE)
    assert spacing == (SPACING[0], SPACING[1])
    flipped_aff = AFFINE.copy()
    flipped_aff[2, 2] = -SPACING[2]
    flipped, _ = canonical_stack(mask[:, :, ::-1], flipped_aff)
    assert np.array_equal(flipped, canon[:, :, ::-1])  # panel k is always the file's slice k
    shown = display_slice(canon[:, :, 0])
    rv_cols = np.nonzero(shown == ACDC.rv)[1]
    lv_cols = np.nonzero(shown == ACDC.lv)[1]
    assert rv_cols.mean() < lv_cols.mean()  # patient right (the RV) on the viewer's left
    assert orientation_text(AFFINE) == "viewer's left R, right L, top A, bottom P"
    assert orientation_text(np.diag([-1.5625, -1.5625, 10.0, 1.0])) == orientation_text(AFFINE)


@requires_mpl
def test_contours_are_drawn_in_the_label_colours(tmp_path: Path) -> None:
    image, full = heart()
    _, no_rv = heart(rv=False)
    empty = np.zeros_like(full)
    rv_c, lv_c, myo_c = (STRUCTURE_STYLE[k][1] for k in ("rv", "lv", "myo"))
    counts = {}
    for name, mask in (("full", full), ("no_rv", no_rv), ("empty", empty)):
        rgba = png(write_overlay([image], [mask], AFFINE, ["f"], ACDC, tmp_path / f"{name}.png", crop=False))
        counts[name] = {c: colour_pixels(rgba, c) for c in (rv_c, lv_c, myo_c)}
    legend_only = counts["empty"]  # the legend names every structure, drawn or not
    assert all(0 < n < 200 for n in legend_only.values())
    assert counts["full"][rv_c] > legend_only[rv_c] + 100
    assert counts["no_rv"][rv_c] == legend_only[rv_c]  # no RV -> no RV contour
    for c in (lv_c, myo_c):
        assert counts["full"][c] > legend_only[c] + 100 and counts["no_rv"][c] > legend_only[c] + 100


@requires_mpl
def test_label_numbers_come_from_the_label_map(tmp_path: Path) -> None:
    image, acdc_mask = heart()
    lut = np.zeros(4, np.uint8)
    for key, value in ACDC.structures.items():
        lut[value] = MNMS.structures[key]
    mnms_mask = lut[acdc_mask]
    a = png(write_overlay([image], [acdc_mask], AFFINE, ["f"], ACDC, tmp_path / "acdc.png"))
    b = png(write_overlay([image], [mnms_mask], AFFINE, ["f"], MNMS, tmp_path / "mnms.png"))
    assert np.array_equal(a, b)


@requires_mpl
def test_cine_overlay_has_the_volume_curves_and_is_deterministic(tmp_path: Path, small_phantom) -> None:
    ph = small_phantom
    vol = Volume(ph.image, ph.affine, Path("phantom_cine.nii.gz"))
    per_frame = [frame_volumes(ph.labels[..., t], vol.voxel_volume_ml, ACDC) for t in range(vol.n_frames)]
    kwargs = {"ed_index": ph.ed_frame, "es_index": ph.es_frame, "title": "phantom"}
    with_curve = write_study_overlay("cine", [vol], [ph.labels], ACDC, tmp_path / "a.png", per_frame=per_frame,
                                     **kwargs)  # fmt: skip
    again = write_study_overlay("cine", [vol], [ph.labels], ACDC, tmp_path / "b.png", per_frame=per_frame, **kwargs)
    without = write_study_overlay("cine", [vol], [ph.labels], ACDC, tmp_path / "c.png", **kwargs)
    assert with_curve.read_bytes() == again.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "c.png"]  # no temporary files left
    a, c = png(with_curve), png(without)
    extra = (overlay.CURVE_PAD_TOP_IN + overlay.CURVE_IN + overlay.CURVE_PAD_BOTTOM_IN) * overlay.DPI
    assert a.shape[0] - c.shape[0] == pytest.approx(extra, abs=2)
    curve = a[c.shape[0] :]
    for key in ("lv", "rv"):
        assert colour_pixels(curve, STRUCTURE_STYLE[key][1]) > 200  # both curves drawn


@requires_mpl
def test_pair_and_frame_studies(tmp_path: Path) -> None:
    image, mask = heart()
    ed = Volume(image, AFFINE, Path("case_ed.nii.gz"))
    es = Volume(image, AFFINE, Path("case_es.nii.gz"))
    pair = png(write_study_overlay("pair", [ed, es], [mask, mask], ACDC, tmp_path / "pair.png"))
    frame = png(write_study_overlay("frame", [ed], [mask], ACDC, tmp_path / "frame.png"))
    assert pair.shape[1] == frame.shape[1] and pair.shape[0] > frame.shape[0]
    with pytest.raises(ValueError, match="ED and ES"):
        write_study_overlay("cine", [ed], [mask], ACDC, tmp_path / "x.png")


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    image, mask = heart()
    with pytest.raises(ValueError, match="equal shape"):
        write_overlay([image], [mask[:-1]], AFFINE, ["f"], ACDC, tmp_path / "x.png")
    with pytest.raises(ValueError, match="titles"):
        write_overlay([image], [mask], AFFINE, [], ACDC, tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def test_missing_matplotlib_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image, mask = heart()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # "import matplotlib" now raises ImportError
    with pytest.raises(ConfigError, match=r"--overlay needs matplotlib.*pip install"):
        write_overlay([image], [mask], AFFINE, ["f"], ACDC, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


@requires_mpl
def test_real_acdc_reference_labels(tmp_path: Path, acdc_dir: Path) -> None:
    from cardioseg.io import read_volume

    case = acdc_dir / "patient001"
    if not (case / "patient001_frame01_gt.nii.gz").is_file():
        pytest.skip("patient001 not in the data folder")
    vols = [read_volume(case / f"patient001_frame{f}.nii.gz") for f in ("01", "12")]
    gts = [read_volume(case / f"patient001_frame{f}_gt.nii.gz").data for f in ("01", "12")]
    path = write_study_overlay("pair", vols, gts, ACDC, tmp_path / "p.png", title="patient001")
    rgba = png(path)
    assert path.stat().st_size < 2_000_000
    for key in ("rv", "myo", "lv"):
        assert colour_pixels(rgba, STRUCTURE_STYLE[key][1]) > 1000


@requires_mpl
def test_volume_curve_accepts_frame_volumes_without_ed_es(tmp_path: Path) -> None:
    image, mask = heart()
    vols = [FrameVolumes(lv_ml=100 - 5 * t, rv_ml=120 - 6 * t, myo_ml=80) for t in range(6)]
    path = write_overlay([image], [mask], AFFINE, ["f"], ACDC, tmp_path / "v.png", volumes=vols)
    assert png(path).shape[0] > overlay.CURVE_IN * overlay.DPI
