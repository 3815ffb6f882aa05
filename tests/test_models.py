"""The registry's networks with and without the distance-map regulariser (DMR paper, Figs. 2-3)."""

from __future__ import annotations

import pytest
import torch

from cardioseg.errors import ConfigError
from cardioseg.models import ARCHITECTURES, THREE_D, build_model
from cardioseg.models.unet import DMR_PREFIX, SegNet2D, UNet2D, UNet3D

KW = {"in_channels": 1, "num_classes": 4, "base": 4, "depth": 4}
TWO_D = sorted(set(ARCHITECTURES) - THREE_D)


def _models(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    plain = build_model(name, **KW)
    torch.manual_seed(0)
    dmr = build_model(name, **KW, dmr=True)
    return plain, dmr


def _n_params(model: torch.nn.Module, skip: str | None = None) -> int:
    return sum(p.numel() for k, p in model.named_parameters() if skip is None or not k.startswith(skip))


def test_registry_names() -> None:
    assert sorted(ARCHITECTURES) == ["segnet2d", "unet2d", "unet3d", "usegnet2d"]
    assert isinstance(build_model("unet2d", **KW), UNet2D) and isinstance(build_model("unet3d", **KW), UNet3D)
    seg, useg = build_model("segnet2d", **KW), build_model("usegnet2d", **KW)
    assert isinstance(seg, SegNet2D) and not seg.skips and isinstance(useg, SegNet2D) and useg.skips
    with pytest.raises(ConfigError, match="unknown architecture 'vnet'.*segnet2d, unet2d, unet3d, usegnet2d"):
        build_model("vnet")


@pytest.mark.parametrize("name", TWO_D)
def test_shapes_and_forward_equals_forward_with_aux(name: str) -> None:
    plain, dmr = _models(name)
    x = torch.randn(2, 1, 32, 48)
    for model in (plain, dmr):
        model.eval()
        with torch.no_grad():
            logits = model(x)
            seg, aux = model.forward_with_aux(x)
        assert logits.shape == (2, 4, 32, 48)
        torch.testing.assert_close(seg, logits, rtol=0, atol=0)
        if model is plain:
            assert aux is None and model.dmr is None
        else:
            assert aux is not None and aux.shape == (2, 3, 32, 48)
        seg, aux2, bottom = model.forward_train(x)
        torch.testing.assert_close(seg, logits, rtol=0, atol=0)
        assert bottom.shape == (2, 4 * 16, 2, 3)  # base * 2**depth channels at 1/16 resolution
        assert (aux2 is None) == (aux is None)
    # training mode: the regulariser's output has a gradient path to the shared encoder
    dmr.train()
    _, aux = dmr.forward_with_aux(x)
    aux.abs().mean().backward()
    assert dmr.encoders[0][0].weight.grad is not None and dmr.encoders[0][0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", TWO_D)
def test_dmr_weights_minus_regulariser_are_the_plain_network(name: str) -> None:
    plain, dmr = _models(name)
    assert _n_params(dmr) > _n_params(plain) == _n_params(dmr, skip=DMR_PREFIX)
    # give the dmr model non-trivial batch-norm statistics, then strip and load
    with torch.no_grad():
        for m in dmr.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    state = {k: v for k, v in dmr.state_dict().items() if not k.startswith(DMR_PREFIX)}
    assert any(k.startswith(DMR_PREFIX) for k in dmr.state_dict())
    plain.load_state_dict(state, strict=True)
    plain.eval(), dmr.eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), dmr(x), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        build_model(name, **KW).load_state_dict(dmr.state_dict(), strict=True)


def test_2d_networks_take_neighbouring_slices_as_channels() -> None:
    model = build_model("unet2d", **{**KW, "in_channels": 3}).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4, 32, 32)
