"""Network definitions and an explicit registry of them."""

from __future__ import annotations

from cardioseg.models.registry import ARCHITECTURES, build_model

__all__ = ["ARCHITECTURES", "build_model"]
