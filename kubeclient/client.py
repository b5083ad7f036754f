"""The API client: CRUD, patch, server-side apply, list, watch over kept-alive HTTPS
connections (one per thread), errors as typed exceptions.

Resources are named as the REST API names them: ``api_version`` (``v1``, ``apps/v1``)
and the plural (``pods``), e.g. ``c.get("v1", "pods", "web-0", namespace="default")``.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

from kubeclient import errors
from kubeclient.config import Config

JSON = "application/json"
PATCH_TYPES = {"strategic": "application/strategic-merge-patch+json", "merge": "application/merge-patch+json",
               "json": "application/json-patch+json", "apply": "application/apply-patch+yaml"}

# kind -> (apiVersion, plural, namespaced) of the built-in kinds (for by-kind helpers)
BUILTIN: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("v1", "namespaces", False), "Node": ("v1", "nodes", False), "Pod": ("v1", "pods", True),
    "Service": ("v1", "services", True), "Endpoints": ("v1", "endpoints", True),
    "ConfigMap": ("v1", "configmaps", True), "Secret": ("v1", "secrets", True),
    "ServiceAccount": ("v1", "serviceaccounts", True), "Event": ("v1", "events", True),
    "Deployment": ("apps/v1", "deployments", True), "ReplicaSet": ("apps/v1", "replicasets", True),
    "DaemonSet": ("apps/v1", "daemonsets", True), "StatefulSet": ("apps/v1", "statefulsets", True),
    "ControllerRevision": ("apps/v1", "controllerrevisions", True),
    "Job": ("batch/v1", "jobs", True), "CronJob": ("batch/v1", "cronjobs", True),
    "NetworkPolicy": ("networking.k8s.io/v1", "networkpolicies", True),
    "PodDisruptionBudget": ("policy/v1", "poddisruptionbudgets", True),
    "Role": ("rbac.authorization.k8s.io/v1", "roles", True),
    "ClusterRole": ("rbac.authorization.k8s.io/v1", "clusterroles", False),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", "rolebindings", True),
    "ClusterRoleBinding": ("rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "EndpointSlice": ("discovery.k8s.io/v1", "endpointslices", True),
    "Lease": ("coordination.k8s.io/v1", "leases", True),
    "PriorityClass": ("scheduling.k8s.io/v1", "priorityclasses", False),
    "CSIDriver": ("storage.k8s.io/v1", "csidrivers", False), "CSINode": ("storage.k8s.io/v1", "csinodes", False),
    "CustomResourceDefinition": ("apiextensions.k8s.io/v1", "customresourcedefinitions", False),
    "APIService": ("apiregistration.k8s.io/v1", "apiservices", False),
}


def resource_path(api_version: str, plural: str, namespace: str | None = None, name: str | None = None,
                  sub: str | None = None) -> str:
    """``/api/v1/namespaces/ns/pods/name/status`` and the like."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    p = base + (f"/namespaces/{urllib.parse.quote(namespace, safe='')}" if namespace else "") + f"/{plural}"
    if name:
        p += "/" + urllib.parse.quote(name, safe="")
    if sub:
        p += "/" + sub
    return p


def _query(params: dict[str, Any]) -> str:
    items = []
    for k, v in params.items():
        if v is None or v == "":
            continue
        if isinstance(v, bool):
            v = "true" if v else "false"
        if isinstance(v, list | tuple):
            items += [(k, str(x)) for x in v]
        else:
            items.append((k, str(v)))
    return ("?" + urllib.parse.urlencode(items)) if items else ""


def _unbracket_ipv4(server: str) -> str:
    """``https://[10.96.0.1]:443`` -> ``https://10.96.0.1:443``: Calico's install-cni writes the
    host in brackets whatever its family (Go's URL parser takes that; Python's refuses an IPv4
    address in brackets)."""
    import re

    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)\[(\d{1,3}(?:\.\d{1,3}){3})\]", r"\1\2", server)


class _TLS:
    """The TLS context a process's clients of one server with the same credentials share,
    and the session (a TLS 1.3 ticket) their new connections resume: the API server then
    skips its certificate signature and the client certificate's check (~1.1 ms of its CPU
    per connection; our processes open dozens of connections per node at a lab's start, from
    several clients each). A server that does not know the ticket (restarted) just does a
    full handshake."""

    __slots__ = ("context", "session")

    def __init__(self, context: ssl.SSLContext):
        self.context = context
        self.session: ssl.SSLSession | None = None


_TLS_SHARED: dict[tuple, _TLS] = {}
_TLS_LOCK = threading.Lock()


def _tls_for(config: Config) -> _TLS:
    """The shared :class:`_TLS` of ``config``'s server and TLS credentials (files by path,
    modification time and size: a rewritten certificate gets a new context)."""
    def file_key(path: str | None) -> tuple | None:
        if not path:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return (path,)
        return (path, st.st_mtime_ns, st.st_size)

    key = (config.server, config.insecure, config.ca_data, file_key(config.ca_file), config.cert_data,
           config.key_data, file_key(config.cert_file), file_key(config.key_file))
    with _TLS_LOCK:
        tls = _TLS_SHARED.get(key)
        if tls is None:
            tls = _TLS_SHARED[key] = _TLS(config.ssl_context())
        return tls


class _ResumingHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection resuming the last TLS session of its clients (see :class:`_TLS`)."""

    def __init__(self, tls: _TLS, host: str, port: int, timeout: float | None):
        super().__init__(host, port, timeout=timeout, context=tls.context)
        self._tls = tls

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host, session=self._tls.session)


class Client:
    """A Kubernetes API client (thread-safe: each thread keeps its own connection)."""

    def __init__(self, config: Config):
        self.config = config
        try:
            url = urllib.parse.urlsplit(_unbracket_ipv4(config.server))
            url.port  # noqa: B018 - a bad port raises here, not at the first request
        except ValueError as exc:
            raise errors.ConfigError(f"invalid server URL {config.server!r}: {exc}") from None
        if url.scheme not in ("https", "http") or not url.hostname:
            raise errors.ConfigError(f"invalid server URL {config.server!r}")
        self.scheme, self.host = url.scheme, url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.base = url.path.rstrip("/")
        self._tls: _TLS | None = _tls_for(config) if url.scheme == "https" else None
        self._local = threading.local()

    @classmethod
    def from_config(cls, path: str | None = None, context: str | None = None) -> Client:
        """A client from a kubeconfig or the in-cluster config (see :func:`kubeclient.config.load`)."""
        from kubeclient.config import load

        return cls(load(path, context))

    # --- transport --------------------------------------------------------------------------
    def _new_conn(self, timeout: float | None) -> http.client.HTTPConnection:
        if self._tls is not None:
            return _ResumingHTTPSConnection(self._tls, self.host, self.port, timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _remember_session(self, conn: http.client.HTTPConnection) -> None:
        """Keep ``conn``'s TLS session for the next connection once its ticket came (TLS 1.3
        sends it after the handshake: it is there once an answer was read)."""
        sock = conn.sock
        if self._tls is not None and sock is not None and not sock.session_reused:
            sess = sock.session
            if sess is not None and sess.has_ticket:
                self._tls.session = sess

    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._new_conn(self.config.timeout)
            self._local.conn = c
        return c

    def _take_idle(self) -> http.client.HTTPConnection | None:
        """The calling thread's kept-alive connection, handed over (the thread's next request
        opens another). A watch streams on it, so an informer's list and the watch that follows
        share one connection and one TLS handshake, as client-go's do on their one HTTP/2
        connection; the list's connection no longer sits idle beside the watch."""
        c = getattr(self._local, "conn", None)
        if c is None or c.sock is None:
            return None
        self._local.conn = None
        return c

    def _drop(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
        self._local.conn = None

    def _headers(self, ctype: str | None = None, accept: str = JSON) -> dict[str, str]:
        h = {"Accept": accept, "User-Agent": self.config.user_agent}
        tok = self.config.bearer()
        if tok:
            h["Authorization"] = f"Bearer {tok}"
        if ctype:
            h["Content-Type"] = ctype
        return h

    def request(self, method: str, path: str, body: Any = None, *, params: dict[str, Any] | None = None,
                ctype: str = JSON, accept: str = JSON, raw: bool = False) -> Any:
        """One request; returns the decoded JSON answer (or bytes with ``raw``); raises ApiError."""
        data = None
        if body is not None:
            data = body if isinstance(body, bytes | str) else json.dumps(body, separators=(",", ":"))
            if isinstance(data, str):
                data = data.encode()
        url = self.base + path + _query(params or {})
        headers = self._headers(ctype if data is not None else None, accept)
        for attempt in range(2):
            conn = self._conn()
            reused = conn.sock is not None
            try:
                conn.request(method, url, data, headers)
                resp = conn.getresponse()
                payload = resp.read()
                if not reused:
                    self._remember_session(conn)
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                if reused and attempt == 0 and not isinstance(exc, TimeoutError | socket.timeout):
                    continue  # a stale kept-alive connection
                raise errors.ConnectionFailed(f"cannot reach the API server at {self.config.server}: {exc}") \
                    from None
            if resp.getheader("Connection", "").lower() == "close":
                self._drop()
            if resp.status >= 400:
                raise self._error(resp.status, payload)
            if raw:
                return payload
            return json.loads(payload) if payload else None
        raise errors.ConnectionFailed(f"cannot reach the API server at {self.config.server}")

    @staticmethod
    def _error(code: int, payload: bytes) -> errors.ApiError:
        try:
            st = json.loads(payload)
        except ValueError:
            st = None
        return errors.from_status(code, st if isinstance(st, dict) else None,
                                  payload[:200].decode(errors="replace"))

    # --- verbs ------------------------------------------------------------------------------
    def get(self, api_version: str, plural: str, name: str, namespace: str | None = None,
            sub: str | None = None) -> dict:
        return self.request("GET", resource_path(api_version, plural, namespace, name, sub))

    def list(self, api_version: str, plural: str, namespace: str | None = None, *, label_selector: str = "",
             field_selector: str = "", limit: int = 0, continue_: str = "", resource_version: str = "") -> dict:
        """One page (all items when ``limit`` is 0)."""
        return self.request("GET", resource_path(api_version, plural, namespace), params={
            "labelSelector": label_selector, "fieldSelector": field_selector, "limit": limit or None,
            "continue": continue_, "resourceVersion": resource_version})

    def list_all(self, api_version: str, plural: str, namespace: str | None = None, *, label_selector: str = "",
                 field_selector: str = "", page: int = 500) -> tuple[list[dict], str]:
        """Every item, paging with limit/continue; returns (items, list resourceVersion)."""
        items: list[dict] = []
        cont = ""
        while True:
            doc = self.list(api_version, plural, namespace, label_selector=label_selector,
                            field_selector=field_selector, limit=page, continue_=cont)
            items += doc.get("items") or []
            cont = (doc.get("metadata") or {}).get("continue") or ""
            if not cont:
                return items, (doc.get("metadata") or {}).get("resourceVersion", "")

    def create(self, obj: dict, namespace: str | None = None, *, plural: str | None = None,
               field_validation: str = "Strict", field_manager: str = "") -> dict:
        api, res, ns = self._addr(obj, namespace, plural)
        return self.request("POST", resource_path(api, res, ns), obj,
                            params={"fieldValidation": field_validation, "fieldManager": field_manager})

    def replace(self, obj: dict, namespace: str | None = None, *, plural: str | None = None,
                sub: str | None = None, field_validation: str = "Strict") -> dict:
        """PUT (a CAS when ``metadata.resourceVersion`` is set)."""
        api, res, ns = self._addr(obj, namespace, plural)
        return self.request("PUT", resource_path(api, res, ns, obj["metadata"]["name"], sub), obj,
                            params={"fieldValidation": field_validation})

    def update_status(self, obj: dict, namespace: str | None = None, *, plural: str | None = None) -> dict:
        return self.replace(obj, namespace, plural=plural, sub="status")

    def patch(self, api_version: str, plural: str, name: str, patch: Any, namespace: str | None = None, *,
              patch_type: str = "merge", sub: str | None = None, field_manager: str = "",
              force: bool = False) -> dict:
        """PATCH with ``patch_type`` strategic | merge | json | apply (server-side apply)."""
        ctype = PATCH_TYPES[patch_type]
        params: dict[str, Any] = {"fieldManager": field_manager or ("kubeclient" if patch_type == "apply" else "")}
        if force:
            params["force"] = True
        return self.request("PATCH", resource_path(api_version, plural, namespace, name, sub), patch,
                            params=params, ctype=ctype)

    def apply(self, obj: dict, namespace: str | None = None, *, plural: str | None = None,
              field_manager: str = "kubeclient", force: bool = True) -> dict:
        """Server-side apply of ``obj``."""
        api, res, ns = self._addr(obj, namespace, plural)
        return self.patch(api, res, obj["metadata"]["name"], obj, ns, patch_type="apply",
                          field_manager=field_manager, force=force)

    def delete(self, api_version: str, plural: str, name: str, namespace: str | None = None, *,
               grace_period: int | None = None, propagation: str | None = None,
               preconditions: dict | None = None) -> dict:
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_period is not None:
            body["gracePeriodSeconds"] = grace_period
        if propagation:
            body["propagationPolicy"] = propagation
        if preconditions:
            body["preconditions"] = preconditions
        return self.request("DELETE", resource_path(api_version, plural, namespace, name), body)

    def _addr(self, obj: dict, namespace: str | None, plural: str | None) -> tuple[str, str, str | None]:
        api, kind = obj.get("apiVersion", ""), obj.get("kind", "")
        b = BUILTIN.get(kind)
        if b is not None and b[0] != api:
            b = None
        if plural is None:
            if b is None:
                raise errors.KubeError(f"give plural= for kind {kind} ({api})")
            plural = b[1]
        meta_ns = (obj.get("metadata") or {}).get("namespace")
        namespaced = b[2] if b is not None else bool(namespace or meta_ns)
        ns = (namespace or meta_ns or self.config.namespace) if namespaced else None
        return api, plural, ns

    # --- watch ------------------------------------------------------------------------------
    def watch(self, api_version: str, plural: str, namespace: str | None = None, *, resource_version: str = "",
              label_selector: str = "", field_selector: str = "", bookmarks: bool = True,
              timeout_seconds: int | None = None, send_initial_events: bool | None = None) -> Watch:
        """A watch stream (iterate for ``(type, object)``; ``close()`` from any thread)."""
        params: dict[str, Any] = {"watch": True, "resourceVersion": resource_version,
                                  "labelSelector": label_selector, "fieldSelector": field_selector,
                                  "allowWatchBookmarks": bookmarks or None, "timeoutSeconds": timeout_seconds}
        if send_initial_events is not None:
            params["sendInitialEvents"] = send_initial_events
            params["resourceVersionMatch"] = "NotOlderThan"
        return Watch(self, self.base + resource_path(api_version, plural, namespace) + _query(params))


class Watch:
    """One streaming watch. Iterating yields ``(type, obj)``; an ERROR event with a 410
    Status raises :class:`errors.Gone` (re-list and watch again)."""

    def __init__(self, client: Client, url: str):
        self.client, self.url = client, url
        self._conn: http.client.HTTPConnection | None = None
        self._closed = False

    def close(self) -> None:
        self._closed = True
        c = self._conn
        if c is not None and c.sock is not None:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        conn = self.client._take_idle()
        reused = conn is not None
        while True:
            if conn is None:
                conn = self.client._new_conn(self.client.config.timeout)
            self._conn = conn
            try:
                conn.request("GET", self.url, headers=self.client._headers())
                resp = conn.getresponse()
                break
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = None
                if reused and not self._closed and not isinstance(exc, TimeoutError | socket.timeout):
                    reused = False  # a stale kept-alive connection: once more on a new one
                    continue
                raise errors.ConnectionFailed(f"watch: cannot reach the API server: {exc}") from None
        try:
            if resp.status >= 400:
                raise self.client._error(resp.status, resp.read())
            if not reused:
                self.client._remember_session(conn)
            if conn.sock is not None:
                conn.sock.settimeout(None)
            while not self._closed:
                try:
                    line = resp.readline()
                except (OSError, http.client.HTTPException, ValueError):
                    if self._closed:
                        return
                    raise errors.ConnectionFailed("watch stream broke") from None
                if not line:
                    return
                line = line.strip()
                if not line:
                    continue
                ev = json.loads(line)
                typ, obj = ev.get("type", ""), ev.get("object") or {}
                if typ == "ERROR":
                    raise errors.from_status(int(obj.get("code") or 500), obj)
                yield typ, obj
        finally:
            conn.close()
