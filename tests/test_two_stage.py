"""Heart-centred two-stage inference: stage 1 locates the heart on a coarse grid, stage 2
segments a crop around it; the crop's grid maps back exactly like the full field's."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import save_nifti

from cardioseg.geometry import ModelSpace
from cardioseg.inference import PredictOptions, Predictor
from cardioseg.preprocess import image_to_model
from cardioseg.stages import Localisation, middle_slices

AFFINE = np.array([[0.0, -1.3, 0.0, 10.0], [1.3, 0.0, 0.0, -5.0], [0.0, 0.0, 8.0, 2.0], [0.0, 0.0, 0.0, 1.0]])
SHAPE = (100, 90, 10)


def test_a_grid_centred_on_a_world_point_puts_that_point_at_its_centre() -> None:
    full = ModelSpace.for_image(AFFINE, SHAPE, 1.5, 64)
    point = full.model_to_world(np.array([[3.0, 20.5, 40.2]]), AFFINE)[0]
    crop = ModelSpace.for_image(AFFINE, SHAPE, 1.5, 32, centre_world_mm=point)
    centre = crop.model_to_world(np.array([[3.0, 15.5, 15.5]]), AFFINE)[0]
    np.testing.assert_allclose(centre, point, atol=1e-9)


def test_a_crop_centred_on_the_image_centre_is_the_full_field_grid() -> None:
    frame = np.random.default_rng(0).normal(100, 20, SHAPE).astype(np.float32)
    full_space, full = image_to_model(frame, AFFINE, _config(1.5, 64))
    centre = full_space.model_to_world(np.array([[0.0, 31.5, 31.5]]), AFFINE)[0]
    _, crop = image_to_model(frame, AFFINE, _config(1.5, 64), centre)
    np.testing.assert_allclose(crop, full, atol=1e-4)


def _config(spacing_mm: float, fov_px: int):
    from cardioseg.preprocess import PreprocessConfig

    return PreprocessConfig(spacing_mm=spacing_mm, fov_px=fov_px)


def test_crop_px_needs_a_multiple_of_16(tiny_weights) -> None:
    from cardioseg.errors import ConfigError

    with pytest.raises(ConfigError, match="multiple of 16"):
        Predictor(tiny_weights, PredictOptions(device="cpu", crop_px=40))


def test_no_heart_found_segments_the_full_field_and_is_flagged(tmp_path: Path, small_phantom, tiny_weights_path, monkeypatch) -> None:
    import cardioseg

    frame = save_nifti(tmp_path / "in" / "f.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    monkeypatch.setattr(Predictor, "locate", lambda self, frame, affine: Localisation(None, 0.0))
    cardioseg.predict(frame, tmp_path / "crop", weights=tiny_weights_path, device="cpu", crop_px=32)
    full = cardioseg.predict(frame, tmp_path / "full", weights=tiny_weights_path, device="cpu")
    report = json.loads((tmp_path / "crop" / "f_report.json").read_text())
    assert "heart_not_localised" in report["qc_flags"] and "heart_not_localised" not in full[0].report["qc_flags"]
    (confidence,) = report["segmentation"].pop("confidence")  # one frame, one pass's confidence
    assert 0.0 < confidence <= 1.0 and report["segmentation"].pop("confidence_min") == 0.912  # the tiny weights name none
    (by_structure,) = report["segmentation"].pop("confidence_by_structure")  # its least certain structure's is the frame's
    assert set(by_structure) <= {"rv", "myo", "lv"} and min(by_structure.values(), default=1.0) == confidence
    assert report["segmentation"] == {"crop_px": 32, "tta": False, "tta_frames": None, "postprocess": "anatomy",
                                      "localisation": {"found": False, "centre_world_mm": None, "heart_area_mm2": 0.0},
                                      "crop_grown_frames": [], "crop_missed_frames": []}  # fmt: skip
    a, b = (cardioseg.read_volume(tmp_path / d / "f_seg.nii.gz").data for d in ("crop", "full"))
    np.testing.assert_array_equal(a, b)


def test_a_crop_that_holds_no_heart_is_segmented_again_on_the_full_field(tmp_path: Path, small_phantom, tiny_weights_path, monkeypatch) -> None:
    """Stage 1 took something else for the heart (a real fold model put it 133 mm off on ACDC
    patient094, and stage 2 labelled nothing): the frame is segmented as without a crop, and
    QC says so."""
    import cardioseg
    from cardioseg.inference import holds_heart

    frame = save_nifti(tmp_path / "in" / "f.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    far = tuple(float(c) for c in small_phantom.affine[:3, :3] @ [4, 4, 2] + small_phantom.affine[:3, 3])
    monkeypatch.setattr(Predictor, "locate", lambda self, frame, affine: Localisation(far, 1000.0))  # type: ignore[arg-type]
    monkeypatch.setattr("cardioseg.inference.cut_by_crop", lambda labels: False)  # the random network labels everywhere
    # the random network labels some LV anywhere: on the 32-pixel crop, say it found none
    monkeypatch.setattr("cardioseg.inference.holds_heart", lambda labels, label_map: labels.shape[-1] != 32)
    (missed,) = cardioseg.predict(frame, tmp_path / "missed", weights=tiny_weights_path, device="cpu", crop_px=32)
    full = cardioseg.predict(frame, tmp_path / "full", weights=tiny_weights_path, device="cpu", crop_px=0)
    a, b = (cardioseg.read_volume(tmp_path / d / "f_seg.nii.gz").data for d in ("missed", "full"))
    np.testing.assert_array_equal(a, b)
    seg = missed.report["segmentation"]
    assert seg["localisation"]["found"] and seg["crop_missed_frames"] == [0] and seg["crop_grown_frames"] == []
    assert seg["confidence"] == full[0].report["segmentation"]["confidence"]  # that of the full-field pass
    (flag,) = [f for f in missed.report["qc"] if f["code"] == "heart_not_localised"]
    assert "the crop around it held none in frame 0" in flag["message"]
    assert "heart_not_localised" not in full[0].report["qc_flags"]
    monkeypatch.undo()
    from cardioseg.labels import ACDC

    labels = np.zeros((3, 32, 32), np.uint8)
    labels[1, 10:20, 10:20] = ACDC.rv  # an RV alone is no heart
    assert not holds_heart(labels, ACDC)
    labels[1, 12:14, 12:17] = ACDC.myo  # ten pixels of myocardium are
    assert holds_heart(labels, ACDC)


def test_a_cine_is_located_once_and_every_frame_is_cropped_around_that_point(small_phantom, tiny_weights, monkeypatch) -> None:
    monkeypatch.setattr("cardioseg.inference.cut_by_crop", lambda labels: False)  # the random network labels everywhere
    calls: list[int] = []
    predictor = Predictor(tiny_weights, PredictOptions(device="cpu", precision="fp32", crop_px=32))
    centre = tuple(float(c) for c in small_phantom.affine[:3, :3] @ [24, 24, 2] + small_phantom.affine[:3, 3])

    def locate(frame: np.ndarray, affine: np.ndarray) -> Localisation:
        calls.append(frame.ndim)
        return Localisation(centre, 1000.0)  # type: ignore[arg-type]

    monkeypatch.setattr(predictor, "locate", locate)
    labels = predictor.predict(small_phantom.image[..., :3], small_phantom.affine)
    assert calls == [3] and labels.shape == small_phantom.image[..., :3].shape
    # outside the 32 px x 2.5 mm crop around voxel (24, 24) nothing can be labelled
    outside = np.ones(labels.shape[:2], bool)
    outside[24 - 15 : 24 + 17, 24 - 15 : 24 + 17] = False
    assert not labels[outside].any()


def test_the_shipped_network_finds_the_phantom_heart() -> None:
    from cardioseg.phantom import make_phantom
    from cardioseg.weights import load_weights

    ph = make_phantom()
    predictor = Predictor(load_weights(), PredictOptions(device="cpu", precision="fp32", crop_px=160))
    frame = ph.image[..., ph.ed_frame]
    found = predictor.locate(frame, ph.affine)
    heart = np.argwhere(np.isin(ph.labels[..., ph.ed_frame], (2, 3))).mean(axis=0)
    truth = ph.affine[:3, :3] @ heart + ph.affine[:3, 3]
    assert found.found and found.heart_area_mm2 > 5000
    in_plane = np.asarray(found.centre_world_mm)[:2] - truth[:2]
    assert np.linalg.norm(in_plane) < 10.0, (found, truth)


def test_stage_1_tries_the_model_grid_when_the_coarse_one_finds_no_heart(tiny_weights, small_phantom, monkeypatch) -> None:
    predictor = Predictor(tiny_weights, PredictOptions(device="cpu", crop_px=32))
    grids: list[int] = []

    def locate_on(frame, affine, grid, middle=False):
        grids.append(grid.fov_px)
        return Localisation((1.0, 2.0, 3.0), 900.0) if grid.fov_px == predictor.config.fov_px else Localisation(None, 10.0)

    monkeypatch.setattr(predictor, "_locate_on", locate_on)
    found = predictor.locate(small_phantom.image[..., 0], small_phantom.affine)
    assert grids == [predictor.config.fov_px // 2, predictor.config.fov_px] and found.centre_world_mm == (1.0, 2.0, 3.0)


def test_stage_1_is_one_unrotated_pass_on_the_middle_slices(tiny_weights, small_phantom, monkeypatch) -> None:
    predictor = Predictor(tiny_weights, PredictOptions(device="cpu", crop_px=32, tta=True))
    assert predictor.tta
    frame = np.concatenate([small_phantom.image[..., 0]] * 3, axis=2)  # 12 slices
    passes: list[tuple[int, ...]] = []
    real = predictor._forward

    def forward(frames, plane):
        passes.append(tuple(len(f) for f in frames))
        return real(frames, plane)

    monkeypatch.setattr(predictor, "_forward", forward)
    predictor.locate(frame, small_phantom.affine)
    first, stop = middle_slices(frame.shape[2])
    # the middle slices, then (a random network finds no heart there) every slice: no rotations
    assert passes[0] == (stop - first,) and stop - first < frame.shape[2]
    assert passes[1:] in ([], [(frame.shape[2],)])


def test_the_crop_comes_from_the_weights_unless_given(tiny_weights) -> None:
    from dataclasses import replace

    from cardioseg.errors import WeightsError

    recommending = replace(tiny_weights, meta={**tiny_weights.meta, "inference": {"crop_px": 32}})
    assert Predictor(recommending, PredictOptions(device="cpu")).crop_px == 32
    assert Predictor(recommending, PredictOptions(device="cpu", crop_px=0)).crop_px == 0
    assert Predictor(tiny_weights, PredictOptions(device="cpu")).crop_px == 0  # weights without a recommendation
    with pytest.raises(WeightsError, match="unusable inference crop"):
        Predictor(replace(tiny_weights, meta={"inference": {"crop_px": 30}}), PredictOptions(device="cpu"))
    rotating = replace(tiny_weights, meta={"inference": {"tta": True}})
    assert Predictor(rotating, PredictOptions(device="cpu")).tta is True
    assert Predictor(rotating, PredictOptions(device="cpu", tta=False)).tta is False
    assert Predictor(tiny_weights, PredictOptions(device="cpu")).tta is False


def test_tta_agreement_is_reported_per_frame_and_flags_an_unsure_key_frame(tmp_path: Path, small_phantom, tiny_weights_path) -> None:
    import cardioseg
    from cardioseg.batch.measure import tta_agreement_flags
    from cardioseg.qc import QcLimits

    cine = save_nifti(tmp_path / "in" / "c.nii.gz", small_phantom.image[..., :3], small_phantom.affine)
    (result,) = cardioseg.predict(cine, tmp_path / "out", weights=tiny_weights_path, device="cpu", tta=True,
                                  tta_frames="all")  # fmt: skip
    agreement = result.report["segmentation"]["tta_agreement"]
    assert len(agreement) == 3 and all(0.0 <= a <= 1.0 for a in agreement)
    on = QcLimits(tta_agreement_min=0.924)
    assert tta_agreement_flags([0.99, 0.5, 0.9], 0, 2) == []  # off by default
    assert tta_agreement_flags([0.99, 0.5, 0.99], 0, 2, on) == []  # frame 1 is neither ED nor ES
    (flag,) = tta_agreement_flags([0.99, 0.5, 0.9], 0, 2, on)
    assert flag.code == "low_tta_agreement" and "frame 2 (0.90)" in flag.message


def test_tta_agreement_is_that_of_the_least_consistent_structure_of_each_frame() -> None:
    from cardioseg.stages import tta_agreement

    # two frames of 2 slices; labels 1 (RV), 2 (myocardium), 3 (LV cavity) on a 10 x 10 plane
    ref = np.zeros((4, 10, 10), np.uint8)
    ref[:, 0:4, 0:4] = 1
    ref[:, 5:10, 5:10] = 2
    ref[:, 6:9, 6:9] = 3
    shrunk = ref.copy()
    shrunk[2:, 0:2, 0:4] = 0  # frame 2: one rotation finds half the RV (Dice 2*8/(8+16) = 2/3)
    agreement = tta_agreement([ref, ref, ref, shrunk], ref, [2, 2])
    assert agreement[0] == 1.0
    rv = (1 + 1 + 1 + 2 / 3) / 4  # the RV's mean over the rotations
    assert agreement[1] == pytest.approx(rv)  # not the mean over rotations and structures, 0.972
    assert agreement[1] < (3 * 4 - 1 + 2 / 3) / 12
    # a structure that only one rotation finds counts as disagreement (Dice 0 there)
    extra = ref.copy()
    extra[:2, 0, 9] = 4
    assert tta_agreement([ref, extra], ref, [2, 2])[0] == pytest.approx(0.0)


def test_one_pass_confidence_is_reported_per_frame_with_and_without_rotations(tmp_path: Path, small_phantom, tiny_weights_path) -> None:
    import cardioseg
    from cardioseg.batch.measure import confidence_flags
    from cardioseg.qc import QcLimits

    cine = save_nifti(tmp_path / "in" / "c.nii.gz", small_phantom.image[..., :3], small_phantom.affine)
    seen = {}
    for tta in (False, True):
        (result,) = cardioseg.predict(cine, tmp_path / f"out{int(tta)}", weights=tiny_weights_path, device="cpu",
                                      precision="fp32", tta=tta, tta_frames="all")  # fmt: skip
        seen[tta] = result.report["segmentation"]["confidence"]
        assert len(seen[tta]) == 3 and all(0.0 < c <= 1.0 for c in seen[tta])
        by_structure = result.report["segmentation"]["confidence_by_structure"]
        assert [min(c.values(), default=1.0) for c in by_structure] == seen[tta]
    assert seen[False] == seen[True]  # the unrotated pass, whether rotations follow or not
    limits = QcLimits(confidence_min=0.9)
    assert confidence_flags([0.95, 0.5, 0.95], 0, 2, limits) == []  # frame 1 is neither ED nor ES
    (flag,) = confidence_flags([0.95, 0.5, 0.85], 0, 2, limits)
    assert flag.code == "low_confidence" and "frame 2 (0.85 < 0.9)" in flag.message
    # with each structure's confidence, the flag names the unsure ones
    each = [{"rv": 0.97, "myo": 0.95, "lv": 0.99}, {"rv": 0.5}, {"rv": 0.85, "myo": 0.88, "lv": 0.95}]
    (flag,) = confidence_flags([0.95, 0.5, 0.85], 0, 2, limits, each)
    assert "frame 2 (RV cavity 0.85 < 0.9, LV myocardium 0.88 < 0.9)" in flag.message and "frame 0" not in flag.message


def test_a_structure_with_a_limit_of_its_own_is_judged_against_it() -> None:
    """A thin myocardium is less sure of its border than a large cavity when both are right:
    ``confidence_min_by_structure`` gives it a lower limit, and the LV cavity a higher one."""
    from cardioseg.batch.measure import confidence_flags
    from cardioseg.qc import QcLimits

    limits = QcLimits(confidence_min=0.94, confidence_min_by_structure={"myo": 0.90, "lv": 0.96})
    thin_myo = [{"rv": 0.97, "myo": 0.92, "lv": 0.99}, {"rv": 0.97, "myo": 0.93, "lv": 0.98}]
    assert confidence_flags([0.92, 0.93], 0, 1, limits, thin_myo) == []  # under 0.94, above the myocardium's 0.90
    assert confidence_flags([0.92, 0.93], 0, 1, limits)  # without each structure's value: the one limit
    unsure_lv = [{"rv": 0.97, "myo": 0.95, "lv": 0.99}, {"rv": 0.95, "myo": 0.95, "lv": 0.955}]
    (flag,) = confidence_flags([0.95, 0.95], 0, 1, limits, unsure_lv)  # above 0.94, below the cavity's 0.96
    assert "frame 1 (LV cavity 0.95 < 0.96)" in flag.message and "RV" not in flag.message


def test_the_weights_own_limits_per_structure_reach_the_report(tmp_path: Path, small_phantom, tiny_weights_path) -> None:
    import cardioseg
    from cardioseg.weights import _inference_text, load_weights, recommend_inference

    frame = save_nifti(tmp_path / "in" / "f.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    (plain,) = cardioseg.predict(frame, tmp_path / "plain", weights=tiny_weights_path, device="cpu", precision="fp32")
    (by_structure,) = plain.report["segmentation"]["confidence_by_structure"]
    assert "confidence_min_by_structure" not in plain.report["segmentation"]
    present = sorted(by_structure)
    assert present  # the tiny network labels something on the phantom
    stamped = tmp_path / "w.pt"
    own = {k: min(0.999, by_structure[k] + 0.0005) for k in present[:1]}  # just above that structure's value
    recommend_inference(tiny_weights_path, 0, False, "a test", out=stamped, confidence_min=0.001,
                        confidence_min_by_structure=own)  # fmt: skip
    (result,) = cardioseg.predict(frame, tmp_path / "own", weights=stamped, device="cpu", precision="fp32")
    seg = result.report["segmentation"]
    assert seg["confidence_min_by_structure"] == own and seg["confidence_min"] == 0.001
    assert "low_confidence" in result.report["qc_flags"]  # only that structure's own limit can flag it
    text = _inference_text(load_weights(stamped))
    assert "QC low_confidence below " + ", ".join(f"{k} {v:g}" for k, v in own.items()) + ", else 0.001" in text


def test_the_weights_own_confidence_limit_decides_low_confidence(tmp_path: Path, small_phantom, tiny_weights_path) -> None:
    """A longer-trained network is surer of itself, so its limit travels in its checkpoint
    (``meta["inference"]["confidence_min"]``): the flag and the report follow it."""
    import cardioseg
    from cardioseg.qc import QcLimits
    from cardioseg.weights import recommend_inference

    pair = [save_nifti(tmp_path / "in" / f"f{t}.nii.gz", small_phantom.image[..., t], small_phantom.affine) for t in (0, 2)]

    def run(weights: Path, out: str) -> dict:
        (result,) = cardioseg.predict(out_dir=tmp_path / out, ed=pair[0], es=pair[1], weights=weights, device="cpu",
                                      precision="fp32", tta=False)  # fmt: skip
        return result.report

    plain = run(tiny_weights_path, "plain")
    low, high = min(plain["segmentation"]["confidence"]), max(plain["segmentation"]["confidence"])
    assert plain["segmentation"]["confidence_min"] == QcLimits().confidence_min
    assert 0 < low <= high < 1
    for limit, flagged in ((high + (1 - high) / 2, True), (low / 2, False)):
        stamped = tmp_path / f"w{limit:.6f}.pt"
        recommend_inference(tiny_weights_path, 0, False, "a test", out=stamped, confidence_min=limit)
        report = run(stamped, f"out{limit:.6f}")
        assert report["segmentation"]["confidence"] == plain["segmentation"]["confidence"]  # same network
        assert report["segmentation"]["confidence_min"] == limit
        assert ("low_confidence" in report["qc_flags"]) is flagged, report["qc_flags"]


@pytest.mark.parametrize("value", [{"rv": 1.0}, {"lv": 0.0}, {"la": 0.9}, {"myo": "0.9"}, {"myo": True}, [0.9], 0.9])
def test_unusable_limits_per_structure_in_the_weights_are_refused(value, tiny_weights_path) -> None:
    from dataclasses import replace

    from cardioseg.errors import WeightsError
    from cardioseg.stages import resolve_confidence_min_by_structure
    from cardioseg.weights import load_weights

    weights = load_weights(tiny_weights_path)
    assert resolve_confidence_min_by_structure(weights) == {}  # none recorded
    good = replace(weights, meta={**weights.meta, "inference": {"confidence_min_by_structure": {"myo": 0.9}}})
    assert resolve_confidence_min_by_structure(good) == {"myo": 0.9}
    bad = replace(weights, meta={**weights.meta, "inference": {"confidence_min_by_structure": value}})
    with pytest.raises(WeightsError, match="unusable QC confidence limits per structure"):
        resolve_confidence_min_by_structure(bad)


@pytest.mark.parametrize("value", [0.0, 1.0, 1.5, "0.9", True])
def test_an_unusable_confidence_limit_in_the_weights_is_refused(value, tiny_weights_path) -> None:
    from dataclasses import replace

    from cardioseg.errors import WeightsError
    from cardioseg.stages import resolve_confidence_min
    from cardioseg.weights import load_weights

    weights = load_weights(tiny_weights_path)
    assert resolve_confidence_min(weights) == 0.912  # none recorded: QcLimits'
    bad = replace(weights, meta={**weights.meta, "inference": {"confidence_min": value}})
    with pytest.raises(WeightsError, match="unusable QC confidence limit"):
        resolve_confidence_min(bad)


def test_soft_confidence_is_that_of_the_least_certain_structure() -> None:
    from cardioseg.stages import soft_confidence

    probs = np.zeros((2, 3, 4, 4), np.float32)
    probs[:, 0] = 1.0
    probs[0, :, :2] = np.array([0.0, 1.0, 0.0])[:, None, None]  # frame 0: structure 1, certain
    probs[1, :, :2, :2] = np.array([0.0, 0.0, 1.0])[:, None, None]  # frame 1: structure 2, certain ...
    probs[1, :, 2:, :] = np.array([0.3, 0.7, 0.0])[:, None, None]  # ... and structure 1 at 0.7
    first, second = soft_confidence(probs, [1, 1])
    assert first == 1.0
    assert second == pytest.approx(2 * 0.7 * 8 / (0.7 * 8 + 8))  # structure 1's, not the mean


def test_soft_confidence_equals_its_definition_on_random_probabilities() -> None:
    """The one-bincount computation against the formula, structure by structure."""
    from cardioseg.stages import soft_confidence

    rng = np.random.default_rng(4)
    for _ in range(20):
        logits = rng.normal(0, rng.uniform(0.5, 4), (7, 4, 12, 10)).astype(np.float32)
        logits[:, 2] -= rng.uniform(0, 6)  # some structures small or absent
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        sizes = [3, 4]
        expected, start = [], 0
        for n in sizes:
            frame, start = probs[start : start + n], start + n
            labels = frame.argmax(axis=1)
            values = [2 * frame[:, c][labels == c].sum() / (frame[:, c].sum() + (labels == c).sum())
                      for c in range(1, 4) if (labels == c).any()]  # fmt: skip
            expected.append(min(values, default=1.0))
        np.testing.assert_allclose(soft_confidence(probs, sizes), expected, rtol=1e-5)


def test_low_confidence_is_on_by_default_and_low_tta_agreement_off() -> None:
    from cardioseg.batch.measure import confidence_flags, tta_agreement_flags
    from cardioseg.qc import QcLimits

    assert QcLimits().confidence_min == 0.912 and QcLimits().tta_agreement_min == 0.0
    # 0.92: a good study's least certain structure; 0.90: among the cross-validated failures
    assert confidence_flags([0.97, 0.92], 0, 1) == []
    (flag,) = confidence_flags([0.97, 0.90], 0, 1)
    assert "frame 1 (0.90 < 0.912)" in flag.message
    assert tta_agreement_flags([0.99, 0.10], 0, 1) == []
    (flag,) = tta_agreement_flags([0.99, 0.91], 0, 1, QcLimits(tta_agreement_min=0.924))
    assert "frame 1 (0.91)" in flag.message and "least consistent structure" in flag.message


def test_a_cine_rotates_its_ed_and_es_frames_only(tmp_path: Path, small_phantom, tiny_weights_path, monkeypatch) -> None:
    """--tta-frames key (the default): ED and ES get the rotated masks every-frame rotation gives
    them, the other frames the unrotated ones, in far fewer forward passes; reported as such."""
    import nibabel as nib

    import cardioseg
    from cardioseg import inference

    cine = save_nifti(tmp_path / "in" / "c.nii.gz", small_phantom.image[..., :6], small_phantom.affine)
    passes = []
    real = inference.forward_probabilities

    def counting(model, batches, *args, **kwargs):
        batches = list(batches)
        passes.append(sum(len(b) for b in batches))
        return real(model, batches, *args, **kwargs)

    monkeypatch.setattr(inference, "forward_probabilities", counting)
    runs = {}
    for name, kwargs in (("key", {"tta": True}), ("all", {"tta": True, "tta_frames": "all"}), ("none", {"tta": False})):
        passes.clear()
        (result,) = cardioseg.predict(cine, tmp_path / name, weights=tiny_weights_path, device="cpu", crop_px=0, **kwargs)
        mask = np.asarray(nib.load(str(tmp_path / name / "c_seg.nii.gz")).dataobj)
        runs[name] = (result.report, mask, sum(passes))
    report, key, key_slices = runs["key"]
    keys = sorted({report["ed_frame"], report["es_frame"]})
    others = [t for t in range(6) if t not in keys]
    assert np.array_equal(key[..., keys], runs["all"][1][..., keys])
    assert np.array_equal(key[..., others], runs["none"][1][..., others])
    assert key_slices == runs["none"][2] + 4 * runs["none"][2] * len(keys) // 6 < runs["all"][2]
    seg = report["segmentation"]
    assert seg["tta_frames"] == "key" and runs["all"][0]["segmentation"]["tta_frames"] == "all"
    written = json.loads((tmp_path / "key" / "c_report.json").read_text())["segmentation"]["tta_agreement"]
    assert [a is None for a in written] == [t not in keys for t in range(6)]  # not rotated: null
    assert runs["none"][0]["segmentation"]["tta_frames"] is None


@pytest.mark.parametrize("tta", [False, True])
def test_a_frame_whose_crop_cuts_the_heart_is_segmented_again_on_the_whole_grid(small_phantom, tiny_weights, monkeypatch, tta) -> None:
    """Where stage 2's labels run into the crop's outer ring, that frame is segmented on the
    weights' whole grid around the same centre: the same labels and rotations' agreement as
    asking for that grid, and the grid of each frame is recorded."""
    from cardioseg import inference

    data, affine = small_phantom.image[..., :2], small_phantom.affine
    centre = tuple(float(c) for c in affine[:3, :3] @ [24, 24, 2] + affine[:3, 3])
    fov = tiny_weights.preprocess.fov_px
    options = PredictOptions(device="cpu", precision="fp32", tta=tta)
    cut_frames = iter([True, False])  # the first frame is cut, the second is not
    monkeypatch.setattr(inference, "cut_by_crop", lambda labels: next(cut_frames))
    stats: dict = {}
    grown = Predictor(tiny_weights, replace(options, crop_px=32)).predict(
        data, affine, localisation=Localisation(centre, 1000.0), stats=stats)  # fmt: skip
    assert stats["crop_px"] == [fov, 32]
    monkeypatch.setattr(inference, "cut_by_crop", lambda labels: False)
    for t, crop in ((0, fov), (1, 32)):
        alone: dict = {}
        expected = Predictor(tiny_weights, replace(options, crop_px=crop)).predict(
            data[..., t], affine, localisation=Localisation(centre, 1000.0), stats=alone)  # fmt: skip
        np.testing.assert_array_equal(grown[..., t], expected)
        if tta:
            assert stats["tta_agreement"][t] == pytest.approx(alone["tta_agreement"][0])


def test_cut_by_crop_counts_the_outer_ring() -> None:
    from cardioseg.inference import CROP_EDGE_MIN_PX, cut_by_crop

    labels = np.zeros((3, 32, 32), np.uint8)
    labels[:, 8:24, 8:24] = 3
    assert not cut_by_crop(labels)
    labels[0, 1, 10 : 10 + CROP_EDGE_MIN_PX - 1] = 1  # one pixel short of the limit, in the ring
    assert not cut_by_crop(labels)
    labels[2, 30, 5] = 2
    assert cut_by_crop(labels)


def test_the_report_names_the_frames_segmented_on_the_whole_grid(tmp_path: Path, small_phantom, tiny_weights_path, monkeypatch) -> None:
    import cardioseg

    ed = save_nifti(tmp_path / "in" / "ed.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    es = save_nifti(tmp_path / "in" / "es.nii.gz", small_phantom.image[..., 1], small_phantom.affine)
    monkeypatch.setattr(Predictor, "locate", lambda self, frame, affine: Localisation((0.0, 0.0, 0.0), 1000.0))
    cut_frames = iter([False, True])  # ED fits its crop, ES does not
    monkeypatch.setattr("cardioseg.inference.cut_by_crop", lambda labels: next(cut_frames))
    result = cardioseg.predict(ed=ed, es=es, out_dir=tmp_path / "out", weights=tiny_weights_path, device="cpu", crop_px=32)
    assert result[0].report["segmentation"]["crop_grown_frames"] == [1]

