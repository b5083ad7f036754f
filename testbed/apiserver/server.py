"""The Kubernetes API server: HTTPS (aiohttp) over the /registry store in etcd.

Request flow: authenticate (client cert or ServiceAccount token) -> route the path
(discovery, OpenAPI, health, a resource) -> the verb handler in :mod:`handlers` ->
a JSON answer, a Table, a watch stream, or a Status error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from datastore import errors as ds_errors
from testbed.apiserver import discovery, schema, status
from testbed.apiserver.auth import (
    TokenError,
    TokenVerifier,
    User,
    user_from_claims,
    user_from_peercert,
)
from testbed.apiserver.handlers import Handlers, Request
from testbed.apiserver.metrics import LongRunning
from testbed.apiserver.registry import Registry
from testbed.apiserver.responses import json_response, version_info
from testbed.apiserver.status import APIError
from testbed.apiserver.storage import Storage

log = logging.getLogger("apiserver")

MAX_BODY = 3 * 1024 * 1024
"""kube-apiserver's request body limit (3 MiB, as etcd's request limit)."""


PUBLIC_PATHS = ("/healthz", "/livez", "/readyz", "/version")


@dataclass
class Options:
    """The server's settings (flags named as kube-apiserver's)."""

    etcd_servers: list[str]
    bind_address: str = "0.0.0.0"
    secure_port: int = 6443
    cert_dir: str = "/etc/kubernetes/pki"
    tls_cert_file: str = ""
    tls_private_key_file: str = ""
    client_ca_file: str = ""
    service_account_key_file: str = ""
    service_account_signing_key_file: str = ""
    service_account_issuer: str = "https://kubernetes.default.svc.cluster.local"
    service_cluster_ip_range: str = "10.96.0.0/12"
    advertise_address: str = ""
    anonymous_auth: bool = False
    kubelet_client_certificate: str = ""
    kubelet_client_key: str = ""
    kubelet_certificate_authority: str = ""
    kubelet_port: int = 10250
    enable_garbage_collector: bool = True
    etcd_compaction_interval: float = 300.0
    extra: dict[str, Any] = field(default_factory=dict)

    def path(self, explicit: str, name: str) -> str:
        return explicit or os.path.join(self.cert_dir, name)


def preload_schemas(registry: Registry) -> None:
    """The built-in kinds' schemas (request checks, OpenAPI), from the on-disk cache; on a
    miss they are built (importing the ``kubernetes`` client's models: seconds, a minute under
    TCG) and the cache written. scripts/setup.sh calls it so a lab's first start finds it."""
    schema.preload([rt.model for rt in registry.all() if rt.model] + ["V1ObjectMeta"])


TLS_READ_BUFFER = 64 * 1024


def small_tls_read_buffers() -> None:
    """Make asyncio's TLS transports allocate a 64 KiB read buffer per connection, not 256 KiB.

    ``asyncio.sslproto.SSLProtocol`` zeroes a buffer of its class attribute ``max_size`` for every
    connection it accepts (CPython 3.11). At a 50-node lab's start, ~2,000 connections in 25 s,
    that zeroing (64 fresh pages each, faulted in) was 11 % of the API server's samples under
    py-spy. A TLS record holds at most 16 KiB, so 64 KiB still reads several per call. The
    attribute is the class's: other asyncio TLS connections of the process (a test running
    the server in-process) get 64 KiB buffers too, which is as harmless."""
    import asyncio.sslproto

    if getattr(asyncio.sslproto.SSLProtocol, "max_size", 0) > TLS_READ_BUFFER:
        asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


class APIServer:
    """One API server instance (an aiohttp application plus its storage)."""

    def __init__(self, opts: Options):
        self.opts = opts
        self.registry = Registry()
        preload_schemas(self.registry)
        self.longrunning = LongRunning()  # /metrics: the watches being served
        self.storage = Storage(opts.etcd_servers)
        with open(opts.path(opts.service_account_key_file, "sa.pub"), "rb") as f:
            self.tokens = TokenVerifier(f.read())
        sign = opts.path(opts.service_account_signing_key_file, "sa.key")
        self.sa_signing_key = open(sign, "rb").read() if os.path.exists(sign) else None
        self.handlers = Handlers(self)
        self.started = time.time()
        self.ready = False
        self.app = web.Application(client_max_size=MAX_BODY + 1024)
        self.app.router.add_route("*", "/{tail:.*}", self.dispatch)
        self.app.on_startup.append(self._startup)
        self.app.on_cleanup.append(self._cleanup)
        self._tasks: list[asyncio.Task] = []

    # --- lifecycle ------------------------------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext:
        """TLS with the serving cert; client certs verified against the cluster CA (optional)."""
        o = self.opts
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(o.path(o.tls_cert_file, "apiserver.crt"), o.path(o.tls_private_key_file, "apiserver.key"))
        ctx.load_verify_locations(o.path(o.client_ca_file, "ca.crt"))
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    async def _startup(self, app: web.Application) -> None:
        await self.storage.hub.start()
        await self.handlers.bootstrap()
        self._tasks += self.handlers.start_controllers()
        # OpenAPI documents are built at the first /openapi request (kubectl apply/explain),
        # not during the start: a lab's start makes none and its CPU is the bottleneck then
        self.ready = True

    async def _cleanup(self, app: web.Application) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self.storage.close()

    async def start(self) -> web.AppRunner:
        """Start serving (returns the runner; ``await runner.cleanup()`` stops)."""
        runner = web.AppRunner(self.app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        small_tls_read_buffers()
        site = web.TCPSite(runner, self.opts.bind_address, self.opts.secure_port, ssl_context=self.ssl_context(),
                           backlog=1024, reuse_address=True)
        await site.start()
        return runner

    # --- authentication -------------------------------------------------------------------
    async def authenticate(self, req: web.Request) -> User | None:
        authz = req.headers.get("Authorization", "")
        if authz[:7].lower() == "bearer ":
            token = authz[7:].strip()
            try:
                claims = self.tokens.verify(token)
            except TokenError as exc:
                log.info("token rejected: %s", exc)
                return None
            user = user_from_claims(claims)
            if not await self.handlers.service_account_valid(claims):
                return None
            return user
        transport = req.transport
        if transport is not None:
            # the client certificate as the TLS transport decoded it at the handshake (one
            # getpeercert() per connection, not one per request)
            cert = transport.get_extra_info("peercert")
            if cert:
                u = user_from_peercert(cert)
                if u is not None:
                    return u
        return None

    # --- dispatch -------------------------------------------------------------------------
    async def dispatch(self, req: web.Request) -> web.StreamResponse:
        if log.isEnabledFor(logging.DEBUG):  # its arguments cost more than the check
            log.debug("%s %s accept=%s ctype=%s", req.method, req.path_qs, req.headers.get("Accept"),
                      req.headers.get("Content-Type"))
        try:
            user = await self.authenticate(req)
            path = req.path.rstrip("/") or "/"
            if user is None:
                if self.opts.anonymous_auth and (path in PUBLIC_PATHS or path.startswith(PUBLIC_PATHS[:3])):
                    user = User("system:anonymous", ["system:unauthenticated"])
                elif self.opts.anonymous_auth:
                    raise APIError(403, "Forbidden", f'forbidden: User "system:anonymous" cannot '
                                   f'{req.method.lower()} path "{req.path}"', {})
                else:
                    raise status.unauthorized()
            return await self._route(req, path, user)
        except APIError as err:
            return json_response(err.status(), err.code)
        except ds_errors.DatastoreUnavailable as exc:  # etcd down: say so, the client retries
            err = status.unavailable(f"the datastore (etcd) is unavailable: {exc}")
            return json_response(err.status(), err.code)
        except asyncio.CancelledError:
            raise
        except ConnectionResetError:
            raise
        except Exception as exc:  # a bug: answer 500 as a Status, log it
            log.exception("internal error on %s %s", req.method, req.path)
            err = status.internal(f"{type(exc).__name__}: {exc}")
            return json_response(err.status(), err.code)

    async def _route(self, req: web.Request, path: str, user: User) -> web.StreamResponse:
        if path == "/version":
            return json_response(version_info())
        if path == "/metrics":
            return web.Response(text=self.longrunning.exposition(), content_type="text/plain",
                                charset="utf-8", headers={"X-Content-Type-Options": "nosniff"})
        if path in ("/healthz", "/livez", "/readyz") or path.startswith(("/healthz/", "/livez/", "/readyz/")):
            return await self._health(req, path)
        if path == "/":
            return json_response({"paths": sorted(["/api", "/api/v1", "/apis", "/healthz", "/livez", "/readyz",
                                                   "/metrics", "/version", "/openapi/v2", "/openapi/v3"]
                                                  + [f"/apis/{g}" for g in self.registry.groups() if g]
                                                  + [f"/apis/{g}/{v}" for g, vs in self.registry.groups().items()
                                                     if g for v in vs])})
        if path.startswith("/openapi/"):
            from testbed.apiserver import openapi

            return await openapi.serve(self, req, path)
        parts = path.strip("/").split("/")
        if parts[0] == "api":
            if len(parts) == 1:
                return discovery.api_root(self, req)
            if len(parts) == 2:
                if parts[1] != "v1":
                    raise status.page_not_found()
                return discovery.resource_list(self, "", "v1")
            return await self.handlers.handle(Request.parse(self, req, "", parts[1], parts[2:], user))
        if parts[0] == "apis":
            if len(parts) == 1:
                return discovery.apis_root(self, req)
            if len(parts) == 2:
                return discovery.group(self, parts[1])
            if len(parts) == 3:
                return discovery.resource_list(self, parts[1], parts[2])
            return await self.handlers.handle(Request.parse(self, req, parts[1], parts[2], parts[3:], user))
        raise status.page_not_found()

    async def _health(self, req: web.Request, path: str) -> web.Response:
        checks = [("ping", True), ("etcd", None), ("poststarthook/watch-cache", self.storage.hub.ready.is_set())]
        try:
            await asyncio.wait_for(self.storage.revision(), 2.0)
            checks[1] = ("etcd", True)
        except Exception:  # noqa: BLE001
            checks[1] = ("etcd", False)
        ok = all(v for _, v in checks) and (path.startswith("/livez") or self.ready)
        if req.query.get("verbose") is not None:
            lines = [f"[{'+' if v else '-'}]{n} {'ok' if v else 'failed'}" for n, v in checks]
            lines.append(f"{path.strip('/').split('/')[0]} check {'passed' if ok else 'failed'}")
            return web.Response(text="\n".join(lines) + "\n", status=200 if ok else 500,
                                content_type="text/plain")
        return web.Response(text="ok" if ok else "[-]etcd failed: reason withheld\nhealthz check failed",
                            status=200 if ok else 500, content_type="text/plain")
