"""The backend contract: the ``ClusterBackend`` protocol declares (it implements
nothing), and what a backend needs from the session (its hooks into running fits) is
given when it is built, not attached afterwards. No cluster is started here."""

from __future__ import annotations

import ast
import inspect
import textwrap

import pytest

from scalekit.backends import ClusterBackend, TrainingHooks, make_backend
from scalekit.backends.base import DaskClusterBackend
from scalekit.config import ClusterConfig
from scalekit.session import ClusterSession

pytestmark = pytest.mark.usefixtures("clean_dask_config")


def test_the_protocol_declares_and_implements_nothing():
    tree = ast.parse(textwrap.dedent(inspect.getsource(ClusterBackend)))
    (cls,) = tree.body
    methods = [n for n in cls.body if isinstance(n, ast.FunctionDef)]
    assert {m.name for m in methods} >= {"start", "scale", "adapt", "resize", "close"}
    for method in methods:
        body = [n for n in method.body if not (  # a docstring or `...` only
            isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        assert not body, f"ClusterBackend.{method.name} has an implementation"
    assert "hooks" in ClusterBackend.__annotations__


class Fit:
    """The part of a training controller the session's hooks call."""

    def __init__(self, useful: int) -> None:
        self.useful, self.shrinks = useful, []

    def useful_workers(self) -> int:
        return self.useful

    def request_shrink(self, n: int) -> None:
        self.shrinks.append(n)


@pytest.mark.parametrize("backend", ["local", "kubernetes"])
def test_make_backend_gives_the_backend_its_hooks(backend):
    hooks = TrainingHooks(demand=lambda: 3, request_shrink=lambda n: None)
    options = {"image": "ghcr.io/x/y:1"} if backend == "kubernetes" else None
    built = make_backend(ClusterConfig(backend=backend), options, hooks=hooks)
    assert built.hooks is hooks
    # the protocol's other members (isinstance would read properties of a cluster that
    # is not started)
    for name in ("start", "scale", "adapt", "resize", "stop_adapt", "close", "snapshot",
                 "client", "adaptive", "closed"):
        assert hasattr(type(built), name), name
    alone = make_backend(ClusterConfig(backend=backend), options)  # no session: no fit
    assert alone.hooks.demand() is None and alone.hooks.request_shrink(2) is None


def test_the_session_builds_its_backend_with_hooks_into_its_fits():
    session = ClusterSession(ClusterConfig(workers=1))  # not started
    hooks = session.backend.hooks
    assert hooks.demand() is None
    small, big = Fit(2), Fit(5)
    session.attach_training(small)
    session.attach_training(big)
    assert hooks.demand() == 5  # the largest demand of the running fits
    hooks.request_shrink(1)
    assert small.shrinks == big.shrinks == [1]
    session.detach_training(small)
    session.detach_training(big)
    assert hooks.demand() is None


def test_a_given_backend_factory_is_handed_the_sessions_hooks():
    built: list[TrainingHooks] = []

    def factory(hooks: TrainingHooks) -> DaskClusterBackend:
        built.append(hooks)
        return DaskClusterBackend(ClusterConfig(workers=1), hooks=hooks)

    session = ClusterSession(ClusterConfig(workers=1), backend=factory)
    fit = Fit(4)
    session.attach_training(fit)
    assert built == [session.backend.hooks] and session.backend.hooks.demand() == 4
