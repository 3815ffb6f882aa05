"""``cardioseg predict`` as one readable flow per study:

read -> to model space -> infer -> back to native space -> clean up -> measure -> write.

Inputs are first planned into ``Study`` objects (cheap checks, no image decoding; folders and
glob patterns are expanded into many studies), so usage mistakes fail before the model is
loaded. A batch can be split into parts (``shard``, e.g. one per Slurm array task) and resumed
(``split_finished``: a study is finished when all its outputs exist, the report written last).
Each study then either writes all of its outputs (each atomically, the report last) or none
of them; while the network works on one study the next one is read in a background thread.
``summary.csv`` is regenerated at the end of every run from the reports in the folder.
"""

from __future__ import annotations

import glob
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cardioseg.clinical import (
    DEFAULT_MYO_DENSITY,
    FrameVolumes,
    clinical_measures,
    detect_ed_es,
    frame_volumes,
)
from cardioseg.dicom import is_dicom_file
from cardioseg.errors import (
    CardiosegError,
    ConfigError,
    InputFileNotFoundError,
    QcError,
    UnsupportedInputError,
)
from cardioseg.io import (
    IMAGE_SUFFIXES,
    Volume,
    is_patient_folder,
    read_patient_folder,
    read_volume,
    strip_image_suffix,
    study_name,
    write_mask,
)
from cardioseg.qc import study_flags
from cardioseg.report import SUMMARY_NAME, build_report, load_report, write_report, write_summary


@dataclass(frozen=True)
class Study:
    """One unit of work: a 3D frame, a 4D cine, or an ED/ES pair of 3D frames."""

    name: str
    kind: str  # "frame" | "cine" | "pair"
    paths: tuple[Path, ...]  # frame/cine: (path,); pair: (ed, es)
    ed_frame: int | None = None  # 0-based override for a cine
    es_frame: int | None = None
    height_cm: float | None = None
    weight_kg: float | None = None
    group: str | None = None
    problem: str | None = None  # why it cannot run (a broken folder found by expansion)


@dataclass(frozen=True)
class StudyOptions:
    myo_density_g_ml: float = DEFAULT_MYO_DENSITY
    ed_frame: int | None = None  # applies to cine inputs only
    es_frame: int | None = None
    height_cm: float | None = None  # override Info.cfg
    weight_kg: float | None = None
    max_voxels: int | None = None  # None: io.max_voxels_default()
    strict: bool = False  # a QC flag makes the study an error (nothing written for it)
    overlay: bool = False  # also write DIR/<study>_overlay.png (needs matplotlib)
    series_uid: str | None = None  # which series of a DICOM folder holding several


@dataclass
class StudyResult:
    study: Study
    outputs: list[Path] = field(default_factory=list)
    report: dict[str, Any] | None = None
    error: str | None = None
    skipped: bool = False  # finished by an earlier run (its report was read, nothing recomputed)

    @property
    def warnings(self) -> list[str]:
        return list(self.report.get("warnings", [])) if self.report else []


# ---------------------------------------------------------------------------- planning

PATTERN_CHARS = "*?["
MASK_STEM_SUFFIXES = ("_seg", "_gt")
"""A NIfTI file whose name (without .nii/.nii.gz) ends with one of these is taken for a mask
(cardioseg's own output, or a reference label map) and skipped when a folder or a pattern is
expanded; naming such a file on the command line still segments it."""

NOT_DICOM_SUFFIXES = (
    ".nii", ".gz", ".json", ".csv", ".tsv", ".png", ".jpg", ".jpeg", ".txt", ".cfg", ".md", ".pdf",
    ".npy", ".npz", ".pt", ".h5", ".xml", ".html", ".log", ".py", ".zip", ".tar", ".mat",
)  # fmt: skip
"""Files with these endings are never opened to look for the DICOM marker (cheap planning)."""


def is_pattern(path: Path) -> bool:
    """A glob pattern for cardioseg to expand: has ``*``, ``?`` or ``[`` and is not an existing path."""
    return any(c in str(path) for c in PATTERN_CHARS) and not path.exists()


def looks_like_mask(name: str) -> bool:
    """``X_seg.nii.gz``, ``X_gt.nii`` ...: a label map, not an image to segment."""
    return strip_image_suffix(name).lower().endswith(MASK_STEM_SUFFIXES)


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def _may_be_dicom(entry: os.DirEntry[str]) -> bool:
    name = entry.name
    if name.startswith(".") or name.upper() == "DICOMDIR" or name.lower().endswith(NOT_DICOM_SUFFIXES):
        return False
    return entry.is_file() and is_dicom_file(entry.path)


def _holds_dicom(folder: Path) -> bool:
    """True when a DICOM file lies anywhere under ``folder`` (stops at the first one found)."""
    for dirpath, dirnames, _ in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        with os.scandir(dirpath) as it:
            if any(_may_be_dicom(e) for e in it):
                return True
    return False


def folder_contents(folder: Path) -> list[Path] | None:
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
    """
    if is_patient_folder(folder):
        return None
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    if any(_may_be_dicom(e) for e in entries):
        return None
    found: list[Path] = []
    n_dicom = 0
    for e in entries:
        if e.name.startswith("."):
            continue
        path = Path(e.path)
        if e.is_dir():
            if is_patient_folder(path):
                found.append(path)
            elif _holds_dicom(path):
                found.append(path)
                n_dicom += 1
        elif e.is_file() and _is_image_name(e.name) and not looks_like_mask(e.name):
            found.append(path)
    if not found or (len(found) == 1 and n_dicom == 1):
        return None
    return found


def expand_pattern(pattern: str) -> list[Path]:
    """Sorted matches of a glob pattern (``**`` recursive): NIfTI images that are not masks, and
    folders; raises when nothing usable matches."""
    matches = [Path(m) for m in sorted(glob.glob(pattern, recursive=True))]
    found = [p for p in matches if p.is_dir() or (_is_image_name(p.name) and not looks_like_mask(p.name))]
    if not found:
        what = f"only {len(matches)} file(s) that are not images or are masks (*_seg, *_gt)" if matches else "nothing"
        raise InputFileNotFoundError(f'The pattern "{pattern}" matches {what}')
    return found


def expand_inputs(inputs: list[Path]) -> list[tuple[Path, bool]]:
    """Command-line inputs -> (path, came from expanding a pattern or folder) per study input."""
    out: list[tuple[Path, bool]] = []
    for p in inputs:
        if is_pattern(p):
            candidates = [(match, True) for match in expand_pattern(str(p))]
        elif p.exists():
            candidates = [(p, False)]
        else:
            raise InputFileNotFoundError(f'File not found: "{p}"')
        for path, expanded in candidates:
            inside = folder_contents(path) if path.is_dir() else None
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
            return Study(path.name, "single", (path,), problem=str(exc))
    if path.is_dir():  # a DICOM series folder: named after the folder
        return Study(path.resolve().name, "single", (path,))
    return Study(strip_image_suffix(path.name), "single", (path,))


def _patient_study(path: Path) -> Study:
    folder = read_patient_folder(path)
    info = folder.info
    common = {"height_cm": info.height_cm, "weight_kg": info.weight_kg, "group": info.group}
    if folder.ed_path is not None and folder.es_path is not None:
        return Study(folder.name, "pair", (folder.ed_path, folder.es_path), **common)
    assert folder.cine_path is not None
    return Study(
        folder.name, "cine", (folder.cine_path,),
        ed_frame=info.ed - 1 if info.ed else None,
        es_frame=info.es - 1 if info.es else None,
        **common,
    )  # fmt: skip


def plan_studies(inputs: list[Path], ed: Path | None, es: Path | None, study: str | None = None) -> list[Study]:
    """Turn command-line inputs into studies; raises on a missing path, a pattern that matches
    nothing, an unusable folder or two studies that would write the same output file.

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
        studies.append(Study(study or study_name(ed, es), "pair", (ed, es)))
    studies += [_study_for(p, expanded) for p, expanded in expand_inputs(inputs)]
    seen: set[tuple[Path, ...]] = set()
    unique: list[Study] = []
    for s in studies:
        key = tuple(p.resolve() for p in s.paths)
        if key not in seen:
            seen.add(key)
            unique.append(s)
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


# ---------------------------------------------------------------------------- sharding


def slurm_array(env: Mapping[str, str]) -> tuple[int, int] | None:
    """(number of parts, 0-based part) of a Slurm job array task, or None outside one.

    ``SLURM_ARRAY_TASK_COUNT`` tasks; the part is ``(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN)
    // SLURM_ARRAY_TASK_STEP`` (MIN 0 and STEP 1 when unset), so ``--array=1-10`` and
    ``--array=0-9`` both give parts 0..9.
    """
    if "SLURM_ARRAY_TASK_COUNT" not in env or "SLURM_ARRAY_TASK_ID" not in env:
        return None
    values: dict[str, int] = {}
    for key, default in (("COUNT", None), ("ID", None), ("MIN", "0"), ("STEP", "1")):
        raw = env.get(f"SLURM_ARRAY_TASK_{key}", default)
        try:
            values[key] = int(raw or "")
        except ValueError:
            raise ConfigError(f"SLURM_ARRAY_TASK_{key} is not a whole number: {raw!r}") from None
    return values["COUNT"], (values["ID"] - values["MIN"]) // max(values["STEP"], 1)


def resolve_parts(num_parts: int | None, part_id: int | None, env: Mapping[str, str]) -> tuple[int, int, bool]:
    """(number of parts, this part, whether taken from Slurm) from the options and environment.

    Each option given wins; a missing one comes from a Slurm job array when there is one
    (``--num-parts 1`` turns splitting off inside an array). Raises ConfigError (one line) for
    a part outside 0..N-1 or an option missing its partner outside Slurm.
    """
    slurm = slurm_array(env)
    from_slurm = False
    if num_parts is None:
        if slurm is not None:
            num_parts, from_slurm = slurm[0], True
        elif part_id is not None:
            raise ConfigError(f"--part-id {part_id} needs --num-parts N")
        else:
            num_parts = 1
    if part_id is None:
        if num_parts == 1:
            part_id = 0
        elif slurm is not None:
            part_id, from_slurm = slurm[1], True
        else:
            raise ConfigError(
                f"--num-parts {num_parts} needs --part-id I (0..{num_parts - 1}) outside a Slurm job array"
            )
    if num_parts < 1:
        raise ConfigError(f"the number of parts must be at least 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        where = (
            f" (from SLURM_ARRAY_TASK_ID={env.get('SLURM_ARRAY_TASK_ID')}; the array must be one range such as "
            f"--array=0-{num_parts - 1}, or pass --num-parts/--part-id)"
            if from_slurm else ""
        )  # fmt: skip
        raise ConfigError(f"part {part_id} is outside 0..{num_parts - 1} for {num_parts} parts{where}")
    return num_parts, part_id, from_slurm


def shard(studies: list[Study], num_parts: int, part_id: int) -> list[Study]:
    """Part ``part_id`` of ``num_parts``: every ``num_parts``-th study in name order, starting at
    ``part_id`` (the same share whatever the order of the inputs; parts never overlap)."""
    if num_parts == 1:
        return list(studies)
    mine = set(sorted(s.name for s in studies)[part_id::num_parts])
    return [s for s in studies if s.name in mine]


# ---------------------------------------------------------------------------- outputs


def output_paths(study: Study, out_dir: Path) -> list[Path]:
    """Every file ``run_study`` may write for ``study``: masks, the report, the overlay PNG."""
    masks = [
        out_dir / f"{strip_image_suffix(p.resolve().name if p.is_dir() else p.name)}_seg.nii.gz" for p in study.paths
    ]
    return [*masks, out_dir / f"{study.name}_report.json", out_dir / f"{study.name}_overlay.png"]


def expected_outputs(study: Study, out_dir: Path, options: StudyOptions) -> list[Path]:
    """The files a finished study has: its masks, the overlay when asked for, and the report (last)."""
    *masks, report, png = output_paths(study, out_dir)
    return [*masks, *([png] if options.overlay else []), report]


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


def split_finished(studies: list[Study], out_dir: Path, options: StudyOptions) -> tuple[list[StudyResult], list[Study]]:
    """(results of the studies an earlier run finished, the studies still to run)."""
    present = set(os.listdir(out_dir)) if out_dir.is_dir() else set()
    done: list[StudyResult] = []
    todo: list[Study] = []
    for study in studies:
        report = finished_report(study, out_dir, options, present)
        if report is None:
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
        if name.startswith(".") and ".tmp" in name:
            final = name[1:].rsplit(".tmp", 1)[0].rsplit(".", 1)[0]  # drop mkstemp's ".abc123"
            if final in mine:
                (out_dir / name).unlink(missing_ok=True)
                removed += 1
    return removed


def prepare_out_dir(out_dir: Path, studies: list[Study]) -> bool:
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
        for path in [*output_paths(study, out_dir), out_dir / SUMMARY_NAME]:
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


# ---------------------------------------------------------------------------- running


def read_study(study: Study, options: StudyOptions) -> list[Volume]:
    """Read and check the images of ``study`` (the I/O-bound part that runs ahead in a thread)."""
    if study.problem is not None:
        raise UnsupportedInputError(study.problem)
    volumes = [read_volume(p, options.max_voxels, options.series_uid) for p in study.paths]
    if study.kind == "pair":
        for role, v in zip(("--ed", "--es"), volumes):
            if v.is_cine:
                raise ConfigError(f'{role} "{v.path}" is a 4D cine; give one 3D frame (or pass the cine alone)')
        if volumes[0].data.shape != volumes[1].data.shape:
            raise ConfigError(f"ED and ES frames differ in shape {volumes[0].data.shape} vs {volumes[1].data.shape}")
    return volumes


def run_study(
    study: Study,
    predictor: Any,
    out_dir: Path,
    options: StudyOptions,
    on_frame: Callable[[int], Any] | None = None,
    volumes: list[Volume] | None = None,
    masks: list[np.ndarray] | None = None,
) -> StudyResult:
    """Segment and measure one study and write its masks, overlay and report (all or nothing,
    the report last). ``volumes``: the study already read by ``read_study`` (else read here);
    ``masks``: their labels, already predicted (with other studies' slices, on a GPU)."""
    t0 = time.perf_counter()
    label_map = predictor.label_map
    height = options.height_cm if options.height_cm is not None else study.height_cm
    weight = options.weight_kg if options.weight_kg is not None else study.weight_kg

    # read
    if volumes is None:
        volumes = read_study(study, options)
    if study.kind == "single":
        study = replace(study, kind="cine" if volumes[0].is_cine else "frame")

    # to model space -> infer -> back to native -> clean up  (inside the Predictor)
    if masks is None:
        masks = [predictor.predict(v.data, v.affine, on_frame=on_frame) for v in volumes]

    # measure
    if study.kind == "cine":
        vol = volumes[0]
        per_frame = [frame_volumes(masks[0][..., t], vol.voxel_volume_ml, label_map) for t in range(vol.n_frames)]
    else:
        per_frame = [frame_volumes(m, v.voxel_volume_ml, label_map) for m, v in zip(masks, volumes)]
    ed_i, es_i, overridden = _choose_ed_es(study, per_frame, options)
    if ed_i is None or es_i is None:
        measures: dict[str, float | None] = {
            "lv_ml": per_frame[0].lv_ml, "rv_ml": per_frame[0].rv_ml, "myo_ml": per_frame[0].myo_ml,
            "myo_mass_g": per_frame[0].myo_ml * options.myo_density_g_ml,
        }  # fmt: skip
    else:
        measures = clinical_measures(per_frame[ed_i], per_frame[es_i], options.myo_density_g_ml, height, weight)
    flags = study_flags(
        masks, volumes, per_frame, ed_i, es_i, measures, label_map, study.kind, ed_es_overridden=overridden
    )

    if options.strict and flags:
        raise QcError("quality control (--strict): " + " ".join(f.message for f in flags))

    # write
    *mask_paths, report_path = output_paths(study, out_dir)[: len(volumes) + 1]
    report = build_report(
        study=study.name,
        inputs=[str(p) for p in study.paths],
        masks=[p.name for p in mask_paths],
        kind=study.kind,
        frame_volumes=per_frame,
        ed_frame=ed_i,
        es_frame=es_i,
        measures=measures,
        qc_flags=[f.code for f in flags],
        qc=[f.as_dict() for f in flags],
        label_map=label_map.as_dict(),
        myo_density_g_ml=options.myo_density_g_ml,
        weights=predictor.weights_report,
        device=predictor.device,
        precision=predictor.precision,
        runtime_s=round(time.perf_counter() - t0, 3),
        image={
            "shape": [list(v.data.shape) for v in volumes],
            "spacing_mm": [list(v.spacing_mm) for v in volumes],
        },
        subject={"height_cm": height, "weight_kg": weight, "group": study.group},
        warnings=[w for v in volumes for w in v.meta.get("warnings", [])],
    )
    written: list[Path] = []
    try:  # the report goes last: a study is finished (for --skip-existing) once it exists
        report_path.unlink(missing_ok=True)  # an old report must not vouch for new masks if killed
        for mask, vol, path in zip(masks, volumes, mask_paths):
            write_mask(mask, vol, path)
            written.append(path)
        if options.overlay:
            from cardioseg.overlay import overlay_path, write_study_overlay

            png = overlay_path(out_dir, study.name)
            write_study_overlay(study.kind, volumes, masks, label_map, png,
                                per_frame=per_frame if study.kind == "cine" else None,
                                ed_index=ed_i, es_index=es_i, title=study.name)  # fmt: skip
            written.append(png)
        write_report(report, report_path)
        written.append(report_path)
    except BaseException:
        for path in written:  # all or nothing for a study
            path.unlink(missing_ok=True)
        raise
    return StudyResult(study, written, report)


def _choose_ed_es(
    study: Study, per_frame: list[FrameVolumes], options: StudyOptions
) -> tuple[int | None, int | None, bool]:
    """(ED index, ES index, whether both were given rather than detected from the LV curve)."""
    if study.kind == "frame":
        return None, None, False
    if study.kind == "pair":
        return 0, 1, True
    n = len(per_frame)
    detected_ed, detected_es = detect_ed_es(per_frame)
    ed = options.ed_frame if options.ed_frame is not None else study.ed_frame
    es = options.es_frame if options.es_frame is not None else study.es_frame
    for name, value in (("ED", ed), ("ES", es)):
        if value is not None and not 0 <= value < n:
            raise ConfigError(f"{name} frame {value} is outside the cine's frames 0..{n - 1}")
    overridden = ed is not None and es is not None
    return (detected_ed if ed is None else ed), (detected_es if es is None else es), overridden


def run_predict(
    studies: list[Study],
    predictor: Any,
    out_dir: Path,
    options: StudyOptions,
    progress: Callable[[Study, int], Any] | None = None,
    on_result: Callable[[StudyResult], Any] | None = None,
) -> list[StudyResult]:
    """Run every study; a failing study is recorded and the others go on. Rewrites summary.csv.

    While the network works on study k, study k+1 is read in a background thread (one slot:
    at most two studies' images in memory); a read error belongs to its own study.
    ``progress(study, frame)`` reports frames, ``on_result(result)`` each finished study.

    When ``pools_studies(predictor)`` (a GPU, by default), consecutive studies are gathered
    until they fill a forward pass (``predictor.batch_size`` slices) and segmented together,
    then measured and written one by one; reading runs ahead by as many studies.
    """
    results: list[StudyResult] = []
    pooled = pools_studies(predictor)
    readers = min(4, os.cpu_count() or 1) if pooled else 1
    pool = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="cardioseg-read")
    ahead: deque[Future[list[Volume]]] = deque()
    queued = 0

    def read_ahead(depth: int) -> None:
        nonlocal queued
        while queued < len(studies) and len(ahead) < depth:
            ahead.append(pool.submit(read_study, studies[queued], options))
            queued += 1

    def finish(result: StudyResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    try:
        k = 0
        while k < len(studies):
            if not pooled:
                read_ahead(2)  # this study and the next
                study = studies[k]
                on_frame = (lambda t, s=study: progress(s, t)) if progress else None
                current = ahead.popleft()
                finish(_run_one(study, predictor, out_dir, options, on_frame, current))
                del current  # free this study's images before the next one is read
                k += 1
                continue
            group: list[tuple[Study, Future[list[Volume]]]] = []
            slices = 0
            while k < len(studies) and slices < predictor.batch_size:
                read_ahead(1 + 2 * readers)
                group.append((studies[k], ahead.popleft()))
                k += 1
                if group[-1][1].exception() is None:  # (a study that failed to read takes no room)
                    slices += sum(int(np.prod(v.data.shape[2:])) for v in group[-1][1].result())
            for result in _run_group(group, predictor, out_dir, options, progress):
                finish(result)
            del group
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    refresh_summary(out_dir)
    return results


def pools_studies(predictor: Any) -> bool:
    """Whether ``run_predict`` pools several studies per forward pass for this predictor."""
    choice = getattr(getattr(predictor, "options", None), "batch_studies", None)
    if choice is None:
        return str(getattr(predictor, "device", "cpu")).startswith("cuda")
    return bool(choice)


def _run_group(
    group: list[tuple[Study, Future[list[Volume]]]],
    predictor: Any,
    out_dir: Path,
    options: StudyOptions,
    progress: Callable[[Study, int], Any] | None,
) -> list[StudyResult]:
    """Segment the frames of several studies together, then measure and write each (in order;
    a study that failed to read gets its error).

    If the pooled prediction fails, every study is segmented alone, so that an error is
    reported by the study that causes it.
    """
    from cardioseg.inference import frames_of

    read = [(study, future.result()) for study, future in group if future.exception() is None]
    frames = [f for _, volumes in read for v in volumes for f in frames_of(v.data, v.affine)]
    try:
        labels = predictor.predict_many(frames) if frames else []
    except (CardiosegError, MemoryError, RuntimeError):
        labels = None
    results = []
    start = 0
    for study, future in group:
        masks = None
        if labels is not None and future.exception() is None:
            masks = []
            for v in future.result():
                n = v.n_frames if v.is_cine else 1
                part = labels[start : start + n]
                start += n
                masks.append(np.stack(part, axis=-1) if v.is_cine else part[0])
                for t in range(n if progress else 0):
                    progress(study, t)  # type: ignore[misc]
        results.append(_run_one(study, predictor, out_dir, options, None, future, masks))
    return results


def _run_one(
    study: Study,
    predictor: Any,
    out_dir: Path,
    options: StudyOptions,
    on_frame: Callable[[int], Any] | None,
    volumes: Future[list[Volume]],
    masks: list[np.ndarray] | None = None,
) -> StudyResult:
    """``run_study`` on the images read ahead, with the errors that belong to one study
    (reading included) turned into its result."""
    try:
        return run_study(study, predictor, out_dir, options, on_frame, volumes.result(), masks)
    except CardiosegError as exc:
        return StudyResult(study, error=str(exc))
    except MemoryError:
        return StudyResult(study, error="not enough memory for this study (try --max-voxels or a larger machine)")
    except OSError as exc:  # disk full, permission denied, ... while reading or writing
        where = f' "{exc.filename}"' if exc.filename else ""
        return StudyResult(study, error=f"input/output error{where}: {exc.strerror or exc}")


def refresh_summary(out_dir: Path) -> Path | None:
    """Regenerate ``out_dir/summary.csv`` from the reports there (see ``report.write_summary``)."""
    try:
        return write_summary(out_dir)
    except OSError as exc:
        raise CardiosegError(f'could not write "{out_dir / SUMMARY_NAME}": {exc.strerror or exc}') from None
