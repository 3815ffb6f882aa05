"""Qure.ai's 2D-3D FCNs (Patravali et al.): the multi-slice 2D U-Net, the 3D U-Net and their losses.

Neighbour stacks checked by hand (edges replicated, never across patients, phases or frames),
the 3D U-Net on any number of slices, the weighted CE / log-Dice / hybrid losses on perfect
and wrong predictions with known values, a few training steps of each method on a tiny
phantom cache (slice counts 3-6), and export + ``Predictor`` / ``cardioseg predict`` on the
exported weights, with old weights (no input description) still working.
"""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cardioseg import losses
from cardioseg.cli import app
from cardioseg.dataset import Cache, build_cache, find_frames
from cardioseg.errors import ConfigError, WeightsError
from cardioseg.inference import PredictOptions, Predictor, model_batches
from cardioseg.models import InputSpec, build_model
from cardioseg.models.inputs import context_indices, stack_context
from cardioseg.phantom import PhantomSpec, make_phantom
from cardioseg.train import TrainConfig, _predict_slices, _volume_batch, augment_batch, segmentation_loss, train
from cardioseg.weights import load_weights
from tests.conftest import save_nifti
from tests.test_dataset import GROUPS, TINY

KW = {"in_channels": 1, "num_classes": 4, "base": 4, "depth": 4}
SLICES = (3, 4, 5, 4, 6)  # per phantom patient: frames of different slice counts
FP32 = PredictOptions(device="cpu", precision="fp32")
runner = CliRunner()


def write_tree(root: Path) -> Path:
    """ACDC-style phantom patients with SLICES[i] slices each (ED = frame 1, ES = frame 3)."""
    for i, n in enumerate(SLICES):
        name = f"patient{i + 1:03d}"
        ph = make_phantom(PhantomSpec(shape=(64, 64, n), spacing_mm=(2.5, 2.5, 10.0), n_frames=4, seed=i))
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "Info.cfg").write_text(f"ED: 1\nES: 3\nGroup: {GROUPS[i]}\nHeight: 170\nWeight: 70\n")
        for number, t in ((1, ph.ed_frame), (3, ph.es_frame)):
            save_nifti(folder / f"{name}_frame{number:02d}.nii.gz", ph.image[..., t], ph.affine)
            save_nifti(folder / f"{name}_frame{number:02d}_gt.nii.gz", ph.labels[..., t], ph.affine)
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 patients x (ED, ES), 3-6 slices of 64 x 64 px: 44 slices in 10 frames."""
    root = write_tree(tmp_path_factory.mktemp("data") / "acdc")
    return build_cache(find_frames(root), tmp_path_factory.mktemp("cache") / "cache", TINY)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(PhantomSpec(shape=(48, 40, 5), spacing_mm=(2.5, 2.5, 10.0), n_frames=3, seed=9))


def _cfg(cache: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(**{"cache": str(cache), "out": str(out), "epochs": 1, "batch_size": 4, "crop_px": 32,
                          "base_width": 4, **kw})  # fmt: skip


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


def test_augmentation_applies_one_transform_to_every_channel() -> None:
    img = np.zeros((3, 3, 64, 64), np.float32)
    img[:, :, 20:44, 24:40] = 5.0
    lab = (img[:, 0] > 0).astype(np.int64) * 3
    centres = np.full((3, 2), 32.0)
    x, y = augment_batch(torch.from_numpy(img), torch.from_numpy(lab), centres, 48, np.random.default_rng(1))
    assert x.shape == (3, 3, 48, 48) and y.shape == (3, 48, 48)
    inside = (y == 3)[:, None]
    for c in range(3):  # every channel lines up with the centre slice's labels
        assert float(((x[:, c : c + 1] > 2.5) == inside).float().mean()) > 0.99
    stacked = torch.from_numpy(np.repeat(lab[:, None], 4, axis=1))  # (N, D, H, W) labels of a volume
    _, y3 = augment_batch(torch.from_numpy(img), stacked, centres, 48, np.random.default_rng(1))
    assert y3.shape == (3, 4, 48, 48) and all(torch.equal(y3[:, d], y) for d in range(4))


def test_volume_batch_pads_in_z_and_masks_the_padding() -> None:
    images = torch.arange(7, dtype=torch.float32)[:, None, None].repeat(1, 4, 4) + 1
    labels = torch.ones(7, 4, 4, dtype=torch.uint8)
    dist = torch.ones(7, 3, 4, 4)
    volumes = [np.array([0, 1, 2]), np.array([3, 4]), np.array([5, 6])]
    img, lab, dm, valid = _volume_batch(volumes, np.array([1, 0]), images, labels, dist, 250.0)
    assert img.shape == lab.shape == (2, 3, 4, 4) and dm.shape == (2, 9, 4, 4)
    assert valid.tolist() == [[True, True, False], [True, True, True]]
    assert img[:, :, 0, 0].tolist() == [[4, 5, 0], [1, 2, 3]] and int(lab[0, 2].max()) == 0
    assert float(dm[0, 6:].max()) == -250.0 and float(dm[0, :6].min()) == 1.0


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


# ---------------------------------------------------------------------------- losses


def _target() -> torch.Tensor:
    """(2, 8, 8) labels: 32 background, 16 RV, 12 myocardium, 4 LV pixels per slice."""
    t = torch.zeros(2, 8, 8, dtype=torch.long)
    t[:, 0:2, :] = 1
    t[:, 2:6, 2:6] = 2
    t[:, 3:5, 3:5] = 3
    return t


def _onehot_logits(t: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(t, 4).permute(0, 3, 1, 2).float() * 100  # softmax exactly one-hot in fp32


def test_qure_log_dice_perfect_and_wrong_predictions() -> None:
    t = _target()
    counts = np.array([64, 32, 24, 8], float)  # per class over the batch of 2 slices
    perfect = float(losses.qure_log_dice_loss(_onehot_logits(t), t))
    assert perfect == pytest.approx(np.mean(np.log(2 - (counts + 1) / (2 * counts + 1))), rel=1e-6)
    assert perfect == pytest.approx(math.log(1.5), abs=0.01)  # the printed formula: half the Dice, log 1.5 at best
    wrong_t = (t + 1) % 4  # every pixel predicted as the next class: no overlap
    pred_counts = np.roll(counts, 1)
    wrong = float(losses.qure_log_dice_loss(_onehot_logits(wrong_t), t))
    assert wrong == pytest.approx(np.mean(np.log(2 - 1 / (counts + pred_counts + 1))), rel=1e-6)
    assert wrong > 0.65 and perfect < 0.45
    w = np.array([1.0, 2.0, 3.0, 4.0])
    weighted = float(losses.qure_log_dice_loss(_onehot_logits(wrong_t), t, torch.tensor(w)))
    assert weighted == pytest.approx(np.sum(w / w.sum() * np.log(2 - 1 / (counts + pred_counts + 1))), rel=1e-6)
    absent = torch.zeros(1, 4, 4, dtype=torch.long)  # one class present, perfectly predicted: 3 absent classes score 0
    assert float(losses.qure_log_dice_loss(_onehot_logits(absent), absent)) == pytest.approx(np.log(2 - 17 / 33) / 4)


def test_weighted_cross_entropy_and_hybrid_known_values() -> None:
    a, b = 0.8, 0.3  # probability of the right class at two pixels of classes 0 and 1
    logits = torch.tensor([[math.log(a), math.log(1 - a)], [math.log(1 - b), math.log(b)]]).T.reshape(1, 2, 1, 2)
    t = torch.tensor([[[0, 1]]])
    w = torch.tensor([1.0, 3.0])
    expected = (-math.log(a) - 3 * math.log(b)) / 4
    assert float(losses.weighted_cross_entropy(logits, t, w)) == pytest.approx(expected, rel=1e-5)
    assert float(losses.weighted_cross_entropy(logits, t)) == pytest.approx((-math.log(a) - math.log(b)) / 2, rel=1e-5)
    assert float(losses.weighted_cross_entropy(torch.zeros(2, 4, 3, 3), _target()[:, :3, :3], w.repeat(2))) == (
        pytest.approx(math.log(4), rel=1e-6)
    )
    t4, cw = _target(), torch.tensor([0.5, 1.0, 2.0, 4.0])
    logits4 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    hybrid = float(segmentation_loss("qure_hybrid", logits4, t4, class_weights=cw))
    parts = float(losses.weighted_cross_entropy(logits4, t4, cw)) + float(losses.qure_log_dice_loss(logits4, t4, cw))
    assert hybrid == pytest.approx(parts, rel=1e-6)
    for kind, lo, hi in (("wce", 0.0, 1e-6), ("qure_logdice", 0.38, 0.41), ("qure_hybrid", 0.38, 0.41)):
        good = float(segmentation_loss(kind, _onehot_logits(t4), t4, class_weights=cw))
        bad = float(segmentation_loss(kind, _onehot_logits((t4 + 1) % 4), t4, class_weights=cw))
        assert lo <= good <= hi and bad > good + 0.2


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("change", "message"),
    [({"context_slices": 2}, "odd"), ({"context_slices": 0}, "odd"),
     ({"arch": "unet3d", "context_slices": 3}, "whole stacks"), ({"arch": "unet3d", "dmr": True}, "without --dmr"),
     ({"arch": "unet3d", "regularizer": "gan"}, "without --dmr")],
)  # fmt: skip
def test_config_rejects_impossible_inputs(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(cache="c", out="o", **change).check()


def test_weights_names_reflect_the_method() -> None:
    cfg = TrainConfig(cache="c", out="o", context_slices=3, loss="qure_hybrid")
    assert cfg.weights_name() == "unet2d-ctx3-qure_hybrid-acdc-fold0" and cfg.input_spec() == InputSpec(2, 3)
    assert TrainConfig(cache="c", out="o", arch="unet3d", loss="wce", fold=2).weights_name() == "unet3d-wce-acdc-fold2"
    assert TrainConfig(cache="c", out="o", arch="unet3d").input_spec() == InputSpec(dims=3)
    assert TrainConfig(cache="c", out="o", loss="dice").weights_name() == "unet2d-acdc-fold0"  # unchanged


# ---------------------------------------------------------------------------- training, export, prediction


def _check_predictor(path: Path, spec: InputSpec, phantom) -> Predictor:
    weights = load_weights(path)
    assert weights.input_spec == spec and weights.meta["input"]["padding"] == "replicate"
    assert weights.architecture["kwargs"]["in_channels"] == spec.in_channels
    pred = Predictor(weights, FP32)
    frame = phantom.image[..., 0]
    mask = pred.predict(frame, phantom.affine)
    assert mask.shape == frame.shape and mask.dtype == np.uint8
    cine = pred.predict(phantom.image, phantom.affine)
    assert cine.shape == phantom.image.shape and cine.dtype == np.uint8
    # frames pooled into shared forward passes give each frame's own labels (no mixing between frames)
    for t in range(phantom.image.shape[3]):
        assert np.array_equal(cine[..., t], pred.predict_frame(phantom.image[..., t], phantom.affine))
    return pred


def test_multislice_unet_trains_exports_and_predicts(cache_dir: Path, tmp_path: Path, phantom) -> None:
    messages: list[str] = []
    path = train(_cfg(cache_dir, tmp_path / "run", context_slices=3, loss="qure_hybrid"), log=messages.append)
    assert path.name == "unet2d-ctx3-qure_hybrid-acdc-fold0.pt"
    assert any("training slices" in m for m in messages) and any("val dice" in m for m in messages)
    pred = _check_predictor(path, InputSpec(2, 3), phantom)
    # validation segments a frame exactly as the predictor does (bf16, the same stacks)
    bf16 = Predictor(load_weights(path), PredictOptions(device="cpu", precision="bf16"))
    slices = pred.to_model(phantom.image[..., 1], phantom.affine)[1]
    validation = _predict_slices(bf16.model, slices, "cpu", InputSpec(2, 3))
    assert np.array_equal(validation, bf16.slice_probabilities(slices).argmax(1))
    # a different stack gives a different answer: the network does look at the neighbours
    probs = pred.slice_probabilities(slices)
    swapped = pred.slice_probabilities(slices[::-1].copy())[::-1]
    assert not np.allclose(probs[1:-1], swapped[1:-1])


def test_unet3d_trains_on_padded_volumes_exports_and_predicts(cache_dir: Path, tmp_path: Path, phantom) -> None:
    messages: list[str] = []
    path = train(_cfg(cache_dir, tmp_path / "run", arch="unet3d", loss="qure_logdice", batch_size=3),
                 log=messages.append)  # fmt: skip
    assert path.name == "unet3d-qure_logdice-acdc-fold0.pt"
    assert any(m.startswith("3D network: 8 training frames of ") for m in messages), messages
    pred = _check_predictor(path, InputSpec(dims=3), phantom)
    for n in (1, 2, 7):  # any slice count, e.g. a single slice or a longer stack
        frame = np.repeat(phantom.image[..., :1, 0], n, axis=2)
        assert pred.predict(frame, phantom.affine).shape == frame.shape


def test_unet3d_with_distance_maps_of_the_padded_volumes(cache_dir: Path, tmp_path: Path) -> None:
    """Li et al.'s MapDice on a 3D network: the (frames x slices) maps follow the flattened logits."""
    path = train(_cfg(cache_dir, tmp_path / "run", arch="unet3d", loss="mapdice", batch_size=3), log=lambda m: None)
    assert path.name == "unet3d-acdc-fold0.pt" and load_weights(path).input_spec == InputSpec(dims=3)


def test_cli_trains_unet3d_and_multislice_and_predict_just_works(cache_dir: Path, tmp_path: Path, phantom) -> None:
    image = save_nifti(tmp_path / "in" / "case.nii.gz", phantom.image[..., 0], phantom.affine)
    for extra, name in ((["--arch", "unet3d", "--loss", "wce", "--batch-size", "2"], "unet3d-wce-acdc-fold0.pt"),
                        (["--context-slices", "5", "--loss", "wce"], "unet2d-ctx5-wce-acdc-fold0.pt")):  # fmt: skip
        out = tmp_path / name
        args = ["train", str(cache_dir), "-o", str(out), "--epochs", "1", "--crop-px", "32", "--base-width", "4",
                "--batch-size", "4", "-q", *extra]  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert (out / name).is_file()
        result = runner.invoke(app, ["predict", str(image), "-o", str(out / "pred"), "-w", str(out / name)])
        assert result.exit_code == 0, result.output
        mask = nib.load(str(out / "pred" / "case_seg.nii.gz"))
        assert mask.shape == phantom.image.shape[:3] and np.allclose(mask.affine, phantom.affine)
    result = runner.invoke(app, ["train", str(cache_dir), "-o", str(tmp_path / "x"), "--context-slices", "4"])
    assert result.exit_code == 1 and "odd" in result.output


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
