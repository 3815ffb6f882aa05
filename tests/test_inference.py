"""The Predictor: shapes, dtypes, precision, devices, batching and post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cardioseg.errors import ConfigError
from cardioseg.inference import (
    PredictOptions,
    Predictor,
    cpu_supports_bf16,
    resolve_device,
    resolve_precision,
)


@pytest.fixture(scope="module")
def cine(small_phantom):
    return small_phantom.image[..., :3], small_phantom.affine


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
