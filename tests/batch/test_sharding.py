"""Sharding: --num-parts/--part-id and Slurm job arrays split a batch into disjoint parts."""

from __future__ import annotations

import pytest
from batch.helpers import FAST, CountRuns, error_lines, names, runner, summary_studies
from conftest import save_nifti

from cardioseg.batch import plan_studies, resolve_parts, shard, slurm_array
from cardioseg.cli import app
from cardioseg.errors import ConfigError


def test_parts_partition_the_studies_whatever_the_argument_order(tmp_path, small_phantom):
    for i in range(11):
        save_nifti(tmp_path / "data" / f"s{i:02d}.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    files = sorted((tmp_path / "data").iterdir())
    for n in (1, 2, 3, 4, 11, 15):
        forward = [names(shard(plan_studies(files, None, None), n, i)) for i in range(n)]
        backward = [names(shard(plan_studies(files[::-1], None, None), n, i)) for i in range(n)]
        assert [sorted(p) for p in forward] == [sorted(p) for p in backward]
        everything = [name for part in forward for name in part]
        assert sorted(everything) == [f"s{i:02d}" for i in range(11)]  # union = all, no overlap
        assert max(map(len, forward)) - min(map(len, forward)) <= 1  # balanced
    assert names(shard(plan_studies(files, None, None), 4, 1)) == ["s01", "s05", "s09"]


def test_slurm_array_outside_an_array():
    assert slurm_array({}) is None
    assert slurm_array({"SLURM_ARRAY_TASK_COUNT": "4"}) is None
    assert slurm_array({"SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "4"}) == (4, 3)


@pytest.mark.parametrize(
    ("env", "options", "expected"),
    [
        ({}, (None, None), (1, 0, False)),
        ({}, (3, 2), (3, 2, False)),
        ({"SLURM_ARRAY_TASK_COUNT": "10", "SLURM_ARRAY_TASK_ID": "3"}, (None, None), (10, 3, True)),
        ({"SLURM_ARRAY_TASK_COUNT": "10", "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "1"}, (None, None), (10, 0, True)),
        ({"SLURM_ARRAY_TASK_COUNT": "10", "SLURM_ARRAY_TASK_ID": "10", "SLURM_ARRAY_TASK_MIN": "1"}, (None, None), (10, 9, True)),
        ({"SLURM_ARRAY_TASK_COUNT": "5", "SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_MIN": "0",
          "SLURM_ARRAY_TASK_STEP": "2"}, (None, None), (5, 4, True)),
        ({"SLURM_ARRAY_TASK_COUNT": "10", "SLURM_ARRAY_TASK_ID": "3"}, (1, None), (1, 0, False)),  # splitting off
        ({"SLURM_ARRAY_TASK_COUNT": "10", "SLURM_ARRAY_TASK_ID": "3"}, (4, 2), (4, 2, False)),  # options win
        ({"SLURM_ARRAY_TASK_COUNT": "10", "SLURM_ARRAY_TASK_ID": "3"}, (5, None), (5, 3, True)),
        ({"SLURM_ARRAY_TASK_ID": "3"}, (None, None), (1, 0, False)),  # not an array without COUNT
    ],
)
def test_resolve_parts(env, options, expected):
    assert resolve_parts(*options, env) == expected


@pytest.mark.parametrize(
    ("env", "options", "needle"),
    [
        ({}, (3, 3), "outside 0..2"),
        ({}, (None, 1), "needs --num-parts"),
        ({}, (3, None), "needs --part-id"),
        ({"SLURM_ARRAY_TASK_COUNT": "10", "SLURM_ARRAY_TASK_ID": "10"}, (None, None), "SLURM_ARRAY_TASK_ID=10"),
        ({"SLURM_ARRAY_TASK_COUNT": "ten", "SLURM_ARRAY_TASK_ID": "1"}, (None, None), "SLURM_ARRAY_TASK_COUNT"),
    ],
)
def test_resolve_parts_errors(env, options, needle):
    with pytest.raises(ConfigError, match=needle):
        resolve_parts(*options, env)


@pytest.mark.parametrize(
    ("extra", "code", "needle"),
    [
        (["--num-parts", "3", "--part-id", "3"], 1, "outside 0..2"),
        (["--part-id", "1"], 1, "needs --num-parts"),
        (["--num-parts", "0", "--part-id", "0"], 2, "--num-parts"),
        (["--num-parts", "2", "--part-id", "-1"], 2, "--part-id"),
    ],
)
def test_invalid_parts_on_the_command_line(tmp_path, frames, extra, code, needle):
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(frames), "-o", str(out), *extra, *FAST])
    assert result.exit_code == code
    assert needle in result.stderr and "Traceback" not in result.stderr
    if code == 1:
        assert len(error_lines(result.stderr)) == 1
    assert not out.exists()


def test_slurm_array_parts_fill_one_summary(tmp_path, frames, small_phantom, tiny_weights_path, monkeypatch):
    """A 1-based array of 2 tasks (--array=1-2) writing into one folder: each task runs its
    share, and summary.csv ends with every study whichever part finished last."""
    save_nifti(frames / "d.nii.gz", small_phantom.image[..., 1], small_phantom.affine)
    out = tmp_path / "out"
    runs = CountRuns(monkeypatch)
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    ran = {}
    for task in ("2", "1"):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", task)
        runs.ran.clear()
        result = runner.invoke(app, ["predict", str(frames), "-o", str(out), "-w", str(tiny_weights_path), *FAST])
        assert result.exit_code == 0, result.stderr
        ran[task] = list(runs.ran)
    assert ran == {"1": ["a", "c"], "2": ["b", "d"]}
    assert summary_studies(out) == ["a", "b", "c", "d"]
