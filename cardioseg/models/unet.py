"""The DMR paper's fully convolutional networks and its distance-map regulariser (Figs. 2-3).

- ``UNet2D``: encoder, bottleneck, transposed-convolution decoder with skip connections.
- ``SegNet2D``: the decoder upsamples with the encoder's max-pooling indices; ``skips=True``
  adds U-Net skip connections (the paper's U-SegNet, Fig. 2e).
- ``UNet3D``: Qure.ai's 3D U-Net (Patravali et al.): the U-Net with 3D convolutions and
  1x2x2 max-pooling (in-plane only), so it takes stacks of any number of slices.

The 2D networks take ``in_channels`` neighbouring slices (Qure.ai's multi-slice 2D model; see
``cardioseg.models.inputs``).

Each takes ``dmr=True`` to add the distance-map regulariser: a SegNet-like decoder from the
bottleneck to full resolution with ``num_classes - 1`` outputs (the truncated signed distance
maps of the foreground classes). It runs only in ``forward_with_aux`` (training); ``forward``
returns the segmentation logits alone, and exported weights drop the regulariser
(``DMR_PREFIX``), so the shipped network is the plain one. ``forward_train`` also returns the
bottleneck features, for the regularisers of ``cardioseg.models.regularizers``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

DMR_PREFIX = "dmr."  # state-dict keys of the regulariser, dropped on export


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(*_conv(c_in, c_out), *_conv(c_out, c_out))


def _init(module: nn.Module) -> None:
    """Kaiming-uniform weights, zero biases (DMR paper II-F)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _encode_decode(net: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The U-Net pass shared by the 2D and 3D networks: (logits, bottleneck features)."""
    skips = []
    for enc in net.encoders:
        x = enc(x)
        skips.append(x)
        x = net.pool(x)
    bottom = net.bottleneck(x)
    x = bottom
    for up, dec, skip in zip(net.ups, net.decoders, reversed(skips)):
        x = dec(torch.cat([up(x), skip], dim=1))
    return net.head(x), bottom


class DistanceDecoder(nn.Module):
    """SegNet-like decoder from the bottleneck to (N, out_channels, H, W) distance maps.

    Per level, from the deepest: a 3x3 conv to that level's width, upsampling (max-unpooling
    with the encoder's indices when given, else bilinear), a 3x3 conv; then a 1x1 conv.
    """

    def __init__(self, widths: list[int], out_channels: int) -> None:
        super().__init__()
        depth = len(widths) - 1
        self.reduce = nn.ModuleList([nn.Sequential(*_conv(widths[i + 1], widths[i])) for i in reversed(range(depth))])
        self.refine = nn.ModuleList([nn.Sequential(*_conv(widths[i], widths[i])) for i in reversed(range(depth))])
        self.out = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor, indices: list[torch.Tensor] | None = None) -> torch.Tensor:
        for level, (reduce, refine) in enumerate(zip(self.reduce, self.refine)):
            x = reduce(x)
            if indices is not None:
                x = F.max_unpool2d(x, indices[-1 - level], (2, 2))
            else:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = refine(x)
        return self.out(x)


class UNet2D(nn.Module):
    """U-Net for (N, in_channels, H, W) -> (N, num_classes, H, W) logits.

    H and W must be multiples of 2**depth. Channel widths are ``base * 2**level``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 4, base: int = 16, depth: int = 4, dmr: bool = False) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.encoders = nn.ModuleList([_block(in_channels if i == 0 else widths[i - 1], widths[i]) for i in range(depth)])
        self.bottleneck = _block(widths[depth - 1], widths[depth])
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth))])
        self.decoders = nn.ModuleList([_block(2 * widths[i], widths[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        self.dmr = DistanceDecoder(widths, num_classes - 1) if dmr else None
        _init(self)

    def _segment(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, bottleneck features)."""
        return _encode_decode(self, x)

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(segmentation logits, distance maps or None, bottleneck features) for training."""
        logits, bottom = self._segment(x)
        return logits, (self.dmr(bottom) if self.dmr is not None else None), bottom

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(segmentation logits, distance maps or None without the regulariser)."""
        return self.forward_train(x)[:2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._segment(x)[0]


class SegNet2D(nn.Module):
    """SegNet (``skips=False``) or U-SegNet (``skips=True``): max-unpooling decoders.

    Per decoder level, from the deepest: a 3x3 conv to that level's width, max-unpooling with
    the encoder's pooling indices, (U-SegNet: concatenation with the encoder features), and a
    two-conv block.
    """

    def __init__(
        self, in_channels: int = 1, num_classes: int = 4, base: int = 16, depth: int = 4,
        skips: bool = False, dmr: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        widths = [base * 2**i for i in range(depth + 1)]
        self.skips = skips
        self.encoders = nn.ModuleList([_block(in_channels if i == 0 else widths[i - 1], widths[i]) for i in range(depth)])
        self.bottleneck = _block(widths[depth - 1], widths[depth])
        self.reduce = nn.ModuleList([nn.Sequential(*_conv(widths[i + 1], widths[i])) for i in reversed(range(depth))])
        factor = 2 if skips else 1
        self.decoders = nn.ModuleList([_block(factor * widths[i], widths[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        self.dmr = DistanceDecoder(widths, num_classes - 1) if dmr else None
        _init(self)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        feats, indices = [], []
        for enc in self.encoders:
            x = enc(x)
            feats.append(x)
            x, idx = F.max_pool2d(x, 2, return_indices=True)
            indices.append(idx)
        return self.bottleneck(x), feats, indices

    def _decode(self, x: torch.Tensor, feats: list[torch.Tensor], indices: list[torch.Tensor]) -> torch.Tensor:
        for level, (reduce, dec) in enumerate(zip(self.reduce, self.decoders)):
            x = F.max_unpool2d(reduce(x), indices[-1 - level], (2, 2))
            if self.skips:
                x = torch.cat([x, feats[-1 - level]], dim=1)
            x = dec(x)
        return self.head(x)

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(segmentation logits, distance maps or None, bottleneck features) for training."""
        bottom, feats, indices = self._encode(x)
        logits = self._decode(bottom, feats, indices)
        return logits, (self.dmr(bottom, indices) if self.dmr is not None else None), bottom

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(segmentation logits, distance maps or None without the regulariser)."""
        return self.forward_train(x)[:2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bottom, feats, indices = self._encode(x)
        return self._decode(bottom, feats, indices)


def _block3d(c_in: int, c_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in ((c_in, c_out), (c_out, c_out)):
        layers += [nn.Conv3d(a, b, 3, padding=1, bias=False), nn.BatchNorm3d(b), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class UNet3D(nn.Module):
    """Qure.ai's 3D U-Net: (N, in_channels, D, H, W) -> (N, num_classes, D, H, W) logits.

    ``UNet2D`` with every operation replaced by its 3D counterpart (3x3x3 convolutions, batch
    norm, ReLU), except that max-pooling and the transposed convolutions are 1x2x2: the slice
    axis is never down-sampled, so any number of slices D >= 1 works (Patravali et al.,
    "3D segmentation"). H and W must be multiples of 2**depth. Widths ``base * 2**level``
    (their base layer has 256 feature maps: base 16, depth 4).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 4, base: int = 16, depth: int = 4) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList([_block3d(in_channels if i == 0 else widths[i - 1], widths[i]) for i in range(depth)])
        self.bottleneck = _block3d(widths[depth - 1], widths[depth])
        self.pool = nn.MaxPool3d((1, 2, 2))
        self.ups = nn.ModuleList(
            [nn.ConvTranspose3d(widths[i + 1], widths[i], (1, 2, 2), stride=(1, 2, 2)) for i in reversed(range(depth))]
        )
        self.decoders = nn.ModuleList([_block3d(2 * widths[i], widths[i]) for i in reversed(range(depth))])
        self.head = nn.Conv3d(widths[0], num_classes, 1)
        self.dmr = None  # no distance-map regulariser for the 3D network
        _init(self)

    def _segment(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _encode_decode(self, x)

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, None, torch.Tensor]:
        """(segmentation logits, None, bottleneck features) for training."""
        logits, bottom = self._segment(x)
        return logits, None, bottom

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.forward_train(x)[:2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._segment(x)[0]
