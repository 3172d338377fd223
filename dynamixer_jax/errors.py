"""Every error a user can cause, in one place, with one base class.

Each message says what is wrong and what to do; the command line prints it as one line
(``train/process.py``) instead of a traceback. Importing this module needs nothing but Python.
"""

from __future__ import annotations


class DynaMixerError(Exception):
    """Base class: something the user can fix, reported in one line."""


class ConfigError(DynaMixerError, ValueError):
    """A configuration that cannot run; the message says which field and what to do."""


class InputError(DynaMixerError, ValueError):
    """Images a model cannot take (layout, size, channels, dtype); the message says what to do."""


class DataError(DynaMixerError, ValueError):
    """A dataset that cannot be read as configured; the message says what to do."""


class CheckpointError(DynaMixerError, RuntimeError):
    """A checkpoint that cannot be used as asked; the message says what to do."""


class ConversionError(DynaMixerError, ValueError):
    """Weights that do not fit the DynaMixer layout; the message lists every problem."""


class TrainingDiverged(DynaMixerError, RuntimeError):
    """The loss became NaN or infinite; the message names the step and the checkpoint kept."""


class OutOfMemory(DynaMixerError, RuntimeError):
    """A step that does not fit the device; the message says what it needs and what fits."""
