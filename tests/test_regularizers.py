"""The other papers' training methods: Li et al.'s MapDice and LR-Net, SRSCN (exp-log loss,
shape reconstruction, slice position) and its comparisons ACNN and GAN.

Analytic values of the losses on hand-made label maps, the networks' shapes, a few
optimisation steps of each term, and each method's training loop on the tiny phantom cache
(log columns, export without the auxiliary networks, resume, the CLI and the DDP code path).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cardioseg import losses
from cardioseg.cli import app
from cardioseg.models import build_model
from cardioseg.models.regularizers import Discriminator, LRNet, PositionHead, ShapeAutoencoder
from cardioseg.preprocess import distance_maps
from cardioseg.train import (
    DEFAULT_REG_WEIGHTS,
    REG_COLUMNS,
    TrainConfig,
    _regularizer_terms,
    _train_module,
    pretrain_shape_autoencoder,
    segmentation_loss,
    train,
)
from tests import test_train

KW = {"in_channels": 1, "num_classes": 4, "base": 4, "depth": 4}


def _cfg(cache: Path, out: Path, **kw) -> TrainConfig:
    """test_train's tiny run, with a 2-epoch shape autoencoder."""
    return test_train._cfg(cache, out, **{"shape_epochs": 2, **kw})


tiny_cache = test_train.tiny_cache  # the same module-scoped phantom cache


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _labels() -> torch.Tensor:
    """(2, 16, 16): an RV strip, a myocardial square ring around an LV square; slice 2 shifted."""
    y = torch.zeros(2, 16, 16, dtype=torch.long)
    y[:, 1:3, 2:14] = 1
    y[:, 5:13, 4:12] = 2
    y[:, 7:11, 6:10] = 3
    y[1] = torch.roll(y[1], 1, dims=1)
    return y


def _distmaps(y: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.stack([distance_maps(s.numpy(), (1, 2, 3)) for s in y]))


def _logits(probs: torch.Tensor) -> torch.Tensor:
    return torch.log(probs.clamp_min(1e-30))


# ---------------------------------------------------------------------------- losses


def test_map_dice_perfect_disjoint_and_known_value() -> None:
    y = _labels()
    dm = _distmaps(y)
    right = losses.onehot(y, 4) * 30
    assert float(losses.map_dice_loss(right, y, dm)) < 1e-6
    wrong = torch.roll(right, 1, dims=1)  # every pixel gets the next class: no overlap at all
    disjoint = float(losses.map_dice_loss(wrong, y, dm))
    assert 0.9 < disjoint < 1
    # uniform probabilities: MapDice_c = (2 * 0.25 * sum_g w + 1) / (sum w * 0.25 + sum_g w + 1), w = 1 + 1/max(|d|, 1)
    w = 1 + 1 / np.maximum(np.abs(dm.numpy()), 1)
    g = losses.onehot(y, 4)[:, 1:].numpy()
    per_class = [(2 * 0.25 * (w[:, c] * g[:, c]).sum() + 1) / (0.25 * w[:, c].sum() + (w[:, c] * g[:, c]).sum() + 1)
                 for c in range(3)]  # fmt: skip
    value = float(losses.map_dice_loss(torch.zeros(2, 4, 16, 16), y, dm))
    assert value == pytest.approx(1 - np.mean(per_class), rel=1e-5)
    assert float(segmentation_loss("mapdice", torch.zeros(2, 4, 16, 16), y, distmaps=dm)) == pytest.approx(value)


def test_map_dice_penalises_boundary_errors_more_than_distant_ones() -> None:
    """Two predictions with the same number of false-positive RV pixels in the background: next
    to the RV, or far from it. Plain soft Dice cannot tell them apart; MapDice charges the
    boundary error more."""
    y = _labels()
    dm = _distmaps(y)
    near, far = y.clone(), y.clone()
    near[0, 3, 4:8] = near[1, 4, 4:8] = 1  # the background row just below the RV strip
    far[:, 15, 4:8] = 1  # background, 11+ px from the RV
    assert (y[near != y] == 0).all() and (y[far != y] == 0).all()
    to_logits = lambda lab: losses.onehot(lab, 4) * 30
    l_near, l_far = (float(losses.map_dice_loss(to_logits(p), y, dm)) for p in (near, far))
    d_near, d_far = (float(segmentation_loss("dice", to_logits(p), y)) for p in (near, far))
    assert d_near == pytest.approx(d_far, abs=1e-6)
    assert l_near > l_far > 0


def test_norm_inverse_distance_and_lrnet_loss() -> None:
    d = torch.tensor([[-250.0, -3.0, -1.0, 1.0, 2.0, 0.5]])
    np.testing.assert_allclose(losses.norm_inverse_distance(d).numpy(), [[1 / 250, 1 / 3, 1, 1, 0.5, 1]], rtol=1e-6)
    target = losses.norm_inverse_distance(d)
    assert float(losses.lrnet_loss(target, d)) == 0
    # smooth L1 with beta 1 is 0.5 x**2 for |x| < 1
    assert float(losses.lrnet_loss(target + 0.2, d)) == pytest.approx(0.5 * 0.04, rel=1e-5)


def test_exp_log_loss_perfect_wrong_and_known_value() -> None:
    y = _labels()
    right = losses.onehot(y, 4) * 40
    assert float(losses.exp_log_loss(right, y)) < 1e-3  # (1e-12) ** 0.3 floors
    assert float(losses.exp_log_loss(torch.roll(right, 1, dims=1), y)) > 1.0
    # uniform probabilities 1/4: -ln p = ln 4 everywhere; Dice_i = (2 n_i / 4 + 1) / (N / 4 + n_i + 1)
    n_pix = y.numel()
    counts = np.bincount(y.numpy().ravel(), minlength=4)
    dice = (2 * counts / 4 + 1) / (n_pix / 4 + counts + 1)
    weights = losses.label_frequency_weights(y.numpy(), 4)
    np.testing.assert_allclose(weights, np.sqrt(n_pix / counts))
    expected_dice = np.mean((-np.log(dice)) ** 0.3)
    expected_cross = np.mean(weights[y.numpy()]) * math.log(4) ** 0.3
    value = float(losses.exp_log_loss(torch.zeros(2, 4, 16, 16), y, torch.from_numpy(weights)))
    assert value == pytest.approx(0.8 * expected_dice + 0.2 * expected_cross, rel=1e-5)
    unweighted = float(segmentation_loss("explog", torch.zeros(2, 4, 16, 16), y))
    assert unweighted == pytest.approx(0.8 * expected_dice + 0.2 * math.log(4) ** 0.3, rel=1e-5)


def test_exp_log_loss_has_finite_gradients_at_a_perfect_prediction() -> None:
    y = _labels()
    logits = (losses.onehot(y, 4) * 200).requires_grad_(True)  # softmax saturates: -ln p is exactly 0
    losses.exp_log_loss(logits, y).backward()
    assert torch.isfinite(logits.grad).all()


def test_shape_position_code_and_adversarial_terms() -> None:
    a, b = torch.zeros(2, 4, 3, 3), torch.zeros(2, 4, 3, 3)
    b[0, 1, 0, 0], b[1, 2, 1, 1], b[1, 3, 2, 2] = 1.0, 2.0, 1.0
    # Eq. 3: squared Frobenius norms per slice (1 and 4 + 1), averaged over the batch
    assert float(losses.shape_reconstruction_loss(a, b)) == pytest.approx((1 + 5) / 2)
    assert float(losses.code_distance_loss(a, b)) == pytest.approx(3.0)
    assert float(losses.position_loss(torch.tensor([0.5, 1.0]), torch.tensor([0.0, 1.0]))) == pytest.approx(0.125)
    zero = torch.zeros(3)
    assert float(losses.discriminator_loss(zero, zero)) == pytest.approx(math.log(2))
    assert float(losses.generator_loss(zero)) == pytest.approx(math.log(2))
    assert float(losses.discriminator_loss(torch.full((3,), 20.0), torch.full((3,), -20.0))) < 1e-8


def test_unknown_regularizer_and_mapdice_without_maps() -> None:
    from cardioseg.errors import ConfigError

    with pytest.raises(ConfigError, match="regularizer 'vae'.*lrnet, srnn, scn, srscn, acnn, gan"):
        TrainConfig(cache="c", out="o", regularizer="vae").check()
    with pytest.raises(ConfigError, match="needs the distance maps"):
        segmentation_loss("mapdice", torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


def test_config_names_and_default_weights() -> None:
    cfg = TrainConfig(cache="c", out="o", regularizer="srscn", fold=1)
    assert cfg.weights_name() == "srscn-unet2d-acdc-fold1"
    assert cfg.resolved_reg_weight() == 5e-4 == DEFAULT_REG_WEIGHTS["srnn"]
    assert TrainConfig(cache="c", out="o", regularizer="gan", reg_weight=0.3).resolved_reg_weight() == 0.3
    assert (
        TrainConfig(cache="c", out="o", dmr=True, regularizer="lrnet").weights_name() == "dmr-lrnet-unet2d-acdc-fold0"
    )
    assert TrainConfig(cache="c", out="o", regularizer="lrnet").needs_distmaps()
    assert TrainConfig(cache="c", out="o", loss="mapdice").needs_distmaps()
    assert not TrainConfig(cache="c", out="o", regularizer="srscn", loss="explog").needs_distmaps()


# ---------------------------------------------------------------------------- networks


def test_regulariser_network_shapes() -> None:
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(2, 4, 32, 48), dim=1)
    with torch.no_grad():
        maps = LRNet(4, width=4)(probs)
    assert maps.shape == (2, 3, 32, 48) and float(maps.min()) > 0 and float(maps.max()) < 1
    ae = ShapeAutoencoder(4, base=4)
    assert ae.encode(probs).shape == (2, 8, 2, 3) and ae(probs).shape == (2, 4, 32, 48)
    pos = PositionHead(64)(torch.randn(2, 64, 2, 3))
    assert pos.shape == (2,) and ((pos > 0) & (pos < 1)).all()
    assert Discriminator(4, base=4)(probs).shape == (2,)


def _steps(loss_fn, params, n: int = 15, lr: float = 1e-2) -> tuple[float, float]:
    opt = torch.optim.Adam(params, lr=lr)
    first = last = float("nan")
    for i in range(n):
        loss = loss_fn()
        if i == 0:
            first = float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
        last = float(loss.detach())
    return first, last


@pytest.mark.parametrize("regularizer", ["lrnet", "scn", "srnn", "acnn", "gan"])
def test_each_term_decreases_under_optimisation(regularizer: str, tmp_path: Path, tiny_cache: Path) -> None:
    """A few Adam steps on one fixed batch of the phantom cache lower the method's own term:
    the LR-Net's maps and the position head train, and the segmentation network moves its
    output towards the reference's shape (srnn, acnn) or fools a fixed discriminator (gan)."""
    from cardioseg.dataset import load_cache

    cache = load_cache(tiny_cache)
    idx = np.arange(0, 40, 5)
    x = torch.from_numpy(np.asarray(cache.images[idx], dtype=np.float32))[:, None, 16:48, 16:48].contiguous()
    y = torch.from_numpy(np.asarray(cache.labels[idx], dtype=np.int64))[:, 16:48, 16:48].contiguous()
    dist = torch.from_numpy(np.asarray(cache.distmaps[idx], dtype=np.float32))[:, :, 16:48, 16:48].contiguous()
    position = torch.tensor([float(cache.index[i]["position"]) for i in idx])
    cfg = _cfg(tiny_cache, tmp_path, regularizer=regularizer, shape_epochs=20)
    torch.manual_seed(0)
    module = _train_module(build_model("unet2d", **KW), 1.0, 1.0, regularizer, base=4)
    disc = Discriminator(4, base=4) if regularizer == "gan" else None
    if module.shape_ae is not None:
        labels = torch.from_numpy(np.array(cache.labels))
        images = torch.from_numpy(np.array(cache.images, dtype=np.float32))[:, None]
        from cardioseg.train import _crop_centres

        path = pretrain_shape_autoencoder(
            cfg, images, labels, _crop_centres(labels.numpy()), "cpu", False, lambda m: None
        )
        module.shape_ae.load_state_dict(torch.load(path, weights_only=True)["model"])
        assert not any(p.requires_grad for p in module.shape_ae.parameters())
        frozen = {k: v.clone() for k, v in module.shape_ae.state_dict().items()}
    key = {"lrnet": "lrnet_loss", "scn": "position_loss", "srnn": "shape_loss", "acnn": "shape_loss", "gan": "adv_loss"}

    def term() -> torch.Tensor:
        return _regularizer_terms(cfg, module, disc, module(x), y, dist, position)[key[regularizer]]

    if disc is not None:  # first the discriminator learns to tell references from segmentations
        ref, probs = losses.onehot(y, 4), torch.softmax(module(x)[0].detach(), dim=1)
        d_first, d_last = _steps(lambda: losses.discriminator_loss(disc(ref), disc(probs)), list(disc.parameters()))
        assert d_last < 0.9 * d_first
        disc.zero_grad(set_to_none=True)
        d_state = {k: v.clone() for k, v in disc.state_dict().items()}
    params = [p for p in module.parameters() if p.requires_grad]
    first, last = _steps(term, params)
    assert math.isfinite(first) and math.isfinite(last) and last < 0.9 * first
    if module.shape_ae is not None:  # the autoencoder stays as pre-trained
        for k, v in module.shape_ae.state_dict().items():
            torch.testing.assert_close(v, frozen[k], rtol=0, atol=0)
    if disc is not None:  # the generator's term leaves the discriminator alone
        assert all(p.grad is None for p in disc.parameters())
        for k, v in disc.state_dict().items():
            torch.testing.assert_close(v, d_state[k], rtol=0, atol=0)


def test_shape_autoencoder_pretraining_learns_and_resumes(tiny_cache: Path, tmp_path: Path) -> None:
    from cardioseg.dataset import load_cache
    from cardioseg.train import _crop_centres

    cache = load_cache(tiny_cache)
    labels = torch.from_numpy(np.array(cache.labels))
    images = torch.from_numpy(np.array(cache.images, dtype=np.float32))[:, None]
    centres = _crop_centres(labels.numpy())
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    pretrain_shape_autoencoder(
        _cfg(tiny_cache, a, shape_epochs=20), images, labels, centres, "cpu", False, lambda m: None
    )
    rows = _rows(a / "shape_ae_log.csv")
    assert len(rows) == 20 and float(rows[-1]["loss"]) < 0.9 * float(rows[0]["loss"])
    # interrupted after 12 epochs, then resumed: the same autoencoder as in one go
    pretrain_shape_autoencoder(
        _cfg(tiny_cache, b, shape_epochs=12), images, labels, centres, "cpu", False, lambda m: None
    )
    pretrain_shape_autoencoder(
        _cfg(tiny_cache, b, shape_epochs=20), images, labels, centres, "cpu", True, lambda m: None
    )
    assert [r["loss"] for r in _rows(b / "shape_ae_log.csv")] == [r["loss"] for r in rows]
    sa, sb = (torch.load(p / "shape_ae.pt", weights_only=True) for p in (a, b))
    assert sa["epoch"] == sb["epoch"] == 19
    for k, v in sa["model"].items():
        torch.testing.assert_close(sb["model"][k], v)


# ---------------------------------------------------------------------------- the loop


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
    path = train(_cfg(tiny_cache, out, epochs=2, shape_epochs=5, reg_weight=1.0, **kw), log=lambda m: None)
    rows = _rows(out / "log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for r in rows:
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
        train(_cfg(tiny_cache, one, epochs=2, regularizer=regularizer), log=lambda m: None)
        train(_cfg(tiny_cache, two, epochs=1, regularizer=regularizer), log=lambda m: None)
        messages: list[str] = []
        train(_cfg(tiny_cache, two, epochs=2, regularizer=regularizer), resume=True, log=messages.append)
        assert any("resumed at epoch 1" in m for m in messages)
        assert not any("shape autoencoder epoch" in m for m in messages)
        assert len(_rows(two / "log.csv")) == 2
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
            assert len(_rows(two / "shape_ae_log.csv")) == 2  # pre-trained once


def test_resume_of_a_run_made_before_the_regularizers(tiny_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(_cfg(tiny_cache, out, shape_epochs=20), log=lambda m: None)  # the new settings at their defaults
    saved = json.loads((out / "config.json").read_text())
    for key in ("regularizer", "reg_weight", "position_weight", "shape_epochs"):
        del saved[key]
    (out / "config.json").write_text(json.dumps(saved))
    old_columns = ["epoch", "loss", "seg_loss", "dm_loss", "sigma_seg", "sigma_dm", "lr", "seconds", "val_dice_mean",
                   "val_json"]  # fmt: skip
    with open(out / "log.csv", newline="") as f:  # the log as the older version wrote it
        rows = list(csv.DictReader(f))
    with open(out / "log.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, old_columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    train(_cfg(tiny_cache, out, epochs=2, shape_epochs=20), resume=True, log=lambda m: None)
    with open(out / "log.csv", newline="") as f:
        lines = list(csv.reader(f))
    assert lines[0] == old_columns and [len(line) for line in lines[1:]] == [len(old_columns)] * 2
    assert [r["epoch"] for r in _rows(out / "log.csv")] == ["1", "2"]


def test_ddp_code_path_with_gan_and_srscn(tiny_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop told world size 2 in a one-rank gloo group: DDP wrappers for the module and the
    discriminator, the barrier after pre-training."""
    import torch.distributed as dist

    import cardioseg.train as T

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    monkeypatch.setattr(T, "_distributed", lambda: (0, 2))
    try:
        for regularizer in ("gan", "srscn"):
            path = train(_cfg(tiny_cache, tmp_path / regularizer, regularizer=regularizer), log=lambda m: None)
            assert path.is_file()
    finally:
        dist.destroy_process_group()


def test_cli_train_with_a_regularizer(tiny_cache: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["train", str(tiny_cache), "-o", str(out), "--epochs", "1", "--batch-size", "4", "--crop-px", "32",
            "--base-width", "4", "-q", "--regularizer", "srscn", "--loss", "explog", "--shape-epochs", "1",
            "--reg-weight", "0.001", "--position-weight", "0.5"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "srscn-unet2d-acdc-fold0.pt").is_file() and (out / "shape_ae.pt").is_file()
    saved = json.loads((out / "config.json").read_text())
    assert (saved["regularizer"], saved["loss"], saved["shape_epochs"]) == ("srscn", "explog", 1)
    assert (saved["reg_weight"], saved["position_weight"]) == (0.001, 0.5)
    result = runner.invoke(app, [*args[:-2], "--regularizer", "vae"])
    assert result.exit_code == 1 and "unknown regularizer 'vae'" in result.output
    help_text = runner.invoke(app, ["train", "--help"], terminal_width=200).output
    for word in ("--regularizer", "lrnet", "srscn", "acnn", "gan", "mapdice", "explog", "--shape-epochs"):
        assert word in help_text
