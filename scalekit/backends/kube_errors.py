"""Errors of the Kubernetes backend, each with the evidence that explains it.

:func:`translate` turns what kr8s, httpx and dask-kubernetes raise into one of these
(which verb on which resource a 403 refused, whether the operator's CRDs exist, ...);
:func:`pod_failure` and :func:`collect_evidence` find a failing pod and fetch its last
log lines and events. :func:`mask_error` removes the values of ``env`` from an error
before anyone sees it: errors reach the panel, the lab sidebar and logs.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from scalekit.errors import ClusterError

logger = logging.getLogger(__name__)

DOCS = "docs/kubernetes.md"
RBAC_DOC = f"{DOCS}, section 'Minimum RBAC'"
OPERATOR_DOC = f"{DOCS}, section 'Install the Dask operator'"
IMAGE_DOC = f"{DOCS}, section 'The image'"
# container states that will not get better by waiting
FATAL_REASONS = ("CrashLoopBackOff", "ImagePullBackOff", "InvalidImageName",
                 "ErrImageNeverPull", "CreateContainerConfigError", "CreateContainerError",
                 "RunContainerError")


MASK = "***"
MIN_MASKED = 8  # plain env values this long are masked in errors whatever their name...
# ...and shorter ones (from 3 characters) when their name says they are a credential
_CREDENTIAL_NAME = re.compile(
    r"KEY|SECRET|TOKEN|PASS|PWD|CREDENTIAL|AUTH|PRIVATE|SESSION|SIGNATURE|CERT", re.I)
_MASKED_ATTRIBUTES = ("summary", "evidence", "message", "server_message")


class KubernetesError(ClusterError):
    """A Kubernetes backend failure; ``evidence`` holds what was observed."""

    def __init__(self, message: str, evidence: str = "") -> None:
        self.evidence = evidence.rstrip()
        text = message if not self.evidence else f"{message}\n\n{self.evidence}"
        super().__init__(text)
        self.summary = message


class KubeconfigError(KubernetesError):
    """No kubeconfig or in-cluster credentials were found."""


class ApiUnreachableError(KubernetesError):
    """The API server named by the kubeconfig does not answer."""


class ForbiddenError(KubernetesError):
    """The API server refused a request (HTTP 403): RBAC is missing a rule."""

    def __init__(self, verb: str, resource: str, group: str, namespace: str | None,
                 server_message: str = "") -> None:
        self.verb, self.resource, self.group, self.namespace = verb, resource, group, namespace
        where = f" in namespace {namespace!r}" if namespace else " (cluster-wide)"
        api_group = f"API group {group!r}" if group else "the core API group"
        super().__init__(
            f"Kubernetes refused to {verb} {resource} ({api_group}){where}: the notebook's "
            f"credentials lack RBAC permission {verb!r} on {resource!r}. Grant it with a Role "
            f"(see {RBAC_DOC}).",
            f"API server said: {server_message}" if server_message else "")


class OperatorMissingError(KubernetesError):
    """The Dask operator's CRDs are not installed, or the operator does not act."""


class PodFailureError(KubernetesError):
    """A scheduler or worker pod crash-loops or cannot pull its image."""

    def __init__(self, message: str, evidence: str, pod: PodState) -> None:
        super().__init__(message, evidence)
        self.pod = pod


class StartTimeoutError(KubernetesError, TimeoutError):
    """The cluster did not come up in time; ``phase`` is the last one observed."""

    def __init__(self, message: str, evidence: str, phase: str | None) -> None:
        super().__init__(message, evidence)
        self.phase = phase


# -- pods --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PodState:
    """What matters about one pod, read from its ``status``."""

    name: str
    component: str  # scheduler | worker | ?
    phase: str
    ready: bool
    restarts: int
    reason: str = ""  # the container's waiting/terminated reason, or the pod's
    message: str = ""
    exit_code: int | None = None
    deleting: bool = False

    @classmethod
    def from_pod(cls, pod: dict[str, Any]) -> PodState:
        meta, status = pod.get("metadata", {}), pod.get("status") or {}
        containers = status.get("containerStatuses") or []
        restarts = sum(int(c.get("restartCount", 0)) for c in containers)
        reason = message = ""
        exit_code = None
        for c in containers:
            state = c.get("state") or {}
            last = (c.get("lastState") or {}).get("terminated") or {}
            if "exitCode" in last:
                exit_code = last["exitCode"]
            for key in ("waiting", "terminated"):
                if key in state and state[key].get("reason"):
                    reason = state[key]["reason"]
                    message = state[key].get("message", "")
                    exit_code = state[key].get("exitCode", exit_code)
        if not reason:
            for cond in status.get("conditions") or []:
                if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                    reason, message = cond.get("reason", ""), cond.get("message", "")
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        return cls(
            name=meta.get("name", "?"),
            component=(meta.get("labels") or {}).get("dask.org/component", "?"),
            phase=status.get("phase", "Pending"),
            ready=conditions.get("Ready") == "True",
            restarts=restarts, reason=reason or status.get("reason", ""),
            message=message or status.get("message", ""), exit_code=exit_code,
            deleting=bool(meta.get("deletionTimestamp")),
        )

    @property
    def fatal(self) -> bool:
        return (self.reason in FATAL_REASONS or self.phase == "Failed"
                or (self.restarts >= 2 and not self.ready))

    def describe(self) -> str:
        parts = [self.phase + (" (terminating)" if self.deleting else "")]
        parts.append("ready" if self.ready else "not ready")
        parts.append(f"{self.restarts} restart{'s' if self.restarts != 1 else ''}")
        if self.reason:
            parts.append(self.reason)
        if self.exit_code not in (None, 0):
            parts.append(f"last exit code {self.exit_code}")
        return ", ".join(parts)


MAX_POD_LINES = 8  # a snapshot lists every pod up to this many, else the troubled ones


def pods_text(pods: list[PodState]) -> str:
    """Every pod with its state and message: evidence for errors."""
    if not pods:
        return "no pods of this cluster exist (yet)"
    return "pods:\n" + "\n".join(f"  {p.name}: {p.describe()}"
                                 + (f" - {p.message}" if p.message else "") for p in pods)


def pod_lines(pods: list[PodState], cluster: str) -> tuple[tuple[str, str], ...]:
    """The panel's lines about a cluster: the cluster, a pod count, then each pod (the
    scheduler first); a big cluster shows the scheduler and the troubled pods only."""
    running = sum(p.phase == "Running" for p in pods)
    lines = [("cluster", cluster), ("pods", f"{running} running, {len(pods) - running} other")]
    ordered = sorted(pods, key=lambda p: (p.component != "scheduler", p.name))
    if len(ordered) <= MAX_POD_LINES:
        return tuple(lines + [(p.name, p.describe()) for p in ordered])
    healthy = [p for p in ordered if p.component != "scheduler" and p.ready
               and not p.restarts and not p.deleting]
    shown = [p for p in ordered if p not in healthy][:MAX_POD_LINES]
    rest = [p for p in ordered if p not in shown]
    lines += [(p.name, p.describe()) for p in shown]
    lines.append(("other pods", f"{len(rest)} more" + (
        ", all running, ready, 0 restarts" if set(rest) <= set(healthy) else "")))
    return tuple(lines)


def waiting_for(pods: list[PodState], workers: int, wanted: int) -> str:
    """What a start that timed out was still waiting for."""
    schedulers = [p for p in pods if p.component == "scheduler"]
    if not schedulers:
        return "the scheduler pod to be created (is the operator running?)"
    if not any(p.phase == "Running" for p in schedulers):
        return ("the scheduler pod to run (Pending: unschedulable, or an image still "
                "pulling? see the pods below)")
    if not any(p.ready for p in schedulers):
        return "the scheduler to become ready (its /health readiness probe)"
    return f"workers to connect ({workers} of {wanted})"


def pod_failure(pods: list[PodState]) -> PodState | None:
    """The first pod (scheduler first) that will not come up by itself, if any."""
    order = sorted(pods, key=lambda p: (p.component != "scheduler", p.name))
    return next((p for p in order if p.fatal and not p.deleting), None)


def failure_message(pod: PodState, cluster: str) -> str:
    if pod.reason == "CreateContainerConfigError":
        return (f"the {pod.component} pod {pod.name} of cluster {cluster!r} cannot start its "
                f"container: {pod.message or 'its configuration refers to something missing'}"
                ". Create the Secret or ConfigMap (and key) that scalekit.kubernetes.env "
                "refers to in the cluster's namespace, or fix the reference.")
    if "Image" in pod.reason or pod.reason == "ErrImagePull":
        return (f"the {pod.component} pod {pod.name} of cluster {cluster!r} cannot pull its "
                f"image ({pod.reason}). Check the image name and tag, and the "
                f"image-pull-secrets for a private registry (see {IMAGE_DOC}).")
    return (f"the {pod.component} pod {pod.name} of cluster {cluster!r} is crash-looping "
            f"({pod.describe()}). Its image must run `dask {pod.component}` with the "
            f"notebook's dask, distributed, torch and scalekit versions (see {IMAGE_DOC}).")


async def collect_evidence(namespace: str, pod: PodState, lines: int = 25) -> str:
    """The pod's state, its last log lines (of the crashed run if it restarted) and events."""
    import kr8s
    from kr8s.asyncio.objects import Pod

    text = [f"pod {pod.name}: {pod.describe()}"]
    if pod.message:
        text.append(f"  {pod.message}")
    try:
        obj = await Pod.get(pod.name, namespace=namespace)
        log: list[str] = []
        for previous in ((True, False) if pod.restarts else (False,)):
            try:
                log = [line async for line in obj.logs(previous=previous, tail_lines=lines)]
            except kr8s.ServerError:
                continue
            if log:
                break
        if log:
            text.append(f"last {len(log)} log lines of {pod.name}:")
            text.extend(f"  | {line}" for line in log)
    except Exception as exc:  # evidence is best effort: never hide the real error
        text.append(f"(logs unavailable: {type(exc).__name__}: {exc})")
    try:
        events = [e async for e in kr8s.asyncio.get(
            "events", namespace=namespace, field_selector=f"involvedObject.name={pod.name}")]
        events.sort(key=lambda e: str(e.raw.get("lastTimestamp") or ""))
        if events:
            text.append(f"events of {pod.name}:")
            for e in events[-8:]:
                text.append(f"  {e.raw.get('type', '')} {e.raw.get('reason', '')}: "
                            f"{e.raw.get('message', '')}")
    except Exception as exc:
        text.append(f"(events unavailable: {type(exc).__name__}: {exc})")
    return "\n".join(text)


# -- keeping env values out of errors ------------------------------------------------------


def secret_values(env: Mapping[str, Any]) -> tuple[str, ...]:
    """The plain ``env`` values that errors must not show, longest first (so that a value
    containing another is masked whole). References (``valueFrom``) hold no value."""
    found = {value for name, value in env.items() if isinstance(value, str) and (
        len(value) >= MIN_MASKED or (len(value) >= 3 and _CREDENTIAL_NAME.search(name)))}
    return tuple(sorted(found, key=len, reverse=True))


def mask(text: str, values: Iterable[str]) -> str:
    """``text`` with every occurrence of ``values`` replaced by ``***``."""
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return text


def mask_error(error: BaseException, values: Iterable[str]) -> BaseException:
    """Mask ``values`` in ``error`` and the errors it was raised from (their messages,
    evidence and arguments), in place; returns ``error``."""
    values = tuple(values)
    if not values:
        return error
    for err in causes(error):
        err.args = tuple(mask(a, values) if isinstance(a, str) else a for a in err.args)
        for name in _MASKED_ATTRIBUTES:
            text = getattr(err, name, None)
            if isinstance(text, str):
                try:
                    setattr(err, name, mask(text, values))
                except (AttributeError, TypeError):  # a read-only property
                    pass
    return error


# -- translating what the libraries raise -------------------------------------------------


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and the errors it was raised from or during, outermost first."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return seen


def request_of(response: Any) -> tuple[str, str, str, str | None]:
    """(verb, resource, API group, namespace) of the request behind an HTTP response."""
    request = response.request
    parts = urlsplit(str(request.url))
    segments = [s for s in parts.path.split("/") if s]
    if segments[:1] == ["api"]:
        group, rest = "", segments[2:]
    else:
        group, rest = (segments[1] if len(segments) > 1 else ""), segments[3:]
    namespace = None
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] if rest else "?"
    named = len(rest) > 1
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"
    method = request.method.upper()
    query = parse_qs(parts.query)
    if method == "GET":
        if resource.endswith("/portforward"):
            verb = "create"
        elif named:
            verb = "get"
        else:
            verb = "watch" if query.get("watch", [""])[0] in ("true", "1") else "list"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, "delete")
        if method == "DELETE" and not named:
            verb = "deletecollection"
    return verb, resource, group, namespace


def translate(exc: BaseException, *, namespace: str | None = None,
              server: str | None = None) -> KubernetesError | None:
    """The scalekit error for ``exc`` (or anything in its chain), or ``None``."""
    import httpx

    for err in causes(exc):
        if isinstance(err, KubernetesError):
            return err
        response = getattr(err, "response", None)
        if isinstance(response, httpx.Response):
            code = response.status_code
            try:
                message = response.json().get("message", "")
            except Exception:
                message = response.text[:500]
            if code == 403:
                verb, resource, group, ns = request_of(response)
                return ForbiddenError(verb, resource, group, ns or namespace, message)
            if code == 401:
                return KubeconfigError(
                    "the Kubernetes API server rejected the notebook's credentials (401). "
                    "Refresh the kubeconfig's token or log in again.", message)
            if code == 404 and "kubernetes.dask.org" in str(response.request.url):
                if "namespaces" in message and "not found" in message:
                    return KubernetesError(
                        f"the namespace does not exist: {message}. Create it or set "
                        "scalekit.kubernetes.namespace.")
                return OperatorMissingError(
                    "the Dask operator's custom resources (kubernetes.dask.org/v1) are not "
                    f"installed in this cluster. Install the operator first (see {OPERATOR_DOC}).",
                    f"API server said: {message} ({response.request.method} "
                    f"{response.request.url.path})")
            if code == 404 and "namespaces" in message and "not found" in message:
                return KubernetesError(
                    f"the namespace does not exist: {message}. Create it or set "
                    "scalekit.kubernetes.namespace.")
        if isinstance(err, (httpx.ConnectError, httpx.ConnectTimeout, ConnectionRefusedError)):
            if server is None and isinstance(err, httpx.RequestError):
                try:
                    url = err.request.url
                    server = f"{url.scheme}://{url.netloc.decode()}"
                except RuntimeError:  # no request attached
                    pass
            where = f" at {server}" if server else ""
            return ApiUnreachableError(
                f"the Kubernetes API server{where} does not answer ({type(err).__name__}: "
                f"{err}). Check the kubeconfig's current context (`kubectl config "
                "current-context`), VPN or cluster state.")
        if isinstance(err, ValueError) and "valid credentials" in str(err):
            return KubeconfigError(
                "no Kubernetes credentials found: no kubeconfig (KUBECONFIG or "
                "~/.kube/config) and not running in a pod with a service account. Point "
                "KUBECONFIG at your cluster's config, or run the notebook inside the "
                f"cluster ({DOCS}).", str(err))
        if isinstance(err, FileNotFoundError) and "kube" in str(err).lower():
            return KubeconfigError(f"the kubeconfig file does not exist: {err}")
    return None
