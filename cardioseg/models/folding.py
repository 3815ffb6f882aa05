"""Inference-time folding of batch normalisation into the convolution before it.

In eval mode a batch norm is an affine map per channel, y = (x - mean) / sqrt(var + eps) * gamma + beta,
so a convolution followed by one equals a single convolution with scaled weights and a bias
(``torch.nn.utils.fusion.fuse_conv_bn_eval``). Every ``Conv -> BatchNorm`` pair of this package's
networks sits in an ``nn.Sequential`` (``cardioseg.models.unet._conv``), which is where it is
found. The network then skips one full read and write of every activation per convolution.
"""

from __future__ import annotations

from typing import Any

__all__ = ["fold_batch_norm"]


def fold_batch_norm(model: Any) -> int:
    """Fold, in place, each batch norm that directly follows a convolution inside an
    ``nn.Sequential`` into that convolution (the norm becomes ``nn.Identity``). The model must be
    in eval mode: a training-mode norm uses the batch's statistics and cannot be folded.
    Returns the number of norms folded."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if model.training:
        raise ValueError("fold_batch_norm needs a model in eval mode")
    pairs = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d))
    folded = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, norm = seq[i], seq[i + 1]
            if any(type(conv) is c and type(norm) is b for c, b in pairs) and norm.track_running_stats:
                seq[i] = fuse_conv_bn_eval(conv, norm)  # type: ignore[type-var,arg-type]
                seq[i + 1] = nn.Identity()
                folded += 1
    return folded
