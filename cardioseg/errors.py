"""Typed errors raised by the engine; the CLI maps them to exit code 1 and one line."""

from __future__ import annotations

DEBUG_HINT = " (a bug: rerun with --debug for the traceback)"  # appended to unexpected errors' lines


class CardiosegError(Exception):
    """Base class of every error the engine raises on purpose."""


class InputFileNotFoundError(CardiosegError):
    """An input path does not exist."""


class UnreadableInputError(CardiosegError):
    """An input exists but cannot be decoded (corrupt, truncated, wrong content)."""


class UnsupportedInputError(CardiosegError):
    """An input is readable in principle but not something cardioseg handles."""


class WeightsError(CardiosegError):
    """Weights cannot be found, verified or loaded."""


class ConfigError(CardiosegError):
    """Inconsistent options (for example an ED frame index outside the cine)."""


class QcError(CardiosegError):
    """A study failed quality control under ``--strict``."""
