"""What a batch is made of: ``Study`` (one unit of work), its options and its result."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from cardioseg.clinical import DEFAULT_MYO_DENSITY


class StudyKind(str, Enum):
    """What a study holds. The value is what reports write in their ``kind`` field.

    ``SINGLE`` is a planning-time kind: one input whose dimensions are not known before it is
    read; ``run_study`` turns it into ``CINE`` (4D) or ``FRAME`` (3D).
    """

    FRAME = "frame"  # one 3D frame: volumes only, no EF
    CINE = "cine"  # one 4D cine: ED/ES from Info.cfg, the options or the LV volume curve
    PAIR = "pair"  # an ED and an ES 3D frame
    SINGLE = "single"  # one input, frame or cine, decided when read

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return self.value.__format__(spec)


@dataclass(frozen=True)
class Study:
    """One unit of work: a 3D frame, a 4D cine, or an ED/ES pair of 3D frames."""

    name: str
    kind: StudyKind
    paths: tuple[Path, ...]  # frame/cine/single: (path,); pair: (ed, es)
    ed_frame: int | None = None  # 0-based override for a cine
    es_frame: int | None = None
    height_cm: float | None = None
    weight_kg: float | None = None
    group: str | None = None
    problem: str | None = None  # why it cannot run (a broken folder found by expansion)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, StudyKind):  # a plain "cine" from a caller: the enum member
            object.__setattr__(self, "kind", StudyKind(self.kind))


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
    html: bool = False  # also keep DIR/report.html, rebuilt like summary.csv (not a result setting)
    dicom_seg: bool = False  # also write DIR/<study>_seg.dcm for DICOM input (needs highdicom)
    command: str | None = None  # the command line that asked for the run, for the reports' provenance
    series_uid: str | None = None  # which series of a DICOM folder holding several
    fingerprint: dict[str, Any] | None = None  # set by api.predict (batch.fingerprint): stored in reports, checked on resume


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a batch, after ``summary.csv`` was rebuilt from the finished studies:
    ``done`` of ``total`` studies are finished (a rerun of the same command does the rest)."""

    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"interrupted: {done} of {total} studies done")
        self.done, self.total = done, total


@dataclass
class StudyResult:
    study: Study
    outputs: list[Path] = field(default_factory=list)
    report: dict[str, Any] | None = None
    error: str | None = None
    skipped: bool = False  # finished by an earlier run (its report was read, nothing recomputed)
    traceback: str | None = None  # an unexpected error's traceback (a bug), for ``--debug``
    planned: str | None = None  # ``predict --dry-run``: what a run would do ("run", "skip: done before", ...)

    @property
    def warnings(self) -> list[str]:
        return list(self.report.get("warnings", [])) if self.report else []
