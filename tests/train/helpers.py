"""Helpers shared by the training tests (``from train.helpers import ...``; fixtures live in conftest.py)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from cardioseg.train import Callbacks, TrainConfig
from tests.test_dataset import write_acdc_tree

KW = {"in_channels": 1, "num_classes": 4, "base": 4, "depth": 4}  # the tiny runs' network
SLICES = (3, 4, 5, 4, 6)  # per patient of the multi-slice cache: frames of different slice counts


def tiny_cfg(cache: Path, out: Path, **kw: Any) -> TrainConfig:
    """A one-epoch run of a base-4 network on 32 px crops, 4 slices per batch."""
    return TrainConfig(**{"cache": str(cache), "out": str(out), "epochs": 1, "batch_size": 4, "crop_px": 32,
                          "base_width": 4, **kw})  # fmt: skip


def rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV log (``log.csv``, ``shape_ae_log.csv``)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def log_rows(out: Path) -> list[dict[str, str]]:
    return rows(out / "log.csv")


def logger(messages: list[str]) -> Callbacks:
    """Callbacks that collect the run's log lines in ``messages``."""
    return Callbacks(messages.append)


def write_multislice_tree(root: Path) -> Path:
    """ACDC-style phantom patients with SLICES[i] slices each (ED = frame 1, ES = frame 3)."""
    return write_acdc_tree(root, slices=SLICES)
