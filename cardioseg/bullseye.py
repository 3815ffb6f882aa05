"""The AHA 16-segment bullseye of LV wall thickness (needs matplotlib: ``pip install 'cardioseg[plots]'``).

Standard layout (Cerqueira et al., Circulation 105:539, 2002): rings basal (outer), mid and
apical (inner), the apex (segment 17, not measured on a short-axis stack) left blank in the
centre; anterior at the top, septum on the left, inferior at the bottom, lateral on the right.
Basal and mid segments are 60 degree sectors with 1 / 7 (anterior) centred at 12 o'clock and
2 / 8, 3 / 9 (septum) on the upper and lower left; apical segments 90 degree sectors centred at
12 (13 anterior), 9 (14 septal), 6 (15 inferior) and 3 o'clock (16 lateral). The left map is
the ED thickness (mm), the right one, when given, the systolic thickening (%); each segment
shows its value, a missing one is grey with a dash.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cardioseg.plots import _save, require_matplotlib

#: segment -> (inner radius, outer radius, start angle, end angle); angles in degrees,
#: counter-clockwise from 3 o'clock, as matplotlib's Wedge takes them
LAYOUT: dict[int, tuple[float, float, float, float]] = {}
for _ring, (_r0, _r1) in enumerate(((0.75, 1.0), (0.5, 0.75))):
    for _i in range(6):  # 1 anterior (60-120), 2 anteroseptal (120-180), ... 6 anterolateral (0-60)
        _start = (60.0 + 60.0 * _i) % 360.0
        LAYOUT[1 + 6 * _ring + _i] = (_r0, _r1, _start, _start + 60.0)
for _i in range(4):  # 13 anterior (45-135), 14 septal (135-225), 15 inferior, 16 lateral
    LAYOUT[13 + _i] = (0.25, 0.5, 45.0 + 90.0 * _i, 135.0 + 90.0 * _i)

MISSING_COLOUR = "#c8c8c8"
#: colour scales: at least these ranges, wider where the values are outside
THICKNESS_RANGE_MM = (0.0, 15.0)
THICKENING_RANGE_PCT = (0.0, 80.0)


def _value(values: Mapping[Any, Any] | None, segment: int) -> float | None:
    """The value of ``segment`` keyed by int or str; None for missing, None or NaN."""
    if values is None:
        return None
    v = values.get(str(segment), values.get(segment))
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _panel(fig: Any, ax: Any, values: Mapping[Any, Any] | None, cmap_name: str, limits: tuple[float, float],
           label: str, unit: str, fmt: str) -> None:  # fmt: skip
    """One bullseye on ``ax`` with its colour bar."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Wedge

    present = [v for s in LAYOUT if (v := _value(values, s)) is not None]
    lo = min([limits[0], *present])
    hi = max([limits[1], *present])
    norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1.0)
    cmap = colormaps[cmap_name]
    for segment, (r0, r1, a0, a1) in LAYOUT.items():
        v = _value(values, segment)
        colour: Any = cmap(norm(v)) if v is not None else MISSING_COLOUR
        ax.add_patch(Wedge((0.0, 0.0), r1, a0, a1, width=r1 - r0, facecolor=colour, edgecolor="white", linewidth=1.5))
        mid = math.radians((a0 + a1) / 2)
        r = (r0 + r1) / 2
        x, y = r * math.cos(mid), r * math.sin(mid)
        if v is None:
            text, ink = "\u2013", "#555555"  # an en dash
        else:
            red, green, blue, _ = colour
            text = fmt.format(v)
            ink = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.55 else "white"
        ax.text(x, y + 0.035, text, ha="center", va="center", fontsize=8, color=ink, fontweight="bold")
        ax.text(x, y - 0.06, str(segment), ha="center", va="center", fontsize=5.5, color=ink, alpha=0.8)
    for text, (x, y), rotation in (("anterior", (0.0, 1.1), 0), ("inferior", (0.0, -1.1), 0),
                                   ("septal", (-1.1, 0.0), 90), ("lateral", (1.1, 0.0), -90)):  # fmt: skip
        ax.text(x, y, text, ha="center", va="center", fontsize=7, color="#444444", rotation=rotation)
    ax.set_xlim(-1.22, 1.22)
    ax.set_ylim(-1.22, 1.22)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title(label, fontsize=9)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, shrink=0.7, label=unit)


def write_bullseye(
    thickness_ed_mm: Mapping[Any, Any], thickening_pct: Mapping[Any, Any] | None, path: Path, title: str = ""
) -> Path:
    """Write the AHA bullseye of the ED wall thickness (mm) and, beside it, of the systolic
    thickening (%) as a PNG at ``path`` (written atomically; parent folders are made).

    The dicts map segments 1-16 (keys int or str, as ``regional_measures`` gives them) to values
    or None; a segment that is absent, None or NaN is drawn grey with a dash.
    ``thickening_pct`` None draws the thickness map alone.
    """
    require_matplotlib("the bullseye plot")
    from matplotlib.figure import Figure

    panels = 1 if thickening_pct is None else 2
    fig = Figure(figsize=(4.6 * panels, 4.2), dpi=120, layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    _panel(fig, axes[0], thickness_ed_mm, "YlOrRd", THICKNESS_RANGE_MM, "ED wall thickness", "mm", "{:.1f}")
    if thickening_pct is not None:
        _panel(fig, axes[1], thickening_pct, "RdYlGn", THICKENING_RANGE_PCT, "systolic thickening", "%", "{:.0f}")
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, path)
