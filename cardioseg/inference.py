"""The Predictor: loads a model once, owns device and precision, segments 3D frames and cines.

An Ensemble (:mod:`cardioseg.ensemble`) does the same with several models (e.g. the 5 fold models of the DMR paper).

The network's inputs follow its weights' ``InputSpec`` (``cardioseg.models.inputs``): one
slice per sample; the neighbouring slices of the same frame as channels (stacked per frame
before frames are pooled, so neighbours never cross frames); or whole frames for a 3D network
(frames with the same number of slices share a forward pass).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, TypeAlias

import numpy as np

from cardioseg.errors import ConfigError
from cardioseg.geometry import ModelSpace, find_orientation
from cardioseg.labels import LabelMap
from cardioseg.models.folding import fold_batch_norm
from cardioseg.models.inputs import InputSpec, context_indices
from cardioseg.postprocess import LCC_TOLERANCE_MM, anatomical_clean_up, keep_largest_components
from cardioseg.preprocess import PreprocessConfig, image_to_model
from cardioseg.qc import QcLimits
from cardioseg.runtime import (
    CLEAN_UPS,
    CPU_BATCH_SIZE,
    DEFAULT_CLEAN_UP,
    DEFAULT_CROP_PX,
    resolve_batch_size,
    resolve_device,
    resolve_precision,
)
from cardioseg.stages import (
    LOCATE_MIN_HEART_MM2,
    Localisation,
    crop_centre,
    middle_slices,
    resolve_confidence_min,
    resolve_confidence_min_by_structure,
    resolve_crop_px,
    resolve_tta,
    soft_confidence_by_label,
    tta_agreement,
)
from cardioseg.weights import LoadedWeights


@dataclass(frozen=True)
class PredictOptions:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | bf16 | fp32
    batch_size: int | None = None  # 2D slices per forward pass; None: CPU_BATCH_SIZE or GPU_BATCH_SIZE
    postprocess: bool = True  # keep the largest 3D component per label
    lcc_tolerance_mm: float = LCC_TOLERANCE_MM  # in-plane reach linking pieces in adjacent slices (0: 3D connectivity)
    ensemble: str = "vote"  # vote | mean: how an Ensemble combines its members (see Ensemble)
    compile: bool = False  # torch.compile the network (pays off on a GPU for long batches)
    batch_studies: bool | None = None  # batch mode: pool slices of several studies; None: on a GPU only
    crop_px: int | None = DEFAULT_CROP_PX  # > 0: two stages, the heart located on a coarse grid, then a crop of this
    # size around it; 0: the whole field in one stage; None: what the weights recommend (their "inference" entry)
    clean_up: str = DEFAULT_CLEAN_UP  # with postprocess: largest (3D component per label) | anatomy (see postprocess)
    tta: bool | None = None  # test-time augmentation: mean probabilities over 0/90/180/270 deg in-plane rotations
    # (4x the network's work); None: what the weights recommend
    # which frames of a cine get the rotations: "key" (ED and ES, found on a pass without them) or "all"
    tta_frames: str = "key"


ENSEMBLE_MODES = ("vote", "mean")

CROP_EDGE_PX = 2  # stage 2's crop is cut through the heart when its outer ring of this width ...
CROP_EDGE_MIN_PX = 10  # ... holds at least this many foreground pixels (all slices together)


def cut_by_crop(labels: np.ndarray, ring_px: int = CROP_EDGE_PX, min_px: int = CROP_EDGE_MIN_PX) -> bool:
    """True when (S, H, W) model-space labels put at least ``min_px`` foreground pixels in the
    outer ``ring_px`` of the grid: the heart (or what the network took for it) runs out of the
    crop, and the frame is segmented again on the weights' whole grid around the same centre.

    >>> labels = np.zeros((2, 16, 16), np.uint8); labels[:, 4:12, 4:12] = 1
    >>> cut_by_crop(labels), cut_by_crop(np.pad(labels[:, 4:, 4:], ((0, 0), (0, 4), (0, 4)), constant_values=0))
    (False, True)
    """
    fg = labels > 0
    inner = int(fg[:, ring_px:-ring_px, ring_px:-ring_px].sum())
    return int(fg.sum()) - inner >= min_px


def holds_heart(labels: np.ndarray, label_map: LabelMap, min_px: int = CROP_EDGE_MIN_PX) -> bool:
    """True when (S, H, W) model-space labels hold at least ``min_px`` pixels of LV cavity or
    myocardium (all slices together). A crop without them missed the heart: stage 1 took
    something else for it, and the frame is segmented again on the full field.

    >>> from cardioseg.labels import ACDC
    >>> labels = np.zeros((2, 16, 16), np.uint8); labels[:, 4:8, 4:8] = ACDC.rv
    >>> holds_heart(labels, ACDC), holds_heart(np.where(labels, ACDC.myo, 0).astype(np.uint8), ACDC)
    (False, True)
    """
    return int(np.count_nonzero(labels == label_map.lv)) + int(np.count_nonzero(labels == label_map.myo)) >= min_px


Frame = tuple[np.ndarray, np.ndarray]
"""One stored 3D frame and its affine."""
Centre: TypeAlias = "np.ndarray | None"
"""A world point (x, y, z, mm) a crop is centred on, or None for the full field."""


def frames_of(data: np.ndarray, affine: np.ndarray) -> list[Frame]:
    """The 3D frames of a frame (X, Y, Z) or a cine (X, Y, Z, T), each with the affine."""
    if data.ndim == 3:
        return [(data, affine)]
    return [(data[..., t], affine) for t in range(data.shape[3])]


def group_frames(slice_counts: Sequence[int], max_slices: int) -> list[list[int]]:
    """Consecutive frame indices in groups of at most ``max_slices`` slices in all (a frame
    with more slices than that forms a group alone)."""
    groups: list[list[int]] = []
    count = 0
    for i, n in enumerate(slice_counts):
        if groups and count + n <= max_slices:
            groups[-1].append(i)
            count += n
        else:
            groups.append([i])
            count = n
    return groups


def model_batches(frames: Sequence[np.ndarray], spec: InputSpec, batch_size: int) -> Iterator[np.ndarray]:
    """The network inputs for the (S_i, H, W) model-space slices of one or more frames, in
    forward passes of about ``batch_size`` slices; their outputs, in order, are the frames'
    slices in order.

    - one 2D slice: (b, 1, H, W) runs of the frames' concatenated slices;
    - ``context_slices`` N: (b, N, H, W) neighbour stacks, each built within its own frame
      (edge slices replicated), gathered per pass (never all materialised at once);
    - 3D: (f, 1, S, H, W) runs of consecutive frames of the same shape, f = batch_size // S
      (at least 1).
    """
    if not frames:
        return
    if spec.dims == 3:
        j = 0
        while j < len(frames):
            per_pass, k = max(1, batch_size // max(len(frames[j]), 1)), j + 1
            while k < len(frames) and k - j < per_pass and frames[k].shape == frames[j].shape:
                k += 1
            yield np.stack(frames[j:k])[:, None]
            j = k
        return
    slices = np.concatenate(frames) if len(frames) > 1 else frames[0]
    if spec.context_slices == 1:
        for i in range(0, len(slices), batch_size):
            yield slices[i : i + batch_size, None]
        return
    starts = np.cumsum([0] + [len(f) for f in frames[:-1]])
    rows = np.concatenate([s + context_indices(len(f), spec.context_slices) for s, f in zip(starts, frames)])
    for i in range(0, len(rows), batch_size):
        yield slices[rows[i : i + batch_size]]


def forward_probabilities(
    model: Any, batches: Iterable[np.ndarray], device: str, bf16: bool, n_classes: int, plane: tuple[int, ...]
) -> np.ndarray:
    """Network inputs (``model_batches``) -> (S, C, H, W) float32 softmax probabilities of all
    their slices in order (a 3D network's (f, C, S, H, W) outputs are unrolled frame by frame).

    On a GPU the input goes through pinned memory with asynchronous copies, and the batches'
    outputs stay on the device until one copy back at the end, so the host never waits for a
    batch in between. ``bf16``: compute in bf16, under autocast, or, for a network whose weights
    are already bf16 (the fused CPU network of :mod:`cardioseg.models.fusion`), on bf16 inputs.
    ``plane`` (H, W) shapes the empty result of no batches.
    """
    import torch

    cuda = device.startswith("cuda")
    out = []
    kind = device.split(":")[0]
    from cardioseg.models.fusion import is_bf16_network

    native = bf16 and is_bf16_network(model)  # the fused CPU network: bf16 inputs, no autocast
    with torch.inference_mode(), torch.autocast(kind, dtype=torch.bfloat16, enabled=bf16 and not native):
        for batch in batches:
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            if cuda:
                x = x.pin_memory().to(device, non_blocking=True)
            if native:
                x = x.to(torch.bfloat16)
            if x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            probs = torch.softmax(model(x).float(), dim=1)
            out.append(probs.transpose(1, 2).flatten(0, 1) if probs.ndim == 5 else probs)
        if not out:
            return np.zeros((0, n_classes, *plane), np.float32)
        return torch.cat(out).cpu().numpy()


def check_options(options: PredictOptions) -> None:
    """One-line errors for options no predictor can follow."""
    if options.crop_px is not None and (options.crop_px < 0 or options.crop_px % 16):
        raise ConfigError(f"--crop-px must be 0 (the full field) or a positive multiple of 16, got {options.crop_px}")
    if options.clean_up not in CLEAN_UPS:
        raise ConfigError(f"--clean-up {options.clean_up!r}: choose one of {', '.join(CLEAN_UPS)}")
    if options.tta_frames not in ("key", "all"):
        raise ConfigError(f"--tta-frames {options.tta_frames!r}: choose key (ED and ES) or all")


class SegmenterBase:
    """``predict`` for 3D frames and 4D cines on top of a subclass's ``predict_frames``.

    ``batch_size`` is the number of 2D slices a forward pass takes; frames are pooled up to
    that many slices (on a GPU: many frames of a cine, or of several studies, per pass).
    """

    batch_size: int = CPU_BATCH_SIZE
    options: PredictOptions
    label_map: LabelMap
    crop_px: int = 0  # resolved: 0 (one stage, the whole field) or the crop of stage 2
    tta: bool = False  # resolved: test-time rotations on or off
    confidence_min: float = QcLimits().confidence_min  # resolved: QC's low_confidence limit for these weights
    confidence_min_by_structure: Mapping[str, float] = MappingProxyType({})  # resolved: its per-structure limits
    _agreement: list[float] | None = None  # per frame, while predict() collects it (Predictor only)
    _confidence: list[dict[int, float]] | None = None  # per frame, one pass's confidence of each structure (by label), while predict() collects it (Predictor only)
    _crops: list[int] | None = None  # per frame, the grid stage 2 used (0: the full field), while predict() collects it

    def predict_frame(self, frame: np.ndarray, affine: np.ndarray, centre: Centre = None) -> np.ndarray:
        raise NotImplementedError

    def locate(self, frame: np.ndarray, affine: np.ndarray) -> Localisation:
        raise NotImplementedError

    def localise(self, data: np.ndarray, affine: np.ndarray) -> Localisation | None:
        """Stage 1 for a frame or a cine (its first frame: the heart does not move between
        frames), or None when the options ask for no crop."""
        if self.crop_px <= 0:
            return None
        return self.locate(data if data.ndim == 3 else data[..., 0], affine)

    def predict_frames(
        self, frames: Sequence[Frame], on_frame: Callable[[int], Any] | None = None, centres: Sequence[Centre] | None = None
    ) -> list[np.ndarray]:
        """Several stored 3D frames -> their uint8 labels (``on_frame(i)`` after frame i);
        ``centres``: per frame, the world point a crop is centred on (None: the full field)."""
        out = []
        for i, (frame, affine) in enumerate(frames):
            out.append(self.predict_frame(frame, affine, centres[i] if centres is not None else None))
            if on_frame:
                on_frame(i)
        return out

    def predict_many(
        self, frames: Sequence[Frame], on_frame: Callable[[int], Any] | None = None, centres: Sequence[Centre] | None = None
    ) -> list[np.ndarray]:
        """``predict_frames`` over groups of about ``batch_size`` slices (memory stays bounded)."""
        out: list[np.ndarray] = []
        for group in group_frames([frame.shape[2] for frame, _ in frames], self.batch_size):
            start = len(out)
            report = (lambda i, s=start: on_frame(s + i)) if on_frame else None
            part = [centres[i] for i in group] if centres is not None else None
            out.extend(self.predict_frames([frames[i] for i in group], report, part))
        return out

    def predict(
        self, data: np.ndarray, affine: np.ndarray, on_frame: Callable[[int], Any] | None = None,
        localisation: Localisation | None = None, stats: dict[str, Any] | None = None,
    ) -> np.ndarray:
        """A 3D frame (X, Y, Z) or a cine (X, Y, Z, T) -> uint8 labels of the same shape.

        With ``options.crop_px``, every frame is segmented on a crop centred on
        ``localisation`` (default: :meth:`localise` of this input); without a heart found, on
        the full field. ``stats``: with test-time rotations, ``stats["tta_agreement"]`` gets
        one number per frame (see :func:`tta_agreement`); ``stats["confidence"]`` gets one
        number per frame from the unrotated pass (:func:`soft_confidence`) and
        ``stats["confidence_by_structure"]`` that of each structure (``{"rv": .., ...}``); ``stats["crop_px"]`` gets the grid
        each frame was segmented on (the crop, the whole grid where the crop cut the heart:
        :func:`cut_by_crop`; 0 for the full field)."""
        frames = frames_of(data, affine)
        if localisation is None:
            localisation = self.localise(data, affine)
        centre = crop_centre(localisation)
        with self.collecting(stats):
            masks = self.predict_many(frames, on_frame, [centre] * len(frames))
        if data.ndim == 3:
            return masks[0]
        return np.stack(masks, axis=-1)

    @contextmanager
    def collecting(self, stats: dict[str, Any] | None) -> Iterator[None]:
        """Within it, the frames segmented add their per-frame statistics to ``stats`` (None:
        nothing collected): ``crop_px``, ``confidence``, ``confidence_by_structure`` and, with test-time rotations,
        ``tta_agreement`` (see :meth:`predict`), in the order of the frames."""
        if stats is None:
            yield
            return
        self._crops, self._confidence = [], []
        self._agreement = [] if self.tta else None
        try:
            yield
        finally:
            stats.setdefault("crop_px", []).extend(self._crops or [])
            by_label = self._confidence or []
            names = {v: k for k, v in self.label_map.structures.items()}
            stats.setdefault("confidence", []).extend(min(c.values(), default=1.0) for c in by_label)
            stats.setdefault("confidence_by_structure", []).extend(
                {names.get(label, str(label)): value for label, value in sorted(c.items())} for c in by_label)  # fmt: skip
            if self._agreement is not None:
                stats.setdefault("tta_agreement", []).extend(self._agreement)
            self._crops = self._confidence = self._agreement = None


def argmax_labels(probs: np.ndarray) -> np.ndarray:
    """(C, X, Y, Z) class scores -> (X, Y, Z) uint8 labels (ties: the lowest label)."""
    return np.ascontiguousarray(np.argmax(probs, axis=0).astype(np.uint8))


def clean_up_labels(labels: np.ndarray, affine: np.ndarray, label_map: LabelMap, options: PredictOptions) -> np.ndarray:
    """``options.clean_up`` (when ``options.postprocess``) on stored-space labels."""
    if not options.postprocess:
        return labels
    spacing = tuple(float(s) for s in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))
    if options.clean_up == "anatomy":
        return anatomical_clean_up(
            labels, spacing, label_map.lv, label_map.myo, label_map.rv,  # type: ignore[arg-type]
            slice_axis=find_orientation(np.asarray(affine)).perm[2], tolerance_mm=options.lcc_tolerance_mm,
        )  # fmt: skip
    return keep_largest_components(
        labels,
        spacing,  # type: ignore[arg-type]
        label_map.structures.values(),
        slice_axis=find_orientation(np.asarray(affine)).perm[2],
        tolerance_mm=options.lcc_tolerance_mm,
    )


class Predictor(SegmenterBase):
    """Segments frames with one loaded network; create once, call for every input.

    >>> # predictor = Predictor(load_weights("unet2d-acdc")); mask = predictor.predict(volume)
    """

    def __init__(self, weights: LoadedWeights, options: PredictOptions | None = None) -> None:
        import torch

        self.options = options or PredictOptions()
        self.device = resolve_device(self.options.device)
        self.batch_size = resolve_batch_size(self.options.batch_size, self.device)
        self.precision = resolve_precision(self.options.precision, self.device)
        self.weights = weights
        self.input_spec = weights.input_spec
        self.model = weights.build_model()
        fold_batch_norm(self.model)  # the same network with one pass less over every activation
        self.model = self.model.to(self.device)
        if self.input_spec.dims == 2:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.device == "cpu" and self.precision == "bf16" and self.input_spec.dims == 2 and not self.options.compile:
            from cardioseg.models.fusion import bf16_cpu_network

            # bf16 weights, each convolution and its ReLU one oneDNN call; else autocast as before
            fused = bf16_cpu_network(self.model, torch.zeros(1, self.input_spec.in_channels, 64, 64))
            self.model = fused if fused is not None else self.model
        if self.options.compile:
            self.model = torch.compile(self.model)
        self.config = weights.preprocess
        self.label_map = weights.label_map
        check_options(self.options)
        self.crop_px = resolve_crop_px(self.options.crop_px, weights)
        self.tta = resolve_tta(self.options.tta, weights)
        self.confidence_min = resolve_confidence_min(weights)
        self.confidence_min_by_structure = resolve_confidence_min_by_structure(weights)

    def locate(self, frame: np.ndarray, affine: np.ndarray) -> Localisation:
        """Stage 1: the network on the middle half of the slices (:func:`middle_slices`) of one
        stored 3D frame, on a grid of twice the pixel size (same field of view), one pass without
        test-time rotations; the centroid of the largest 3D LV cavity + myocardium component.
        When that finds no heart, every slice on the model's own grid is tried (the full field)."""
        coarse = replace(self.config, spacing_mm=2 * self.config.spacing_mm, fov_px=max(16, self.config.fov_px // 2))
        found = self._locate_on(frame, affine, coarse, middle=True)
        return found if found.found else self._locate_on(frame, affine, self.config)

    def _locate_on(self, frame: np.ndarray, affine: np.ndarray, grid: PreprocessConfig, middle: bool = False) -> Localisation:
        from scipy import ndimage

        space, slices = image_to_model(frame, affine, grid)
        first, stop = middle_slices(len(slices)) if middle else (0, len(slices))
        labels = np.zeros((len(slices), *slices.shape[1:]), dtype=np.int64)
        # one pass without the test-time rotations: only a centroid is wanted
        labels[first:stop] = np.argmax(self._forward([slices[first:stop]], slices.shape[1:]), axis=1)  # (S, fov, fov)
        heart = np.isin(labels, (self.label_map.lv, self.label_map.myo))
        components, n = ndimage.label(heart, structure=np.ones((3, 3, 3), dtype=bool))
        if n == 0:
            return Localisation(None, 0.0)
        sizes = np.bincount(components.ravel())[1:]
        keep = np.argwhere(components == int(np.argmax(sizes)) + 1)
        area = float(len(keep)) * grid.spacing_mm**2
        if area < LOCATE_MIN_HEART_MM2:
            return Localisation(None, area)
        centre = space.model_to_world(keep.mean(axis=0)[None], affine)[0]
        return Localisation(tuple(float(c) for c in centre), area)  # type: ignore[arg-type]

    def slice_probabilities(self, slices: np.ndarray) -> np.ndarray:
        """(S, H, W) normalised model-space slices -> (S, C, H, W) float32 softmax probabilities.

        For a network with neighbouring slices as channels, or a 3D network, ``slices`` are
        one frame's, in order (a 1-slice 2D network takes any slices). Forward passes of
        ``batch_size`` slices; see ``forward_probabilities`` for the GPU path.
        """
        return self._probabilities([slices], slices.shape[1:])

    def _probabilities(self, frames: Sequence[np.ndarray], plane: tuple[int, ...]) -> np.ndarray:
        """The frames' (S_i, H, W) slices -> their (sum S_i, C, H, W) probabilities, in order;
        with ``options.tta`` the mean over in-plane rotations by 0, 90, 180 and 270 degrees, each
        rotated back. (Rotations, not mirror flips: training rotates by any angle but never
        mirrors, and a mirrored heart, its RV on the wrong side, is not one the network knows.)"""
        probs = self._forward(frames, plane)
        if self._confidence is not None:
            self._confidence += soft_confidence_by_label(probs, [len(f) for f in frames])
        if not self.tta:
            return probs
        votes = [probs.argmax(axis=1).astype(np.uint8)]
        for k in (1, 2, 3):
            turned = [np.ascontiguousarray(np.rot90(f, k, axes=(-2, -1))) for f in frames]
            back = np.rot90(self._forward(turned, plane[::-1] if k % 2 else plane), -k, axes=(-2, -1))
            votes.append(back.argmax(axis=1).astype(np.uint8))
            probs += back
        probs /= 4.0
        if self._agreement is not None:
            self._agreement += tta_agreement(votes, probs.argmax(axis=1), [len(f) for f in frames])
        return probs

    def _forward(self, frames: Sequence[np.ndarray], plane: tuple[int, ...]) -> np.ndarray:
        batches = model_batches(frames, self.input_spec, self.batch_size)
        return forward_probabilities(
            self.model, batches, self.device, self.precision == "bf16", self.label_map.num_classes, plane
        )

    @property
    def weights_report(self) -> dict[str, Any]:
        """What the study report says about the weights: ``{"name", "sha256"}``."""
        return {"name": self.weights.name, "sha256": self.weights.file_sha256}

    def to_model(
        self, frame: np.ndarray, affine: np.ndarray, centre: Centre = None, crop_px: int | None = None
    ) -> tuple[ModelSpace, np.ndarray]:
        """One stored 3D frame -> (its ModelSpace, (S, fov, fov) normalised model-space slices);
        with ``centre`` and ``options.crop_px`` (or ``crop_px``), a grid of that size centred there."""
        crop = self.crop_px if crop_px is None else crop_px
        if centre is None or crop <= 0:
            return image_to_model(frame, affine, self.config)
        return image_to_model(frame, affine, replace(self.config, fov_px=crop), centre)

    def model_probabilities(
        self, frame: np.ndarray, affine: np.ndarray, centre: Centre = None
    ) -> tuple[ModelSpace, np.ndarray]:
        """One stored 3D frame -> (its ModelSpace, (S, C, fov, fov) float32 model-space probabilities),
        on the whole grid around ``centre`` where the crop cuts the heart (:func:`cut_by_crop`)."""
        space, slices = self.to_model(frame, affine, centre)
        probs = self.slice_probabilities(slices)
        return self._grow_if_cut(frame, affine, centre, space, probs, self._collected() - 1)

    def _collected(self) -> int:
        """How many frames the per-frame statistics being collected hold (0 when none are)."""
        for collected in (self._confidence, self._agreement):
            if collected is not None:
                return len(collected)
        return 0

    def _grow_if_cut(
        self, frame: np.ndarray, affine: np.ndarray, centre: Centre, space: ModelSpace, probs: np.ndarray, index: int
    ) -> tuple[ModelSpace, np.ndarray]:
        """Stage 2's (space, probabilities) of a frame; when its crop cut the heart, those of the
        weights' whole grid around the same centre; when the crop holds no heart at all (stage 1
        took something else for it), those of the full field, as without a crop. The confidence
        and rotations' agreement of the frame segmented again replace entry ``index`` of those
        being collected; records the grid used (0: the full field) while ``predict`` collects."""
        crop = self.crop_px if centre is not None and self.crop_px > 0 else 0
        labels = probs.argmax(axis=1) if crop > 0 else None
        again = None
        if labels is not None and crop < self.config.fov_px and cut_by_crop(labels):
            again = self.config.fov_px
        elif labels is not None and not holds_heart(labels, self.label_map):
            again = 0
        if again is not None:
            crop = again
            saved: tuple[list[Any] | None, list[Any] | None] = (self._confidence, self._agreement)
            self._confidence, self._agreement = ([] if s is not None else None for s in saved)
            try:
                space, slices = self.to_model(frame, affine, centre, crop_px=crop)
                probs = self._probabilities([slices], slices.shape[1:])
            finally:
                grown: tuple[list[Any] | None, list[Any] | None] = (self._confidence, self._agreement)
                self._confidence, self._agreement = saved
            for kept, regrown in zip(saved, grown):
                if kept is not None and regrown and 0 <= index < len(kept):
                    kept[index] = regrown[0]
        if self._crops is not None:
            self._crops.append(crop)
        return space, probs

    def native_probabilities(self, frame: np.ndarray, affine: np.ndarray, centre: Centre = None) -> np.ndarray:
        """One stored 3D frame (X, Y, Z) -> (C, X, Y, Z) float32 class probabilities on its voxel grid."""
        space, probs = self.model_probabilities(frame, affine, centre)
        return space.probabilities_to_native(probs)

    def predict_frame(self, frame: np.ndarray, affine: np.ndarray, centre: Centre = None) -> np.ndarray:
        """One stored 3D frame -> uint8 labels of exactly the same shape, in the same voxel order.

        The argmax of ``native_probabilities`` (ties: the lowest label), computed by
        ``ModelSpace.probabilities_to_labels`` only where it can differ from background.
        """
        space, probs = self.model_probabilities(frame, affine, centre)
        return clean_up_labels(space.probabilities_to_labels(probs), affine, self.label_map, self.options)

    def predict_frames(
        self, frames: Sequence[Frame], on_frame: Callable[[int], Any] | None = None, centres: Sequence[Centre] | None = None
    ) -> list[np.ndarray]:
        """Several stored 3D frames -> their uint8 labels, the slices of all of them in shared
        forward passes (the labels are those ``predict_frame`` gives each frame). Neighbour
        stacks are built within each frame; a 3D network pools frames of the same shape; frames
        of different crops go to separate passes only if their grids differ in size."""
        if centres is None:
            centres = [None] * len(frames)
        prepared = [self.to_model(frame, affine, c) for (frame, affine), c in zip(frames, centres)]
        if len({slices.shape[1:] for _, slices in prepared}) > 1:  # full field and crops mixed
            return super().predict_frames(frames, on_frame, centres)
        if not prepared:
            return []
        first = self._collected()
        probs = self._probabilities([slices for _, slices in prepared], prepared[0][1].shape[1:])
        out = []
        start = 0
        for i, ((space, slices), (frame, affine)) in enumerate(zip(prepared, frames)):
            part = probs[start : start + len(slices)]
            start += len(slices)
            space, part = self._grow_if_cut(frame, affine, centres[i], space, part, first + i)
            out.append(clean_up_labels(space.probabilities_to_labels(part), affine, self.label_map, self.options))
            if on_frame:
                on_frame(i)
        return out
