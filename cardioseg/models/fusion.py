"""The network for bf16 inference on a CPU: bf16 weights, each convolution and its ReLU one oneDNN call.

On a CPU with native bf16 (AVX-512 BF16, AMX) the convolutions are fast enough that what lies
between them costs as much: run eagerly under autocast, a ReLU took about half a convolution's
time (one more read and write of every activation, in bf16). oneDNN applies the ReLU as a
post-op of the convolution, in the same pass, through ``torch.ops.mkldnn._convolution_pointwise``
(the operator ``torch.compile``'s CPU backend emits for this fusion; eager, no tracing, any
input shape). With the weights stored in bf16 the autocast casts go too. Same numbers: the
convolution computes in bf16 and rounds its output to bf16 either way, and the ReLU of a bf16
value is exact, so the labels equal those of the autocast path (all of 114 stage-2 ACDC slices'
pixels; ``benchmarks/runtimes.py``).

The operator is internal to PyTorch and exists only in builds with oneDNN, and it refuses bf16 on
a CPU without bf16 instructions: :func:`bf16_cpu_network` tries the fused network once on a
small input and returns None when it does not run, and the caller keeps the plain network
under autocast.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ConvReLU2d", "bf16_cpu_network", "fuse_conv_relu", "is_bf16_network"]


class ConvReLU2d(nn.Module):
    """``nn.Conv2d`` (zero padding) followed by ``nn.ReLU`` as one oneDNN convolution with the
    ReLU as its post-op. Inputs are cast to the weights' dtype (the network's first layer takes
    the float32 slices)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("ConvReLU2d takes a convolution with explicit zero padding")
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        self.padding = list(conv.padding)
        self.stride = list(conv.stride)
        self.dilation = list(conv.dilation)
        self.groups = conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.weight.dtype)
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups, "relu", [], None
        )


def fuse_conv_relu(model: nn.Module) -> int:
    """Replace, in place, each ``Conv2d`` directly followed (``nn.Identity`` aside: a folded batch
    norm) by a ``ReLU`` inside an ``nn.Sequential`` with one :class:`ConvReLU2d`; the ReLU becomes
    ``nn.Identity``. Returns the number of pairs fused."""
    fused = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq)):
            if type(seq[i]) is not nn.Conv2d or seq[i].padding_mode != "zeros" or isinstance(seq[i].padding, str):
                continue
            j = i + 1
            while j < len(seq) and type(seq[j]) is nn.Identity:
                j += 1
            if j < len(seq) and type(seq[j]) is nn.ReLU:
                seq[i] = ConvReLU2d(seq[i])  # type: ignore[arg-type]
                seq[j] = nn.Identity()
                fused += 1
    return fused


def is_bf16_network(model: nn.Module) -> bool:
    """True for a network whose weights are bf16 (:func:`bf16_cpu_network`'s): it takes bf16
    inputs and runs without autocast."""
    return next(model.parameters()).dtype == torch.bfloat16


def bf16_cpu_network(model: nn.Module, probe: torch.Tensor) -> nn.Module | None:
    """A bf16 copy of an eval-mode 2D ``model`` (batch norms already folded) with its
    convolutions and ReLUs fused, or None where that does not run here (no pair to fuse, no
    oneDNN, no bf16 instructions, an operator this PyTorch lacks). ``probe``: a small input of
    the model's layout (N, C, H, W), run once through the copy."""
    fused = copy.deepcopy(model).to(torch.bfloat16)
    if fuse_conv_relu(fused) == 0:
        return None
    try:
        with torch.inference_mode():
            fused(probe.to(torch.bfloat16).contiguous(memory_format=torch.channels_last))
    except (RuntimeError, AttributeError, TypeError, NotImplementedError):
        return None
    return fused.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
