"""The one home of output names, and the bookkeeping of an output folder.

A study ``X`` writes ``X_report.json`` (last), one ``<input>_seg.nii.gz`` per input image
(named after the input, so a pair writes two) and, with ``--overlay``, ``X_overlay.png``; the
folder has one ``summary.csv`` built from every report in it. Every file is written
atomically through a hidden temp file beside it (``cardioseg.io.atomic_path``).

Resume: a study is finished when all its expected outputs exist and its report (written last)
is readable (``finished_report``, ``split_finished``). ``clean_stale_temps`` removes the temp
files a killed run left; ``prepare_out_dir`` checks the folder before anything is computed.
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from io import StringIO
from pathlib import Path
from typing import Any

from cardioseg.batch.fingerprint import changed_settings
from cardioseg.batch.studies import Study, StudyKind, StudyOptions, StudyResult
from cardioseg.errors import CardiosegError, ConfigError
from cardioseg.io import strip_image_suffix, temp_target, write_text_atomic
from cardioseg.report import SUMMARY_COLUMNS, load_report, summary_row

MASK_SUFFIX = "_seg.nii.gz"
REPORT_SUFFIX = "_report.json"
OVERLAY_SUFFIX = "_overlay.png"
BULLSEYE_SUFFIX = "_bullseye.png"
DICOM_SEG_SUFFIX = "_seg.dcm"
SUMMARY_NAME = "summary.csv"
HTML_NAME = "report.html"


def mask_path(out_dir: Path, image: Path) -> Path:
    """Where the mask of one input image goes: ``<out_dir>/<image name>_seg.nii.gz`` (a DICOM
    series folder is named after the folder itself, resolved: ``.`` works too)."""
    return Path(out_dir) / f"{strip_image_suffix(image.resolve().name if image.is_dir() else image.name)}{MASK_SUFFIX}"


def report_path(out_dir: Path, study_name: str) -> Path:
    """Where a study's report goes: ``<out_dir>/<study>_report.json``."""
    return Path(out_dir) / f"{study_name}{REPORT_SUFFIX}"


def dicom_seg_path(out_dir: Path, study_name: str) -> Path:
    """Where ``--dicom-seg`` writes a DICOM study's segmentation object: ``<out_dir>/<study>_seg.dcm``."""
    return Path(out_dir) / f"{study_name}{DICOM_SEG_SUFFIX}"


def bullseye_path(out_dir: Path, study_name: str) -> Path:
    """Where ``--overlay`` writes a study's AHA wall-thickness bullseye: ``<out_dir>/<study>_bullseye.png``."""
    return Path(out_dir) / f"{study_name}{BULLSEYE_SUFFIX}"


def overlay_path(out_dir: Path, study_name: str) -> Path:
    """Where ``predict --overlay`` writes a study's montage: ``<out_dir>/<study>_overlay.png``."""
    return Path(out_dir) / f"{study_name}{OVERLAY_SUFFIX}"


def output_paths(study: Study, out_dir: Path) -> list[Path]:
    """Every file ``run_study`` may write for ``study``: masks, the report, the overlay PNG, the
    bullseye PNG, the DICOM-SEG (in that order). A DICOM series folder's mask is named after the study."""
    masks = [Path(out_dir) / f"{study.name}{MASK_SUFFIX}" if p.is_dir() else mask_path(out_dir, p) for p in study.paths]
    return [*masks, report_path(out_dir, study.name), overlay_path(out_dir, study.name), bullseye_path(out_dir, study.name),
            dicom_seg_path(out_dir, study.name)]  # fmt: skip


def expected_outputs(study: Study, out_dir: Path, options: StudyOptions) -> list[Path]:
    """The files a finished study has: its masks, the overlay when asked for, and the report (last)."""
    *masks, report, png, _, seg = output_paths(study, out_dir)  # the bullseye only when the wall could be measured
    dicom = options.dicom_seg and study.kind is not StudyKind.PAIR and study.paths[0].is_dir()
    return [*masks, *([png] if options.overlay else []), *([seg] if dicom else []), report]


# ---------------------------------------------------------------------------- resume


def finished_report(
    study: Study, out_dir: Path, options: StudyOptions, present: set[str] | None = None
) -> dict[str, Any] | None:
    """The report of ``study`` if an earlier run finished it, else None.

    Finished means every expected output exists and the report, which ``run_study`` writes
    last and atomically, is a readable report of this study. A study killed half-way (masks
    but no report, or only hidden temp files) is not finished. ``present``: the names in
    ``out_dir`` when already listed (saves a stat per file on network file systems).
    """
    paths = expected_outputs(study, out_dir, options)
    if not all((p.name in present) if present is not None else p.is_file() for p in paths):
        return None
    report = load_report(paths[-1])
    return report if report is not None and report.get("study") == study.name else None


def split_finished(
    studies: list[Study], out_dir: Path, options: StudyOptions, changed: dict[str, list[str]] | None = None
) -> tuple[list[StudyResult], list[Study]]:
    """(results of the studies an earlier run finished, the studies still to run).

    With ``options.fingerprint``, a finished study whose report holds another fingerprint
    (other weights, options or version) is to run again; ``changed`` (when given) gets, for
    each such study, the settings that changed."""
    present = set(os.listdir(out_dir)) if out_dir.is_dir() else set()
    done: list[StudyResult] = []
    todo: list[Study] = []
    for study in studies:
        report = finished_report(study, out_dir, options, present)
        stale = [] if report is None or options.fingerprint is None else changed_settings(report.get("fingerprint"), options.fingerprint)
        if stale and changed is not None:
            changed[study.name] = stale
        if report is None or stale:
            todo.append(study)
        else:
            done.append(StudyResult(study, expected_outputs(study, out_dir, options), report, skipped=True))
    return done, todo


def clean_stale_temps(out_dir: Path, studies: list[Study]) -> int:
    """Remove the hidden temp files (``.X_seg.nii.gz.abc123.tmp.nii.gz``) that a killed run left
    for these studies' outputs; returns how many. Only the studies' own outputs are touched, so
    parts of a job array writing into the same folder never remove each other's files."""
    if not out_dir.is_dir():
        return 0
    mine = {p.name for s in studies for p in output_paths(s, out_dir)}
    removed = 0
    for name in os.listdir(out_dir):
        final = temp_target(name)
        if final is not None and final in mine:
            (out_dir / name).unlink(missing_ok=True)
            removed += 1
    return removed


def prepare_out_dir(out_dir: Path, studies: list[Study], html: bool = False) -> bool:
    """Check that ``out_dir`` can take the outputs without touching any input; create it.

    Returns whether the folder was created by this call (so a run that writes nothing can
    remove it again). Raises ConfigError/CardiosegError with one clear line otherwise.
    """
    inputs = {p.resolve() for s in studies for p in s.paths}
    if out_dir.exists() and not out_dir.is_dir():
        what = "an input file" if out_dir.resolve() in inputs else "a file"
        raise ConfigError(f'output folder "{out_dir}" is {what}, not a folder; pass -o FOLDER')
    # an output can only be an input if it exists already: compare only those (one listing)
    present = set(os.listdir(out_dir)) if out_dir.is_dir() else set()
    for study in studies:
        for path in [*output_paths(study, out_dir), out_dir / SUMMARY_NAME, *([out_dir / HTML_NAME] if html else [])]:
            if path.name in present and path.resolve() in inputs:
                raise ConfigError(f'output "{path}" would overwrite an input; choose another -o folder')
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".cardioseg-write-test-"):
            pass
    except OSError as exc:
        raise CardiosegError(f'cannot write to output folder "{out_dir}": {exc.strerror or exc}') from None
    return created


# ---------------------------------------------------------------------------- summary.csv


def report_listing(folder: Path) -> dict[str, tuple[int, int]]:
    """``{name: (mtime_ns, size)}`` of the ``*_report.json`` files in ``folder`` (hidden temps excluded)."""
    out: dict[str, tuple[int, int]] = {}
    with os.scandir(folder) as it:
        for e in it:
            if e.name.endswith(REPORT_SUFFIX) and not e.name.startswith(".") and e.is_file():
                st = e.stat()
                out[e.name] = (st.st_mtime_ns, st.st_size)
    return out


def write_summary(folder: Path, max_rounds: int = 10, stale_temp_s: float = 3600.0) -> Path | None:
    """Regenerate ``folder/summary.csv`` from every study report in ``folder``; atomically.

    One row per readable ``*_report.json`` (sorted by study), whichever run or job-array part
    wrote it, so parts writing into one folder never lose each other's rows. After writing, the
    reports are listed again; if one appeared or changed meanwhile (another part finished a
    study) the summary is rebuilt, so the last writer always leaves every report in it.
    Returns the path, or None (nothing written) when the folder holds no report.
    Hidden temp files of summaries older than ``stale_temp_s`` (left by a killed run) are removed.
    """
    path = Path(folder) / SUMMARY_NAME
    now = time.time()
    for name in os.listdir(folder):
        if temp_target(name) == SUMMARY_NAME:
            stale = Path(folder) / name
            try:
                if now - stale.stat().st_mtime > stale_temp_s:
                    stale.unlink()
            except FileNotFoundError:
                pass
    listing = report_listing(folder)
    for _ in range(max_rounds):
        if not listing:
            return None
        rows: dict[str, dict[str, str]] = {}
        for name in sorted(listing):
            report = load_report(Path(folder) / name)
            if report is not None:
                try:
                    rows[report["study"]] = summary_row(report, Path(folder) / name)
                except (KeyError, TypeError, ValueError):
                    continue
        buf = StringIO()
        writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for study in sorted(rows):
            writer.writerow(rows[study])
        write_text_atomic(buf.getvalue(), path)
        again = report_listing(folder)
        if again == listing:
            break
        listing = again
    return path


def refresh_summary(out_dir: Path, html: bool = False) -> Path | None:
    """Regenerate ``out_dir/summary.csv`` from the reports there (see ``write_summary``) and,
    with ``html``, ``report.html`` (``cardioseg.html_report``) when there is a summary."""
    try:
        path = write_summary(out_dir)
    except OSError as exc:
        raise CardiosegError(f'could not write "{out_dir / SUMMARY_NAME}": {exc.strerror or exc}') from None
    if html and path is not None:
        from cardioseg.html_report import refresh_html_report

        refresh_html_report(out_dir)
    return path
