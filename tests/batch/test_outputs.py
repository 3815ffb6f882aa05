"""Output names, resume (--skip-existing), stale temp files, the output folder checks and
summary.csv; a run killed half-way (kill -9) that a rerun finishes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from batch.helpers import FAST, CountRuns, names, runner, summary_studies
from conftest import REPO_ROOT

import cardioseg.batch.outputs
from cardioseg.batch import (
    SUMMARY_NAME,
    Study,
    StudyKind,
    StudyOptions,
    clean_stale_temps,
    expected_outputs,
    output_paths,
    overlay_path,
    plan_studies,
    prepare_out_dir,
    split_finished,
    write_summary,
)
from cardioseg.cli import app
from cardioseg.errors import ConfigError
from cardioseg.weights import sha256_file

# ---------------------------------------------------------------------------- names


def test_output_names_of_a_study(tmp_path):
    pair = Study("p7", StudyKind.PAIR, (Path("in/p7_frame01.nii.gz"), Path("in/p7_frame09.nii")))
    assert [p.name for p in output_paths(pair, tmp_path)] == [
        "p7_frame01_seg.nii.gz", "p7_frame09_seg.nii.gz", "p7_report.json", "p7_overlay.png", "p7_bullseye.png",
        "p7_seg.dcm",
    ]  # fmt: skip
    assert [p.name for p in expected_outputs(pair, tmp_path, StudyOptions())][-1] == "p7_report.json"  # last
    assert [p.name for p in expected_outputs(pair, tmp_path, StudyOptions(overlay=True))][-2:] == [
        "p7_overlay.png", "p7_report.json"
    ]  # fmt: skip
    series = tmp_path / "dicom" / "sax"
    series.mkdir(parents=True)
    [mask, *_] = output_paths(Study("sax", StudyKind.SINGLE, (series / ".",)), tmp_path)
    assert mask == tmp_path / "sax_seg.nii.gz"  # a DICOM folder's mask is named after its study
    [mask, *_] = output_paths(Study("PAT7_s5", StudyKind.SINGLE, (tmp_path / "dicom",)), tmp_path)
    assert mask == tmp_path / "PAT7_s5_seg.nii.gz"
    dicom = Study("PAT7_s5", StudyKind.SINGLE, (tmp_path / "dicom",))
    assert [p.name for p in expected_outputs(dicom, tmp_path, StudyOptions(dicom_seg=True))] == [
        "PAT7_s5_seg.nii.gz", "PAT7_s5_seg.dcm", "PAT7_s5_report.json"]  # --dicom-seg: the SEG of a DICOM study
    assert "p7_seg.dcm" not in [p.name for p in expected_outputs(pair, tmp_path, StudyOptions(dicom_seg=True))]
    assert SUMMARY_NAME == "summary.csv"


def test_overlay_path_names_the_study(tmp_path: Path) -> None:
    assert overlay_path(tmp_path, "patient001") == tmp_path / "patient001_overlay.png"


def test_stale_temps_of_these_studies_only_are_removed(tmp_path):
    studies = [Study(n, StudyKind.SINGLE, (Path(f"{n}.nii.gz"),)) for n in ("a", "b")]
    for temp in (".a_seg.nii.gz.k2j4ab.tmp.nii.gz", ".b_report.json.x_91.tmp.json", ".other_report.json.q1.tmp.json"):
        (tmp_path / temp).write_bytes(b"left by a killed writer")  # the names cardioseg.io.atomic_path uses
    (tmp_path / "notes.tmp").write_text("not ours")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert len(before) == 4
    assert clean_stale_temps(tmp_path, studies) == 2
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(n for n in before if not n.startswith((".a_seg.nii.gz.", ".b_report.json.")))
    assert clean_stale_temps(tmp_path / "missing", studies) == 0


def test_output_folder_checks(tmp_path, frames):
    studies = plan_studies([frames], None, None)
    with pytest.raises(ConfigError, match="is an input file"):
        prepare_out_dir(frames / "a.nii.gz", studies)
    assert prepare_out_dir(tmp_path / "new" / "out", studies) is True
    assert prepare_out_dir(tmp_path / "new" / "out", studies) is False  # already there
    assert list((tmp_path / "new" / "out").iterdir()) == []  # the write probe leaves nothing
    # inputs named like outputs, in the output folder: refused before anything is written
    (frames / "a_report.json").write_text("{}")
    own = [Study("a", StudyKind.SINGLE, (frames / "a_report.json",))]
    with pytest.raises(ConfigError, match="would overwrite an input"):
        prepare_out_dir(frames, own)


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


def test_a_finished_study_made_with_other_weights_or_options_is_recomputed(tmp_path, frames, tiny_weights_path, monkeypatch):
    """The report's fingerprint (weights sha256, inference and study options, version) must
    match what is asked; job-array parts with the same options still skip each other's work."""
    from conftest import export_tiny_weights

    other = export_tiny_weights(tmp_path / "other.pt", seed=1)
    out = tmp_path / "out"
    base = ["predict", str(frames), "-o", str(out), *FAST[:-1]]
    runs = CountRuns(monkeypatch)
    assert runner.invoke(app, [*base, "-w", str(tiny_weights_path), "-q"]).exit_code == 0
    stored = json.loads((out / "a_report.json").read_text())["fingerprint"]
    assert stored["settings"]["weights"] == [sha256_file(tiny_weights_path)] and len(stored["sha256"]) == 64
    runs.ran.clear()
    result = runner.invoke(app, [*base, "-w", str(other)])
    assert result.exit_code == 0 and runs.ran == ["a", "b", "c"]
    assert "3 recomputed: weights changed\n" in result.stderr
    assert json.loads((out / "a_report.json").read_text())["weights"]["sha256"] == sha256_file(other)
    runs.ran.clear()
    result = runner.invoke(app, [*base, "-w", str(other), "--no-tta", "--myo-density", "1.1"])
    assert runs.ran == ["a", "b", "c"] and "3 recomputed: density changed, tta changed\n" in result.stderr
    runs.ran.clear()
    result = runner.invoke(app, [*base, "-w", str(other), "--no-tta", "--myo-density", "1.1"])
    assert runs.ran == [] and "3 of 3 studies done before, skipped" in result.stderr
    for part in ("0", "1"):  # two parts of a job array, same options: nothing to redo
        result = runner.invoke(app, [*base, "-w", str(other), "--no-tta", "--myo-density", "1.1",
                                     "--num-parts", "2", "--part-id", part])  # fmt: skip
        assert result.exit_code == 0 and runs.ran == [] and "recomputed" not in result.stderr
    report = json.loads((out / "b_report.json").read_text())
    report.pop("fingerprint")  # a report of an older cardioseg
    (out / "b_report.json").write_text(json.dumps(report))
    result = runner.invoke(app, [*base, "-w", str(other), "--no-tta", "--myo-density", "1.1"])
    assert runs.ran == ["b"] and "1 recomputed: made by an older cardioseg" in result.stderr


def test_dry_run_prints_the_plan_and_touches_nothing(tmp_path, frames, tiny_weights_path, monkeypatch):
    from conftest import export_tiny_weights

    out = tmp_path / "out"
    base = ["predict", str(frames), "-o", str(out), "-w", str(tiny_weights_path), *FAST]
    monkeypatch.setattr("cardioseg.weights.load_weights", lambda *a: pytest.fail("the model was loaded"))
    result = runner.invoke(app, [*base, "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0] == f"a (single): {frames / 'a.nii.gz'} -> {out}/{{a_seg.nii.gz, a_report.json}}  [run]"
    assert lines[-1] == "plan: 3 studies: 3 run (--dry-run: nothing written)" and not out.exists()
    monkeypatch.undo()
    assert runner.invoke(app, base).exit_code == 0
    other = export_tiny_weights(tmp_path / "other.pt", seed=3)
    (out / "c_report.json").unlink()
    result = runner.invoke(app, ["predict", str(frames), "-o", str(out), "-w", str(other), *FAST, "--dry-run"])
    assert [line.rsplit("[", 1)[1] for line in result.stdout.strip().splitlines()[:3]] == [
        "run again: weights changed]", "run again: weights changed]", "run]"]
    result = runner.invoke(app, [*base, "--dry-run"])
    assert result.stdout.strip().splitlines()[-1] == "plan: 3 studies: 2 skip, 1 run (--dry-run: nothing written)"


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
    (out / "b_seg.nii.gz").write_bytes(b"mask")
    (out / "b_report.json").write_text(json.dumps({**report, "study": "not b"}))  # another study's report
    done, todo = split_finished(studies, out, StudyOptions())
    assert names([r.study for r in done]) == ["a"]


@pytest.mark.slow
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


# ---------------------------------------------------------------------------- summary.csv


def test_summary_keeps_a_report_written_while_it_is_rebuilt(tmp_path, monkeypatch):
    """Another part finishes a study between the listing and the write of summary.csv: the
    rebuild sees the new report afterwards and writes the summary again."""

    def report(name: str) -> dict:
        return {"study": name, "inputs": [f"{name}.nii.gz"], "qc_flags": [], "lv_ef_pct": 55.0}

    (tmp_path / "a_report.json").write_text(json.dumps(report("a")))
    (tmp_path / "junk_report.json").write_text("[1, 2]")  # not a cardioseg report: ignored
    (tmp_path / ".b_report.json.k3j4.tmp.json").write_text("{")  # a killed writer's temp: ignored
    real = cardioseg.batch.outputs.write_text_atomic
    calls = []

    def racing_write(text, path):
        calls.append(text)
        real(text, path)
        if len(calls) == 1:
            (tmp_path / "c_report.json").write_text(json.dumps(report("c")))

    monkeypatch.setattr(cardioseg.batch.outputs, "write_text_atomic", racing_write)
    assert write_summary(tmp_path) == tmp_path / "summary.csv"
    assert len(calls) == 2 and summary_studies(tmp_path) == ["a", "c"]
    with open(tmp_path / "summary.csv", newline="") as f:
        assert [r["report"] for r in csv.DictReader(f)] == ["a_report.json", "c_report.json"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_summary(empty) is None and list(empty.iterdir()) == []  # no report: no summary


def test_old_summary_temps_are_removed(tmp_path):
    (tmp_path / "a_report.json").write_text(json.dumps({"study": "a", "inputs": ["a.nii.gz"], "qc_flags": []}))
    old, fresh = tmp_path / ".summary.csv.old1.tmp.csv", tmp_path / ".summary.csv.new2.tmp.csv"
    old.write_text("x")
    fresh.write_text("y")
    os.utime(old, (0, 0))
    write_summary(tmp_path)
    assert not old.exists() and fresh.exists()  # a recent one may belong to a part still writing


def test_progress_counts_frames_a_cine_weighs_its_time_axis(tmp_path, frames, small_phantom, tiny_weights_path):
    """``on_plan`` gives each study's frames from its header (the bar's ETA counts frames, not
    studies: a 54 s cine is not one fifth of a batch of five)."""
    from conftest import save_nifti

    import cardioseg
    from cardioseg.batch import expected_frames

    cine = save_nifti(tmp_path / "in" / "cine.nii.gz", small_phantom.image, small_phantom.affine)
    n = small_phantom.image.shape[3]
    studies = plan_studies([cine, frames / "a.nii.gz"], None, None)
    assert [expected_frames(s) for s in studies] == [n, 1]
    planned: list[dict[str, int]] = []
    cardioseg.predict([cine, frames / "a.nii.gz"], tmp_path / "out", weights=tiny_weights_path, device="cpu",
                      precision="fp32", on_plan=planned.append)  # fmt: skip
    assert planned == [{"cine": n, "a": 1}]


def test_html_report_is_kept_like_the_summary(tmp_path, frames, tiny_weights_path):
    out = tmp_path / "out"
    base = ["predict", str(frames / "a.nii.gz"), str(frames / "b.nii.gz"), "-o", str(out), "-w", str(tiny_weights_path), *FAST]
    assert runner.invoke(app, [*base, "--html"]).exit_code == 0
    page = (out / "report.html").read_text()
    assert page.count('href="./a_report.json"') == 1 and 'href="./c_report.json"' not in page
    # a second run (another part, say) adds its study: the page covers the folder, as summary.csv does
    more = ["predict", str(frames / "c.nii.gz"), "-o", str(out), "-w", str(tiny_weights_path), *FAST, "--html"]
    assert runner.invoke(app, more).exit_code == 0
    assert 'href="./c_report.json"' in (out / "report.html").read_text()
    assert summary_studies(out) == ["a", "b", "c"]
