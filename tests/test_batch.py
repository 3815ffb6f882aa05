"""Batches: glob patterns and folders expanded into studies, resume (--skip-existing), sharding
(--num-parts/--part-id, Slurm job arrays), one summary.csv per folder, read-ahead of the next
study, and a run killed half-way (kill -9) that a rerun finishes."""

from __future__ import annotations

import csv
import json
import locale
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, save_nifti
from test_dicom import write_dicom_series
from test_inference import CountingModel
from typer.testing import CliRunner

from cardioseg import pipeline
from cardioseg.cli import app
from cardioseg.errors import ConfigError, InputFileNotFoundError
from cardioseg.pipeline import (
    StudyOptions,
    folder_contents,
    plan_studies,
    resolve_parts,
    run_predict,
    shard,
    split_finished,
)
from cardioseg.report import write_summary

runner = CliRunner()
FAST = ["--device", "cpu", "--precision", "fp32", "--quiet"]
SLURM_VARS = ("SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP")


@pytest.fixture(autouse=True)
def _no_slurm(monkeypatch):
    """The tests set the Slurm variables themselves (and must not be split when run in an array)."""
    for var in SLURM_VARS:
        monkeypatch.delenv(var, raising=False)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def summary_studies(out: Path) -> list[str]:
    with open(out / "summary.csv", newline="") as f:
        return [row["study"] for row in csv.DictReader(f)]


def names(studies) -> list[str]:
    return [s.name for s in studies]


@pytest.fixture
def frames(tmp_path, small_phantom) -> Path:
    """``data/`` with three 3D frames a, b, c (fast to segment), a mask and a label map to skip."""
    data = tmp_path / "data"
    for i, name in enumerate("abc"):
        save_nifti(data / f"{name}.nii.gz", small_phantom.image[..., 2 * i], small_phantom.affine)
    save_nifti(data / "a_seg.nii.gz", small_phantom.labels[..., 0].astype(np.uint8), small_phantom.affine)
    save_nifti(data / "b_gt.nii", small_phantom.labels[..., 0].astype(np.uint8), small_phantom.affine)
    (data / "notes.txt").write_text("not an image")
    (data / ".a.nii.gz.x1y2.tmp.nii.gz").write_bytes(b"hidden temp")
    return data


def patient_folder(root: Path, name: str, phantom, cine: bool = False) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "Info.cfg").write_text("ED: 1\nES: 3\nGroup: NOR\nHeight: 170\nWeight: 70\n")
    if cine:
        save_nifti(folder / f"{name}_4d.nii.gz", phantom.image[..., :4], phantom.affine)
    else:
        save_nifti(folder / f"{name}_frame01.nii.gz", phantom.image[..., 0], phantom.affine)
        save_nifti(folder / f"{name}_frame03.nii.gz", phantom.image[..., 2], phantom.affine)
    save_nifti(folder / f"{name}_frame01_gt.nii.gz", phantom.labels[..., 0].astype(np.uint8), phantom.affine)
    return folder


class CountRuns:
    """Wraps ``pipeline.run_study`` and records the studies it ran."""

    def __init__(self, monkeypatch) -> None:
        self.ran: list[str] = []
        real = pipeline.run_study

        def counted(study, *args, **kwargs):
            self.ran.append(study.name)
            return real(study, *args, **kwargs)

        monkeypatch.setattr(pipeline, "run_study", counted)


# ---------------------------------------------------------------------------- expansion


def test_glob_patterns_are_expanded_sorted_and_recursive(frames, small_phantom):
    save_nifti(frames / "deep" / "er" / "d_4d.nii.gz", small_phantom.image, small_phantom.affine)
    assert names(plan_studies([frames / "*.nii.gz"], None, None)) == ["a", "b", "c"]  # masks skipped
    assert names(plan_studies([frames / "**" / "*.nii.gz"], None, None)) == ["a", "b", "c", "d_4d"]
    assert names(plan_studies([frames / "**" / "*_4d.nii.gz"], None, None)) == ["d_4d"]
    assert names(plan_studies([frames / "[bc].nii.gz"], None, None)) == ["b", "c"]
    # a pattern and a folder reaching the same files give each study once
    assert names(plan_studies([frames / "c.nii.gz", frames, frames / "?.nii.gz"], None, None)) == ["c", "a", "b"]
    with pytest.raises(InputFileNotFoundError, match="matches nothing"):
        plan_studies([frames / "*.nii.xz"], None, None)
    with pytest.raises(InputFileNotFoundError, match="masks"):
        plan_studies([frames / "*_seg.nii.gz"], None, None)


def test_pattern_matching_nothing_exit_1_one_line(tmp_path, frames):
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(frames / "*.dcm"), "-o", str(out), *FAST])
    assert result.exit_code == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "matches nothing" in lines[0] and "*.dcm" in lines[0]
    assert not out.exists()


def test_folder_of_niftis(frames):
    assert folder_contents(frames) == [frames / "a.nii.gz", frames / "b.nii.gz", frames / "c.nii.gz"]
    studies = plan_studies([frames], None, None)
    assert names(studies) == ["a", "b", "c"] and {s.kind for s in studies} == {"single"}


def test_folder_of_patient_folders(tmp_path, small_phantom):
    root = tmp_path / "acdc"
    patient_folder(root, "patient002", small_phantom, cine=True)
    patient_folder(root, "patient001", small_phantom)
    (root / "MANDATORY_CITATION.md").write_text("cite")
    (root / "empty_dir").mkdir()
    studies = plan_studies([root], None, None)
    assert names(studies) == ["patient001", "patient002"]
    assert [s.kind for s in studies] == ["pair", "cine"]
    assert studies[1].ed_frame == 0 and studies[1].es_frame == 2 and studies[0].group == "NOR"
    # a patient folder itself stays one study
    assert names(plan_studies([root / "patient001"], None, None)) == ["patient001"]


def write_series(folder: Path, data: np.ndarray) -> None:
    """``write_dicom_series``, restoring the process locale that GDCM's writer leaves at "C"
    (later tests in this process decode subprocess output as UTF-8)."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        write_dicom_series(folder, data, pixel_spacing=(2.5, 2.5), slice_gap_mm=10.0)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def test_dicom_series_folder_stays_one_study(tmp_path, small_phantom):
    data = np.clip(small_phantom.image[..., :2], 0, 4000).astype(np.int16)
    series = tmp_path / "dicom" / "sax"
    write_series(series, data)
    assert folder_contents(series) is None
    assert [(s.name, s.paths) for s in plan_studies([series], None, None)] == [("sax", (series,))]
    # a study folder whose only content is one series sub-folder is that study too
    assert [(s.name, s.paths) for s in plan_studies([tmp_path / "dicom"], None, None)] == [("dicom", (tmp_path / "dicom",))]
    # ... but a folder of several series folders (and images) is a batch of them
    write_series(tmp_path / "dicom" / "sax2" / "nested", data)
    save_nifti(tmp_path / "dicom" / "frame.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    studies = plan_studies([tmp_path / "dicom"], None, None)
    assert [(s.name, s.paths[0].name) for s in studies] == [("frame", "frame.nii.gz"), ("sax", "sax"), ("sax2", "sax2")]


def test_planning_reads_no_image(frames, monkeypatch):
    import nibabel as nib

    monkeypatch.setattr(nib, "load", lambda *a, **k: pytest.fail("an image was opened while planning"))
    monkeypatch.setattr(pipeline, "read_volume", lambda *a, **k: pytest.fail("an image was read while planning"))
    assert len(plan_studies([frames, frames / "*.nii.gz"], None, None)) == 3


def test_two_inputs_with_the_same_outputs_exit_1(tmp_path, small_phantom):
    for sub in ("site1", "site2"):
        save_nifti(tmp_path / "data" / sub / "x.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(tmp_path / "data" / "*" / "x.nii.gz"), "-o", str(out), *FAST])
    assert result.exit_code == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "same output" in lines[0] and "site1" in lines[0] and "site2" in lines[0]
    assert not out.exists()


def test_a_broken_patient_folder_in_a_batch_fails_alone(tmp_path, small_phantom, tiny_weights_path):
    root = tmp_path / "acdc"
    patient_folder(root, "patient001", small_phantom)
    broken = patient_folder(root, "patient002", small_phantom)
    (broken / "patient002_frame03.nii.gz").unlink()
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(root), "-o", str(out), "-w", str(tiny_weights_path), *FAST])
    assert result.exit_code == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("cardioseg: error: patient002:") and "missing" in lines[0]
    assert summary_studies(out) == ["patient001"]
    # named on its own, the same folder is a usage error before anything runs
    result = runner.invoke(app, ["predict", str(broken), "-o", str(tmp_path / "out2"), *FAST])
    assert result.exit_code == 1 and not (tmp_path / "out2").exists()


# ---------------------------------------------------------------------------- resume


def test_skip_existing_resumes_a_batch(tmp_path, frames, tiny_weights_path, monkeypatch):
    out = tmp_path / "out"
    args = ["predict", str(frames), "-o", str(out), "-w", str(tiny_weights_path), *FAST]
    runs = CountRuns(monkeypatch)
    assert runner.invoke(app, args).exit_code == 0
    assert runs.ran == ["a", "b", "c"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{n}_{kind}" for n in "abc" for kind in ("seg.nii.gz", "report.json")] + ["summary.csv"]
    )

    runs.ran.clear()  # a second run recomputes nothing (and does not even load the model)
    monkeypatch.setattr("cardioseg.weights.load_weights", lambda *a: pytest.fail("the model was loaded"))
    result = runner.invoke(app, args[:-1])  # not --quiet: the note is printed
    assert result.exit_code == 0, result.stderr
    assert runs.ran == [] and "3 of 3 studies done before, skipped" in result.stderr
    assert summary_studies(out) == ["a", "b", "c"]
    monkeypatch.undo()
    runs = CountRuns(monkeypatch)

    # a study with its mask but no report (killed before the report) is not finished
    (out / "b_report.json").unlink()
    assert (out / "b_seg.nii.gz").exists()
    assert runner.invoke(app, args).exit_code == 0
    assert runs.ran == ["b"] and summary_studies(out) == ["a", "b", "c"]
    # ... nor one with its report but a mask missing, nor one with an unreadable report
    (out / "a_seg.nii.gz").unlink()
    (out / "c_report.json").write_text("{ truncated")
    runs.ran.clear()
    assert runner.invoke(app, args).exit_code == 0
    assert runs.ran == ["a", "c"]
    assert json.loads((out / "c_report.json").read_text())["study"] == "c"

    runs.ran.clear()  # --overwrite recomputes everything
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert runs.ran == ["a", "b", "c"]


def test_single_study_is_recomputed_unless_skip_existing(tmp_path, frames, tiny_weights_path, monkeypatch):
    out = tmp_path / "out"
    args = ["predict", str(frames / "a.nii.gz"), "-o", str(out), "-w", str(tiny_weights_path), *FAST]
    runs = CountRuns(monkeypatch)
    for extra in ([], [], ["--skip-existing"]):
        assert runner.invoke(app, [*args, *extra]).exit_code == 0
    assert runs.ran == ["a", "a"]


def test_overlay_is_part_of_a_finished_study(tmp_path, frames):
    out = tmp_path / "out"
    out.mkdir()
    studies = plan_studies([frames], None, None)
    report = {"study": "a", "inputs": ["a.nii.gz"], "qc_flags": []}
    (out / "a_seg.nii.gz").write_bytes(b"mask")
    (out / "a_report.json").write_text(json.dumps(report))
    done, todo = split_finished(studies, out, StudyOptions())
    assert names([r.study for r in done]) == ["a"] and names(todo) == ["b", "c"] and done[0].skipped
    done, todo = split_finished(studies, out, StudyOptions(overlay=True))  # the PNG is missing
    assert done == [] and names(todo) == ["a", "b", "c"]


def test_report_is_written_last(tmp_path, frames, tiny_weights_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import cardioseg.overlay

    order: list[str] = []
    real_report, real_png = pipeline.write_report, cardioseg.overlay.write_study_overlay
    monkeypatch.setattr(pipeline, "write_mask", lambda mask, vol, path: order.append(path.name))
    monkeypatch.setattr(pipeline, "write_report", lambda r, path: (order.append(path.name), real_report(r, path)))
    monkeypatch.setattr(cardioseg.overlay, "write_study_overlay", lambda *a, **k: (order.append(a[4].name), real_png(*a, **k)))
    args = ["predict", str(frames / "a.nii.gz"), "-o", str(tmp_path / "out"), "-w", str(tiny_weights_path), "--overlay"]
    assert runner.invoke(app, [*args, *FAST]).exit_code == 0
    assert order == ["a_seg.nii.gz", "a_overlay.png", "a_report.json"]


def test_killed_run_is_finished_by_a_rerun(tmp_path, frames, tiny_weights_path, monkeypatch):
    """kill -9 while b's report is being written (its mask is in place, the report only in a
    hidden temp file): a finished, b half-written, c not started. The rerun skips a only."""
    out = tmp_path / "out"
    args = ["predict", str(frames), "-o", str(out), "-w", str(tiny_weights_path), *FAST]
    script = (
        "import os, signal, sys\n"
        "real = os.replace\n"
        "def replace(src, dst, *a, **k):\n"
        "    if os.path.basename(str(src)).startswith('.b_report.json.'):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(src, dst, *a, **k)\n"
        "os.replace = replace\n"
        "from cardioseg.cli import main\n"
        "sys.argv = ['cardioseg', *sys.argv[1:]]\n"
        "main()\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    killed = subprocess.run([sys.executable, "-c", script, *args], check=False, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    left = sorted(p.name for p in out.iterdir())
    assert [n for n in left if not n.startswith(".")] == ["a_report.json", "a_seg.nii.gz", "b_seg.nii.gz"]
    stale = [n for n in left if n.startswith(".b_report.json.") and ".tmp" in n]
    assert len(stale) == 1  # what kill -9 leaves: no summary.csv yet, one hidden temp file

    runs = CountRuns(monkeypatch)
    result = runner.invoke(app, args[:-1])
    assert result.exit_code == 0, result.stderr
    assert runs.ran == ["b", "c"] and "1 of 3 studies done before, skipped" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{n}_{kind}" for n in "abc" for kind in ("seg.nii.gz", "report.json")] + ["summary.csv"]
    )  # the stale temp file is gone too
    assert summary_studies(out) == ["a", "b", "c"]


def test_exception_after_the_mask_leaves_the_study_unfinished(tmp_path, frames, tiny_weights_path, monkeypatch):
    out = tmp_path / "out"
    real = pipeline.write_report

    def crash(report, path):
        if path.name == "b_report.json":
            raise KeyboardInterrupt  # like Ctrl-C between the mask and the report
        real(report, path)

    args = ["predict", str(frames), "-o", str(out), "-w", str(tiny_weights_path), *FAST]
    monkeypatch.setattr(pipeline, "write_report", crash)
    runner.invoke(app, args)
    assert sorted(p.name for p in out.iterdir()) == ["a_report.json", "a_seg.nii.gz"]  # b's mask removed again
    monkeypatch.undo()
    runs = CountRuns(monkeypatch)
    assert runner.invoke(app, args).exit_code == 0
    assert runs.ran == ["b", "c"]

    # an interrupted --overwrite: b's old report goes first, so old report + new mask never
    # pass for a finished study
    monkeypatch.setattr(pipeline, "write_report", crash)
    runner.invoke(app, [*args, "--overwrite"])
    assert not (out / "b_report.json").exists() and (out / "c_report.json").exists()
    monkeypatch.undo()
    runs = CountRuns(monkeypatch)
    assert runner.invoke(app, args).exit_code == 0
    assert runs.ran == ["b"] and summary_studies(out) == ["a", "b", "c"]


# ---------------------------------------------------------------------------- sharding


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


def test_summary_keeps_a_report_written_while_it_is_rebuilt(tmp_path, monkeypatch):
    """Another part finishes a study between the listing and the write of summary.csv: the
    rebuild sees the new report afterwards and writes the summary again."""
    import cardioseg.report

    def report(name: str) -> dict:
        return {"study": name, "inputs": [f"{name}.nii.gz"], "qc_flags": [], "lv_ef_pct": 55.0}

    (tmp_path / "a_report.json").write_text(json.dumps(report("a")))
    (tmp_path / "junk_report.json").write_text("[1, 2]")  # not a cardioseg report: ignored
    (tmp_path / ".b_report.json.k3j4.tmp.json").write_text("{")  # a killed writer's temp: ignored
    real = cardioseg.report.write_text_atomic
    calls = []

    def racing_write(text, path):
        calls.append(text)
        real(text, path)
        if len(calls) == 1:
            (tmp_path / "c_report.json").write_text(json.dumps(report("c")))

    monkeypatch.setattr(cardioseg.report, "write_text_atomic", racing_write)
    assert write_summary(tmp_path) == tmp_path / "summary.csv"
    assert len(calls) == 2 and summary_studies(tmp_path) == ["a", "c"]
    with open(tmp_path / "summary.csv", newline="") as f:
        assert [r["report"] for r in csv.DictReader(f)] == ["a_report.json", "c_report.json"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_summary(empty) is None and list(empty.iterdir()) == []  # no report: no summary


# ---------------------------------------------------------------------------- read-ahead


class SpyPredictor:
    """The tiny predictor, recording when it works; waits (bounded) until the next study's
    read has started, which shows that reading overlaps prediction. ``predicted``: the studies
    that reach the network, in order; ``order``: all studies, in order."""

    def __init__(self, inner, events: list, started: dict[str, threading.Event], predicted: list[str]) -> None:
        self.inner, self.events, self.started, self.predicted = inner, events, started, predicted
        self.order = list(started)
        self.calls = 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def predict(self, data, affine, on_frame=None):
        study = self.predicted[self.calls]
        self.calls += 1
        self.events.append(("predict-start", study))
        nxt = self.order.index(study) + 1
        if nxt < len(self.order):
            self.events.append(("next-read-started", self.started[self.order[nxt]].wait(timeout=20)))
        out = self.inner.predict(data, affine, on_frame=on_frame)
        self.events.append(("predict-end", study))
        return out


def test_next_study_is_read_while_the_current_one_is_predicted(tmp_path, frames, fp32_predictor, monkeypatch):
    (frames / "b.nii.gz").write_bytes(b"\x1f\x8b not really gzip")  # b fails to read, in the background
    studies = plan_studies([frames], None, None)
    order = ["a", "c"]  # the studies that reach the network
    events: list = []
    started = {s.name: threading.Event() for s in studies}
    threads: set[str] = set()
    real_read = pipeline.read_study

    def read(study, options):
        threads.add(threading.current_thread().name)
        events.append(("read-start", study.name))
        started[study.name].set()
        return real_read(study, options)

    monkeypatch.setattr(pipeline, "read_study", read)
    out = tmp_path / "out"
    out.mkdir()
    results = run_predict(studies, SpyPredictor(fp32_predictor, events, started, order), out, StudyOptions())
    assert [(r.study.name, r.error is None) for r in results] == [("a", True), ("b", False), ("c", True)]
    assert "b.nii.gz" in results[1].error
    assert threading.main_thread().name not in threads  # every read ran in the reader thread
    assert events.index(("read-start", "b")) < events.index(("predict-end", "a"))  # b read during a
    assert events.index(("read-start", "c")) < events.index(("predict-start", "c"))
    assert ("next-read-started", False) not in events
    assert summary_studies(out) == ["a", "c"]


# ---------------------------------------------------------------------------- pooled studies (GPU batching)


def _outputs(out: Path) -> dict[str, object]:
    """Masks (voxels) and reports (without run times) of a run, by file name."""
    import nibabel as nib

    got: dict[str, object] = {}
    for path in sorted(out.iterdir()):
        if path.name.endswith("_seg.nii.gz"):
            got[path.name] = np.asarray(nib.load(str(path)).dataobj)
        elif path.name.endswith("_report.json"):
            report = json.loads(path.read_text())
            report.pop("runtime_s", None)
            got[path.name] = report
    return got


def test_pooled_studies_give_the_same_outputs(tmp_path, frames, small_phantom, tiny_weights):
    from cardioseg.inference import PredictOptions, Predictor

    patient_folder(frames, "patient001", small_phantom, cine=True)  # a 4-frame cine among the frames
    (frames / "b.nii.gz").write_bytes(b"\x1f\x8b not really gzip")  # fails alone, mid-group
    studies = plan_studies([frames], None, None)
    assert names(studies) == ["a", "b", "c", "patient001"]
    runs = {}
    for pooled in (False, True):
        options = PredictOptions(device="cpu", precision="fp32", batch_size=8, batch_studies=pooled)
        predictor = Predictor(tiny_weights, options)
        predictor.model = CountingModel(predictor.model)
        out = tmp_path / f"out{int(pooled)}"
        out.mkdir()
        seen: list[tuple[str, int]] = []
        results = run_predict(studies, predictor, out, StudyOptions(), progress=lambda s, t, seen=seen: seen.append((s.name, t)))
        assert [(r.study.name, r.error is None) for r in results] == [
            ("a", True), ("b", False), ("c", True), ("patient001", True)
        ]  # fmt: skip
        assert "b.nii.gz" in results[1].error
        assert seen == [("a", 0), ("c", 0)] + [("patient001", t) for t in range(4)]
        assert summary_studies(out) == ["a", "c", "patient001"]
        runs[pooled] = (_outputs(out), predictor.model.batches)
    (plain, plain_batches), (pooled_out, pooled_batches) = runs[False], runs[True]
    assert plain_batches == [4, 4, 8, 8]  # a and c alone, then the cine's frames in pairs
    assert pooled_batches == [8, 8, 8]  # a + c, then the cine's frames in pairs
    assert plain.keys() == pooled_out.keys() and len(plain) == 6
    for name in plain:
        if name.endswith(".nii.gz"):
            assert np.array_equal(plain[name], pooled_out[name]), name
        else:
            assert plain[name] == pooled_out[name], name


def test_pooled_prediction_failure_falls_back_to_one_study_at_a_time(tmp_path, frames, tiny_weights, monkeypatch):
    from cardioseg.inference import PredictOptions, Predictor

    predictor = Predictor(tiny_weights, PredictOptions(device="cpu", precision="fp32", batch_studies=True))
    real, calls = predictor.predict_many, []

    def fail_once(frames, on_frame=None):  # the pooled call runs out of memory; single studies fit
        calls.append(len(frames))
        if len(calls) == 1:
            raise MemoryError
        return real(frames, on_frame)

    monkeypatch.setattr(predictor, "predict_many", fail_once)
    out = tmp_path / "out"
    out.mkdir()
    results = run_predict(plan_studies([frames], None, None), predictor, out, StudyOptions())
    assert [r.error for r in results] == [None, None, None]
    assert calls == [3, 1, 1, 1]  # all three frames pooled, then one study at a time
    assert summary_studies(out) == ["a", "b", "c"]


def test_batch_studies_on_the_command_line(tmp_path, frames, tiny_weights_path):
    a = runner.invoke(app, ["predict", str(frames), "-o", str(tmp_path / "a"), "-w", str(tiny_weights_path), *FAST])
    b = runner.invoke(app, ["predict", str(frames), "-o", str(tmp_path / "b"), "-w", str(tiny_weights_path),
                            "--batch-studies", "--batch-size", "64", *FAST])  # fmt: skip
    assert a.exit_code == 0 and b.exit_code == 0, (a.output, b.output)
    pa, pb = _outputs(tmp_path / "a"), _outputs(tmp_path / "b")
    assert len(pa) == 6 and pa.keys() == pb.keys()
    for name in pa:
        if name.endswith(".nii.gz"):
            assert np.array_equal(pa[name], pb[name]), name
