"""cardioseg: short-axis cardiac cine MRI segmentation and clinical measurements.

The Python API (:mod:`cardioseg.api`; the ``cardioseg`` command is a thin shell over it):

- :func:`predict` inputs -> masks, reports and ``summary.csv`` in a folder (as ``cardioseg predict``)
- :func:`measure` existing masks -> the same reports and ``summary.csv`` (as ``cardioseg measure``)
- :func:`evaluate` masks vs references -> metrics tables (as ``cardioseg evaluate``)
- :func:`segment` one volume -> labels, in memory; :func:`load_predictor` to reuse a network
- :func:`load_weights`, :func:`read_volume`
"""

from __future__ import annotations

from cardioseg._version import __version__
from cardioseg.api import evaluate, load_predictor, load_weights, measure, predict, read_volume, segment

__all__ = ["__version__", "evaluate", "load_predictor", "load_weights", "measure", "predict", "read_volume", "segment"]
