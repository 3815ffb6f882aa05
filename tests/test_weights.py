"""Self-describing checkpoints: export/load round trip and every way loading must refuse."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_FOV_PX, TINY_SPACING_MM, export_tiny_weights

from cardioseg.errors import WeightsError
from cardioseg.labels import ACDC
from cardioseg.preprocess import PreprocessConfig
from cardioseg.weights import (
    FORMAT,
    export_weights,
    load_weights,
    registry,
    resolve,
    sha256_file,
    state_sha256,
)


class NotATensor:
    """A custom class: pickling it needs arbitrary code execution on load."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


def test_export_load_round_trip(tmp_path):
    from cardioseg.models import build_model

    torch.manual_seed(1)
    kwargs = {"in_channels": 1, "num_classes": 4, "base": 4, "depth": 4}
    model = build_model("unet2d", **kwargs).eval()
    path = tmp_path / "w.pt"
    digest = export_weights(
        model,
        path,
        name="roundtrip",
        architecture={"name": "unet2d", "kwargs": kwargs},
        preprocess=PreprocessConfig(spacing_mm=TINY_SPACING_MM, fov_px=TINY_FOV_PX),
        label_map=ACDC,
        training={"epochs": 0},
        validation={"dice": None},
        license="CC0",
    )
    assert [p.name for p in tmp_path.iterdir()] == ["w.pt"]
    assert digest == sha256_file(path)

    w = load_weights(path)
    assert w.name == "roundtrip" and w.path == path and w.file_sha256 == digest
    assert w.architecture == {"name": "unet2d", "kwargs": kwargs}
    assert w.preprocess == PreprocessConfig(spacing_mm=TINY_SPACING_MM, fov_px=TINY_FOV_PX)
    assert w.label_map.as_dict() == ACDC.as_dict()
    assert w.meta["format"] == FORMAT and w.meta["license"] == "CC0" and w.meta["training"] == {"epochs": 0}

    rebuilt = w.build_model()
    assert not rebuilt.training
    original = model.state_dict()
    for key, value in rebuilt.state_dict().items():
        expected = original[key].half().float() if original[key].is_floating_point() else original[key]
        assert torch.equal(value, expected), key
    # the rebuilt network computes what the original computes with fp16-rounded parameters
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        model.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in original.items()})
        assert torch.allclose(rebuilt(x), model(x), atol=1e-5)


def test_state_sha256_sees_one_changed_value(tiny_weights):
    state = {k: v.clone() for k, v in tiny_weights.state_dict.items()}
    digest = state_sha256(state)
    assert digest == state_sha256({k: state[k] for k in reversed(list(state))})  # order-free
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[key].view(-1)[0] += 1
    assert state_sha256(state) != digest


def _registry_dir(tmp_path: Path, weights_file: Path, sha: str) -> Path:
    d = tmp_path / "weights_dir"
    d.mkdir()
    shutil.copy(weights_file, d / "tiny.pt")
    (d / "registry.json").write_text(json.dumps({"tiny-acdc": {"file": "tiny.pt", "sha256": sha}}))
    return d


def test_registry_name_with_matching_sha_loads(tmp_path, monkeypatch, tiny_weights_path):
    d = _registry_dir(tmp_path, tiny_weights_path, sha256_file(tiny_weights_path))
    monkeypatch.setenv("CARDIOSEG_WEIGHTS_DIR", str(d))
    assert set(registry()) == {"tiny-acdc"}
    assert resolve("tiny-acdc") == (d / "tiny.pt", sha256_file(tiny_weights_path))
    assert load_weights("tiny-acdc").file_sha256 == sha256_file(tiny_weights_path)


def test_registry_sha_mismatch_raises(tmp_path, monkeypatch, tiny_weights_path):
    d = _registry_dir(tmp_path, tiny_weights_path, "0" * 64)
    monkeypatch.setenv("CARDIOSEG_WEIGHTS_DIR", str(d))
    with pytest.raises(WeightsError, match="checksum"):
        load_weights("tiny-acdc")


def test_registered_file_missing_raises(tmp_path, monkeypatch, tiny_weights_path):
    d = _registry_dir(tmp_path, tiny_weights_path, sha256_file(tiny_weights_path))
    (d / "tiny.pt").unlink()
    monkeypatch.setenv("CARDIOSEG_WEIGHTS_DIR", str(d))
    with pytest.raises(WeightsError, match="missing"):
        load_weights("tiny-acdc")


def test_unknown_name_lists_the_registered_names(tmp_path, monkeypatch, tiny_weights_path):
    d = _registry_dir(tmp_path, tiny_weights_path, sha256_file(tiny_weights_path))
    monkeypatch.setenv("CARDIOSEG_WEIGHTS_DIR", str(d))
    with pytest.raises(WeightsError, match="tiny-acdc") as info:
        load_weights("no-such-weights")
    assert "no-such-weights" in str(info.value)


def test_unknown_name_with_empty_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("CARDIOSEG_WEIGHTS_DIR", str(tmp_path))
    assert registry() == {}
    with pytest.raises(WeightsError, match="none installed"):
        load_weights("unet2d-acdc")


def test_tampered_state_dict_raises(tmp_path, tiny_weights_path):
    ckpt = torch.load(tiny_weights_path, map_location="cpu", weights_only=True)
    key = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and v.numel() > 1)
    ckpt["state_dict"][key] = ckpt["state_dict"][key].clone()
    ckpt["state_dict"][key].view(-1)[0] += 1  # one changed value, old state_sha256 kept
    bad = tmp_path / "tampered.pt"
    torch.save(ckpt, bad)
    with pytest.raises(WeightsError, match="sha256"):
        load_weights(bad)
    # control: the same re-save without the change loads
    ok = torch.load(tiny_weights_path, map_location="cpu", weights_only=True)
    torch.save(ok, tmp_path / "resaved.pt")
    assert load_weights(tmp_path / "resaved.pt").name == "tiny-test"


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all\n" * 10, b"PK\x03\x04garbage"])
def test_non_checkpoint_file_raises(tmp_path, content):
    p = tmp_path / "junk.pt"
    p.write_bytes(content)
    with pytest.raises(WeightsError):
        load_weights(p)


def test_torch_file_of_another_kind_raises(tmp_path):
    p = tmp_path / "plain_state_dict.pt"
    torch.save({"weight": torch.zeros(3)}, p)
    with pytest.raises(WeightsError, match=FORMAT):
        load_weights(p)
    torch.save([1, 2, 3], p)
    with pytest.raises(WeightsError):
        load_weights(p)


def test_loading_uses_weights_only(tmp_path, tiny_weights_path):
    ckpt = torch.load(tiny_weights_path, map_location="cpu", weights_only=True)
    ckpt["training"] = {"note": NotATensor()}  # otherwise a valid checkpoint
    p = tmp_path / "pickled.pt"
    torch.save(ckpt, p)
    # an unrestricted unpickler would accept it ...
    assert isinstance(torch.load(p, map_location="cpu", weights_only=False)["training"]["note"], NotATensor)
    # ... cardioseg must not
    with pytest.raises(WeightsError):
        load_weights(p)


def test_plain_pickle_with_custom_class_raises(tmp_path):
    p = tmp_path / "evil.pt"
    p.write_bytes(pickle.dumps({"format": FORMAT, "obj": NotATensor()}, protocol=2))
    with pytest.raises(WeightsError):
        load_weights(p)


def test_checkpoint_that_does_not_fit_its_architecture(tmp_path):
    p = export_tiny_weights(tmp_path / "w.pt", seed=2)
    ckpt = torch.load(p, map_location="cpu", weights_only=True)
    ckpt["architecture"] = {"name": "unet2d", "kwargs": {"in_channels": 1, "num_classes": 4, "base": 8, "depth": 4}}
    torch.save(ckpt, p)
    w = load_weights(p)  # the file itself is consistent ...
    with pytest.raises(WeightsError, match="do not fit their architecture"):
        w.build_model()  # ... but not with the architecture it names


class _Foreign:
    """A class a pickle may reference: weights_only=True refuses to build it."""


def _make_bad(kind: str, path: Path, good: Path) -> Path:
    if kind == "text":
        path.write_text("not weights\n")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    elif kind == "foreign":
        torch.save({"x": _Foreign()}, path)
    elif kind == "plain_state_dict":
        torch.save({"conv.weight": torch.zeros(3)}, path)
    else:  # another architecture's parameters under this checkpoint's description
        ckpt = torch.load(good, weights_only=True)
        ckpt["architecture"]["kwargs"]["base"] = 2 * ckpt["architecture"]["kwargs"]["base"]
        torch.save(ckpt, path)
    return path


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("text", "is not a PyTorch checkpoint (not a zip archive"),
        ("truncated", "is truncated or damaged"),
        ("foreign", "holds Python objects other than tensors"),
        ("plain_state_dict", "are not a cardioseg-weights/1 checkpoint (the file holds a dict with keys conv.weight"),
        ("other_architecture", "do not fit their architecture unet2d"),
    ],
)
def test_weights_that_are_not_cardioseg_checkpoints_are_one_line_through_the_cli(tmp_path, tiny_weights_path, small_phantom, kind, needle):
    from conftest import save_nifti
    from typer.testing import CliRunner

    from cardioseg.cli import app

    bad = _make_bad(kind, tmp_path / f"{kind}.pt", tiny_weights_path)
    frame = save_nifti(tmp_path / "f.nii.gz", small_phantom.image[..., 0], small_phantom.affine)
    result = CliRunner().invoke(app, ["predict", str(frame), "-o", str(tmp_path / "out"), "-w", str(bad), "-q"])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f'cardioseg: error: weights "{bad}"') and needle in lines[0], lines[0]
    assert "weights_only" not in lines[0] and "Traceback" not in result.stderr


def test_recommend_inference_keeps_the_parameters(tmp_path, tiny_weights_path):
    from cardioseg.stages import resolve_crop_px, resolve_tta
    from cardioseg.weights import load_weights, recommend_inference, sha256_file

    before = load_weights(tiny_weights_path)
    out = tmp_path / "shipped.pt"
    digest = recommend_inference(tiny_weights_path, 32, True, "a test", out=out, name="shipped-name")
    after = load_weights(out)
    assert digest == sha256_file(out) != before.file_sha256
    assert after.meta["inference"] == {"crop_px": 32, "tta": True, "chosen_by": "a test"}
    assert after.meta["state_sha256"] == before.meta["state_sha256"] and after.name == "shipped-name"
    assert resolve_crop_px(None, after) == 32 and resolve_tta(None, after) is True
