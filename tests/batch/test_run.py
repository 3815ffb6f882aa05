"""Running a batch: each study all or nothing with the report last, the next study read while
the current one is predicted, several studies per forward pass, and a failing study (whatever
it raises) recorded as its own error while the others go on."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from batch.helpers import FAST, CountRuns, error_lines, names, patient_folder, runner, summary_studies
from test_inference import CountingModel

import cardioseg.batch.run
from cardioseg.batch import StudyKind, StudyOptions, plan_studies, pools_studies, run_predict, run_study
from cardioseg.cli import app
from cardioseg.errors import DEBUG_HINT, QcError

# ---------------------------------------------------------------------------- one study


def test_run_study_resolves_the_kind_and_reports_it_as_text(tmp_path, frames, fp32_predictor):
    [a, *_] = plan_studies([frames], None, None)
    assert a.kind is StudyKind.SINGLE
    out = tmp_path / "out"
    out.mkdir()
    result = run_study(a, fp32_predictor, out, StudyOptions())
    assert result.study.kind is StudyKind.FRAME and result.error is None
    assert [p.name for p in result.outputs] == ["a_seg.nii.gz", "a_report.json"]
    on_disk = json.loads((out / "a_report.json").read_text())
    assert on_disk["kind"] == "frame" and type(result.report["kind"]) is str  # not the enum's repr
    assert on_disk["ed_frame"] is None and "lv_ml" in on_disk and "lv_ef_pct" not in on_disk


def test_strict_study_with_a_flag_raises_and_writes_nothing(tmp_path, frames, fp32_predictor):
    [a, *_] = plan_studies([frames], None, None)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(QcError, match="--strict"):  # the 4-slice phantom has too few slices
        run_study(a, fp32_predictor, out, StudyOptions(strict=True))
    assert list(out.iterdir()) == []


def test_report_is_written_last(tmp_path, frames, tiny_weights_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import cardioseg.overlay

    order: list[str] = []
    real_report, real_png = cardioseg.batch.run.write_report, cardioseg.overlay.write_study_overlay
    monkeypatch.setattr(cardioseg.batch.run, "write_mask", lambda mask, vol, path: order.append(path.name))
    monkeypatch.setattr(cardioseg.batch.run, "write_report", lambda r, path: (order.append(path.name), real_report(r, path)))
    monkeypatch.setattr(cardioseg.overlay, "write_study_overlay", lambda *a, **k: (order.append(a[4].name), real_png(*a, **k)))
    args = ["predict", str(frames / "a.nii.gz"), "-o", str(tmp_path / "out"), "-w", str(tiny_weights_path), "--overlay"]
    assert runner.invoke(app, [*args, *FAST]).exit_code == 0
    assert order == ["a_seg.nii.gz", "a_overlay.png", "a_report.json"]


def test_exception_after_the_mask_leaves_the_study_unfinished(tmp_path, frames, tiny_weights_path, monkeypatch):
    out = tmp_path / "out"
    real = cardioseg.batch.run.write_report

    def crash(report, path):
        if path.name == "b_report.json":
            raise KeyboardInterrupt  # like Ctrl-C between the mask and the report
        real(report, path)

    args = ["predict", str(frames), "-o", str(out), "-w", str(tiny_weights_path), *FAST]
    monkeypatch.setattr(cardioseg.batch.run, "write_report", crash)
    runner.invoke(app, args)
    assert sorted(p.name for p in out.iterdir()) == ["a_report.json", "a_seg.nii.gz", "summary.csv"]  # b's mask removed again
    monkeypatch.undo()
    runs = CountRuns(monkeypatch)
    assert runner.invoke(app, args).exit_code == 0
    assert runs.ran == ["b", "c"]

    # an interrupted --overwrite: b's old report goes first, so old report + new mask never
    # pass for a finished study
    monkeypatch.setattr(cardioseg.batch.run, "write_report", crash)
    runner.invoke(app, [*args, "--overwrite"])
    assert not (out / "b_report.json").exists() and (out / "c_report.json").exists()
    monkeypatch.undo()
    runs = CountRuns(monkeypatch)
    assert runner.invoke(app, args).exit_code == 0
    assert runs.ran == ["b"] and summary_studies(out) == ["a", "b", "c"]


# ---------------------------------------------------------------------------- a study never stops the batch


def test_an_unforeseen_reader_error_fails_its_study_only(tmp_path, frames, tiny_weights_path, monkeypatch):
    """A reader raising something that is not a CardiosegError/OSError/MemoryError (as damaged
    NIfTI headers made nibabel do) fails that study with one line; the others are written."""
    real = cardioseg.batch.run.read_volume

    def read(path, *args, **kwargs):
        if Path(path).name == "b.nii.gz":
            raise ValueError("buffer is smaller than requested size\n(dim[3] = 99)")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(cardioseg.batch.run, "read_volume", read)
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(frames), "-o", str(out), "-w", str(tiny_weights_path), *FAST])
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [
        ("cardioseg: error: b: unexpected error: ValueError: buffer is smaller than requested size (dim[3] = 99)"
        " (a bug: rerun with --debug for the traceback)")
    ]
    assert "Traceback" not in result.output
    assert summary_studies(out) == ["a", "c"] and not (out / "b_seg.nii.gz").exists()
    debug = runner.invoke(app, ["predict", str(frames), "-o", str(out), "-w", str(tiny_weights_path), *FAST, "--debug"])
    assert debug.exit_code == 1 and "Traceback (most recent call last)" in debug.stderr
    assert 'raise ValueError("buffer is smaller than requested size' in debug.stderr


def test_an_unforeseen_error_outside_a_study_is_one_line_unless_debug(tmp_path, monkeypatch, capsys):
    """``cardioseg`` itself (``main``): an exception nobody foresaw is one line and exit code 1."""
    import sys

    import cardioseg.api
    from cardioseg.cli import main

    def broken(*args, **kwargs):
        raise KeyError("engine")

    monkeypatch.setattr(cardioseg.api, "predict", broken)
    monkeypatch.setattr(sys, "argv", ["cardioseg", "predict", str(tmp_path / "x.nii.gz"), "-o", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "cardioseg: error: unexpected error: KeyError: 'engine' (a bug: rerun with --debug for the traceback)"
    ]
    monkeypatch.setattr(sys, "argv", [*sys.argv, "--debug"])
    with pytest.raises(KeyError):
        main()


class FailingOn:
    """A predictor that raises ``exc`` for the ``n``-th study it predicts (0-based)."""

    def __init__(self, inner, n: int, exc: BaseException) -> None:
        self.inner, self.n, self.exc, self.calls = inner, n, exc, 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def predict(self, data, affine, on_frame=None, localisation=None, stats=None):
        self.calls += 1
        if self.calls - 1 == self.n:
            raise self.exc
        return self.inner.predict(data, affine, on_frame=on_frame, localisation=localisation, stats=stats)


@pytest.mark.parametrize("exc", [ValueError("bad header"), IndexError(), ZeroDivisionError("division by zero")])
def test_an_unforeseen_predictor_error_fails_its_study_only(tmp_path, frames, fp32_predictor, exc):
    out = tmp_path / "out"
    out.mkdir()
    results = run_predict(plan_studies([frames], None, None), FailingOn(fp32_predictor, 1, exc), out, StudyOptions())
    assert [(r.study.name, r.error) for r in results] == [
        ("a", None), ("b", f"unexpected error: {type(exc).__name__}" + (f": {exc}" if str(exc) else "") + DEBUG_HINT),
        ("c", None),
    ]  # fmt: skip
    assert "Traceback" in (results[1].traceback or "") and results[0].traceback is None
    assert summary_studies(out) == ["a", "c"]


def test_ctrl_c_still_stops_the_batch(tmp_path, frames, fp32_predictor):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(KeyboardInterrupt) as info:
        run_predict(plan_studies([frames], None, None), FailingOn(fp32_predictor, 1, KeyboardInterrupt()), out, StudyOptions())
    assert (info.value.done, info.value.total) == (1, 3)
    assert sorted(p.name for p in out.iterdir()) == ["a_report.json", "a_seg.nii.gz", "summary.csv"]
    assert summary_studies(out) == ["a"]


def test_ctrl_c_through_the_cli_says_what_is_done_and_exits_130(tmp_path, frames, tiny_weights_path, monkeypatch):
    real = cardioseg.batch.run.run_study

    def run_study(study, *args, **kwargs):
        if study.name == "b":
            raise KeyboardInterrupt
        return real(study, *args, **kwargs)

    monkeypatch.setattr(cardioseg.batch.run, "run_study", run_study)
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(frames), "-o", str(out), "-w", str(tiny_weights_path), *FAST])
    assert result.exit_code == 130
    assert error_lines(result.stderr) == ["cardioseg: interrupted: 1 of 3 studies done; rerun the same command to finish"]
    assert summary_studies(out) == ["a"]
    single = tmp_path / "single"  # one study interrupted: the folder this run made is removed again
    result = runner.invoke(app, ["predict", str(frames / "b.nii.gz"), "-o", str(single), "-w", str(tiny_weights_path), *FAST])
    assert result.exit_code == 130 and not single.exists()


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

    def predict(self, data, affine, on_frame=None, localisation=None, stats=None):
        study = self.predicted[self.calls]
        self.calls += 1
        self.events.append(("predict-start", study))
        nxt = self.order.index(study) + 1
        if nxt < len(self.order):
            self.events.append(("next-read-started", self.started[self.order[nxt]].wait(timeout=20)))
        out = self.inner.predict(data, affine, on_frame=on_frame, localisation=localisation, stats=stats)
        self.events.append(("predict-end", study))
        return out


def test_next_study_is_read_while_the_current_one_is_predicted(tmp_path, frames, fp32_predictor, monkeypatch):
    (frames / "b.nii.gz").write_bytes(b"\x1f\x8b not really gzip")  # b fails to read, in the background
    studies = plan_studies([frames], None, None)
    order = ["a", "c"]  # the studies that reach the network
    events: list = []
    started = {s.name: threading.Event() for s in studies}
    threads: set[str] = set()
    real_read = cardioseg.batch.run.read_study

    def read(study, options):
        threads.add(threading.current_thread().name)
        events.append(("read-start", study.name))
        started[study.name].set()
        return real_read(study, options)

    monkeypatch.setattr(cardioseg.batch.run, "read_study", read)
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
            report["provenance"].pop("created_utc")  # the clock, not the result
            got[path.name] = report
    return got


def test_pools_studies_on_a_gpu_by_default(fp32_predictor):
    class Fake:
        def __init__(self, device, batch_studies=None):
            self.device = device
            self.options = type("O", (), {"batch_studies": batch_studies})()

    assert pools_studies(fp32_predictor) is False  # a CPU predictor
    assert [pools_studies(Fake(d)) for d in ("cpu", "cuda", "cuda:1")] == [False, True, True]
    assert pools_studies(Fake("cpu", True)) is True and pools_studies(Fake("cuda", False)) is False


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


@pytest.mark.parametrize("exc", [MemoryError(), ValueError("one study's frames are odd")])
def test_pooled_prediction_failure_falls_back_to_one_study_at_a_time(tmp_path, frames, tiny_weights, monkeypatch, exc):
    from cardioseg.inference import PredictOptions, Predictor

    predictor = Predictor(tiny_weights, PredictOptions(device="cpu", precision="fp32", batch_studies=True))
    real, calls = predictor.predict_many, []

    def fail_once(frames, on_frame=None, centres=None):  # the pooled call fails; single studies work
        calls.append(len(frames))
        if len(calls) == 1:
            raise exc
        return real(frames, on_frame, centres)

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


def test_a_frame_index_outside_the_cine_fails_before_any_inference(tmp_path, small_phantom, fp32_predictor):
    from conftest import save_nifti

    cine = save_nifti(tmp_path / "cine.nii.gz", small_phantom.image, small_phantom.affine)
    n = small_phantom.image.shape[3]
    calls = []

    class Counting:
        def __getattr__(self, name):
            return getattr(fp32_predictor, name)

        def predict(self, *args, **kwargs):
            calls.append(1)
            return fp32_predictor.predict(*args, **kwargs)

    out = tmp_path / "out"
    out.mkdir()
    (result,) = run_predict(plan_studies([cine], None, None), Counting(), out, StudyOptions(ed_frame=n + 5))
    assert result.error == f"ED frame {n + 5} is outside the cine's frames 0..{n - 1}" and calls == []
