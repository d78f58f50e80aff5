"""Frozen, validated configuration read through ``dask.config`` under ``scalekit``.

Precedence (lowest first): the YAML defaults shipped in the package, the user's Dask
config files, ``DASK_SCALEKIT__SECTION__KEY`` environment variables, keyword arguments.
Every config object validates itself in ``__post_init__``; errors name the field, the
bad value and the allowed range.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import dask.config
import yaml
from dask.utils import parse_bytes, parse_timedelta

from scalekit.errors import ConfigError

_DEFAULTS_FILE = os.path.join(os.path.dirname(__file__), "scalekit.yaml")
BACKENDS = ("local", "kubernetes")
MIN_REFRESH_S = 0.5  # the panel refreshes at most twice a second

with open(_DEFAULTS_FILE) as _f:
    _DEFAULTS = yaml.safe_load(_f)
dask.config.update_defaults(_DEFAULTS)

C = TypeVar("C", bound="_Section")


def _key(name: str) -> str:
    return name.replace("_", "-")


class _Section:
    """Shared loading logic: ``section`` names the key below ``scalekit``."""

    section: ClassVar[str]

    @classmethod
    def from_config(cls: type[C], **overrides: Any) -> C:
        """Build from ``dask.config`` with keyword overrides on top.

        ``None`` overrides are ignored so callers can pass optional arguments through.
        """
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(
                f"{cls.section}", unknown[0], f"one of {sorted(names)}",
                "Check the spelling of the keyword argument.",
            )
        stored = dask.config.get(f"scalekit.{cls.section}", default={}) or {}
        values = {n: stored[_key(n)] for n in names if _key(n) in stored}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self: C, **changes: Any) -> C:
        """A copy with ``changes`` applied and validated again."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def _field(self, name: str) -> str:
        return f"scalekit.{self.section}.{_key(name)}"

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _int(self, name: str, lo: int, hi: int | None = None, hint: str = "") -> None:
        value = getattr(self, name)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)  # from an environment variable
        ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok or value < lo or (hi is not None and value > hi):
            span = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
            raise ConfigError(self._field(name), getattr(self, name), f"an integer {span}", hint)
        self._set(name, value)

    def _bool(self, name: str) -> None:
        value = getattr(self, name)
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            value = value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(self._field(name), value, "true or false")
        self._set(name, value)

    def _seconds(self, name: str, lo: float = 0.0) -> None:
        value = getattr(self, name)
        try:
            seconds = float(parse_timedelta(value, default="seconds"))
        except (TypeError, ValueError, KeyError):
            seconds = None
        if seconds is None or seconds < lo:
            raise ConfigError(
                self._field(name), value, f"a duration >= {lo:g}s such as '2s', '500ms' or 10"
            )
        self._set(name, seconds)


@dataclasses.dataclass(frozen=True)
class ClusterConfig(_Section):
    """How to start a cluster.

    Attributes
    ----------
    backend : {"local", "kubernetes"}
        Where workers run.
    workers : int
        Workers started by ``up``; 1..``max_workers``.
    threads_per_worker : int
        Threads per worker; the training runtime sets torch's thread count to match.
    memory_limit : str, int or None
        Per worker: ``"auto"``, a size like ``"2GiB"``, bytes, or ``None`` for no limit.
    max_workers : int
        Upper bound for scaling, the slider and adaptive maximum.
    processes : bool
        One OS process per worker (required for distributed training).
    dashboard : bool
        Serve the Dask dashboard on 127.0.0.1 (needs bokeh).
    start_timeout : float
        Seconds to wait for the first workers before giving up.
    """

    section: ClassVar[str] = "cluster"

    backend: str = "local"
    workers: int = 2
    threads_per_worker: int = 1
    memory_limit: str | int | None = "auto"
    max_workers: int = 16
    processes: bool = True
    dashboard: bool = True
    start_timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(
                self._field("backend"), self.backend, f"one of {', '.join(BACKENDS)}",
                "Use backend='local' for this machine or 'kubernetes' for the Dask operator.",
            )
        self._int("max_workers", 1, 4096)
        too_many = not isinstance(self.workers, int) or self.workers > self.max_workers
        self._int(
            "workers", 1, self.max_workers,
            f"Raise max_workers (now {self.max_workers}) to allow more."
            if too_many and not isinstance(self.workers, float)
            else "A cluster needs a whole number of workers, at least one.",
        )
        self._int("threads_per_worker", 1, 1024)
        self._bool("processes")
        self._bool("dashboard")
        self._seconds("start_timeout", lo=1.0)
        limit = self.memory_limit
        if isinstance(limit, str) and limit.lower() in ("none", "null", ""):
            self._set("memory_limit", None)
        elif limit is not None and limit != "auto":
            try:
                parsed = parse_bytes(limit) if isinstance(limit, str) else int(limit)
            except (TypeError, ValueError):
                parsed = -1
            if isinstance(limit, bool) or parsed <= 0:
                raise ConfigError(
                    self._field("memory_limit"), limit,
                    "'auto', a positive size such as '2GiB' or a number of bytes, or None",
                )
            self._set("memory_limit", parsed)

    def check_workers(self, n: Any, what: str = "workers") -> int:
        """Validate a requested worker count against this config; return it as int."""
        if isinstance(n, str) and n.strip().isdigit():
            n = int(n)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= self.max_workers:
            hint = (
                "Raise scalekit.cluster.max-workers to allow more workers."
                if isinstance(n, int) and n > self.max_workers
                else "Use close() to stop the cluster instead of scaling to zero."
            )
            raise ConfigError(f"scalekit.cluster.{what}", n, f"an integer in 1..{self.max_workers}",
                              hint)
        return n


@dataclasses.dataclass(frozen=True)
class AdaptConfig(_Section):
    """Adaptive scaling bounds, as in ``distributed.Adaptive``."""

    section: ClassVar[str] = "adapt"

    minimum: int = 1
    maximum: int = 4
    interval: float = 1.0
    wait_count: int = 3

    def __post_init__(self) -> None:
        self._int("minimum", 0)
        self._int("maximum", 1)
        if self.minimum > self.maximum:
            raise ConfigError(
                self._field("minimum"), self.minimum,
                f"at most maximum ({self.maximum})",
                "Choose minimum <= maximum, e.g. adapt(1, 4).",
            )
        self._seconds("interval", lo=0.1)
        self._int("wait_count", 1, 1000)

    def within(self, max_workers: int) -> AdaptConfig:
        """Check the bounds against a cluster's ``max_workers``."""
        if self.maximum > max_workers:
            raise ConfigError(
                self._field("maximum"), self.maximum, f"at most max-workers ({max_workers})",
                "Raise scalekit.cluster.max-workers to allow more workers.",
            )
        return self


@dataclasses.dataclass(frozen=True)
class PanelConfig(_Section):
    """Live panel settings."""

    section: ClassVar[str] = "panel"

    refresh: float = 0.5
    history: int = 120

    def __post_init__(self) -> None:
        self._seconds("refresh", lo=MIN_REFRESH_S)
        self._int("history", 2, 100_000)


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Section):
    """How a distributed fit runs (see ``scalekit.training`` in scalekit.yaml)."""

    section: ClassVar[str] = "training"

    seed: int = 0
    backend: str = "auto"
    wait_for_workers: float = 60.0
    rendezvous_timeout: float = 30.0
    collective_timeout: float = 60.0
    progress_interval: float = 0.5
    max_failures: int = 3
    hang_timeout: float = 5.0
    beacon_interval: float = 1.0

    def __post_init__(self) -> None:
        self._int("seed", 0, 2**63 - 1)
        self._int("max_failures", 0, 10_000)
        self._seconds("hang_timeout", lo=0.5)
        self._seconds("beacon_interval", lo=0.05)
        if self.beacon_interval * 2 > self.hang_timeout:
            raise ConfigError(
                self._field("hang_timeout"), self.hang_timeout,
                f"at least twice beacon-interval ({self.beacon_interval:g}s)",
            )
        if self.backend not in ("auto", "gloo", "nccl"):
            raise ConfigError(self._field("backend"), self.backend, "one of auto, gloo, nccl")
        self._seconds("wait_for_workers", lo=0.0)
        self._seconds("rendezvous_timeout", lo=1.0)
        self._seconds("collective_timeout", lo=1.0)
        self._seconds("progress_interval", lo=0.1)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig(_Section):
    """Where and how often a fit saves its state."""

    section: ClassVar[str] = "checkpoint"

    root: str | None = None
    keep: int = 3
    every_epochs: int = 1
    every_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.root is not None and not isinstance(self.root, str):
            raise ConfigError(self._field("root"), self.root, "a folder path or fsspec URL")
        self._int("keep", 1, 10_000)
        self._int("every_epochs", 0, 1_000_000)
        self._seconds("every_seconds", lo=0.0)
        if self.every_epochs == 0 and self.every_seconds == 0:
            raise ConfigError(
                self._field("every_epochs"), 0, ">= 1 when every-seconds is 0",
                "Without any interval a failure would lose the whole run.",
            )

    def default_url(self, run_id: str) -> str:
        """The folder a run without an explicit ``checkpoint=`` URL uses."""
        import tempfile

        root = self.root or os.path.join(tempfile.gettempdir(), "scalekit-checkpoints")
        return f"{root.rstrip('/')}/{run_id}"


def as_dict(config: Any) -> Mapping[str, Any]:
    """Plain-dict view of a config object (JSON-safe), e.g. for checkpoints and events."""
    return dataclasses.asdict(config)
