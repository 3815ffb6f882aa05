"""The Predictor: shapes, dtypes, precision, devices, batching and post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cardioseg.ensemble import Ensemble
from cardioseg.errors import CardiosegError, ConfigError
from cardioseg.inference import PredictOptions, Predictor
from cardioseg.runtime import cpu_supports_bf16, isa_limited, resolve_device, resolve_precision


@pytest.fixture(scope="module")
def cine(small_phantom):
    return small_phantom.image[..., :3], small_phantom.affine


FP32_RAW = PredictOptions(device="cpu", precision="fp32", postprocess=False)


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory):
    """Two more tiny networks with other seeds; the first also has another model grid (48 px)."""
    from conftest import export_tiny_weights

    from cardioseg.weights import load_weights

    folder = tmp_path_factory.mktemp("ensemble")
    return [
        load_weights(export_tiny_weights(folder / "b.pt", seed=1, fov_px=48)),
        load_weights(export_tiny_weights(folder / "c.pt", seed=2)),
    ]


def native_probabilities_by_hand(weights, frame, affine):
    """(C, X, Y, Z) probabilities of one network, spelled out step by step with its own preprocessing."""
    from cardioseg.geometry import ModelSpace
    from cardioseg.preprocess import normalize_intensity

    cfg = weights.preprocess
    space = ModelSpace.for_image(affine, frame.shape, cfg.spacing_mm, cfg.fov_px)
    norm, floor = normalize_intensity(frame, cfg.clip_low_pct, cfg.clip_high_pct)
    slices = space.image_to_model(norm, cval=floor)
    return space.probabilities_to_native(Predictor(weights, FP32_RAW).slice_probabilities(slices))


def test_predict_3d_frame_shape_and_dtype(fp32_predictor, cine):
    image, affine = cine
    frame = image[..., 0]
    mask = fp32_predictor.predict(frame, affine)
    assert mask.shape == frame.shape and mask.dtype == np.uint8
    assert mask.max() <= 3
    assert len(np.unique(mask)) >= 2  # the balanced tiny network is not constant


def test_predict_4d_cine_shape_dtype_and_frames(fp32_predictor, cine):
    image, affine = cine
    seen = []
    mask = fp32_predictor.predict(image, affine, on_frame=seen.append)
    assert mask.shape == image.shape and mask.dtype == np.uint8
    assert seen == [0, 1, 2]
    for t in range(image.shape[3]):  # each frame is segmented on its own
        assert np.array_equal(mask[..., t], fp32_predictor.predict(image[..., t], affine))


def test_predict_odd_shape_and_oblique_affine(fp32_predictor):
    rng = np.random.default_rng(0)
    image = rng.normal(100, 20, size=(23, 31, 3)).astype(np.float32)
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.array([[1.7 * c, -1.7 * s, 0, 5], [1.7 * s, 1.7 * c, 0, 6], [0, 0, 7.0, 7], [0, 0, 0, 1]])
    mask = fp32_predictor.predict(image, affine)
    assert mask.shape == image.shape and mask.dtype == np.uint8


def test_predict_is_deterministic_and_does_not_modify_its_input(fp32_predictor, cine):
    image, affine = cine
    frame = image[..., 1].copy()
    before = frame.copy()
    a = fp32_predictor.predict(frame, affine)
    b = fp32_predictor.predict(frame, affine)
    assert np.array_equal(a, b)
    assert np.array_equal(frame, before)


def test_batch_size_does_not_change_the_result(tiny_weights, cine):
    image, affine = cine
    frame = image[..., 0]
    a = Predictor(tiny_weights, PredictOptions(device="cpu", precision="fp32", postprocess=False, batch_size=1))
    b = Predictor(tiny_weights, PredictOptions(device="cpu", precision="fp32", postprocess=False, batch_size=64))
    assert np.array_equal(a.predict(frame, affine), b.predict(frame, affine))


def test_slice_probabilities_are_a_softmax(fp32_predictor):
    slices = np.random.default_rng(1).normal(size=(3, 64, 64)).astype(np.float32)
    p = fp32_predictor.slice_probabilities(slices)
    assert p.shape == (3, 4, 64, 64) and p.dtype == np.float32
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert (p >= 0).all()


def test_postprocess_keeps_one_component_per_label(tiny_weights, cine):
    from scipy import ndimage

    image, affine = cine
    frame = image[..., 0]
    raw = Predictor(tiny_weights, PredictOptions(device="cpu", precision="fp32", postprocess=False)).predict(frame, affine)
    clean = Predictor(
        tiny_weights, PredictOptions(device="cpu", precision="fp32", postprocess=True, lcc_tolerance_mm=0.0)
    ).predict(frame, affine)
    assert clean.shape == raw.shape
    # post-processing only removes voxels (to background), never relabels them
    changed = clean != raw
    assert (clean[changed] == 0).all()
    for k in (1, 2, 3):
        _, n = ndimage.label(clean == k, structure=np.ones((3, 3, 3)))
        assert n <= 1
    n_raw = sum(ndimage.label(raw == k, structure=np.ones((3, 3, 3)))[1] for k in (1, 2, 3))
    if n_raw > 3:  # the random network made fragments: some must have gone
        assert changed.any()


def test_predictor_rejects_a_zero_batch_size(tiny_weights):
    with pytest.raises(ConfigError):
        Predictor(tiny_weights, PredictOptions(device="cpu", batch_size=0))


@pytest.mark.skipif(not cpu_supports_bf16(), reason="CPU has no native bf16")
def test_bf16_agrees_with_fp32(tiny_weights, cine):
    image, affine = cine
    fp32 = Predictor(tiny_weights, PredictOptions(device="cpu", precision="fp32", postprocess=False))
    bf16 = Predictor(tiny_weights, PredictOptions(device="cpu", precision="bf16", postprocess=False))
    assert bf16.precision == "bf16" and fp32.precision == "fp32"
    a, b = fp32.predict(image, affine), bf16.predict(image, affine)
    agreement = float((a == b).mean())
    assert agreement >= 0.99, agreement


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device(" CPU ") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    for garbage in ("gpu", "tpu", "", "cpu:0x"):
        with pytest.raises(ConfigError, match="choose auto, cpu, cuda"):
            resolve_device(garbage)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is available")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:1"])
def test_resolve_device_cuda_without_a_gpu(spec):
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device(spec)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_resolve_device_cuda_index_out_of_range():
    with pytest.raises(ConfigError, match="GPU"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
    with pytest.raises(ConfigError):
        resolve_device("cuda:x")


def test_resolve_precision():
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("BF16", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_supports_bf16() else "fp32")
    with pytest.raises(ConfigError):
        resolve_precision("fp8", "cpu")


@pytest.mark.parametrize(
    ("env", "limited"),
    [
        ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, True),
        ({"ATEN_CPU_CAPABILITY": "avx2"}, True),
        ({"DNNL_MAX_CPU_ISA": "SSE41"}, True),
        ({"ATEN_CPU_CAPABILITY": "default"}, True),
        ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, False),
        ({"ATEN_CPU_CAPABILITY": "avx512"}, False),
        ({"ONEDNN_MAX_CPU_ISA": "AVX10_1_512"}, False),
        ({}, False),
    ],
)
def test_an_instruction_set_cap_below_avx512_means_no_native_bf16(monkeypatch, env, limited):
    assert isa_limited(env) is limited
    for key in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if limited:  # whatever the CPU has, auto must not pick an emulated bf16
        assert not cpu_supports_bf16()
        assert resolve_precision("auto", "cpu") == "fp32"


# ---------------------------------------------------------------------------- ensembles


@pytest.mark.parametrize("mode", ["vote", "mean"])
def test_one_member_ensemble_is_the_predictor_bit_for_bit(tiny_weights, cine, mode):
    image, affine = cine
    options = PredictOptions(device="cpu", precision="fp32", ensemble=mode)  # post-processing on
    ensemble = Ensemble([tiny_weights], options)
    assert np.array_equal(ensemble.predict(image, affine), Predictor(tiny_weights, options).predict(image, affine))
    assert ensemble.device == "cpu" and ensemble.precision == "fp32"


def test_mean_ensemble_is_the_argmax_of_the_mean_probabilities(tiny_weights, other_weights, cine):
    image, affine = cine
    frame = image[..., 0]
    members = [tiny_weights, other_weights[0]]  # 64 px and 48 px model grids
    assert members[0].preprocess != members[1].preprocess
    p0, p1 = (native_probabilities_by_hand(w, frame, affine) for w in members)
    expected = np.argmax((p0 + p1) / 2, axis=0)
    got = Ensemble(members, PredictOptions(device="cpu", precision="fp32", postprocess=False, ensemble="mean"))
    mask = got.predict(frame, affine)
    assert mask.dtype == np.uint8 and mask.shape == frame.shape
    assert np.array_equal(mask, expected)
    assert not np.array_equal(mask, np.argmax(p0, axis=0))  # not just the first member


def test_vote_of_three_is_the_majority_with_ties_to_the_mean(tiny_weights, other_weights, cine):
    image, affine = cine
    frame = image[..., 1]
    members = [tiny_weights, *other_weights]
    probs = [native_probabilities_by_hand(w, frame, affine) for w in members]
    a, b, c = (np.argmax(p, axis=0) for p in probs)
    majority = np.where((a == b) | (a == c), a, np.where(b == c, b, -1))  # -1: all three differ
    mean = (probs[0] + probs[1] + probs[2]) / 3
    mask = Ensemble(members, PredictOptions(device="cpu", precision="fp32", postprocess=False)).predict(frame, affine)
    has_majority = majority >= 0
    assert has_majority.any() and (majority != a).any()  # the vote overrules the first member somewhere
    assert (~has_majority).any()  # and there are three-way ties to break
    assert np.array_equal(mask[has_majority], majority[has_majority])
    # a three-way tie goes to the tied label with the highest mean probability
    for x, y, z in zip(*np.nonzero(~has_majority)):
        tied = {int(a[x, y, z]), int(b[x, y, z]), int(c[x, y, z])}
        assert mask[x, y, z] == max(sorted(tied), key=lambda k: mean[k, x, y, z])


def test_ensemble_postprocesses_once_on_the_combined_labels(tiny_weights, other_weights, cine):
    image, affine = cine
    frame = image[..., 0]
    members = [tiny_weights, other_weights[1]]
    from cardioseg.geometry import find_orientation
    from cardioseg.postprocess import keep_largest_components

    raw = Ensemble(members, FP32_RAW).predict(frame, affine)
    lcc = PredictOptions(device="cpu", precision="fp32", lcc_tolerance_mm=0.0, clean_up="largest")
    clean = Ensemble(members, lcc).predict(frame, affine)
    spacing = tuple(np.linalg.norm(affine[:3, :3], axis=0))
    slice_axis = find_orientation(affine).perm[2]
    assert (clean != raw).any()
    assert np.array_equal(clean, keep_largest_components(raw, spacing, (1, 2, 3), slice_axis, tolerance_mm=0.0))


def test_ensemble_members_must_share_a_label_map(tiny_weights):
    from dataclasses import replace
    from pathlib import Path

    from cardioseg.labels import MNMS

    other = replace(tiny_weights, name="mnms-net", path=Path("mnms.pt"), label_map=MNMS)
    with pytest.raises(CardiosegError, match="label map") as err:
        Ensemble([tiny_weights, other], FP32_RAW)
    assert "tiny-test" in str(err.value) and "mnms-net" in str(err.value)


def test_ensemble_rejects_an_unknown_mode_and_no_members(tiny_weights):
    with pytest.raises(ConfigError, match="vote or mean"):
        Ensemble([tiny_weights], PredictOptions(device="cpu", ensemble="median"))
    with pytest.raises(ConfigError):
        Ensemble([], PredictOptions(device="cpu"))


def test_ensemble_weights_report_names_every_member(tiny_weights, other_weights):
    ensemble = Ensemble([tiny_weights, *other_weights], PredictOptions(device="cpu", ensemble="mean"))
    report = ensemble.weights_report
    assert report["ensemble"] == "mean"
    assert [m["sha256"] for m in report["members"]] == [w.file_sha256 for w in (tiny_weights, *other_weights)]
    assert Predictor(tiny_weights, FP32_RAW).weights_report == {"name": "tiny-test", "sha256": tiny_weights.file_sha256}


# ---------------------------------------------------------------------------- pooled slices (GPU batching)


@pytest.mark.parametrize(
    ("counts", "limit", "expected"),
    [
        ([10, 10, 10], 16, [[0], [1], [2]]),  # an ACDC frame per pass on a CPU
        ([10, 10, 10, 10], 256, [[0, 1, 2, 3]]),
        ([4, 4, 4, 4, 4], 8, [[0, 1], [2, 3], [4]]),
        ([20, 3, 3], 8, [[0], [1, 2]]),  # too large for a pass: alone
        ([], 8, []),
    ],
)
def test_group_frames(counts, limit, expected):
    from cardioseg.inference import group_frames

    assert group_frames(counts, limit) == expected


def test_resolve_batch_size():
    from cardioseg.runtime import CPU_BATCH_SIZE, GPU_BATCH_SIZE, resolve_batch_size

    assert resolve_batch_size(None, "cpu") == CPU_BATCH_SIZE
    assert resolve_batch_size(None, "cuda:1") == GPU_BATCH_SIZE
    assert resolve_batch_size(5, "cuda") == 5
    with pytest.raises(ConfigError, match="at least 1"):
        resolve_batch_size(-3, "cpu")


class CountingModel(torch.nn.Module):
    """Wraps a network and records the batch size of every forward pass."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.batches: list[int] = []

    def forward(self, x):
        self.batches.append(int(x.shape[0]))
        return self.model(x)


def test_cine_frames_share_forward_passes_with_the_same_labels(tiny_weights, small_phantom):
    data, affine = small_phantom.image[..., :6], small_phantom.affine  # 6 frames x 4 slices
    one = Predictor(tiny_weights, PredictOptions(device="cpu", precision="fp32", batch_size=4))
    pooled = Predictor(tiny_weights, PredictOptions(device="cpu", precision="fp32", batch_size=10))
    one.model, pooled.model = CountingModel(one.model), CountingModel(pooled.model)
    seen: list[int] = []
    a = one.predict(data, affine)
    b = pooled.predict(data, affine, on_frame=seen.append)
    assert one.model.batches == [4] * 6
    assert pooled.model.batches == [8, 8, 8]  # frames pooled in pairs: 8 of at most 10 slices
    assert seen == list(range(6))
    assert b.shape == data.shape and b.dtype == np.uint8
    assert np.array_equal(a, b)
    for t in (0, 5):  # and the labels of a frame predicted alone
        assert np.array_equal(b[..., t], one.predict_frame(data[..., t], affine))


def test_predict_frames_mixes_frames_of_different_shapes(tiny_weights, small_phantom):
    pred = Predictor(tiny_weights, PredictOptions(device="cpu", precision="fp32", batch_size=64))
    frame, affine = small_phantom.image[..., 0], small_phantom.affine
    shifted = affine.copy()
    shifted[:3, 3] += (7.0, -3.0, 2.0)
    frames = [(frame, affine), (frame[:40, :, :3], shifted), (frame[::-1], affine)]
    got = pred.predict_many(frames)
    assert [m.shape for m in got] == [f.shape for f, _ in frames]
    for mask, (f, a) in zip(got, frames):
        assert np.array_equal(mask, pred.predict_frame(f, a))
    assert pred.predict_many([]) == []


def test_compile_option_compiles_the_network(tiny_weights, monkeypatch, small_phantom):
    calls = []

    def fake_compile(model, **kwargs):
        calls.append(model)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    pred = Predictor(tiny_weights, PredictOptions(device="cpu", precision="fp32", compile=True))
    assert len(calls) == 1 and calls[0] is pred.model
    plain = Predictor(tiny_weights, PredictOptions(device="cpu", precision="fp32"))
    assert len(calls) == 1
    frame, affine = small_phantom.image[..., 0], small_phantom.affine
    assert np.array_equal(pred.predict(frame, affine), plain.predict(frame, affine))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_gpu_labels_agree_with_the_cpu(tiny_weights, small_phantom):
    """Pinned memory, asynchronous copies and pooled batches on a GPU give the CPU's labels."""
    data, affine = small_phantom.image, small_phantom.affine
    cpu = Predictor(tiny_weights, PredictOptions(device="cpu", precision="fp32")).predict(data, affine)
    gpu = Predictor(tiny_weights, PredictOptions(device="cuda", precision="fp32")).predict(data, affine)
    assert gpu.shape == cpu.shape and gpu.dtype == np.uint8
    assert (gpu == cpu).mean() > 0.999


def test_tta_averages_the_four_rotations(tiny_weights, cine):
    """--tta: the mean of the probabilities of the slices turned by 0, 90, 180 and 270 degrees,
    each turned back; on an input with that symmetry it has the symmetry itself."""
    import numpy as np

    plain = Predictor(tiny_weights, PredictOptions(device="cpu", precision="fp32"))
    tta = Predictor(tiny_weights, PredictOptions(device="cpu", precision="fp32", tta=True))
    _, slices = plain.to_model(cine[0][..., 0], cine[1])

    def turned(k):
        return np.rot90(plain.slice_probabilities(np.ascontiguousarray(np.rot90(slices, k, axes=(1, 2)))), -k, axes=(2, 3))

    expected = sum(turned(k) for k in range(4)) / 4
    np.testing.assert_allclose(tta.slice_probabilities(slices), expected, atol=1e-5)
    symmetric = sum(np.rot90(slices, k, axes=(1, 2)) for k in range(4)) / 4
    probs = tta.slice_probabilities(np.ascontiguousarray(symmetric))
    np.testing.assert_allclose(probs, np.rot90(probs, 1, axes=(2, 3)), atol=1e-5)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.uint8, np.int8])
def test_percentiles_from_the_histogram_equal_numpys(dtype) -> None:
    """Integer voxels take the histogram path; it must give np.percentile's values to the bit."""
    from cardioseg.preprocess import percentiles

    rng = np.random.default_rng(7)
    info = np.iinfo(dtype)
    for size in (1, 2, 3, 10, 999, 20_000):
        lo = int(rng.integers(info.min, info.max))
        x = rng.integers(lo, info.max + 1, size=size).astype(dtype)
        qs = (0.0, 1.0, 37.3, 50.0, 99.0, 100.0)
        assert percentiles(x, qs) == tuple(float(v) for v in np.percentile(x.astype(np.float32), list(qs)))
    floats = rng.normal(size=100).astype(np.float32)  # not integers: numpy itself
    assert percentiles(floats, (1.0,)) == (float(np.percentile(floats, [1.0])[0]),)
