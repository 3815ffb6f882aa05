"""Regional LV wall thickness in the 16 AHA segments of a short-axis stack.

Method (per short-axis slice, in the slice plane, in mm)
-------------------------------------------------------
The frame is brought into the canonical voxel order of :mod:`cardioseg.geometry` (slice axis
= the axis with the largest spacing). On each canonical slice:

* **Contours at the pixel edges.** The endocardial contour is the set of midpoints of the pixel
  edges shared by an LV-cavity pixel and a myocardium pixel (4-neighbours); the epicardial
  contour the midpoints of the edges shared by a myocardium pixel and a pixel that is neither
  myocardium nor cavity (background, RV, or outside the image). These are exactly the vertices
  of the marching-squares contour at level 0.5 of the binary masks (the sub-pixel contour that
  ``skimage.measure.find_contours`` would give). Myocardium components smaller than 10 % of the
  largest (stray pixels, an isolated papillary muscle) and all but the largest cavity component
  are left out. Papillary muscles labelled as cavity (the ACDC convention) are cavity.
* **Thickness** at each endocardial point is the distance to the nearest epicardial point
  (Euclidean, in world mm from the affine's in-plane columns, so anisotropic, sheared or
  oblique pixels are measured right): the endo-to-epi nearest-contour distance of Bai et al.,
  "Automated cardiovascular magnetic resonance image analysis with fully convolutional
  networks", JCMR 20:65 (2018) (``ukbb_cardiac``, ``evaluate_wall_thickness``), there between
  smoothed contours, here between the pixel-edge contours.
* **Open rings.** Where the myocardium does not enclose the cavity (ACDC basal slices at the
  outflow tract often do not), only endocardial points, i.e. cavity next to myocardium, are
  measured, and a point is dropped when the opening (cavity next to background or RV) is no
  farther than its measured thickness plus one pixel: its nearest epicardial point could be the
  cut end of the myocardial arc rather than the outer wall. The result notes such slices.

**Bias.** On a voxelised cylindrical shell (pixel centres inside radius ``r`` are cavity, inside
``r + t`` myocardium) the nearest-contour distance between the two staircase contours comes out
short by 0.15-0.27 pixel: -0.25 mm for t = 8 mm at 1.25 mm pixels, -0.30 mm at 1.0 x 1.6 mm,
-0.22 to -0.40 mm over 5-12 mm walls and 1.25-1.8 mm pixels, growing slowly with the thickness
(``tests/test_wall.py`` checks it): the minimum over the jagged epicardial staircase favours its
inward corners (the point set standing for the polyline between them adds only about
+h^2 / (8 t), h the point spacing, ~0.02 mm). It does not depend on the orientation of the grid.
The distance is the shortest one, so it cuts corners where the thickness changes along the
wall: a 60 degree sector thickened from 8 to 14 mm with radial steps reads ~11 mm as its basal
segment mean and ~13 mm as the local maximum, and a focal thickening narrower than about twice
its thickness reads thinner still. And it is measured in the image plane: a slice that cuts the
wall obliquely (a long axis tilted from the slice normal, the apex, the base) gives the in-plane
thickness, larger than the true one by 1 / cos(tilt), as calipers on short-axis images do.

AHA segments (Cerqueira et al., Circulation 105:539, 2002)
----------------------------------------------------------
* **Rings.** The slices with at least 10 pixels of LV myocardium, ordered from base to apex and
  split into thirds by position (slice ``i`` of ``n`` at ``(i + 0.5) / n``: basal below 1/3,
  apical from 2/3, e.g. 3/4/3 of 10 slices). The base is the end where the LV (cavity plus
  myocardium) area is larger: the sign of a least-squares line of area against slice position.
  Only when that line is flat (or there is one slice) does the world direction decide: the apex
  points left-anterior-inferior, (-1, +1, -1) in RAS. The area comes first because the affines
  of some data sets, ACDC's among them, do not give the anatomical directions.
  Segment 17 (the apex beyond the cavity) is not measured on a short-axis stack.
* **Anterior RV insertion point**, per slice: the epicardial points within one pixel of an RV
  cavity edge (5 mm when none is that close) form the septal contact arc, the contact points'
  angles about the slice's LV cavity centroid minus the largest angular gap between them; its
  two ends are the insertion points. The anterior one is the one further along world anterior
  (+y in RAS). Which end of the arc that is cannot change between the slices of one stack, so it
  is chosen once, by a vote of the slices weighted by the difference in y of their two ends, and
  applied to every slice. A contact arc under 20 degrees does not count. A slice of the rings
  without one takes the insertion angle of the nearest slice that has one (the result notes it);
  when no slice has one, the regional values are None and ``problem`` says why. ACDC's affines
  are ITK's default: their +y is up in the stored image, anterior in the standard short-axis
  display, so the rule holds there too, but their slice direction is not anatomical (the apex
  comes out superior), which is why the base is found from the area.
* **Segments** by the angle ``phi`` about the LV cavity centroid, from the anterior insertion
  point, increasing toward the inferior one through the septal arc: basal and mid rings in 60
  degree sectors, ``phi`` in [0, 60) anteroseptal (2 / 8), [60, 120) inferoseptal (3 / 9), then
  inferior (4 / 10), inferolateral (5 / 11), anterolateral (6 / 12) and [300, 360) anterior (1 / 7);
  apical ring in 90 degree sectors centred so that the septal one (14) is centred on
  ``phi`` = 60, the middle of the septum of the rings above: [15, 105) septal 14, then inferior 15,
  lateral 16, and [285, 15) anterior 13.
* **Segment value**: the mean thickness of the endocardial points of the segment on all slices
  of its ring (None with fewer than 3 points).
* **Maximum thickness** (:attr:`WallThickness.max_mm`) is local, as the hypertrophic
  cardiomyopathy criterion (>= 15 mm) is on the thickest point of the wall: the largest mean
  thickness over any 30 degree arc (centred on each endocardial point in turn, at least 3 points)
  of any slice. It is usually above the largest segment mean, smooths single-pixel steps of the
  contours, and does not depend on where the segment borders fall. Its segment is the segment
  of the arc's centre point.

Angles (:attr:`WallThickness.insertion_angle_deg`) are measured in the slice plane about the
LV cavity centroid, from the world direction of canonical in-plane axis 0 toward that of
canonical axis 1 (:mod:`cardioseg.geometry`), in degrees in [0, 360).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from cardioseg.geometry import find_orientation, to_canonical
from cardioseg.labels import LabelMap

#: AHA segment numbers measured on a short-axis stack (17, the apex, is not)
SEGMENTS = tuple(range(1, 17))
#: segment names (Cerqueira et al. 2002)
SEGMENT_NAMES = {
    1: "basal anterior", 2: "basal anteroseptal", 3: "basal inferoseptal", 4: "basal inferior",
    5: "basal inferolateral", 6: "basal anterolateral", 7: "mid anterior", 8: "mid anteroseptal",
    9: "mid inferoseptal", 10: "mid inferior", 11: "mid inferolateral", 12: "mid anterolateral",
    13: "apical anterior", 14: "apical septal", 15: "apical inferior", 16: "apical lateral",
}  # fmt: skip
RINGS = ("basal", "mid", "apical")

#: a slice belongs to the rings with at least this many myocardium pixels
MIN_MYO_PIXELS = 10
#: myocardium components smaller than this fraction of the largest are left out
MIN_COMPONENT_FRACTION = 0.1
#: a segment value needs at least this many endocardial points
MIN_SEGMENT_POINTS = 3
#: the local maximum: mean over arcs of this width (degrees) with at least this many points
MAX_ARC_DEG = 30.0
MIN_ARC_POINTS = 3
#: RV contact: an epicardial point within one pixel of an RV edge, else within this (mm)
RV_CONTACT_FALLBACK_MM = 5.0
#: a septal contact arc narrower than this (degrees) gives no insertion point
MIN_CONTACT_ARC_DEG = 20.0
#: the apex points left-anterior-inferior in RAS (used only when the LV area does not tell)
APEX_DIRECTION_RAS = np.array([-1.0, 1.0, -1.0]) / math.sqrt(3.0)

# basal/mid: sector index floor(phi / 60) -> segment in the basal ring (mid: + 6)
_SECTOR_60 = np.array([2, 3, 4, 5, 6, 1])
# apical: floor(((phi - 15) mod 360) / 90) -> segment
_SECTOR_90 = np.array([14, 15, 16, 13])


@dataclass(frozen=True)
class WallThickness:
    """LV wall thickness of one 3D frame (all lengths in mm, slices as stored-array indices).

    ``segments_mm``: AHA segments 1-16, the mean thickness of each (None where not measured).
    ``slices_mm``: per stored slice with LV myocardium, the mean thickness of all its measured
    endocardial points (None where nothing could be measured). ``max_mm``: the local maximum
    (the thickest 30 degree arc, see the module docstring), with its AHA segment (None without
    segments) and stored slice. ``rings``: stored slice -> "basal" / "mid" / "apical".
    ``insertion_angle_deg``: stored slice -> the anterior RV insertion angle used on it (degrees,
    convention in the module docstring), from the slice itself or the nearest slice with one;
    ``insertion_point_mm``: stored slice -> world position (RAS mm) of the anterior insertion point
    where one was found on the slice itself. ``problem``: why regional values are missing or
    partial (None when all 16 segments are measured). ``notes``: how the values were obtained
    where that matters (borrowed insertion angles, open rings, how the base was found).
    """

    segments_mm: dict[int, float | None]
    slices_mm: dict[int, float | None] = field(default_factory=dict)
    max_mm: float | None = None
    max_segment: int | None = None
    max_slice: int | None = None
    rings: dict[int, str] = field(default_factory=dict)
    insertion_angle_deg: dict[int, float] = field(default_factory=dict)
    insertion_point_mm: dict[int, tuple[float, float, float]] = field(default_factory=dict)
    problem: str | None = None
    notes: tuple[str, ...] = ()


@dataclass
class _Slice:
    """What one canonical slice gives before the segments are known."""

    k: int  # canonical slice index
    stored: int  # stored slice index
    area_px: int  # LV myocardium + cavity pixels
    centre: np.ndarray  # (3,) world mm, LV cavity centroid (myocardium centroid without cavity)
    angles: np.ndarray  # (N,) radians of the measured endocardial points about the centre
    thickness: np.ndarray  # (N,) mm
    open_ring: bool = False
    ends: tuple[float, float, np.ndarray, np.ndarray] | None = None  # arc start/end angle, points


class _Grid:
    """Canonical (a, b, k) fractional indices -> world mm, and the in-plane basis for angles."""

    def __init__(self, affine: np.ndarray, shape: tuple[int, int, int]) -> None:
        o = find_orientation(affine)
        self.orientation = o
        a3 = np.asarray(affine, dtype=np.float64)[:3, :3]
        flip = np.zeros((3, 3))
        offset = np.zeros(3)
        for k in range(3):
            flip[o.perm[k], k] = -1.0 if o.flip[k] else 1.0
            if o.flip[k]:
                offset[o.perm[k]] = shape[o.perm[k]] - 1
        self.matrix = a3 @ flip  # columns: world step of each canonical axis
        self.origin = a3 @ offset + np.asarray(affine, dtype=np.float64)[:3, 3]
        u = self.matrix[:, 0] / np.linalg.norm(self.matrix[:, 0])
        v = self.matrix[:, 1] - (self.matrix[:, 1] @ u) * u
        self.u, self.v = u, v / np.linalg.norm(v)
        self.pixel_mm = float(max(np.linalg.norm(self.matrix[:, 0]), np.linalg.norm(self.matrix[:, 1])))
        self.n_slices = shape[o.perm[2]]

    def world(self, ab: np.ndarray, k: int) -> np.ndarray:
        """(N, 2) canonical in-plane fractional indices on canonical slice ``k`` -> (N, 3) world mm."""
        return ab @ self.matrix[:, :2].T + (self.origin + k * self.matrix[:, 2])

    def angles(self, points: np.ndarray, centre: np.ndarray) -> np.ndarray:
        d = points - centre
        return np.arctan2(d @ self.v, d @ self.u)

    def stored_slice(self, k: int) -> int:
        return self.n_slices - 1 - k if self.orientation.flip[2] else k


def _edge_midpoints(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(N, 2) midpoints of the pixel edges between 4-neighbours, one in ``first``, one in ``second``."""
    rows = (first[:-1] & second[1:]) | (second[:-1] & first[1:])
    cols = (first[:, :-1] & second[:, 1:]) | (second[:, :-1] & first[:, 1:])
    r = np.argwhere(rows).astype(np.float64)
    r[:, 0] += 0.5
    c = np.argwhere(cols).astype(np.float64)
    c[:, 1] += 0.5
    return np.concatenate([r, c])


_EIGHT = np.ones((3, 3), dtype=bool)


def _keep_components(mask: np.ndarray, fraction: float | None) -> np.ndarray:
    """The 8-connected components of ``mask`` of at least ``fraction`` of the largest (None: the largest)."""
    labelled, n = ndimage.label(mask, structure=_EIGHT)
    if n <= 1:
        return mask
    sizes = np.bincount(labelled.ravel())[1:]
    keep = np.zeros(n + 1, dtype=bool)
    if fraction is None:
        keep[1 + int(np.argmax(sizes))] = True
    else:
        keep[1:] = sizes >= fraction * sizes.max()
    return keep[labelled]


def _measure_slice(sl: np.ndarray, k: int, grid: _Grid, label_map: LabelMap) -> _Slice | None:
    """Thickness at the endocardial points of canonical slice ``k`` and its RV contact arc."""
    myo_any = sl == label_map.myo
    if np.count_nonzero(myo_any) < MIN_MYO_PIXELS:
        return None
    cav_any = sl == label_map.lv
    rv_any = sl == label_map.rv
    heart = myo_any | cav_any | rv_any
    rows, cols = np.flatnonzero(heart.any(axis=1)), np.flatnonzero(heart.any(axis=0))
    r0, r1 = max(int(rows[0]) - 1, 0), int(rows[-1]) + 2
    c0, c1 = max(int(cols[0]) - 1, 0), int(cols[-1]) + 2

    def crop(m: np.ndarray) -> np.ndarray:
        return np.pad(m[r0:r1, c0:c1], 1)  # outside the image counts as background

    off = np.array([r0 - 1, c0 - 1], dtype=np.float64)
    myo_any, cav_any, rv = crop(myo_any), crop(cav_any), crop(rv_any)
    myo = _keep_components(myo_any, MIN_COMPONENT_FRACTION)
    cav = _keep_components(cav_any, None) if cav_any.any() else cav_any
    outside = ~(myo_any | cav_any)
    area = int(np.count_nonzero(myo_any | cav_any))

    inside = cav if cav.any() else myo
    centre_ab = np.argwhere(inside).mean(axis=0) + off
    centre = grid.world(centre_ab[None], k)[0]

    endo = grid.world(_edge_midpoints(cav, myo) + off, k)
    epi = grid.world(_edge_midpoints(myo, outside) + off, k)
    angles = np.zeros(0)
    thickness = np.zeros(0)
    open_ring = False
    if len(endo) and len(epi):
        thickness, _ = cKDTree(epi).query(endo)
        opening = _edge_midpoints(cav, outside)
        if len(opening):
            open_ring = True
            d_open, _ = cKDTree(grid.world(opening + off, k)).query(endo)
            keep = thickness < d_open - grid.pixel_mm
            endo, thickness = endo[keep], thickness[keep]
        angles = grid.angles(endo, centre)
    result = _Slice(k, grid.stored_slice(k), area, centre, angles, np.asarray(thickness, dtype=np.float64), open_ring)
    if rv.any() and len(epi):
        result.ends = _contact_arc(epi, grid.world(_edge_midpoints(rv, ~rv) + off, k), centre, grid)
    return result


def _contact_arc(
    epi: np.ndarray, rv_edges: np.ndarray, centre: np.ndarray, grid: _Grid
) -> tuple[float, float, np.ndarray, np.ndarray] | None:
    """The septal contact arc: (start angle, end angle, start point, end point), the arc running
    from start to end with increasing angle; None without one of at least ``MIN_CONTACT_ARC_DEG``."""
    distance, _ = cKDTree(rv_edges).query(epi)
    for tolerance in (1.01 * grid.pixel_mm, max(RV_CONTACT_FALLBACK_MM, 1.01 * grid.pixel_mm)):
        contact = distance <= tolerance
        if np.count_nonzero(contact) >= 3:
            break
    else:
        return None
    points = epi[contact]
    angles = grid.angles(points, centre)
    order = np.argsort(angles)
    angles, points = angles[order], points[order]
    gaps = np.diff(np.concatenate([angles, angles[:1] + 2 * math.pi]))
    g = int(np.argmax(gaps))  # the largest gap runs from angles[g] to angles[g + 1]
    if 2 * math.pi - gaps[g] < math.radians(MIN_CONTACT_ARC_DEG):
        return None
    start, end = (g + 1) % len(angles), g
    return float(angles[start]), float(angles[end]), points[start], points[end]


def _base_first(slices: list[_Slice], grid: _Grid) -> tuple[bool, str]:
    """Whether the base is at the low canonical slice index, and how that was decided."""
    ks = np.array([s.k for s in slices], dtype=np.float64)
    areas = np.array([s.area_px for s in slices], dtype=np.float64)
    if len(slices) >= 2:
        slope = float(np.polyfit(ks, areas, 1)[0])
        if abs(slope) * (ks.max() - ks.min()) > 0.05 * areas.max():
            return slope < 0, "the base was taken as the end with the larger LV area"
    toward = float(grid.matrix[:, 2] @ APEX_DIRECTION_RAS)
    return toward >= 0, "the LV area does not tell base from apex: the world direction of the apex decided"


def _rings(slices: list[_Slice], base_first: bool) -> dict[int, str]:
    """Canonical slice index -> ring, thirds by position from the base."""
    ordered = sorted(slices, key=lambda s: s.k, reverse=not base_first)
    n = len(ordered)
    return {s.k: RINGS[min(int(3 * (i + 0.5) / n), 2)] for i, s in enumerate(ordered)}


def _segment_ids(phi_deg: np.ndarray, ring: str) -> np.ndarray:
    """AHA segment of each angle ``phi`` (degrees from the anterior insertion point toward the septum)."""
    phi = np.mod(phi_deg, 360.0)
    if ring == "apical":
        return _SECTOR_90[np.minimum((np.mod(phi - 15.0, 360.0) // 90).astype(int), 3)]
    ids = _SECTOR_60[np.minimum((phi // 60).astype(int), 5)]
    return ids + 6 if ring == "mid" else ids


def _describe(stored: list[int]) -> str:
    stored = sorted(stored)
    return f"slice{'s' if len(stored) > 1 else ''} {', '.join(map(str, stored))}"


def _local_max(angles: np.ndarray, thickness: np.ndarray) -> tuple[float, int] | None:
    """The largest mean thickness over ``MAX_ARC_DEG`` arcs centred on each point, and that point."""
    n = len(angles)
    if n < MIN_ARC_POINTS:
        return None
    order = np.argsort(angles)
    a, t = angles[order], thickness[order]
    a3 = np.concatenate([a - 2 * math.pi, a, a + 2 * math.pi])
    cs = np.concatenate([[0.0], np.cumsum(np.tile(t, 3))])
    half = math.radians(MAX_ARC_DEG) / 2
    lo = np.searchsorted(a3, a - half, side="left")
    hi = np.searchsorted(a3, a + half, side="right")
    count = hi - lo
    means = np.where(count >= MIN_ARC_POINTS, (cs[hi] - cs[lo]) / np.maximum(count, 1), -np.inf)
    best = int(np.argmax(means))
    if not np.isfinite(means[best]):
        return None
    return float(means[best]), int(order[best])


def frame_wall_thickness(mask: np.ndarray, affine: np.ndarray, label_map: LabelMap) -> WallThickness:
    """LV wall thickness of one 3D label frame, per slice and per AHA segment (method: module docstring).

    ``mask``: (X, Y, Z) integer labels, stored in any orientation; ``affine``: its 4x4
    voxel -> world (RAS mm) matrix; ``label_map``: what the labels mean. A mask without
    myocardium, cavity or RV does not raise: the values that cannot be measured are None and
    ``problem`` says why.
    """
    mask = np.asarray(mask)
    affine = np.asarray(affine, dtype=np.float64)
    if mask.ndim != 3:
        raise ValueError(f"frame_wall_thickness needs one 3D frame, got shape {mask.shape}")
    if affine.shape != (4, 4):
        raise ValueError(f"the affine must be 4x4, got {affine.shape}")
    empty: dict[int, float | None] = dict.fromkeys(SEGMENTS)
    grid = _Grid(affine, mask.shape)  # type: ignore[arg-type]
    canon = to_canonical(mask, grid.orientation)
    slices: list[_Slice] = []
    for k in range(canon.shape[2]):
        measured = _measure_slice(canon[:, :, k], k, grid, label_map)
        if measured is not None:
            slices.append(measured)
    if not slices:
        return WallThickness(empty, problem="no LV myocardium in the mask: the wall thickness cannot be measured")
    slices_mm = {s.stored: (float(s.thickness.mean()) if s.thickness.size else None) for s in slices}
    if all(s.thickness.size == 0 for s in slices):
        return WallThickness(
            empty, slices_mm,
            problem="no LV cavity borders the myocardium: there is no endocardial contour to measure from",
        )  # fmt: skip

    notes: list[str] = []
    open_rings = [s.stored for s in slices if s.open_ring]
    if open_rings:
        notes.append(
            f"the myocardium does not enclose the LV cavity on stored {_describe(open_rings)}: the thickness "
            "is measured only where myocardium borders the cavity, away from the opening"
        )
    base_first, how = _base_first(slices, grid)
    notes.append(how)
    ring_of = _rings(slices, base_first)
    rings = {s.stored: ring_of[s.k] for s in slices}

    # the local maximum (needs no segments)
    best: tuple[float, _Slice, int] | None = None
    for s in slices:
        found = _local_max(s.angles, s.thickness)
        if found is not None and (best is None or found[0] > best[0]):
            best = (found[0], s, found[1])
    max_mm = best[0] if best else None
    max_slice = best[1].stored if best else None

    if not any(s.ends is not None for s in slices):
        no_rv = (
            "no RV cavity borders the LV myocardium on any slice: without the RV insertion point the AHA "
            "segments cannot be placed"
        )
        return WallThickness(empty, slices_mm, max_mm, None, max_slice, rings, problem=no_rv, notes=tuple(notes))
    sense, theta, points = _insertion(slices, grid, notes)

    sums, counts = np.zeros(17), np.zeros(17, dtype=np.int64)  # indexed by segment
    max_segment: int | None = None
    for s in slices:
        if not s.thickness.size:
            continue
        ids = _segment_ids(np.degrees(sense * (s.angles - theta[s.k])), ring_of[s.k])
        sums += np.bincount(ids, weights=s.thickness, minlength=17)
        counts += np.bincount(ids, minlength=17)
        if best is not None and best[1] is s:
            max_segment = int(ids[best[2]])
    segments: dict[int, float | None] = {
        seg: (float(sums[seg] / counts[seg]) if counts[seg] >= MIN_SEGMENT_POINTS else None) for seg in SEGMENTS
    }
    missing = [seg for seg in SEGMENTS if segments[seg] is None]
    problem: str | None = None
    if missing:
        empty_rings = [r for r in RINGS if r not in rings.values()]
        why = f" (no slice in the {' or '.join(empty_rings)} ring)" if empty_rings else ""
        problem = (
            f"no wall thickness in AHA segment{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))}"
            f"{why}: too few measured endocardial points there"
        )
    angles_deg = {grid.stored_slice(k): float(np.degrees(a) % 360.0) for k, a in theta.items()}
    return WallThickness(
        segments, slices_mm, max_mm, max_segment, max_slice, rings, angles_deg, points, problem, tuple(notes)
    )


def _insertion(
    slices: list[_Slice], grid: _Grid, notes: list[str]
) -> tuple[float, dict[int, float], dict[int, tuple[float, float, float]]]:
    """The sense of ``phi`` (+1: increasing angle from the anterior insertion point runs into the
    septum), the anterior insertion angle per canonical slice (borrowed from the nearest slice with
    one where needed, noted in ``notes``), and the world points of those found on their own slice."""
    with_ends = [(s, s.ends) for s in slices if s.ends is not None]
    # which end of the contact arc is anterior: one vote for the stack, weighted by the y difference
    vote = sum(float(ends[2][1] - ends[3][1]) for _, ends in with_ends)
    sense = 1.0 if vote >= 0 else -1.0  # +1: the start of the arc (the lower angle) is anterior
    if vote == 0:
        notes.append("the two RV insertion points lie at the same world y: the lower-angle one was taken as anterior")
    own: dict[int, float] = {}
    points: dict[int, tuple[float, float, float]] = {}
    for s, ends in with_ends:
        own[s.k] = ends[0] if sense > 0 else ends[1]
        p = ends[2] if sense > 0 else ends[3]
        points[s.stored] = (float(p[0]), float(p[1]), float(p[2]))
    mid = float(np.mean([s.k for s in slices]))
    theta: dict[int, float] = {}
    borrowed: list[str] = []
    for s in slices:
        if s.k in own:
            theta[s.k] = own[s.k]
            continue
        donor = min(own, key=lambda k: (abs(k - s.k), abs(k - mid)))  # the nearest; on a tie the more central
        theta[s.k] = own[donor]
        borrowed.append(f"{s.stored} (from {grid.stored_slice(donor)})")
    if borrowed:
        notes.append(
            "no RV insertion point on stored slice" + ("s " if len(borrowed) > 1 else " ") + ", ".join(borrowed)
            + ": the insertion angle of the nearest slice with one was used"
        )  # fmt: skip
    return sense, theta, points


def _rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def regional_measures(ed: WallThickness, es: WallThickness | None) -> dict[str, Any]:
    """The report keys (JSON-safe; segment dicts keyed "1".."16", None where missing).

    ``lv_max_wall_thickness_mm`` / ``_segment``: the local maximum of the ED frame and its AHA
    segment; ``aha_wall_thickness_ed_mm`` / ``_es_mm``: the segment means (mm);
    ``aha_thickening_pct``: systolic thickening (ES - ED) / ED x 100 per segment;
    ``wall_thickness_problem``: why values are missing or partial (ED and ES), or None.
    """
    ed_mm = {str(seg): _rounded(ed.segments_mm.get(seg)) for seg in SEGMENTS}
    es_mm = {str(seg): (_rounded(es.segments_mm.get(seg)) if es is not None else None) for seg in SEGMENTS}
    thickening: dict[str, float | None] = {}
    for seg in SEGMENTS:
        a = ed.segments_mm.get(seg)
        b = es.segments_mm.get(seg) if es is not None else None
        thickening[str(seg)] = _rounded((b - a) / a * 100.0, 1) if a is not None and b is not None and a > 0 else None
    problems = [f"ED: {ed.problem}"] if ed.problem else []
    if es is None:
        problems.append("ES: no ES frame, so no ES thickness or thickening")
    elif es.problem:
        problems.append(f"ES: {es.problem}")
    return {
        "lv_max_wall_thickness_mm": _rounded(ed.max_mm),
        "lv_max_wall_thickness_segment": ed.max_segment,
        "aha_wall_thickness_ed_mm": ed_mm,
        "aha_wall_thickness_es_mm": es_mm,
        "aha_thickening_pct": thickening,
        "wall_thickness_problem": "; ".join(problems) or None,
    }
