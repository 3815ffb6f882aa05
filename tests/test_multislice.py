"""Qure.ai's 2D-3D FCNs (Patravali et al.): the inputs and networks of the multi-slice 2D U-Net
and the 3D U-Net.

Neighbour stacks checked by hand (edges replicated, never across patients, phases or frames),
the model batches of the predictor, the 3D U-Net on any number of slices, and old weights (no
input description) still working. Their losses and training are in ``tests/train/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cardioseg.dataset import Cache
from cardioseg.errors import WeightsError
from cardioseg.inference import PredictOptions, Predictor, model_batches
from cardioseg.models import InputSpec, build_model
from cardioseg.models.inputs import context_indices, stack_context
from cardioseg.phantom import PhantomSpec, make_phantom
from cardioseg.weights import load_weights

KW = {"in_channels": 1, "num_classes": 4, "base": 4, "depth": 4}
FP32 = PredictOptions(device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(PhantomSpec(shape=(48, 40, 5), spacing_mm=(2.5, 2.5, 10.0), n_frames=3, seed=9))


# ---------------------------------------------------------------------------- neighbour stacks


def test_context_indices_replicate_the_edge_slices() -> None:
    assert context_indices(1, 3).tolist() == [[0, 0, 0]]
    assert context_indices(4, 3).tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
    assert context_indices(3, 5).tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 2], [0, 1, 2, 2, 2]]
    assert context_indices(3, 1).tolist() == [[0], [1], [2]]
    slices = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    stacks = stack_context(slices, 3)
    assert stacks.shape == (4, 3, 2, 2) and stacks[:, :, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]


def _shuffled_cache() -> Cache:
    """A hand-made cache: 2 patients x (ED, ES) of 3, 2, 4, 1 slices, rows in random order;
    image value = 100 * frame number + slice number."""
    counts = {("p1", "ED"): 3, ("p1", "ES"): 2, ("p2", "ED"): 4, ("p2", "ES"): 1}
    rows = [(p, ph, s, n, k) for k, ((p, ph), n) in enumerate(counts.items()) for s in range(n)]
    order = np.random.default_rng(0).permutation(len(rows))
    rows = [rows[i] for i in order]
    index = [{"patient": p, "group": "NOR", "phase": ph, "frame": f"{p}:{ph}", "slice": str(s), "n_slices": str(n),
              "position": f"{s / max(n - 1, 1):.4f}"} for p, ph, s, n, _ in rows]  # fmt: skip
    images = np.array([100 * k + s for _, _, s, _, k in rows], np.float32)[:, None, None] * np.ones((1, 2, 2))
    return Cache(Path("."), images, np.zeros((len(rows), 2, 2), np.uint8), np.zeros((len(rows), 3, 2, 2)), index, {})


def test_cache_neighbours_follow_slice_order_and_never_cross_frames() -> None:
    cache = _shuffled_cache()
    frames = cache.frame_rows()
    values = [cache.images[rows, 0, 0].tolist() for rows in frames]
    assert sorted(values) == [[0, 1, 2], [100, 101], [200, 201, 202, 203], [300]]  # whole frames, in slice order
    everything = np.arange(len(cache))
    nbr = cache.context_rows(everything, 3)
    for row, stack in zip(everything, nbr):
        r = cache.index[row]
        s, n = int(r["slice"]), int(r["n_slices"])
        assert all(cache.index[i]["frame"] == r["frame"] for i in stack)  # same patient and phase
        assert [int(cache.index[i]["slice"]) for i in stack] == [max(s - 1, 0), s, min(s + 1, n - 1)]
    # a subset of rows (one patient's): the same stacks, in the order asked
    p2 = cache.slices_of({"p2"})[::-1]
    assert np.array_equal(cache.context_rows(p2, 3), nbr[p2])
    assert sorted(len(r) for r in cache.frame_rows(p2)) == [1, 4]
    wide = cache.context_rows(everything, 5)
    one = next(i for i in everything if cache.index[i]["frame"] == "p2:ES")
    assert cache.images[wide[one], 0, 0].tolist() == [300] * 5


def test_model_batches_stack_within_each_frame_and_pool_3d_frames_of_one_shape() -> None:
    frames = [np.full((n, 2, 2), 0.0, np.float32) + 100 * k + np.arange(n)[:, None, None]
              for k, n in enumerate((3, 1, 2))]  # fmt: skip
    got = np.concatenate(list(model_batches(frames, InputSpec(context_slices=3), batch_size=4)))
    assert got.shape == (6, 3, 2, 2)
    assert got[:, :, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 2], [100, 100, 100], [200, 200, 201],
                                        [200, 201, 201]]  # fmt: skip
    assert [b.shape for b in model_batches(frames, InputSpec(), batch_size=4)] == [(4, 1, 2, 2), (2, 1, 2, 2)]
    same = [frames[0], frames[0] + 1, frames[0] + 2, frames[2]]
    shapes = [b.shape for b in model_batches(same, InputSpec(dims=3), batch_size=6)]
    assert shapes == [(2, 1, 3, 2, 2), (1, 1, 3, 2, 2), (1, 1, 2, 2, 2)]  # 6 // 3 = 2 frames per pass
    assert list(model_batches([], InputSpec(dims=3), 8)) == []


# ---------------------------------------------------------------------------- networks


@pytest.mark.parametrize("depth", [1, 3, 7])
def test_unet3d_takes_any_number_of_slices(depth: int) -> None:
    torch.manual_seed(0)
    model = build_model("unet3d", **KW).eval()
    x = torch.randn(2, 1, depth, 32, 48)
    with torch.no_grad():
        logits = model(x)
        seg, aux, bottom = model.forward_train(x)
    assert logits.shape == (2, 4, depth, 32, 48) and aux is None
    assert bottom.shape == (2, 64, depth, 2, 3)  # pooled 1x2x2: the slice axis is never down-sampled
    torch.testing.assert_close(seg, logits, rtol=0, atol=0)


def test_old_weights_without_an_input_description_are_one_2d_slice(tiny_weights_path: Path, tmp_path: Path) -> None:
    ckpt = torch.load(tiny_weights_path, weights_only=True)
    del ckpt["input"]
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    weights = load_weights(old)
    assert weights.input_spec == InputSpec() and Predictor(weights, FP32).input_spec == InputSpec()
    ckpt["input"] = {"dims": 2, "context_slices": 3}  # the network takes 1 channel: refused
    torch.save(ckpt, old)
    with pytest.raises(WeightsError, match="does not fit architecture"):
        load_weights(old)
    ckpt["input"] = {"dims": 2, "context_slices": 2}
    torch.save(ckpt, old)
    with pytest.raises(WeightsError, match="unusable input description"):
        load_weights(old)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("arch_spec", [("unet2d", InputSpec(2, 3)), ("unet3d", InputSpec(3))])
def test_gpu_agrees_with_the_cpu_for_multislice_and_3d(arch_spec, tmp_path: Path, phantom) -> None:
    from cardioseg.labels import ACDC
    from cardioseg.preprocess import PreprocessConfig
    from cardioseg.weights import export_weights

    name, spec = arch_spec
    torch.manual_seed(0)
    kwargs = {**KW, "in_channels": spec.in_channels}
    path = tmp_path / "w.pt"
    export_weights(build_model(name, **kwargs), path, name="gpu-test", architecture={"name": name, "kwargs": kwargs},
                   preprocess=PreprocessConfig(spacing_mm=2.5, fov_px=64), label_map=ACDC, training={}, validation={},
                   license="test only", input_spec=spec)  # fmt: skip
    weights = load_weights(path)
    cpu = Predictor(weights, FP32).predict(phantom.image, phantom.affine)
    gpu = Predictor(weights, PredictOptions(device="cuda", precision="fp32")).predict(phantom.image, phantom.affine)
    assert gpu.shape == cpu.shape and (gpu == cpu).mean() > 0.999
