"""Labelled training data: finding it, splitting it into folds, and the preprocessed cache.

Two layouts are understood:

- **ACDC**: ``ROOT/patientNNN/`` folders with ``Info.cfg`` (ED/ES frame numbers, group) and
  ``patientNNN_frameXX.nii.gz`` + ``patientNNN_frameXX_gt.nii.gz`` (or ``.nii``) for the ED and ES
  frames (the layout is :mod:`cardioseg.io.layouts`).
- **generic**: ``ROOT/images/X.nii.gz`` and ``ROOT/labels/X.nii.gz`` (or ``X_gt``/``X_seg``)
  with matching names. A name ending in ``_ED``/``_ES`` gives the phase and the patient
  (``case7_ED`` -> patient ``case7``); otherwise each file is its own patient. An optional
  ``ROOT/groups.csv`` (``patient,group``) gives the groups used to stratify folds.

``cardioseg preprocess`` turns either into a cache folder of memory-mapped arrays:

    images.npy    (N, fov, fov) float16  model-space slices, clipped and z-scored per frame
    labels.npy    (N, fov, fov) uint8
    distmaps.npy  (N, C-1, fov, fov) float16  truncated signed distance maps (DMR Eq. 2), px
    index.csv     one row per slice: patient, group, phase, frame, slice, n_slices, position
                  (``Cache.frame_rows``/``context_rows`` rebuild stacks and neighbours from it)
    meta.json     preprocessing settings, label map, truncation, frames, cardioseg version

It is written to a temporary folder beside the target and renamed at the end, so an
interrupted run leaves no half cache behind.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from cardioseg.errors import ConfigError, InputFileNotFoundError
from cardioseg.io import read_volume
from cardioseg.io.layouts import (
    ACDC_INFO_NAME,
    LABEL_SUFFIXES,
    REFERENCE_SUFFIX,
    acdc_frame_file,
    acdc_frame_stem,
    is_image_name,
    is_patient_folder,
    read_info_cfg,
    strip_image_suffix,
)
from cardioseg.labels import ACDC, LabelMap
from cardioseg.preprocess import DISTANCE_TRUNCATION_PX, PreprocessConfig, distance_maps, normalize_intensity

CACHE_FORMAT = "cardioseg-cache/1"


@dataclass(frozen=True)
class LabelledFrame:
    """One 3D image with its expert labels."""

    patient: str
    group: str
    phase: str  # "ED" | "ES" | "" when unknown
    image: Path
    labels: Path

    @property
    def name(self) -> str:
        return f"{self.patient}:{self.phase}" if self.phase else f"{self.patient}:{self.image.name}"


@dataclass(frozen=True)
class Patient:
    name: str
    group: str
    folder: Path
    ed: int
    es: int


def acdc_patients(root: Path) -> list[Patient]:
    """Every ``patientNNN`` folder with an Info.cfg under ``root``, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise InputFileNotFoundError(f'Folder not found: "{root}"')
    patients = []
    for folder in sorted(root.iterdir()):
        if is_patient_folder(folder):
            info = read_info_cfg(folder / ACDC_INFO_NAME)
            if info.ed is None or info.es is None:
                continue
            patients.append(Patient(folder.name, info.group or "unknown", folder, info.ed, info.es))
    if not patients:
        raise ConfigError(f'No ACDC patient folders (with Info.cfg) in "{root}"')
    return patients


def _acdc_frames(root: Path) -> list[LabelledFrame]:
    frames = []
    for p in acdc_patients(root):
        for phase, number in (("ED", p.ed), ("ES", p.es)):
            stem = acdc_frame_stem(p.folder, number)
            image = acdc_frame_file(p.folder, number) or Path(f"{stem}.nii.gz")
            labels = acdc_frame_file(p.folder, number, REFERENCE_SUFFIX) or Path(f"{stem}{REFERENCE_SUFFIX}.nii.gz")
            for f in (image, labels):
                if not f.is_file():
                    raise InputFileNotFoundError(f'File not found: "{f}" (named by {p.folder / ACDC_INFO_NAME})')
            frames.append(LabelledFrame(p.name, p.group, phase, image, labels))
    return frames


def _generic_frames(root: Path) -> list[LabelledFrame]:
    images_dir, labels_dir = root / "images", root / "labels"
    groups: dict[str, str] = {}
    if (root / "groups.csv").is_file():
        with open(root / "groups.csv", newline="") as table:
            groups = {r["patient"]: r["group"] for r in csv.DictReader(table)}
    labels: dict[str, Path] = {}
    for f in sorted(labels_dir.iterdir()):
        stem = strip_image_suffix(f.name)
        if is_image_name(f.name):
            for suffix in LABEL_SUFFIXES:
                if stem.endswith(suffix):
                    labels.setdefault(stem[: len(stem) - len(suffix)] if suffix else stem, f)
                    break
    frames = []
    for f in sorted(images_dir.iterdir()):
        if not is_image_name(f.name):
            continue
        key = strip_image_suffix(f.name)
        if key not in labels:
            raise InputFileNotFoundError(f'No labels for "{f}" in "{labels_dir}" (expected {key}.nii.gz or {key}_gt.nii.gz)')
        patient, phase = key, ""
        if key[-3:].upper() in ("_ED", "_ES", "-ED", "-ES"):
            patient, phase = key[:-3], key[-2:].upper()
        frames.append(LabelledFrame(patient, groups.get(patient, "unknown"), phase, f, labels[key]))
    if not frames:
        raise ConfigError(f'No images in "{images_dir}"')
    return frames


def find_frames(root: Path) -> list[LabelledFrame]:
    """The labelled frames of a dataset in the ACDC or the generic layout."""
    root = Path(root)
    if not root.is_dir():
        raise InputFileNotFoundError(f'Folder not found: "{root}"')
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return _generic_frames(root)
    return _acdc_frames(root)


def stratified_folds(patients: list[Any], n_folds: int = 5, seed: int = 0) -> dict[str, int]:
    """Patient name -> fold index, patient-level and stratified by group.

    ``patients`` are objects with ``name`` and ``group``. Within each group patients are
    shuffled with ``seed`` and dealt round-robin, continuing the count across groups, so
    folds differ in size by at most one overall.
    """
    rng = random.Random(seed)
    by_group: dict[str, list[str]] = {}
    for p in patients:
        if p.name not in by_group.setdefault(p.group, []):
            by_group[p.group].append(p.name)
    folds: dict[str, int] = {}
    i = 0
    for group in sorted(by_group):
        names = sorted(by_group[group])
        rng.shuffle(names)
        for name in names:
            folds[name] = i % n_folds
            i += 1
    return folds


# ---------------------------------------------------------------------------- the cache


def prepare_frame(frame: LabelledFrame, cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """One labelled 3D frame -> model-space (S, fov, fov) float32 image and uint8 labels."""
    from cardioseg.geometry import ModelSpace

    vol = read_volume(frame.image)
    lab = read_volume(frame.labels)
    if lab.data.shape != vol.data.shape:
        raise ConfigError(f'"{frame.labels}" has shape {lab.data.shape}, its image {vol.data.shape}')
    norm, floor = normalize_intensity(vol.data, cfg.clip_low_pct, cfg.clip_high_pct)
    space = ModelSpace.for_image(vol.affine, vol.data.shape, cfg.spacing_mm, cfg.fov_px)
    img = space.image_to_model(norm, cval=floor)
    seg = space.labels_to_model(np.asarray(lab.data).astype(np.uint8))
    return img, seg


class _Named(NamedTuple):
    name: str
    group: str


@dataclass
class Cache:
    """A loaded cache: memory-mapped arrays plus the per-slice index."""

    path: Path
    images: np.ndarray
    labels: np.ndarray
    distmaps: np.ndarray
    index: list[dict[str, str]]
    meta: dict[str, Any]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def patients(self) -> list[str]:
        return list(dict.fromkeys(r["patient"] for r in self.index))

    @property
    def frames(self) -> list[str]:
        return list(dict.fromkeys(r["frame"] for r in self.index))

    def split(self, fold: int, n_folds: int = 5) -> tuple[list[str], list[str]]:
        """(training patients, validation patients) of ``fold`` (stratified by group, seed 0)."""
        groups = {r["patient"]: r["group"] for r in self.index}
        folds = stratified_folds([_Named(n, g) for n, g in groups.items()], n_folds, seed=0)
        return sorted(p for p, f in folds.items() if f != fold), sorted(p for p, f in folds.items() if f == fold)

    def slices_of(self, patients: set[str]) -> np.ndarray:
        return np.array([i for i, r in enumerate(self.index) if r["patient"] in patients], dtype=np.int64)

    def frame_rows(self, rows: np.ndarray | None = None) -> list[np.ndarray]:
        """The cache rows of each 3D frame (one patient and phase, or one image), in slice
        order, for the frames that ``rows`` (default: all) touch; frames in order of appearance.
        Whole frames are returned even when ``rows`` holds only some of their slices."""
        wanted = None if rows is None else {self._frame_key(int(i)) for i in rows}
        frames: dict[tuple[str, str, str], list[tuple[int, int]]] = {}
        for i, r in enumerate(self.index):
            key = self._frame_key(i)
            if wanted is None or key in wanted:
                frames.setdefault(key, []).append((int(r["slice"]), i))
        return [np.array([i for _, i in sorted(members)], dtype=np.int64) for members in frames.values()]

    def context_rows(self, rows: np.ndarray, context: int) -> np.ndarray:
        """(len(rows), context) cache rows of each row's neighbouring slices: the slices of the
        same frame in slice order, centred on the row, the edge slice repeated beyond the base
        and apex (``cardioseg.models.inputs.context_indices``). Never crosses frames."""
        from cardioseg.models.inputs import context_indices

        rows = np.asarray(rows, dtype=np.int64)
        stack_of: dict[int, np.ndarray] = {}
        for members in self.frame_rows(rows):
            stacks = members[context_indices(len(members), context)]
            stack_of.update(zip(members.tolist(), stacks))
        return np.array([stack_of[int(r)] for r in rows], dtype=np.int64).reshape(len(rows), context)

    def _frame_key(self, i: int) -> tuple[str, str, str]:
        r = self.index[i]
        return r["patient"], r["phase"], r["frame"]


def build_cache(
    frames: list[LabelledFrame],
    out: Path,
    cfg: PreprocessConfig | None = None,
    label_map: LabelMap = ACDC,
    truncation_px: float = DISTANCE_TRUNCATION_PX,
    progress: Callable[[LabelledFrame], None] | None = None,
) -> Path:
    """Preprocess every frame into the cache folder ``out`` (see the module docstring)."""
    from cardioseg._version import __version__

    out = Path(out)
    cfg = cfg or PreprocessConfig()
    values = tuple(label_map.structures.values())
    images, labels, index = [], [], []
    for frame in frames:
        img, seg = prepare_frame(frame, cfg)
        n = img.shape[0]
        for s in range(n):
            index.append(
                {"patient": frame.patient, "group": frame.group, "phase": frame.phase, "frame": frame.name,
                 "slice": str(s), "n_slices": str(n), "position": f"{s / max(n - 1, 1):.4f}"}
            )  # fmt: skip
        images.append(img.astype(np.float16))
        labels.append(seg)
        if progress:
            progress(frame)
    if not images:
        raise ConfigError("no frames to cache")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        n_total = sum(len(i) for i in images)
        size = cfg.fov_px
        img_mm = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.float16, (n_total, size, size))
        lab_mm = np.lib.format.open_memmap(tmp / "labels.npy", "w+", np.uint8, (n_total, size, size))
        dist_mm = np.lib.format.open_memmap(tmp / "distmaps.npy", "w+", np.float16, (n_total, len(values), size, size))
        i = 0
        for img, seg in zip(images, labels):
            for s in range(img.shape[0]):
                img_mm[i], lab_mm[i] = img[s], seg[s]
                dist_mm[i] = distance_maps(seg[s], values, truncation_px)
                i += 1
        for mm in (img_mm, lab_mm, dist_mm):
            mm.flush()
        del img_mm, lab_mm, dist_mm
        with open(tmp / "index.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(index[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(index)
        meta = {
            "format": CACHE_FORMAT,
            "preprocess": cfg.to_dict(),
            "label_map": label_map.as_dict(),
            "label_map_name": label_map.name,
            "distance_truncation_px": truncation_px,
            "n_slices": n_total,
            "frames": [f.name for f in frames],
            "sources": sorted({str(f.image.parent.parent if f.phase else f.image.parent) for f in frames})[:3],
            "cardioseg_version": __version__,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        os.chmod(tmp, 0o755)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_cache(path: Path) -> Cache:
    """Open a cache folder; arrays are memory-mapped (nothing is read until used)."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise InputFileNotFoundError(f'No cardioseg cache at "{path}" (run cardioseg preprocess first)')
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != CACHE_FORMAT:
        raise ConfigError(f'"{path}" is a cache of format {meta.get("format")!r}, expected {CACHE_FORMAT}')
    with open(path / "index.csv", newline="") as f:
        index = list(csv.DictReader(f))
    return Cache(
        path=path,
        images=np.load(path / "images.npy", mmap_mode="r"),
        labels=np.load(path / "labels.npy", mmap_mode="r"),
        distmaps=np.load(path / "distmaps.npy", mmap_mode="r"),
        index=index,
        meta=meta,
    )
