"""Batch norm folded into the convolution before it: the same network, fewer passes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from cardioseg.models import build_model
from cardioseg.models.folding import fold_batch_norm
from cardioseg.runtime import cpu_supports_bf16


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


# --- bf16 CPU network: convolution + ReLU as one oneDNN call (cardioseg.models.fusion) ---

needs_bf16 = pytest.mark.skipif(not cpu_supports_bf16(), reason="CPU has no native bf16")


@pytest.mark.parametrize("name", ["unet2d", "segnet2d", "usegnet2d"])
def test_every_convolution_before_a_relu_is_fused(name: str) -> None:
    from cardioseg.models.fusion import ConvReLU2d, fuse_conv_relu

    model = build_model(name, base=4, depth=2).eval()
    fold_batch_norm(model)
    relus = sum(isinstance(m, nn.ReLU) for m in model.modules())
    n = fuse_conv_relu(model)
    assert n == relus > 0
    assert sum(isinstance(m, ConvReLU2d) for m in model.modules()) == n
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())


def test_a_convolution_without_relu_is_left_alone() -> None:
    from cardioseg.models.fusion import fuse_conv_relu

    seq = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Identity(), nn.MaxPool2d(2), nn.ReLU())
    assert fuse_conv_relu(seq) == 0 and type(seq[0]) is nn.Conv2d and type(seq[3]) is nn.ReLU


@needs_bf16
@pytest.mark.parametrize("name", ["unet2d", "segnet2d"])
def test_the_fused_bf16_network_computes_what_autocast_does(name: str) -> None:
    from cardioseg.models.fusion import bf16_cpu_network

    torch.manual_seed(0)
    model = build_model(name, base=4, depth=2).eval()
    fold_batch_norm(model)
    fused = bf16_cpu_network(model, torch.zeros(1, 1, 32, 32))
    assert fused is not None and next(fused.parameters()).dtype == torch.bfloat16
    x = torch.randn(4, 1, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain = model.to(memory_format=torch.channels_last)(x).float()
        out = fused(x.to(torch.bfloat16)).float()
    torch.testing.assert_close(out, plain, atol=0.05, rtol=0.02)
    assert (out.argmax(1) == plain.argmax(1)).float().mean() > 0.99


def test_where_the_fused_call_fails_the_plain_network_is_kept(tiny_weights, monkeypatch) -> None:
    """No oneDNN, no bf16 instructions, an operator this PyTorch lacks: the probe fails, and the
    predictor keeps the float32 network under autocast."""
    from cardioseg.inference import PredictOptions, Predictor
    from cardioseg.models import fusion

    def refuse(self, x):
        raise RuntimeError("mkldnn_convolution: bf16 path needs the cpu support avx_ne_convert or avx512bw")

    monkeypatch.setattr(fusion.ConvReLU2d, "forward", refuse)
    model = tiny_weights.build_model().eval()
    fold_batch_norm(model)
    assert fusion.bf16_cpu_network(model, torch.zeros(1, 1, 32, 32)) is None
    pred = Predictor(tiny_weights, PredictOptions(device="cpu", precision="bf16"))
    assert next(pred.model.parameters()).dtype == torch.float32
    assert not any(isinstance(m, fusion.ConvReLU2d) for m in pred.model.modules())
    probs = pred.slice_probabilities(np.random.default_rng(0).standard_normal((3, 32, 32)).astype(np.float32))
    assert probs.shape == (3, 4, 32, 32) and np.allclose(probs.sum(axis=1), 1, atol=1e-3)


@needs_bf16
def test_the_predictor_segments_the_same_with_and_without_fusion(tiny_weights, small_phantom, monkeypatch) -> None:
    from cardioseg.inference import PredictOptions, Predictor
    from cardioseg.models import fusion

    image, affine = small_phantom.image, small_phantom.affine
    fused = Predictor(tiny_weights, PredictOptions(device="cpu", precision="bf16"))
    assert any(isinstance(m, fusion.ConvReLU2d) for m in fused.model.modules())
    monkeypatch.setattr(fusion, "bf16_cpu_network", lambda *a: None)
    plain = Predictor(tiny_weights, PredictOptions(device="cpu", precision="bf16"))
    assert not any(isinstance(m, fusion.ConvReLU2d) for m in plain.model.modules())
    a, b = fused.predict(image, affine), plain.predict(image, affine)
    assert a.shape == b.shape and (a == b).mean() > 0.999
