"""What a study's result depends on, so that a finished study is reused only when it matches
what is asked now.

The fingerprint is a dict of every setting that changes the masks or the numbers of a report:
the weights (file sha256 of every member), the inference options that change labels (crop,
test-time rotations, clean-up, post-processing, ensemble mode), the study options (density,
ED/ES overrides, height and weight, DICOM series) and cardioseg's version. Not in it: device,
precision, threads, batch size, compile (how fast, not what: they change at most a handful of
voxels), and the overlay (an expected output of its own). It is stored in each report
(``"fingerprint"``); ``split_finished`` recomputes a study whose stored fingerprint differs and
says which settings changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cardioseg._version import __version__

__all__ = ["PREDICT_KEYS", "STUDY_KEYS", "changed_settings", "make_fingerprint"]

PREDICT_KEYS = ("crop_px", "tta", "tta_frames", "clean_up", "postprocess", "lcc_tolerance_mm", "ensemble")
STUDY_KEYS = ("myo_density_g_ml", "ed_frame", "es_frame", "height_cm", "weight_kg", "series_uid")

# how a changed setting is named in the note ("2 recomputed: weights changed")
_NAMES = {"weights": "weights", "version": "cardioseg version", "myo_density_g_ml": "density",
          "crop_px": "crop", "clean_up": "clean-up"}  # fmt: skip


def make_fingerprint(weights_sha256: Sequence[str], predict: Mapping[str, Any], study: Mapping[str, Any]) -> dict[str, Any]:
    """``{"settings": {...}, "sha256": ...}`` for these weights and options (plain JSON types;
    options absent from ``predict``/``study`` count as their defaults, None)."""
    settings: dict[str, Any] = {
        "weights": list(weights_sha256),
        **{k: predict.get(k) for k in PREDICT_KEYS},
        **{k: study.get(k) for k in STUDY_KEYS},
        "version": __version__,
    }
    if len(weights_sha256) < 2:
        settings["ensemble"] = None  # one model: the ensemble mode changes nothing
    text = json.dumps(settings, sort_keys=True, default=str)
    return {"settings": settings, "sha256": hashlib.sha256(text.encode()).hexdigest()}


def changed_settings(stored: Any, wanted: Mapping[str, Any]) -> list[str]:
    """The settings (user-facing names) in which a report's stored fingerprint differs from
    ``wanted``; ``["older cardioseg"]`` for a report without one; [] when they match."""
    if not isinstance(stored, dict) or not isinstance(stored.get("settings"), dict):
        return ["made by an older cardioseg"]
    if stored.get("sha256") == wanted["sha256"]:
        return []
    old, new = stored["settings"], wanted["settings"]
    keys = [k for k in new if old.get(k) != new.get(k)] or ["settings"]
    return [f"{_NAMES.get(k, k.replace('_', ' '))} changed" for k in keys]
