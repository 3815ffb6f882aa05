"""What a training run is: ``TrainConfig`` (saved as ``OUT/config.json`` and inside the
exported weights), the registries of its choices, and the folds of a cross-validation.

Nothing here imports numpy or torch, so the CLI reads the registries for its help at once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cardioseg.errors import ConfigError
from cardioseg.train.losses import LOSSES

if TYPE_CHECKING:
    from cardioseg.dataset import Cache
    from cardioseg.models.inputs import InputSpec

__all__ = [
    "ARCHES",
    "ARCHES_3D",
    "DEFAULT_REG_WEIGHTS",
    "LOG_COLUMNS",
    "LOSS_COLUMNS",
    "OPTIMIZERS",
    "POSITION_REGULARIZERS",
    "QURE_LOSSES",
    "REGULARIZERS",
    "REG_COLUMNS",
    "SHAPE_AE_REGULARIZERS",
    "WEIGHTED_LOSSES",
    "WEIGHTINGS",
    "RegularizerSpec",
    "TrainConfig",
    "architecture",
    "describe_choices",
    "fold_configs",
    "load_config",
]

N_CLASSES = 4  # background + the three structures of a label map (``cardioseg.labels``)

# name -> what it is (the CLI's help); the constructors are in ``cardioseg.models.ARCHITECTURES``
ARCHES: dict[str, str] = {
    "unet2d": "",
    "segnet2d": "",
    "usegnet2d": "",
    "unet3d": "Qure.ai's 3D U-Net, 1x2x2 pooling: whole stacks of a frame; --batch-size then counts frames",
}
ARCHES_3D = ("unet3d",)
WEIGHTINGS: dict[str, str] = {"uncertainty": "learned, Eq. 7", "fixed": ""}
OPTIMIZERS: dict[str, str] = {"rmsprop": "paper", "adamw": ""}


@dataclass(frozen=True)
class RegularizerSpec:
    """A training-only regulariser (``cardioseg.train.shape_prior.regularizer_terms``)."""

    description: str
    default_weight: float  # the term's weight when ``reg_weight`` is 0
    shape_autoencoder: bool = False  # pre-trains a shape autoencoder (OUT/shape_ae.pt)
    position: bool = False  # regresses the slice position from the bottleneck


# default weights: LR-Net alpha; SRSCN's lambda_SR (its paper's 5e-4); ACNN's lambda (Oktay et
# al.'s 0.01); the adversarial term's weight (no value in the paper)
REGULARIZERS: dict[str, RegularizerSpec] = {
    "none": RegularizerSpec("", 0.0),
    "lrnet": RegularizerSpec("Li et al.'s LR-Net, in tandem", 1.0),
    "srnn": RegularizerSpec("SRSCN shape reconstruction, Eq. 2", 5e-4, shape_autoencoder=True),
    "scn": RegularizerSpec("slice position, Eq. 5", 0.0, position=True),
    "srscn": RegularizerSpec("both, Eq. 6", 5e-4, shape_autoencoder=True, position=True),
    "acnn": RegularizerSpec("shape-code L2", 0.01, shape_autoencoder=True),
    "gan": RegularizerSpec("discriminator", 0.01),
}
DEFAULT_REG_WEIGHTS = {name: spec.default_weight for name, spec in REGULARIZERS.items()}
SHAPE_AE_REGULARIZERS = tuple(name for name, spec in REGULARIZERS.items() if spec.shape_autoencoder)
POSITION_REGULARIZERS = tuple(name for name, spec in REGULARIZERS.items() if spec.position)
QURE_LOSSES = tuple(name for name, spec in LOSSES.items() if spec.named)  # their name goes in the weights' name
WEIGHTED_LOSSES = tuple(name for name, spec in LOSSES.items() if spec.class_weighted)

REG_COLUMNS = ("lrnet_loss", "shape_loss", "position_loss", "adv_loss", "disc_loss")
LOSS_COLUMNS = ("loss", "seg_loss", "dm_loss", *REG_COLUMNS)
LOG_COLUMNS = ("epoch", *LOSS_COLUMNS, "sigma_seg", "sigma_dm", "lr", "seconds", "val_dice_mean", "val_json")


class _Described(Protocol):
    @property
    def description(self) -> str: ...


def describe_choices(registry: Mapping[str, str] | Mapping[str, _Described]) -> str:
    """``name (description) | name | ...`` of a registry, for help texts.

    >>> describe_choices({"rmsprop": "paper", "adamw": ""})
    'rmsprop (paper) | adamw'
    """
    parts = []
    for name, entry in registry.items():
        text = entry if isinstance(entry, str) else entry.description
        parts.append(f"{name} ({text})" if text else name)
    return " | ".join(parts)


# What ``cardioseg train`` starts from: the recipe of the shipped default weights, or with
# ``--paper`` the DMR paper's (Dangi et al.: RMSprop, cross-entropy + soft Dice, 100 epochs,
# scale 0.8-1.2, no intensity augmentation). Options given on the command line still win.
SHIPPED_RECIPE: dict[str, Any] = {"dmr": True, "loss": "dice_ce", "optimizer": "adamw", "epochs": 120,
                                  "scale_min": 0.8, "scale_max": 1.2, "intensity_aug": 0.0}  # fmt: skip
PAPER_RECIPE: dict[str, Any] = {"dmr": True, "loss": "dice_ce", "optimizer": "rmsprop", "epochs": 100,
                                "scale_min": 0.8, "scale_max": 1.2, "intensity_aug": 0.0}  # fmt: skip


def recipe_text(recipe: Mapping[str, Any]) -> str:
    """``--dmr --loss dice_ce --optimizer adamw --epochs 60 ...`` for the help text."""
    parts = []
    for key, value in recipe.items():
        flag = "--" + key.replace("_", "-")
        parts.append(flag if value is True else f"--no-{key}" if value is False else f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    return " ".join(parts)


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
    scale_min: float = 0.8  # random isotropic scale of each crop (DMR paper: 0.8-1.2)
    scale_max: float = 1.2
    intensity_aug: float = 0.0  # > 0: gamma/contrast/bias field/blur/low resolution, each with this probability
    hard_slices: float = 1.0  # sampling weight of basal and apical slices (position <= 0.2 or >= 0.8) vs the others; 1: uniform
    fold: int = 0  # the held-out validation fold
    all_patients: bool = False  # train on every patient of the cache: no validation, the last epoch exported
    n_folds: int = 5
    seed: int = 0
    val_every: int = 1
    keep: str = "best"  # the checkpoint exported: "best" (held-out Dice: optimistic as that fold's score) or "last" epoch
    threads: int = 0  # torch threads, set by the caller (``cardioseg train``); 0: torch's default
    name: str = ""  # weights name; "" -> derived, e.g. "dmr-unet2d-acdc-fold0"
    regularizer: str = "none"  # one of REGULARIZERS (training only, never exported)
    reg_weight: float = 0.0  # weight of the regulariser's term; 0: DEFAULT_REG_WEIGHTS
    position_weight: float = 0.1  # scn/srscn: lambda_SC of the slice-position loss (positions in [0, 1])
    shape_epochs: int = 20  # srnn/srscn/acnn: pre-training epochs of the shape autoencoder
    init: str = ""  # weights (a file or a registered name) the network starts from; "": random (fine-tuning)

    @property
    def exports_last_epoch(self) -> bool:
        """The exported checkpoint is the last epoch's: no validation (``all_patients``) or ``keep == "last"``."""
        return self.all_patients or self.keep == "last"

    def resolved_lr(self) -> float:
        if self.lr > 0:
            return self.lr
        if self.optimizer == "adamw":
            return 1e-3
        return 5e-4 if self.dmr else 1e-4

    def resolved_reg_weight(self) -> float:
        return self.reg_weight if self.reg_weight > 0 else DEFAULT_REG_WEIGHTS[self.regularizer]

    def needs_distmaps(self) -> bool:
        return self.dmr or LOSSES[self.loss].needs_distmaps or self.regularizer == "lrnet"

    def input_spec(self) -> InputSpec:
        """What the network takes (recorded in the exported weights)."""
        from cardioseg.models.inputs import InputSpec

        return InputSpec(dims=3 if self.arch in ARCHES_3D else 2, context_slices=self.context_slices)

    def weights_name(self) -> str:
        """E.g. ``dmr-unet2d-acdc-fold0``, ``unet2d-ctx3-qure_hybrid-acdc-fold0``, ``unet3d-wce-acdc-fold1``."""
        reg = f"{self.regularizer}-" if self.regularizer != "none" else ""
        ctx = f"-ctx{self.context_slices}" if self.context_slices > 1 else ""
        loss = f"-{self.loss}" if self.loss in QURE_LOSSES else ""
        part = "all" if self.all_patients else f"fold{self.fold}"
        return self.name or f"{'dmr-' if self.dmr else ''}{reg}{self.arch}{ctx}{loss}-acdc-{part}"

    def split(self, cache: Cache) -> tuple[list[str], list[str]]:
        """(training patients, validation patients) of this run: fold ``fold`` of the cache's
        stratified folds, or every patient and none with ``all_patients``."""
        if self.all_patients:
            return sorted(cache.patients), []
        return cache.split(self.fold, self.n_folds)

    def split_text(self) -> str:
        if self.all_patients:
            return "all patients of the cache (no validation; the last epoch exported)"
        return f"fold {self.fold} of {self.n_folds} patient-level folds stratified by group (seed 0)"

    def check(self) -> None:
        """Raise ConfigError for a setting that cannot train, naming the valid choices."""
        choices: tuple[tuple[str, Mapping[str, object], str], ...] = (
            (self.arch, ARCHES, "architecture"), (self.loss, LOSSES, "loss"),
            (self.weighting, WEIGHTINGS, "weighting"), (self.optimizer, OPTIMIZERS, "optimizer"),
            (self.regularizer, REGULARIZERS, "regularizer"),
        )  # fmt: skip
        for value, allowed, what in choices:
            if value not in allowed:
                raise ConfigError(f"unknown {what} {value!r}; choose one of: {', '.join(allowed)}")
        if not 0 <= self.fold < self.n_folds:
            raise ConfigError(f"--fold must be in 0..{self.n_folds - 1}, got {self.fold}")
        if self.crop_px % 16:
            raise ConfigError(f"--crop-px must be a multiple of 16, got {self.crop_px}")
        if not 0 < self.scale_min <= self.scale_max:
            raise ConfigError(
                f"--scale-min/--scale-max must satisfy 0 < min <= max, got {self.scale_min}, {self.scale_max}"
            )
        if not 0 <= self.intensity_aug <= 1:
            raise ConfigError(f"--intensity-aug is a probability in [0, 1], got {self.intensity_aug}")
        if self.keep not in ("best", "last"):
            raise ConfigError(f"--keep is best or last, got {self.keep!r}")
        if self.val_every < 1:
            raise ConfigError(f"--val-every is a number of epochs >= 1, got {self.val_every}")
        if not self.hard_slices > 0:
            raise ConfigError(f"--hard-slices is a sampling weight > 0, got {self.hard_slices}")
        if self.hard_slices != 1.0 and self.arch in ARCHES_3D:
            raise ConfigError("--hard-slices weights 2D slices; a 3D network trains on whole frames")
        if self.shape_epochs < 1:
            raise ConfigError(f"--shape-epochs must be at least 1, got {self.shape_epochs}")
        self.input_spec()  # --context-slices: odd, and 1 for a 3D network
        if self.arch in ARCHES_3D and (self.dmr or self.regularizer != "none"):
            raise ConfigError(f"{self.arch} trains without --dmr and --regularizer (their networks are 2D)")


def architecture(cfg: TrainConfig, dmr: bool | None = None) -> dict[str, Any]:
    """Registry name and constructor arguments (``dmr`` defaults to the config's)."""
    channels = cfg.input_spec().in_channels
    kwargs: dict[str, Any] = {"in_channels": channels, "num_classes": N_CLASSES, "base": cfg.base_width, "depth": 4}
    if dmr if dmr is not None else cfg.dmr:
        kwargs["dmr"] = True
    return {"name": cfg.arch, "kwargs": kwargs}


def load_config(out: Path) -> TrainConfig:
    """The configuration a run folder was trained with (settings unknown to this version are
    ignored; settings added since take their defaults)."""
    path = Path(out) / "config.json"
    if not path.is_file():
        raise ConfigError(f'No training run in "{out}" (config.json missing)')
    saved = json.loads(path.read_text())
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in saved.items() if k in known})


def fold_configs(cfg: TrainConfig, folds: list[int] | None = None) -> list[TrainConfig]:
    """One config per fold, each in ``OUT/fold{k}`` (for ``cardioseg train --all-folds``)."""
    return [
        replace(cfg, fold=k, out=str(Path(cfg.out) / f"fold{k}"))
        for k in (folds if folds is not None else range(cfg.n_folds))
    ]
