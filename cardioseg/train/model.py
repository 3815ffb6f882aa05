"""What trains: the network with the learned log-sigmas of Eq. 7 and the regularisers'
networks as one module, its optimiser and learning-rate schedule, and atomic checkpoints."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cardioseg.io import atomic_path
from cardioseg.models.regularizers import LRNet, PositionHead, ShapeAutoencoder
from cardioseg.train.config import N_CLASSES, POSITION_REGULARIZERS, SHAPE_AE_REGULARIZERS, TrainConfig

__all__ = ["TrainModule", "make_optimizer", "save_atomic"]


class TrainModule(nn.Module):
    """The network, the learned log-sigmas of Eq. 7 and the regulariser's networks, as one
    module (one DDP wrapper). ``forward`` returns (logits, DMR maps | None, LR-Net maps | None,
    slice positions | None); the shape autoencoder (``shape_ae``) is frozen, the discriminator
    lives outside (it has its own optimiser).

    The submodules are created in a fixed order (network, log-sigmas, LR-Net, position head,
    autoencoder), so a seeded run initialises them identically."""

    def __init__(
        self, model: nn.Module, seg_weight: float, dm_weight: float, regularizer: str = "none", base: int = 16
    ) -> None:
        super().__init__()
        self.model = model
        # s = log sigma, initialised so that 1/sigma equals the initial weights
        init = [-math.log(seg_weight), -math.log(dm_weight)]
        self.log_sigma = nn.Parameter(torch.tensor(init, dtype=torch.float32))
        self.lrnet = LRNet(N_CLASSES, width=base) if regularizer == "lrnet" else None
        self.position = PositionHead(base * 16) if regularizer in POSITION_REGULARIZERS else None
        self.shape_ae = ShapeAutoencoder(N_CLASSES, base=base) if regularizer in SHAPE_AE_REGULARIZERS else None
        if self.shape_ae is not None:
            self.shape_ae.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Any, Any, Any]:
        logits, dm, bottom = self.model.forward_train(x)  # type: ignore[operator]
        lr_maps = self.lrnet(torch.softmax(logits, dim=1)) if self.lrnet is not None else None
        position = self.position(bottom) if self.position is not None else None
        return logits, dm, lr_maps, position


def make_optimizer(cfg: TrainConfig, module: TrainModule) -> tuple[torch.optim.Optimizer, Any]:
    """The optimiser (RMSprop or AdamW at ``cfg.resolved_lr()``; the log-sigmas of the learned
    weighting at ``cfg.sigma_lr``) and its per-epoch schedule (x ``lr_decay`` for RMSprop,
    cosine to 1 % over ``cfg.epochs`` for AdamW)."""
    lr = cfg.resolved_lr()
    params: list[dict[str, Any]] = [
        {"params": [p for k, p in module.named_parameters() if p.requires_grad and k != "log_sigma"]}
    ]
    if cfg.dmr and cfg.weighting == "uncertainty":
        params.append({"params": [module.log_sigma], "lr": cfg.sigma_lr, "weight_decay": 0.0})
    if cfg.optimizer == "rmsprop":
        opt: torch.optim.Optimizer = torch.optim.RMSprop(params, lr=lr, weight_decay=cfg.weight_decay)
        return opt, torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)

    def cosine(e: int) -> float:
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(e, cfg.epochs) / cfg.epochs))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, cosine)


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file beside ``path``, renamed on success."""
    with atomic_path(Path(path)) as tmp:
        torch.save(obj, tmp)
