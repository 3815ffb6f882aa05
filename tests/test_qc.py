"""Quality-control flags (cardioseg.qc) on synthetic phantom label maps with known anatomy.

The phantom labels come straight from ``heart_labels`` (no image synthesis), 96 x 96 x 10
voxels of 2.8 x 2.8 x 10 mm, 8 frames: ED is frame 0, ES frame 4, LV EF ~63 %, RV EF ~46 %,
LV mass ~128 g, RV/LV EDV ~1.1, the heart well inside the field of view. Each test corrupts
one thing and checks that its flag (and only the expected ones) fires.
"""

from __future__ import annotations

import numpy as np
import pytest

from cardioseg.clinical import FrameVolumes, clinical_measures, detect_ed_es, frame_volumes
from cardioseg.io import Volume, VolumeMeta
from cardioseg.labels import ACDC, MNMS, LabelMap
from cardioseg.phantom import PhantomSpec, heart_labels
from cardioseg.qc import Flag, QcLimits, study_flags

SPEC = PhantomSpec(shape=(96, 96, 10), spacing_mm=(2.8, 2.8, 10.0), n_frames=8)
AFFINE = np.diag([-2.8, -2.8, 10.0, 1.0])  # as the phantom's: in-plane axes point to -x, -y
ED, ES = 0, 4
MID = (2, 3, 4)  # LV cavity is on slices 0-7 at ED (mid: 3, 4) and 0-6 at ES (mid: 2, 3, 4)


@pytest.fixture(scope="module")
def cine_labels() -> np.ndarray:
    labels = np.stack([heart_labels(SPEC, t) for t in range(SPEC.n_frames)], axis=-1)
    labels.setflags(write=False)
    return labels


def _meta(d: dict | None) -> VolumeMeta:
    """A reader's metadata from a dict of its fields (lists as the tuples a reader stores)."""
    return VolumeMeta(**{k: tuple(v) if isinstance(v, (list, np.ndarray)) else v for k, v in (d or {}).items()})


def cine_flags(
    labels: np.ndarray,
    affine: np.ndarray = AFFINE,
    meta: dict | None = None,
    ed_es: tuple[int, int] | None = None,
    measures: dict | None = None,
    label_map: LabelMap = ACDC,
    limits: QcLimits | None = None,
) -> list[Flag]:
    """Flags of a cine study, measured the way the pipeline does."""
    vol = Volume(labels, affine, meta=_meta(meta))
    per_frame = [frame_volumes(labels[..., t], vol.voxel_volume_ml, label_map) for t in range(labels.shape[3])]
    ed, es = ed_es if ed_es is not None else detect_ed_es(per_frame)
    m = clinical_measures(per_frame[ed], per_frame[es])
    m.update(measures or {})
    return study_flags(
        [labels], [vol], per_frame, ed, es, m, label_map, "cine", limits=limits, ed_es_overridden=ed_es is not None
    )


def pair_flags(ed: np.ndarray, es: np.ndarray, metas: tuple[dict, dict] = ({}, {})) -> list[Flag]:
    vols = [Volume(ed, AFFINE, meta=_meta(metas[0])), Volume(es, AFFINE, meta=_meta(metas[1]))]
    per_frame = [frame_volumes(v.data, v.voxel_volume_ml, ACDC) for v in vols]
    m = clinical_measures(per_frame[0], per_frame[1])
    return study_flags([ed, es], vols, per_frame, 0, 1, m, ACDC, "pair")


def frame_flags(labels: np.ndarray, affine: np.ndarray = AFFINE, meta: dict | None = None) -> list[Flag]:
    vol = Volume(labels, affine, meta=_meta(meta))
    per_frame = [frame_volumes(labels, vol.voxel_volume_ml, ACDC)]
    measures = {"lv_ml": per_frame[0].lv_ml, "lv_ef_pct": 99.0, "lv_mass_g": 1000.0}  # ignored for a frame
    return study_flags([labels], [vol], per_frame, None, None, measures, ACDC, "frame")


def codes(flags: list[Flag]) -> list[str]:
    return [f.code for f in flags]


def by_code(flags: list[Flag], code: str) -> Flag:
    matches = [f for f in flags if f.code == code]
    assert len(matches) == 1, flags
    return matches[0]


def punch_myo(labels: np.ndarray, slices: tuple[int, ...], frame: int | None = None) -> np.ndarray:
    """Remove the myocardium on the +Y half of the ring on ``slices`` (a hole to background)."""
    out = labels.copy()
    y = np.arange(out.shape[1])[None, :]
    for k in slices:
        sl = out[:, :, k] if frame is None else out[:, :, k, frame]
        sl[(sl == ACDC.myo) & (y > 50)] = 0
    return out


# ---------------------------------------------------------------------------- clean studies


def test_clean_phantom_studies_have_no_flags(cine_labels):
    assert cine_flags(cine_labels) == []
    assert pair_flags(cine_labels[..., ED], cine_labels[..., ES]) == []
    assert frame_flags(cine_labels[..., ES]) == []
    even = {"slice_positions_mm": [-45.0 + 10.0 * k + 0.2 * (-1) ** k for k in range(10)]}  # rounding jitter
    assert cine_flags(cine_labels, meta=even) == []


def test_label_map_is_respected(cine_labels):
    """The same anatomy stored with M&Ms label values is clean under the M&Ms map."""
    mnms = np.zeros_like(cine_labels)
    for key, value in ACDC.structures.items():
        mnms[cine_labels == value] = MNMS.structures[key]
    assert cine_flags(mnms, label_map=MNMS) == []
    assert "lv_not_enclosed" in codes(cine_flags(mnms, label_map=ACDC))  # LV and RV swapped


def test_flag_as_dict_and_limits_defaults():
    assert Flag("x_y", "A sentence.").as_dict() == {"code": "x_y", "message": "A sentence."}
    lim = QcLimits()
    assert (lim.ef_min_pct, lim.ef_max_pct, lim.lv_mass_min_g, lim.lv_mass_max_g) == (5, 85, 30, 400)
    assert (lim.rv_ef_min_pct, lim.rv_ef_max_pct) == (1, 90)
    assert lim.rv_lv_edv_ratio_max == 4.5 and lim.min_slices == 6 and lim.lv_leak_max_fraction == 0.1


# ---------------------------------------------------------------------------- structures


def test_rv_deleted_in_es_frame_of_a_cine(cine_labels):
    labels = cine_labels.copy()
    labels[..., ES][labels[..., ES] == ACDC.rv] = 0
    flags = cine_flags(labels)
    assert by_code(flags, "rv_not_found").message == "RV cavity not found in frame 4 (ES)."
    assert "rv_ef_implausible" in codes(flags)  # RV ESV 0 -> RV EF 100 %
    assert "lv_not_found" not in codes(flags) and "myo_not_found" not in codes(flags)


def test_missing_structure_names_every_frame(cine_labels):
    labels = cine_labels.copy()
    for t in (0, 1, 2, 5):
        labels[..., t][labels[..., t] == ACDC.myo] = 0
    msg = by_code(cine_flags(labels, ed_es=(ED, ES)), "myo_not_found").message
    assert msg == "LV myocardium not found in 4 of 8 frames (0-2, 5), including ED frame 0."


def test_rv_deleted_in_es_frame_of_a_pair(cine_labels):
    es = cine_labels[..., ES].copy()
    es[es == ACDC.rv] = 0
    assert by_code(pair_flags(cine_labels[..., ED], es), "rv_not_found").message == (
        "RV cavity not found in the ES frame."
    )


def test_lv_missing_in_single_frame():
    flags = frame_flags(np.zeros((40, 40, 8), np.uint8))
    assert codes(flags) == ["lv_not_found", "rv_not_found", "myo_not_found"]
    assert flags[0].message == "LV cavity not found in the image."


# ---------------------------------------------------------------------------- enclosure


def test_hole_in_mid_ventricular_myocardium(cine_labels):
    flags = cine_flags(punch_myo(cine_labels, MID, frame=ES))
    flag = by_code(flags, "lv_not_enclosed")
    assert "frame 4 (ES), slices 2, 3, 4" in flag.message and "3 mid-ventricular slices" in flag.message
    # half the ring gone on 3 of 8 slices at ES only: the muscle "shrinks" between the phases too
    assert codes(flags) == ["lv_not_enclosed", "myocardium_volume_changes"]
    # ED and ES both broken: one flag naming both
    both = punch_myo(punch_myo(cine_labels, MID, frame=ES), MID, frame=ED)
    msg = by_code(cine_flags(both), "lv_not_enclosed").message
    assert "5 mid-ventricular slices (frame 0 (ED), slices 3, 4; frame 4 (ES), slices 2, 3, 4)" in msg
    # a single frame is checked too
    assert codes(frame_flags(punch_myo(cine_labels[..., ED], (3,)))) == ["lv_not_enclosed"]


def test_open_basal_slice_and_non_key_frames_are_not_checked(cine_labels):
    assert cine_flags(punch_myo(cine_labels, (0, 7), frame=ED)) == []  # basal / apical slices
    assert cine_flags(punch_myo(cine_labels, MID, frame=2)) == []  # neither ED nor ES


def test_lv_touching_rv_counts_as_not_enclosed_and_threshold_applies(cine_labels):
    labels = cine_labels.copy()
    sl = labels[:, :, 3, ED]
    x = np.arange(sl.shape[0])[:, None]
    sl[(sl == ACDC.myo) & (x < 40)] = ACDC.rv  # septum relabelled as RV: cavity meets RV
    flag = by_code(cine_flags(labels), "lv_not_enclosed")
    assert "frame 0 (ED), slice 3" in flag.message
    assert cine_flags(labels, limits=QcLimits(lv_leak_max_fraction=0.9)) == []


# ---------------------------------------------------------------------------- measures


def test_implausible_ef(cine_labels):
    flags = cine_flags(cine_labels, measures={"lv_ef_pct": 91.2, "rv_ef_pct": -1.5})
    assert by_code(flags, "lv_ef_implausible").message == "LV EF 91.2 % is outside the plausible 5-85 %."
    assert by_code(flags, "rv_ef_implausible").message == "RV EF -1.5 % is outside the plausible 1-90 %."
    assert cine_flags(cine_labels, measures={"lv_ef_pct": 85.0, "rv_ef_pct": 1.0}) == []
    # the RV's own range: experts measure RV EFs of 1.9 and 85.9 % in ACDC, the LV's bounds flag them
    assert cine_flags(cine_labels, measures={"lv_ef_pct": 50.0, "rv_ef_pct": 1.9}) == []
    assert cine_flags(cine_labels, measures={"lv_ef_pct": 50.0, "rv_ef_pct": 85.9}) == []
    assert {"lv_ef_implausible", "rv_ef_implausible"} <= set(codes(cine_flags(cine_labels, measures={"lv_ef_pct": 4.0, "rv_ef_pct": 91.0})))


@pytest.mark.parametrize("mass", [12.0, 450.0])
def test_implausible_lv_mass(cine_labels, mass):
    flags = cine_flags(cine_labels, measures={"lv_mass_g": mass})
    assert flags == [Flag("lv_mass_implausible", f"LV mass {mass:.1f} g is outside the plausible 30-400 g.")]


def test_rv_much_larger_than_lv(cine_labels):
    vol = Volume(cine_labels, AFFINE)
    lv = frame_volumes(cine_labels[..., ED], vol.voxel_volume_ml, ACDC).lv_ml
    flags = cine_flags(cine_labels, measures={"rv_edv_ml": 5.0 * lv})
    assert codes(flags) == ["rv_much_larger_than_lv"]
    assert "RV much larger than LV" in flags[0].message and "5.00x" in flags[0].message
    assert cine_flags(cine_labels, measures={"rv_edv_ml": 3.6 * lv}) == []  # a dilated RV of the references


def test_swapped_ed_es_pair(cine_labels):
    flags = pair_flags(cine_labels[..., ES], cine_labels[..., ED])
    assert set(codes(flags)) == {"lv_esv_exceeds_edv", "lv_ef_implausible", "rv_ef_implausible"}
    assert "may be swapped" in by_code(flags, "lv_esv_exceeds_edv").message


def test_frame_kind_gets_no_measure_flags(cine_labels):
    assert frame_flags(cine_labels[..., ED]) == []  # measures say EF 99 % and 1000 g: ignored


# ---------------------------------------------------------------------------- cine curve


def test_flat_volume_curve(cine_labels):
    static = np.repeat(cine_labels[..., :1], SPEC.n_frames, axis=-1)
    flags = cine_flags(static)
    assert set(codes(flags)) == {"flat_volume_curve", "lv_ef_implausible", "rv_ef_implausible"}
    assert "changes by only 0.0 % over the 8 frames" in by_code(flags, "flat_volume_curve").message
    # ED/ES given explicitly: the curve is not used to pick them
    assert "flat_volume_curve" not in codes(cine_flags(static, ed_es=(0, 4)))


# ---------------------------------------------------------------------------- geometry


def test_too_few_slices(cine_labels):
    flags = frame_flags(np.ascontiguousarray(cine_labels[:, :, 2:6, ED]))
    assert flags == [
        Flag("too_few_slices", "Only 4 short-axis slices (at least 6 are needed to cover the ventricles).")
    ]


def test_heart_touching_the_fov_edge(cine_labels):
    labels = cine_labels.copy()
    labels[0, 50, 5, 3] = ACDC.rv
    flag = by_code(cine_flags(labels), "heart_touches_fov_edge")
    assert flag.message.startswith("The segmented heart touches the in-plane image edge on slice 5 in frame 3:")
    shifted = np.roll(cine_labels[..., ED], -22, axis=0)  # RV pushed through the -X border
    assert frame_flags(shifted) == [
        Flag(
            "heart_touches_fov_edge",
            "The segmented heart touches the in-plane image edge on slices 0-3 in the image: "
            "part of it may lie outside the field of view.",
        )
    ]


@pytest.mark.parametrize(
    ("positions", "expected"),
    [
        ([0, 10, 20, 30, 50, 60, 70, 80, 90, 100], "About 1 slice missing: the gap between slices 3 and 4 (20.0 mm)"),
        ([0, 10, 20, 27, 40, 50, 60, 70, 80, 90], "Slice gaps are uneven: 2 of 9 differ from the median 10.0 mm"),
        ([0, 10, 20, 40, 30, 50, 60, 70, 80, 90], "Slices are out of order"),
        ([0, 10, 20, 30, 40, 50, 60, 70, 80], "The reader gave 9 slice positions for 10 slices."),
        ([0, 10, 20, 30, 40, 50, 60, 70, 80, float("nan")], "Some slice positions are unknown"),
    ],
)
def test_slice_positions(cine_labels, positions, expected):
    flags = cine_flags(cine_labels, meta={"slice_positions_mm": positions})
    assert codes(flags) == ["slices_uneven_or_missing"]
    assert flags[0].message.startswith(expected)
    descending = {"slice_positions_mm": positions[::-1]}
    assert codes(frame_flags(np.ascontiguousarray(cine_labels[..., ED]), meta=descending)) == codes(flags)


def test_slice_positions_of_a_pair_name_the_frame(cine_labels):
    metas = ({}, {"slice_positions_mm": [0, 10, 20, 30, 50, 60, 70, 80, 90, 100]})
    flag = by_code(pair_flags(cine_labels[..., ED], cine_labels[..., ES], metas), "slices_uneven_or_missing")
    assert flag.message.startswith("In the ES frame, about 1 slice missing")


def test_reader_warnings_pass_through(cine_labels):
    meta = {"source": "dicom", "warnings": ["dropped 2 incomplete slices", "dropped 2 incomplete slices"]}
    assert cine_flags(cine_labels, meta=meta) == [Flag("reader_warning", "Image reader: dropped 2 incomplete slices")]
    flags = pair_flags(cine_labels[..., ED], cine_labels[..., ES], ({"warnings": ["w"]}, {}))
    assert flags == [Flag("reader_warning", "Image reader (the ED frame): w")]


def _store(labels: np.ndarray, affine: np.ndarray, perm: tuple[int, int, int], flips: tuple[int, ...]):
    """Store ``labels`` with its spatial axes permuted and flipped, and the matching affine
    (the same physical image)."""
    stored = np.transpose(labels, perm + tuple(range(3, labels.ndim)))
    to_original = np.zeros((4, 4))
    to_original[3, 3] = 1.0
    for m, p in enumerate(perm):
        to_original[p, m] = 1.0  # stored index m is original index perm[m]
    for m in flips:
        stored = np.flip(stored, axis=m)
        flip = np.eye(4)
        flip[m, m], flip[m, 3] = -1.0, stored.shape[m] - 1  # stored index j -> n - 1 - j
        to_original = to_original @ flip
    return np.ascontiguousarray(stored), affine @ to_original


def test_permuted_and_flipped_storage_gives_the_same_flags(cine_labels):
    labels = punch_myo(cine_labels, MID, frame=ED)  # lv_not_enclosed on ED mid slices 3, 4
    labels[..., ES][labels[..., ES] == ACDC.rv] = 0  # rv_not_found, rv_ef_implausible
    labels[0, 50, 6, 3] = ACDC.rv  # heart_touches_fov_edge on slice 6
    reference = cine_flags(labels)
    assert set(codes(reference)) == {"rv_not_found", "lv_not_enclosed", "rv_ef_implausible", "heart_touches_fov_edge"}

    stored, affine = _store(labels, AFFINE, (2, 0, 1), (1, 2))  # slice axis stored first; in-plane flips
    assert stored.shape[:3] == (10, 96, 96)
    assert cine_flags(stored, affine) == reference

    stored, affine = _store(labels, AFFINE, (1, 2, 0), (1,))  # slice axis stored last but one, reversed
    flags = cine_flags(stored, affine)
    assert codes(flags) == codes(reference)
    # slice numbers are those of the stored file: slice k is now 9 - k
    assert "slices 5, 6" in by_code(flags, "lv_not_enclosed").message
    assert "on slice 3 in frame 3" in by_code(flags, "heart_touches_fov_edge").message


def test_shapes_are_checked(cine_labels):
    vol = Volume(cine_labels, AFFINE)
    per_frame = [FrameVolumes(1.0, 1.0, 1.0)] * 8
    with pytest.raises(ValueError, match="mask shape"):
        study_flags([cine_labels[..., 0]], [vol], per_frame, 0, 4, {}, ACDC, "cine")
    with pytest.raises(ValueError, match="frame volumes"):
        study_flags([cine_labels], [vol], per_frame[:3], 0, 4, {}, ACDC, "cine")
    with pytest.raises(ValueError, match="kind"):
        study_flags([cine_labels], [vol], per_frame, 0, 4, {}, ACDC, "movie")


def test_long_axis_in_plane_flags_not_short_axis():
    """An LV elongated in-plane (a long-axis view) is flagged; the same ellipsoid elongated
    through the slices (a short-axis stack) is not."""
    from cardioseg.io import Volume
    from cardioseg.labels import ACDC
    from cardioseg.qc import study_flags

    def frame(long_axis: int) -> tuple[np.ndarray, Volume]:
        spacing = np.array([1.5, 1.5, 4.0])
        shape = (100, 100, 30)
        grid = np.stack(np.meshgrid(*[(np.arange(n) - n / 2) * s for n, s in zip(shape, spacing)], indexing="ij"))
        semi = np.array([15.0, 15.0, 15.0])
        semi[long_axis] = 45.0
        r = np.sqrt((((grid.T / semi) ** 2).T).sum(axis=0))
        mask = np.where(r < 0.7, ACDC.lv, np.where(r < 1.0, ACDC.myo, 0)).astype(np.uint8)
        return mask, Volume(np.zeros(shape, np.float32), np.diag([*spacing, 1.0]))

    for long_axis, expect in ((0, True), (2, False)):
        mask, vol = frame(long_axis)
        flags = study_flags([mask], [vol], [FrameVolumes(1.0, 0.0, 1.0)], None, None, {}, ACDC, "frame")
        assert ("not_short_axis" in [f.code for f in flags]) is expect, flags


# ---------------------------------------------------------------------------- one heart, the same at ED and ES


def test_an_rv_away_from_the_septum_is_flagged(cine_labels):
    labels = cine_labels.copy()
    es = labels[..., ES]
    es[es == ACDC.rv] = 0
    es[2:8, 2:8, 4:7] = ACDC.rv  # a blob in the corner, far from the myocardium
    flag = by_code(cine_flags(labels), "rv_not_bordering_lv")
    assert "frame 4 (ES) (0.0 %)" in flag.message
    assert "rv_not_bordering_lv" not in codes(cine_flags(cine_labels))


def test_a_structure_jumping_between_phases_is_flagged(cine_labels):
    labels = cine_labels.copy()
    labels[..., ES] = np.roll(labels[..., ES], 12, axis=0)  # 12 voxels of 2.8 mm: 34 mm
    message = by_code(cine_flags(labels, ed_es=(ED, ES)), "structure_moved_between_phases").message
    assert "the centre of the LV (cavity + myocardium) moves 34 mm (limit 20)" in message
    assert "the centre of the RV cavity moves" in message
    small = cine_labels.copy()
    small[..., ES] = np.roll(small[..., ES], 1, axis=0)
    assert "structure_moved_between_phases" not in codes(cine_flags(small, ed_es=(ED, ES)))


def test_myocardium_that_vanishes_at_es_is_flagged(cine_labels):
    labels = cine_labels.copy()
    es = labels[..., ES]
    es[es == ACDC.myo] = ACDC.lv  # the cavity swallows the muscle (an HCM failure at ES)
    es[:, :, 0][np.isin(es[:, :, 0], (ACDC.lv,))] = ACDC.myo  # a little muscle left on one slice
    flag = by_code(cine_flags(labels, ed_es=(ED, ES)), "myocardium_volume_changes")
    assert "plausible 0.75-1.7x" in flag.message


@pytest.mark.parametrize("seed", range(3))
def test_rv_contact_fraction_on_a_box_equals_the_whole_volume(seed: int) -> None:
    from scipy import ndimage

    from cardioseg.qc.consistency import _in_plane_ball, rv_contact_fraction

    rng = np.random.default_rng(seed)
    canon = np.zeros((60, 50, 6), np.uint8)
    canon[rng.random(canon.shape) > 0.97] = 1  # RV voxels everywhere, some next to the wall
    canon[20:32, 0:14, 1:5] = 2  # myocardium on the image's edge
    spacing = np.array([1.3, 1.6, 10.0])
    near = ndimage.binary_dilation(canon == 2, structure=_in_plane_ball(spacing, 5.0))
    rv = canon == 1
    expected = (rv & near).sum() / rv.sum()
    assert rv_contact_fraction(canon, spacing, ACDC, 5.0) == pytest.approx(expected, abs=1e-12)
    assert 0.0 < expected < 1.0
