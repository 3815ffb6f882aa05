"""Training: config checks, losses (Eq. 7), augmentation with distance maps, the loop on a tiny
cache (resume, export without the regulariser), DDP under torchrun, and the CLI commands."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cardioseg.cli import app
from cardioseg.dataset import build_cache, find_frames
from cardioseg.errors import ConfigError
from cardioseg.models.unet import DMR_PREFIX
from cardioseg.preprocess import distance_maps, truncated_signed_distance
from cardioseg.train import (
    TrainConfig,
    augment_batch,
    dice_ce_loss,
    export_run,
    fold_configs,
    load_config,
    multitask_loss,
    segmentation_loss,
    train,
)
from tests.test_dataset import TINY, write_acdc_tree

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 phantom patients (one per group), 64 x 64 px of 2.5 mm, 4 slices, ED + ES: 40 slices."""
    root = write_acdc_tree(tmp_path_factory.mktemp("data") / "acdc", n=5)
    return build_cache(find_frames(root), tmp_path_factory.mktemp("cache") / "cache", TINY)


def _cfg(cache: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(**{"cache": str(cache), "out": str(out), "epochs": 1, "batch_size": 4, "crop_px": 32,
                          "base_width": 4, **kw})  # fmt: skip


def _log_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------- config, losses


@pytest.mark.parametrize(
    ("change", "message"),
    [({"arch": "vnet"}, "architecture 'vnet'"), ({"loss": "l2"}, "loss 'l2'"), ({"weighting": "x"}, "weighting"),
     ({"optimizer": "sgd"}, "optimizer"), ({"fold": 5}, "--fold"), ({"crop_px": 40}, "--crop-px"),
     ({"regularizer": "vae"}, "regularizer 'vae'"), ({"shape_epochs": 0}, "--shape-epochs")],
)  # fmt: skip
def test_config_check_rejects_bad_settings(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(cache="c", out="o", **change).check()


def test_config_defaults() -> None:
    cfg = TrainConfig(cache="c", out="o")
    cfg.check()
    assert cfg.resolved_lr() == 1e-4 and TrainConfig(cache="c", out="o", dmr=True).resolved_lr() == 5e-4
    assert TrainConfig(cache="c", out="o", optimizer="adamw").resolved_lr() == 1e-3
    assert (
        TrainConfig(cache="c", out="o", dmr=True, arch="segnet2d", fold=2).weights_name() == "dmr-segnet2d-acdc-fold2"
    )
    folds = fold_configs(cfg)
    assert [(c.fold, c.out) for c in folds] == [(k, str(Path("o") / f"fold{k}")) for k in range(5)]


@pytest.mark.parametrize("kind", ["ce", "dice", "logdice", "dice_ce"])
def test_segmentation_loss_prefers_the_right_answer(kind: str) -> None:
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 0:2, :] = 1
    target[:, 2:6, 2:6] = 2
    target[:, 3:5, 3:5] = 3
    right = torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float() * 10
    wrong = torch.roll(right, 1, dims=1)
    good, bad = float(segmentation_loss(kind, right, target)), float(segmentation_loss(kind, wrong, target))
    assert 0 <= good < 0.05 < bad
    if kind == "dice_ce":
        assert float(dice_ce_loss(wrong, target, 4)) == pytest.approx(bad)


def test_unknown_loss() -> None:
    with pytest.raises(ConfigError, match="unknown loss"):
        segmentation_loss("focal", torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


def test_multitask_loss_eq7_and_fixed() -> None:
    seg, dm = torch.tensor(0.7), torch.tensor(3.0)
    s = torch.tensor([0.5, -0.2], requires_grad=True)
    assert float(multitask_loss(seg, dm, s, "fixed", 2.0, 0.5).detach()) == pytest.approx(2 * 0.7 + 0.5 * 3.0)
    value = multitask_loss(seg, dm, s, "uncertainty", 1.0, 1.0)
    assert float(value.detach()) == pytest.approx(0.7 / math.exp(0.5) + 3.0 / math.exp(-0.2) + 0.5 - 0.2)
    value.backward()  # d/ds = 1 - L/sigma: the optimum is sigma = L
    np.testing.assert_allclose(s.grad.numpy(), [1 - 0.7 / math.exp(0.5), 1 - 3.0 / math.exp(-0.2)], rtol=1e-6)


# ---------------------------------------------------------------------------- augmentation


class ForcedRng:
    """A generator whose rotation and scale draws are fixed (the rest is random)."""

    def __init__(self, angle: float, scale: float) -> None:
        self.rng, self.angle, self.scale = np.random.default_rng(0), angle, scale

    def uniform(self, low=0.0, high=1.0, size=None):
        fixed = {(0, 2 * math.pi): self.angle, (0.8, 1.2): self.scale}.get((low, high))
        return np.full(size, fixed) if fixed is not None else self.rng.uniform(low, high, size)

    def __getattr__(self, name: str):
        return getattr(self.rng, name)


def _square_batch(n: int, t: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    img = np.zeros((n, 1, 64, 64), np.float32)
    lab = np.zeros((n, 64, 64), np.int64)
    img[:, 0, 24:40, 24:40] = 5.0
    lab[:, 24:40, 24:40] = 3
    dm = np.stack([distance_maps(lab[i], (1, 2, 3), t) for i in range(n)])
    return torch.from_numpy(img), torch.from_numpy(lab), torch.from_numpy(dm)


def test_augmentation_keeps_image_labels_and_distance_maps_aligned() -> None:
    img, lab, dm = _square_batch(4, 250.0)
    x, y, d = augment_batch(img, lab, np.full((4, 2), 32.0), 48, np.random.default_rng(0), dm, 250.0)
    assert x.shape == (4, 1, 48, 48) and y.shape == (4, 48, 48) and d.shape == (4, 3, 48, 48)
    assert y.dtype == torch.long and d.dtype == torch.float32
    inside = y == 3
    assert inside.sum() > 400
    assert float(x[inside[:, None]].mean()) > 3.5 and float(x[~inside[:, None]].mean()) < 1.5
    # the warped distance map is positive inside the warped object, negative outside
    assert float(((d[:, 2] > 0) == inside).float().mean()) > 0.98
    assert (d[:, 0] < -190).all() and (d[:, 1] < -190).all()  # absent structures stay far away


@pytest.mark.parametrize("scale", [0.8, 1.2])
def test_warped_distance_maps_are_scaled_distances_of_the_warped_labels(scale: float) -> None:
    img, lab, dm = _square_batch(1, 250.0)
    _, y, d = augment_batch(img, lab, np.array([[31.5, 31.5]]), 48, ForcedRng(0.3, scale), dm, 250.0)
    recomputed = truncated_signed_distance(y[0].numpy() == 3, 250.0)
    near = recomputed > -10  # away from the crop's corners, which may lie outside the image (border padding)
    err = np.abs(d[0, 2].numpy() - recomputed)[near]
    assert near.sum() > 500 and err.max() < 2.0 and err.mean() < 0.5
    assert float(d[0, 2].max()) == pytest.approx(8 * scale, abs=0.6)  # the square's centre: 8 px inside


def test_warped_distance_maps_are_clamped_at_minus_t() -> None:
    img, lab, dm = _square_batch(2, 10.0)
    _, _, d = augment_batch(img, lab, np.full((2, 2), 32.0), 48, ForcedRng(1.0, 1.2), dm, 10.0)
    assert float(d.min()) == -10.0
    assert (d[:, 0] == -10.0).all()  # empty structure: -T, not -1.2 T
    assert float((d[:, 2] == -10.0).float().mean()) > 0.2


# ---------------------------------------------------------------------------- the loop


def _check_export(path: Path, arch: str, dmr: bool) -> None:
    from cardioseg.inference import PredictOptions, Predictor
    from cardioseg.phantom import PhantomSpec, make_phantom
    from cardioseg.weights import load_weights

    weights = load_weights(path)
    assert path.name == f"{'dmr-' if dmr else ''}{arch}-acdc-fold0.pt"
    assert weights.architecture == {"name": arch, "kwargs": {"in_channels": 1, "num_classes": 4, "base": 4, "depth": 4}}
    assert not any(k.startswith(DMR_PREFIX) for k in weights.state_dict)
    training = weights.meta["training"]
    assert training["val_patients"] and set(training["train_patients"]).isdisjoint(training["val_patients"])
    assert training["distance_map_regulariser"] == ("used in training, removed from these weights" if dmr else "none")
    assert training["recipe"]["dmr"] is dmr and weights.preprocess == TINY
    assert training["regulariser"] == "none" and training["recipe"]["regularizer"] == "none"
    ph = make_phantom(PhantomSpec(shape=(64, 64, 4), spacing_mm=(2.5, 2.5, 10.0), n_frames=2, seed=9))
    mask = Predictor(weights, PredictOptions(device="cpu", precision="fp32")).predict(ph.image[..., 0], ph.affine)
    assert mask.shape == ph.image.shape[:3] and mask.dtype == np.uint8


def test_train_unet_resume_and_export(tiny_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = _cfg(tiny_cache, out, epochs=2)
    messages: list[str] = []
    path = train(cfg, log=messages.append)
    assert any("32 training slices, 1 validation patients" in m for m in messages)
    rows = _log_rows(out)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == ["epoch", "loss", "seg_loss", "dm_loss", "lrnet_loss", "shape_loss", "position_loss",
                             "adv_loss", "disc_loss", "sigma_seg", "sigma_dm", "lr", "seconds", "val_dice_mean",
                             "val_json"]  # fmt: skip
    assert all(float(rows[0][k]) == 0 for k in ("lrnet_loss", "shape_loss", "position_loss", "adv_loss", "disc_loss"))
    assert rows[0]["sigma_seg"] == rows[0]["sigma_dm"] == "1.0000" and float(rows[0]["dm_loss"]) == 0
    assert [float(r["lr"]) for r in rows] == pytest.approx([1e-4 * 0.99, 1e-4 * 0.99**2], rel=1e-3)
    _check_export(path, "unet2d", dmr=False)
    assert load_config(out) == cfg
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(cfg, log=messages.append)
    messages.clear()
    assert train(cfg, resume=True, log=messages.append) == path
    assert any("resumed at epoch 2" in m for m in messages) and len(_log_rows(out)) == 2
    with pytest.raises(ConfigError, match="different settings: loss"):
        train(_cfg(tiny_cache, out, epochs=2, loss="dice"), resume=True, log=messages.append)
    train(_cfg(tiny_cache, out, epochs=3), resume=True, log=messages.append)  # one more epoch, schedule continues
    assert [float(r["lr"]) for r in _log_rows(out)][-1] == pytest.approx(1e-4 * 0.99**3, rel=1e-3)


def test_train_with_dmr_exports_the_plain_network(tiny_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    path = train(_cfg(tiny_cache, out, dmr=True), log=lambda m: None)
    row = _log_rows(out)[0]
    assert float(row["dm_loss"]) > 0 and row["sigma_seg"] != "1.0000" and row["sigma_dm"] != "1.0000"
    best = torch.load(out / "best.pt", weights_only=True)
    assert any(k.startswith(DMR_PREFIX) for k in best["model"])  # the checkpoint keeps the regulariser ...
    _check_export(path, "unet2d", dmr=True)  # ... the exported weights do not


def test_train_usegnet_dmr_fixed_weights(tiny_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    path = train(
        _cfg(tiny_cache, out, arch="usegnet2d", dmr=True, weighting="fixed", loss="dice_ce"), log=lambda m: None
    )
    row = _log_rows(out)[0]
    assert row["sigma_seg"] == row["sigma_dm"] == "1.0000"
    assert float(row["loss"]) == pytest.approx(float(row["seg_loss"]) + float(row["dm_loss"]) / 250.0, abs=2e-3)
    _check_export(path, "usegnet2d", dmr=True)


def test_export_run_without_checkpoint(tiny_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No best checkpoint"):
        export_run(_cfg(tiny_cache, tmp_path), log=lambda m: None)
    with pytest.raises(ConfigError, match="config.json missing"):
        load_config(tmp_path)


# ---------------------------------------------------------------------------- DDP


def test_torchrun_two_processes(tiny_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "cardioseg", "train", str(tiny_cache), "-o", str(out), "--epochs", "1", "--batch-size", "4",
           "--crop-px", "32", "--base-width", "4", "-q"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "unet2d-acdc-fold0.pt").is_file() and str(out / "unet2d-acdc-fold0.pt") in proc.stdout
    assert [r["epoch"] for r in _log_rows(out)] == ["1"]


@pytest.mark.parametrize(
    "weighting",
    ["uncertainty", "fixed"],
)
def test_ddp_with_dmr(tiny_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weighting: str) -> None:
    """The DDP code path in this process: a one-rank gloo group, the loop told world size 2."""
    import torch.distributed as dist

    import cardioseg.train as T

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    monkeypatch.setattr(T, "_distributed", lambda: (0, 2))
    try:
        path = train(_cfg(tiny_cache, tmp_path / "run", dmr=True, weighting=weighting), log=lambda m: None)
    finally:
        dist.destroy_process_group()
    assert path.is_file()


# ---------------------------------------------------------------------------- CLI


def test_cli_preprocess_train_and_export_only(tmp_path: Path) -> None:
    data = write_acdc_tree(tmp_path / "data", n=5)
    cache = tmp_path / "cache"
    result = runner.invoke(
        app, ["preprocess", str(data), "-o", str(cache), "-q", "--fov-px", "64", "--spacing-mm", "2.5"]
    )
    assert result.exit_code == 0, result.output
    assert f"{cache}: 10 frames" in result.stdout
    assert (cache / "meta.json").is_file() and (cache / "distmaps.npy").is_file()
    out = tmp_path / "run"
    args = ["train", str(cache), "-o", str(out), "--epochs", "1", "--batch-size", "4", "--crop-px", "32",
            "--base-width", "4", "-q", "--name", "tiny"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    weights = out / "tiny.pt"
    assert str(weights) in result.stdout and weights.is_file()
    weights.unlink()
    result = runner.invoke(app, [*args, "--export-only"])
    assert result.exit_code == 0, result.output
    assert weights.is_file() and str(weights) in result.stdout
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "--resume" in result.output


def test_cli_train_on_a_non_cache_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", str(tmp_path), "-o", str(tmp_path / "run"), "--crop-px", "32"])
    assert result.exit_code == 1
    assert "cardioseg preprocess" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["train", str(tmp_path), "-o", str(tmp_path / "run"), "--loss", "l2"])
    assert result.exit_code == 1 and "unknown loss 'l2'" in result.output
