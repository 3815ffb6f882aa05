"""What a network takes as input: one slice, a stack of neighbouring slices, or a whole stack.

Qure.ai's 2D-3D FCNs (Patravali et al., STACOM 2017) feed a 2D network N neighbouring slices
of one 3D frame as input channels and predict the centre slice; their 3D network takes the
whole (cropped) stack of a frame. ``InputSpec`` records which, and travels in the weights
(``"input"``) so that the predictor and validation build the same inputs as training did.

Neighbours never cross frames: the slices of a frame are stacked by their position, and the
stack is padded at the base and apex by **replicating** the edge slice (the paper does not say
how it pads; a zero slice would be mid-grey after z-scoring, an image that never occurs).
Pure numpy, no torch, so importing it is instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cardioseg.errors import ConfigError

__all__ = ["InputSpec", "context_indices", "stack_context"]


@dataclass(frozen=True)
class InputSpec:
    """How a frame's (S, H, W) model-space slices become network inputs."""

    dims: int = 2  # 2: (B, context_slices, H, W) per slice; 3: (B, 1, S, H, W), one frame per sample
    context_slices: int = 1  # 2D: neighbouring slices as channels (odd), the centre one predicted

    def __post_init__(self) -> None:
        if self.dims not in (2, 3):
            raise ConfigError(f"input dims must be 2 or 3, got {self.dims}")
        if self.context_slices < 1 or self.context_slices % 2 == 0:
            raise ConfigError(f"--context-slices must be odd and at least 1, got {self.context_slices}")
        if self.dims == 3 and self.context_slices != 1:
            raise ConfigError("a 3D network takes whole stacks: --context-slices must be 1")

    @property
    def in_channels(self) -> int:
        return self.context_slices if self.dims == 2 else 1

    def to_dict(self) -> dict[str, Any]:
        return {"dims": self.dims, "context_slices": self.context_slices, "padding": "replicate"}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> InputSpec:
        """From weights metadata; None (weights made before the field) means one 2D slice."""
        d = d or {}
        return cls(dims=int(d.get("dims", 2)), context_slices=int(d.get("context_slices", 1)))


def context_indices(n_slices: int, context: int) -> np.ndarray:
    """(n_slices, context) indices of each slice's neighbours in a stack, edges replicated.

    >>> context_indices(3, 3).tolist()
    [[0, 0, 1], [0, 1, 2], [1, 2, 2]]
    >>> context_indices(2, 5).tolist()
    [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]]
    """
    half = context // 2
    offsets = np.arange(-half, half + 1)
    return np.clip(np.arange(n_slices)[:, None] + offsets, 0, max(n_slices - 1, 0)).astype(np.int64)


def stack_context(slices: np.ndarray, context: int) -> np.ndarray:
    """(S, H, W) slices of one frame -> (S, context, H, W) neighbour stacks (a new array)."""
    return np.asarray(slices)[context_indices(len(slices), context)]
