"""Regional LV wall thickness (cardioseg.wall) and the AHA bullseye (cardioseg.bullseye).

Phantoms are defined in a heart frame (p, q, h): h the long axis (base at +h), the RV toward +p,
the septal contact arc from -60 to +60 degrees (from +p toward +q), so the anterior RV insertion
point is at +60 degrees. The heart frame is mapped to world (RAS mm) by a rotation ``tilt``; with
none, p = x (right), q = y (anterior), h = z (superior), as in a patient. Each image grid samples
the same phantom at its voxel centres, so any spacing, in-plane rotation or storage order gives
a voxelisation of the same anatomy.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cardioseg.labels import ACDC, MNMS, LabelMap
from cardioseg.wall import SEGMENTS, WallThickness, frame_wall_thickness, regional_measures

ACDC_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "acdc"

N_SLICES = 9
SLICE_MM = 10.0
T_MM = 8.0  # wall thickness of the shell
SEPTUM_MM = 14.0  # wall thickness of the septum (-60..60 degrees) in the thick-septum phantom
RV_MM = 12.0  # radial depth of the RV cavity
#: measured bias of the method on the shell (mm, the module docstring): the values below are checked against it
BIAS_MM = -0.25
THICK = (2, 3, 8, 9, 14)


def _rotation(axis: str, deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def phantom(
    pixel_mm: tuple[float, float] = (1.25, 1.25),
    inplane_deg: float = 0.0,
    tilt: np.ndarray | None = None,
    storage: tuple[int, int, int] = (0, 1, 2),
    flips: tuple[bool, bool, bool] = (False, False, False),
    septum_mm: float = T_MM,
    thick_arc: tuple[float, float] = (-60.0, 60.0),
    rv: bool = True,
    myo: bool = True,
    label_map: LabelMap = ACDC,
    taper: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(mask, affine) of the shell phantom (cavity radius 14 mm at the apex to 22 mm at the base,
    18 mm throughout without ``taper``), its wall ``septum_mm`` thick from ``thick_arc[0]`` to
    ``thick_arc[1]`` degrees, ``T_MM`` elsewhere.

    The grid's in-plane axes are rotated ``inplane_deg`` about the long axis from (p, q);
    ``storage[i]`` is the grid axis (0, 1 in-plane, 2 slice) stored as axis ``i``, reversed
    where ``flips[i]``.
    """
    tilt = np.eye(3) if tilt is None else tilt
    centre = np.array([10.0, -20.0, 30.0])
    axes = _rotation("z", inplane_deg)  # heart frame: columns = grid axes 0, 1, 2
    spacing = np.array([pixel_mm[0], pixel_mm[1], SLICE_MM])
    shape = [math.ceil(112.0 / pixel_mm[0]), math.ceil(112.0 / pixel_mm[1]), N_SLICES]
    cols = [axes[:, g] * spacing[g] * (-1 if f else 1) for g, f in zip(storage, flips, strict=True)]
    a3 = np.column_stack(cols)
    stored_shape = tuple(shape[g] for g in storage)
    origin = -a3 @ ((np.array(stored_shape) - 1) / 2.0) + np.array([0.37, -0.61, 0.0])  # off the pixel centres
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in stored_shape], indexing="ij"), axis=-1).astype(float)
    p, q, h = np.moveaxis(idx @ a3.T + origin, -1, 0)
    rho = np.hypot(p, q)
    theta = np.degrees(np.arctan2(q, p))
    radius = 18.0 + (4.0 * h / 40.0 if taper else 0.0)
    septal = np.abs(theta) <= 60.0
    wall = np.where(np.mod(theta - thick_arc[0], 360.0) <= thick_arc[1] - thick_arc[0], septum_mm, T_MM)
    mask = np.zeros(stored_shape, dtype=np.uint8)
    if rv:
        mask[septal & (rho >= radius + wall) & (rho < radius + wall + RV_MM)] = label_map.rv
    if myo:
        mask[(rho >= radius) & (rho < radius + wall)] = label_map.myo
    mask[rho < radius] = label_map.lv
    affine = np.eye(4)
    affine[:3, :3] = tilt @ a3
    affine[:3, 3] = tilt @ origin + centre
    return mask, affine


def _values(w: WallThickness) -> np.ndarray:
    assert all(w.segments_mm[s] is not None for s in SEGMENTS), w
    return np.array([w.segments_mm[s] for s in SEGMENTS], dtype=float)


# ----------------------------------------------------------------------------- shells


@pytest.mark.parametrize("taper", [True, False], ids=["tapered", "cylinder"])
def test_shell_every_segment_is_the_thickness_within_the_bias(taper):
    w = frame_wall_thickness(*phantom(taper=taper), ACDC)
    values = _values(w)
    assert w.problem is None
    # a cylinder does not say where the base is: the world direction of the apex does (inferior here)
    assert any(("world direction" in n) is (not taper) for n in w.notes), w.notes
    assert np.all(np.abs(values - (T_MM + BIAS_MM)) < 0.3), values  # a quarter of a pixel
    assert abs(values.mean() - T_MM) < 0.35, values.mean()  # the documented bias
    assert set(w.rings.values()) == {"basal", "mid", "apical"}
    assert [w.rings[k] for k in range(N_SLICES)] == ["apical"] * 3 + ["mid"] * 3 + ["basal"] * 3  # base at +z
    assert all(abs(v - values.mean()) < 0.3 for v in w.slices_mm.values() if v is not None)
    assert w.max_mm is not None and T_MM - 0.5 < w.max_mm < T_MM + 0.5


def test_thicker_septum_is_in_the_septal_segments_and_the_insertion_point_where_it_should_be():
    w = frame_wall_thickness(*phantom(septum_mm=SEPTUM_MM), ACDC)
    seg = w.segments_mm
    assert all(seg[s] > 11.5 for s in THICK), seg
    assert all(seg[s] < (10.5 if s in (13, 15) else 9.0) for s in SEGMENTS if s not in THICK), seg
    assert w.max_segment in THICK and w.max_mm is not None and abs(w.max_mm - SEPTUM_MM) < 0.6
    # the anterior insertion point: +60 degrees in the (x, y) plane, on the epicardium of the septum
    assert set(w.insertion_point_mm) == set(range(N_SLICES)) and not any("nearest" in n for n in w.notes)
    for point in w.insertion_point_mm.values():
        d = np.array(point) - np.array([10.0, -20.0, 30.0])
        angle = math.degrees(math.atan2(d[1], d[0]))
        assert abs(angle - 60.0) < 6.0, angle
    for angle in w.insertion_angle_deg.values():  # canonical axes are +x, +y here
        assert abs(angle - 60.0) < 6.0, angle


RING_SEGMENTS = (range(1, 7), range(7, 13), range(13, 17))


@pytest.mark.parametrize(
    ("arc", "thicker"),
    [((0.0, 60.0), (2, 8, 14)), ((-60.0, 0.0), (3, 9, 14)), ((60.0, 120.0), (1, 7, 13)),
     ((-120.0, -60.0), (4, 10, 15)), ((150.0, 210.0), (5, 6, 11, 12, 16))],
)  # fmt: skip
def test_each_wall_is_in_its_segment(arc, thicker):
    """Anterior (+y) is segment 1, the septum (+x, toward the RV) 2 and 3 from the anterior side.

    A 60 degree thickening from 8 to 14 mm reads about 11 mm in its basal segment and 9 mm in
    its apical one: the nearest-contour distance cuts the corners of the steps (module docstring).
    """
    w = frame_wall_thickness(*phantom(septum_mm=SEPTUM_MM, thick_arc=arc), ACDC)
    values = dict(zip(SEGMENTS, _values(w), strict=True))
    for ring in RING_SEGMENTS:
        top = max(values[s] for s in ring)
        shown = (arc, {s: round(values[s], 1) for s in ring})
        assert all(values[s] > top - 0.5 for s in ring if s in thicker), shown
        assert all(values[s] < top - 0.8 for s in ring if s not in thicker), shown
    assert w.max_segment in thicker


VARIANTS: dict[str, dict[str, Any]] = {
    "anisotropic 1.0 x 1.6 mm": {"pixel_mm": (1.0, 1.6)},
    "oblique (30 deg in-plane, tilted)": {"inplane_deg": 30.0, "tilt": _rotation("z", 15.0) @ _rotation("x", 25.0)},
    "rotated storage": {"storage": (2, 1, 0), "flips": (True, False, True)},
    "transposed, flipped, oblique, anisotropic": {
        "pixel_mm": (1.6, 1.1), "inplane_deg": -20.0, "tilt": _rotation("y", -20.0),
        "storage": (1, 2, 0), "flips": (False, True, True),
    },
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_same_segment_values_however_the_grid_lies(variant):
    kwargs = VARIANTS[variant]
    reference = _values(frame_wall_thickness(*phantom(), ACDC))
    w = frame_wall_thickness(*phantom(**kwargs), ACDC)
    values = _values(w)
    assert np.all(np.abs(values - reference) < 0.35), (variant, np.round(values - reference, 2))
    assert np.all(np.abs(values - (T_MM + BIAS_MM)) < 0.3), (variant, np.round(values, 2))
    expected = ["apical"] * 3 + ["mid"] * 3 + ["basal"] * 3  # along the grid's slice axis (+h)
    slice_axis = kwargs.get("storage", (0, 1, 2)).index(2)
    if kwargs.get("flips", (False, False, False))[slice_axis]:
        expected.reverse()
    assert [w.rings[k] for k in range(N_SLICES)] == expected


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_thick_septum_and_the_insertion_point_however_the_grid_lies(variant):
    kwargs = VARIANTS[variant]
    w = frame_wall_thickness(*phantom(septum_mm=SEPTUM_MM, **kwargs), ACDC)
    seg = w.segments_mm
    assert all(seg[s] > 11.0 for s in THICK), (variant, seg)
    # 13 and 15 (90 degrees) overlap the thick septum by 15 degrees each: a little thicker, not much
    assert all(seg[s] < (10.5 if s in (13, 15) else 9.0) for s in SEGMENTS if s not in THICK), (variant, seg)
    assert w.max_segment in THICK and w.max_mm is not None and abs(w.max_mm - SEPTUM_MM) < 0.8
    tilt = kwargs.get("tilt", np.eye(3))
    assert len(w.insertion_point_mm) == N_SLICES
    for point in w.insertion_point_mm.values():
        p, q, _ = tilt.T @ (np.array(point) - np.array([10.0, -20.0, 30.0]))  # back to the heart frame
        assert abs(math.degrees(math.atan2(q, p)) - 60.0) < 6.0, (variant, point)


def test_other_label_values():
    a = frame_wall_thickness(*phantom(septum_mm=SEPTUM_MM), ACDC)
    mask, affine = phantom(septum_mm=SEPTUM_MM, label_map=MNMS)
    assert a.segments_mm == frame_wall_thickness(mask, affine, MNMS).segments_mm


# ----------------------------------------------------------------------------- bad masks


def test_no_myocardium_says_so():
    w = frame_wall_thickness(*phantom(myo=False), ACDC)
    assert w.problem is not None and "no LV myocardium" in w.problem
    assert all(v is None for v in w.segments_mm.values()) and w.max_mm is None
    r = regional_measures(w, w)
    assert r["lv_max_wall_thickness_mm"] is None and "no LV myocardium" in r["wall_thickness_problem"]


def test_empty_and_tiny_masks_do_not_crash():
    for mask in (np.zeros((8, 8, 3), np.uint8), np.full((1, 1, 1), 2, np.uint8), np.full((6, 6, 2), 2, np.uint8)):
        w = frame_wall_thickness(mask, np.diag([1.0, 1.0, 5.0, 1.0]), ACDC)
        assert w.problem is not None and all(v is None for v in w.segments_mm.values())


def test_too_few_slices_for_three_rings_says_which_segments_are_missing():
    mask, affine = phantom()
    mask[:, :, : N_SLICES - 2] = 0
    w = frame_wall_thickness(mask, affine, ACDC)
    assert w.rings == {N_SLICES - 2: "apical", N_SLICES - 1: "basal"}
    assert w.problem is not None and "7, 8, 9, 10, 11, 12" in w.problem and "mid ring" in w.problem
    assert all(w.segments_mm[s] is None for s in range(7, 13)) and w.segments_mm[1] is not None


def test_no_rv_says_so_and_keeps_what_needs_no_segments():
    w = frame_wall_thickness(*phantom(rv=False), ACDC)
    assert w.problem is not None and "RV" in w.problem and "insertion point" in w.problem
    assert all(v is None for v in w.segments_mm.values())
    assert w.max_mm is not None and abs(w.max_mm - T_MM) < 0.6 and w.max_segment is None
    assert all(v is not None and abs(v - T_MM) < 0.5 for v in w.slices_mm.values())
    r = regional_measures(w, None)
    assert r["lv_max_wall_thickness_segment"] is None and all(v is None for v in r["aha_thickening_pct"].values())


def test_slices_without_rv_borrow_the_nearest_insertion_angle():
    mask, affine = phantom(septum_mm=SEPTUM_MM)
    mask[:, :, :3][mask[:, :, :3] == ACDC.rv] = 0  # no RV on the three apical slices
    w = frame_wall_thickness(mask, affine, ACDC)
    assert w.problem is None
    assert any("nearest slice" in n and "0 (from 3)" in n for n in w.notes), w.notes
    assert set(w.insertion_point_mm) == set(range(3, N_SLICES)) and set(w.insertion_angle_deg) == set(range(N_SLICES))
    assert all(w.segments_mm[s] > 11.5 for s in THICK)


def test_open_ring_at_the_base_is_measured_where_it_can_be():
    mask, affine = phantom()
    idx = np.indices(mask.shape)
    x = idx[0] * affine[0, 0] + affine[0, 3]
    y = idx[1] * affine[1, 1] + affine[1, 3]
    basal = idx[2] >= N_SLICES - 2
    gap = basal & (mask == ACDC.myo) & (y - (-20.0) > 0) & (np.abs(x - 10.0) < 12.0)  # the anterior wall cut out
    mask[gap] = 0
    w = frame_wall_thickness(mask, affine, ACDC)
    assert any("does not enclose" in n and "7, 8" in n for n in w.notes), w.notes
    values = [v for v in w.segments_mm.values() if v is not None]
    assert len(values) == 16 and all(abs(v - (T_MM + BIAS_MM)) < 0.4 for v in values), w.segments_mm


def test_regional_measures_keys_and_thickening():
    ed = frame_wall_thickness(*phantom(), ACDC)
    es = WallThickness({s: (12.0 if s == 1 else None) for s in SEGMENTS}, problem="no wall thickness in ...")
    r = regional_measures(ed, es)
    assert set(r) == {"lv_max_wall_thickness_mm", "lv_max_wall_thickness_segment", "aha_wall_thickness_ed_mm",
                      "aha_wall_thickness_es_mm", "aha_thickening_pct", "wall_thickness_problem"}  # fmt: skip
    assert list(r["aha_wall_thickness_ed_mm"]) == [str(s) for s in SEGMENTS]
    ed1 = ed.segments_mm[1]
    assert ed1 is not None and r["aha_thickening_pct"]["1"] == pytest.approx((12.0 - ed1) / ed1 * 100, abs=0.06)
    assert r["aha_thickening_pct"]["2"] is None and r["wall_thickness_problem"].startswith("ES: ")
    json.dumps(r)


def test_one_frame_is_fast():
    mask = np.zeros((216, 256, 10), np.uint8)
    small, affine = phantom(pixel_mm=(1.5, 1.5))
    mask[60 : 60 + small.shape[0], 80 : 80 + small.shape[1], :N_SLICES] = small
    affine = affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.array([60, 80, 0])
    frame_wall_thickness(mask, affine, ACDC)
    start = time.perf_counter()
    frame_wall_thickness(mask, affine, ACDC)
    assert time.perf_counter() - start < 0.5


# ----------------------------------------------------------------------------- bullseye


def test_bullseye_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from cardioseg.bullseye import write_bullseye

    r = regional_measures(frame_wall_thickness(*phantom(septum_mm=SEPTUM_MM), ACDC), None)
    r["aha_wall_thickness_ed_mm"]["5"] = None
    out = write_bullseye(r["aha_wall_thickness_ed_mm"], {str(s): 30.0 + s for s in SEGMENTS}, tmp_path / "b.png", "x")
    assert out == tmp_path / "b.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert write_bullseye({}, None, tmp_path / "empty.png").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.png", "empty.png"]  # no temporary files left


# ----------------------------------------------------------------------------- real data


def _acdc_ed_max(patient: str) -> float:
    import nibabel as nib

    folder = ACDC_DATA / patient
    info = dict(line.split(":", 1) for line in (folder / "Info.cfg").read_text().splitlines() if ":" in line)
    img = nib.load(str(folder / f"{patient}_frame{int(info['ED']):02d}_gt.nii.gz"))
    w = frame_wall_thickness(np.asarray(img.dataobj).astype(np.uint8), img.affine, ACDC)
    assert w.max_mm is not None and w.max_segment is not None, w.problem
    return w.max_mm


@pytest.mark.realdata
def test_acdc_hcm_walls_are_thicker_than_normal_ones():
    if not ACDC_DATA.is_dir():
        pytest.skip(f"{ACDC_DATA} is absent")
    hcm = [_acdc_ed_max(p) for p in ("patient021", "patient022", "patient023")]
    nor = [_acdc_ed_max(p) for p in ("patient061", "patient062", "patient063")]
    assert min(hcm) > max(nor) + 2.0, (hcm, nor)
    assert sorted(hcm)[1] >= 15.0 > max(nor), (hcm, nor)  # the HCM criterion, met by most (patient022: 14.7 mm)
