"""Training: the DMR paper's networks, losses and optimisation, cross-validated by folds.

The recipe follows Dangi et al. (sections II-B, II-C, II-E, II-F): 2D slices from the
preprocessed cache (``cardioseg preprocess``), random similarity transforms (scale 0.8-1.2,
rotation 0-360 deg, translation up to 1/8 of the size) applied to image, labels and distance
maps alike; U-Net / SegNet / U-SegNet with an optional distance-map regulariser; cross-entropy
(or Dice, log-Dice, Dice + CE) plus the mean absolute difference of the distance maps,
weighted by learned uncertainties (Eq. 7, s = log sigma) or fixed weights; Kaiming-uniform
init; RMSprop, lr 1e-4 single-task / 5e-4 multi-task, x0.99 per epoch; batch 15; the
checkpoint with the best validation Dice is kept. bf16 autocast on CPU and CUDA.

The regulariser regresses the maps in units of ``dm_unit_px`` (default T = 250 px, so values
lie in [-1, ~0.3]): an output layer cannot reach -250 at the optimisers' step sizes, while
the learned weighting of Eq. 7 is indifferent to the unit at its optimum. The log-sigmas learn
at their own rate (``sigma_lr``) so that the weighting settles within a few epochs.

One "epoch" is one pass over the training slices, each randomly transformed (the paper adds
four transformed copies of each slice instead). Runs resume from ``OUT/last.pt``; under
``torchrun`` the loop trains with DistributedDataParallel (gloo on CPU, nccl on GPU).

Other papers' methods, for comparison (losses in ``cardioseg.losses``, networks in
``cardioseg.models.regularizers``; none of their networks is exported):

- ``loss="mapdice"``: Li et al.'s shape-aware MapDice; ``loss="explog"``: the exponential-
  logarithmic loss of SRSCN's Eq. 1.
- ``regularizer``: ``lrnet`` (Li et al.'s LR-Net, trained in tandem: L_seg + alpha smooth-L1),
  ``srnn`` / ``scn`` / ``srscn`` (SRSCN Eqs. 2, 5, 6: shape reconstruction by a pre-trained,
  frozen autoencoder of label maps; slice position regressed from the bottleneck; both),
  ``acnn`` (L2 between the autoencoder's codes of prediction and reference) and ``gan`` (an
  adversarial term from a discriminator trained to tell references from segmentations).
  The shape autoencoder is pre-trained at the start of the run on the training fold's labels
  and saved in ``OUT/shape_ae.pt`` (resumable, like the run).

Qure.ai's 2D-3D FCNs (Patravali et al., STACOM 2017; ``cardioseg.models.inputs``):

- ``context_slices=N`` (odd): a 2D network takes the N neighbouring slices of the same frame
  (same patient and phase, in slice order, edge slices replicated) as input channels and
  predicts the centre slice. The stacks are gathered per batch from the cache's index.
- ``arch="unet3d"``: their 3D U-Net (1x2x2 pooling) on whole stacks of one frame;
  ``batch_size`` then counts frames, an epoch is one pass over the training frames, and the
  frames of a batch are padded in z to the longest with zero slices that the loss ignores.
- ``loss="wce"`` (weighted cross-entropy), ``"qure_logdice"`` (their weighted log-Dice, as
  printed) and ``"qure_hybrid"`` (the sum of both), with the label-frequency class weights
  of ``cardioseg.losses.label_frequency_weights`` (the poster does not give its weights).

A 3D network's outputs are flattened to (frames x slices) 2D slices for the losses, so every
loss sums over the whole batch of volumes exactly as it sums over a batch of slices.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from cardioseg.dataset import Cache, Patient, acdc_patients, load_cache, stratified_folds
from cardioseg.errors import ConfigError
from cardioseg.labels import label_map_from_dict
from cardioseg.losses import discriminator_loss, label_frequency_weights, onehot
from cardioseg.models.inputs import InputSpec
from cardioseg.preprocess import PreprocessConfig

__all__ = [
    "ARCHES",
    "LOSSES",
    "Patient",
    "TrainConfig",
    "acdc_patients",
    "augment_batch",
    "dice_ce_loss",
    "export_run",
    "segmentation_loss",
    "stratified_folds",
    "train",
]

ACDC_LICENSE = (
    "Trained on ACDC data (CC BY-NC-SA 4.0): non-commercial use only, share-alike. Cite "
    "O. Bernard et al., IEEE TMI 37(11):2514-2525, 2018, doi:10.1109/TMI.2018.2837502."
)
ARCHES = ("unet2d", "segnet2d", "usegnet2d", "unet3d")
ARCHES_3D = ("unet3d",)
QURE_LOSSES = ("wce", "qure_logdice", "qure_hybrid")  # Patravali et al.; their name goes in the weights' name
LOSSES = ("ce", "dice", "logdice", "dice_ce", "mapdice", "explog", *QURE_LOSSES)
WEIGHTED_LOSSES = ("explog", *QURE_LOSSES)  # take the label-frequency class weights
REGULARIZERS = ("none", "lrnet", "srnn", "scn", "srscn", "acnn", "gan")
# reg_weight = 0 means these: LR-Net alpha; SRSCN's lambda_SR (its paper's 5e-4); ACNN's
# lambda (Oktay et al.'s 0.01); the adversarial term's weight (no value in the paper)
DEFAULT_REG_WEIGHTS = {"none": 0.0, "lrnet": 1.0, "srnn": 5e-4, "scn": 0.0, "srscn": 5e-4, "acnn": 0.01, "gan": 0.01}
SHAPE_AE_REGULARIZERS = ("srnn", "srscn", "acnn")
POSITION_REGULARIZERS = ("scn", "srscn")
WEIGHTINGS = ("uncertainty", "fixed")
REG_COLUMNS = ("lrnet_loss", "shape_loss", "position_loss", "adv_loss", "disc_loss")
LOSS_COLUMNS = ("loss", "seg_loss", "dm_loss", *REG_COLUMNS)
LOG_COLUMNS = ("epoch", *LOSS_COLUMNS, "sigma_seg", "sigma_dm", "lr", "seconds", "val_dice_mean", "val_json")
OPTIMIZERS = ("rmsprop", "adamw")


@dataclass(frozen=True)
class TrainConfig:
    """One training run (saved beside its checkpoints and inside the exported weights)."""

    cache: str  # cache folder from ``cardioseg preprocess``
    out: str  # run folder: checkpoints, log.csv, config.json, the exported weights
    arch: str = "unet2d"  # one of ARCHES
    context_slices: int = 1  # 2D networks: neighbouring slices as input channels (odd; Qure.ai)
    dmr: bool = False  # add the distance-map regulariser (training only)
    base_width: int = 16  # channels at full resolution (x2 per level, 4 levels)
    loss: str = "ce"  # segmentation loss, one of LOSSES
    weighting: str = "uncertainty"  # with dmr: learned (Eq. 7) or "fixed" weights
    seg_weight: float = 1.0  # fixed weights (and the uncertainty weights' initial 1/sigma)
    dm_weight: float = 1.0
    sigma_lr: float = 1e-2  # learning rate of the log-sigmas (settle in a few epochs)
    dm_unit_px: float = 250.0  # distance maps are regressed in units of this many pixels
    optimizer: str = "rmsprop"  # one of OPTIMIZERS
    lr: float = 0.0  # 0: the paper's (RMSprop 1e-4 single-task, 5e-4 with dmr; AdamW 1e-3)
    lr_decay: float = 0.99  # per epoch (RMSprop); AdamW uses cosine decay to 1 %
    weight_decay: float = 0.0
    epochs: int = 100
    batch_size: int = 15  # slices; frames (volumes) for a 3D network
    crop_px: int = 160  # training crop of the cache's fov (random position near the heart)
    fold: int = 0  # the held-out validation fold
    n_folds: int = 5
    seed: int = 0
    val_every: int = 1
    threads: int = 0  # torch threads; 0: torch's default
    name: str = ""  # weights name; "" -> derived, e.g. "dmr-unet2d-acdc-fold0"
    regularizer: str = "none"  # one of REGULARIZERS (training only, never exported)
    reg_weight: float = 0.0  # weight of the regulariser's term; 0: DEFAULT_REG_WEIGHTS
    position_weight: float = 0.1  # scn/srscn: lambda_SC of the slice-position loss (positions in [0, 1])
    shape_epochs: int = 20  # srnn/srscn/acnn: pre-training epochs of the shape autoencoder

    def resolved_lr(self) -> float:
        if self.lr > 0:
            return self.lr
        if self.optimizer == "adamw":
            return 1e-3
        return 5e-4 if self.dmr else 1e-4

    def resolved_reg_weight(self) -> float:
        return self.reg_weight if self.reg_weight > 0 else DEFAULT_REG_WEIGHTS[self.regularizer]

    def needs_distmaps(self) -> bool:
        return self.dmr or self.loss == "mapdice" or self.regularizer == "lrnet"

    def input_spec(self) -> InputSpec:
        """What the network takes (recorded in the exported weights)."""
        return InputSpec(dims=3 if self.arch in ARCHES_3D else 2, context_slices=self.context_slices)

    def weights_name(self) -> str:
        """E.g. ``dmr-unet2d-acdc-fold0``, ``unet2d-ctx3-qure_hybrid-acdc-fold0``, ``unet3d-wce-acdc-fold1``."""
        reg = f"{self.regularizer}-" if self.regularizer != "none" else ""
        ctx = f"-ctx{self.context_slices}" if self.context_slices > 1 else ""
        loss = f"-{self.loss}" if self.loss in QURE_LOSSES else ""
        return self.name or f"{'dmr-' if self.dmr else ''}{reg}{self.arch}{ctx}{loss}-acdc-fold{self.fold}"

    def check(self) -> None:
        for value, allowed, what in (
            (self.arch, ARCHES, "architecture"), (self.loss, LOSSES, "loss"),
            (self.weighting, WEIGHTINGS, "weighting"), (self.optimizer, OPTIMIZERS, "optimizer"),
            (self.regularizer, REGULARIZERS, "regularizer"),
        ):  # fmt: skip
            if value not in allowed:
                raise ConfigError(f"unknown {what} {value!r}; choose one of: {', '.join(allowed)}")
        if not 0 <= self.fold < self.n_folds:
            raise ConfigError(f"--fold must be in 0..{self.n_folds - 1}, got {self.fold}")
        if self.crop_px % 16:
            raise ConfigError(f"--crop-px must be a multiple of 16, got {self.crop_px}")
        if self.shape_epochs < 1:
            raise ConfigError(f"--shape-epochs must be at least 1, got {self.shape_epochs}")
        self.input_spec()  # --context-slices: odd, and 1 for a 3D network
        if self.arch in ARCHES_3D and (self.dmr or self.regularizer != "none"):
            raise ConfigError(f"{self.arch} trains without --dmr and --regularizer (their networks are 2D)")


def architecture(cfg: TrainConfig, dmr: bool | None = None) -> dict[str, Any]:
    """Registry name and constructor arguments (``dmr`` defaults to the config's)."""
    channels = cfg.input_spec().in_channels
    kwargs: dict[str, Any] = {"in_channels": channels, "num_classes": 4, "base": cfg.base_width, "depth": 4}
    if dmr if dmr is not None else cfg.dmr:
        kwargs["dmr"] = True
    return {"name": cfg.arch, "kwargs": kwargs}


# ---------------------------------------------------------------------------- augmentation


def augment_batch(
    images: Any,
    labels: Any,
    centres: np.ndarray,
    crop: int,
    rng: np.random.Generator,
    distmaps: Any = None,
    truncation_px: float = 250.0,
) -> tuple[Any, ...]:
    """Random similarity transform + crop of (N, K, H, W) images, (N, H, W) or (N, K', H, W)
    labels and optionally (N, K'', H, W) distance maps, all with the same transform per sample
    (the same for every channel: the neighbouring slices of a stack, the slices of a volume).

    ``centres`` (N, 2) are (row, col) crop centres in input pixels; rotation is 0-360 deg and
    isotropic scale 0.8-1.2 (DMR paper II-E). Images and distance maps are sampled bilinearly,
    labels by nearest neighbour; distances are multiplied by the scale (they are in output
    pixels) and kept at or above ``-truncation_px``. A global intensity gain/offset and noise
    are added to the images. Returns (images, labels[, distmaps]).
    """
    import torch
    import torch.nn.functional as F

    n, _, h, w = images.shape
    theta = np.zeros((n, 2, 3), dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi, n)
    scale = rng.uniform(0.8, 1.2, n)
    half = crop / 2
    for i in range(n):
        a = half / (w / 2) / scale[i]
        c, s = math.cos(angle[i]), math.sin(angle[i])
        theta[i] = [
            [a * c, -a * s * (h / w), (centres[i, 1] - (w - 1) / 2) / (w / 2)],
            [a * s * (w / h), a * c, (centres[i, 0] - (h - 1) / 2) / (h / 2)],
        ]
    grid = F.affine_grid(torch.from_numpy(theta), [n, 1, crop, crop], align_corners=False)
    out_img = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    lab = labels[:, None] if labels.ndim == 3 else labels
    out_lab = F.grid_sample(lab.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    out_lab = out_lab[:, 0] if labels.ndim == 3 else out_lab
    gain = torch.from_numpy(rng.uniform(0.85, 1.15, (n, 1, 1, 1)).astype(np.float32))
    bias = torch.from_numpy(rng.uniform(-0.15, 0.15, (n, 1, 1, 1)).astype(np.float32))
    noise = torch.from_numpy(rng.uniform(0, 0.1, (n, 1, 1, 1)).astype(np.float32))
    out_img = out_img * gain + bias + noise * torch.randn_like(out_img)
    if distmaps is None:
        return out_img, out_lab.long()
    out_dm = F.grid_sample(distmaps, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out_dm = (out_dm * torch.from_numpy(scale.astype(np.float32))[:, None, None, None]).clamp_(min=-truncation_px)
    return out_img, out_lab.long(), out_dm


# ---------------------------------------------------------------------------- losses


def _soft_dice(logits: Any, target: Any, n_classes: int, smooth: float = 1.0) -> Any:
    """Soft Dice per foreground class over the batch, (n_classes - 1,)."""
    import torch
    import torch.nn.functional as F

    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, n_classes).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return ((2 * inter + smooth) / (denom + smooth))[1:]


def segmentation_loss(
    kind: str, logits: Any, target: Any, n_classes: int = 4, distmaps: Any = None, class_weights: Any = None
) -> Any:
    """``ce``: cross-entropy; ``dice``: 1 - mean soft Dice of the foreground classes (smooth 1);
    ``logdice``: -log of that mean soft Dice; ``dice_ce``: CE + (1 - mean soft Dice);
    ``mapdice``: Li et al.'s MapDice (needs the (N, n_classes - 1, H, W) ``distmaps``, px);
    ``explog``: SRSCN's Eq. 1 (``class_weights``: the (n_classes,) w_l, default 1);
    ``wce``, ``qure_logdice``, ``qure_hybrid``: Qure.ai's weighted cross-entropy, weighted
    log-Dice and their sum (``cardioseg.losses``; ``class_weights`` as for ``explog``)."""
    import torch
    import torch.nn.functional as F

    from cardioseg import losses

    logits = logits.float()
    if kind == "mapdice":
        if distmaps is None:
            raise ConfigError("the mapdice loss needs the distance maps of the references")
        return losses.map_dice_loss(logits, target, distmaps)
    if kind == "explog":
        return losses.exp_log_loss(logits, target, class_weights)
    if kind == "wce":
        return losses.weighted_cross_entropy(logits, target, class_weights)
    if kind == "qure_logdice":
        return losses.qure_log_dice_loss(logits, target, class_weights)
    if kind == "qure_hybrid":
        return losses.qure_hybrid_loss(logits, target, class_weights)
    if kind == "ce":
        return F.cross_entropy(logits, target)
    dice = _soft_dice(logits, target, n_classes).mean()
    if kind == "dice":
        return 1 - dice
    if kind == "logdice":
        return -torch.log(dice.clamp_min(1e-6))
    if kind == "dice_ce":
        return F.cross_entropy(logits, target) + (1 - dice)
    raise ConfigError(f"unknown loss {kind!r}; choose one of: {', '.join(LOSSES)}")


def dice_ce_loss(logits: Any, target: Any, n_classes: int) -> Any:
    """Cross-entropy + (1 - mean soft Dice over the foreground classes)."""
    return segmentation_loss("dice_ce", logits, target, n_classes)


def multitask_loss(seg: Any, dm: Any, log_sigma: Any, weighting: str, seg_weight: float, dm_weight: float) -> Any:
    """Eq. 7: seg/sigma_seg + MAD/sigma_dm + log sigma_seg + log sigma_dm, sigma = exp(s); or,
    with ``fixed`` weighting, seg_weight * seg + dm_weight * MAD."""
    import torch

    if weighting == "fixed":  # log_sigma stays in the graph so that DDP sees every parameter used
        return seg_weight * seg + dm_weight * dm + 0.0 * log_sigma.sum()
    s_seg, s_dm = log_sigma[0], log_sigma[1]
    return torch.exp(-s_seg) * seg + torch.exp(-s_dm) * dm + s_seg + s_dm


# ---------------------------------------------------------------------------- validation


def dice_per_label(pred: np.ndarray, ref: np.ndarray, labels: tuple[int, ...] = (1, 2, 3)) -> list[float]:
    """3D Dice per label (NaN when both masks are empty)."""
    from cardioseg.metrics import dice

    return [dice(pred == k, ref == k) for k in labels]


def _predict_slices(
    model: Any, slices: np.ndarray, device: str, spec: InputSpec | None = None, batch: int = 32
) -> np.ndarray:
    """(S, H, W) slices of one frame, in order -> (S, H, W) uint8 labels, with the inputs and
    forward passes of ``cardioseg.inference`` (neighbour stacks, whole stacks), bf16 autocast."""
    from cardioseg.inference import forward_probabilities, model_batches

    slices = np.asarray(slices, dtype=np.float32)
    batches = model_batches([slices], spec or InputSpec(), batch)
    probs = forward_probabilities(model, batches, device, bf16=True, n_classes=4, plane=slices.shape[1:])
    return probs.argmax(1).astype(np.uint8)


def validate(
    model: Any, cache: Cache, patients: set[str], device: str, spec: InputSpec | None = None
) -> dict[str, float]:
    """Mean model-space 3D Dice per label over the patients' frames (ED and ES separately).

    Each frame is segmented as ``cardioseg predict`` does it, by ``spec`` (default one 2D slice)."""
    model.eval()
    scores: dict[str, list[list[float]]] = {}
    for idx in cache.frame_rows(cache.slices_of(patients)):
        phase = cache.index[idx[0]]["phase"] or "all"
        pred = _predict_slices(model, cache.images[idx], device, spec)
        scores.setdefault(phase, []).append(dice_per_label(pred, np.asarray(cache.labels[idx])))
    result = {}
    for phase, rows in sorted(scores.items()):
        arr = np.array(rows)
        for j, name in enumerate(("rv", "myo", "lv")):
            result[f"dice_{name}_{phase.lower()}"] = float(np.nanmean(arr[:, j]))
    result["dice_mean"] = float(np.mean(list(result.values())))
    return result


# ---------------------------------------------------------------------------- the loop


def _distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun, (0, 1) otherwise; initialises the process group."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def _train_module(model: Any, seg_weight: float, dm_weight: float, regularizer: str = "none", base: int = 16) -> Any:
    """The network, the learned log-sigmas of Eq. 7 and the regulariser's networks, as one
    module (one DDP wrapper). ``forward`` returns (logits, DMR maps | None, LR-Net maps | None,
    slice positions | None); the shape autoencoder (``shape_ae``) is frozen, the discriminator
    lives outside (it has its own optimiser)."""
    import torch
    from torch import nn

    from cardioseg.models.regularizers import LRNet, PositionHead, ShapeAutoencoder

    class TrainModule(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            # s = log sigma, initialised so that 1/sigma equals the initial weights
            init = [-math.log(seg_weight), -math.log(dm_weight)]
            self.log_sigma = nn.Parameter(torch.tensor(init, dtype=torch.float32))
            self.lrnet = LRNet(4, width=base) if regularizer == "lrnet" else None
            self.position = PositionHead(base * 16) if regularizer in POSITION_REGULARIZERS else None
            self.shape_ae = ShapeAutoencoder(4, base=base) if regularizer in SHAPE_AE_REGULARIZERS else None
            if self.shape_ae is not None:
                self.shape_ae.requires_grad_(False)

        def forward(self, x: Any) -> Any:
            logits, dm, bottom = self.model.forward_train(x)
            lr_maps = self.lrnet(torch.softmax(logits, dim=1)) if self.lrnet is not None else None
            position = self.position(bottom) if self.position is not None else None
            return logits, dm, lr_maps, position

    return TrainModule()


def pretrain_shape_autoencoder(
    cfg: TrainConfig,
    images: Any,
    labels: Any,
    centres: np.ndarray,
    device: str,
    resume: bool,
    log: Callable[[str], None] = print,
) -> Path:
    """SRSCN's SRNN pre-training: a ``ShapeAutoencoder`` learns to reconstruct the training
    fold's label maps (one-hot in, cross-entropy on the reconstruction), on randomly transformed
    crops as in the main loop, with Adam (lr 1e-3) for ``cfg.shape_epochs`` epochs.

    Saved after every epoch in ``OUT/shape_ae.pt`` (with its optimiser, so ``resume`` continues
    an interrupted pre-training; a finished one is returned as it is) and logged in
    ``OUT/shape_ae_log.csv``. Returns the path of the saved autoencoder.
    """
    import torch
    import torch.nn.functional as F

    from cardioseg.losses import onehot
    from cardioseg.models.regularizers import ShapeAutoencoder

    out = Path(cfg.out)
    path, log_path = out / "shape_ae.pt", out / "shape_ae_log.csv"
    torch.manual_seed(cfg.seed + 1)
    ae = ShapeAutoencoder(4, base=cfg.base_width).to(device)
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
            c = centres[idx].copy()
            empty = np.isnan(c[:, 0])
            c[empty] = rng.uniform(cfg.crop_px / 2, h - cfg.crop_px / 2, (int(empty.sum()), 2))
            c[~empty] += rng.uniform(-h / 8, h / 8, (int((~empty).sum()), 2))
            y = augment_batch(images[idx], labels[idx], c, cfg.crop_px, rng)[1].to(device)
            with torch.autocast(device_type, dtype=torch.bfloat16):
                recon = ae(onehot(y, 4))
            loss = F.cross_entropy(recon.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        _save_atomic({"model": ae.state_dict(), "opt": opt.state_dict(), "epoch": epoch}, path)
        with open(log_path, "a", newline="") as f:
            csv.writer(f).writerow([epoch + 1, f"{total / steps:.4f}", f"{time.time() - t0:.1f}"])
        log(f"shape autoencoder epoch {epoch + 1}/{cfg.shape_epochs} reconstruction loss {total / steps:.4f}")
    return path


def _regularizer_terms(
    cfg: TrainConfig, module: Any, disc: Any, outputs: tuple[Any, ...], y: Any, distmaps: Any, position: Any
) -> dict[str, Any]:
    """The regulariser's (unweighted) loss terms of one batch, by log column. ``outputs`` are
    the train module's (logits, DMR maps, LR-Net maps, slice positions), ``y`` the reference
    labels, ``distmaps`` their distance maps (or None), ``position`` the slices' positions."""
    import torch

    from cardioseg import losses

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
    elif reg == "acnn":
        with torch.no_grad():
            code_ref = module.shape_ae.encode(ref)
        terms["shape_loss"] = losses.code_distance_loss(module.shape_ae.encode(probs), code_ref)
    else:  # srnn, srscn: Eq. 3 on the reconstructions' probabilities
        with torch.no_grad():
            recon_ref = torch.softmax(module.shape_ae(ref), dim=1)
        terms["shape_loss"] = losses.shape_reconstruction_loss(torch.softmax(module.shape_ae(probs), dim=1), recon_ref)
    return terms


def _training_samples(cache: Cache, train_slices: np.ndarray, spec: InputSpec) -> np.ndarray | list[np.ndarray]:
    """The training samples as positions in ``train_slices`` (whose arrays are in memory):
    2D, (n_slices, context_slices) neighbour stacks of each slice (its frame's slices around
    it, edges replicated); 3D, one array per frame of its slices in order."""
    where = np.full(len(cache), -1, dtype=np.int64)
    where[train_slices] = np.arange(len(train_slices))
    if spec.dims == 3:
        return [where[rows] for rows in cache.frame_rows(train_slices)]
    return where[cache.context_rows(train_slices, spec.context_slices)]


def _volume_batch(
    volumes: list[np.ndarray], idx: np.ndarray, images: Any, labels: Any, distmaps: Any, truncation: float
) -> tuple[Any, Any, Any, Any]:
    """Frames ``idx`` as (B, D, H, W) images and labels and (B, D * K, H, W) distance maps (or
    None), padded in z to the longest with zero images, background labels and absent-structure
    maps; and the (B, D) mask of real slices (the loss ignores the others)."""
    import torch

    depth = max(len(volumes[v]) for v in idx)
    b, (h, w) = len(idx), images.shape[-2:]
    img = images.new_zeros((b, depth, h, w))
    lab = labels.new_zeros((b, depth, h, w))
    valid = torch.zeros((b, depth), dtype=torch.bool)
    dm = None if distmaps is None else distmaps.new_full((b, depth, *distmaps.shape[1:]), -truncation)
    for k, v in enumerate(idx):
        rows = torch.from_numpy(volumes[v])
        img[k, : len(rows)], lab[k, : len(rows)], valid[k, : len(rows)] = images[rows], labels[rows], True
        if dm is not None:
            dm[k, : len(rows)] = distmaps[rows]
    return img, lab, (dm.flatten(1, 2) if dm is not None else None), valid


def _crop_centres(labels: np.ndarray) -> np.ndarray:
    """(row, col) centre of the labels of each slice; NaN for an empty slice."""
    centres = np.full((len(labels), 2), np.nan, dtype=np.float32)
    for i in range(len(labels)):
        rows, cols = np.nonzero(labels[i])
        if len(rows):
            centres[i] = (rows.mean(), cols.mean())
    return centres


def train(cfg: TrainConfig, resume: bool = False, log: Callable[[str], None] = print, show_progress: bool = False) -> Path:
    """Train one fold (resuming from ``OUT/last.pt`` when ``resume``); returns the exported weights.

    Raises ConfigError if OUT already holds a run and ``resume`` is False, or if the run there
    was made with a different configuration.
    """
    import torch

    from cardioseg.models import build_model

    cfg.check()
    rank, world = _distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
    device_type = device.split(":")[0]
    out = Path(cfg.out)
    state_path, best_path, log_path = out / "last.pt", out / "best.pt", out / "log.csv"
    saved_cfg = out / "config.json"
    if state_path.is_file() and not resume:
        raise ConfigError(f'"{out}" already holds a training run; pass --resume to continue it or choose another --out')
    if resume and saved_cfg.is_file():
        before = json.loads(saved_cfg.read_text())
        defaults = asdict(TrainConfig(cache="", out=""))  # settings added since the run was made
        changed = sorted(k for k, v in asdict(cfg).items()
                         if k not in {"epochs", "threads", "out", "cache"} and before.get(k, defaults[k]) != v)  # fmt: skip
        if changed:
            raise ConfigError(f'cannot resume "{out}" with different settings: {", ".join(changed)}')

    cache = load_cache(Path(cfg.cache))
    train_names, val_names = cache.split(cfg.fold, cfg.n_folds)
    val_patients = set(val_names)
    train_slices = cache.slices_of(set(train_names))
    if len(train_slices) == 0 or not val_patients:
        raise ConfigError(f"fold {cfg.fold} leaves no training or no validation patients ({len(cache.patients)} patients)")
    truncation = float(cache.meta["distance_truncation_px"])
    log(f"cache {cache.path}: {len(cache)} slices, {len(cache.patients)} patients; fold {cfg.fold}: "
        f"{len(train_slices)} training slices, {len(val_patients)} validation patients")  # fmt: skip
    # the training slices in memory (float32 for the sampler), labels' centres for cropping;
    # samples: each slice's neighbour stack (2D) or each frame's slices (3D), as positions here
    spec = cfg.input_spec()
    images_t = torch.from_numpy(np.asarray(cache.images[train_slices], dtype=np.float32))
    labels_np = np.asarray(cache.labels[train_slices])
    labels_t = torch.from_numpy(labels_np)
    dist_t = None
    if cfg.needs_distmaps():
        dist_t = torch.from_numpy(np.asarray(cache.distmaps[train_slices], dtype=np.float32))
    samples = _training_samples(cache, train_slices, spec)
    if spec.dims == 3:
        centres = _crop_centres(np.stack([(labels_np[rows] > 0).any(axis=0) for rows in samples]))
        log(f"3D network: {len(samples)} training frames of {min(map(len, samples))}-{max(map(len, samples))} slices")
    else:
        centres = _crop_centres(labels_np)
    positions = torch.tensor([float(cache.index[i]["position"]) for i in train_slices])  # in [0, 1] within the stack
    class_weights = None
    if cfg.loss in WEIGHTED_LOSSES:
        class_weights = torch.from_numpy(label_frequency_weights(labels_np, 4)).float()

    torch.manual_seed(cfg.seed)
    arch = architecture(cfg)
    model = build_model(arch["name"], **arch["kwargs"])
    module = _train_module(model, cfg.seg_weight, cfg.dm_weight, cfg.regularizer, cfg.base_width)
    module = module.to(device)
    memory_format = torch.channels_last if spec.dims == 2 else torch.contiguous_format
    module = module.to(memory_format=memory_format)
    lr, reg_weight = cfg.resolved_lr(), cfg.resolved_reg_weight()
    params: list[dict[str, Any]] = [
        {"params": [p for k, p in module.named_parameters() if p.requires_grad and k != "log_sigma"]}
    ]
    if cfg.dmr and cfg.weighting == "uncertainty":
        params.append({"params": [module.log_sigma], "lr": cfg.sigma_lr, "weight_decay": 0.0})
    if cfg.optimizer == "rmsprop":
        opt: Any = torch.optim.RMSprop(params, lr=lr, weight_decay=cfg.weight_decay)
        sched: Any = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(e, cfg.epochs) / cfg.epochs)))
    disc, opt_disc = None, None
    if cfg.regularizer == "gan":
        from cardioseg.models.regularizers import Discriminator

        disc = Discriminator(4, base=cfg.base_width).to(device)
        opt_disc = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999))
    start_epoch, best = 0, {"dice_mean": -1.0}
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=True)
        module.load_state_dict(state["module"])  # the frozen shape autoencoder included
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        if disc is not None:
            disc.load_state_dict(state["disc"])
            opt_disc.load_state_dict(state["opt_disc"])
        start_epoch, best = int(state["epoch"]) + 1, json.loads(state["best"])
        log(f"resumed at epoch {start_epoch}, best so far {best['dice_mean']:.4f}")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        saved_cfg.write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        if start_epoch == 0:
            with open(log_path, "w", newline="") as f:
                csv.writer(f).writerow(LOG_COLUMNS)
    if module.shape_ae is not None and start_epoch == 0:
        if rank == 0:
            pretrain_shape_autoencoder(cfg, images_t[:, None], labels_t, centres, device, resume, log)
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
        shape_state = torch.load(out / "shape_ae.pt", map_location=device, weights_only=True)
        module.shape_ae.load_state_dict(shape_state["model"])
    net, disc_net = module, disc
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device] if device_type == "cuda" else None
        net = DistributedDataParallel(module, device_ids=ids)
        disc_net = DistributedDataParallel(disc, device_ids=ids) if disc is not None else None

    per_rank_batch = max(1, math.ceil(cfg.batch_size / world))
    steps = max(1, len(samples) // (per_rank_batch * world))
    h = images_t.shape[-1]
    progress = _progress(show_progress and rank == 0)
    with progress:
        for epoch in range(start_epoch, cfg.epochs):
            rng = np.random.default_rng([cfg.seed, epoch, rank])
            torch.manual_seed(cfg.seed * 100003 + epoch * 101 + rank)
            order = np.random.default_rng([cfg.seed, epoch]).permutation(len(samples))[rank::world]
            module.train()
            t0 = time.time()
            sums = np.zeros(len(LOSS_COLUMNS))
            task = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=steps)
            for step in range(steps):
                idx = order[step * per_rank_batch : (step + 1) * per_rank_batch]
                c = centres[idx].copy()
                far = np.isnan(c[:, 0]) | (rng.random(len(idx)) < 0.2)
                c[far] = rng.uniform(cfg.crop_px / 2 - 16, h - cfg.crop_px / 2 + 16, (int(far.sum()), 2))
                c[~far] += rng.uniform(-h / 8, h / 8, (int((~far).sum()), 2))  # translation up to 1/8
                if spec.dims == 3:  # (B, D, H, W) frames, padded in z; the net takes (B, 1, D, H, W)
                    img, lab, dm, valid = _volume_batch(samples, idx, images_t, labels_t, dist_t, truncation)
                    batch = augment_batch(img, lab, c, cfg.crop_px, rng, dm, truncation)
                    x = batch[0][:, None].to(device)
                    pos = torch.zeros(len(idx), device=device)  # no slice positions (no 3D regulariser)
                else:  # (B, context_slices, H, W) neighbour stacks of the centre slices idx
                    batch = augment_batch(images_t[samples[idx]], labels_t[idx], c, cfg.crop_px, rng,
                                          dist_t[idx] if dist_t is not None else None, truncation)  # fmt: skip
                    x = batch[0].to(device).contiguous(memory_format=torch.channels_last)
                    pos = positions[idx].to(device)
                y = batch[1].to(device)
                dmaps = batch[2].to(device) if dist_t is not None else None
                with torch.autocast(device_type, dtype=torch.bfloat16):
                    outputs = net(x)
                    terms = _regularizer_terms(cfg, module, disc, outputs, y, dmaps, pos)
                logits, dm_pred = outputs[:2]
                if spec.dims == 3:  # the real slices of the frames, as a batch of 2D slices
                    keep = valid.flatten().to(device)
                    logits, y = logits.transpose(1, 2).flatten(0, 1)[keep], y.flatten(0, 1)[keep]
                    if dmaps is not None:
                        dmaps = dmaps.unflatten(1, (valid.shape[1], -1)).flatten(0, 1)[keep]
                seg = segmentation_loss(cfg.loss, logits, y, distmaps=dmaps, class_weights=class_weights)
                if cfg.dmr:
                    mad = (dm_pred.float() - dmaps / cfg.dm_unit_px).abs().mean()
                    loss = multitask_loss(seg, mad, module.log_sigma, cfg.weighting, cfg.seg_weight, cfg.dm_weight)
                    mad = mad * cfg.dm_unit_px  # logged in pixels
                else:
                    mad = torch.zeros(())
                    loss = seg + 0.0 * module.log_sigma.sum()  # keeps DDP's gradient bookkeeping uniform
                for key, term in terms.items():
                    loss = loss + (cfg.position_weight if key == "position_loss" else reg_weight) * term
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if disc_net is not None:  # the discriminator's step: references real, segmentations fake
                    with torch.autocast(device_type, dtype=torch.bfloat16):
                        both = torch.cat([onehot(y, 4), torch.softmax(logits.detach().float(), dim=1)])
                        real, fake = disc_net(both).float().chunk(2)
                    terms["disc_loss"] = discriminator_loss(real, fake)
                    opt_disc.zero_grad(set_to_none=True)
                    terms["disc_loss"].backward()
                    opt_disc.step()
                terms.update(loss=loss, seg_loss=seg, dm_loss=mad)
                sums += [float(terms[k].detach()) if k in terms else 0.0 for k in LOSS_COLUMNS]
                progress.update(task, advance=1)
            progress.remove_task(task)
            sched.step()
            seconds = time.time() - t0
            val: dict[str, float] = {}
            if rank == 0 and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
                val = validate(model, cache, val_patients, device, spec)
                if val["dice_mean"] > best["dice_mean"]:
                    best = {**val, "epoch": epoch + 1}
                    _save_atomic({"model": model.state_dict(), "best": json.dumps(best)}, best_path)
            if rank == 0:
                state = {"module": module.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                         "epoch": epoch, "best": json.dumps(best)}  # fmt: skip
                if disc is not None:
                    state.update(disc=disc.state_dict(), opt_disc=opt_disc.state_dict())
                _save_atomic(state, state_path)
                sigma = torch.exp(module.log_sigma.detach()).tolist()
                mean = sums / steps
                losses_text = [f"{v:.3f}" if k == "dm_loss" else f"{v:.4g}" if k in REG_COLUMNS else f"{v:.4f}"
                               for k, v in zip(LOSS_COLUMNS, mean)]  # fmt: skip
                row = dict(zip(LOG_COLUMNS, [epoch + 1, *losses_text, f"{sigma[0]:.4f}", f"{sigma[1]:.4f}",
                     f"{sched.get_last_lr()[0]:.3e}", f"{seconds:.1f}", f"{val.get('dice_mean', float('nan')):.4f}",
                     json.dumps(val)]))  # fmt: skip
                with open(log_path, newline="") as f:  # a run resumed from an older version keeps its columns
                    header = next(csv.reader(f), list(LOG_COLUMNS))
                with open(log_path, "a", newline="") as f:
                    csv.writer(f).writerow([row.get(k, "") for k in header])
                reg_text = "".join(f", {k[:-5]} {v:.4g}" for k, v in zip(LOSS_COLUMNS, mean) if k in REG_COLUMNS and v)
                log(f"epoch {epoch + 1}/{cfg.epochs} loss {mean[0]:.4f} (seg {mean[1]:.4f}, dm {mean[2]:.2f}{reg_text}) {seconds:.0f}s"
                    + (f" val dice {val['dice_mean']:.4f} (best {best['dice_mean']:.4f})" if val else ""))  # fmt: skip
            if world > 1:
                import torch.distributed as dist

                dist.barrier()
    if rank != 0:
        return out / f"{cfg.weights_name()}.pt"
    return export_run(cfg, log)


def _progress(enabled: bool) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not enabled, transient=True,
    )  # fmt: skip


def _save_atomic(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def load_config(out: Path) -> TrainConfig:
    """The configuration a run folder was trained with."""
    path = Path(out) / "config.json"
    if not path.is_file():
        raise ConfigError(f'No training run in "{out}" (config.json missing)')
    saved = json.loads(path.read_text())
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in saved.items() if k in known})


def export_run(cfg: TrainConfig, log: Callable[[str], None] = print) -> Path:
    """Export the best checkpoint of a run as shipped-format weights, without the regulariser
    (the DMR decoder is dropped; the other regularisers' networks were never in ``best.pt``)."""
    import torch

    from cardioseg.models import build_model
    from cardioseg.models.unet import DMR_PREFIX
    from cardioseg.weights import export_weights

    out = Path(cfg.out)
    best_path = out / "best.pt"
    if not best_path.is_file():
        raise ConfigError(f'No best checkpoint in "{out}" yet')
    cache = load_cache(Path(cfg.cache))
    train_names, val_names = cache.split(cfg.fold, cfg.n_folds)
    arch = architecture(cfg, dmr=False)
    model = build_model(arch["name"], **arch["kwargs"])
    saved = torch.load(best_path, map_location="cpu", weights_only=True)
    best = json.loads(saved["best"])
    model.load_state_dict({k: v for k, v in saved["model"].items() if not k.startswith(DMR_PREFIX)})
    name = cfg.weights_name()
    exported = out / f"{name}.pt"
    recipe = {k: v for k, v in asdict(cfg).items() if k not in {"cache", "out", "threads", "name"}}
    recipe["lr"] = cfg.resolved_lr()
    recipe["reg_weight"] = cfg.resolved_reg_weight()
    export_weights(
        model,
        exported,
        name=name,
        architecture=arch,
        preprocess=PreprocessConfig.from_dict(cache.meta["preprocess"]),
        label_map=label_map_from_dict(cache.meta["label_map"], cache.meta.get("label_map_name", "custom")),
        training={
            "data": f"{len(cache.patients)} patients of the cache at {cache.path.name} (ED+ES frames, expert labels)",
            "train_patients": train_names,
            "val_patients": val_names,
            "split": f"fold {cfg.fold} of {cfg.n_folds} patient-level folds stratified by group (seed 0)",
            "recipe": recipe,
            "distance_map_regulariser": "used in training, removed from these weights" if cfg.dmr else "none",
            "regulariser": "none" if cfg.regularizer == "none" else f"{cfg.regularizer}: used in training only",
            "best_epoch": best.get("epoch"),
        },
        validation={"model_space": {k: v for k, v in best.items() if k != "epoch"}},
        license=ACDC_LICENSE,
        input_spec=cfg.input_spec(),
    )
    log(f"exported {exported} (best epoch {best.get('epoch')}, val dice {best['dice_mean']:.4f})")
    return exported


def fold_configs(cfg: TrainConfig, folds: list[int] | None = None) -> list[TrainConfig]:
    """One config per fold, each in ``OUT/fold{k}`` (for ``cardioseg train --all-folds``)."""
    return [replace(cfg, fold=k, out=str(Path(cfg.out) / f"fold{k}")) for k in (folds if folds is not None else range(cfg.n_folds))]

