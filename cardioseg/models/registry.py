"""Explicit registry: architecture name -> constructor. Weights store the name + kwargs."""

from __future__ import annotations

from typing import Any

from cardioseg.errors import ConfigError


def _unet2d(**kwargs: Any) -> Any:
    from cardioseg.models.unet import UNet2D

    return UNet2D(**kwargs)


def _segnet2d(**kwargs: Any) -> Any:
    from cardioseg.models.unet import SegNet2D

    return SegNet2D(skips=False, **kwargs)


def _usegnet2d(**kwargs: Any) -> Any:
    from cardioseg.models.unet import SegNet2D

    return SegNet2D(skips=True, **kwargs)


def _unet3d(**kwargs: Any) -> Any:
    from cardioseg.models.unet import UNet3D

    return UNet3D(**kwargs)


ARCHITECTURES = {"unet2d": _unet2d, "segnet2d": _segnet2d, "usegnet2d": _usegnet2d, "unet3d": _unet3d}
THREE_D = frozenset({"unet3d"})  # architectures that take (N, 1, D, H, W) stacks


def build_model(name: str, **kwargs: Any) -> Any:
    """Instantiate a registered architecture; an unknown name lists the valid ones."""
    try:
        factory = ARCHITECTURES[name]
    except KeyError:
        raise ConfigError(
            f"unknown architecture {name!r}; registered: {', '.join(sorted(ARCHITECTURES))}"
        ) from None
    return factory(**kwargs)
