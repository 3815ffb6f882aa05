"""The Ensemble: several networks segment each frame together (DMR paper: the 5 fold models)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from cardioseg.errors import ConfigError, WeightsError
from cardioseg.inference import (
    ENSEMBLE_MODES,
    Centre,
    PredictOptions,
    Predictor,
    SegmenterBase,
    argmax_labels,
    clean_up_labels,
)
from cardioseg.stages import Localisation, resolve_crop_px, resolve_tta
from cardioseg.weights import LoadedWeights


class Ensemble(SegmenterBase):
    """Segments frames with several networks together (DMR paper: the 5 fold models).

    Every member preprocesses the frame with its own settings (grid, intensity clipping);
    their class probabilities meet on the frame's own voxel grid and are combined by
    ``options.ensemble``:

    - ``"mean"``: the argmax of the members' mean probabilities;
    - ``"vote"``: per voxel the label most members predict; a tie goes to the tied label
      with the highest mean probability (then, as for argmax, to the lowest label value).

    Post-processing runs once, on the combined labels. Each model is loaded once; members
    run one after another per frame, so memory is one network's activations plus two
    (C, X, Y, Z) arrays. N members take about N times as long as one.

    >>> # ensemble = Ensemble([load_weights(p) for p in fold_paths], PredictOptions(ensemble="vote"))
    """

    def __init__(self, weights: Sequence[LoadedWeights], options: PredictOptions | None = None) -> None:
        self.options = options or PredictOptions()
        if self.options.ensemble not in ENSEMBLE_MODES:
            raise ConfigError(f"--ensemble {self.options.ensemble!r}: choose {' or '.join(ENSEMBLE_MODES)}")
        if not weights:
            raise ConfigError("an ensemble needs at least one set of weights")
        first = weights[0]
        for w in weights[1:]:
            if w.label_map.as_dict() != first.label_map.as_dict():
                raise WeightsError(
                    f'weights "{first.name}" ({first.path}) and "{w.name}" ({w.path}) use different label maps '
                    f"({first.label_map.as_dict()} vs {w.label_map.as_dict()}); an ensemble needs one"
                )
        self.label_map = first.label_map
        crop = resolve_crop_px(self.options.crop_px, first)  # the first member's recommendations for all
        self.tta = resolve_tta(self.options.tta, first)
        self.members = [Predictor(w, replace(self.options, postprocess=False, crop_px=crop, tta=self.tta)) for w in weights]
        self.crop_px = crop
        self.device = self.members[0].device
        self.precision = self.members[0].precision
        self.batch_size = self.members[0].batch_size

    def locate(self, frame: np.ndarray, affine: np.ndarray) -> Localisation:
        """Stage 1 with the first member (all members then segment the same crop)."""
        return self.members[0].locate(frame, affine)

    @property
    def weights_report(self) -> dict[str, Any]:
        """``{"name": "a+b+...", "ensemble": mode, "members": [{"name", "sha256"}, ...]}``."""
        members = [m.weights_report for m in self.members]
        return {"name": "+".join(m["name"] for m in members), "ensemble": self.options.ensemble, "members": members}

    def predict_frame(self, frame: np.ndarray, affine: np.ndarray, centre: Centre = None) -> np.ndarray:
        """One stored 3D frame -> uint8 labels of exactly the same shape, in the same voxel order."""
        total = votes = np.zeros(0)  # per label (C, X, Y, Z): summed probabilities, number of votes
        for i, member in enumerate(self.members):
            probs = member.native_probabilities(frame, affine, centre)
            choice = np.argmax(probs, axis=0) == np.arange(len(probs)).reshape(-1, 1, 1, 1)
            if i == 0:
                total, votes = probs, choice.astype(np.int32)
            else:
                total += probs
                votes += choice
        mean = total / len(self.members)
        if self.options.ensemble == "vote":  # only the labels with the most votes compete, on their mean
            mean = np.where(votes == votes.max(axis=0), mean, -1.0)
        return clean_up_labels(argmax_labels(mean), affine, self.label_map, self.options)
