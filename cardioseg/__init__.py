"""cardioseg: short-axis cardiac cine MRI segmentation and clinical measurements."""

from __future__ import annotations

__version__ = "0.1.0"
