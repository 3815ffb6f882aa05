"""A fold in memory: the training samples (2D neighbour stacks, 3D frames), the padded batches
of frames a 3D network takes, and what ``load_training_data`` gathers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from train.helpers import SLICES, tiny_cfg

from cardioseg.errors import ConfigError
from cardioseg.labels import ACDC
from cardioseg.train.data import load_training_data, volume_batch


def test_volume_batch_pads_in_z_and_masks_the_padding() -> None:
    images = torch.arange(7, dtype=torch.float32)[:, None, None].repeat(1, 4, 4) + 1
    labels = torch.ones(7, 4, 4, dtype=torch.uint8)
    dist = torch.ones(7, 3, 4, 4)
    volumes = [np.array([0, 1, 2]), np.array([3, 4]), np.array([5, 6])]
    img, lab, dm, valid = volume_batch(volumes, np.array([1, 0]), images, labels, dist, 250.0)
    assert img.shape == lab.shape == (2, 3, 4, 4) and dm.shape == (2, 9, 4, 4)
    assert valid.tolist() == [[True, True, False], [True, True, True]]
    assert img[:, :, 0, 0].tolist() == [[4, 5, 0], [1, 2, 3]] and int(lab[0, 2].max()) == 0
    assert float(dm[0, 6:].max()) == -250.0 and float(dm[0, :6].min()) == 1.0


def test_training_data_of_a_2d_fold(tiny_cache: Path, tmp_path: Path) -> None:
    messages: list[str] = []
    data = load_training_data(tiny_cfg(tiny_cache, tmp_path, context_slices=3), messages.append)
    assert messages == [f"cache {tiny_cache}: 40 slices, 5 patients; fold 0: 32 training slices, 1 validation patients"]
    assert set(data.train_names).isdisjoint(data.val_names) and len(data.val_patients) == 1
    assert data.images.shape == (32, 64, 64) and data.images.dtype == torch.float32 and data.size_px == 64
    assert data.distmaps is None and data.class_weights is None and data.label_map == ACDC
    stacks = np.asarray(data.samples)
    assert stacks.shape == (32, 3) and np.array_equal(stacks[:, 1], np.arange(32))  # each slice is its stack's centre
    frames = [data.cache.index[int(data.train_slices[s])]["frame"] for s in stacks.ravel()]
    assert all(len(set(frames[k : k + 3])) == 1 for k in range(0, len(frames), 3))  # never across frames
    assert data.centres.shape == (32, 2) and float(data.positions.min()) >= 0 and float(data.positions.max()) <= 1
    weighted = load_training_data(tiny_cfg(tiny_cache, tmp_path, loss="explog", dmr=True), lambda m: None)
    assert weighted.class_weights is not None and weighted.class_weights.shape == (4,)
    assert weighted.distmaps is not None and weighted.distmaps.shape == (32, 3, 64, 64)


def test_training_data_of_a_3d_fold(multi_cache: Path, tmp_path: Path) -> None:
    messages: list[str] = []
    data = load_training_data(tiny_cfg(multi_cache, tmp_path, arch="unet3d"), messages.append)
    assert len(data.samples) == 8 and data.centres.shape == (8, 2)  # the 4 training patients' ED and ES
    assert sum(len(f) for f in data.samples) == len(data.train_slices)
    assert {len(f) for f in data.samples} <= set(SLICES)
    for frame in data.samples:  # one frame's slices, in slice order
        index = [data.cache.index[int(r)] for r in data.train_slices[frame]]
        assert len({r["frame"] for r in index}) == 1 and [int(r["slice"]) for r in index] == list(range(len(frame)))
    assert messages[-1].startswith("3D network: 8 training frames of ")


def test_a_fold_without_validation_patients(tiny_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="leaves no training or no validation patients"):
        load_training_data(tiny_cfg(tiny_cache, tmp_path, n_folds=6, fold=5), lambda m: None)
