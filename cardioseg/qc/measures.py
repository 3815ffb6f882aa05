"""Checks of the clinical numbers: implausible EF, mass, RV/LV ratio, ESV > EDV, a flat volume curve."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cardioseg.clinical import FrameVolumes
from cardioseg.qc.limits import Flag, QcLimits


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def measure_flags(measures: dict[str, float | None], ed: FrameVolumes, limits: QcLimits) -> list[Flag]:
    flags = []
    ranges = {"lv": (limits.ef_min_pct, limits.ef_max_pct), "rv": (limits.rv_ef_min_pct, limits.rv_ef_max_pct)}
    for side, (low, high) in ranges.items():
        ef = measures.get(f"{side}_ef_pct")
        if _finite(ef) and not low <= ef <= high:  # type: ignore[operator]
            flags.append(
                Flag(
                    f"{side}_ef_implausible",
                    f"{side.upper()} EF {ef:.1f} % is outside the plausible {low:g}-{high:g} %.",
                )
            )
    mass = measures.get("lv_mass_g")
    if _finite(mass) and ed.myo_ml > 0 and not limits.lv_mass_min_g <= mass <= limits.lv_mass_max_g:  # type: ignore[operator]
        flags.append(
            Flag(
                "lv_mass_implausible",
                f"LV mass {mass:.1f} g is outside the plausible {limits.lv_mass_min_g:g}-{limits.lv_mass_max_g:g} g.",
            )
        )
    lv_edv, rv_edv = measures.get("lv_edv_ml"), measures.get("rv_edv_ml")
    if _finite(lv_edv) and _finite(rv_edv) and lv_edv > 0:  # type: ignore[operator]
        ratio = rv_edv / lv_edv  # type: ignore[operator]
        if ratio > limits.rv_lv_edv_ratio_max:
            flags.append(
                Flag(
                    "rv_much_larger_than_lv",
                    f"RV much larger than LV: RV EDV {rv_edv:.1f} mL is {ratio:.2f}x LV EDV {lv_edv:.1f} mL "
                    f"(limit {limits.rv_lv_edv_ratio_max:g}x).",
                )
            )
    lv_esv = measures.get("lv_esv_ml")
    if _finite(lv_edv) and _finite(lv_esv) and lv_edv > 0 and lv_esv > lv_edv:  # type: ignore[operator]
        flags.append(
            Flag(
                "lv_esv_exceeds_edv",
                f"LV ESV {lv_esv:.1f} mL exceeds LV EDV {lv_edv:.1f} mL: ED and ES may be swapped.",
            )
        )
    return flags


def flat_curve(per_frame: Sequence[FrameVolumes], limits: QcLimits) -> list[Flag]:
    lv = np.array([v.lv_ml for v in per_frame], dtype=np.float64)
    if lv.size < 2 or lv.max() <= 0:
        return []
    change = (lv.max() - lv.min()) / lv.max() * 100.0
    if change >= limits.flat_curve_min_pct:
        return []
    return [
        Flag(
            "flat_volume_curve",
            f"LV volume changes by only {change:.1f} % over the {lv.size} frames "
            f"({lv.min():.1f}-{lv.max():.1f} mL, limit {limits.flat_curve_min_pct:g} %), "
            "so the detected ED/ES frames are meaningless; give --ed-frame/--es-frame or check the series.",
        )
    ]
