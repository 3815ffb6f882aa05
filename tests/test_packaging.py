"""The wheel carries the shipped weights as package data: build it, install it into a fresh
virtual environment outside the repository, and run the Python API and ``cardioseg predict``
from there with the default weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def _run(cmd: list, **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{cmd[:3]} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", out, REPO_ROOT])
    (path,) = out.glob("cardioseg-*.whl")
    return path


def test_the_wheel_holds_the_weights_and_their_registry(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    registry = json.loads(zipfile.ZipFile(wheel).read("cardioseg/weights/registry.json"))
    assert {f"cardioseg/weights/{entry['file']}" for entry in registry.values()} <= names
    assert "cardioseg/weights/README.md" in names and "cardioseg/py.typed" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "docs/")) for n in names)


def test_a_wheel_install_outside_the_repository_predicts_with_the_default_weights(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # the dependencies (torch, numpy, ...) come from this interpreter's site-packages, cardioseg
    # only from the wheel: a .pth line adds the path but processes none of its .pth files, so
    # this environment's editable install of the repository is not visible there
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", wheel])
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    env.pop("CARDIOSEG_WEIGHTS_DIR", None)
    script = (
        "import cardioseg, pathlib; from cardioseg.phantom import write_phantom; "
        "print(pathlib.Path(cardioseg.__file__).parent); print(cardioseg.predict); "
        "write_phantom('ph', name='ph')"
    )
    shown = _run([python, "-c", script], cwd=work, env=env)
    location = Path(shown.stdout.splitlines()[0]).resolve()
    assert location.is_relative_to(env_dir.resolve()), location
    cli = env_dir / "bin" / "cardioseg"
    _run([cli, "predict", "ph/ph_cine.nii.gz", "-o", "out", "-q", "--threads", "1"], cwd=work, env=env)
    report = json.loads((work / "out" / "ph_cine_report.json").read_text())
    assert report["weights"]["name"] == "dmr-unet2d-acdc"
