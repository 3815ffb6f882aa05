"""``cardioseg train``: preprocess -> train -> export-only, the methods' flags, predicting with
what it exported, its errors, and the process-wide settings it (not the engine) makes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from conftest import save_nifti
from typer.testing import CliRunner

import cardioseg.train.distributed
from cardioseg.cli import app
from tests.test_dataset import write_acdc_tree

runner = CliRunner()


def test_cli_preprocess_train_and_export_only(tmp_path: Path) -> None:
    data = write_acdc_tree(tmp_path / "data", n=5)
    cache = tmp_path / "cache"
    result = runner.invoke(
        app, ["preprocess", str(data), "-o", str(cache), "-q", "--fov-px", "64", "--spacing-mm", "2.5"]
    )
    assert result.exit_code == 0, result.output
    assert f"{cache}: 10 frames" in result.stdout
    assert (cache / "meta.json").is_file() and (cache / "distmaps.npy").is_file()
    out = tmp_path / "run"
    args = ["train", str(cache), "-o", str(out), "--epochs", "1", "--batch-size", "4", "--crop-px", "32",
            "--base-width", "4", "-q", "--name", "tiny"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    weights = out / "tiny.pt"
    assert str(weights) in result.stdout and weights.is_file()
    weights.unlink()
    result = runner.invoke(app, [*args, "--export-only"])
    assert result.exit_code == 0, result.output
    assert weights.is_file() and str(weights) in result.stdout
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "--resume" in result.output


def test_cli_train_on_a_non_cache_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", str(tmp_path), "-o", str(tmp_path / "run"), "--crop-px", "32"])
    assert result.exit_code == 1
    assert "cardioseg preprocess" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["train", str(tmp_path), "-o", str(tmp_path / "run"), "--loss", "l2"])
    assert result.exit_code == 1 and "unknown loss 'l2'" in result.output


def test_cli_train_with_a_regularizer(tiny_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", str(tiny_cache), "-o", str(out), "--epochs", "1", "--batch-size", "4", "--crop-px", "32",
            "--base-width", "4", "-q", "--regularizer", "srscn", "--loss", "explog", "--shape-epochs", "1",
            "--reg-weight", "0.001", "--position-weight", "0.5"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "srscn-unet2d-acdc-fold0.pt").is_file() and (out / "shape_ae.pt").is_file()
    saved = json.loads((out / "config.json").read_text())
    assert (saved["regularizer"], saved["loss"], saved["shape_epochs"]) == ("srscn", "explog", 1)
    assert (saved["reg_weight"], saved["position_weight"]) == (0.001, 0.5)
    result = runner.invoke(app, [*args[:-2], "--regularizer", "vae"])
    assert result.exit_code == 1 and "unknown regularizer 'vae'" in result.output
    help_text = runner.invoke(app, ["train", "--help"], terminal_width=200).output
    for word in ("--regularizer", "lrnet", "srscn", "acnn", "gan", "mapdice", "explog", "--shape-epochs"):
        assert word in help_text


def test_cli_trains_unet3d_and_multislice_and_predict_just_works(multi_cache: Path, tmp_path: Path, phantom) -> None:
    image = save_nifti(tmp_path / "in" / "case.nii.gz", phantom.image[..., 0], phantom.affine)
    for extra, name in ((["--arch", "unet3d", "--loss", "wce", "--batch-size", "2"], "unet3d-wce-acdc-fold0.pt"),
                        (["--context-slices", "5", "--loss", "wce", "--no-dmr"], "unet2d-ctx5-wce-acdc-fold0.pt")):  # fmt: skip
        out = tmp_path / name
        args = ["train", str(multi_cache), "-o", str(out), "--epochs", "1", "--crop-px", "32", "--base-width", "4",
                "--batch-size", "4", "-q", *extra]  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert (out / name).is_file()
        result = runner.invoke(app, ["predict", str(image), "-o", str(out / "pred"), "-w", str(out / name)])
        assert result.exit_code == 0, result.output
        mask = nib.load(str(out / "pred" / "case_seg.nii.gz"))
        assert mask.shape == phantom.image.shape[:3] and np.allclose(mask.affine, phantom.affine)
    result = runner.invoke(app, ["train", str(multi_cache), "-o", str(tmp_path / "x"), "--context-slices", "4"])
    assert result.exit_code == 1 and "odd" in result.output


def test_the_command_sets_threads_and_the_process_group(tiny_cache: Path, tmp_path: Path, monkeypatch) -> None:
    calls: list[tuple] = []
    monkeypatch.setattr(cardioseg.train.distributed, "set_threads", lambda n: calls.append(("threads", n)))
    monkeypatch.setattr(cardioseg.train.distributed, "init_process_group", lambda: calls.append(("group",)) or (0, 1))
    args = ["train", str(tiny_cache), "-o", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4",
            "--crop-px", "32", "--base-width", "4", "-q", "--threads", "3"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert calls == [("group",), ("threads", 3)]
    calls.clear()
    assert runner.invoke(app, [*args, "--export-only"]).exit_code == 0
    assert calls == []  # exporting needs neither


def test_train_defaults_reproduce_the_shipped_default_and_the_paper_is_one_flag_away(tiny_cache: Path, tmp_path: Path, monkeypatch) -> None:
    import cardioseg.train
    from cardioseg.train import PAPER_RECIPE, SHIPPED_RECIPE, TrainConfig
    from cardioseg.weights import load_weights

    seen = []
    monkeypatch.setattr(cardioseg.train, "train", lambda cfg, **kw: seen.append(cfg) or tmp_path / "w.pt")
    base = ["train", str(tiny_cache), "-o", str(tmp_path / "run"), "-q"]
    for extra in ([], ["--paper"], ["--paper", "--epochs", "3", "--no-dmr"]):
        assert runner.invoke(app, [*base, *extra]).exit_code == 0
    shipped = load_weights().meta["training"]["recipe"]  # weights older than a setting trained with its default
    defaults = TrainConfig(cache="", out="")
    assert {k: getattr(seen[0], k) for k in SHIPPED_RECIPE} == SHIPPED_RECIPE
    assert SHIPPED_RECIPE == {k: shipped.get(k, getattr(defaults, k)) for k in SHIPPED_RECIPE}
    assert {k: getattr(seen[1], k) for k in PAPER_RECIPE} == PAPER_RECIPE
    assert (seen[2].epochs, seen[2].dmr, seen[2].optimizer) == (3, False, "rmsprop")
