"""User intents from the sidebar: checking a comm message's shape, and carrying it out.

An intent is a JSON object such as ``{"action": "scale", "n": 3}``. It is carried out
with the session's own methods (``scale(n, source="sidebar")`` ...), exactly as the
ipywidgets panel does: one source of truth, no second code path. Anything that is not an
intent raises :class:`~scalekit.errors.UsageError` saying what was expected, so the
bridge can answer it instead of failing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scalekit.errors import UsageError

ACTIONS = ("scale", "adapt", "stop_adapt", "close", "sync")
SOURCE = "sidebar"  # ScaleRequested/AdaptChanged ``source`` of the extension's intents

__all__ = ["ACTIONS", "SOURCE", "carry_out", "check_action", "intent_data", "intent_int"]


def _shape(value: Any) -> str:
    """A short description of a malformed value for an error message."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def intent_data(msg: Any) -> dict[str, Any]:
    """The intent a comm message carries (``msg["content"]["data"]``), shape checked.

    A message without data is an empty intent (answered "unknown action None").

    Raises
    ------
    UsageError
        The message, its ``content`` or its ``data`` is not a JSON object; the error
        names which and what arrived instead.
    """
    if not isinstance(msg, Mapping):
        raise UsageError(f"malformed comm message: expected a message object, got {_shape(msg)}")
    content = msg.get("content")
    if not isinstance(content, Mapping):
        raise UsageError("malformed comm message: its content must be an object with "
                         f"'data', got {_shape(content)}")
    data = content.get("data")
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise UsageError("malformed intent: the comm message's data must be an object such "
                         f'as {{"action": "scale", "n": 3}}, got {_shape(data)}')
    return dict(data)


def intent_int(data: Mapping[str, Any], key: str, *, optional: bool = False) -> int | None:
    """``data[key]`` as a whole number of workers (``None`` if ``optional`` and unset)."""
    value = data.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not value.is_integer()):
        raise UsageError(f"{key}: expected a whole number of workers, got {value!r}")
    return int(value)


def check_action(data: Mapping[str, Any]) -> str:
    """The intent's action, one of :data:`ACTIONS`."""
    action = data.get("action")
    if action not in ACTIONS:
        raise UsageError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    return str(action)


def carry_out(session: Any, action: str, data: Mapping[str, Any]) -> str:
    """Call ``session``'s method for ``action``; return the line the sidebar shows.

    ``sync`` is the bridge's own business (it asks for nothing but a fresh snapshot).
    """
    if action == "scale":
        n = intent_int(data, "n")
        session.scale(n, source=SOURCE)
        return f"scaling to {n} worker{'s' if n != 1 else ''}"
    if action == "adapt":
        lo = intent_int(data, "minimum", optional=True)
        hi = intent_int(data, "maximum", optional=True)
        session.adapt(lo, hi, source=SOURCE)
        return "adaptive scaling on"
    if action == "stop_adapt":
        session.stop_adapt(source=SOURCE)
        return "adaptive scaling off"
    if action == "close":
        session.close()
        return "cluster closed"
    raise UsageError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
