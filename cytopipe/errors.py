"""User-facing errors.

Every problem a user can cause (a corrupt FCS file, a gate file with a typo, a missing marker, a bad sample sheet)
raises a subclass of :class:`CytopipeError`. Its message is one line that says what is wrong and where. The command
line catches this family once and prints the message without a traceback; anything else is a bug and propagates.
"""

from __future__ import annotations


class CytopipeError(Exception):
    """Base class of every user-facing cytopipe error; ``str(err)`` is one line."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class FCSError(CytopipeError):
    """An FCS file is missing, unreadable, corrupt or not FCS at all."""


class GateError(CytopipeError):
    """A gate definition (YAML or Gating-ML) is invalid."""


class MarkerError(CytopipeError):
    """A marker or channel named by a gate is absent from (or ambiguous in) a sample."""


class SampleSheetError(CytopipeError):
    """A sample sheet or clinical table is malformed."""


class ConfigError(CytopipeError):
    """A command-line option or setting is invalid."""
