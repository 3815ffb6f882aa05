"""Atomic writing and the temporary-file naming scheme."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cardioseg.io import atomic_path, temp_target, write_text_atomic


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_path_leaves_nothing_on_exception(tmp_path):
    final = tmp_path / "sub" / "result.nii.gz"
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        assert tmp.parent == final.parent and tmp != final
        tmp.write_bytes(b"half written")
        raise RuntimeError("boom")
    assert not final.exists()
    assert _listing(final.parent) == []


def test_atomic_path_does_not_clobber_an_existing_file_on_failure(tmp_path):
    final = tmp_path / "report.json"
    final.write_text("old")
    with pytest.raises(KeyError), atomic_path(final) as tmp:
        tmp.write_text("new, partial")
        raise KeyError("x")
    assert final.read_text() == "old"
    assert _listing(tmp_path) == ["report.json"]


def test_atomic_path_success_and_write_text_atomic(tmp_path):
    final = tmp_path / "a.txt"
    with atomic_path(final) as tmp:
        tmp.write_text("hello")
        assert not final.exists()
    assert final.read_text() == "hello"
    write_text_atomic("again", str(final))  # str paths too
    assert final.read_text() == "again"
    assert _listing(tmp_path) == ["a.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert final.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_atomic_path_serves_any_writer(tmp_path):
    """The temporary name keeps the final name's ending, so writers that pick a format (or add an
    ending) by name write what the final name says."""
    final = tmp_path / "arr.npy"
    with atomic_path(final) as tmp:
        assert tmp.name.endswith(".tmp.npy")
        np.save(tmp, np.arange(3))
    assert np.array_equal(np.load(final), np.arange(3)) and _listing(tmp_path) == ["arr.npy"]


@pytest.mark.parametrize(
    "name", ["X_seg.nii.gz", "X_report.json", "summary.csv", "model.pt", "noext", "a.tmp", "case.v2.nii", ".hidden"]
)
def test_temp_target_round_trip(tmp_path, name):
    """Every temp file atomic_path makes names the file it is for, while it exists."""
    final = tmp_path / name
    with atomic_path(final) as tmp:
        assert tmp.name.startswith(".") and temp_target(tmp.name) == name
    assert temp_target(final.name) is None


@pytest.mark.parametrize(
    "name", ["X_seg.nii.gz", ".X_seg.nii.gz", ".X_seg.nii.gz.tmp", ".X_seg.nii.gz.abc.tmp.json", ".cardioseg-write-test-x"]
)
def test_temp_target_of_other_names_is_none(name):
    assert temp_target(name) is None
