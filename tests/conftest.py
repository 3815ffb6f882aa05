"""Shared fixtures: tiny NIfTI writers, a tiny randomly initialised network, small phantoms.

Everything here is synthetic and small so the suite runs in well under two minutes on two
CPU cores. Real-data tests use the ``acdc_dir`` fixture, which skips when ``../shared/data``
is absent (a fresh clone has no ``../shared``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ACDC_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "acdc"

# the model grid of the tiny test network: 64 px of 1.5625 mm (100 mm field of view)
TINY_SPACING_MM = 1.5625
TINY_FOV_PX = 64


def pytest_configure(config: pytest.Config) -> None:
    """One intra-op thread: tiny networks gain nothing from more, and on a busy 2-core
    machine OpenMP threads contending for cores make each forward pass ~100x slower."""
    import os

    import torch

    os.environ["OMP_NUM_THREADS"] = "1"  # in-process `cardioseg predict` sets its threads from this
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch):
    """Each test runs outside any Slurm array (so batches are never split behind its back) and
    gets the process locale back afterwards (SimpleITK's DICOM writer switches it to "C",
    which would make later subprocess output undecodable)."""
    import locale

    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN",
                 "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_STEP", "CARDIOSEG_MAX_VOXELS"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    saved = locale.setlocale(locale.LC_ALL)
    yield
    if locale.setlocale(locale.LC_ALL) != saved:
        locale.setlocale(locale.LC_ALL, saved)


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``data`` as a NIfTI file (.nii or .nii.gz by suffix) and return the path."""
    import nibabel as nib

    affine = np.diag([1.5, 1.5, 8.0, 1.0]) if affine is None else np.asarray(affine, dtype=np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two binary masks (NaN when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    denom = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / denom if denom else float("nan")


def export_tiny_weights(path: Path, seed: int = 0, fov_px: int = TINY_FOV_PX) -> Path:
    """A randomly initialised 4-class U-Net (base 4, depth 4) saved as cardioseg weights."""
    import torch

    from cardioseg.labels import ACDC
    from cardioseg.models import build_model
    from cardioseg.preprocess import PreprocessConfig
    from cardioseg.weights import export_weights

    torch.manual_seed(seed)
    kwargs = {"in_channels": 1, "num_classes": 4, "base": 4, "depth": 4}
    model = build_model("unet2d", **kwargs)
    # random (not identity) batch-norm statistics so eval mode is not a trivial pass-through
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    _balance_classes(model, fov_px)
    export_weights(
        model,
        path,
        name="tiny-test",
        architecture={"name": "unet2d", "kwargs": kwargs},
        preprocess=PreprocessConfig(spacing_mm=TINY_SPACING_MM, fov_px=fov_px),
        label_map=ACDC,
        training={"data": "none (random initialisation)", "seed": seed},
        validation={},
        license="test only",
    )
    return path


def _balance_classes(model, fov_px: int) -> None:
    """Shift the head's biases so every class wins somewhere on a phantom image.

    A random network tends to predict one class almost everywhere, which would make
    geometry and post-processing tests nearly vacuous; with balanced biases its masks are a
    patchwork of all four labels that changes with every flip or transpose of its input.
    """
    import torch

    from cardioseg.phantom import PhantomSpec, make_phantom
    from cardioseg.preprocess import normalize_intensity

    ph = make_phantom(PhantomSpec(shape=(fov_px, fov_px, 3), spacing_mm=(1.5625, 1.5625, 10.0), n_frames=1))
    norm, _ = normalize_intensity(ph.image[..., 0])
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(norm, 2, 0)[:, None], dtype=np.float32))
    model.eval()
    with torch.no_grad():
        logits = model(x)  # (S, C, H, W)
        centre = logits.transpose(0, 1).reshape(logits.shape[1], -1).median(dim=1).values
        model.head.bias -= centre


@pytest.fixture(scope="session")
def tiny_weights_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny random-network checkpoint (session-scoped; do not modify the file)."""
    return export_tiny_weights(tmp_path_factory.mktemp("weights") / "tiny.pt", seed=0)


@pytest.fixture(scope="session")
def tiny_weights(tiny_weights_path: Path):
    from cardioseg.weights import load_weights

    return load_weights(tiny_weights_path)


@pytest.fixture(scope="session")
def fp32_predictor(tiny_weights):
    """A CPU fp32 Predictor without post-processing (deterministic, exact geometry checks)."""
    import torch

    from cardioseg.inference import PredictOptions, Predictor

    torch.manual_seed(0)
    return Predictor(tiny_weights, PredictOptions(device="cpu", precision="fp32", postprocess=False))


@pytest.fixture
def nifti_writer(tmp_path: Path) -> Callable[..., Path]:
    """``write(name, data, affine=None)`` -> path of a NIfTI file under ``tmp_path``."""

    def write(name: str, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
        return save_nifti(tmp_path / name, data, affine)

    return write


@pytest.fixture(scope="session")
def small_phantom():
    """An 8-frame 48x48x4 phantom cine at 2.5 x 2.5 x 10 mm (fast to segment)."""
    from cardioseg.phantom import PhantomSpec, make_phantom

    return make_phantom(PhantomSpec(shape=(48, 48, 4), spacing_mm=(2.5, 2.5, 10.0), n_frames=8, seed=3))


@pytest.fixture
def acdc_dir() -> Path:
    """The ACDC training data folder; skips the test when it is not there."""
    if not ACDC_DIR.is_dir():
        pytest.skip(f"real data not available at {ACDC_DIR}")
    return ACDC_DIR
