"""Explicit registry: architecture name -> constructor. Weights store the name + kwargs."""

from __future__ import annotations

from typing import Any

from cardioseg.errors import ConfigError


def _unet2d(**kwargs: Any) -> Any:
    from cardioseg.models.unet import UNet2D

    return UNet2D(**kwargs)


ARCHITECTURES = {"unet2d": _unet2d}


def build_model(name: str, **kwargs: Any) -> Any:
    """Instantiate a registered architecture; an unknown name lists the valid ones."""
    try:
        factory = ARCHITECTURES[name]
    except KeyError:
        raise ConfigError(
            f"unknown architecture {name!r}; registered: {', '.join(sorted(ARCHITECTURES))}"
        ) from None
    return factory(**kwargs)
