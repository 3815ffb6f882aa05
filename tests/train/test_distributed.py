"""Distributed training: ``torchrun`` with two processes (slow: a subprocess), and the
helpers with which the command sets up threads and the process group."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT as REPO
from train.helpers import log_rows

from cardioseg.train.distributed import init_process_group, process_group, set_threads


@pytest.mark.slow
def test_torchrun_two_processes(tiny_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "cardioseg", "train", str(tiny_cache), "-o", str(out), "--no-dmr", "--epochs", "1", "--batch-size", "4",
           "--crop-px", "32", "--base-width", "4", "-q"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "unet2d-acdc-fold0.pt").is_file() and str(out / "unet2d-acdc-fold0.pt") in proc.stdout
    assert [r["epoch"] for r in log_rows(out)] == ["1"]


def test_outside_torchrun_nothing_is_initialised(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_process_group() == (0, 1) and not dist.is_initialized()
    assert process_group() == (0, 1)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_process_group() == (0, 1) and not dist.is_initialized()


def test_process_group_reads_an_initialised_group(tmp_path: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert process_group() == (0, 1)
    finally:
        dist.destroy_process_group()


def test_set_threads_zero_keeps_the_default() -> None:
    before = torch.get_num_threads()
    set_threads(0)
    assert torch.get_num_threads() == before
    try:
        set_threads(2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
