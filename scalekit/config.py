"""Frozen, validated configuration read through ``dask.config`` under ``scalekit``.

Precedence (lowest first): the YAML defaults shipped in the package, the user's Dask
config files, ``DASK_SCALEKIT__SECTION__KEY`` environment variables, keyword arguments.
Every config object validates itself in ``__post_init__``; errors name the field, the
bad value and the allowed range.
"""

from __future__ import annotations

import dataclasses
import os
import re
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


_UNSET = object()  # a key absent from dask.config (None is a value: "no limit")


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
        values = cls._stored()
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def _stored(cls) -> dict[str, Any]:
        """The fields ``dask.config`` holds a value for, unvalidated, by field name.

        Read key by key through ``dask.config.get``, which finds ``max-workers`` and
        ``max_workers`` alike: a ``DASK_SCALEKIT__CLUSTER__MAX_WORKERS`` variable read
        when Dask is imported is stored as ``max_workers`` (our YAML's defaults, loaded
        later, merge into that spelling), so looking up ``max-workers`` in the section's
        dict would drop it.
        """
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):  # type: ignore[arg-type]
            value = dask.config.get(f"scalekit.{cls.section}.{_key(field.name)}",
                                    default=_UNSET)
            if value is not _UNSET:
                values[field.name] = value
        return values

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
    profile : bool
        Run Dask's statistical profiler in the workers (the dashboard's Profile page).
        It samples every worker thread 100 times a second, holding the GIL each time,
        which slows a training step by 5-10 % on a small machine; off by default.
    start_timeout : float
        Seconds to wait for the first workers before giving up.
    gpus : None, "auto", int or tuple of str
        GPU workers (local backend): one worker per GPU, pinned to it with
        ``CUDA_VISIBLE_DEVICES``. ``None``: no GPU pinning; ``"auto"``: every visible GPU;
        ``N``: the first N; a list of GPU indices or UUIDs: those.
    """

    section: ClassVar[str] = "cluster"

    backend: str = "local"
    workers: int = 2
    threads_per_worker: int = 1
    memory_limit: str | int | None = "auto"
    max_workers: int = 16
    processes: bool = True
    dashboard: bool = True
    profile: bool = False
    start_timeout: float = 60.0
    gpus: str | int | tuple[str, ...] | None = None

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
        self._bool("profile")
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
        self._set("gpus", self._parse_gpus(self.gpus))
        if self.gpus is not None and self.backend != "local":
            raise ConfigError(
                self._field("gpus"), self.gpus, "None on the kubernetes backend",
                "Kubernetes pods get GPUs through their resources: "
                "kubernetes={'resources': {'limits': {'gpu': 1}}} gives each worker pod one.")

    def _parse_gpus(self, value: Any) -> str | int | tuple[str, ...] | None:
        expected = "None, 'auto', a number of GPUs >= 1, or a list of GPU ids such as [0, 1]"
        if isinstance(value, str):  # from YAML, a magic option or an environment variable
            text = value.strip()
            if text.lower() in ("", "none", "null", "0", "false", "no"):
                return None
            if text.lower() == "auto":
                return "auto"
            if text.isdigit():
                return int(text)
            value = [v.strip() for v in text.strip("[]").split(",") if v.strip()]
        if value is None or value is False or value == 0:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        if isinstance(value, (list, tuple)) and value:
            ids = []
            for v in value:
                ok = (isinstance(v, int) and not isinstance(v, bool) and v >= 0) or (
                    isinstance(v, str) and v.strip() and not v.strip().startswith("-"))
                if not ok:
                    raise ConfigError(self._field("gpus"), value, expected)
                ids.append(str(v).strip())
            if len(set(ids)) != len(ids):
                raise ConfigError(self._field("gpus"), value, expected,
                                  "Each GPU gets one worker: list every GPU once.")
            return tuple(ids)
        raise ConfigError(self._field("gpus"), value, expected)

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
    stall_timeout: float = 6.0
    beacon_interval: float = 1.0
    host_reduce: bool = True
    precision: str = "32"
    data_on_device: bool | str = "auto"

    def __post_init__(self) -> None:
        self._int("seed", 0, 2**63 - 1)
        self._bool("host_reduce")
        self._set("precision", normalize_precision(self.precision, self._field("precision")))
        if isinstance(self.data_on_device, str) and self.data_on_device.lower() == "auto":
            self._set("data_on_device", "auto")
        else:
            self._bool("data_on_device")
        self._int("max_failures", 0, 10_000)
        self._seconds("hang_timeout", lo=0.5)
        self._seconds("beacon_interval", lo=0.05)
        self._seconds("stall_timeout", lo=0.0)
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


PRECISIONS = ("32", "bf16", "fp16")
_PRECISION_NAMES = {"32": "32", "fp32": "32", "32-true": "32", "float32": "32",
                    "bf16": "bf16", "bf16-mixed": "bf16", "bfloat16": "bf16",
                    "fp16": "fp16", "16": "fp16", "16-mixed": "fp16", "float16": "fp16"}


def normalize_precision(value: Any, field: str = "precision") -> str:
    """``"32"``, ``"bf16"`` or ``"fp16"`` for the spellings people use (32, "bf16-mixed",
    "16", ...)."""
    key = str(value).lower() if value is not None else "32"
    if key not in _PRECISION_NAMES:
        raise ConfigError(
            field, value, "one of '32', 'bf16', 'fp16'",
            "bf16 runs on CPUs and on GPUs since Ampere; fp16 (with loss scaling) on GPUs.")
    return _PRECISION_NAMES[key]


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
        """The folder a run without an explicit ``checkpoint=`` URL uses: under ``root``,
        or under the private :meth:`private_root` when ``root`` is not set."""
        root = self.root or self.private_root()
        return f"{root.rstrip('/')}/{run_id}"

    @classmethod
    def private_root(cls) -> str:
        """``$XDG_CACHE_HOME/scalekit/checkpoints`` (``~/.cache/...`` by default): created
        with mode 0700 and refused when another user owns it or others may write to it.

        A shared folder (the old default was ``<tmp>/scalekit-checkpoints``) lets any
        local user replace a run's checkpoints, which the run then loads.
        """
        import stat

        cache = os.environ.get("XDG_CACHE_HOME", "")
        if not os.path.isabs(cache):  # the XDG rule: a relative value is ignored
            cache = os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(cache, "scalekit", "checkpoints")
        field = f"scalekit.{cls.section}.root"
        try:
            os.makedirs(root, mode=0o700, exist_ok=True)  # new folders: 0700 (umask aside)
            info = os.stat(root)
        except OSError as exc:
            raise ConfigError(field, None, "a folder this user can create",
                              f"Could not create {root}: {exc}. Set {field}.") from exc
        uid = os.getuid() if hasattr(os, "getuid") else None
        if uid is not None and info.st_uid != uid:
            raise ConfigError(
                field, None, f"a folder owned by this user (uid {uid})",
                f"{root} belongs to uid {info.st_uid}, who could replace your checkpoints: "
                f"remove it, or set {field} to a folder of your own.")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ConfigError(
                field, None, "a folder only its owner may write to",
                f"{root} has mode {stat.S_IMODE(info.st_mode):o}: others could replace your "
                f"checkpoints. Run `chmod 700 {root}`, or set {field}.")
        if uid is not None and stat.S_IMODE(info.st_mode) != 0o700:
            os.chmod(root, 0o700)  # ours and not writable by others: make it unreadable too
        return root


_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|e[0-9]+)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
_SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}


@dataclasses.dataclass(frozen=True)
class KubernetesConfig(_Section):
    """How the Kubernetes backend builds its ``DaskCluster`` (the Dask operator's resource).

    Attributes
    ----------
    image : str
        Scheduler and worker image; it must hold scalekit, torch and the notebook's
        dask/distributed versions (see docs/kubernetes.md). Required to start.
    namespace : str or None
        ``None``: the kubeconfig context's namespace (inside a pod: the pod's).
    name : str
        ``DaskCluster`` name, a template with ``{user}`` and ``{uuid}``. A fixed name
        reconnects to a cluster kept with ``keep_on_shutdown``.
    resources, scheduler_resources : dict
        ``{"requests": {"cpu", "memory"}, "limits": {"cpu", "memory", "gpu"}}`` per worker
        (scheduler) pod; quantities as Kubernetes writes them (``"2"``, ``"500m"``,
        ``"4Gi"``); ``gpu`` counts ``nvidia.com/gpu``. A worker's CPU request defaults to
        its thread count.
    env : dict
        Extra environment variables of every pod: a value, or a reference that keeps a
        credential out of the ``DaskCluster``: ``{"valueFrom": {"secretKeyRef": {"name":
        "aws", "key": "secret-access-key"}}}`` (or ``configMapKeyRef``; ``optional`` as
        in Kubernetes). Errors never show a value.
    labels, node_selector : dict
        Extra labels and node selector of every pod.
    tolerations : list of dict
        Pod tolerations (``key``, ``operator``, ``value``, ``effect``).
    service_account : str or None
        Service account of the pods.
    image_pull_secrets : list of str
        Secrets for a private registry.
    image_pull_policy : str or None
        ``Always``, ``IfNotPresent`` or ``Never`` (``None``: Kubernetes' default).
    port_forward : "auto", True or False
        Reach the scheduler through a port-forward (True), by cluster DNS (False), or
        decide by where the notebook runs ("auto": DNS inside a pod, else port-forward).
    keep_on_shutdown : bool
        Leave the cluster running when the kernel shuts down or the session closes.
    start_timeout : float
        Seconds for the whole start (image pulls included) before giving up.
    operator_timeout : float
        Seconds for the operator to act on a new ``DaskCluster``.
    close_timeout : float
        Seconds ``close`` waits for the pods to be gone.
    scheduler_service_type : str
        ``ClusterIP``, ``NodePort`` or ``LoadBalancer``.
    idle_timeout : float
        The operator deletes a cluster idle this long (0: never).
    tls : bool
        Scheduler, workers and client speak only mutual TLS, with certificates of a CA
        made for the cluster (kept in a Secret next to it). ``False`` turns that off
        explicitly, and then only a ``ClusterIP`` scheduler service is allowed.
    network_policy : bool
        Create a NetworkPolicy that admits only the cluster's pods, the notebook and the
        Dask operator to the cluster's pods (docs/kubernetes.md, section 'Security').
    notebook_selector : dict
        Labels of the notebook's pod, admitted by the NetworkPolicy when the notebook runs
        in the cluster and reaches the scheduler by DNS (``{}``: the pod's own labels).
    """

    section: ClassVar[str] = "kubernetes"

    image: str | None = None
    namespace: str | None = None
    name: str = "scalekit-{user}-{uuid}"
    resources: dict[str, Any] = dataclasses.field(default_factory=dict)
    scheduler_resources: dict[str, Any] = dataclasses.field(default_factory=dict)
    env: dict[str, Any] = dataclasses.field(default_factory=dict)
    node_selector: dict[str, Any] = dataclasses.field(default_factory=dict)
    tolerations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    service_account: str | None = None
    image_pull_secrets: list[str] = dataclasses.field(default_factory=list)
    image_pull_policy: str | None = None
    labels: dict[str, Any] = dataclasses.field(default_factory=dict)
    port_forward: str | bool = "auto"
    keep_on_shutdown: bool = False
    start_timeout: float = 300.0
    operator_timeout: float = 30.0
    close_timeout: float = 60.0
    scheduler_service_type: str = "ClusterIP"
    idle_timeout: float = 0.0
    tls: bool = True
    network_policy: bool = True
    notebook_selector: dict[str, Any] = dataclasses.field(default_factory=dict)

    _ENV_SOURCES: ClassVar[tuple[str, ...]] = ("secretKeyRef", "configMapKeyRef")
    _ENV_EXPECTED: ClassVar[str] = (
        "a value, or {'valueFrom': {'secretKeyRef': {'name': SECRET, 'key': KEY}}} "
        "(or configMapKeyRef)")

    def __post_init__(self) -> None:
        if self.image is not None and (not isinstance(self.image, str) or not self.image
                                       or any(c.isspace() for c in self.image)):
            raise ConfigError(self._field("image"), self.image,
                              "an image reference such as 'ghcr.io/you/scalekit-worker:1.0'")
        if self.namespace is not None and not (
                isinstance(self.namespace, str) and _DNS_LABEL.match(self.namespace)):
            raise ConfigError(self._field("namespace"), self.namespace,
                              "a namespace name (lower-case letters, digits and '-') or None")
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(self._field("name"), self.name,
                              "a name or template such as 'scalekit-{user}-{uuid}'")
        self._set("resources", self._resources("resources", gpu=True))
        self._set("scheduler_resources", self._resources("scheduler_resources", gpu=False))
        self._env()
        for name in ("labels", "node_selector", "notebook_selector"):
            self._str_map(name)
        if isinstance(self.image_pull_secrets, str):
            self._set("image_pull_secrets", [self.image_pull_secrets])
        if not isinstance(self.image_pull_secrets, (list, tuple)) or not all(
                isinstance(s, str) and s for s in self.image_pull_secrets):
            raise ConfigError(self._field("image_pull_secrets"), self.image_pull_secrets,
                              "a list of secret names")
        self._set("image_pull_secrets", list(self.image_pull_secrets))
        tolerations = self.tolerations
        if not isinstance(tolerations, (list, tuple)) or not all(
                isinstance(t, dict) and set(t) <= _TOLERATION_KEYS for t in tolerations):
            raise ConfigError(self._field("tolerations"), tolerations,
                              f"a list of mappings with keys from {sorted(_TOLERATION_KEYS)}")
        self._set("tolerations", [dict(t) for t in tolerations])
        if self.service_account is not None and not isinstance(self.service_account, str):
            raise ConfigError(self._field("service_account"), self.service_account,
                              "a service account name or None")
        if self.image_pull_policy not in (None, *_PULL_POLICIES):
            raise ConfigError(self._field("image_pull_policy"), self.image_pull_policy,
                              f"one of {', '.join(_PULL_POLICIES)} or None")
        if self.scheduler_service_type not in _SERVICE_TYPES:
            raise ConfigError(self._field("scheduler_service_type"),
                              self.scheduler_service_type, f"one of {', '.join(_SERVICE_TYPES)}")
        forward = self.port_forward
        if isinstance(forward, str) and forward.lower() == "auto":
            self._set("port_forward", "auto")
        else:
            self._bool("port_forward")
        self._bool("keep_on_shutdown")
        self._seconds("start_timeout", lo=1.0)
        self._seconds("operator_timeout", lo=1.0)
        self._seconds("close_timeout", lo=0.0)
        self._seconds("idle_timeout", lo=0.0)
        self._bool("tls")
        self._bool("network_policy")
        if not self.tls and self.scheduler_service_type != "ClusterIP":
            raise ConfigError(
                self._field("scheduler_service_type"), self.scheduler_service_type,
                "ClusterIP while scalekit.kubernetes.tls is false",
                "A NodePort or LoadBalancer service lets anyone who reaches it run code "
                "on the workers unless TLS admits only holders of the cluster's "
                "certificates: turn scalekit.kubernetes.tls back on (the default) or use "
                "ClusterIP (see docs/kubernetes.md, section 'Security').")

    def _env(self) -> None:
        """Values become strings, references stay references; no error shows a value
        (env often carries credentials, and errors reach panels and logs)."""
        value, field = self.env, self._field("env")
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(field, f"<{type(value).__name__}, not shown>",
                              f"a mapping of variable names to {self._ENV_EXPECTED}")
        env: dict[str, Any] = {}
        for name, item in value.items():
            if not isinstance(name, str) or not name or "=" in name:
                raise ConfigError(field, f"<a variable named {name!r}>",
                                  "variable names: non-empty strings without '='")
            if item is None:
                continue
            if isinstance(item, Mapping):
                env[name] = self._env_reference(f"{field}.{name}", item)
            elif isinstance(item, (str, int, float, bool)):
                env[name] = str(item)
            else:
                raise ConfigError(f"{field}.{name}", f"<{type(item).__name__}, not shown>",
                                  self._ENV_EXPECTED)
        self._set("env", env)

    def _env_reference(self, field: str, item: Mapping) -> dict[str, Any]:
        source = item.get("valueFrom") if set(item) == {"valueFrom"} else None
        kind = next(iter(source)) if isinstance(source, Mapping) and len(source) == 1 else None
        ref = source[kind] if kind in self._ENV_SOURCES else None  # type: ignore[index]
        if not (isinstance(ref, Mapping) and set(ref) <= {"name", "key", "optional"}
                and all(isinstance(ref.get(k), str) and ref.get(k) for k in ("name", "key"))
                and isinstance(ref.get("optional", False), bool)):
            # a reference names a Secret and a key, no credential: safe to show; a mapping
            # of any other shape might hold one
            shown = (dict(item) if kind in self._ENV_SOURCES
                     else f"<mapping with keys {sorted(map(str, item))}, values not shown>")
            raise ConfigError(field, shown, self._ENV_EXPECTED)
        return {"valueFrom": {kind: dict(ref)}}

    def _str_map(self, name: str) -> None:
        value = getattr(self, name)
        if value is None:
            value = {}
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise ConfigError(self._field(name), value, "a mapping of names to strings")
        self._set(name, {k: str(v) for k, v in value.items() if v is not None})

    def _resources(self, name: str, gpu: bool) -> dict[str, dict[str, str]]:
        value = getattr(self, name) or {}
        allowed = {"requests": {"cpu", "memory"},
                   "limits": {"cpu", "memory", *(("gpu",) if gpu else ())}}
        expected = ("{'requests': {'cpu': '1', 'memory': '4Gi'}, 'limits': {...}} with keys "
                    + "; ".join(f"{k}: {', '.join(sorted(v))}" for k, v in allowed.items()))
        if not isinstance(value, Mapping) or not set(value) <= set(allowed):
            raise ConfigError(self._field(name), value, expected)
        out: dict[str, dict[str, str]] = {}
        for section, entries in value.items():
            entries = entries or {}
            if not isinstance(entries, Mapping) or not set(entries) <= allowed[section]:
                raise ConfigError(f"{self._field(name)}.{section}", entries, expected)
            for key, quantity in entries.items():
                if quantity is None or (key == "gpu" and quantity in (0, "0")):
                    continue
                text = str(quantity)
                ok = (text.isdigit() if key == "gpu" else bool(_QUANTITY.match(text)))
                if isinstance(quantity, bool) or not ok:
                    raise ConfigError(
                        f"{self._field(name)}.{section}.{key}", quantity,
                        "a whole number of GPUs" if key == "gpu"
                        else "a Kubernetes quantity such as '2', '500m', '4Gi'")
                out.setdefault(section, {})[key] = text
        return out


def as_dict(config: Any) -> Mapping[str, Any]:
    """Plain-dict view of a config object (JSON-safe), e.g. for checkpoints and events."""
    return dataclasses.asdict(config)
