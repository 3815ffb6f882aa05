"""A finished (or interrupted) run's best checkpoint as self-describing, shipped-format weights."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from cardioseg.dataset import load_cache
from cardioseg.errors import ConfigError
from cardioseg.models import build_model
from cardioseg.models.unet import DMR_PREFIX
from cardioseg.preprocess import PreprocessConfig
from cardioseg.train.config import TrainConfig, architecture
from cardioseg.train.data import cache_label_map
from cardioseg.train.init import inherited_inference, recorded_init

__all__ = ["ACDC_LICENSE", "export_run"]

ACDC_LICENSE = (
    "Trained on ACDC data (CC BY-NC-SA 4.0): non-commercial use only, share-alike. Cite "
    "O. Bernard et al., IEEE TMI 37(11):2514-2525, 2018, doi:10.1109/TMI.2018.2837502."
)


def export_run(cfg: TrainConfig, log: Callable[[str], None] | None = None) -> Path:
    """Export the best checkpoint of a run as shipped-format weights, ``OUT/<weights name>.pt``,
    without the regulariser (the DMR decoder is dropped; the other regularisers' networks were
    never in ``best.pt``). Says so through ``log``; returns the path.

    Raises ConfigError when the run folder has no ``best.pt`` yet."""
    from cardioseg.weights import export_weights

    out = Path(cfg.out)
    best_path = out / "best.pt"
    if not best_path.is_file():
        raise ConfigError(f'No best checkpoint in "{out}" yet')
    cache = load_cache(Path(cfg.cache))
    train_names, val_names = cfg.split(cache)
    arch = architecture(cfg, dmr=False)
    model = build_model(arch["name"], **arch["kwargs"])
    saved = torch.load(best_path, map_location="cpu", weights_only=True)
    best = json.loads(saved["best"])
    model.load_state_dict({k: v for k, v in saved["model"].items() if not k.startswith(DMR_PREFIX)})
    name = cfg.weights_name()
    exported = out / f"{name}.pt"
    recipe = {k: v for k, v in asdict(cfg).items() if k not in {"cache", "out", "threads", "name", "init"}}
    init = recorded_init(out)  # fine-tuned: the weights it started from, by name and checksum
    recipe["lr"] = cfg.resolved_lr()
    recipe["reg_weight"] = cfg.resolved_reg_weight()
    export_weights(
        model,
        exported,
        name=name,
        architecture=arch,
        preprocess=PreprocessConfig.from_dict(cache.meta["preprocess"]),
        label_map=cache_label_map(cache),
        training={
            "data": f"{len(cache.patients)} patients of the cache at {cache.path.name} (ED+ES frames, expert labels)",
            "train_patients": train_names,
            "val_patients": val_names,
            "split": cfg.split_text(),
            "recipe": recipe,
            "distance_map_regulariser": "used in training, removed from these weights" if cfg.dmr else "none",
            "regulariser": "none" if cfg.regularizer == "none" else f"{cfg.regularizer}: used in training only",
            "best_epoch": best.get("epoch"),
            **({"initialised_from": {"name": init["name"], "sha256": init["sha256"]}} if init else {}),
        },
        validation={"model_space": {k: v for k, v in best.items() if k != "epoch" and not cfg.all_patients}},
        license=ACDC_LICENSE,
        input_spec=cfg.input_spec(),
        inference=inherited_inference(init),
    )
    if log is not None:
        val_text = f"val dice {best['dice_mean']:.4f}" if best.get("dice_mean", -1) >= 0 else "no validation"
        log(f"exported {exported} ({'last' if cfg.exports_last_epoch else 'best'} epoch {best.get('epoch')}, {val_text})")
    return exported
