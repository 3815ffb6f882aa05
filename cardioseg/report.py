"""Reports as pure functions of results, and the atomic JSON writer.

``summary.csv`` rows come from :func:`summary_row`; the folder's summary file itself is kept by
:mod:`cardioseg.batch.outputs` (with the other output names).
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

from cardioseg._version import __version__
from cardioseg.clinical import FrameVolumes
from cardioseg.io import write_text_atomic

SUMMARY_COLUMNS = [
    "study", "inputs", "ed_frame", "es_frame",
    "lv_edv_ml", "lv_esv_ml", "lv_sv_ml", "lv_ef_pct",
    "rv_edv_ml", "rv_esv_ml", "rv_sv_ml", "rv_ef_pct",
    "lv_mass_g", "bsa_m2", "lv_edvi_ml_m2", "lv_esvi_ml_m2", "rv_edvi_ml_m2", "rv_esvi_ml_m2",
    "lv_mass_index_g_m2", "qc_flags", "report",
]  # fmt: skip


def versions() -> dict[str, str]:
    """cardioseg's, Python's, numpy's and torch's versions (torch's from its installed metadata,
    so ``measure`` never imports it)."""
    from importlib import metadata

    import numpy

    out = {"cardioseg": __version__, "python": platform.python_version(), "numpy": numpy.__version__}
    try:
        out["torch"] = metadata.version("torch")
    except metadata.PackageNotFoundError:  # pragma: no cover - torch is a core dependency
        pass
    return out


def build_report(
    *,
    study: str,
    inputs: list[str],
    masks: list[str],
    kind: str,
    frame_volumes: list[FrameVolumes],
    ed_frame: int | None,
    es_frame: int | None,
    measures: dict[str, float | None],
    qc_flags: list[str],
    qc: list[dict[str, str]] | None = None,
    label_map: dict[str, int],
    myo_density_g_ml: float,
    weights: dict[str, Any],
    device: str,
    precision: str,
    runtime_s: float,
    image: dict[str, Any],
    subject: dict[str, Any],
    warnings: list[str] | None = None,
    segmentation: dict[str, Any] | None = None,
    fingerprint: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON report of one study (plain types only; NaN becomes null when written).

    ``kind`` is "cine" (one 4D input; ``ed_frame``/``es_frame`` are 0-based indices into its
    time axis), "pair" (an ED and an ES 3D frame: frame 0 is ED, frame 1 is ES) or "frame"
    (one 3D frame: volumes only, no EF).

    ``weights`` is ``{"name", "sha256"}`` for one model; for an ensemble it is
    ``{"name": "a+b+...", "ensemble": "vote"|"mean", "members": [{"name", "sha256"}, ...]}``.
    ``segmentation``: how the masks were made (crop, clean-up, where stage 1 found the heart).
    ``fingerprint``: every setting the result depends on (``cardioseg.batch.fingerprint``).
    ``extra``: measurements that are not single numbers (regional wall thickness), after ``measures``.
    ``provenance``: when, by what and from which inputs (:func:`provenance`).
    """
    return {
        "study": study,
        "kind": kind,
        "inputs": inputs,
        "masks": masks,
        "ed_frame": ed_frame,
        "es_frame": es_frame,
        **measures,
        **(extra or {}),
        "frames": [
            {"frame": t, "lv_ml": v.lv_ml, "rv_ml": v.rv_ml, "myo_ml": v.myo_ml} for t, v in enumerate(frame_volumes)
        ],
        "qc_flags": qc_flags,
        "qc": list(qc or []),
        "warnings": list(warnings or []),
        "label_map": label_map,
        "myo_density_g_ml": myo_density_g_ml,
        "subject": subject,
        "image": image,
        "weights": weights,
        **({"segmentation": segmentation} if segmentation is not None else {}),
        **({"fingerprint": fingerprint} if fingerprint is not None else {}),
        **({"provenance": provenance} if provenance is not None else {}),
        "versions": versions(),
        "device": device,
        "precision": precision,
        "runtime_s": runtime_s,
    }


def input_identity(volume: Any) -> dict[str, Any]:
    """Where one input came from: its path and file name, format and, for DICOM, the patient,
    study and series identifiers, heart rate and frame interval (``None`` where unknown)."""
    meta = volume.meta
    out: dict[str, Any] = {
        "path": str(volume.path) if volume.path is not None else None,
        "file": volume.path.name if volume.path is not None else None,
        "format": meta.source,
        "frame_interval_ms": meta.frame_interval_ms,
    }
    if meta.source == "dicom":
        out.update(patient_id=meta.patient_id, study_uid=meta.study_uid, series_uid=meta.series_uid,
                   series_number=meta.series_number, series_description=meta.series_description,
                   heart_rate_bpm=meta.heart_rate_bpm)  # fmt: skip
    return out


def provenance(
    volumes: list[Any], kind: str, ed_frame: int | None, es_frame: int | None, command: str | None
) -> dict[str, Any]:
    """The report's ``provenance``: when (UTC) and by which cardioseg and command line it was
    made, each input's identity (:func:`input_identity`), and ED/ES named as the files of a pair
    or as the frame index (and DICOM trigger time, ms) of a cine. The settings the result
    depends on are the report's ``fingerprint``."""
    import datetime as dt

    def phase(index: int | None) -> dict[str, Any] | None:
        if index is None:
            return None
        if kind == "pair":
            v = volumes[index]
            return {"file": v.path.name if v.path is not None else None}
        times = volumes[0].meta.trigger_times_ms
        return {"frame": index, "trigger_time_ms": times[index] if times and index < len(times) else None}

    return {
        "created_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cardioseg": __version__,
        "command": command,
        "inputs": [input_identity(v) for v in volumes],
        "ed": phase(ed_frame),
        "es": phase(es_frame),
    }


def json_safe(value: Any) -> Any:
    """A copy with NaN/inf floats as None (strict JSON), through dicts, lists and tuples."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_report(report: dict[str, Any], path: Path) -> None:
    write_text_atomic(json.dumps(json_safe(report), indent=2) + "\n", path)


def summary_row(report: dict[str, Any], report_path: Path) -> dict[str, str]:
    row: dict[str, str] = {}
    for col in SUMMARY_COLUMNS:
        if col == "inputs":
            row[col] = ";".join(report["inputs"])
        elif col == "qc_flags":
            row[col] = ";".join(report["qc_flags"])
        elif col == "report":
            row[col] = report_path.name
        else:
            v = report.get(col)
            row[col] = "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else (
                f"{v:.3f}" if isinstance(v, float) else str(v)
            )
    return row


def load_report(path: Path) -> dict[str, Any] | None:
    """A study report read back from ``path``, or None when it is missing, unreadable or not a
    cardioseg report (no ``study``/``inputs``/``qc_flags``)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("study"), str):
        return None
    if not isinstance(data.get("inputs"), list) or not isinstance(data.get("qc_flags"), list):
        return None
    return data
