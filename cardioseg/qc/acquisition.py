"""Checks of the acquisition: too few slices, uneven or missing slice positions, reader work-arounds."""

from __future__ import annotations

import numpy as np

from cardioseg.qc.frames import StudyFrames, capitalise
from cardioseg.qc.limits import Flag, QcLimits


def slice_flags(frames: StudyFrames, limits: QcLimits) -> list[Flag]:
    found: dict[tuple[str, str], list[int]] = {}  # (code, text) -> volumes it applies to
    for i, (vol, canon) in enumerate(zip(frames.volumes, frames.canonical)):
        n = canon.shape[2]
        if n < limits.min_slices:
            plural = "s" if n != 1 else ""
            text = (
                f"only {n} short-axis slice{plural} (at least {limits.min_slices} are needed to cover the ventricles)."
            )
            found.setdefault(("too_few_slices", text), []).append(i)
        positions = vol.meta.slice_positions_mm
        if positions is not None:
            problem = _slice_position_problem(np.asarray(positions, dtype=np.float64).ravel(), n, limits)
            if problem:
                found.setdefault(("slices_uneven_or_missing", problem), []).append(i)
    flags = []
    for (code, text), where in found.items():
        if len(where) < len(frames.volumes):  # only some of a pair's volumes: say which
            text = f"in {' and '.join(frames.name(i) for i in where)}, {text[:1].lower()}{text[1:]}"
        flags.append(Flag(code, capitalise(text)))
    return sorted(flags, key=lambda f: f.code != "too_few_slices")


def _slice_position_problem(positions: np.ndarray, n_slices: int, limits: QcLimits) -> str | None:
    """One sentence on what is wrong with these per-slice positions, or None."""
    if positions.size != n_slices:
        return f"The reader gave {positions.size} slice positions for {n_slices} slices."
    if not np.all(np.isfinite(positions)):
        return "Some slice positions are unknown (not finite numbers)."
    if positions.size < 2:
        return None
    steps = np.diff(positions)
    gaps = np.abs(steps)
    median = float(np.median(gaps))
    if median <= 0:
        return f"Slice positions are (mostly) duplicated: median gap {median:.2f} mm."
    if np.any(steps > 0) and np.any(steps < 0):
        k = int(np.flatnonzero(np.sign(steps) != np.sign(np.median(steps)))[0])
        return f"Slices are out of order: position {positions[k + 1]:.1f} mm follows {positions[k]:.1f} mm at slice {k + 1}."
    ratio = gaps / median
    missing = np.flatnonzero(ratio >= limits.missing_slice_ratio)
    if missing.size:
        n_missing = int(sum(round(r) - 1 for r in ratio[missing]))
        where = ", ".join(f"{k} and {k + 1} ({gaps[k]:.1f} mm)" for k in missing)
        return (
            f"About {max(n_missing, 1)} slice{'s' if n_missing > 1 else ''} missing: the gap between slices "
            f"{where} is ~{ratio[missing].max():.1f}x the median {median:.1f} mm."
        )
    tol = max(limits.slice_gap_rel_tol * median, limits.slice_gap_abs_tol_mm)
    uneven = np.flatnonzero(np.abs(gaps - median) > tol)
    if uneven.size:
        k = int(uneven[np.argmax(np.abs(gaps[uneven] - median))])
        return (
            f"Slice gaps are uneven: {uneven.size} of {gaps.size} differ from the median {median:.1f} mm "
            f"by more than {tol:.1f} mm (worst {gaps[k]:.1f} mm between slices {k} and {k + 1})."
        )
    return None


def reader_warnings(frames: StudyFrames) -> list[Flag]:
    flags: list[Flag] = []
    seen: set[str] = set()
    multiple = len(frames.volumes) > 1
    for i, vol in enumerate(frames.volumes):
        for warning in vol.meta.warnings:
            where = f" ({frames.name(i)})" if multiple else ""
            msg = f"Image reader{where}: {warning}"
            if msg not in seen:
                seen.add(msg)
                flags.append(Flag("reader_warning", msg))
    return flags
