"""A PNG montage of a prediction for a visual check (``cardioseg predict --overlay``).

Needs matplotlib (``pip install 'cardioseg[plots]'``); without it :func:`require_matplotlib`
raises a ConfigError that says how to install it. One file per study,
``<out>/<study>_overlay.png`` (:func:`cardioseg.batch.outputs.overlay_path`):

* one row per phase (ED and ES, or the single frame), one column per short-axis slice in
  file order, each panel labelled ``s<k>`` with ``k`` the index along the stored slice axis
  (the index a viewer and the written mask use); long stacks wrap into blocks of at most
  ``max_cols`` columns, ED and ES of a slice staying one above the other;
* the image in grey, windowed to the 1st-99th percentile of the pixels shown in that row;
  the predicted structures as coloured contours (:data:`STRUCTURE_STYLE`: RV cavity cyan,
  LV myocardium green, LV cavity red; which integer is which comes from the ``LabelMap``),
  with a legend naming them;
* in-plane, the canonical orientation of :mod:`cardioseg.geometry` shown the radiological
  way: the in-plane axis nearest world x horizontally with +x (patient right) on the
  viewer's left, the other in-plane axis vertically with its +world direction up (anterior
  for an axial-like stack), pixels drawn with their physical aspect ratio. The montage
  therefore does not depend on how the file orders or flips its in-plane axes; the header
  names the directions (as good as the file's affine);
* cropped to the bounding box of every predicted label (all rows, all slices) plus
  ``margin_mm``, so the heart is large enough to judge; no predicted voxel is ever cropped
  away (``crop=False`` shows the whole field of view, as does an empty prediction);
* for a cine (``volumes`` given), a bottom panel with the LV and RV cavity volumes over the
  cycle in mL (frames 0-based as in the report), ED and ES marked.

Rendering uses matplotlib's ``Figure`` directly (Agg, no pyplot state), a fixed layout (no
layout engine) and a fixed dpi, so the same input gives the same PNG bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cardioseg import plots
from cardioseg.clinical import FrameVolumes
from cardioseg.geometry import canonical_spacing, find_orientation, to_canonical
from cardioseg.io import atomic_path
from cardioseg.labels import LabelMap

#: structure key of ``LabelMap.structures`` -> (legend name, contour colour)
STRUCTURE_STYLE: dict[str, tuple[str, str]] = {
    "rv": ("RV cavity", "#00c8ff"),
    "myo": ("LV myocardium", "#30e030"),
    "lv": ("LV cavity", "#ff3030"),
}
#: contours are drawn in this order (the LV cavity last, on top of the endocardial border)
DRAW_ORDER = ("myo", "rv", "lv")

DPI = 100
PANEL_IN = 1.6  # panel width (inches); height follows the physical aspect of the crop
GAP_IN = 0.03  # between panels
BLOCK_GAP_IN = 0.14  # between blocks of wrapped slices
LEFT_IN = 0.3  # row titles
RIGHT_IN = 0.06
HEADER_IN = 0.5
BOTTOM_IN = 0.06
CURVE_IN = 1.9  # volume-curve panel height
CURVE_PAD_TOP_IN = 0.35
CURVE_PAD_BOTTOM_IN = 0.45
CURVE_PAD_LEFT_IN = 0.65
MIN_WIDTH_IN = 6.4

#: world axis -> letters of its (+, -) directions (NIfTI world is RAS+)
_WORLD_LETTERS = (("R", "L"), ("A", "P"), ("S", "I"))


def require_matplotlib() -> None:
    """Raise a ConfigError that says how to install matplotlib for ``--overlay``."""
    plots.require_matplotlib("--overlay")


# ---------------------------------------------------------------------------- geometry


def canonical_stack(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """Stored (X, Y, Z) -> (A, B, S): canonical in-plane axes, slices kept in file order.

    Returns the array and the in-plane spacing (mm) of A and B.
    """
    o = find_orientation(affine)
    canon = to_canonical(np.asarray(array), o)
    if o.flip[2]:  # keep the stored slice order so that panel s<k> is the file's slice k
        canon = canon[:, :, ::-1]
    spacing = canonical_spacing(tuple(np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)), o)  # type: ignore[arg-type]
    return canon, (spacing[0], spacing[1])


def display_slice(canon_slice: np.ndarray) -> np.ndarray:
    """Canonical (A, B) slice -> the array drawn with ``origin="lower"``: rows B (+ up),
    columns A reversed (+A, e.g. patient right, on the viewer's left)."""
    return np.flip(np.asarray(canon_slice).T, axis=1)


def orientation_text(affine: np.ndarray) -> str:
    """Which world directions the display's left and top edges face, e.g. ``left R, top A``."""
    from nibabel.orientations import io_orientation

    o = find_orientation(affine)
    ornt = io_orientation(np.asarray(affine, dtype=np.float64))
    horizontal = _WORLD_LETTERS[int(ornt[o.perm[0], 0])]
    vertical = _WORLD_LETTERS[int(ornt[o.perm[1], 0])]
    return f"viewer's left {horizontal[0]}, right {horizontal[1]}, top {vertical[0]}, bottom {vertical[1]}"


def _crop_box(masks: list[np.ndarray], spacing: tuple[float, float], margin_mm: float) -> tuple[slice, slice] | None:
    """(A, B) index ranges around every foreground voxel of ``masks`` (canonical, same shape)."""
    fg = np.zeros(masks[0].shape[:2], dtype=bool)
    for m in masks:
        fg |= np.any(m > 0, axis=2)
    if not fg.any():
        return None
    out = []
    for axis in (0, 1):
        idx = np.flatnonzero(np.any(fg, axis=1 - axis))
        pad = math.ceil(margin_mm / spacing[axis])
        out.append(slice(max(int(idx[0]) - pad, 0), min(int(idx[-1]) + pad + 1, fg.shape[axis])))
    return out[0], out[1]


def _window(image: np.ndarray) -> tuple[float, float]:
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [1.0, 99.0]))
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


# ---------------------------------------------------------------------------- figure


def write_overlay(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    affine: np.ndarray | Sequence[np.ndarray],
    titles: Sequence[str],
    label_map: LabelMap,
    path: Path,
    *,
    volumes: Sequence[FrameVolumes] | None = None,
    ed_index: int | None = None,
    es_index: int | None = None,
    title: str | None = None,
    crop: bool = True,
    margin_mm: float = 20.0,
    max_cols: int = 10,
) -> Path:
    """Write the montage of one study as PNG (atomically) and return ``path``.

    (Long on purpose: one page layout in inches, computed once and read top to bottom; the
    drawing of a panel, the header and the volume curve are functions of their own.)

    Args:
        images: one stored 3D (X, Y, Z) array per row (phase), e.g. [ED, ES] or [frame].
        masks: the label masks of ``images``, same shapes.
        affine: the 4x4 voxel->world affine shared by all rows, or one per row.
        titles: one row title per image, e.g. ``["ED (frame 0)", "ES (frame 12)"]``.
        label_map: which integer is which structure.
        path: the PNG to write (its folder is created).
        volumes: per-frame volumes of a cine: adds the LV/RV cavity volume-curve panel.
        ed_index, es_index: 0-based frames marked on the volume curve.
        title: header text (the study name).
        crop: crop to the predicted labels plus ``margin_mm`` (see the module docstring).
        max_cols: slices per row block before the stack wraps.
    """
    require_matplotlib()
    from matplotlib.figure import Figure

    rows = len(images)
    if rows == 0 or len(masks) != rows or len(titles) != rows:
        raise ValueError(f"need as many masks and titles as images, got {rows}, {len(masks)}, {len(titles)}")
    if np.ndim(affine) == 2:
        affines = [np.asarray(affine, dtype=np.float64)] * rows
    else:
        affines = [np.asarray(a, dtype=np.float64) for a in affine]  # type: ignore[union-attr]
    if len(affines) != rows:
        raise ValueError(f"need one affine or one per image, got {len(affines)} for {rows} images")
    if max_cols < 1:
        raise ValueError(f"max_cols must be at least 1, got {max_cols}")

    canon_images, canon_masks, spacings = _canonical_rows(images, masks, affines, margin_mm if crop else None)

    n_slices = max(c.shape[2] for c in canon_images)
    cols = min(n_slices, max_cols)
    blocks = math.ceil(n_slices / cols)
    a_mm = canon_images[0].shape[0] * spacings[0][0]
    b_mm = canon_images[0].shape[1] * spacings[0][1]
    panel_h = PANEL_IN * min(max(b_mm / a_mm, 0.4), 2.5)
    grid_w = cols * PANEL_IN + (cols - 1) * GAP_IN
    grid_h = blocks * (rows * panel_h + (rows - 1) * GAP_IN) + (blocks - 1) * BLOCK_GAP_IN
    curve_h = CURVE_PAD_TOP_IN + CURVE_IN + CURVE_PAD_BOTTOM_IN if volumes else 0.0
    fig_w = max(LEFT_IN + grid_w + RIGHT_IN, MIN_WIDTH_IN)
    fig_h = HEADER_IN + grid_h + BOTTOM_IN + curve_h
    fig = Figure(figsize=(fig_w, fig_h), dpi=DPI, facecolor="white")

    def axes_at(x_in: float, top_in: float, w_in: float, h_in: float) -> Any:
        """Axes placed in inches from the figure's left and top edges."""
        return fig.add_axes((x_in / fig_w, 1 - (top_in + h_in) / fig_h, w_in / fig_w, h_in / fig_h))

    styles = {key: STRUCTURE_STYLE[key] for key in label_map.structures}
    windows = [_window(c) for c in canon_images]
    rows_of = list(zip(canon_images, canon_masks, spacings, windows))
    for block in range(blocks):
        block_top = HEADER_IN + block * (rows * panel_h + (rows - 1) * GAP_IN + BLOCK_GAP_IN)
        for r in range(rows):
            top = block_top + r * (panel_h + GAP_IN)
            fig.text(
                (LEFT_IN - 0.06) / fig_w, 1 - (top + panel_h / 2) / fig_h, titles[r],
                rotation=90, ha="right", va="center", fontsize=8,
            )  # fmt: skip
            for c in range(cols):
                z = block * cols + c
                if z < canon_images[r].shape[2]:
                    ax = axes_at(LEFT_IN + c * (PANEL_IN + GAP_IN), top, PANEL_IN, panel_h)
                    _draw_panel(ax, *rows_of[r], z, label_map, styles)

    note = f"{orientation_text(affines[0])}; s<k> = slice k of the file"
    if crop:
        note += f"; cropped to the labels + {margin_mm:g} mm"
    _draw_header(fig, fig_w, fig_h, title or "", note, styles)

    if volumes:
        top = HEADER_IN + grid_h + BOTTOM_IN + CURVE_PAD_TOP_IN
        ax = axes_at(CURVE_PAD_LEFT_IN, top, fig_w - CURVE_PAD_LEFT_IN - 0.2, CURVE_IN)
        _volume_curves(ax, volumes, styles, ed_index, es_index)

    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    return Path(path)


def _canonical_rows(
    images: Sequence[np.ndarray], masks: Sequence[np.ndarray], affines: Sequence[np.ndarray], margin_mm: float | None
) -> tuple[list[np.ndarray], list[np.ndarray], list[tuple[float, float]]]:
    """Images and masks as canonical stacks with their in-plane spacings, cropped to the labels
    plus ``margin_mm`` (None: not cropped): one crop for all rows when they share a canonical
    grid, so that ED and ES line up."""
    canon_images, canon_masks, spacings = [], [], []
    for img, mask, aff in zip(images, masks, affines):
        img, mask = np.asarray(img), np.asarray(mask)
        if img.ndim != 3 or img.shape != mask.shape:
            raise ValueError(f"images and masks must be 3D and of equal shape, got {img.shape} and {mask.shape}")
        ci, spacing = canonical_stack(img, aff)
        cm, _ = canonical_stack(mask, aff)
        canon_images.append(ci)
        canon_masks.append(cm)
        spacings.append(spacing)
    if margin_mm is not None:
        if all(m.shape[:2] == canon_masks[0].shape[:2] for m in canon_masks):
            boxes = [_crop_box(canon_masks, spacings[0], margin_mm)] * len(canon_masks)
        else:
            boxes = [_crop_box([m], s, margin_mm) for m, s in zip(canon_masks, spacings)]
        for r, box in enumerate(boxes):
            if box is not None:
                canon_images[r] = canon_images[r][box[0], box[1]]
                canon_masks[r] = canon_masks[r][box[0], box[1]]
    return canon_images, canon_masks, spacings


def _draw_panel(
    ax: Any, image: np.ndarray, mask: np.ndarray, spacing: tuple[float, float], window: tuple[float, float],
    z: int, label_map: LabelMap, styles: dict[str, tuple[str, str]],
) -> None:
    """Slice ``z`` of one row: the grey image, the structures' contours and the slice number."""
    ax.set_axis_off()
    sa, sb = spacing
    lo, hi = window
    ax.imshow(
        display_slice(image[:, :, z]).astype(np.float32), cmap="gray", vmin=lo, vmax=hi,
        origin="lower", aspect=sb / sa, interpolation="nearest",
    )  # fmt: skip
    shown = display_slice(mask[:, :, z])
    for key in DRAW_ORDER:
        binary = shown == getattr(label_map, key)
        if binary.any():
            ax.contour(binary.astype(np.float32), levels=[0.5], colors=[styles[key][1]], linewidths=1.1)
    ax.text(
        0.02, 0.98, f"s{z}", transform=ax.transAxes, color="white", fontsize=7, ha="left", va="top",
        bbox={"facecolor": "black", "alpha": 0.55, "edgecolor": "none", "pad": 1.0},
    )  # fmt: skip


def _draw_header(fig: Any, fig_w: float, fig_h: float, title: str, note: str, styles: dict[str, tuple[str, str]]) -> None:
    """The study name, the orientation note and the structures' legend along the top."""
    from matplotlib.lines import Line2D

    fig.text(LEFT_IN / fig_w, 1 - 0.08 / fig_h, title, fontsize=10, weight="bold", ha="left", va="top")
    fig.text(LEFT_IN / fig_w, 1 - 0.3 / fig_h, note, fontsize=7, ha="left", va="top", color="0.25")
    handles = [Line2D([], [], color=colour, linewidth=2.0, label=name) for name, colour in styles.values()]
    fig.legend(
        handles=handles, loc="upper right", bbox_to_anchor=(1 - RIGHT_IN / fig_w, 1 - 0.02 / fig_h),
        ncol=len(handles), fontsize=8, frameon=False, handlelength=1.5, columnspacing=1.0,
    )  # fmt: skip


def _volume_curves(
    ax: Any,
    volumes: Sequence[FrameVolumes],
    styles: dict[str, tuple[str, str]],
    ed_index: int | None,
    es_index: int | None,
) -> None:
    frames = np.arange(len(volumes))
    lv = np.array([v.lv_ml for v in volumes])
    rv = np.array([v.rv_ml for v in volumes])
    ax.plot(frames, lv, color=styles["lv"][1], marker="o", markersize=3, linewidth=1.5, label="LV cavity")
    ax.plot(frames, rv, color=styles["rv"][1], marker="o", markersize=3, linewidth=1.5, label="RV cavity")
    ax.set_ylim(0, max(float(np.nanmax(np.r_[lv, rv, 1.0])) * 1.15, 1.0))
    ax.set_xlim(-0.5, len(volumes) - 0.5)
    for idx, name in ((ed_index, "ED"), (es_index, "ES")):
        if idx is not None:
            ax.axvline(idx, color="0.35", linestyle="--", linewidth=0.9)
            ax.annotate(
                f"{name} {idx}", (idx, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -2),
                textcoords="offset points", ha="left", va="top", fontsize=7, color="0.2",
            )  # fmt: skip
    ax.set_xlabel("frame (0-based)", fontsize=8)
    ax.set_ylabel("cavity volume (mL)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, color="0.9", linewidth=0.6)
    ax.legend(fontsize=7, loc="lower right", frameon=False)


def write_study_overlay(
    kind: str,
    volumes: Sequence[Any],
    masks: Sequence[np.ndarray],
    label_map: LabelMap,
    path: Path,
    *,
    per_frame: Sequence[FrameVolumes] | None = None,
    ed_index: int | None = None,
    es_index: int | None = None,
    title: str | None = None,
    crop: bool = True,
) -> Path:
    """The montage of one ``run_study`` result: chooses the rows for the study's ``kind``.

    ``volumes`` are the study's ``io.Volume`` objects and ``masks`` their predicted masks:
    ``"cine"`` -> the ED and ES frames of the one 4D volume plus the volume curves
    (``per_frame``); ``"pair"`` -> the ED and ES volumes; ``"frame"`` -> the one volume.
    """
    if kind == "cine":
        vol, mask = volumes[0], masks[0]
        if ed_index is None or es_index is None:
            raise ValueError("a cine overlay needs the ED and ES frame indices")
        return write_overlay(
            [vol.frame(ed_index), vol.frame(es_index)], [mask[..., ed_index], mask[..., es_index]], vol.affine,
            [f"ED (frame {ed_index})", f"ES (frame {es_index})"], label_map, path,
            volumes=per_frame, ed_index=ed_index, es_index=es_index, title=title, crop=crop,
        )  # fmt: skip
    if kind == "pair":
        return write_overlay(
            [v.data for v in volumes], list(masks), [v.affine for v in volumes],
            [f"ED ({volumes[0].name})", f"ES ({volumes[1].name})"], label_map, path, title=title, crop=crop,
        )  # fmt: skip
    return write_overlay(
        [volumes[0].data], [masks[0]], volumes[0].affine, [volumes[0].name], label_map, path, title=title, crop=crop
    )
