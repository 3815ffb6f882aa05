"""Label maps: the single source of truth for what each integer in a mask means."""

from __future__ import annotations

from dataclasses import dataclass

from cardioseg.errors import ConfigError


@dataclass(frozen=True)
class LabelMap:
    """Integer values of the three cardiac structures in a mask (0 is background)."""

    name: str
    rv: int  # right-ventricular cavity
    myo: int  # left-ventricular myocardium
    lv: int  # left-ventricular cavity (papillary muscles included)

    def as_dict(self) -> dict[str, int]:
        """``{"background": 0, "rv": .., "myo": .., "lv": ..}`` (stored in weights and reports)."""
        return {"background": 0, "rv": self.rv, "myo": self.myo, "lv": self.lv}

    @property
    def structures(self) -> dict[str, int]:
        """The foreground structures only, in a fixed order (rv, myo, lv)."""
        return {"rv": self.rv, "myo": self.myo, "lv": self.lv}

    @property
    def num_classes(self) -> int:
        return 4


ACDC = LabelMap("acdc", rv=1, myo=2, lv=3)
MNMS = LabelMap("mnms", rv=3, myo=2, lv=1)  # also UK Biobank's order

PRESETS: dict[str, LabelMap] = {"acdc": ACDC, "mnms": MNMS, "ukbb": MNMS}


def get_label_map(name: str) -> LabelMap:
    """Return a preset by name; an unknown name lists the valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown label preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}"
        ) from None


def label_map_from_dict(d: dict[str, int], name: str = "custom") -> LabelMap:
    """Rebuild a label map stored as ``as_dict()`` (in weights or a report)."""
    return LabelMap(name, rv=int(d["rv"]), myo=int(d["myo"]), lv=int(d["lv"]))
