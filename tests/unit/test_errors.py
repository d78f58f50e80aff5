"""One error family: every exception class scalekit defines is a ScalekitError, and
keeps the builtin a caller would catch (scalekit.errors)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import scalekit
from scalekit.errors import ScalekitError

# modules that need optional packages (kubernetes backend, the planner's scipy) are
# imported too: the test environment has them
SKIP = {"scalekit.__main__"}
# control flow, never raised to a user: argparse's help text, skorch's clean stop
CONTROL_FLOW = {"scalekit.magics.parsing._Help", "scalekit.training.callbacks.RoundStopped"}


def scalekit_exceptions() -> dict[str, type]:
    found = {}
    for info in pkgutil.walk_packages(scalekit.__path__, "scalekit."):
        if info.name in SKIP:
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__ == info.name
                    and f"{info.name}.{name}" not in CONTROL_FLOW):
                found[f"{info.name}.{name}"] = obj
    return found


def test_every_scalekit_exception_is_in_the_family():
    found = scalekit_exceptions()
    assert "scalekit.training.rank.RendezvousError" in found
    outside = sorted(name for name, cls in found.items() if not issubclass(cls, ScalekitError))
    assert not outside, f"not ScalekitErrors: {outside}"


def test_family_members_keep_their_builtin_base():
    from scalekit.training.rank import RendezvousError

    assert issubclass(RendezvousError, TimeoutError)  # peers still treat it as a timeout
    for cls in scalekit_exceptions().values():
        assert any(issubclass(cls, b) for b in (ValueError, RuntimeError, TimeoutError,
                                                 OSError, KeyError, ConnectionError)) \
            or cls is ScalekitError, cls
