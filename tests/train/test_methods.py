"""Each other method's training loop on the tiny phantom caches: the regularisers (log columns,
export without the auxiliary networks, resume, older runs, the DDP code path) and Qure.ai's
multi-slice 2D and 3D networks (export, then ``Predictor`` on the exported weights)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from train.helpers import KW, logger, rows, tiny_cfg

from cardioseg.inference import PredictOptions, Predictor
from cardioseg.models import InputSpec, build_model
from cardioseg.train import REG_COLUMNS, train
from cardioseg.train.validation import predict_slices
from cardioseg.weights import load_weights

FP32 = PredictOptions(device="cpu", precision="fp32")


def _check_plain_export(path: Path, regularizer: str) -> None:
    from cardioseg.weights import load_weights

    weights = load_weights(path)
    plain = build_model("unet2d", **KW).state_dict()
    assert set(weights.state_dict) == set(plain)  # no LR-Net, heads, autoencoder or discriminator
    assert weights.architecture == {"name": "unet2d", "kwargs": KW}
    assert weights.meta["training"]["regulariser"] == f"{regularizer}: used in training only"
    assert weights.meta["training"]["recipe"]["regularizer"] == regularizer


@pytest.mark.parametrize(
    ("kw", "columns"),
    [({"regularizer": "lrnet"}, ["lrnet_loss"]), ({"regularizer": "srnn"}, ["shape_loss"]),
     ({"regularizer": "scn"}, ["position_loss"]), ({"regularizer": "srscn", "loss": "explog"}, ["shape_loss", "position_loss"]),
     ({"regularizer": "acnn"}, ["shape_loss"]), ({"regularizer": "gan", "loss": "mapdice"}, ["adv_loss", "disc_loss"])],
)  # fmt: skip
def test_each_method_trains_logs_and_exports_the_plain_network(
    kw: dict, columns: list[str], tiny_cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    path = train(tiny_cfg(tiny_cache, out, epochs=2, shape_epochs=5, reg_weight=1.0, **kw))
    logged = rows(out / "log.csv")
    assert [r["epoch"] for r in logged] == ["1", "2"]
    for r in logged:
        assert all(math.isfinite(float(r[k])) for k in ("loss", "seg_loss", *REG_COLUMNS))
        assert all(float(r[k]) > 0 for k in columns)
        assert all(float(r[k]) == 0 for k in REG_COLUMNS if k not in columns)
        if kw["regularizer"] in ("lrnet", "scn", "acnn", "srnn"):
            extra = sum(float(r[k]) * (0.1 if k == "position_loss" else 1.0) for k in columns)
            assert float(r["loss"]) == pytest.approx(float(r["seg_loss"]) + extra, rel=2e-3, abs=2e-3)
    assert path.name == f"{kw['regularizer']}-unet2d-acdc-fold0.pt"
    _check_plain_export(path, kw["regularizer"])
    assert (out / "shape_ae.pt").is_file() == (kw["regularizer"] in ("srnn", "srscn", "acnn"))


def test_resume_restores_the_auxiliary_networks(tiny_cache: Path, tmp_path: Path) -> None:
    """srscn: the frozen autoencoder and the position head come back from last.pt (no second
    pre-training); gan: the discriminator and its optimiser do. Two epochs in two runs give
    the same networks as two epochs in one."""
    for regularizer in ("srscn", "gan"):
        one, two = tmp_path / f"{regularizer}1", tmp_path / f"{regularizer}2"
        train(tiny_cfg(tiny_cache, one, epochs=2, regularizer=regularizer, shape_epochs=2))
        train(tiny_cfg(tiny_cache, two, epochs=1, regularizer=regularizer, shape_epochs=2))
        messages: list[str] = []
        train(tiny_cfg(tiny_cache, two, epochs=2, regularizer=regularizer, shape_epochs=2), resume=True, callbacks=logger(messages))
        assert any("resumed at epoch 1" in m for m in messages)
        assert not any("shape autoencoder epoch" in m for m in messages)
        assert len(rows(two / "log.csv")) == 2
        s1, s2 = (torch.load(p / "last.pt", weights_only=True) for p in (one, two))
        keys = [k for k in s1["module"] if k.startswith(("position.", "shape_ae.", "model.head"))]
        assert keys and (regularizer == "gan" or any(k.startswith("position.") for k in keys))
        for k in keys:
            torch.testing.assert_close(s2["module"][k], s1["module"][k], rtol=1e-4, atol=1e-5)
        if regularizer == "gan":
            for k, v in s1["disc"].items():
                torch.testing.assert_close(s2["disc"][k], v, rtol=1e-4, atol=1e-5)
            assert s2["opt_disc"]["state"]
        else:
            assert len(rows(two / "shape_ae_log.csv")) == 2  # pre-trained once


def test_resume_of_a_run_made_before_the_regularizers(tiny_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny_cfg(tiny_cache, out, shape_epochs=20))  # the new settings at their defaults
    saved = json.loads((out / "config.json").read_text())
    for key in ("regularizer", "reg_weight", "position_weight", "shape_epochs"):
        del saved[key]
    (out / "config.json").write_text(json.dumps(saved))
    old_columns = ["epoch", "loss", "seg_loss", "dm_loss", "sigma_seg", "sigma_dm", "lr", "seconds", "val_dice_mean",
                   "val_json"]  # fmt: skip
    with open(out / "log.csv", newline="") as f:  # the log as the older version wrote it
        new_rows = list(csv.DictReader(f))
    with open(out / "log.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, old_columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(new_rows)
    train(tiny_cfg(tiny_cache, out, epochs=2, shape_epochs=20), resume=True)
    with open(out / "log.csv", newline="") as f:
        lines = list(csv.reader(f))
    assert lines[0] == old_columns and [len(line) for line in lines[1:]] == [len(old_columns)] * 2
    assert [r["epoch"] for r in rows(out / "log.csv")] == ["1", "2"]


def test_ddp_code_path_with_gan_and_srscn(tiny_cache: Path, tmp_path: Path) -> None:
    """The loop told world size 2 in a one-rank gloo group: DDP wrappers for the module and the
    discriminator, the barrier after pre-training."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        for regularizer in ("gan", "srscn"):
            path = train(tiny_cfg(tiny_cache, tmp_path / regularizer, regularizer=regularizer, shape_epochs=2), world=2)
            assert path.is_file()
    finally:
        dist.destroy_process_group()


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


def test_multislice_unet_trains_exports_and_predicts(multi_cache: Path, tmp_path: Path, phantom) -> None:
    messages: list[str] = []
    path = train(tiny_cfg(multi_cache, tmp_path / "run", context_slices=3, loss="qure_hybrid"), callbacks=logger(messages))
    assert path.name == "unet2d-ctx3-qure_hybrid-acdc-fold0.pt"
    assert any("training slices" in m for m in messages) and any("val dice" in m for m in messages)
    pred = _check_predictor(path, InputSpec(2, 3), phantom)
    # validation segments a frame exactly as the predictor does (bf16, the same stacks)
    bf16 = Predictor(load_weights(path), PredictOptions(device="cpu", precision="bf16"))
    slices = pred.to_model(phantom.image[..., 1], phantom.affine)[1]
    validation = predict_slices(bf16.model, slices, "cpu", InputSpec(2, 3))
    assert np.array_equal(validation, bf16.slice_probabilities(slices).argmax(1))
    # a different stack gives a different answer: the network does look at the neighbours
    probs = pred.slice_probabilities(slices)
    swapped = pred.slice_probabilities(slices[::-1].copy())[::-1]
    assert not np.allclose(probs[1:-1], swapped[1:-1])


def test_unet3d_trains_on_padded_volumes_exports_and_predicts(multi_cache: Path, tmp_path: Path, phantom) -> None:
    messages: list[str] = []
    path = train(tiny_cfg(multi_cache, tmp_path / "run", arch="unet3d", loss="qure_logdice", batch_size=3),
                 callbacks=logger(messages))  # fmt: skip
    assert path.name == "unet3d-qure_logdice-acdc-fold0.pt"
    assert any(m.startswith("3D network: 8 training frames of ") for m in messages), messages
    pred = _check_predictor(path, InputSpec(dims=3), phantom)
    for n in (1, 2, 7):  # any slice count, e.g. a single slice or a longer stack
        frame = np.repeat(phantom.image[..., :1, 0], n, axis=2)
        assert pred.predict(frame, phantom.affine).shape == frame.shape


def test_unet3d_with_distance_maps_of_the_padded_volumes(multi_cache: Path, tmp_path: Path) -> None:
    """Li et al.'s MapDice on a 3D network: the (frames x slices) maps follow the flattened logits."""
    path = train(tiny_cfg(multi_cache, tmp_path / "run", arch="unet3d", loss="mapdice", batch_size=3))
    assert path.name == "unet3d-acdc-fold0.pt" and load_weights(path).input_spec == InputSpec(dims=3)
