"""Training on a tiny synthetic ACDC-style dataset: folds, cache, one epoch, export, predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cardioseg.phantom import PhantomSpec, make_phantom
from cardioseg.train import (
    TrainConfig,
    acdc_patients,
    augment_batch,
    dice_ce_loss,
    stratified_folds,
    train,
)
from tests.conftest import save_nifti

GROUPS = ["DCM", "HCM", "MINF", "NOR", "RV"]


def _write_dataset(root: Path, n: int = 5) -> Path:
    for i in range(n):
        name = f"patient{i + 1:03d}"
        ph = make_phantom(PhantomSpec(shape=(80, 80, 5), spacing_mm=(2.5, 2.5, 10.0), n_frames=4, seed=i))
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "Info.cfg").write_text(f"ED: 1\nES: 3\nGroup: {GROUPS[i % 5]}\nHeight: 170\nWeight: 70\n")
        for number, t in ((1, ph.ed_frame), (3, ph.es_frame)):
            save_nifti(folder / f"{name}_frame{number:02d}.nii.gz", ph.image[..., t], ph.affine)
            save_nifti(folder / f"{name}_frame{number:02d}_gt.nii.gz", ph.labels[..., t], ph.affine)
    return root


def test_folds_are_patient_level_stratified_and_balanced(tmp_path: Path) -> None:
    patients = acdc_patients(_write_dataset(tmp_path / "data", n=10))
    folds = stratified_folds(patients, n_folds=5)
    assert sorted(folds) == [p.name for p in patients]
    sizes = np.bincount(list(folds.values()), minlength=5)
    assert sizes.tolist() == [2, 2, 2, 2, 2]
    for group in GROUPS:  # each group's two patients land in different folds
        in_group = [folds[p.name] for p in patients if p.group == group]
        assert len(set(in_group)) == len(in_group)
    assert stratified_folds(patients, 5) == folds  # deterministic


def test_augmentation_keeps_image_and_labels_aligned() -> None:
    import torch

    rng = np.random.default_rng(0)
    img = np.zeros((2, 1, 64, 64), np.float32)
    lab = np.zeros((2, 64, 64), np.int64)
    img[:, 0, 20:40, 25:45] = 5.0
    lab[:, 20:40, 25:45] = 3
    x, y = augment_batch(torch.from_numpy(img), torch.from_numpy(lab), np.array([[30.0, 35.0]] * 2), 48, rng)
    assert x.shape == (2, 1, 48, 48) and y.shape == (2, 48, 48)
    inside = y == 3
    assert inside.sum() > 100
    # the bright square and label 3 coincide (bilinear edges aside)
    assert float(x[inside[:, None]].mean()) > 3.5
    assert float(x[~inside[:, None]].mean()) < 1.5


def test_dice_ce_loss_is_lower_for_the_right_answer() -> None:
    import torch

    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 0:2, :] = 1
    target[0, 2:6, 2:6] = 2
    target[0, 3:5, 3:5] = 3
    right = torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float() * 10
    wrong = torch.roll(right, 1, dims=1)
    assert float(dice_ce_loss(right, target, 4)) < 0.05 < float(dice_ce_loss(wrong, target, 4))


@pytest.mark.slow
def test_one_epoch_trains_exports_and_predicts(tmp_path: Path) -> None:
    from cardioseg.inference import PredictOptions, Predictor
    from cardioseg.preprocess import PreprocessConfig
    from cardioseg.weights import load_weights

    data = _write_dataset(tmp_path / "data")
    cfg = TrainConfig(
        data=str(data), out=str(tmp_path / "run"), cache=str(tmp_path / "cache.npz"), epochs=2,
        batch_size=4, crop_px=48, base_width=4, val_every=1,
        preprocess=PreprocessConfig(spacing_mm=2.5, fov_px=80), name="tiny",
    )  # fmt: skip
    messages: list[str] = []
    path = train(cfg, log=messages.append)
    assert path.is_file() and (tmp_path / "run" / "log.csv").read_text().count("\n") == 3
    weights = load_weights(path)
    assert weights.meta["training"]["val_patients"] and weights.preprocess.fov_px == 80
    assert set(weights.meta["training"]["train_patients"]).isdisjoint(weights.meta["training"]["val_patients"])
    ph = make_phantom(PhantomSpec(shape=(80, 80, 5), spacing_mm=(2.5, 2.5, 10.0), n_frames=2))
    mask = Predictor(weights, PredictOptions(device="cpu", precision="fp32")).predict(ph.image[..., 0], ph.affine)
    assert mask.shape == ph.image.shape[:3] and mask.dtype == np.uint8
    # resuming a finished run trains nothing more and exports the same best model
    messages.clear()
    train(cfg, log=messages.append)
    assert any("resumed at epoch 2" in m for m in messages)
