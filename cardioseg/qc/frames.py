"""The frames of a study in canonical orientation, and how messages name frames and slices."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cardioseg.geometry import Orientation, find_orientation, to_canonical
from cardioseg.io import Volume


class StudyFrames:
    """The study's 3D frames in canonical orientation, with names for messages."""

    def __init__(
        self,
        masks: Sequence[np.ndarray],
        volumes: Sequence[Volume],
        kind: str,
        ed: int | None,
        es: int | None,
    ) -> None:
        self.kind, self.ed, self.es = kind, ed, es
        self.volumes = list(volumes)
        self.orientations: list[Orientation] = [find_orientation(v.affine) for v in volumes]
        self.canonical = [to_canonical(np.asarray(m), o) for m, o in zip(masks, self.orientations)]
        if kind == "cine":
            if self.canonical[0].ndim != 4:
                raise ValueError(f"a cine needs a 4D mask, got shape {self.canonical[0].shape}")
            self.n = self.canonical[0].shape[3]
        else:
            self.n = len(self.canonical)
            if any(c.ndim != 3 for c in self.canonical):
                raise ValueError(f"a {kind} needs 3D masks")

    def frame(self, t: int) -> tuple[np.ndarray, Orientation]:
        """Canonical 3D mask of frame ``t`` and the orientation of its volume."""
        if self.kind == "cine":
            return self.canonical[0][..., t], self.orientations[0]
        return self.canonical[t], self.orientations[t]

    def role(self, t: int) -> str | None:
        roles = [r for r, i in (("ED", self.ed), ("ES", self.es)) if i == t]
        return "/".join(roles) or None

    def name(self, t: int) -> str:
        """``"frame 4 (ES)"``, ``"the ED frame"``, ``"the image"``."""
        if self.kind == "frame":
            return "the image"
        role = self.role(t)
        if self.kind == "pair":
            return f"the {role or ('ED' if t == 0 else 'ES')} frame"
        return f"frame {t} ({role})" if role else f"frame {t}"

    def describe(self, ts: list[int]) -> str:
        """A phrase naming a set of frames, with the ED/ES ones called out."""
        ts = sorted(set(ts))
        if len(ts) == 1 or self.kind != "cine":
            return " and ".join(self.name(t) for t in ts)
        keys = [t for t in ts if self.role(t)]
        text = f"{len(ts)} of {self.n} frames ({ranges(ts)})"
        if keys:
            text += ", including " + " and ".join(f"{self.role(t)} frame {t}" for t in keys)
        return text

    def key_frames(self) -> list[int]:
        """ED and ES frames (every frame of a single frame / a cine without them)."""
        keys = sorted({i for i in (self.ed, self.es) if i is not None})
        return keys or list(range(self.n))


def ranges(ts: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    parts: list[str] = []
    start = prev = ts[0]
    for t in [*ts[1:], None]:
        if t is not None and t == prev + 1:
            prev = t
            continue
        parts.append(f"{start}-{prev}" if prev > start else f"{start}")
        if t is not None:
            start = prev = t
    return ", ".join(parts)


def stored_slice(k: int, n_slices: int, o: Orientation) -> int:
    """Canonical slice index -> index along the stored array's slice axis."""
    return n_slices - 1 - k if o.flip[2] else k


def capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]
