"""``cardioseg train --init``: a run that starts from trained weights (fine-tuning) starts from
exactly them, records them, and refuses weights that do not fit the run or saw its validation
patients."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from train.helpers import logger, tiny_cfg
from typer.testing import CliRunner

import cardioseg.weights
from cardioseg.cli import app
from cardioseg.errors import ConfigError
from cardioseg.train import train
from cardioseg.train.init import INIT_FILE
from cardioseg.weights import load_weights


@pytest.fixture(scope="module")
def fold1_weights(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny network trained on fold 1's training patients (fold 1's validation patient held out)."""
    return train(tiny_cfg(tiny_cache, tmp_path_factory.mktemp("fold1") / "run", fold=1, epochs=2))


def _conv_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The convolution kernels (batch norm's running statistics move in any training step)."""
    return {k: v.float() for k, v in state.items() if v.ndim == 4}


def test_a_run_starts_from_the_init_weights_and_records_them(
    tiny_cache: Path, tmp_path: Path, fold1_weights: Path
) -> None:
    start = load_weights(fold1_weights)
    out = tmp_path / "ft"
    messages: list[str] = []
    # AdamW moves each parameter by about lr per step: at 1e-9 the network stays where it started
    path = train(tiny_cfg(tiny_cache, out, fold=1, dmr=True, optimizer="adamw", lr=1e-9, init=str(fold1_weights)),
                 callbacks=logger(messages))  # fmt: skip
    assert any(f"initialised from {start.name}" in m for m in messages)
    tuned = load_weights(path)
    before, after = _conv_weights(start.state_dict), _conv_weights(tuned.state_dict)
    assert before.keys() == after.keys() and before
    assert all(torch.allclose(before[k], after[k], atol=1e-3) for k in before)
    record = {"name": start.name, "sha256": start.file_sha256}
    assert json.loads((out / INIT_FILE).read_text()) == record
    assert tuned.meta["training"]["initialised_from"] == record and "init" not in tuned.meta["training"]["recipe"]
    # from random weights the same run ends elsewhere, and records no start
    fresh = load_weights(train(tiny_cfg(tiny_cache, tmp_path / "fresh", fold=1, dmr=True, optimizer="adamw", lr=1e-9)))
    assert not all(torch.allclose(before[k], v, atol=1e-3) for k, v in _conv_weights(fresh.state_dict).items())
    assert "initialised_from" not in fresh.meta["training"]


def test_resume_continues_from_the_checkpoint_not_from_the_init_weights(
    tiny_cache: Path, tmp_path: Path, fold1_weights: Path
) -> None:
    out = tmp_path / "ft"
    cfg = tiny_cfg(tiny_cache, out, fold=1, epochs=1, init=str(fold1_weights))
    train(cfg)
    messages: list[str] = []
    train(replace(cfg, epochs=2), resume=True, callbacks=logger(messages))
    assert any("resumed at epoch 1" in m for m in messages)
    assert not any("initialised from" in m for m in messages)


def test_weights_that_saw_the_folds_validation_patients_are_refused(
    tiny_cache: Path, tmp_path: Path, fold1_weights: Path
) -> None:
    seen = set(load_weights(fold1_weights).meta["training"]["train_patients"])
    out = tmp_path / "leak"
    with pytest.raises(ConfigError, match=r"were trained on 1 of fold 0's 1 validation patients .*optimistic"):
        train(tiny_cfg(tiny_cache, out, fold=0, init=str(fold1_weights)))
    assert not out.exists()  # refused before anything was written
    # with no validation there is nothing to leak into
    all_cfg = replace(tiny_cfg(tiny_cache, tmp_path / "all", init=str(fold1_weights)), all_patients=True)
    assert load_weights(train(all_cfg)).meta["training"]["initialised_from"]["name"] == load_weights(fold1_weights).name
    assert seen  # the check above was not vacuous


def test_weights_of_another_network_preprocessing_or_labels_are_refused(
    tiny_cache: Path, tmp_path: Path, fold1_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match=r"--base-width"):
        train(tiny_cfg(tiny_cache, tmp_path / "wide", fold=1, base_width=8, init=str(fold1_weights)))
    w = load_weights(fold1_weights)
    for changed, message in (
        (
            replace(w, preprocess=replace(w.preprocess, spacing_mm=1.25)),
            "another preprocessing .*spacing_mm 1.25 vs 2.5",
        ),
        (replace(w, label_map=replace(w.label_map, rv=3, lv=1)), "label"),
    ):
        monkeypatch.setattr(cardioseg.weights, "load_weights", lambda spec, changed=changed: changed)
        with pytest.raises(ConfigError, match=message):
            train(tiny_cfg(tiny_cache, tmp_path / "other", fold=1, init=str(fold1_weights)))
    assert not (tmp_path / "wide").exists() and not (tmp_path / "other").exists()


def test_cli_init_missing_weights_is_a_one_line_error(tiny_cache: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", str(tiny_cache), "-o", str(tmp_path / "run"), "--init", str(tmp_path / "no.pt"),
                                      "--epochs", "1", "--crop-px", "32", "--base-width", "4", "-q"])  # fmt: skip
    assert result.exit_code != 0
    assert "--init: Weights" in result.output and "not found" in result.output
    assert "Traceback" not in result.output


def test_a_fine_tuned_model_runs_by_default_as_the_weights_it_started_from(
    tiny_cache: Path, tmp_path: Path, fold1_weights: Path
) -> None:
    from cardioseg.weights import recommend_inference

    parent = tmp_path / "parent.pt"
    recommend_inference(fold1_weights, 32, True, "chosen by a test", out=parent, confidence_min=0.93)
    tuned = load_weights(train(tiny_cfg(tiny_cache, tmp_path / "ft", fold=1, init=str(parent))))
    inference = tuned.meta["inference"]
    assert (inference["crop_px"], inference["tta"], inference["confidence_min"]) == (32, True, 0.93)
    assert inference["chosen_by"].startswith(f"inherited from {load_weights(parent).name}")
    assert "chosen by a test" in inference["chosen_by"]
    assert tuned.meta["training"]["initialised_from"] == {"name": load_weights(parent).name, "sha256": load_weights(parent).file_sha256}
    # weights without a recommendation pass none on
    plain = load_weights(train(tiny_cfg(tiny_cache, tmp_path / "plain", fold=1, init=str(fold1_weights))))
    assert "inference" not in plain.meta
