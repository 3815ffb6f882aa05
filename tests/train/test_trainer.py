"""The training loop: ``train`` on a tiny cache (log, resume, export without the regulariser),
``Trainer``'s steps against a step computed by hand, its callbacks, and the DDP code path."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from train.helpers import log_rows, logger, tiny_cfg

from cardioseg.errors import ConfigError
from cardioseg.models.unet import DMR_PREFIX
from cardioseg.train import LOG_COLUMNS, Callbacks, Trainer, export_run, load_config, train
from cardioseg.train.augment import FAR_FRACTION, FAR_MARGIN_PX, augment_batch, jitter_centres
from tests.test_dataset import TINY


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
    cfg = tiny_cfg(tiny_cache, out, epochs=2)
    messages: list[str] = []
    path = train(cfg, callbacks=logger(messages))
    assert any("32 training slices, 1 validation patients" in m for m in messages)
    rows = log_rows(out)
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
        train(cfg, callbacks=logger(messages))
    messages.clear()
    assert train(cfg, resume=True, callbacks=logger(messages)) == path
    assert any("resumed at epoch 2" in m for m in messages) and len(log_rows(out)) == 2
    with pytest.raises(ConfigError, match="different settings: loss"):
        train(tiny_cfg(tiny_cache, out, epochs=2, loss="dice"), resume=True, callbacks=logger(messages))
    train(tiny_cfg(tiny_cache, out, epochs=3), resume=True, callbacks=logger(messages))  # one more epoch, schedule continues
    assert [float(r["lr"]) for r in log_rows(out)][-1] == pytest.approx(1e-4 * 0.99**3, rel=1e-3)


def test_train_with_dmr_exports_the_plain_network(tiny_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    path = train(tiny_cfg(tiny_cache, out, dmr=True))
    row = log_rows(out)[0]
    assert float(row["dm_loss"]) > 0 and row["sigma_seg"] != "1.0000" and row["sigma_dm"] != "1.0000"
    best = torch.load(out / "best.pt", weights_only=True)
    assert any(k.startswith(DMR_PREFIX) for k in best["model"])  # the checkpoint keeps the regulariser ...
    _check_export(path, "unet2d", dmr=True)  # ... the exported weights do not


def test_train_usegnet_dmr_fixed_weights(tiny_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    path = train(
        tiny_cfg(tiny_cache, out, arch="usegnet2d", dmr=True, weighting="fixed", loss="dice_ce")
    )
    row = log_rows(out)[0]
    assert row["sigma_seg"] == row["sigma_dm"] == "1.0000"
    assert float(row["loss"]) == pytest.approx(float(row["seg_loss"]) + float(row["dm_loss"]) / 250.0, abs=2e-3)
    _check_export(path, "usegnet2d", dmr=True)


def test_export_run_without_checkpoint(tiny_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No best checkpoint"):
        export_run(tiny_cfg(tiny_cache, tmp_path))
    with pytest.raises(ConfigError, match="config.json missing"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    "weighting",
    ["uncertainty", "fixed"],
)
def test_ddp_with_dmr(tiny_cache: Path, tmp_path: Path, weighting: str) -> None:
    """The DDP code path in this process: a one-rank gloo group, the trainer told world size 2."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        path = train(tiny_cfg(tiny_cache, tmp_path / "run", dmr=True, weighting=weighting), world=2)
    finally:
        dist.destroy_process_group()
    assert path.is_file()


# ---------------------------------------------------------------------------- the steps


def test_a_train_step_is_one_rmsprop_step_on_the_cross_entropy_of_an_augmented_batch(
    tiny_cache: Path, tmp_path: Path
) -> None:
    """``train_step`` recomputed by hand: the jittered crops of the batch, its transforms, the
    bf16 forward pass, cross-entropy, and one RMSprop step at the paper's lr."""
    trainer = Trainer(tiny_cfg(tiny_cache, tmp_path / "run"), device="cpu", world=1)
    trainer.setup()
    assert trainer.steps == 8 and trainer.per_rank_batch == 4  # 32 training slices, batches of 4
    net = copy.deepcopy(trainer.module).train()
    start = {k: p.detach().clone() for k, p in net.named_parameters()}
    idx = np.array([3, 17, 0, 25])
    torch.manual_seed(11)
    terms = trainer.train_step(idx, np.random.default_rng(4))

    torch.manual_seed(11)
    rng, d = np.random.default_rng(4), trainer.data
    centres = jitter_centres(d.centres[idx], 64, 32, rng, FAR_FRACTION, FAR_MARGIN_PX)
    x, y = augment_batch(d.images[np.asarray(d.samples)[idx]], d.labels[idx], centres, 32, rng)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(x.contiguous(memory_format=torch.channels_last))[0]
    loss = torch.nn.functional.cross_entropy(logits.float(), y)
    opt = torch.optim.RMSprop([p for k, p in net.named_parameters() if k != "log_sigma"], lr=1e-4)
    loss.backward()
    opt.step()

    assert float(terms["loss"].detach()) == float(terms["seg_loss"].detach()) == pytest.approx(float(loss.detach()), rel=1e-6)
    assert float(terms["dm_loss"]) == 0 and set(terms) == {"loss", "seg_loss", "dm_loss"}
    by_hand = dict(net.named_parameters())
    for name, p in trainer.module.named_parameters():
        torch.testing.assert_close(p, by_hand[name], rtol=1e-6, atol=1e-7, msg=name)
    moved = {k: float((p.detach() - start[k]).abs().max()) for k, p in trainer.module.named_parameters()}
    assert max(moved.values()) > 1e-5 and moved["log_sigma"] == 0  # the network moved, the log-sigmas did not


class Recorder(Callbacks):
    """Records every call, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def on_log(self, message: str) -> None:
        self.calls.append(("log", message))

    def on_epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        self.calls.append(("start", epoch, epochs, steps))

    def on_step(self) -> None:
        self.calls.append(("step",))

    def on_epoch_end(self, row: dict[str, str]) -> None:
        self.calls.append(("end", row))


def test_progress_and_log_lines_go_through_the_callbacks(
    tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No print, no thread count change: the engine reports through its callbacks only."""
    threads = torch.get_num_threads()
    rec = Recorder()
    path = train(tiny_cfg(tiny_cache, tmp_path / "run", epochs=2, threads=2), callbacks=rec)
    assert capsys.readouterr() == ("", "") and torch.get_num_threads() == threads
    kinds = [c[0] for c in rec.calls]
    assert kinds == ["log", "start", *["step"] * 8, "end", "log", "start", *["step"] * 8, "end", "log", "log"]
    assert rec.calls[0][1].startswith(f"cache {tiny_cache}: 40 slices") and rec.calls[1] == ("start", 1, 2, 8)
    row = rec.calls[10][1]
    assert list(row) == list(LOG_COLUMNS) and row["epoch"] == "1" and row == log_rows(tmp_path / "run")[0]
    assert rec.calls[11][1].startswith("epoch 1/2 loss ") and " val dice " in rec.calls[11][1]
    assert rec.calls[-1][1].startswith(f"exported {path} (best epoch ")
    train(tiny_cfg(tiny_cache, tmp_path / "quiet"))  # no callbacks: silent
    assert capsys.readouterr() == ("", "")


def test_validate_is_due_every_val_every_epochs_and_at_the_end(tiny_cache: Path, tmp_path: Path) -> None:
    path = train(tiny_cfg(tiny_cache, tmp_path / "run", epochs=3, val_every=2))
    rows = log_rows(tmp_path / "run")
    assert [math.isnan(float(r["val_dice_mean"])) for r in rows] == [True, False, False]
    assert rows[0]["val_json"] == "{}" and path.is_file()
    trainer = Trainer(tiny_cfg(tiny_cache, tmp_path / "other", epochs=3, val_every=2), rank=1, world=2)
    assert trainer.validate(1) == {}  # rank 1 never validates


def test_all_patients_trains_on_every_patient_without_validation_and_exports_the_last_epoch(
    tiny_cache: Path, tmp_path: Path
) -> None:
    from dataclasses import replace

    from cardioseg.dataset import load_cache
    from cardioseg.weights import load_weights

    out = tmp_path / "all"
    cfg = replace(tiny_cfg(tiny_cache, out, epochs=2), all_patients=True)
    messages: list[str] = []
    path = train(cfg, callbacks=logger(messages))
    assert path.name == "unet2d-acdc-all.pt"
    rows = log_rows(out)
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(r["val_dice_mean"] == "nan" for r in rows)
    training = load_weights(path).meta["training"]
    assert training["train_patients"] == sorted(load_cache(tiny_cache).patients) and training["val_patients"] == []
    assert training["best_epoch"] == 2 and "no validation" in training["split"]
    assert any("last epoch 2, no validation" in m for m in messages)
    messages.clear()
    assert train(replace(cfg, epochs=3), resume=True, callbacks=logger(messages)) == path


def test_keep_last_exports_the_last_epoch_whatever_the_validation(tiny_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--keep last (cross-validation): best.pt and the export are the last epoch even when an
    earlier one scored higher on the held-out patients; --val-every validates every N epochs and
    after the last; the default keeps the best-scoring epoch."""
    from dataclasses import replace

    from cardioseg.train import validation
    from cardioseg.weights import load_weights

    scores = iter([0.9, 0.5, 0.9, 0.5])  # epochs 2 and 4 of each run (val_every 2; 4 is the last)

    def fake_validate(*args: object, **kwargs: object) -> dict[str, float]:
        return {"dice_mean": next(scores)}

    monkeypatch.setattr(validation, "validate", fake_validate)
    messages: list[str] = []
    cfg = tiny_cfg(tiny_cache, tmp_path / "last", epochs=4, val_every=2, keep="last")
    path = train(cfg, callbacks=logger(messages))
    rows = log_rows(tmp_path / "last")
    assert [r["val_dice_mean"] for r in rows] == ["nan", "0.9000", "nan", "0.5000"]
    assert load_weights(path).meta["training"]["best_epoch"] == 4
    assert any("last epoch 4" in m for m in messages)
    best = train(replace(cfg, out=str(tmp_path / "best"), keep="best"), callbacks=logger(messages))
    assert load_weights(best).meta["training"]["best_epoch"] == 2
    with pytest.raises(ConfigError, match="--keep"):
        replace(cfg, keep="first").check()
    with pytest.raises(ConfigError, match="--val-every"):
        replace(cfg, val_every=0).check()


def test_hard_slices_draw_the_basal_and_apical_slices_with_their_weight(tiny_cache: Path, tmp_path: Path) -> None:
    """--hard-slices W: an epoch draws as many samples as there are, with replacement, the
    slices in the outer fifth of their stack W times as likely as the others; 1 keeps the
    permutation; the draw depends on (seed, epoch) only."""
    uniform = Trainer(tiny_cfg(tiny_cache, tmp_path / "u"))
    uniform.setup()
    n = len(uniform.data.samples)
    assert sorted(uniform.epoch_order(0).tolist()) == list(range(n))
    trainer = Trainer(tiny_cfg(tiny_cache, tmp_path / "h", hard_slices=4.0))
    trainer.setup()
    stacks = np.asarray(trainer.data.samples)
    position = trainer.data.positions.numpy()[stacks[:, stacks.shape[1] // 2]]
    hard = (position <= 0.2) | (position >= 0.8)
    assert 0 < hard.sum() < n
    draws = np.concatenate([trainer.epoch_order(e) for e in range(300)])
    assert len(trainer.epoch_order(0)) == n and np.array_equal(trainer.epoch_order(5), trainer.epoch_order(5))
    expected = 4.0 * hard.sum() / (4.0 * hard.sum() + (~hard).sum())
    assert abs(hard[draws].mean() - expected) < 0.02
    with pytest.raises(ConfigError, match="--hard-slices"):
        tiny_cfg(tiny_cache, tmp_path / "bad", hard_slices=0.0).check()
