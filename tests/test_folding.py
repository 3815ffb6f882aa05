"""Batch norm folded into the convolution before it: the same network, fewer passes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from cardioseg.models import build_model
from cardioseg.models.folding import fold_batch_norm


@pytest.mark.parametrize("name", ["unet2d", "segnet2d", "usegnet2d", "unet3d"])
def test_folded_networks_compute_the_same_logits(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, base=4, depth=2)
    for m in model.modules():  # trained-looking statistics, not the identity of a fresh norm
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    folded = copy.deepcopy(model)
    n = fold_batch_norm(folded)
    norms = sum(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)) for m in model.modules())
    assert n == norms > 0 and not any(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)) for m in folded.modules())
    x = torch.randn(2, 1, 4, 16, 16) if name == "unet3d" else torch.randn(3, 1, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)


def test_a_model_in_training_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norm(build_model("unet2d", base=4, depth=2).train())


def test_the_predictor_runs_the_folded_network(tiny_weights) -> None:
    from cardioseg.inference import PredictOptions, Predictor

    pred = Predictor(tiny_weights, PredictOptions(device="cpu", precision="fp32"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in pred.model.modules())
    plain = tiny_weights.build_model()
    x = torch.randn(2, 1, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(pred.model(x), plain(x), atol=1e-4, rtol=1e-4)
