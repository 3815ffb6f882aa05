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
four transformed copies of each slice instead). Runs resume from ``OUT/last.pt``; in an
initialised process group (``torchrun``) the loop trains with DistributedDataParallel.

Other papers' methods, for comparison (losses in ``cardioseg.train.losses``, networks in
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
  of ``cardioseg.train.losses.label_frequency_weights`` (the poster does not give its weights).

A 3D network's outputs are flattened to (frames x slices) 2D slices for the losses, so every
loss sums over the whole batch of volumes exactly as it sums over a batch of slices.

The package, by step: ``config`` (``TrainConfig`` and the registries of its choices),
``losses`` (``LOSSES``), ``data`` (a fold in memory), ``augment`` (crops and transforms),
``model`` (the train module, optimiser, checkpoints), ``shape_prior`` (the regularisers'
pre-training and terms), ``validation``, ``trainer`` (``Trainer``, ``train``), ``export``
(``export_run``), ``callbacks`` (progress reporting) and ``distributed`` (what the command sets
up: threads, process group).

``config``, ``losses`` and ``callbacks`` import neither numpy nor torch, so ``cardioseg --help``
reads the registries at once; the other names load their modules (and torch) on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cardioseg.train.callbacks import Callbacks, TrainCallbacks
from cardioseg.train.config import (
    ARCHES,
    ARCHES_3D,
    DEFAULT_REG_WEIGHTS,
    LOG_COLUMNS,
    LOSS_COLUMNS,
    OPTIMIZERS,
    PAPER_RECIPE,
    REG_COLUMNS,
    REGULARIZERS,
    SHIPPED_RECIPE,
    WEIGHTINGS,
    TrainConfig,
    architecture,
    describe_choices,
    fold_configs,
    load_config,
    recipe_text,
)
from cardioseg.train.losses import LOSSES, dice_ce_loss, multitask_loss, segmentation_loss

if TYPE_CHECKING:
    from cardioseg.train.augment import augment_batch
    from cardioseg.train.export import export_run
    from cardioseg.train.shape_prior import pretrain_shape_autoencoder
    from cardioseg.train.trainer import Trainer, train

_LAZY = {
    "augment_batch": "cardioseg.train.augment",
    "export_run": "cardioseg.train.export",
    "pretrain_shape_autoencoder": "cardioseg.train.shape_prior",
    "Trainer": "cardioseg.train.trainer",
    "train": "cardioseg.train.trainer",
}

__all__ = [
    "ARCHES",
    "ARCHES_3D",
    "DEFAULT_REG_WEIGHTS",
    "LOG_COLUMNS",
    "LOSSES",
    "LOSS_COLUMNS",
    "OPTIMIZERS",
    "PAPER_RECIPE",
    "REGULARIZERS",
    "REG_COLUMNS",
    "SHIPPED_RECIPE",
    "WEIGHTINGS",
    "Callbacks",
    "TrainCallbacks",
    "TrainConfig",
    "Trainer",
    "architecture",
    "augment_batch",
    "describe_choices",
    "dice_ce_loss",
    "export_run",
    "fold_configs",
    "load_config",
    "multitask_loss",
    "pretrain_shape_autoencoder",
    "recipe_text",
    "segmentation_loss",
    "train",
]


def __getattr__(name: str) -> Any:
    """The names of the torch-heavy modules, imported on first use."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
