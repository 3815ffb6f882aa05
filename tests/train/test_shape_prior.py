"""The regularisers' side of training: their networks' shapes, each term lowering under a few
optimisation steps on a fixed batch, and the shape autoencoder's pre-training (learns, resumes)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from train.helpers import KW, rows, tiny_cfg

from cardioseg.models import build_model
from cardioseg.models.regularizers import Discriminator, LRNet, PositionHead, ShapeAutoencoder
from cardioseg.train import losses
from cardioseg.train.augment import crop_centres
from cardioseg.train.model import TrainModule
from cardioseg.train.shape_prior import pretrain_shape_autoencoder, regularizer_terms


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
    cfg = tiny_cfg(tiny_cache, tmp_path, regularizer=regularizer, shape_epochs=20)
    torch.manual_seed(0)
    module = TrainModule(build_model("unet2d", **KW), 1.0, 1.0, regularizer, base=4)
    disc = Discriminator(4, base=4) if regularizer == "gan" else None
    if module.shape_ae is not None:
        labels = torch.from_numpy(np.array(cache.labels))
        images = torch.from_numpy(np.array(cache.images, dtype=np.float32))[:, None]
        path = pretrain_shape_autoencoder(
            cfg, images, labels, crop_centres(labels.numpy()), "cpu", False
        )
        module.shape_ae.load_state_dict(torch.load(path, weights_only=True)["model"])
        assert not any(p.requires_grad for p in module.shape_ae.parameters())
        frozen = {k: v.clone() for k, v in module.shape_ae.state_dict().items()}
    key = {"lrnet": "lrnet_loss", "scn": "position_loss", "srnn": "shape_loss", "acnn": "shape_loss", "gan": "adv_loss"}

    def term() -> torch.Tensor:
        return regularizer_terms(cfg, module, disc, module(x), y, dist, position)[key[regularizer]]

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

    cache = load_cache(tiny_cache)
    labels = torch.from_numpy(np.array(cache.labels))
    images = torch.from_numpy(np.array(cache.images, dtype=np.float32))[:, None]
    centres = crop_centres(labels.numpy())
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    pretrain_shape_autoencoder(tiny_cfg(tiny_cache, a, shape_epochs=20), images, labels, centres, "cpu", False)
    one_go = rows(a / "shape_ae_log.csv")
    assert len(one_go) == 20 and float(one_go[-1]["loss"]) < 0.9 * float(one_go[0]["loss"])
    # interrupted after 12 epochs, then resumed: the same autoencoder as in one go
    pretrain_shape_autoencoder(tiny_cfg(tiny_cache, b, shape_epochs=12), images, labels, centres, "cpu", False)
    pretrain_shape_autoencoder(tiny_cfg(tiny_cache, b, shape_epochs=20), images, labels, centres, "cpu", True)
    assert [r["loss"] for r in rows(b / "shape_ae_log.csv")] == [r["loss"] for r in one_go]
    sa, sb = (torch.load(p / "shape_ae.pt", weights_only=True) for p in (a, b))
    assert sa["epoch"] == sb["epoch"] == 19
    for k, v in sa["model"].items():
        torch.testing.assert_close(sb["model"][k], v)
