"""Start a run from trained weights instead of random ones (``cardioseg train --init WEIGHTS``).

Fine-tuning: the shipped network (a registered name) or any exported weights (a file, its
checksum verified like ``predict --weights``) start the run; everything else (optimiser,
schedule, the distance-map decoder, the learned loss weights) starts fresh. The weights must
be of the network the run trains and of the cache's preprocessing and labels, and in a
cross-validation fold they must not have seen that fold's validation patients (their scores
would be optimistic): each case is refused with a one-line ConfigError. What a run started
from is kept in ``OUT/init.json`` and recorded in its exported weights, which also inherit the
starting weights' recommended inference (two-stage crop, rotations, QC's confidence limit), so a
fine-tuned shipped model runs by default as the shipped model does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cardioseg.errors import ConfigError
from cardioseg.models.unet import DMR_PREFIX
from cardioseg.preprocess import PreprocessConfig
from cardioseg.train.config import TrainConfig, architecture
from cardioseg.train.data import TrainData, cache_label_map

__all__ = ["INIT_FILE", "inherited_inference", "load_initial_weights", "recorded_init"]

INIT_FILE = "init.json"  # in the run folder: the weights the run started from


def load_initial_weights(cfg: TrainConfig, data: TrainData, model: Any) -> dict[str, Any]:
    """Load ``cfg.init`` into ``model`` (the network being trained, its DMR decoder left as
    built) after checking that it fits the run; returns ``{"name", "sha256"}`` of the weights,
    with their recommended ``"inference"`` when they have one."""
    from cardioseg.errors import WeightsError
    from cardioseg.weights import load_weights

    try:
        w = load_weights(cfg.init)
    except WeightsError as exc:
        raise ConfigError(f"--init: {exc}") from None
    want = architecture(cfg, dmr=False)
    have = {
        "name": w.architecture.get("name"),
        "kwargs": {k: v for k, v in w.architecture.get("kwargs", {}).items() if k != "dmr"},
    }
    if have != want:
        raise ConfigError(
            f'--init weights "{w.name}" are a {have["name"]} {have["kwargs"]}, but this run trains a {want["name"]} '
            f"{want['kwargs']}: pass the matching --arch, --base-width and --context-slices"
        )
    cache_pre = PreprocessConfig.from_dict(data.cache.meta["preprocess"])
    if w.preprocess != cache_pre:
        diff = ", ".join(
            f"{k} {a} vs {b}"
            for (k, a), b in zip(w.preprocess.to_dict().items(), cache_pre.to_dict().values(), strict=True)
            if a != b
        )
        raise ConfigError(
            f'--init weights "{w.name}" were trained on another preprocessing than the cache "{data.cache.path}" '
            f"({diff}): preprocess the data with the weights' settings"
        )
    if w.label_map.as_dict() != cache_label_map(data.cache).as_dict():
        raise ConfigError(
            f'--init weights "{w.name}" label {w.label_map.as_dict()}, the cache {cache_label_map(data.cache).as_dict()}'
        )
    seen = set(w.meta.get("training", {}).get("train_patients", []))
    overlap = sorted(seen & set(data.val_names))
    if overlap:
        raise ConfigError(
            f'--init weights "{w.name}" were trained on {len(overlap)} of fold {cfg.fold}\'s {len(set(data.val_names))} '
            f"validation patients ({', '.join(overlap[:3])}{', ...' if len(overlap) > 3 else ''}): its validation would "
            "be optimistic; start from weights that held this fold out, or train with --all-patients"
        )
    state = {k: v.float() if v.is_floating_point() else v for k, v in w.state_dict.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(DMR_PREFIX)]
    if missing or unexpected:
        raise ConfigError(
            f'--init weights "{w.name}" do not fit the network ({len(missing)} missing, {len(unexpected)} unexpected parameters)'
        )
    start: dict[str, Any] = {"name": w.name, "sha256": w.file_sha256}
    if w.meta.get("inference"):
        start["inference"] = w.meta["inference"]
    return start


def recorded_init(out: Path) -> dict[str, Any] | None:
    """What the run in ``out`` started from (None: random weights)."""
    path = Path(out) / INIT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def inherited_inference(init: dict[str, Any] | None) -> dict[str, Any] | None:
    """The recommended inference a fine-tuned run's weights take from the weights it started
    from (None: random start, or starting weights without one)."""
    if not init or not init.get("inference"):
        return None
    parent = init["inference"]
    return {**parent, "chosen_by": f"inherited from {init['name']}, the weights this run was fine-tuned from ({parent.get('chosen_by', '')})"}
