"""Self-describing, verified checkpoints: resolve a name or path, check sha256, load, build.

A checkpoint is a ``torch.save``'d dict of plain types and tensors (loadable with
``weights_only=True``)::

    format        "cardioseg-weights/1"
    name          registry name, e.g. "unet2d-acdc"
    architecture  {"name": registry key, "kwargs": constructor arguments}
    input         {"dims": 2 | 3, "context_slices": N, "padding": "replicate"} (InputSpec);
                  absent in older weights, which mean one 2D slice
    preprocess    PreprocessConfig as a dict
    label_map     {"background": 0, "rv": 1, "myo": 2, "lv": 3}
    training      what data and recipe produced it
    validation    metrics measured on held-out data
    license       the license the weights inherit from their training data
    state_sha256  sha256 of the state dict's tensors (checked on every load)
    state_dict    parameter tensors (fp16 for floating point)

Shipped weights are package data beside this module (``cardioseg/weights/*.pt``, read with
:mod:`importlib.resources`, so wheels, user installs and zip apps find them) and listed in
``cardioseg/weights/registry.json`` with the sha256 of the whole file, checked when they are
loaded by name. ``$CARDIOSEG_WEIGHTS_DIR`` points at another folder laid out the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cardioseg.errors import CardiosegError, WeightsError
from cardioseg.labels import LabelMap, label_map_from_dict
from cardioseg.models.inputs import InputSpec
from cardioseg.models.registry import THREE_D
from cardioseg.preprocess import PreprocessConfig

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

FORMAT = "cardioseg-weights/1"
DEFAULT_WEIGHTS = "dmr-unet2d-acdc"


def weights_dir() -> Traversable:
    """Where shipped weights live: ``$CARDIOSEG_WEIGHTS_DIR``, else this package's data."""
    env = os.environ.get("CARDIOSEG_WEIGHTS_DIR")
    if env:
        return Path(env)
    return resources.files(__name__)


def registry() -> dict[str, dict[str, str]]:
    """``{name: {"file": ..., "sha256": ..., "cv": ...}}`` of the shipped weights (``cv``: what
    cross-validation of the model's recipe measured, in one line)."""
    entry = weights_dir() / "registry.json"
    if not entry.is_file():
        return {}
    return json.loads(entry.read_text())


@contextlib.contextmanager
def _local_file(entry: Traversable) -> Iterator[Path]:
    """A shipped weights file as a real path (extracted for the duration if it lies in a zip)."""
    with resources.as_file(entry) as path:
        yield Path(path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_sha256(state_dict: dict[str, Any]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a state dict, in sorted order."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(dtype=_byte_dtype()).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _byte_dtype() -> Any:
    import torch

    return torch.uint8


@dataclass(frozen=True)
class LoadedWeights:
    """A verified checkpoint and what it says about itself."""

    name: str
    path: Path
    file_sha256: str
    architecture: dict[str, Any]
    preprocess: PreprocessConfig
    label_map: LabelMap
    meta: dict[str, Any]
    state_dict: dict[str, Any]
    input_spec: InputSpec = field(default_factory=InputSpec)  # one slice, neighbouring slices, a whole stack

    def build_model(self) -> Any:
        """The network with these weights, in eval mode, fp32, on the CPU."""
        from cardioseg.models import build_model

        try:
            model = build_model(self.architecture["name"], **self.architecture.get("kwargs", {}))
        except (CardiosegError, TypeError) as exc:
            raise WeightsError(f'weights "{self.path}" describe an architecture this cardioseg cannot build ({exc})') from None
        state = {k: v.float() if v.is_floating_point() else v for k, v in self.state_dict.items()}
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            text = str(exc)
            counts = {what: text.count(what) for what in ("size mismatch", "Missing key", "Unexpected key")}
            detail = ", ".join(f"{k.lower()}: {v}" for k, v in counts.items() if v) or text.splitlines()[0]
            raise WeightsError(
                f'weights "{self.path}" do not fit their architecture {self.architecture.get("name")} '
                f"{self.architecture.get('kwargs', {})} ({detail}): a checkpoint of another network?"
            ) from None
        return model.eval()


def resolve(spec: str | os.PathLike[str] | None) -> tuple[Traversable, str | None]:
    """A registry name or a file path -> (the file, expected file sha256 or None)."""
    spec = DEFAULT_WEIGHTS if spec is None else spec
    reg = registry()
    if isinstance(spec, str) and spec in reg:
        entry = reg[spec]
        return weights_dir() / entry["file"], entry["sha256"]
    path = Path(spec)
    if path.is_file():
        return path, None
    names = ", ".join(sorted(reg)) or "none installed"
    raise WeightsError(f'Weights "{spec}" not found: not a file and not a registered name ({names})')


def load_weights(spec: str | os.PathLike[str] | None = None) -> LoadedWeights:
    """Resolve, verify and load a checkpoint (``weights_only=True``)."""
    entry, expected = resolve(spec)
    if not entry.is_file():
        raise WeightsError(f'Weights file missing: "{entry}" (reinstall cardioseg or pass --weights PATH)')
    with _local_file(entry) as path:
        return _load_verified(path, expected)


def _load_failure(path: Path, exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in words and on one line (PyTorch's own
    messages span many lines and suggest unpickling untrusted code)."""
    import zipfile

    text = str(exc)
    with open(path, "rb") as f:
        head = f.read(2)
    is_zip = zipfile.is_zipfile(path)
    if head == b"PK" and ("central directory" in text or not is_zip):
        return "the file is truncated or damaged (its zip archive is incomplete)"
    if head[:1] != b"\x80" and not is_zip:
        return "it is not a PyTorch checkpoint (not a zip archive; a text file, or truncated?)"
    if "Weights only load failed" in text:
        return "it holds Python objects other than tensors, which cardioseg refuses to unpickle (not a cardioseg checkpoint)"
    if not is_zip:
        return "it is an old-style pickle, not a cardioseg checkpoint"
    if "PytorchStreamReader" in text:
        return "the file is damaged (its zip archive cannot be read)"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first[:200]}"


def _load_verified(path: Path, expected: str | None) -> LoadedWeights:
    import torch

    digest = sha256_file(path)
    if expected is not None and digest != expected:
        raise WeightsError(f'Weights "{path}" fail their checksum (sha256 {digest[:12]}…, expected {expected[:12]}…)')
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means unusable weights
        raise WeightsError(f'weights "{path}" cannot be loaded: {_load_failure(path, exc)}') from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        what = f"a dict with keys {', '.join(sorted(map(str, ckpt))[:4])}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise WeightsError(f'weights "{path}" are not a {FORMAT} checkpoint (the file holds {what}; export with cardioseg train)')
    if state_sha256(ckpt["state_dict"]) != ckpt.get("state_sha256"):
        raise WeightsError(f'"{path}": parameters do not match their recorded sha256 (corrupted?)')
    meta = {k: v for k, v in ckpt.items() if k not in {"state_dict"}}
    try:
        spec = InputSpec.from_dict(ckpt.get("input"))
    except (CardiosegError, TypeError, ValueError) as exc:
        raise WeightsError(f'"{path}": unusable input description {ckpt.get("input")!r} ({exc})') from None
    arch = ckpt["architecture"]
    channels = arch.get("kwargs", {}).get("in_channels", 1)
    if (spec.dims == 3) != (arch.get("name") in THREE_D) or channels != spec.in_channels:
        raise WeightsError(f'"{path}": input {spec.to_dict()} does not fit architecture {arch}')
    return LoadedWeights(
        name=str(ckpt.get("name", path.stem)),
        path=path,
        file_sha256=digest,
        architecture=ckpt["architecture"],
        preprocess=PreprocessConfig.from_dict(ckpt["preprocess"]),
        label_map=label_map_from_dict(ckpt["label_map"], name=ckpt.get("label_map_name", "acdc")),
        meta=meta,
        state_dict=ckpt["state_dict"],
        input_spec=spec,
    )


def export_weights(
    model: Any,
    path: Path,
    *,
    name: str,
    architecture: dict[str, Any],
    preprocess: PreprocessConfig,
    label_map: LabelMap,
    training: dict[str, Any],
    validation: dict[str, Any],
    license: str,
    input_spec: InputSpec | None = None,
    inference: dict[str, Any] | None = None,
) -> str:
    """Save a model as a self-describing fp16 checkpoint; returns the file's sha256.

    ``input_spec`` (default: one 2D slice) is recorded so that the predictor builds the inputs the
    network was trained on; ``inference``, when given, is its recommended inference (the
    ``meta["inference"]`` of ``recommend_inference``)."""
    import torch

    from cardioseg.io import atomic_path

    state = {
        k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu())
        for k, v in model.state_dict().items()
    }
    ckpt = {
        "format": FORMAT,
        "name": name,
        "architecture": architecture,
        "input": (input_spec or InputSpec()).to_dict(),
        "preprocess": preprocess.to_dict(),
        "label_map": label_map.as_dict(),
        "label_map_name": label_map.name,
        "training": training,
        "validation": validation,
        "license": license,
        "state_sha256": state_sha256(state),
        "state_dict": state,
    }
    if inference:
        ckpt["inference"] = inference
    with atomic_path(Path(path)) as tmp:
        torch.save(ckpt, tmp)
    return sha256_file(Path(path))


def recommend_inference(
    path: Path, crop_px: int, tta: bool, chosen_by: str, out: Path | None = None, name: str | None = None,
    confidence_min: float | None = None,
    confidence_min_by_structure: dict[str, float] | None = None,
) -> str:
    """Record in a checkpoint how it should run by default (``meta["inference"]``: the two-stage
    crop and test-time rotations ``cardioseg predict`` then uses unless told otherwise) and what
    chose that; ``name``: the registry name it is shipped under; ``confidence_min``: QC's
    ``low_confidence`` limit for this network (None: ``QcLimits``'), ``confidence_min_by_structure``
    a limit of its own for any of "rv", "myo", "lv" (None: none). The parameters are unchanged
    (same ``state_sha256``). Writes ``out`` (default: ``path``, replaced atomically) and returns
    its sha256, for ``registry.json``."""
    import torch

    from cardioseg.io import atomic_path

    _load_verified(Path(path), None)  # a cardioseg checkpoint, intact
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["inference"] = {"crop_px": int(crop_px), "tta": bool(tta), "chosen_by": str(chosen_by)}
    if confidence_min is not None:
        if not 0 < confidence_min < 1:
            raise ValueError(f"confidence_min {confidence_min!r} is not in (0, 1)")
        ckpt["inference"]["confidence_min"] = float(confidence_min)
    if confidence_min_by_structure:
        if not all(k in ("rv", "myo", "lv") and 0 < v < 1 for k, v in confidence_min_by_structure.items()):
            raise ValueError(f"confidence_min_by_structure {confidence_min_by_structure!r}: numbers in (0, 1) for rv, myo, lv")
        ckpt["inference"]["confidence_min_by_structure"] = {k: float(v) for k, v in confidence_min_by_structure.items()}
    if name is not None:
        ckpt["name"] = name
    target = Path(out) if out is not None else Path(path)
    with atomic_path(target) as tmp:
        torch.save(ckpt, tmp)
    return sha256_file(target)


def _inference_text(weights: LoadedWeights) -> str:
    """How ``cardioseg predict`` runs these weights unless told otherwise (``meta["inference"]``,
    read by the resolvers ``predict`` itself uses)."""
    from cardioseg.stages import (
        resolve_confidence_min,
        resolve_confidence_min_by_structure,
        resolve_crop_px,
        resolve_tta,
    )

    crop = resolve_crop_px(None, weights)
    parts = [f"two stages, {crop}-px crop" if crop else "one stage, whole field",
             "test-time rotations" if resolve_tta(None, weights) else "no rotations",
             f"QC low_confidence below {resolve_confidence_min(weights):g}"]  # fmt: skip
    own = resolve_confidence_min_by_structure(weights)
    if own:  # each structure its own limit; the one limit for those without
        rest = "" if set(own) >= {"rv", "myo", "lv"} else f", else {resolve_confidence_min(weights):g}"
        parts[-1] = "QC low_confidence below " + ", ".join(f"{k} {v:g}" for k, v in own.items()) + rest
    return ", ".join(parts)


def describe_registered() -> list[dict[str, str]]:
    """One row per registered model, for ``cardioseg weights``: name, file, sha256, training
    data, license and cross-validation figures (read from each checkpoint and the registry)."""
    rows = []
    for name, entry in registry().items():
        row = {"name": name + (" (default)" if name == DEFAULT_WEIGHTS else ""), "file": entry["file"],
               "sha256": entry["sha256"], "cv": entry.get("cv", "not cross-validated")}  # fmt: skip
        try:
            weights = load_weights(name)
            meta, defaults = weights.meta, _inference_text(weights)
        except CardiosegError as exc:
            row.update(training=f"cannot be loaded: {exc}", license="")
        else:
            found = meta.get("training")
            training: dict[str, Any] = found if isinstance(found, dict) else {}
            data = str(training.get("data", "not recorded"))
            if isinstance(training.get("train_patients"), list):
                data += f"; trained on {len(training['train_patients'])} of them"
            row.update(training=data, license=str(meta.get("license", "not recorded")), defaults=defaults)
        rows.append(row)
    return rows
