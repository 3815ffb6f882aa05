"""``cardioseg measure``: the clinical report from existing label masks (cardioseg's, another
tool's, an expert's), with the same measuring function, report and ``summary.csv`` as
``predict`` and no network (torch is never imported).

Inputs, planned from names only:

- a mask file (``X_seg.nii.gz``, ``X_gt.nii.gz``, any NIfTI label map): study ``X``, a 3D
  frame or a 4D cine (ED/ES from the LV curve, or ``--ed-frame/--es-frame``);
- ``--ed A --es B``: an ED/ES pair of 3D masks;
- an ACDC patient folder (``Info.cfg``): the masks of the frames it names
  (``patientNNN_frameXX_gt``, else ``_seg``), with its height, weight and group;
- a ``cardioseg predict`` output folder: one study per report, with the masks it lists (to
  re-measure masks edited by hand, say);
- any other folder: its patient sub-folders and mask files, one level deep; ``X_ED``/``X_ES``
  masks form a pair ``X``.
"""

from __future__ import annotations

import glob
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cardioseg.batch.measure import measure_study
from cardioseg.batch.outputs import REPORT_SUFFIX, refresh_summary, report_path
from cardioseg.batch.planning import check_output_name, is_pattern
from cardioseg.batch.run import check_pair, unexpected_error, write_bullseye_of
from cardioseg.batch.studies import Study, StudyKind, StudyOptions, StudyResult
from cardioseg.errors import CardiosegError, ConfigError, InputFileNotFoundError, UnsupportedInputError
from cardioseg.io import (
    REFERENCE_SUFFIX,
    Volume,
    is_image_name,
    is_patient_folder,
    read_info_cfg,
    read_volume,
    strip_image_suffix,
)
from cardioseg.io.layouts import ACDC_INFO_NAME, PHASE_SUFFIX_RE, acdc_frame_file, find_image_file
from cardioseg.io.volume import LABEL_MAP_WARNING
from cardioseg.labels import LabelMap
from cardioseg.report import build_report, load_report, provenance, write_report

#: the endings stripped from a mask's name to name its study (``X_seg`` -> ``X``)
MASK_NAME_SUFFIXES = ("_seg", "_gt", "_label", "_mask", "_pred")
#: what a measured study's report says made the masks
MEASURED = {"name": "masks given to cardioseg measure", "sha256": None}


def mask_study_name(path: Path) -> str:
    """``X_seg.nii.gz`` -> ``X``; ``X.nii.gz`` -> ``X``.

    >>> mask_study_name(Path("patient001_frame01_gt.nii.gz"))
    'patient001_frame01'
    """
    stem = strip_image_suffix(path.name)
    for suffix in MASK_NAME_SUFFIXES:
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def _patient_masks(folder: Path) -> Study:
    """The ED/ES masks of an ACDC patient folder (``_gt``, else ``_seg``), or its 4D mask."""
    info = read_info_cfg(folder / ACDC_INFO_NAME)
    base = Study(folder.name, StudyKind.PAIR, (), height_cm=info.height_cm, weight_kg=info.weight_kg, group=info.group)
    for suffix in (REFERENCE_SUFFIX, "_seg"):
        ed, es = acdc_frame_file(folder, info.ed, suffix), acdc_frame_file(folder, info.es, suffix)
        if ed is not None and es is not None:
            return replace(base, paths=(ed, es))
    for suffix in (REFERENCE_SUFFIX, "_seg"):
        cine = find_image_file(folder / f"{folder.name}_4d{suffix}")
        if cine is not None:
            ed_frame = info.ed - 1 if info.ed else None
            es_frame = info.es - 1 if info.es else None
            return replace(base, kind=StudyKind.CINE, paths=(cine,), ed_frame=ed_frame, es_frame=es_frame)
    raise UnsupportedInputError(
        f'Folder "{folder}": no masks for the ED and ES frames its Info.cfg names (ED={info.ed}, ES={info.es}): '
        f"expected {folder.name}_frameNN_gt.nii.gz or _seg.nii.gz"
    )


def _report_studies(folder: Path) -> list[Study] | None:
    """One study per cardioseg report in ``folder`` whose masks are all there, or None when it
    holds no report."""
    reports = sorted(folder.glob(f"*{REPORT_SUFFIX}"))
    if not reports:
        return None
    studies = []
    for path in reports:
        rep = load_report(path)
        masks = [folder / str(m) for m in (rep or {}).get("masks") or []]
        if rep is None or not masks:
            continue
        if not all(m.is_file() for m in masks):
            studies.append(Study(rep["study"], StudyKind.SINGLE, tuple(masks),
                                 problem=f"the masks its report {path.name} lists are not all in {folder}"))  # fmt: skip
            continue
        kind = StudyKind.PAIR if rep.get("kind") == "pair" and len(masks) == 2 else StudyKind.SINGLE
        subject = rep.get("subject") or {}
        studies.append(Study(rep["study"], kind, tuple(masks), height_cm=subject.get("height_cm"),
                             weight_kg=subject.get("weight_kg"), group=subject.get("group")))  # fmt: skip
    return studies


def _folder_studies(folder: Path) -> list[Study]:
    if is_patient_folder(folder):
        return [_patient_masks(folder)]
    from_reports = _report_studies(folder)
    if from_reports is not None:
        return from_reports
    studies: list[Study] = []
    phases: dict[str, dict[str, Path]] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if is_patient_folder(entry):
            studies.append(_patient_masks(entry))
        elif entry.is_file() and is_image_name(entry.name):
            name = mask_study_name(entry)
            m = PHASE_SUFFIX_RE.match(name)
            if m:
                phases.setdefault(m["study"], {})[m["phase"].upper()] = entry
            else:
                studies.append(Study(name, StudyKind.SINGLE, (entry,)))
    for name, found in sorted(phases.items()):
        if set(found) == {"ED", "ES"}:
            studies.append(Study(name, StudyKind.PAIR, (found["ED"], found["ES"])))
        else:
            studies += [Study(mask_study_name(p), StudyKind.SINGLE, (p,)) for p in found.values()]
    if not studies:
        raise InputFileNotFoundError(f'Folder "{folder}" holds no masks (NIfTI files) and no patient folders')
    return studies


def plan_mask_studies(inputs: list[Path], ed: Path | None = None, es: Path | None = None,
                      study: str | None = None) -> list[Study]:  # fmt: skip
    """Command-line inputs of ``measure`` -> studies (names only, no image read); raises on a
    missing path, a pattern that matches nothing or two studies with the same name."""
    from cardioseg.io import study_name

    if (ed is None) != (es is None):
        raise ConfigError("--ed and --es go together: give both masks of the pair")
    studies: list[Study] = []
    if ed is not None and es is not None:
        for p in (ed, es):
            if not p.exists():
                raise InputFileNotFoundError(f'File not found: "{p}"')
        studies.append(Study(study or mask_study_name(Path(study_name(ed, es) + ".nii.gz")), StudyKind.PAIR, (ed, es)))
    for p in inputs:
        matches = [Path(m) for m in sorted(glob.glob(str(p), recursive=True))] if is_pattern(p) else [p]
        if not matches:
            raise InputFileNotFoundError(f'The pattern "{p}" matches nothing')
        for path in matches:
            if path.is_dir():
                studies += _folder_studies(path)
            elif path.is_file():
                studies.append(Study(study if study and len(inputs) == 1 and not is_pattern(p) else mask_study_name(path),
                                     StudyKind.SINGLE, (path,)))  # fmt: skip
            else:
                raise InputFileNotFoundError(f'File not found: "{path}"')
    seen: dict[str, Study] = {}
    for s in studies:
        check_output_name(s.name)
        other = seen.setdefault(s.name, s)
        if other is not s:
            raise ConfigError(f'two inputs would write the same report {s.name}{REPORT_SUFFIX}: '
                              f'"{other.paths[0]}" and "{s.paths[0]}"; measure them into different folders')  # fmt: skip
    return studies


def read_mask(path: Path, label_map: LabelMap, max_voxels: int | None = None) -> Volume:
    """Read a label mask and check it: integer values within ``label_map`` only."""
    vol = read_volume(path, max_voxels)
    data = vol.data
    if not np.issubdtype(data.dtype, np.integer):
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise UnsupportedInputError(f'"{path}" is not a label map (it has non-integer values): is it an image?')
        data = rounded
    values = {int(v) for v in np.unique(data)}
    unknown = values - {0, label_map.rv, label_map.myo, label_map.lv}
    if len(values) > 8:
        raise UnsupportedInputError(f'"{path}" holds {len(values)} distinct values: an image, not a label map')
    if unknown:
        raise UnsupportedInputError(
            f'"{path}" has label values {sorted(unknown)} outside the {label_map.name} label map '
            f"{label_map.as_dict()}: another convention (--labels)?"
        )
    meta = replace(vol.meta, warnings=tuple(w for w in vol.meta.warnings if not w.endswith(LABEL_MAP_WARNING)))
    return replace(vol, data=data.astype(np.uint8, copy=False), meta=meta)


@dataclass(frozen=True)
class MeasureOptions:
    """What ``measure`` needs beyond the study options: the masks' label map."""

    label_map: LabelMap
    study: StudyOptions = field(default_factory=StudyOptions)


def measure_one(study: Study, out_dir: Path, options: MeasureOptions) -> StudyResult:
    """Read and check one study's masks, measure them, write its report (atomically)."""
    t0 = time.perf_counter()
    if study.problem is not None:
        raise UnsupportedInputError(study.problem)
    volumes = [read_mask(p, options.label_map, options.study.max_voxels) for p in study.paths]
    if study.kind is StudyKind.PAIR:
        check_pair(volumes, ("the ED mask", "the ES mask"), "is 4D; give one 3D mask per phase (or the 4D mask alone)", "masks")
    else:
        study = replace(study, kind=StudyKind.CINE if volumes[0].is_cine else StudyKind.FRAME)
    masks = [v.data for v in volumes]
    m = measure_study(study, volumes, masks, options.label_map, options.study)
    report = build_report(
        study=study.name, inputs=[str(p) for p in study.paths], masks=[str(p) for p in study.paths],
        kind=study.kind.value, frame_volumes=m.per_frame, ed_frame=m.ed_index, es_frame=m.es_index,
        measures=m.measures, qc_flags=[f.code for f in m.flags], qc=[f.as_dict() for f in m.flags],
        label_map=options.label_map.as_dict(), myo_density_g_ml=options.study.myo_density_g_ml,
        weights=MEASURED, device="cpu", precision="none", runtime_s=round(time.perf_counter() - t0, 3),
        image={"shape": [list(v.data.shape) for v in volumes], "spacing_mm": [list(v.spacing_mm) for v in volumes]},
        subject={"height_cm": m.height_cm, "weight_kg": m.weight_kg, "group": study.group},
        warnings=[w for v in volumes for w in v.meta.warnings] + m.warnings,
        segmentation={"source": "measure", "label_map": options.label_map.name},
        extra=m.regional,
        provenance=provenance(volumes, study.kind.value, m.ed_index, m.es_index, options.study.command),
    )  # fmt: skip
    path = report_path(out_dir, study.name)
    written = write_bullseye_of(report, out_dir, study.name) if options.study.overlay else []
    try:
        write_report(report, path)
    except BaseException:
        for done in written:
            done.unlink(missing_ok=True)
        raise
    return StudyResult(study, [*written, path], report)


def run_measure(
    studies: list[Study],
    out_dir: Path,
    options: MeasureOptions,
    on_result: Callable[[StudyResult], Any] | None = None,
) -> list[StudyResult]:
    """Measure every study (one failing study does not stop the others) and rebuild
    ``summary.csv``. Refuses an output folder where a report would replace the report of
    ``predict`` that lists the very masks being measured."""
    out_dir = Path(out_dir)
    for s in studies:
        target = report_path(out_dir, s.name)
        if target.exists() and s.paths and all(p.resolve().parent == out_dir.resolve() for p in s.paths):
            raise ConfigError(f'"{target}" is the report of the masks being measured; '
                              "write the new reports to another folder (-o)")  # fmt: skip
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CardiosegError(f'cannot create the output folder "{out_dir}": {exc.strerror or exc}') from None
    results = []
    for s in studies:
        try:
            result = measure_one(s, out_dir, options)
        except CardiosegError as exc:
            result = StudyResult(s, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug: one line, the traceback kept for --debug
            result = StudyResult(s, error=unexpected_error(exc), traceback=traceback.format_exc())
        results.append(result)
        if on_result is not None:
            on_result(result)
    if any(r.report for r in results):
        refresh_summary(out_dir, options.study.html)
    return results


__all__ = [
    "MASK_NAME_SUFFIXES", "MeasureOptions", "mask_study_name", "measure_one", "plan_mask_studies", "read_mask",
    "run_measure",
]  # fmt: skip
