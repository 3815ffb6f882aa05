"""The Predictor: loads a model once, owns device and precision, segments 3D frames and cines."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cardioseg.errors import ConfigError
from cardioseg.geometry import ModelSpace
from cardioseg.postprocess import keep_largest_components
from cardioseg.preprocess import normalize_intensity
from cardioseg.weights import LoadedWeights


def resolve_device(spec: str = "auto") -> str:
    """``auto|cpu|cuda|cuda:N`` -> a torch device string, with a clear error if unavailable."""
    import torch

    spec = spec.strip().lower()
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return "cpu"
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: no CUDA GPU is available to this torch build")
        if ":" in spec:
            try:
                index = int(spec.split(":", 1)[1])
            except ValueError:
                raise ConfigError(f"--device {spec}: expected cuda:N with N a number") from None
            if not 0 <= index < torch.cuda.device_count():
                raise ConfigError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) visible")
        return spec
    raise ConfigError(f"--device {spec!r}: choose auto, cpu, cuda or cuda:N")


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 (AVX-512 BF16 or AMX), where bf16 autocast pays off."""
    import torch

    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # noqa: BLE001 - a missing probe means "unknown": be conservative
            continue
    return False


def resolve_precision(spec: str, device: str) -> str:
    """``auto|bf16|fp32`` -> ``bf16`` or ``fp32`` for this device."""
    spec = spec.lower()
    if spec not in {"auto", "bf16", "fp32"}:
        raise ConfigError(f"--precision {spec!r}: choose auto, bf16 or fp32")
    if spec != "auto":
        return spec
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_supports_bf16() else "fp32"


@dataclass(frozen=True)
class PredictOptions:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | bf16 | fp32
    batch_size: int = 16  # 2D slices per forward pass
    postprocess: bool = True  # keep the largest 3D component per label
    lcc_tolerance_mm: float = 8.0  # in-plane reach when linking pieces across slice gaps


class Predictor:
    """Segments frames with one loaded network; create once, call for every input.

    >>> # predictor = Predictor(load_weights("unet2d-acdc")); mask = predictor.predict(volume)
    """

    def __init__(self, weights: LoadedWeights, options: PredictOptions | None = None) -> None:
        import torch

        self.options = options or PredictOptions()
        if self.options.batch_size < 1:
            raise ConfigError("--batch-size must be at least 1")
        self.weights = weights
        self.device = resolve_device(self.options.device)
        self.precision = resolve_precision(self.options.precision, self.device)
        self.model = weights.build_model().to(self.device).to(memory_format=torch.channels_last)
        self.config = weights.preprocess
        self.label_map = weights.label_map

    def slice_probabilities(self, slices: np.ndarray) -> np.ndarray:
        """(S, H, W) normalised model-space slices -> (S, C, H, W) float32 softmax probabilities."""
        import torch

        out = []
        kind = self.device.split(":")[0]
        with torch.inference_mode(), torch.autocast(kind, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            for i in range(0, len(slices), self.options.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(slices[i : i + self.options.batch_size], dtype=np.float32))
                x = x[:, None].to(self.device).contiguous(memory_format=torch.channels_last)
                out.append(torch.softmax(self.model(x).float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 4) + slices.shape[1:], np.float32)

    def predict_frame(self, frame: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """One stored 3D frame -> uint8 labels of exactly the same shape, in the same voxel order."""
        space = ModelSpace.for_image(affine, frame.shape, self.config.spacing_mm, self.config.fov_px)
        norm, floor = normalize_intensity(frame, self.config.clip_low_pct, self.config.clip_high_pct)
        probs = self.slice_probabilities(space.image_to_model(norm, cval=floor))
        labels = space.probabilities_to_labels(probs)
        if self.options.postprocess:
            spacing = tuple(float(s) for s in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))
            labels = keep_largest_components(
                labels,
                spacing,  # type: ignore[arg-type]
                self.label_map.structures.values(),
                slice_axis=space.orientation.perm[2],
                tolerance_mm=self.options.lcc_tolerance_mm,
            )
        return labels

    def predict(self, data: np.ndarray, affine: np.ndarray, on_frame: Callable[[int], Any] | None = None) -> np.ndarray:
        """A 3D frame (X, Y, Z) or a cine (X, Y, Z, T) -> uint8 labels of the same shape."""
        if data.ndim == 3:
            out = self.predict_frame(data, affine)
            if on_frame:
                on_frame(0)
            return out
        out = np.zeros(data.shape, dtype=np.uint8)
        for t in range(data.shape[3]):
            out[..., t] = self.predict_frame(data[..., t], affine)
            if on_frame:
                on_frame(t)
        return out
