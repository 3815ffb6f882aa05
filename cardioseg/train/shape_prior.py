"""The shape- and position-aware regularisers' side of training (none of it is exported):
SRSCN's pre-training of the shape autoencoder on the training fold's label maps, and the
regularisers' loss terms of one batch (``REGULARIZERS`` in ``cardioseg.train.config``)."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cardioseg.models.regularizers import ShapeAutoencoder
from cardioseg.train import losses
from cardioseg.train.augment import augment_batch, jitter_centres
from cardioseg.train.config import N_CLASSES, POSITION_REGULARIZERS, TrainConfig
from cardioseg.train.model import TrainModule, save_atomic

__all__ = ["pretrain_shape_autoencoder", "regularizer_terms"]


def pretrain_shape_autoencoder(
    cfg: TrainConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
    centres: np.ndarray,
    device: str,
    resume: bool,
    log: Callable[[str], None] | None = None,
) -> Path:
    """SRSCN's SRNN pre-training: a ``ShapeAutoencoder`` learns to reconstruct the training
    fold's label maps (one-hot in, cross-entropy on the reconstruction), on randomly transformed
    crops as in the main loop, with Adam (lr 1e-3) for ``cfg.shape_epochs`` epochs.

    ``images`` (N, 1, H, W) and ``labels`` (N, H, W) are the training slices, ``centres`` their
    ``crop_centres``. Saved after every epoch in ``OUT/shape_ae.pt`` (with its optimiser, so
    ``resume`` continues an interrupted pre-training; a finished one is returned as it is) and
    logged in ``OUT/shape_ae_log.csv`` (and to ``log``). Returns the path of the saved autoencoder.
    """
    out = Path(cfg.out)
    path, log_path = out / "shape_ae.pt", out / "shape_ae_log.csv"
    torch.manual_seed(cfg.seed + 1)
    ae = ShapeAutoencoder(N_CLASSES, base=cfg.base_width).to(device)
    opt = torch.optim.Adam(ae.parameters(), lr=1e-3)
    start = 0
    if resume and path.is_file():
        state = torch.load(path, map_location=device, weights_only=True)
        ae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = int(state["epoch"]) + 1
    if start >= cfg.shape_epochs:
        return path
    if start == 0:
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerow(["epoch", "loss", "seconds"])
    batch, h = cfg.batch_size, labels.shape[-1]
    steps = max(1, len(labels) // batch)
    device_type = device.split(":")[0]
    for epoch in range(start, cfg.shape_epochs):
        rng = np.random.default_rng([cfg.seed, epoch, 7])
        torch.manual_seed(cfg.seed * 100003 + epoch * 101 + 7)
        order = rng.permutation(len(labels))
        t0, total = time.time(), 0.0
        for step in range(steps):
            idx = order[step * batch : (step + 1) * batch]
            c = jitter_centres(centres[idx], h, cfg.crop_px, rng)  # empty slices anywhere, the rest near the heart
            y = augment_batch(images[idx], labels[idx], c, cfg.crop_px, rng)[1].to(device)
            with torch.autocast(device_type, dtype=torch.bfloat16):
                recon = ae(losses.onehot(y, N_CLASSES))
            loss = F.cross_entropy(recon.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        save_atomic({"model": ae.state_dict(), "opt": opt.state_dict(), "epoch": epoch}, path)
        with open(log_path, "a", newline="") as f:
            csv.writer(f).writerow([epoch + 1, f"{total / steps:.4f}", f"{time.time() - t0:.1f}"])
        if log is not None:
            log(f"shape autoencoder epoch {epoch + 1}/{cfg.shape_epochs} reconstruction loss {total / steps:.4f}")
    return path


def regularizer_terms(
    cfg: TrainConfig,
    module: TrainModule,
    disc: Any,
    outputs: tuple[Any, ...],
    y: torch.Tensor,
    distmaps: torch.Tensor | None,
    position: torch.Tensor,
) -> dict[str, Any]:
    """The regulariser's (unweighted) loss terms of one batch, by log column. ``outputs`` are
    the train module's (logits, DMR maps, LR-Net maps, slice positions), ``y`` the reference
    labels, ``distmaps`` their distance maps (or None), ``position`` the slices' positions,
    ``disc`` the GAN's discriminator (or None)."""
    logits, _, lr_maps, pos_pred = outputs
    terms: dict[str, Any] = {}
    reg = cfg.regularizer
    if reg == "lrnet":
        terms["lrnet_loss"] = losses.lrnet_loss(lr_maps, distmaps)
    if reg in POSITION_REGULARIZERS:
        terms["position_loss"] = losses.position_loss(pos_pred, position)
    if reg == "none" or reg == "scn" or reg == "lrnet":
        return terms
    probs, ref = torch.softmax(logits.float(), dim=1), losses.onehot(y, logits.shape[1])
    if reg == "gan":
        disc.requires_grad_(False)  # the generator's term: the discriminator is fixed
        terms["adv_loss"] = losses.generator_loss(disc(probs))
        disc.requires_grad_(True)
        return terms
    shape_ae = module.shape_ae
    assert shape_ae is not None  # srnn, srscn, acnn: TrainModule made one
    if reg == "acnn":
        with torch.no_grad():
            code_ref = shape_ae.encode(ref)
        terms["shape_loss"] = losses.code_distance_loss(shape_ae.encode(probs), code_ref)
    else:  # srnn, srscn: Eq. 3 on the reconstructions' probabilities
        with torch.no_grad():
            recon_ref = torch.softmax(shape_ae(ref), dim=1)
        terms["shape_loss"] = losses.shape_reconstruction_loss(torch.softmax(shape_ae(probs), dim=1), recon_ref)
    return terms
