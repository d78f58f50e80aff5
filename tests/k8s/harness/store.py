"""The emulated API server's object store: resource kinds, objects, watches, selectors.

Everything here runs on the harness's one event-loop thread, so no locks are needed.
What a real API server does and this one does too: uid, resourceVersion (one global
counter), creationTimestamp, generation, generateName, label and field selectors,
watch replay from a resourceVersion (no events lost between a list and a watch), 410
Gone for versions too old, JSON merge patch and JSON patch, the status subresource,
finalizers and deletionTimestamp, graceful pod deletion, ownerReference garbage
collection, and CRD structural-schema pruning and defaulting.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import dataclasses
import datetime as dt
import random
import string
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from .schema import prune_and_default

HISTORY = 50_000  # watch events kept for replay


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """An error answered as a Kubernetes ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


@dataclasses.dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    subresources: frozenset[str] = frozenset()
    short_names: tuple[str, ...] = ()
    schema: Any = None  # a CRD's openAPIV3Schema

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def group_resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def discovery(self) -> list[dict[str, Any]]:
        verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update",
                 "watch"]
        entries = [{"name": self.plural, "singularName": self.singular,
                    "namespaced": self.namespaced, "kind": self.kind, "verbs": verbs,
                    "shortNames": list(self.short_names)}]
        for sub in sorted(self.subresources):
            entries.append({"name": f"{self.plural}/{sub}", "singularName": "",
                            "namespaced": self.namespaced, "kind": self.kind,
                            "verbs": ["get", "patch", "update"]})
        return entries


BUILTIN = [
    Kind("", "v1", "namespaces", "Namespace", False, frozenset({"status"})),
    Kind("", "v1", "nodes", "Node", False, frozenset({"status"})),
    Kind("", "v1", "pods", "Pod", True, frozenset({"status", "log", "portforward"}),
         ("po",)),
    Kind("", "v1", "services", "Service", True, frozenset({"status"}), ("svc",)),
    Kind("", "v1", "events", "Event", True, frozenset(), ("ev",)),
    Kind("", "v1", "endpoints", "Endpoints", True, frozenset(), ("ep",)),
    Kind("", "v1", "serviceaccounts", "ServiceAccount", True, frozenset(), ("sa",)),
    Kind("", "v1", "configmaps", "ConfigMap", True, frozenset(), ("cm",)),
    Kind("", "v1", "secrets", "Secret", True, frozenset()),
    Kind("apps", "v1", "deployments", "Deployment", True, frozenset({"status", "scale"}),
         ("deploy",)),
    # stored and served (scalekit creates one per cluster); nothing enforces it here
    Kind("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, frozenset(),
         ("netpol",)),
    Kind("apiextensions.k8s.io", "v1", "customresourcedefinitions",
         "CustomResourceDefinition", False, frozenset({"status"}), ("crd", "crds")),
]
CRD_KIND = BUILTIN[-1]


# -- selectors -------------------------------------------------------------------------


def _split_selector(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current.strip())
    return parts


def label_matcher(text: str | None) -> Callable[[dict], bool]:
    """Equality- and set-based label selectors (``a=b,c!=d,e in (f,g),!h,i``)."""
    tests: list[Callable[[dict], bool]] = []
    for term in _split_selector(text or ""):
        words = term.split()
        if len(words) >= 3 and words[1] in ("in", "notin"):
            key, op = words[0], words[1]
            values = {v.strip() for v in term.split("(", 1)[1].rstrip(")").split(",")}
            if op == "in":
                tests.append(lambda lb, k=key, vs=values: lb.get(k) in vs)
            else:
                tests.append(lambda lb, k=key, vs=values: lb.get(k) not in vs)
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            tests.append(lambda lb, k=key, v=value: lb.get(k) != v)
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            tests.append(lambda lb, k=key, v=value: lb.get(k) == v)
        elif term.startswith("!"):
            missing = term[1:].strip()
            tests.append(lambda lb, k=missing: k not in lb)
        else:
            tests.append(lambda lb, k=term: k in lb)
    return lambda obj: all(t(obj.get("metadata", {}).get("labels") or {}) for t in tests)


def field_value(obj: dict, path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


def field_matcher(text: str | None) -> Callable[[dict], bool]:
    """Field selectors on any dotted path (``metadata.name=x,status.phase!=Failed``)."""
    tests: list[Callable[[dict], bool]] = []
    for term in _split_selector(text or ""):
        negate = "!=" in term
        path, _, value = term.replace("!=", "=").replace("==", "=").partition("=")
        path, value = path.strip(), value.strip()
        if negate:
            tests.append(lambda o, p=path, v=value: field_value(o, p) != v)
        elif value or term.endswith("="):
            tests.append(lambda o, p=path, v=value: field_value(o, p) == v)
    return lambda obj: all(t(obj) for t in tests)


# -- patches ---------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: Any, ops: list[dict]) -> Any:
    """RFC 6902 JSON patch: add, replace, remove, test."""
    doc = copy.deepcopy(target)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        last = parts[-1]
        kind = op["op"]
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if kind == "add":
                parent.insert(index, op["value"])
            elif kind == "replace":
                parent[index] = op["value"]
            elif kind == "remove":
                parent.pop(index)
            elif kind == "test" and parent[index] != op["value"]:
                raise ApiError(422, "Invalid", f"test failed at {op['path']}")
        else:
            if kind in ("add", "replace"):
                parent[last] = op["value"]
            elif kind == "remove":
                if last not in parent:
                    raise ApiError(422, "Invalid", f"no value at {op['path']}")
                del parent[last]
            elif kind == "test" and parent.get(last) != op["value"]:
                raise ApiError(422, "Invalid", f"test failed at {op['path']}")
    return doc


# -- the store -------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class Watch:
    kind: Kind
    namespace: str | None
    labels: Callable[[dict], bool]
    fields: Callable[[dict], bool]
    queue: asyncio.Queue

    def offer(self, kind: Kind, event_type: str, obj: dict) -> None:
        if kind != self.kind:
            return
        if self.namespace and obj["metadata"].get("namespace") != self.namespace:
            return
        if self.labels(obj) and self.fields(obj):
            self.queue.put_nowait({"type": event_type, "object": obj})


class Store:
    """Objects by (kind, namespace, name), one resourceVersion counter, watch history."""

    def __init__(self) -> None:
        self.kinds: dict[tuple[str, str, str], Kind] = {}
        for kind in BUILTIN:
            self.register(kind)
        self.objects: dict[tuple[str, str, str, str], dict] = {}  # (group, plural, ns, name)
        self.rv = 0
        self.history: deque[tuple[int, Kind, str, dict]] = deque(maxlen=HISTORY)
        self.watches: set[Watch] = set()
        self.listeners: list[Callable[[Kind, str, dict, dict | None], None]] = []
        self.ip_pool: Callable[[], str] | None = None

    # -- kinds -------------------------------------------------------------------------
    def register(self, kind: Kind) -> None:
        self.kinds[(kind.group, kind.version, kind.plural)] = kind

    def unregister(self, group: str, plural: str) -> None:
        for key in [k for k in self.kinds if k[0] == group and k[2] == plural]:
            del self.kinds[key]

    def kind(self, group: str, version: str, plural: str) -> Kind:
        try:
            return self.kinds[(group, version, plural)]
        except KeyError:
            raise ApiError(404, "NotFound", "the server could not find the requested resource",
                           {"group": group, "kind": plural}) from None

    def kind_of(self, api_version: str, kind_name: str) -> Kind | None:
        group, _, version = api_version.rpartition("/")
        for kind in self.kinds.values():
            if kind.group == group and kind.version == version and kind.kind == kind_name:
                return kind
        return None

    def groups(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for kind in self.kinds.values():
            if kind.group:
                versions = found.setdefault(kind.group, [])
                if kind.version not in versions:
                    versions.append(kind.version)
        return found

    # -- reading -----------------------------------------------------------------------
    def _key(self, kind: Kind, namespace: str | None, name: str) -> tuple[str, str, str, str]:
        return (kind.group, kind.plural, (namespace or "") if kind.namespaced else "", name)

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict:
        obj = self.objects.get(self._key(kind, namespace, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{kind.group_resource} "{name}" not found',
                           {"name": name, "group": kind.group, "kind": kind.plural})
        return obj

    def find(self, kind: Kind, namespace: str | None, name: str) -> dict | None:
        return self.objects.get(self._key(kind, namespace, name))

    def list(self, kind: Kind, namespace: str | None = None, labels: str | None = None,
             fields: str | None = None) -> list[dict]:
        match_l, match_f = label_matcher(labels), field_matcher(fields)
        return [
            obj for (g, p, ns, _), obj in sorted(self.objects.items())
            if g == kind.group and p == kind.plural
            and (not namespace or not kind.namespaced or ns == namespace)
            and match_l(obj) and match_f(obj)
        ]

    # -- writing -----------------------------------------------------------------------
    def _emit(self, kind: Kind, event_type: str, obj: dict, old: dict | None) -> None:
        snapshot = copy.deepcopy(obj)
        self.history.append((int(obj["metadata"]["resourceVersion"]), kind, event_type,
                             snapshot))
        for watch in list(self.watches):
            watch.offer(kind, event_type, snapshot)
        for listener in list(self.listeners):
            listener(kind, event_type, snapshot, old)

    def _bump(self, obj: dict) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    def create(self, kind: Kind, namespace: str | None, body: dict) -> dict:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "Invalid", "metadata.name: Required value")
            suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            meta["name"] = meta["generateName"] + suffix
        if kind.namespaced:
            namespace = namespace or meta.get("namespace") or "default"
            if namespace != meta.setdefault("namespace", namespace):
                raise ApiError(400, "BadRequest", "the namespace of the object does not match "
                               "the namespace on the request")
            if not self.find(self.kind("", "v1", "namespaces"), None, namespace):
                raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found',
                               {"name": namespace, "kind": "namespaces"})
        else:
            meta.pop("namespace", None)
        key = self._key(kind, namespace, meta["name"])
        if key in self.objects:
            raise ApiError(409, "AlreadyExists",
                           f'{kind.group_resource} "{meta["name"]}" already exists',
                           {"name": meta["name"], "group": kind.group, "kind": kind.plural})
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
        meta.pop("deletionTimestamp", None)
        self._admit(kind, obj)
        self._bump(obj)
        self.objects[key] = obj
        self._emit(kind, "ADDED", obj, None)
        owners = meta.get("ownerReferences") or []
        if owners and not any(self.by_uid(o.get("uid")) for o in owners):
            # the garbage collector removes what was created for an owner already gone
            asyncio.get_running_loop().call_soon(self._collect, kind, meta["uid"])
        return obj

    def by_uid(self, uid: str | None) -> dict | None:
        return next((o for o in self.objects.values() if o["metadata"]["uid"] == uid), None)

    def _collect(self, kind: Kind, uid: str) -> None:
        obj = self.by_uid(uid)
        if obj is not None:
            with contextlib.suppress(ApiError):
                self.delete(kind, obj["metadata"].get("namespace"), obj["metadata"]["name"])

    def _admit(self, kind: Kind, obj: dict) -> None:
        """Defaulting and pruning, as admission would do it."""
        if kind.schema is not None:
            meta = obj.pop("metadata")
            pruned = prune_and_default(obj, kind.schema)
            obj.clear()
            obj.update(pruned)
            obj["metadata"] = meta
        if kind.kind == "Pod":
            spec = obj.setdefault("spec", {})
            spec.setdefault("restartPolicy", "Always")
            spec.setdefault("terminationGracePeriodSeconds", 30)
            spec.setdefault("serviceAccountName", "default")
            obj.setdefault("status", {"phase": "Pending"})
        elif kind.kind == "Service":
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            if "clusterIP" not in spec and self.ip_pool is not None:
                spec["clusterIP"] = self.ip_pool()
            for port in spec.get("ports", []):
                port.setdefault("protocol", "TCP")
                port.setdefault("targetPort", port["port"])
            obj.setdefault("status", {"loadBalancer": {}})
        elif kind.kind == "Deployment":
            obj.setdefault("spec", {}).setdefault("replicas", 1)
            obj.setdefault("status", {})
        elif kind.kind == "Namespace":
            obj.setdefault("status", {"phase": "Active"})
            # what NetworkPolicies select namespaces by (set by the API server since 1.21)
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = (
                obj["metadata"]["name"])
        elif kind.kind == "Secret":  # stringData is write-only: merged into data, base64
            obj.setdefault("type", "Opaque")
            for key, value in (obj.pop("stringData", None) or {}).items():
                obj.setdefault("data", {})[key] = base64.b64encode(
                    str(value).encode()).decode()

    def replace(self, kind: Kind, namespace: str | None, name: str, body: dict,
                subresource: str | None = None) -> dict:
        old = self.get(kind, namespace, name)
        new = copy.deepcopy(body)
        sent_rv = (new.get("metadata") or {}).get("resourceVersion")
        if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on '
                           f'{kind.group_resource} "{name}": the object has been modified')
        return self._update(kind, old, new, subresource)

    def patch(self, kind: Kind, namespace: str | None, name: str, patch: Any,
              content_type: str, subresource: str | None = None) -> dict:
        old = self.get(kind, namespace, name)
        if "json-patch" in content_type:
            new = json_patch(old, patch)
        else:  # merge and strategic merge (which this server treats as merge)
            new = merge_patch(old, patch)
        return self._update(kind, old, new, subresource)

    def _update(self, kind: Kind, old: dict, new: dict, subresource: str | None) -> dict:
        if subresource == "status":  # only the status changes
            merged = copy.deepcopy(old)
            merged["status"] = new.get("status", {})
            new = merged
        elif "status" in kind.subresources:  # the main resource keeps its status
            new["status"] = copy.deepcopy(old.get("status", {}))
        meta = new.setdefault("metadata", {})
        for frozen in ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp",
                       "deletionGracePeriodSeconds"):
            if frozen in old["metadata"]:
                meta[frozen] = old["metadata"][frozen]
            else:
                meta.pop(frozen, None)
        new["apiVersion"], new["kind"] = kind.api_version, kind.kind
        if kind.schema is not None:
            self._admit(kind, new)
        strip = ("metadata", "status")
        if {k: v for k, v in new.items() if k not in strip} != {
                k: v for k, v in old.items() if k not in strip}:
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        else:
            meta["generation"] = old["metadata"].get("generation", 1)
        same = {k: v for k, v in new.items() if k != "metadata"} == {
            k: v for k, v in old.items() if k != "metadata"}
        if same and {k: v for k, v in meta.items() if k != "resourceVersion"} == {
                k: v for k, v in old["metadata"].items() if k != "resourceVersion"}:
            return old  # a no-op write does not bump the version (as a real server)
        self._bump(new)
        key = self._key(kind, meta.get("namespace"), meta["name"])
        self.objects[key] = new
        self._emit(kind, "MODIFIED", new, old)
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and kind.kind != "Pod":
            self.remove(kind, meta.get("namespace"), meta["name"])
        return new

    def set_status(self, kind: Kind, namespace: str | None, name: str, status: dict) -> None:
        """Controllers' writes (kubelet, deployment controller)."""
        obj = self.find(kind, namespace, name)
        if obj is not None and obj.get("status") != status:
            self._update(kind, obj, {**obj, "status": status}, "status")

    def delete(self, kind: Kind, namespace: str | None, name: str,
               grace: int | None = None) -> dict:
        obj = self.get(kind, namespace, name)
        meta = obj["metadata"]
        if meta.get("finalizers") or (kind.kind == "Pod" and grace != 0):
            if meta.get("deletionTimestamp"):
                return obj
            new = copy.deepcopy(obj)
            new["metadata"]["deletionTimestamp"] = now()
            if kind.kind == "Pod":
                default = obj.get("spec", {}).get("terminationGracePeriodSeconds", 30)
                new["metadata"]["deletionGracePeriodSeconds"] = default if grace is None else grace
            self._bump(new)
            self.objects[self._key(kind, namespace, name)] = new
            self._emit(kind, "MODIFIED", new, obj)
            return new
        return self.remove(kind, namespace, name)

    def remove(self, kind: Kind, namespace: str | None, name: str) -> dict:
        """The object is gone; its dependents are garbage-collected (background)."""
        obj = self.objects.pop(self._key(kind, namespace, name), None)
        if obj is None:
            return {}
        self._bump(obj)
        self._emit(kind, "DELETED", obj, obj)
        uid = obj["metadata"]["uid"]
        for (group, plural, ns, dep_name), dep in list(self.objects.items()):
            owners = dep["metadata"].get("ownerReferences") or []
            if any(o.get("uid") == uid for o in owners):
                dep_kind = next(k for k in self.kinds.values()
                                if k.group == group and k.plural == plural)
                try:
                    self.delete(dep_kind, ns or None, dep_name)
                except ApiError:
                    pass
        if kind is CRD_KIND or kind.kind == "CustomResourceDefinition":
            spec = obj.get("spec", {})
            for (group, plural, ns, dep_name) in list(self.objects):
                if group == spec.get("group") and plural == spec["names"]["plural"]:
                    self.objects.pop((group, plural, ns, dep_name), None)
            self.unregister(spec.get("group", ""), spec["names"]["plural"])
        return obj

    # -- watching ----------------------------------------------------------------------
    def watch(self, kind: Kind, namespace: str | None, labels: str | None,
              fields: str | None, since: str | None) -> Watch:
        watch = Watch(kind, namespace if kind.namespaced else None, label_matcher(labels),
                      field_matcher(fields), asyncio.Queue())
        if since and since != "0":
            oldest = self.history[0][0] if self.history else self.rv + 1
            if int(since) < oldest - 1 and len(self.history) == self.history.maxlen:
                watch.queue.put_nowait({"type": "ERROR", "object": ApiError(
                    410, "Expired", f"too old resource version: {since}").status()})
                return watch
            for rv, ev_kind, event_type, obj in self.history:
                if rv > int(since):
                    watch.offer(ev_kind, event_type, obj)
        else:  # no version: the current objects as ADDED, then changes
            for obj in self.list(kind, namespace):
                watch.offer(kind, "ADDED", copy.deepcopy(obj))
        self.watches.add(watch)
        return watch
