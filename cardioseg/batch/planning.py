"""Command-line inputs -> ``Study`` objects, with cheap checks only (no image decoding).

Inputs are NIfTI files, DICOM series folders, ACDC-style patient folders, batch folders
(``folder_contents``) and glob patterns (``expand_pattern``). Usage mistakes (a missing path,
a pattern that matches nothing, two studies writing the same file, a study name that would
escape the output folder) fail here, before the model is loaded.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from cardioseg.batch.outputs import output_paths
from cardioseg.batch.studies import Study, StudyKind
from cardioseg.errors import CardiosegError, ConfigError, InputFileNotFoundError
from cardioseg.io import (
    is_dicom_file,
    is_image_name,
    is_patient_folder,
    looks_like_mask,
    read_patient_folder,
    strip_image_suffix,
    study_name,
)

PATTERN_CHARS = "*?["
NOT_DICOM_SUFFIXES = (
    ".nii", ".gz", ".json", ".csv", ".tsv", ".png", ".jpg", ".jpeg", ".txt", ".cfg", ".md", ".pdf",
    ".npy", ".npz", ".pt", ".h5", ".xml", ".html", ".log", ".py", ".zip", ".tar", ".mat",
)  # fmt: skip
"""Files with these endings are never opened to look for the DICOM marker (cheap planning)."""


def is_pattern(path: Path) -> bool:
    """A glob pattern for cardioseg to expand: has ``*``, ``?`` or ``[`` and is not an existing path."""
    return any(c in str(path) for c in PATTERN_CHARS) and not path.exists()


def _may_be_dicom(entry: os.DirEntry[str]) -> bool:
    name = entry.name
    if name.startswith(".") or name.upper() == "DICOMDIR" or name.lower().endswith(NOT_DICOM_SUFFIXES):
        return False
    return entry.is_file() and is_dicom_file(entry.path)


def _holds_dicom(folder: Path) -> bool:
    """True when a DICOM file lies anywhere under ``folder`` (stops at the first one found)."""
    return next(_dicom_files(folder), None) is not None


def folder_contents(folder: Path, ignored: list[Path] | None = None) -> list[Path] | None:
    """The studies inside a batch folder, or None when ``folder`` is itself one study.

    The rule (cheap: names, ``Info.cfg`` and the 4-byte DICOM marker only, no image decoding):

    1. a folder with ``Info.cfg`` is one ACDC-style patient study;
    2. a folder holding DICOM files directly is one DICOM series study (read recursively);
    3. otherwise its entries are listed (hidden ones skipped): sub-folders with ``Info.cfg``
       (patient studies), NIfTI files that are not masks (``*_seg``/``*_gt``), and sub-folders
       with DICOM files anywhere below them (one DICOM study each). If that finds nothing but
       (at most) one DICOM sub-folder, the folder is one DICOM study after all (a series kept
       in a sub-folder of its study folder); otherwise it is a batch of those entries.

    Only one level is expanded: deeper layouts take a pattern (``"data/**/*_sa.nii.gz"``).

    ``ignored``, when given, receives what the rule leaves out that a user may have meant:
    NIfTI images beside a DICOM series (rule 2); masks and folders that are not studies in a
    batch folder (rule 3). Other files (notes, tables) are not listed, nor a patient
    folder's own files (rule 1).
    """
    if is_patient_folder(folder):
        return None
    with os.scandir(folder) as it:
        entries = [e for e in sorted(it, key=lambda e: e.name) if not e.name.startswith(".")]
    if any(_may_be_dicom(e) for e in entries):
        if ignored is not None:
            ignored += [Path(e.path) for e in entries if e.is_file() and is_image_name(e.name) and not looks_like_mask(e.name)]
        return None
    found: list[Path] = []
    n_dicom = 0
    for e in entries:
        path = Path(e.path)
        if e.is_dir():
            if is_patient_folder(path):
                found.append(path)
            elif _holds_dicom(path):
                found.append(path)
                n_dicom += 1
        elif e.is_file() and is_image_name(e.name) and not looks_like_mask(e.name):
            found.append(path)
    if not found:
        return None
    if ignored is not None:
        ignored += [Path(e.path) for e in entries if Path(e.path) not in found and (e.is_dir() or is_image_name(e.name))]
    return None if len(found) == 1 and n_dicom == 1 else found


def _names(paths: list[Path], limit: int = 3) -> str:
    shown = ", ".join(p.name + ("/" if p.is_dir() else "") for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def ignored_note(folder: Path, ignored: list[Path]) -> str:
    """One line naming what ``folder_contents`` left out of ``folder``, and why."""
    masks = [p for p in ignored if not p.is_dir() and looks_like_mask(p.name)]
    images = [p for p in ignored if not p.is_dir() and not looks_like_mask(p.name)]
    folders = [p for p in ignored if p.is_dir()]
    parts = []
    if images:
        parts.append(f"{_names(images)} (beside a DICOM series, which is one study; give {'it' if len(images) == 1 else 'them'} "
                     "as an input of its own)")  # fmt: skip
    if masks:
        parts.append(f"{len(masks)} mask{'s' if len(masks) > 1 else ''} (*_seg, *_gt: {_names(masks, 2)})")
    if folders:
        one = len(folders) == 1
        parts.append(f"{_names(folders)} (not {'a study' if one else 'studies'} here; give "
                     f"{'it as an input of its own' if one else 'them as inputs of their own'}, or a pattern such as "
                     f"\"{folder}/**/*.nii.gz\")")  # fmt: skip
    return f"{folder}: not segmented: " + "; ".join(parts)


def expand_pattern(pattern: str) -> list[Path]:
    """Sorted matches of a glob pattern (``**`` recursive): NIfTI images that are not masks, and
    folders; raises when nothing usable matches."""
    matches = [Path(m) for m in sorted(glob.glob(pattern, recursive=True))]
    found = [p for p in matches if p.is_dir() or (is_image_name(p.name) and not looks_like_mask(p.name))]
    if not found:
        what = f"only {len(matches)} file(s) that are not images or are masks (*_seg, *_gt)" if matches else "nothing"
        raise InputFileNotFoundError(f'The pattern "{pattern}" matches {what}')
    return found


def expand_inputs(inputs: list[Path], notes: list[str] | None = None) -> list[tuple[Path, bool]]:
    """Command-line inputs -> (path, came from expanding a pattern or folder) per study input.

    ``notes``, when given, receives one line per folder whose expansion left entries out
    (:func:`ignored_note`)."""
    out: list[tuple[Path, bool]] = []
    for p in inputs:
        if is_pattern(p):
            candidates = [(match, True) for match in expand_pattern(str(p))]
        elif p.exists():
            candidates = [(p, False)]
        else:
            raise InputFileNotFoundError(f'File not found: "{p}"')
        for path, expanded in candidates:
            ignored: list[Path] = []
            inside = folder_contents(path, ignored) if path.is_dir() else None
            if ignored and notes is not None:
                notes.append(ignored_note(path, ignored))
            out += [(q, True) for q in inside] if inside is not None else [(path, expanded)]
    return out


def _study_for(path: Path, expanded: bool) -> Study:
    """The study of one input path; a broken patient folder found by expansion becomes a study
    that fails on its own (so one bad folder does not stop a batch)."""
    if is_patient_folder(path):
        try:
            return _patient_study(path)
        except CardiosegError as exc:
            if not expanded:
                raise
            return Study(path.name, StudyKind.SINGLE, (path,), problem=str(exc))
    if path.is_dir():  # a DICOM series folder: named after the folder, unless its name says nothing
        return Study(dicom_study_name(path), StudyKind.SINGLE, (path,))
    return Study(strip_image_suffix(path.name), StudyKind.SINGLE, (path,))


#: folder names that say nothing about the study: a DICOM study in one is named from its headers
GENERIC_FOLDER = re.compile(r"^(dicom|dcm|dicoms|images?|data|series|ser|scans?)?[_\-. ]*\d*$", re.IGNORECASE)


def dicom_study_name(folder: Path) -> str:
    """A DICOM series folder's study name: the folder's name, or ``<PatientID>_s<SeriesNumber>``
    (from the first DICOM file's header, the only file read) when the name says nothing
    (``dicom``, ``DICOM``, ``series1``, ``001``...) and the header has a PatientID.

    >>> bool(GENERIC_FOLDER.match("series1")), bool(GENERIC_FOLDER.match("patient001"))
    (True, False)
    """
    name = folder.resolve().name
    if not GENERIC_FOLDER.match(name):
        return name
    from cardioseg.io.dicom_headers import read_header

    first = next((f for f in _dicom_files(folder)), None)
    if first is None:
        return name
    try:
        header = read_header(first)
    except CardiosegError:
        return name
    patient = re.sub(r"[^A-Za-z0-9._-]+", "-", header.patient_id).strip("-.")
    if not patient:
        return name
    return patient + (f"_s{header.series_number}" if header.series_number is not None else "")


def _dicom_files(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, _ in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        with os.scandir(dirpath) as it:
            for e in sorted(it, key=lambda e: e.name):
                if _may_be_dicom(e):
                    yield Path(e.path)


def _unique_names(studies: list[Study]) -> list[Study]:
    """Studies named from DICOM headers may meet (two series folders of one patient): the later
    ones get ``-2``, ``-3``... so that no two studies write the same files."""
    seen: dict[str, int] = {}
    out = []
    for s in studies:
        n = seen.get(s.name, 0) + 1
        seen[s.name] = n
        derived = len(s.paths) == 1 and s.paths[0].is_dir() and s.name != s.paths[0].resolve().name
        out.append(replace(s, name=f"{s.name}-{n}") if n > 1 and derived else s)
    return out


def _patient_study(path: Path) -> Study:
    folder = read_patient_folder(path)
    info = folder.info
    paths: tuple[Path, ...]
    if folder.ed_path is not None and folder.es_path is not None:
        kind, paths, ed_frame, es_frame = StudyKind.PAIR, (folder.ed_path, folder.es_path), None, None
    else:
        assert folder.cine_path is not None  # read_patient_folder finds a pair or a cine, else raises
        kind, paths = StudyKind.CINE, (folder.cine_path,)
        ed_frame = info.ed - 1 if info.ed else None
        es_frame = info.es - 1 if info.es else None
    return Study(
        folder.name, kind, paths, ed_frame=ed_frame, es_frame=es_frame,
        height_cm=info.height_cm, weight_kg=info.weight_kg, group=info.group,
    )  # fmt: skip


def plan_studies(
    inputs: list[Path], ed: Path | None, es: Path | None, study: str | None = None, notes: list[str] | None = None
) -> list[Study]:
    """Turn command-line inputs into studies; raises on a missing path, a pattern that matches
    nothing, an unusable folder or two studies that would write the same output file.
    ``notes`` receives a line per folder whose expansion left entries out.

    Inputs are NIfTI files, DICOM series folders, patient folders, batch folders (expanded by
    ``folder_contents``) and glob patterns (``expand_pattern``). The same input reached twice
    (say by a folder and a pattern) is one study.
    """
    studies: list[Study] = []
    if (ed is None) != (es is None):
        raise ConfigError("--ed and --es go together: give both frames of the pair")
    if ed is not None and es is not None:
        for p in (ed, es):
            if not p.exists():
                raise InputFileNotFoundError(f'File not found: "{p}"')
        studies.append(Study(study or study_name(ed, es), StudyKind.PAIR, (ed, es)))
    studies += [_study_for(p, expanded) for p, expanded in expand_inputs(inputs, notes)]
    seen: set[tuple[Path, ...]] = set()
    unique: list[Study] = []
    for s in studies:
        key = tuple(p.resolve() for p in s.paths)
        if key not in seen:
            seen.add(key)
            unique.append(s)
    unique = _unique_names(unique)
    for s in unique:
        check_output_name(s.name)
    _check_no_clashes(unique)
    return unique


def _check_no_clashes(studies: list[Study]) -> None:
    """Refuse two studies that would write the same output file."""
    owner: dict[str, Study] = {}
    clashes: list[tuple[str, Study, Study]] = []
    for s in studies:
        for name in {p.name for p in output_paths(s, Path("."))}:
            other = owner.setdefault(name, s)
            if other is not s:
                clashes.append((name, other, s))
    if clashes:
        name, a, b = clashes[0]
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise ConfigError(
            f'two inputs would write the same output {name}: "{a.paths[0]}" and "{b.paths[0]}"{more}; rename one'
        )


def check_output_name(name: str) -> None:
    """Refuse a study name that would put an output outside the output folder."""
    bad = not name or name in {".", ".."} or any(c in name for c in ("/", "\\", "\0")) or name.startswith("-")
    if bad:
        raise ConfigError(
            f"study name {name!r} cannot be used for output files (no path separators, not empty, "
            "'.', '..' or starting with '-'); pass --study NAME"
        )


DICOM_SLICES_GUESS = 10  # slices per phase assumed when estimating a DICOM series' frames (progress only)


def expected_frames(study: Study) -> int:
    """How many 3D frames ``study`` holds, from headers only (an estimate for progress bars:
    a NIfTI cine's time axis, one per 3D file, a DICOM series' files / 10 slices)."""
    total = 0
    for path in study.paths:
        try:
            if path.is_dir():
                from cardioseg.io import find_dicom_files

                total += max(1, round(len(find_dicom_files(path)) / DICOM_SLICES_GUESS))
                continue
            import nibabel as nib

            from cardioseg.io.nifti import squeeze_shape

            img: Any = nib.load(str(path))  # header only
            shape = squeeze_shape(tuple(int(v) for v in img.shape))
            total += shape[3] if len(shape) == 4 else 1
        except Exception:  # noqa: BLE001 - an unreadable input fails later, with its own error; here it counts as one
            total += 1
    return max(total, 1)
