"""An in-process Kubernetes API server (aiohttp) over :class:`~.store.Store`.

It serves what kr8s, kopf and the dask operator use: discovery (``/version/``,
``/api/``, ``/apis/`` with and without the trailing slash), CRUD with selectors,
merge/JSON patches, the status subresource, watches, ``pods/log`` and the
``pods/portforward`` websocket in the channel framing kr8s expects. Faults can be
injected per verb and resource (403s, delays) to reproduce what a real cluster does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from .store import CRD_KIND, ApiError, Kind, Store

logger = logging.getLogger(__name__)

VERSION = {"major": "1", "minor": "31", "gitVersion": "v1.31.0-scalekit-emulated",
           "platform": "linux/amd64", "goVersion": "go1.22", "compiler": "gc"}


@dataclasses.dataclass
class Fault:
    """Make requests that match go wrong: ``code`` (e.g. 403) or a ``delay`` first."""

    verb: str
    resource: str  # plural, or plural/subresource
    group: str | None = None
    code: int | None = 403
    delay: float = 0.0
    when: Callable[[dict[str, Any]], bool] | None = None  # on the request's JSON body
    user: str = "system:serviceaccount:default:notebook"
    hits: int = 0


@dataclasses.dataclass
class Request:
    verb: str
    kind: Kind | None
    group: str
    version: str
    plural: str
    namespace: str | None
    name: str | None
    sub: str | None


class ApiServer:
    def __init__(self, store: Store, logs: Callable[[str, str, bool], str | None]) -> None:
        self.store = store
        self.logs = logs  # (namespace, pod, previous) -> log text or None
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []  # (verb, resource) seen, for tests
        self.app = web.Application(client_max_size=64 * 1024**2)
        self.app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._streams: set[asyncio.Task] = set()

    async def start(self) -> int:
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def stop(self) -> None:
        for task in list(self._streams):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- dispatch ----------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            discovery = self._discovery(request.path)
            if discovery is not None:
                return web.json_response(discovery)
            req = self._parse(request)
            body: Any = None
            if request.method in ("POST", "PUT", "PATCH") or (
                    request.method == "DELETE" and request.can_read_body):
                raw = await request.read()
                body = json.loads(raw) if raw else None
            self.requests.append((req.verb, req.plural + (f"/{req.sub}" if req.sub else "")))
            await self._faults(req, body)
            if req.kind is None:
                raise ApiError(404, "NotFound", "the server could not find the requested "
                               "resource", {"group": req.group, "kind": req.plural})
            return await self._serve(request, req, body)
        except ApiError as exc:
            return web.json_response(exc.status(), status=exc.code)
        except (json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
            logger.exception("bad request %s %s", request.method, request.path_qs)
            return web.json_response(ApiError(400, "BadRequest", str(exc)).status(), status=400)

    def _discovery(self, path: str) -> dict | None:
        path = path.rstrip("/") or "/"
        if path == "/version":
            return VERSION
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}]}
        groups = self.store.groups()
        if path == "/apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                self._group(name, versions) for name, versions in sorted(groups.items())]}
        parts = path.strip("/").split("/")
        if parts[0] == "apis" and len(parts) == 2 and parts[1] in groups:
            return {"kind": "APIGroup", "apiVersion": "v1",
                    **self._group(parts[1], groups[parts[1]])}
        if (parts[0] == "api" and len(parts) == 2) or (parts[0] == "apis" and len(parts) == 3):
            group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
            kinds = [k for k in self.store.kinds.values()
                     if k.group == group and k.version == version]
            if not kinds:
                raise ApiError(404, "NotFound", "the server could not find the requested "
                               "resource")
            return {"kind": "APIResourceList", "apiVersion": "v1",
                    "groupVersion": kinds[0].api_version,
                    "resources": [e for k in kinds for e in k.discovery()]}
        return None

    @staticmethod
    def _group(name: str, versions: list[str]) -> dict:
        listed = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
        return {"name": name, "versions": listed, "preferredVersion": listed[0]}

    def _parse(self, request: web.Request) -> Request:
        parts = request.path.strip("/").split("/")
        if parts[0] == "api" and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find {request.path}")
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status",
                                                                           "finalize"):
            namespace, rest = rest[1], rest[2:]
        plural = rest[0]
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        kind = self.store.kinds.get((group, version, plural))
        query = request.query
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(request.method)
        if request.method == "DELETE":
            verb = "delete" if name else "deletecollection"
        elif request.method == "GET":
            if sub == "portforward":
                verb = "create"  # websocket upgrades of pods/portforward need "create"
            elif name:
                verb = "get"
            else:
                verb = "watch" if query.get("watch") in ("true", "1") else "list"
        return Request(verb or request.method.lower(), kind, group, version, plural,
                       namespace, name, sub)

    async def _faults(self, req: Request, body: Any) -> None:
        resource = req.plural + (f"/{req.sub}" if req.sub else "")
        for fault in list(self.faults):
            if fault.verb not in (req.verb, "*") or fault.resource not in (resource, "*"):
                continue
            if fault.group is not None and fault.group != req.group:
                continue
            try:
                if fault.when is not None and not fault.when(body or {}):
                    continue
            except (AttributeError, KeyError, TypeError):  # e.g. a JSON patch (a list)
                continue
            fault.hits += 1
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.code == 403:
                where = f' in the namespace "{req.namespace}"' if req.namespace else ""
                group = f'"{req.group}"' if req.group else '""'
                named = f' "{req.name}"' if req.name else ""
                dotted = f".{req.group}" if req.group else ""
                raise ApiError(403, "Forbidden", (
                    f"{req.plural}{dotted}{named} is forbidden: User \"{fault.user}\" "
                    f"cannot {req.verb} resource \"{resource}\" in API group {group}{where}"),
                    {"name": req.name or "", "group": req.group, "kind": req.plural})
            if fault.code:
                raise ApiError(fault.code, "InternalError", "injected fault")

    # -- resources ---------------------------------------------------------------------
    async def _serve(self, request: web.Request, req: Request, body: Any) -> web.StreamResponse:
        store, kind, q = self.store, req.kind, request.query
        assert kind is not None
        ns = req.namespace if kind.namespaced else None
        if req.sub == "log":
            return self._log(req, q)
        if req.sub == "portforward":
            return await self._portforward(request, req)
        if req.sub not in (None, "status") and req.sub not in kind.subresources:
            raise ApiError(404, "NotFound", f"no subresource {req.sub}")
        if req.verb == "get":
            return web.json_response(store.get(kind, ns, req.name or ""))
        if req.verb == "list":
            items = store.list(kind, ns, q.get("labelSelector"), q.get("fieldSelector"))
            return web.json_response({
                "kind": f"{kind.kind}List", "apiVersion": kind.api_version,
                "metadata": {"resourceVersion": str(store.rv), "continue": ""},
                "items": items})
        if req.verb == "watch":
            return await self._watch(request, kind, ns, q)
        if req.verb == "create":
            obj = store.create(kind, ns, body or {})
            if kind is CRD_KIND:
                obj = self.register_crd(obj)
            return web.json_response(obj, status=201)
        if req.verb == "update":
            return web.json_response(store.replace(kind, ns, req.name or "", body, req.sub))
        if req.verb == "patch":
            content_type = request.headers.get("Content-Type", "application/merge-patch+json")
            return web.json_response(store.patch(kind, ns, req.name or "", body,
                                                 content_type, req.sub))
        if req.verb == "delete":
            grace = (body or {}).get("gracePeriodSeconds", q.get("gracePeriodSeconds"))
            obj = store.delete(kind, ns, req.name or "", None if grace is None else int(grace))
            return web.json_response(obj or {"kind": "Status", "status": "Success"})
        raise ApiError(405, "MethodNotAllowed", f"{req.verb} is not supported here")

    def register_crd(self, crd: dict) -> dict:
        spec = crd["spec"]
        for version in spec["versions"]:
            if not version.get("served", True):
                continue
            subresources = frozenset((version.get("subresources") or {}).keys())
            self.store.register(Kind(
                spec["group"], version["name"], spec["names"]["plural"],
                spec["names"]["kind"], spec.get("scope", "Namespaced") == "Namespaced",
                subresources, tuple(spec["names"].get("shortNames", [])),
                (version.get("schema") or {}).get("openAPIV3Schema")))
        status = {"conditions": [{"type": "Established", "status": "True"},
                                 {"type": "NamesAccepted", "status": "True"}],
                  "acceptedNames": spec["names"]}
        self.store.set_status(CRD_KIND, None, crd["metadata"]["name"], status)
        return self.store.get(CRD_KIND, None, crd["metadata"]["name"])

    async def _watch(self, request: web.Request, kind: Kind, ns: str | None,
                     q: Any) -> web.StreamResponse:
        watch = self.store.watch(kind, ns, q.get("labelSelector"), q.get("fieldSelector"),
                                 q.get("resourceVersion"))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(q.get("timeoutSeconds") or 1800)
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(watch.queue.get(), remaining)
                except TimeoutError:
                    break
                await response.write((json.dumps(event) + "\n").encode())
                if event["type"] == "ERROR":
                    break
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.store.watches.discard(watch)
            self._streams.discard(task)
        return response

    def _log(self, req: Request, q: Any) -> web.Response:
        pod = self.store.get(req.kind, req.namespace, req.name or "")  # type: ignore[arg-type]
        text = self.logs(req.namespace or "", req.name or "", q.get("previous") == "true")
        if text is None:
            container = pod["spec"]["containers"][0]["name"]
            raise ApiError(400, "BadRequest", f'container "{container}" in pod '
                           f'"{req.name}" is waiting to start: ContainerCreating')
        if q.get("tailLines"):
            text = "\n".join(text.splitlines()[-int(q["tailLines"]):])
        return web.Response(text=text, content_type="text/plain")

    async def _portforward(self, request: web.Request, req: Request) -> web.StreamResponse:
        pod = self.store.get(req.kind, req.namespace, req.name or "")  # type: ignore[arg-type]
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io", "portforward.k8s.io"))
        await ws.prepare(request)
        port = int(request.query.get("ports", "0").split(",")[0])
        header = port.to_bytes(2, "little")
        await ws.send_bytes(b"\x00" + header)
        await ws.send_bytes(b"\x01" + header)
        ip = pod.get("status", {}).get("podIP")
        try:
            if not ip:
                raise OSError("pod has no IP")
            reader, writer = await asyncio.open_connection(ip, port)
        except OSError as exc:
            await ws.send_bytes(b"\x01" + (
                f"error forwarding port {port} to pod {req.name}: {exc}").encode())
            await ws.close()
            return ws

        async def ws_to_tcp() -> None:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY and msg.data[:1] == b"\x00":
                    writer.write(msg.data[1:])
                    await writer.drain()
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break

        async def tcp_to_ws() -> None:
            while data := await reader.read(1 << 20):
                await ws.send_bytes(b"\x00" + data)

        tasks = [asyncio.ensure_future(ws_to_tcp()), asyncio.ensure_future(tcp_to_ws())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()
            await ws.close()
        return ws
