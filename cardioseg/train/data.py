"""The training data of one fold, in memory: the cache's training slices as tensors, the
samples drawn from them (2D neighbour stacks or 3D frames), their crop centres, and the batches
of padded frames a 3D network takes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cardioseg.dataset import Cache, load_cache
from cardioseg.errors import ConfigError
from cardioseg.labels import LabelMap, label_map_from_dict
from cardioseg.models.inputs import InputSpec
from cardioseg.train.augment import crop_centres
from cardioseg.train.config import N_CLASSES, WEIGHTED_LOSSES, TrainConfig
from cardioseg.train.losses import label_frequency_weights

__all__ = ["TrainData", "cache_label_map", "load_training_data", "training_samples", "volume_batch"]


def cache_label_map(cache: Cache) -> LabelMap:
    """What the integers of the cache's labels mean (stored in its ``meta.json``)."""
    return label_map_from_dict(cache.meta["label_map"], cache.meta.get("label_map_name", "custom"))


@dataclass
class TrainData:
    """One fold of a cache, ready to sample: the training slices' arrays (positions in
    ``train_slices`` index them), the samples as positions there, and the validation patients."""

    cache: Cache
    train_names: list[str]
    val_names: list[str]
    train_slices: np.ndarray  # rows of the cache
    spec: InputSpec
    truncation_px: float  # of the cache's distance maps
    label_map: LabelMap
    images: torch.Tensor  # (S, H, W) float32
    labels_np: np.ndarray  # (S, H, W)
    labels: torch.Tensor
    distmaps: torch.Tensor | None  # (S, 3, H, W) float32 px, when the config needs them
    samples: np.ndarray | list[np.ndarray]  # ``training_samples``
    centres: np.ndarray  # (n_samples, 2) label centres (NaN: no labels)
    positions: torch.Tensor  # (S,) slice positions in [0, 1] within the stack
    class_weights: torch.Tensor | None  # (4,) label-frequency weights for the losses that take them

    @property
    def val_patients(self) -> set[str]:
        return set(self.val_names)

    @property
    def size_px(self) -> int:
        return int(self.images.shape[-1])


def load_training_data(cfg: TrainConfig, log: Callable[[str], None]) -> TrainData:
    """Fold ``cfg.fold`` of the cache at ``cfg.cache``; raises ConfigError when the fold leaves
    no training or no validation patients."""
    cache = load_cache(Path(cfg.cache))
    train_names, val_names = cfg.split(cache)
    train_slices = cache.slices_of(set(train_names))
    if len(train_slices) == 0 or not (val_names or cfg.all_patients):
        raise ConfigError(
            f"fold {cfg.fold} leaves no training or no validation patients ({len(cache.patients)} patients)"
        )
    log(f"cache {cache.path}: {len(cache)} slices, {len(cache.patients)} patients; {'all' if cfg.all_patients else f'fold {cfg.fold}'}: "
        f"{len(train_slices)} training slices, {len(set(val_names))} validation patients")  # fmt: skip
    spec = cfg.input_spec()
    labels_np = np.asarray(cache.labels[train_slices])
    distmaps = None
    if cfg.needs_distmaps():
        distmaps = torch.from_numpy(np.asarray(cache.distmaps[train_slices], dtype=np.float32))
    samples = training_samples(cache, train_slices, spec)
    if spec.dims == 3:
        centres = crop_centres(np.stack([(labels_np[rows] > 0).any(axis=0) for rows in samples]))
        log(f"3D network: {len(samples)} training frames of {min(map(len, samples))}-{max(map(len, samples))} slices")
    else:
        centres = crop_centres(labels_np)
    class_weights = None
    if cfg.loss in WEIGHTED_LOSSES:
        class_weights = torch.from_numpy(label_frequency_weights(labels_np, N_CLASSES)).float()
    return TrainData(
        cache=cache,
        train_names=train_names,
        val_names=val_names,
        train_slices=train_slices,
        spec=spec,
        truncation_px=float(cache.meta["distance_truncation_px"]),
        label_map=cache_label_map(cache),
        images=torch.from_numpy(np.asarray(cache.images[train_slices], dtype=np.float32)),
        labels_np=labels_np,
        labels=torch.from_numpy(labels_np),
        distmaps=distmaps,
        samples=samples,
        centres=centres,
        positions=torch.tensor([float(cache.index[i]["position"]) for i in train_slices]),
        class_weights=class_weights,
    )


def training_samples(cache: Cache, train_slices: np.ndarray, spec: InputSpec) -> np.ndarray | list[np.ndarray]:
    """The training samples as positions in ``train_slices`` (whose arrays are in memory):
    2D, (n_slices, context_slices) neighbour stacks of each slice (its frame's slices around
    it, edges replicated); 3D, one array per frame of its slices in order."""
    where = np.full(len(cache), -1, dtype=np.int64)
    where[train_slices] = np.arange(len(train_slices))
    if spec.dims == 3:
        return [where[rows] for rows in cache.frame_rows(train_slices)]
    return where[cache.context_rows(train_slices, spec.context_slices)]


def volume_batch(
    volumes: list[np.ndarray],
    idx: np.ndarray,
    images: torch.Tensor,
    labels: torch.Tensor,
    distmaps: torch.Tensor | None,
    truncation: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Frames ``idx`` as (B, D, H, W) images and labels and (B, D * K, H, W) distance maps (or
    None), padded in z to the longest with zero images, background labels and absent-structure
    maps; and the (B, D) mask of real slices (the loss ignores the others)."""
    depth = max(len(volumes[v]) for v in idx)
    b, (h, w) = len(idx), images.shape[-2:]
    img = images.new_zeros((b, depth, h, w))
    lab = labels.new_zeros((b, depth, h, w))
    valid = torch.zeros((b, depth), dtype=torch.bool)
    dm = None if distmaps is None else distmaps.new_full((b, depth, *distmaps.shape[1:]), -truncation)
    for k, v in enumerate(idx):
        rows = torch.from_numpy(volumes[v])
        img[k, : len(rows)], lab[k, : len(rows)], valid[k, : len(rows)] = images[rows], labels[rows], True
        if dm is not None and distmaps is not None:
            dm[k, : len(rows)] = distmaps[rows]
    return img, lab, (dm.flatten(1, 2) if dm is not None else None), valid
