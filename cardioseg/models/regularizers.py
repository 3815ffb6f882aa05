"""Training-only networks that regularise a segmentation network (none is ever exported).

- ``LRNet``: Li et al.'s light-weight regression network, from the segmentation network's
  softmax output to one norm inverse distance map per foreground class, trained in tandem.
- ``ShapeAutoencoder``: SRSCN's shape reconstruction network (SRNN), a convolutional
  autoencoder of label maps; pre-trained on reference labels, then frozen. Its reconstructions
  give SRSCN's shape loss (Eq. 3) and its codes ACNN's (Oktay et al.).
- ``PositionHead``: SRSCN's spatial-constraint module, from the segmentation network's
  bottleneck to the slice's position in [0, 1] (base to apex of the stack).
- ``Discriminator``: label map -> real/fake logit, for the GAN regulariser.

The autoencoder and the discriminator have no batch normalisation, so they behave the same in
training and evaluation mode and on batches of references alone or predictions alone.
"""

from __future__ import annotations

import torch
from torch import nn

from cardioseg.models.unet import _init


class LRNet(nn.Module):
    """(N, num_classes, H, W) probabilities -> (N, num_classes - 1, H, W) maps in (0, 1).

    A stack of 3x3 convolutions with growing dilation (receptive field 1 + 2 * sum of the
    dilations, 61 px by default: the NI-DM has fallen to 1/30 there), batch norm and ReLU,
    then a 1x1 convolution and a sigmoid.
    """

    def __init__(self, num_classes: int = 4, width: int = 16, dilations: tuple[int, ...] = (1, 2, 4, 8, 8, 4, 2, 1)):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = num_classes
        for d in dilations:
            layers += [
                nn.Conv2d(c_in, width, 3, padding=d, dilation=d, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            c_in = width
        layers.append(nn.Conv2d(width, num_classes - 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(probs))


class ShapeAutoencoder(nn.Module):
    """Convolutional autoencoder of (N, num_classes, H, W) label maps (one-hot or softmax).

    The encoder halves the resolution ``depth`` times (3x3 stride-2 convolutions, widths
    ``base * 2**level``) and a 1x1 convolution makes the code, (N, code_channels, H/2**depth,
    W/2**depth); the decoder mirrors it with transposed convolutions and returns
    reconstruction logits. H and W must be multiples of 2**depth.
    """

    def __init__(self, num_classes: int = 4, base: int = 16, depth: int = 4, code_channels: int = 8) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(depth)]
        enc: list[nn.Module] = []
        c_in = num_classes
        for w in widths:
            enc += [
                nn.Conv2d(c_in, w, 3, stride=2, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(w, w, 3, padding=1),
                nn.ReLU(inplace=True),
            ]
            c_in = w
        enc.append(nn.Conv2d(c_in, code_channels, 1))
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(code_channels, widths[-1], 1), nn.ReLU(inplace=True)]
        for i in reversed(range(depth)):
            w_out = widths[i - 1] if i else base
            dec += [
                nn.ConvTranspose2d(widths[i], w_out, 2, stride=2),
                nn.ReLU(inplace=True),
                nn.Conv2d(w_out, w_out, 3, padding=1),
                nn.ReLU(inplace=True),
            ]
        dec.append(nn.Conv2d(base, num_classes, 1))
        self.decoder = nn.Sequential(*dec)
        _init(self)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction logits, (N, num_classes, H, W)."""
        return self.decoder(self.encoder(x))


class PositionHead(nn.Module):
    """(N, C, h, w) bottleneck features -> (N,) slice position in (0, 1).

    Global average pooling, a hidden layer with ReLU, a linear output and a sigmoid.
    """

    def __init__(self, in_channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(features.mean(dim=(2, 3)))).squeeze(1)


class Discriminator(nn.Module):
    """(N, num_classes, H, W) label maps -> (N,) logits of "this is a reference".

    ``depth`` 4x4 stride-2 convolutions with leaky ReLU (widths ``base * 2**level``), global
    average pooling, a linear output.
    """

    def __init__(self, num_classes: int = 4, base: int = 16, depth: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = num_classes
        for i in range(depth):
            layers += [nn.Conv2d(c_in, base * 2**i, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            c_in = base * 2**i
        self.features = nn.Sequential(*layers)
        self.out = nn.Linear(c_in, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x).mean(dim=(2, 3))).squeeze(1)
