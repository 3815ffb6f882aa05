"""TrainConfig: its checks, derived names and defaults, the config.json format, the folds, and
the registries of its choices (which the CLI's help is built from)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import typer

from cardioseg.cli import app
from cardioseg.errors import ConfigError
from cardioseg.models import ARCHITECTURES, InputSpec
from cardioseg.train import (
    ARCHES,
    DEFAULT_REG_WEIGHTS,
    LOSSES,
    OPTIMIZERS,
    REGULARIZERS,
    WEIGHTINGS,
    TrainConfig,
    architecture,
    describe_choices,
    fold_configs,
    load_config,
)
from cardioseg.train.config import POSITION_REGULARIZERS, QURE_LOSSES, SHAPE_AE_REGULARIZERS, WEIGHTED_LOSSES

# config.json of a run: every field and default (old run folders resume and old configs load)
CONFIG_JSON_DEFAULTS = {
    "cache": "c", "out": "o", "arch": "unet2d", "context_slices": 1, "dmr": False, "base_width": 16, "loss": "ce",
    "weighting": "uncertainty", "seg_weight": 1.0, "dm_weight": 1.0, "sigma_lr": 1e-2, "dm_unit_px": 250.0,
    "optimizer": "rmsprop", "lr": 0.0, "lr_decay": 0.99, "weight_decay": 0.0, "epochs": 100, "batch_size": 15,
    "crop_px": 160, "scale_min": 0.8, "scale_max": 1.2, "intensity_aug": 0.0, "hard_slices": 1.0, "fold": 0, "all_patients": False, "n_folds": 5, "seed": 0, "val_every": 1, "keep": "best", "threads": 0, "name": "",
    "regularizer": "none", "reg_weight": 0.0, "position_weight": 0.1, "shape_epochs": 20, "init": "",
}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [({"arch": "vnet"}, "architecture 'vnet'"), ({"loss": "l2"}, "loss 'l2'"), ({"weighting": "x"}, "weighting"),
     ({"optimizer": "sgd"}, "optimizer"), ({"fold": 5}, "--fold"), ({"crop_px": 40}, "--crop-px"),
     ({"regularizer": "vae"}, "regularizer 'vae'"), ({"shape_epochs": 0}, "--shape-epochs"),
     ({"context_slices": 2}, "odd"), ({"context_slices": 0}, "odd"),
     ({"arch": "unet3d", "context_slices": 3}, "whole stacks"), ({"arch": "unet3d", "dmr": True}, "without --dmr"),
     ({"arch": "unet3d", "regularizer": "gan"}, "without --dmr")],
)  # fmt: skip
def test_config_check_rejects_bad_settings(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(cache="c", out="o", **change).check()


def test_unknown_choices_list_the_registered_ones() -> None:
    with pytest.raises(ConfigError, match="regularizer 'vae'.*lrnet, srnn, scn, srscn, acnn, gan"):
        TrainConfig(cache="c", out="o", regularizer="vae").check()
    with pytest.raises(ConfigError, match="choose one of: ce, dice, logdice, dice_ce, mapdice, explog, wce, qure_"):
        TrainConfig(cache="c", out="o", loss="l2").check()


def test_config_defaults_and_the_config_json_format() -> None:
    cfg = TrainConfig(cache="c", out="o")
    cfg.check()
    assert asdict(cfg) == CONFIG_JSON_DEFAULTS and list(asdict(cfg)) == list(CONFIG_JSON_DEFAULTS)
    assert cfg.resolved_lr() == 1e-4 and TrainConfig(cache="c", out="o", dmr=True).resolved_lr() == 5e-4
    assert TrainConfig(cache="c", out="o", optimizer="adamw").resolved_lr() == 1e-3
    assert TrainConfig(cache="c", out="o", lr=0.02, dmr=True).resolved_lr() == 0.02
    folds = fold_configs(cfg)
    assert [(c.fold, c.out) for c in folds] == [(k, str(Path("o") / f"fold{k}")) for k in range(5)]
    assert [c.fold for c in fold_configs(cfg, [3, 1])] == [3, 1]


def test_load_config_reads_old_and_newer_configs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config.json missing"):
        load_config(tmp_path)
    saved = {**CONFIG_JSON_DEFAULTS, "dmr": True, "future_setting": 3}  # a newer version's key is ignored
    for key in ("regularizer", "reg_weight", "position_weight", "shape_epochs"):  # a run made before them
        del saved[key]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert load_config(tmp_path) == TrainConfig(cache="c", out="o", dmr=True)


def test_weights_names_reflect_the_method() -> None:
    assert TrainConfig(cache="c", out="o", dmr=True, arch="segnet2d", fold=2).weights_name() == "dmr-segnet2d-acdc-fold2"
    cfg = TrainConfig(cache="c", out="o", context_slices=3, loss="qure_hybrid")
    assert cfg.weights_name() == "unet2d-ctx3-qure_hybrid-acdc-fold0" and cfg.input_spec() == InputSpec(2, 3)
    assert TrainConfig(cache="c", out="o", arch="unet3d", loss="wce", fold=2).weights_name() == "unet3d-wce-acdc-fold2"
    assert TrainConfig(cache="c", out="o", arch="unet3d").input_spec() == InputSpec(dims=3)
    assert TrainConfig(cache="c", out="o", loss="dice").weights_name() == "unet2d-acdc-fold0"  # unchanged
    assert TrainConfig(cache="c", out="o", regularizer="srscn", fold=1).weights_name() == "srscn-unet2d-acdc-fold1"
    assert (
        TrainConfig(cache="c", out="o", dmr=True, regularizer="lrnet").weights_name() == "dmr-lrnet-unet2d-acdc-fold0"
    )
    assert TrainConfig(cache="c", out="o", name="mine").weights_name() == "mine"


def test_regulariser_weights_and_distance_maps() -> None:
    assert TrainConfig(cache="c", out="o", regularizer="srscn").resolved_reg_weight() == 5e-4 == DEFAULT_REG_WEIGHTS["srnn"]
    assert TrainConfig(cache="c", out="o", regularizer="gan", reg_weight=0.3).resolved_reg_weight() == 0.3
    assert TrainConfig(cache="c", out="o", regularizer="lrnet").needs_distmaps()
    assert TrainConfig(cache="c", out="o", loss="mapdice").needs_distmaps()
    assert TrainConfig(cache="c", out="o", dmr=True).needs_distmaps()
    assert not TrainConfig(cache="c", out="o", regularizer="srscn", loss="explog").needs_distmaps()


def test_architecture_records_the_constructor_arguments() -> None:
    cfg = TrainConfig(cache="c", out="o", dmr=True, base_width=8, context_slices=5)
    assert architecture(cfg) == {"name": "unet2d", "kwargs": {"in_channels": 5, "num_classes": 4, "base": 8,
                                                              "depth": 4, "dmr": True}}  # fmt: skip
    assert "dmr" not in architecture(cfg, dmr=False)["kwargs"]


def test_the_registries() -> None:
    assert set(ARCHES) == set(ARCHITECTURES)  # every trainable architecture is a registered network
    assert list(LOSSES) == ["ce", "dice", "logdice", "dice_ce", "mapdice", "explog", "wce", "qure_logdice", "qure_hybrid"]
    assert all(spec.description for spec in LOSSES.values())
    assert QURE_LOSSES == ("wce", "qure_logdice", "qure_hybrid")
    assert WEIGHTED_LOSSES == ("explog", "wce", "qure_logdice", "qure_hybrid")
    assert list(REGULARIZERS) == ["none", "lrnet", "srnn", "scn", "srscn", "acnn", "gan"]
    assert DEFAULT_REG_WEIGHTS == {"none": 0.0, "lrnet": 1.0, "srnn": 5e-4, "scn": 0.0, "srscn": 5e-4, "acnn": 0.01,
                                   "gan": 0.01}  # fmt: skip
    assert SHAPE_AE_REGULARIZERS == ("srnn", "srscn", "acnn") and POSITION_REGULARIZERS == ("scn", "srscn")
    assert list(WEIGHTINGS) == ["uncertainty", "fixed"] and list(OPTIMIZERS) == ["rmsprop", "adamw"]


def test_the_cli_help_is_built_from_the_registries() -> None:
    command = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    helps = {p.name: p.help for p in command.params}
    for name, spec in LOSSES.items():
        assert f"{name} ({spec.description})" in helps["loss"]
    assert helps["loss"] == describe_choices(LOSSES) + " (default: dice_ce)."
    for name, reg in REGULARIZERS.items():
        assert (f"{name} ({reg.description})" if reg.description else name) in helps["regularizer"]
    assert "srnn/srscn/acnn first pre-train a shape autoencoder" in helps["regularizer"]
    assert "lrnet 1, srnn 0.0005, srscn 0.0005, acnn 0.01, gan 0.01" in helps["reg_weight"]
    assert helps["arch"].startswith("unet2d | segnet2d | usegnet2d | unet3d (Qure.ai's 3D U-Net")
    assert helps["optimizer"] == "rmsprop (paper) | adamw (default: adamw)."
    assert helps["weighting"] == "With --dmr: uncertainty (learned, Eq. 7) | fixed"
