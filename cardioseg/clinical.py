"""Clinical numbers from label masks: volumes, ED/ES, SV, EF, LV mass, BSA indexing.

Conventions (DESIGN.md): volume = voxel count x voxel volume (mL); EF = (EDV - ESV) / EDV x
100; SV = EDV - ESV; LV mass = myocardial volume at ED x density (1.05 g/mL by default);
BSA by Mosteller, sqrt(height_cm x weight_kg / 3600) m^2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cardioseg.errors import ConfigError
from cardioseg.labels import LabelMap

DEFAULT_MYO_DENSITY = 1.05  # g/mL, SCMR / UK Biobank (the DMR paper used 1.06)


@dataclass(frozen=True)
class FrameVolumes:
    """Cavity and myocardium volumes of one 3D frame, in mL."""

    lv_ml: float
    rv_ml: float
    myo_ml: float


def frame_volumes(labels: np.ndarray, voxel_volume_ml: float, label_map: LabelMap) -> FrameVolumes:
    """Volumes of LV cavity, RV cavity and LV myocardium in a 3D label frame.

    >>> from cardioseg.labels import ACDC
    >>> frame_volumes(np.array([[[3, 3, 2, 1]]]), 0.5, ACDC)
    FrameVolumes(lv_ml=1.0, rv_ml=0.5, myo_ml=0.5)
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64).ravel(), minlength=max(label_map.as_dict().values()) + 1)
    return FrameVolumes(
        lv_ml=float(counts[label_map.lv]) * voxel_volume_ml,
        rv_ml=float(counts[label_map.rv]) * voxel_volume_ml,
        myo_ml=float(counts[label_map.myo]) * voxel_volume_ml,
    )


def detect_ed_es(volumes: list[FrameVolumes]) -> tuple[int, int]:
    """(ED, ES) frame indices: the largest and the smallest LV cavity volume (first on ties)."""
    if not volumes:
        raise ConfigError("no frames to choose ED/ES from")
    lv = [v.lv_ml for v in volumes]
    return int(np.argmax(lv)), int(np.argmin(lv))


def bsa_mosteller(height_cm: float | None, weight_kg: float | None) -> float | None:
    """Body surface area in m^2 (Mosteller), or None if either is unknown.

    >>> round(bsa_mosteller(180, 80), 4)
    2.0
    """
    if height_cm is None or weight_kg is None:
        return None
    if height_cm <= 0 or weight_kg <= 0:
        raise ConfigError(f"height ({height_cm} cm) and weight ({weight_kg} kg) must be positive")
    return math.sqrt(height_cm * weight_kg / 3600.0)


def _ef(edv: float, esv: float) -> float:
    return (edv - esv) / edv * 100.0 if edv > 0 else float("nan")


def clinical_measures(
    ed: FrameVolumes,
    es: FrameVolumes,
    myo_density_g_ml: float = DEFAULT_MYO_DENSITY,
    height_cm: float | None = None,
    weight_kg: float | None = None,
) -> dict[str, float | None]:
    """The report's clinical numbers from the ED and ES frame volumes (keys carry units)."""
    if myo_density_g_ml <= 0:
        raise ConfigError(f"myocardial density must be positive, got {myo_density_g_ml}")
    out: dict[str, float | None] = {
        "lv_edv_ml": ed.lv_ml,
        "lv_esv_ml": es.lv_ml,
        "lv_sv_ml": ed.lv_ml - es.lv_ml,
        "lv_ef_pct": _ef(ed.lv_ml, es.lv_ml),
        "rv_edv_ml": ed.rv_ml,
        "rv_esv_ml": es.rv_ml,
        "rv_sv_ml": ed.rv_ml - es.rv_ml,
        "rv_ef_pct": _ef(ed.rv_ml, es.rv_ml),
        "lv_mass_g": ed.myo_ml * myo_density_g_ml,
    }
    bsa = bsa_mosteller(height_cm, weight_kg)
    out["bsa_m2"] = bsa
    for key in ("lv_edv", "lv_esv", "lv_sv", "rv_edv", "rv_esv", "rv_sv"):
        out[f"{key}i_ml_m2"] = out[f"{key}_ml"] / bsa if bsa else None  # type: ignore[operator]
    out["lv_mass_index_g_m2"] = out["lv_mass_g"] / bsa if bsa else None  # type: ignore[operator]
    return out


def cine_rates(lv_ml: Sequence[float], ed: int, es: int, interval_ms: float) -> dict[str, float | None]:
    """LV peak ejection and filling rates from a cine's volume curve (keys carry units).

    The cine is taken as one cardiac cycle: systole runs from frame ``ed`` forward to ``es``,
    diastole from ``es`` forward (wrapping round the end) back to ``ed``. Rates are forward
    differences between consecutive frames, ``(V[t+1] - V[t]) / interval``, without smoothing;
    the peak ejection rate is the largest fall in systole and the peak filling rate the largest
    rise in diastole (both positive, mL/s). The time to peak filling runs from ES to the middle
    of that steepest interval. ``lv_pfr_edv_per_s`` is the peak filling rate over EDV.
    A phase of fewer than one step gives None.

    >>> r = cine_rates([100.0, 80.0, 50.0, 60.0, 90.0], ed=0, es=2, interval_ms=50.0)
    >>> r["lv_peak_ejection_rate_ml_s"], r["lv_peak_filling_rate_ml_s"], r["lv_time_to_peak_filling_ms"]
    (600.0, 600.0, 75.0)
    """
    v = np.asarray(lv_ml, dtype=np.float64)
    n = v.size
    if interval_ms <= 0 or not math.isfinite(interval_ms):
        raise ConfigError(f"the frame interval must be a positive number of ms, got {interval_ms}")
    seconds = interval_ms / 1000.0

    def steps(start: int, stop: int) -> np.ndarray:  # V[t+1] - V[t] for t from start forward to stop (cyclic)
        count = (stop - start) % n
        idx = (start + np.arange(count)) % n
        return v[(idx + 1) % n] - v[idx]

    systole, diastole = steps(ed, es), steps(es, ed)
    per = float(-systole.min() / seconds) if systole.size else None
    pfr = float(diastole.max() / seconds) if diastole.size else None
    ttpf = float((int(diastole.argmax()) + 0.5) * interval_ms) if diastole.size else None
    edv = float(v[ed])
    return {
        "lv_peak_ejection_rate_ml_s": per,
        "lv_peak_filling_rate_ml_s": pfr,
        "lv_time_to_peak_filling_ms": ttpf,
        "lv_pfr_edv_per_s": pfr / edv if pfr is not None and edv > 0 else None,
        "frame_interval_ms": interval_ms,
    }
