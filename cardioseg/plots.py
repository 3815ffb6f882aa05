"""Optional figures for ``cardioseg evaluate --plots`` (needs matplotlib: ``pip install 'cardioseg[plots]'``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cardioseg.errors import ConfigError
from cardioseg.io import atomic_path

if TYPE_CHECKING:
    from cardioseg.evaluation import Evaluation

#: (clinical key, axis title) of the Bland-Altman plots
BLAND_ALTMAN = (("lv_ef_pct", "LV EF (%)"), ("rv_ef_pct", "RV EF (%)"), ("lv_mass_g", "LV mass (g)"))


def require_matplotlib(option: str = "--plots") -> None:
    """Raise a ConfigError that says how to install matplotlib when it is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"{option} needs matplotlib, which is not installed; install it with "
            "pip install 'cardioseg[plots]' (or pip install matplotlib)"
        ) from None


def _figure():  # type: ignore[no-untyped-def]
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(5.5, 4.0), dpi=120, layout="constrained")


def _save(fig, path: Path) -> Path:  # type: ignore[no-untyped-def]
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


#: a Bland-Altman plot names every point up to this many studies, else only the outliers
LABEL_ALL_UP_TO = 25
#: and, beyond that, at least this many of the largest differences
N_LABELLED = 5


def _labelled(diff, low: float, high: float) -> list[int]:  # type: ignore[no-untyped-def]
    """Indices of the points to name: all of them for a small set, else the points outside
    the limits of agreement and the ``N_LABELLED`` largest absolute differences."""
    import numpy as np

    if diff.size <= LABEL_ALL_UP_TO:
        return list(range(diff.size))
    outside = set(np.flatnonzero((diff < low) | (diff > high)).tolist())
    largest = set(np.argsort(-np.abs(diff), kind="stable")[:N_LABELLED].tolist())
    return sorted(outside | largest)


def bland_altman(pred: list[float], ref: list[float], title: str, path: Path, names: list[str] | None = None) -> Path:
    """Bland-Altman plot (difference vs mean, bias and 95 % limits) written as PNG.

    ``names`` (one per point, e.g. the study): the points are labelled with them, every point
    in a small set, the outliers and largest differences in a large one.
    """
    import math

    import numpy as np

    from cardioseg.metrics import agreement

    p, r = np.asarray(pred, dtype=float), np.asarray(ref, dtype=float)
    keep = np.isfinite(p) & np.isfinite(r)
    kept_names = [n for n, k in zip(names, keep, strict=True) if k] if names is not None else None
    p, r = p[keep], r[keep]
    a = agreement(p, r)
    fig = _figure()
    ax = fig.add_subplot()
    x, d = (p + r) / 2, p - r
    ax.scatter(x, d, s=14, color="#1f5fa8")
    for y, style in ((a.bias, "-"), (a.loa_low, "--"), (a.loa_high, "--")):
        if math.isfinite(y):
            ax.axhline(y, color="#b22", linestyle=style, linewidth=1)
    if kept_names is not None:
        low = a.loa_low if math.isfinite(a.loa_low) else -math.inf
        high = a.loa_high if math.isfinite(a.loa_high) else math.inf
        for i in _labelled(d, low, high):
            ax.annotate(kept_names[i], (x[i], d[i]), xytext=(3, 3), textcoords="offset points", fontsize=6)
    ax.set_xlabel(f"mean of prediction and reference, {title}")
    ax.set_ylabel("prediction - reference")
    ax.set_title(f"{title}: bias {a.bias:+.2f}, limits {a.loa_low:+.1f} … {a.loa_high:+.1f} (n={a.n})", fontsize=9)
    return _save(fig, path)


def _dice_by_box(ev: Evaluation) -> dict[tuple[str, str], list[float]]:
    import math

    out: dict[tuple[str, str], list[float]] = {}
    for r in ev.rows:
        v = float(r["dice"])
        if not math.isnan(v):
            out.setdefault((r["label"], r["phase"] or "unknown"), []).append(v)
    return out


def dice_boxplot(ev: Evaluation, path: Path) -> Path:
    """Box plot of Dice per structure, one box per phase; with a compared method
    (``ev.other``), its box beside each of ours, the two told apart by colour and legend."""
    evs = [ev] if ev.other is None else [ev, ev.other]
    phases = sorted({r["phase"] or "unknown" for e in evs for r in e.rows})
    labels = list(dict.fromkeys(r["label"] for e in evs for r in e.rows))
    by = [_dice_by_box(e) for e in evs]
    groups = [(label, phase) for label in labels for phase in phases if any(b.get((label, phase)) for b in by)]
    fig = _figure()
    ax = fig.add_subplot()
    width = 0.8 / len(evs)
    colours = ("#1f5fa8", "#d9822b")
    for j, b in enumerate(by):
        pos = [i + (j - (len(evs) - 1) / 2) * width for i, g in enumerate(groups) if b.get(g)]
        data = [b[g] for g in groups if b.get(g)]
        if data:
            parts = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, manage_ticks=False)
            for box in parts["boxes"]:
                box.set_facecolor(colours[j])
                box.set_alpha(0.5)
            if len(evs) > 1:
                parts["boxes"][0].set_label(ev.method_names[j])
    ax.set_xticks(range(len(groups)), [f"{label}\n{phase}" for label, phase in groups])
    if len(evs) > 1:
        ax.legend(fontsize=8, loc="lower left")
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Dice per structure and phase ({len({(r['case'], r['frame']) for r in ev.rows})} frames)", fontsize=9)
    return _save(fig, path)


def write_plots(ev: Evaluation, out: Path) -> list[Path]:
    """Every figure the evaluation supports: Dice box plot (both methods with a compared one),
    Bland-Altman of EF and mass with the studies named."""
    out.mkdir(parents=True, exist_ok=True)
    written = [dice_boxplot(ev, out / "dice_boxplot.png")]
    if ev.clinical:
        studies = [str(r["study"]) for r in ev.clinical]
        for key, title in BLAND_ALTMAN:
            written.append(
                bland_altman([r[f"{key}_pred"] for r in ev.clinical], [r[f"{key}_ref"] for r in ev.clinical],
                             title, out / f"bland_altman_{key}.png", studies)
            )  # fmt: skip
    return written
