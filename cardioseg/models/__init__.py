"""Network definitions and an explicit registry of them."""

from __future__ import annotations

from cardioseg.models.inputs import InputSpec
from cardioseg.models.registry import ARCHITECTURES, THREE_D, build_model

__all__ = ["ARCHITECTURES", "THREE_D", "InputSpec", "build_model"]
