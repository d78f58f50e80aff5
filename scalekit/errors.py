"""One error family for scalekit.

Every error derives from :class:`ScalekitError` *and* from the builtin a caller would
naturally catch (``ValueError`` for bad input, ``RuntimeError`` for a failed operation),
so code written against plain Dask/PyTorch keeps working.
"""

from __future__ import annotations

from typing import Any


class ScalekitError(Exception):
    """Base class of every error raised by scalekit."""


class ConfigError(ScalekitError, ValueError):
    """A configuration value is invalid.

    Parameters
    ----------
    field : str
        Dotted name of the field, e.g. ``"cluster.workers"``.
    value : Any
        The rejected value.
    expected : str
        What would have been accepted, e.g. ``"an integer in 1..16"``.
    hint : str, optional
        How to fix it.
    """

    def __init__(self, field: str, value: Any, expected: str, hint: str = "") -> None:
        self.field = field
        self.value = value
        self.expected = expected
        self.hint = hint
        message = f"{field}: got {value!r}, expected {expected}."
        if hint:
            message += f" {hint}"
        super().__init__(message)


class ClusterError(ScalekitError, RuntimeError):
    """A cluster could not be started, scaled or reached."""


class CheckpointError(ScalekitError, RuntimeError):
    """No usable checkpoint could be read, or one was refused (damaged, not committed,
    or holding something other than plain data)."""


class UsageError(ScalekitError, ValueError):
    """An API was called in a state or with arguments that cannot work."""


class TrainingError(ScalekitError, RuntimeError):
    """A distributed fit failed; the message names the rank and worker when one did.

    The original exception (with its remote traceback) is chained as ``__cause__``.
    """

    def __init__(self, message: str, *, rank: int | None = None, worker: str | None = None,
                 remote_traceback: str = "") -> None:
        self.rank = rank
        self.worker = worker
        self.remote_traceback = remote_traceback
        super().__init__(message)
