"""Pairing prediction files with reference files, and what is known about each pair.

Name matching: a file's *key* is its name without ``.nii[.gz]`` and without the side's suffix
(``X_seg.nii.gz`` and ``X_gt.nii.gz`` both have key ``X``). Each side has a list of candidate
suffixes; the first one that any file of that side ends with is the side's convention, and
only files with that suffix count (so the images next to ``_gt`` labels in an ACDC folder are
not mistaken for references). Folders are searched recursively; hidden files are ignored.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cardioseg.errors import ConfigError, InputFileNotFoundError
from cardioseg.io import IMAGE_SUFFIXES, PRED_SUFFIXES, REF_SUFFIXES, read_info_cfg, strip_image_suffix
from cardioseg.io.layouts import ACDC_INFO_NAME, FRAME_NUMBER_RE, PHASE_SUFFIX_RE

__all__ = ["PRED_SUFFIXES", "REF_SUFFIXES", "Case", "Pairing", "describe_cases", "pair_files", "read_pairs_csv"]


@dataclass(frozen=True)
class Case:
    """A prediction file and its reference, with what is known about them."""

    key: str
    pred: Path
    ref: Path
    study: str | None = None  # cases of one study (ED + ES) form a clinical pair
    phase: str | None = None  # "ED" | "ES" | None (for a 4D pair: decided per frame)
    group: str | None = None  # pathology group, e.g. from Info.cfg
    ed_frame: int | None = None  # 0-based ED/ES frames of a 4D pair, when known
    es_frame: int | None = None


@dataclass(frozen=True)
class Pairing:
    cases: list[Case]
    unmatched_pred: list[Path]
    unmatched_ref: list[Path]


def _image_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = []
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).parts
        if any(part.startswith(".") for part in rel) or not p.is_file():
            continue
        if p.name.lower().endswith(IMAGE_SUFFIXES):
            files.append(p)
    return files


def _keyed(files: list[Path], suffixes: Sequence[str], side: str) -> dict[str, Path]:
    """Key -> file for one side, keeping only the files of the side's suffix convention."""
    stems = [(strip_image_suffix(f.name), f) for f in files]
    for suffix in suffixes:
        chosen = [(s[: len(s) - len(suffix)] if suffix else s, f) for s, f in stems if s.endswith(suffix) and s != suffix]
        if chosen:
            break
    else:
        return {}
    keyed: dict[str, Path] = {}
    for key, f in chosen:
        if key in keyed:
            raise ConfigError(f'two {side} files have the name "{key}": "{keyed[key]}" and "{f}"')
        keyed[key] = f
    return keyed


def pair_files(
    pred: Path,
    ref: Path,
    pred_suffixes: Sequence[str] = PRED_SUFFIXES,
    ref_suffixes: Sequence[str] = REF_SUFFIXES,
) -> Pairing:
    """Match prediction files to reference files by key (see the module docstring).

    A pair of single files is matched whatever their names.
    """
    for p in (pred, ref):
        if not p.exists():
            raise InputFileNotFoundError(f'File not found: "{p}"')
    if pred.is_file() and ref.is_file():
        key = next(iter(_keyed([pred], pred_suffixes, "prediction")), strip_image_suffix(pred.name))
        return Pairing([Case(key, pred, ref)], [], [])
    if pred.is_file() != ref.is_file():
        raise ConfigError("give two files or two folders (PRED and REF are one of each)")
    preds = _keyed(_image_files(pred), pred_suffixes, "prediction")
    refs = _keyed(_image_files(ref), ref_suffixes, "reference")
    if not preds:
        raise InputFileNotFoundError(f'no NIfTI masks found in "{pred}"')
    if not refs:
        raise InputFileNotFoundError(f'no NIfTI masks found in "{ref}"')
    cases = [Case(k, preds[k], refs[k]) for k in sorted(preds.keys() & refs.keys())]
    if not cases:
        raise ConfigError(
            f'no prediction in "{pred}" has a reference in "{ref}" with the same name '
            f"(e.g. {next(iter(sorted(preds)))!r}); check --pred-suffix/--ref-suffix"
        )
    return Pairing(
        cases,
        [preds[k] for k in sorted(preds.keys() - refs.keys())],
        [refs[k] for k in sorted(refs.keys() - preds.keys())],
    )




def read_pairs_csv(path: Path) -> dict[str, tuple[str, str, str | None]]:
    """``--pairs FILE.csv``: columns ``study,ed,es`` (case keys) and optionally ``group``.

    Returns case key -> (study, phase, group).
    """
    if not path.is_file():
        raise InputFileNotFoundError(f'File not found: "{path}"')
    out: dict[str, tuple[str, str, str | None]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"study", "ed", "es"} - set(reader.fieldnames or [])
        if missing:
            raise ConfigError(f'{path}: needs the columns study, ed, es (missing: {", ".join(sorted(missing))})')
        for row in reader:
            group = (row.get("group") or "").strip() or None
            for phase in ("ed", "es"):
                key = strip_image_suffix((row[phase] or "").strip())
                if key:
                    out[key] = (row["study"].strip(), phase.upper(), group)
    return out


def describe_cases(cases: Iterable[Case], pairs: dict[str, tuple[str, str, str | None]] | None = None) -> list[Case]:
    """Attach study, phase and group to each case.

    In order of precedence: ``pairs`` (from ``--pairs``); an ACDC ``Info.cfg`` beside the
    reference (``..._frameNN`` keys; for a 4D reference its ED/ES frame numbers); a key ending in
    ``_ED``/``_ES``. Otherwise the case has no phase and takes no part in clinical agreement.
    """
    out = []
    infos: dict[Path, Any] = {}
    for c in cases:
        if pairs and c.key in pairs:
            study, phase, group = pairs[c.key]
            out.append(replace(c, study=study, phase=phase, group=group))
            continue
        info_path = c.ref.parent / ACDC_INFO_NAME
        if info_path not in infos and info_path.is_file():
            infos[info_path] = read_info_cfg(info_path)  # once per folder (ED and ES share it)
        if info_path in infos:
            info = infos[info_path]
            m = FRAME_NUMBER_RE.match(c.key)
            frame_phase: str | None = None
            if m:
                n = int(m.group("n"))
                frame_phase = "ED" if n == info.ed else "ES" if n == info.es else None
            study = c.ref.parent.name if c.key.startswith(c.ref.parent.name) else (m.group("study") if m else c.key)
            out.append(
                replace(
                    c, study=study, phase=frame_phase, group=info.group,
                    ed_frame=info.ed - 1 if info.ed else None, es_frame=info.es - 1 if info.es else None,
                )
            )  # fmt: skip
            continue
        m = PHASE_SUFFIX_RE.match(c.key)
        if m:
            out.append(replace(c, study=m.group("study"), phase=m.group("phase").upper()))
        else:
            out.append(replace(c, study=c.key))
    return out

