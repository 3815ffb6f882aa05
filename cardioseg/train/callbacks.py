"""How a training run reports progress: a callback object, so that the engine neither prints
nor draws progress bars (``cardioseg train`` renders them; a script may log or ignore them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["Callbacks", "TrainCallbacks"]


class TrainCallbacks(Protocol):
    """What ``Trainer`` calls, in this order: ``on_log`` for the setup's messages; per epoch
    ``on_epoch_start``, ``on_step`` after each optimisation step, ``on_epoch_end`` with the
    row written to ``log.csv`` (rank 0 only) and ``on_log`` with its summary line; ``on_log``
    for the export."""

    def on_log(self, message: str) -> None: ...

    def on_epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        """Epoch ``epoch`` (1-based) of ``epochs`` begins; it takes ``steps`` steps."""

    def on_step(self) -> None: ...

    def on_epoch_end(self, row: dict[str, str]) -> None:
        """The epoch's ``log.csv`` row: losses, sigmas, lr, seconds, validation Dice."""


class Callbacks:
    """Callbacks that forward the log lines to ``log`` (none when None) and ignore the rest;
    subclass it to follow the steps.

    >>> lines: list[str] = []
    >>> Callbacks(lines.append).on_log("epoch 1/2 ...")
    >>> lines
    ['epoch 1/2 ...']
    """

    def __init__(self, log: Callable[[str], None] | None = None) -> None:
        self.log = log

    def on_log(self, message: str) -> None:
        if self.log is not None:
            self.log(message)

    def on_epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def on_step(self) -> None:
        pass

    def on_epoch_end(self, row: dict[str, str]) -> None:
        pass
