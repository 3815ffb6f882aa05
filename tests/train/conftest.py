"""Fixtures of the training tests: tiny phantom caches (built once per session) and a phantom
to predict on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from train.helpers import write_multislice_tree

from cardioseg.dataset import build_cache, find_frames
from cardioseg.phantom import PhantomSpec, make_phantom
from tests.test_dataset import TINY, write_acdc_tree


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 phantom patients (one per group), 64 x 64 px of 2.5 mm, 4 slices, ED + ES: 40 slices."""
    root = write_acdc_tree(tmp_path_factory.mktemp("data") / "acdc", n=5)
    return build_cache(find_frames(root), tmp_path_factory.mktemp("cache") / "cache", TINY)


@pytest.fixture(scope="session")
def multi_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 patients x (ED, ES), 3-6 slices of 64 x 64 px: 44 slices in 10 frames."""
    root = write_multislice_tree(tmp_path_factory.mktemp("data") / "multi")
    return build_cache(find_frames(root), tmp_path_factory.mktemp("cache") / "multi", TINY)


@pytest.fixture(scope="session")
def phantom() -> Any:
    return make_phantom(PhantomSpec(shape=(48, 40, 5), spacing_mm=(2.5, 2.5, 10.0), n_frames=3, seed=9))
