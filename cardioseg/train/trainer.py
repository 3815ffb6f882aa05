"""The training loop, step by step: ``Trainer`` (setup, train_step, train_epoch, validate,
checkpoint, export) and ``train``, which runs them all for one fold.

Runs resume from ``OUT/last.pt``. In an initialised ``torch.distributed`` process group (the
command sets it up under ``torchrun``, ``cardioseg.train.distributed``) each rank trains a
shard of every batch through DistributedDataParallel; rank 0 validates, saves and exports.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from cardioseg.errors import ConfigError
from cardioseg.models import build_model
from cardioseg.models.regularizers import Discriminator
from cardioseg.train import validation
from cardioseg.train.augment import FAR_FRACTION, FAR_MARGIN_PX, augment_batch, intensity_augment, jitter_centres
from cardioseg.train.callbacks import Callbacks, TrainCallbacks
from cardioseg.train.config import (
    LOG_COLUMNS,
    LOSS_COLUMNS,
    N_CLASSES,
    REG_COLUMNS,
    TrainConfig,
    architecture,
)
from cardioseg.train.data import TrainData, load_training_data, volume_batch
from cardioseg.train.distributed import default_device, process_group
from cardioseg.train.export import export_run
from cardioseg.train.init import INIT_FILE, load_initial_weights
from cardioseg.train.losses import discriminator_loss, multitask_loss, onehot, segmentation_loss
from cardioseg.train.model import TrainModule, make_optimizer, save_atomic
from cardioseg.train.shape_prior import pretrain_shape_autoencoder, regularizer_terms

__all__ = ["Trainer", "train"]

_UNCHECKED_ON_RESUME = {"epochs", "threads", "out", "cache", "val_every"}  # may change when a run resumes


class Trainer:
    """One training run of ``cfg`` in ``cfg.out``.

    ``run()`` does everything; the steps are public so that a script (or a test) can drive
    them: ``setup()`` (data, model, optimiser, resume), then per epoch ``train_epoch(epoch)``
    (``train_step`` per batch), ``validate(epoch)`` and ``checkpoint(epoch, val)``, and at the
    end ``export()``. ``rank`` and ``world`` default to the initialised process group's;
    ``device`` to this process's GPU, else the CPU.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        resume: bool = False,
        callbacks: TrainCallbacks | None = None,
        *,
        rank: int | None = None,
        world: int | None = None,
        device: str | None = None,
    ) -> None:
        group_rank, group_world = process_group()
        self.cfg, self.resume = cfg, resume
        self.callbacks: TrainCallbacks = callbacks if callbacks is not None else Callbacks()
        self.rank = group_rank if rank is None else rank
        self.world = group_world if world is None else world
        self.device = device or default_device()
        self.device_type = self.device.split(":")[0]
        self.out = Path(cfg.out)
        self.state_path, self.best_path = self.out / "last.pt", self.out / "best.pt"
        self.log_path, self.config_path = self.out / "log.csv", self.out / "config.json"
        self.start_epoch = 0
        self.best: dict[str, Any] = {"dice_mean": -1.0}

    # ------------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Check the config and the run folder, load the fold's data, build the networks and
        optimisers, restore ``last.pt`` when resuming, start the run folder, pre-train the
        shape autoencoder if the regulariser needs one, and wrap for DDP."""
        self.cfg.check()
        self._check_run_folder()
        self.data: TrainData = load_training_data(self.cfg, self.callbacks.on_log)
        self._build()
        init = None
        if self.resume and self.state_path.is_file():
            self._load_state()
        elif self.cfg.init:  # fine-tuning: the network starts from trained weights
            init = load_initial_weights(self.cfg, self.data, self.model)
            self.callbacks.on_log(f"network initialised from {init['name']} (sha256 {init['sha256'][:12]}...)")
        if self.rank == 0:
            self._start_run_folder()
            if init is not None:
                (self.out / INIT_FILE).write_text(json.dumps(init, indent=2) + "\n")
        if self.module.shape_ae is not None and self.start_epoch == 0:
            self._load_shape_prior()
        self.net: Any = self.module
        self.disc_net: Any = self.disc
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device] if self.device_type == "cuda" else None
            self.net = DistributedDataParallel(self.module, device_ids=ids)
            self.disc_net = DistributedDataParallel(self.disc, device_ids=ids) if self.disc is not None else None
        self.per_rank_batch = max(1, math.ceil(self.cfg.batch_size / self.world))
        self.steps = max(1, len(self.data.samples) // (self.per_rank_batch * self.world))

    def _check_run_folder(self) -> None:
        """A run folder is continued only with ``resume`` and the settings it was made with."""
        out, cfg = self.out, self.cfg
        if self.state_path.is_file() and not self.resume:
            raise ConfigError(
                f'"{out}" already holds a training run; pass --resume to continue it or choose another --out'
            )
        if self.resume and self.config_path.is_file():
            before = json.loads(self.config_path.read_text())
            defaults = asdict(TrainConfig(cache="", out=""))  # settings added since the run was made
            changed = sorted(k for k, v in asdict(cfg).items()
                             if k not in _UNCHECKED_ON_RESUME and before.get(k, defaults[k]) != v)  # fmt: skip
            if changed:
                raise ConfigError(f'cannot resume "{out}" with different settings: {", ".join(changed)}')

    def _build(self) -> None:
        """The network (seeded), the train module, the optimiser and the GAN's discriminator."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        arch = architecture(cfg)
        self.model = build_model(arch["name"], **arch["kwargs"])
        module = TrainModule(self.model, cfg.seg_weight, cfg.dm_weight, cfg.regularizer, cfg.base_width)
        memory_format = torch.channels_last if self.data.spec.dims == 2 else torch.contiguous_format
        self.module = module.to(self.device).to(memory_format=memory_format)  # type: ignore[call-overload]  # not in torch's stubs
        self.reg_weight = cfg.resolved_reg_weight()
        self.opt, self.sched = make_optimizer(cfg, self.module)
        self.disc: Discriminator | None = None
        self.opt_disc: torch.optim.Optimizer | None = None
        if cfg.regularizer == "gan":
            self.disc = Discriminator(N_CLASSES, base=cfg.base_width).to(self.device)
            self.opt_disc = torch.optim.Adam(self.disc.parameters(), lr=cfg.resolved_lr(), betas=(0.5, 0.999))

    def _load_state(self) -> None:
        state = torch.load(self.state_path, map_location=self.device, weights_only=True)
        self.module.load_state_dict(state["module"])  # the frozen shape autoencoder included
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        if self.disc is not None and self.opt_disc is not None:
            self.disc.load_state_dict(state["disc"])
            self.opt_disc.load_state_dict(state["opt_disc"])
        self.start_epoch, self.best = int(state["epoch"]) + 1, json.loads(state["best"])
        self.callbacks.on_log(f"resumed at epoch {self.start_epoch}, best so far {self.best['dice_mean']:.4f}")

    def _start_run_folder(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(asdict(self.cfg), indent=2) + "\n")
        if self.start_epoch == 0:
            with open(self.log_path, "w", newline="") as f:
                csv.writer(f).writerow(LOG_COLUMNS)

    def _load_shape_prior(self) -> None:
        """Rank 0 pre-trains the shape autoencoder (or finds it pre-trained); every rank loads it."""
        d = self.data
        if self.rank == 0:
            pretrain_shape_autoencoder(self.cfg, d.images[:, None], d.labels, d.centres, self.device, self.resume,
                                       self.callbacks.on_log)  # fmt: skip
        self._barrier()
        shape_state = torch.load(self.out / "shape_ae.pt", map_location=self.device, weights_only=True)
        assert self.module.shape_ae is not None  # the caller checked
        self.module.shape_ae.load_state_dict(shape_state["model"])

    def _barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    # ------------------------------------------------------------------------ training

    def train_epoch(self, epoch: int) -> tuple[np.ndarray, float]:
        """One pass over this rank's share of the training samples (0-based ``epoch``), in an
        order and with transforms drawn from (seed, epoch[, rank]). Returns the mean of each
        ``LOSS_COLUMNS`` term over the steps and the seconds it took."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, epoch, self.rank])
        torch.manual_seed(cfg.seed * 100003 + epoch * 101 + self.rank)
        order = self.epoch_order(epoch)
        self.module.train()
        t0 = time.time()
        sums = np.zeros(len(LOSS_COLUMNS))
        self.callbacks.on_epoch_start(epoch + 1, cfg.epochs, self.steps)
        for step in range(self.steps):
            idx = order[step * self.per_rank_batch : (step + 1) * self.per_rank_batch]
            terms = self.train_step(idx, rng)
            sums += [float(terms[k].detach()) if k in terms else 0.0 for k in LOSS_COLUMNS]
            self.callbacks.on_step()
        self.sched.step()
        return sums / self.steps, time.time() - t0

    def epoch_order(self, epoch: int) -> np.ndarray:
        """This rank's samples of an epoch, drawn from (seed, epoch): a permutation of all of them,
        or with ``hard_slices`` != 1 as many drawn with replacement, the basal and apical slices
        (position <= 0.2 or >= 0.8 in their stack) with that weight against the others."""
        cfg, n = self.cfg, len(self.data.samples)
        draw = np.random.default_rng([cfg.seed, epoch])
        if cfg.hard_slices == 1.0:
            return draw.permutation(n)[self.rank :: self.world]
        stacks = np.asarray(self.data.samples)
        position = self.data.positions.numpy()[stacks[:, stacks.shape[1] // 2]]
        weight = np.where((position <= 0.2) | (position >= 0.8), cfg.hard_slices, 1.0)
        return draw.choice(n, size=n, p=weight / weight.sum())[self.rank :: self.world]

    def train_step(self, idx: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
        """One optimisation step on the samples ``idx`` (then the discriminator's, for the
        GAN): random crops and transforms from ``rng``, the segmentation loss, the DMR term
        (Eq. 7 or fixed weights) and the regulariser's terms. Returns the terms by log column."""
        cfg = self.cfg
        c = jitter_centres(self.data.centres[idx], self.data.size_px, cfg.crop_px, rng, FAR_FRACTION, FAR_MARGIN_PX)
        x, y, dmaps, pos, valid = self._batch(idx, c, rng)
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            outputs = self.net(x)
            terms = regularizer_terms(cfg, self.module, self.disc, outputs, y, dmaps, pos)
        logits, dm_pred = outputs[:2]
        if valid is not None:  # the real slices of the frames, as a batch of 2D slices
            keep = valid.flatten().to(self.device)
            logits, y = logits.transpose(1, 2).flatten(0, 1)[keep], y.flatten(0, 1)[keep]
            if dmaps is not None:
                dmaps = dmaps.unflatten(1, (valid.shape[1], -1)).flatten(0, 1)[keep]
        seg = segmentation_loss(cfg.loss, logits, y, distmaps=dmaps, class_weights=self.data.class_weights)
        if cfg.dmr:
            assert dmaps is not None  # needs_distmaps()
            mad = (dm_pred.float() - dmaps / cfg.dm_unit_px).abs().mean()
            loss = multitask_loss(seg, mad, self.module.log_sigma, cfg.weighting, cfg.seg_weight, cfg.dm_weight)
            mad = mad * cfg.dm_unit_px  # logged in pixels
        else:
            mad = torch.zeros(())
            loss = seg + 0.0 * self.module.log_sigma.sum()  # keeps DDP's gradient bookkeeping uniform
        for key, term in terms.items():
            loss = loss + (cfg.position_weight if key == "position_loss" else self.reg_weight) * term
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.disc_net is not None:
            terms["disc_loss"] = self._discriminator_step(y, logits)
        terms.update(loss=loss, seg_loss=seg, dm_loss=mad)
        return terms

    def _batch(self, idx: np.ndarray, centres: np.ndarray, rng: np.random.Generator) -> tuple[Any, Any, Any, Any, Any]:
        """The augmented batch of samples ``idx`` on the device: (x, labels, distance maps |
        None, slice positions, the (B, D) mask of real slices of a 3D batch | None)."""
        cfg, d, device = self.cfg, self.data, self.device
        valid = None
        if d.spec.dims == 3:  # (B, D, H, W) frames, padded in z; the net takes (B, 1, D, H, W)
            frames = cast(list[np.ndarray], d.samples)
            img, lab, dm, valid = volume_batch(frames, idx, d.images, d.labels, d.distmaps, d.truncation_px)
            batch = augment_batch(img, lab, centres, cfg.crop_px, rng, dm, d.truncation_px, self.scales)
            x = self._intensity(batch[0], rng)[:, None].to(device)
            pos = torch.zeros(len(idx), device=device)  # no slice positions (no 3D regulariser)
        else:  # (B, context_slices, H, W) neighbour stacks of the centre slices idx
            stacks = cast(np.ndarray, d.samples)
            batch = augment_batch(d.images[stacks[idx]], d.labels[idx], centres, cfg.crop_px, rng,
                                  d.distmaps[idx] if d.distmaps is not None else None, d.truncation_px, self.scales)  # fmt: skip
            x = self._intensity(batch[0], rng).to(device).contiguous(memory_format=torch.channels_last)
            pos = d.positions[idx].to(device)
        y = batch[1].to(device)
        dmaps = batch[2].to(device) if d.distmaps is not None else None
        return x, y, dmaps, pos, valid

    @property
    def scales(self) -> tuple[float, float]:
        return (self.cfg.scale_min, self.cfg.scale_max)

    def _intensity(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """``cfg.intensity_aug`` > 0: :func:`intensity_augment` (no random draws otherwise)."""
        return intensity_augment(images, rng, self.cfg.intensity_aug) if self.cfg.intensity_aug > 0 else images

    def _discriminator_step(self, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The GAN discriminator's step: references real, segmentations fake. Returns its loss."""
        assert self.opt_disc is not None  # made with the discriminator
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            both = torch.cat([onehot(y, N_CLASSES), torch.softmax(logits.detach().float(), dim=1)])
            real, fake = self.disc_net(both).float().chunk(2)
        loss = discriminator_loss(real, fake)
        self.opt_disc.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_disc.step()
        return loss

    # ------------------------------------------------------------------------ validation, checkpoints

    def validate(self, epoch: int) -> dict[str, float]:
        """Model-space Dice on the validation patients (``validation.validate``) when epoch
        ``epoch`` (0-based) is due (every ``val_every`` and the last) on rank 0; else {}."""
        cfg = self.cfg
        if self.rank != 0 or cfg.all_patients or not ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
            return {}
        d = self.data
        return validation.validate(self.model, d.cache, d.val_patients, self.device, d.spec, d.label_map)

    def checkpoint(self, epoch: int, val: dict[str, float]) -> None:
        """``best.pt`` when ``val`` beats the best so far, then ``last.pt`` (everything a resume
        needs), each written atomically. Trained on every patient (no validation) or with
        ``keep == "last"`` (cross-validation: no checkpoint chosen on the held-out patients),
        ``best.pt`` is the last epoch's model."""
        if (val and val["dice_mean"] > self.best["dice_mean"]) or self.cfg.exports_last_epoch:
            self.best = {"dice_mean": -1.0, **val, "epoch": epoch + 1}
            save_atomic({"model": self.model.state_dict(), "best": json.dumps(self.best)}, self.best_path)
        state = {"module": self.module.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                 "epoch": epoch, "best": json.dumps(self.best)}  # fmt: skip
        if self.disc is not None and self.opt_disc is not None:
            state.update(disc=self.disc.state_dict(), opt_disc=self.opt_disc.state_dict())
        save_atomic(state, self.state_path)

    def log_epoch(self, epoch: int, mean: np.ndarray, seconds: float, val: dict[str, float]) -> dict[str, str]:
        """Append the epoch's row to ``log.csv`` (in the columns the file has: a run resumed from
        an older version keeps its own) and report it and a summary line; returns the row."""
        sigma = torch.exp(self.module.log_sigma.detach()).tolist()
        losses_text = [f"{v:.3f}" if k == "dm_loss" else f"{v:.4g}" if k in REG_COLUMNS else f"{v:.4f}"
                       for k, v in zip(LOSS_COLUMNS, mean)]  # fmt: skip
        values = [str(epoch + 1), *losses_text, f"{sigma[0]:.4f}", f"{sigma[1]:.4f}", f"{self.sched.get_last_lr()[0]:.3e}",
                  f"{seconds:.1f}", f"{val.get('dice_mean', float('nan')):.4f}", json.dumps(val)]  # fmt: skip
        row = dict(zip(LOG_COLUMNS, values))
        with open(self.log_path, newline="") as f:
            header = next(csv.reader(f), list(LOG_COLUMNS))
        with open(self.log_path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in header])
        self.callbacks.on_epoch_end(row)
        reg_text = "".join(f", {k[:-5]} {v:.4g}" for k, v in zip(LOSS_COLUMNS, mean) if k in REG_COLUMNS and v)
        self.callbacks.on_log(
            f"epoch {epoch + 1}/{self.cfg.epochs} loss {mean[0]:.4f} (seg {mean[1]:.4f}, dm {mean[2]:.2f}{reg_text}) "
            f"{seconds:.0f}s" + (f" val dice {val['dice_mean']:.4f} (best {self.best['dice_mean']:.4f})" if val else "")
        )
        return row

    def export(self) -> Path:
        """Rank 0: the best checkpoint as shipped weights (``export_run``); other ranks: their path."""
        if self.rank != 0:
            return self.out / f"{self.cfg.weights_name()}.pt"
        return export_run(self.cfg, self.callbacks.on_log)

    def run(self) -> Path:
        """Set up, train the remaining epochs (validate, checkpoint, log each) and export."""
        self.setup()
        for epoch in range(self.start_epoch, self.cfg.epochs):
            mean, seconds = self.train_epoch(epoch)
            val = self.validate(epoch)
            if self.rank == 0:
                self.checkpoint(epoch, val)
                self.log_epoch(epoch, mean, seconds, val)
            self._barrier()
        return self.export()


def train(
    cfg: TrainConfig,
    resume: bool = False,
    callbacks: TrainCallbacks | None = None,
    *,
    rank: int | None = None,
    world: int | None = None,
    device: str | None = None,
) -> Path:
    """Train one fold (resuming from ``OUT/last.pt`` when ``resume``); returns the exported weights.

    Progress and log lines go to ``callbacks`` (``Callbacks(print)`` prints the log). Thread
    count and process group are the caller's (``cardioseg.train.distributed``). Raises
    ConfigError if OUT already holds a run and ``resume`` is False, or if the run there was made
    with a different configuration.
    """
    return Trainer(cfg, resume, callbacks, rank=rank, world=world, device=device).run()
