"""The REST verbs on resources: get, list, watch, create, update, patch, delete,
deletecollection, and the subresources (status, scale, binding, finalize, token; log,
exec, attach and portforward are proxied to the node's kubelet by :mod:`kubelet`)."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from datastore import errors as ds_errors
from kubeclient.selectors import SelectorError, matches, parse_fields, parse_labels
from testbed.apiserver import objects, schema, status, tables, validation
from testbed.apiserver.auth import User
from testbed.apiserver.objects import deep, now_iso
from testbed.apiserver.patch import (
    PatchError,
    apply_patch,
    field_set,
    json_patch,
    merge_patch,
    strategic_merge,
)
from testbed.apiserver.registry import ResourceType
from testbed.apiserver.status import APIError
from testbed.apiserver.storage import Entry, Gone, ShuttingDown, WatchEvent, bucket_of, index_value
from testbed.k8s.support import calico_warnings

log = logging.getLogger("apiserver.handlers")

MAX_BODY = 3 * 1024 * 1024
SERVICE_IP_PREFIX = "/registry/ranges/serviceips/"
TABLE_MARK = "as=Table"
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
PATCH_TYPES = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/apply-patch+yaml": "apply",
    "application/apply-patch+cbor": "apply-cbor",
}


@dataclass
class Request:
    """A parsed resource request."""

    http: web.Request
    rt: ResourceType
    namespace: str | None
    name: str | None
    sub: str | None
    user: User
    watch_path: bool = False

    @property
    def query(self) -> MultiDictProxy:
        return self.http.query

    @property
    def method(self) -> str:
        return self.http.method

    def q(self, key: str, default: str = "") -> str:
        return self.http.query.get(key, default)

    def flag(self, key: str) -> bool:
        return self.http.query.get(key, "").lower() in ("true", "1")

    @classmethod
    def parse(cls, server: Any, http: web.Request, group: str, version: str, rest: list[str], user: User) -> Request:
        watch_path = False
        if rest and rest[0] == "watch":
            watch_path, rest = True, rest[1:]
        if not server.registry.groups().get(group) or version not in server.registry.groups()[group]:
            raise status.page_not_found()
        namespace = None
        if len(rest) >= 2 and rest[0] == "namespaces" and group == "":
            if len(rest) == 2 or (len(rest) == 3 and rest[2] in ("status", "finalize")):
                rt = server.registry.get("", "v1", "namespaces")
                return cls(http, rt, None, rest[1], rest[2] if len(rest) == 3 else None, user, watch_path)
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        rt = server.registry.get(group, version, rest[0]) if rest else None
        if rt is None or len(rest) > 3 or (namespace is not None and not rt.namespaced):
            raise status.page_not_found()
        name = rest[1] if len(rest) >= 2 else None
        sub = rest[2] if len(rest) == 3 else None
        if sub is not None and sub not in rt.subresources:
            raise status.page_not_found()
        return cls(http, rt, namespace, name, sub, user, watch_path)


def _kv_error(exc: Exception) -> str:
    return type(exc).__name__


class StaleCache(Exception):
    """An update started from the watch cache's copy (:meth:`Handlers.for_update`) cannot be
    decided on it (its CAS write lost, or it changes nothing): read etcd and try again."""


class Handlers:
    """Every resource verb, over the server's storage."""

    def __init__(self, server: Any):
        self.server = server
        self.storage = server.storage
        self.registry = server.registry
        from testbed.apiserver import crd, gc, kubelet

        self.crds = crd.CRDs(self)
        self.gc = gc.Collector(self)
        self.kubelet = kubelet.KubeletProxy(self)

    # --- entry ------------------------------------------------------------------------------
    async def handle(self, r: Request) -> web.StreamResponse:
        m = r.method
        if r.sub:
            return await self.subresource(r)
        if r.name is None:
            if m == "GET":
                if r.watch_path or r.flag("watch"):
                    return await self.watch(r)
                return await self.list(r)
            if m == "POST":
                if r.rt.namespaced and r.namespace is None:
                    raise status.page_not_found()
                return await self.create(r)
            if m == "DELETE":
                return await self.delete_collection(r)
            raise status.method_not_allowed()
        if m == "GET":
            if r.watch_path or r.flag("watch"):
                return await self.watch(r, single=r.name)
            return await self.get(r)
        if m == "PUT":
            return await self.update(r)
        if m == "PATCH":
            return await self.patch(r)
        if m == "DELETE":
            return await self.delete(r)
        raise status.method_not_allowed()

    def _need_namespace(self, r: Request) -> None:
        if r.rt.namespaced and r.namespace is None:
            raise status.page_not_found()

    # --- encoding ---------------------------------------------------------------------------
    def output(self, rt: ResourceType, obj: dict) -> dict:
        """An object as served at ``rt``'s version (events.k8s.io / CRD version conversion)."""
        if rt.group == "events.k8s.io":
            from testbed.apiserver.events import core_to_events

            return core_to_events(obj)
        if rt.crd is not None and obj.get("apiVersion") != rt.api_version:
            obj = dict(obj)
            obj["apiVersion"] = rt.api_version
        return obj

    def needs_conversion(self, rt: ResourceType) -> bool:
        return rt.group == "events.k8s.io" or (rt.crd is not None and rt.storage_version not in (None, rt.version))

    def respond(self, r: Request, obj: dict, code: int = 200, warnings: list[str] | None = None) -> web.Response:
        obj = self.output(r.rt, obj)
        if self.wants_table(r) and obj.get("kind") not in ("Status", None):
            doc: Any = self.table(r, [obj], obj.get("metadata", {}).get("resourceVersion", ""))
        else:
            doc = obj
        from testbed.apiserver.responses import json_response

        headers = {}
        resp = json_response(doc, code, headers=headers)
        for w in warnings or []:
            resp.headers.add("Warning", f'299 - "{_escape(w)}"')
        return resp

    def wants_table(self, r: Request) -> bool:
        accept = r.http.headers.get("Accept", "")
        return TABLE_MARK in accept and "meta.k8s.io" in accept

    def table(self, r: Request, objs: list[dict], rv: str, cont: str = "", remaining: int | None = None,
              no_headers: bool = False) -> dict:
        include = r.q("includeObject", "Metadata")
        crdv = None
        if r.rt.crd is not None:
            crdv = self.crds.version_of(r.rt)
        return tables.table(r.rt.kind, objs, rv, include, crdv, no_headers, cont, remaining)

    # --- reads ------------------------------------------------------------------------------
    async def get_entry(self, rt: ResourceType, name: str, ns: str | None) -> Entry:
        e = await self.storage.get(rt.key(name, ns))
        if e is None:
            raise status.not_found(rt.plural, rt.group, name)
        return e

    async def for_update(self, rt: ResourceType, name: str, ns: str | None, rv: str | None = None,
                         fresh: bool = False) -> tuple[Entry | None, bool]:
        """The stored object an update starts from, and whether it is the watch cache's copy.
        As kube-apiserver's cacher hands its cached object to GuaranteedUpdate, the first
        attempt (``fresh`` False) starts from the hub's copy when it is at the request's
        resourceVersion (any copy when the request has none) and saves the etcd read; the
        write's CAS on that revision checks it, and an update that loses the CAS or changes
        nothing raises :class:`StaleCache` for a second attempt from etcd (``fresh``)."""
        key = rt.key(name, ns)
        if not fresh:
            e = self.storage.hub.cache.get(key)
            if e is not None and (not rv or rv == str(e.rev)):
                return e, True
        return await self.storage.get(key), False

    async def get(self, r: Request) -> web.Response:
        self._need_namespace(r)
        e = await self.get_entry(r.rt, r.name, r.namespace)
        if not self.wants_table(r) and not self.needs_conversion(r.rt):
            from testbed.apiserver.responses import json_response

            return json_response(e.raw)
        return self.respond(r, e.obj)

    def selectors(self, r: Request) -> tuple[list, list]:
        try:
            labels = parse_labels(r.q("labelSelector"))
            fields = parse_fields(r.q("fieldSelector"))
            objects.check_field_labels(r.rt.kind, fields, self.crds.selectable_fields(r.rt))
        except SelectorError as exc:
            raise status.bad_request(str(exc)) from None
        return labels, fields

    def _filter(self, r: Request, labels: list, fields: list):
        ns = r.namespace

        def ok(obj: dict) -> bool:
            meta = obj.get("metadata") or {}
            if ns is not None and r.rt.namespaced and meta.get("namespace") != ns:
                return False
            if labels and not matches(labels, meta.get("labels")):
                return False
            if fields:
                o = self.output(r.rt, obj) if r.rt.group == "events.k8s.io" else obj
                if not objects.fields_match(o, fields):
                    return False
            return True

        return ok

    async def list(self, r: Request) -> web.Response:
        if r.q("sendInitialEvents"):
            raise status.invalid("ListOptions", "meta.k8s.io", "", [status.forbidden(
                "sendInitialEvents", "sendInitialEvents is forbidden for list")])
        labels, fields = self.selectors(r)
        ok = self._filter(r, labels, fields)
        limit = int(r.q("limit") or 0) if (r.q("limit") or "0").isdigit() else 0
        cont = r.q("continue")
        rv_param, match = r.q("resourceVersion"), r.q("resourceVersionMatch")
        revision, start = None, None
        if cont:
            try:
                tok = json.loads(base64.urlsafe_b64decode(cont + "=" * (-len(cont) % 4)))
                revision, start = int(tok["rv"]), tok["start"]
            except (ValueError, KeyError, TypeError):
                raise status.bad_request("continue key is not valid: incorrect encoded start resourceVersion "
                                         "(version meta.k8s.io/v1)") from None
        elif match == "Exact" and rv_param:
            revision = int(rv_param) if rv_param.isdigit() else None
        elif match and match not in ("NotOlderThan", "Exact"):
            raise status.invalid("ListOptions", "meta.k8s.io", "", [status.not_supported(
                "resourceVersionMatch", match, ["Exact", "NotOlderThan"])])
        prefix = r.rt.list_prefix(r.namespace)
        try:
            entries, rev, _ = await self.storage.list(prefix, revision, (start or "") or None)
        except ds_errors.Compacted:
            if cont:
                raise status.gone("The provided continue parameter is too old to display a consistent list "
                                  "result. You can start a new list without the continue parameter, or use the "
                                  "continue token in this response to retrieve the remainder of the results. "
                                  "Continuing with the provided token results in an inconsistent list - objects "
                                  "that were created, modified, or deleted between the time the first chunk was "
                                  "returned and now may show up in the list.") from None
            raise status.gone("The resourceVersion for the provided list is too old.") from None
        if revision is not None:
            rev = revision
        selected: list[Entry] = []
        next_key = ""
        remaining: int | None = None
        for i, e in enumerate(entries):
            if not ok(e.obj):
                continue
            if limit and len(selected) == limit:
                next_key = e.key
                if not labels and not fields:
                    remaining = len(entries) - i
                break
            selected.append(e)
        cont_out = ""
        if next_key:
            cont_out = base64.urlsafe_b64encode(json.dumps(
                {"v": "meta.k8s.io/v1", "rv": rev, "start": next_key}).encode()).decode().rstrip("=")
        from testbed.apiserver.responses import json_response

        if self.wants_table(r):
            objs = [self.output(r.rt, e.obj) for e in selected]
            return json_response(self.table(r, objs, str(rev), cont_out, remaining))
        meta: dict[str, Any] = {"resourceVersion": str(rev)}
        if cont_out:
            meta["continue"] = cont_out
            if remaining is not None:
                meta["remainingItemCount"] = remaining
        head = json.dumps({"kind": f"{r.rt.kind}List", "apiVersion": r.rt.api_version, "metadata": meta},
                          separators=(",", ":")).encode()
        if self.needs_conversion(r.rt):
            items = b",".join(json.dumps(self.output(r.rt, e.obj), separators=(",", ":")).encode() for e in selected)
        else:
            items = b",".join(e.raw for e in selected)
        return json_response(head[:-1] + b',"items":[' + items + b"]}")

    # --- watch ------------------------------------------------------------------------------
    async def watch(self, r: Request, single: str | None = None) -> web.StreamResponse:
        labels, fields = self.selectors(r)
        if single:
            fields = fields + [("metadata.name", "=", single)]
        ok = self._filter(r, labels, fields)
        filtered = bool(labels or fields)
        rv = r.q("resourceVersion")
        send_initial = r.q("sendInitialEvents")
        bookmarks = r.flag("allowWatchBookmarks")
        if send_initial:
            errs = []
            if r.q("resourceVersionMatch") != "NotOlderThan":
                errs.append(status.forbidden("resourceVersionMatch",
                                             "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"))
            if send_initial.lower() == "true" and not bookmarks:
                errs.append(status.required("allowWatchBookmarks", "sendInitialEvents requires allowWatchBookmarks=true"))
            if errs:
                raise status.invalid("ListOptions", "meta.k8s.io", "", errs)
        try:
            timeout = float(r.q("timeoutSeconds") or 0) or random.uniform(1800, 3600)
        except ValueError:
            raise status.bad_request(f'invalid timeoutSeconds "{r.q("timeoutSeconds")}"') from None
        prefix = r.rt.list_prefix(r.namespace)
        hub = self.storage.hub
        initial: list[Entry] = []
        want_initial = send_initial.lower() == "true" if send_initial else rv in ("", "0")
        sub = None
        gone_msg = None
        if want_initial:
            entries, after, _ = await self.storage.list(prefix)
            initial = [e for e in entries if ok(e.obj)]
            if rv not in ("", "0") and rv.isdigit():
                after = max(after, int(rv))
            await hub.wait_for(after, 0)  # (does not block: events after `after` are replayed or arrive)
        else:
            if not rv.isdigit():
                raise status.bad_request(f'invalid resource version "{rv}"')
            after = int(rv)
            try:
                await self.storage.check_not_compacted(after)
            except Gone:
                cur = await self.storage.revision()
                gone_msg = f"too old resource version: {after} ({cur})"
        resp = web.StreamResponse(status=200)
        table = self.wants_table(r)
        resp.headers["Content-Type"] = "application/json"
        resp.headers["Transfer-Encoding"] = "chunked"
        resp.headers["Cache-Control"] = "no-cache, private"
        try:
            await resp.prepare(r.http)
        except ConnectionResetError:  # the client went away before the headers: nothing to stream
            return resp
        first = [True]

        def frame(typ: str, obj: dict) -> bytes:
            obj = self.output(r.rt, obj)
            if table and typ not in ("BOOKMARK", "ERROR"):
                obj = self.table(r, [obj], obj.get("metadata", {}).get("resourceVersion", ""),
                                 no_headers=not first[0])
                first[0] = False
            return json.dumps({"type": typ, "object": obj}, separators=(",", ":")).encode() + b"\n"

        from testbed.apiserver.metrics import scope

        gauge = (r.rt.group, r.rt.version, r.rt.plural, scope(r.namespace, single), "", "WATCH")
        self.server.longrunning.start(gauge)
        try:
            if gone_msg is None:
                try:
                    # an object entering the selection is ADDED, one leaving it DELETED (as the
                    # cacher's filtered watches send them): events whose old state matched count too
                    sub = hub.subscribe(prefix, after, lambda ev: ok(ev.entry.obj) or (
                        ev.prev is not None and filtered and ok(ev.prev.obj)), api_watch=True,
                        index=index_value(bucket_of(prefix, partial=True), fields))
                except Gone:
                    cur = await self.storage.revision()
                    gone_msg = f"too old resource version: {after} ({cur})"
            if gone_msg is not None:
                await resp.write(frame("ERROR", status.gone(gone_msg).status()))
                await resp.write_eof()
                return resp
            for e in initial:
                await resp.write(frame("ADDED", e.obj))
            if send_initial.lower() == "true":
                await resp.write(frame("BOOKMARK", self._bookmark(r.rt, after, initial_end=True)))
            deadline = time.monotonic() + timeout
            last_bookmark = time.monotonic()
            last_rev = after
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    ev = await asyncio.wait_for(sub.queue.get(), min(left, 5.0))
                except TimeoutError:
                    if bookmarks and time.monotonic() - last_bookmark >= 5.0:
                        last_rev = max(last_rev, hub.rev)
                        await resp.write(frame("BOOKMARK", self._bookmark(r.rt, last_rev)))
                        last_bookmark = time.monotonic()
                    continue
                if isinstance(ev, ShuttingDown):
                    break
                if isinstance(ev, Exception):
                    await resp.write(frame("ERROR", status.gone(str(ev)).status()))
                    break
                chunk = [ev]
                while not sub.queue.empty() and len(chunk) < 256:
                    nxt = sub.queue.get_nowait()
                    if isinstance(nxt, Exception):
                        sub.queue.put_nowait(nxt)
                        break
                    chunk.append(nxt)
                data = b"".join(self._event_frame(r, e2, frame, table, self._transition(e2, ok) if filtered else None)
                                for e2 in chunk)
                last_rev = chunk[-1].rev
                await resp.write(data)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.server.longrunning.end(gauge)
            if sub is not None:
                sub.close()
        try:
            await resp.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass
        return resp

    @staticmethod
    def _transition(ev: WatchEvent, ok: Any) -> str:
        """The event's type for a filtered watch: MODIFIED into the selection is ADDED, out of
        it DELETED (with the object's new state)."""
        if ev.type != "MODIFIED" or ev.prev is None:
            return ev.type
        now, before = ok(ev.entry.obj), ok(ev.prev.obj)
        if now and not before:
            return "ADDED"
        if before and not now:
            return "DELETED"
        return ev.type

    def _event_frame(self, r: Request, ev: WatchEvent, frame: Any, table: bool, typ: str | None = None) -> bytes:
        typ = typ or ev.type
        if not table and not self.needs_conversion(r.rt):
            return b'{"type":"' + typ.encode() + b'","object":' + ev.entry.raw + b"}\n"
        return frame(typ, ev.entry.obj)

    def _bookmark(self, rt: ResourceType, rev: int, initial_end: bool = False) -> dict:
        meta: dict[str, Any] = {"resourceVersion": str(rev), "creationTimestamp": None}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}

    # --- body decoding ----------------------------------------------------------------------
    async def read_body(self, r: Request) -> bytes:
        clen = r.http.content_length
        if clen is not None and clen > MAX_BODY:
            raise status.too_large(MAX_BODY)
        data = bytearray()
        while True:
            chunk = await r.http.content.read(65536)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_BODY:
                raise status.too_large(MAX_BODY)
        return bytes(data)

    async def decode_body(self, r: Request, expect_kind: str | None = None, yaml_ok: bool = True) -> Any:
        raw = await self.read_body(r)
        ctype = (r.http.headers.get("Content-Type") or "application/json").split(";")[0].strip()
        if not raw.strip():
            raise status.bad_request("the body of the request was empty") if expect_kind is None else \
                status.bad_request(f"Object '{'Kind'}' is missing in ''")
        dup: list[str] = []

        def pairs(items: list[tuple[str, Any]]) -> dict:
            d: dict[str, Any] = {}
            for k, v in items:
                if k in d:
                    dup.append(k)
                d[k] = v
            return d

        if ctype in ("application/yaml", "application/apply-patch+yaml") and yaml_ok:
            try:
                doc = json.loads(raw, object_pairs_hook=pairs)
            except ValueError:
                import yaml

                try:
                    doc = yaml.load(raw, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
                except yaml.YAMLError as exc:
                    raise status.bad_request(f"error converting YAML to JSON: {exc}") from None
        elif ctype in ("application/json", "application/json-patch+json", "application/merge-patch+json",
                       "application/strategic-merge-patch+json", "*/*", ""):
            try:
                doc = json.loads(raw, object_pairs_hook=pairs)
            except ValueError as exc:
                what = expect_kind or "object"
                raise status.bad_request(f"couldn't get version/kind; json parse error: {_go_json_error(exc)}"
                                         if expect_kind else f"error decoding {what}: {_go_json_error(exc)}") from None
        elif ctype == "application/vnd.kubernetes.protobuf":
            from testbed.apiserver import protobuf

            try:
                doc = protobuf.decode(raw)
            except (protobuf.ProtobufError, UnicodeDecodeError) as exc:
                raise status.bad_request(f"error decoding protobuf: {exc}") from None
        else:
            raise status.unsupported_media(ctype, ["application/json", "application/yaml",
                                                   "application/vnd.kubernetes.protobuf"])
        r.http["duplicate_fields"] = dup
        return doc

    def check_fields(self, r: Request, rt: ResourceType, obj: dict) -> tuple[dict, list[str]]:
        """Unknown/duplicate fields per ``fieldValidation``; value types. Returns (pruned, warnings)."""
        mode = r.q("fieldValidation") or "Warn"
        if mode not in ("Strict", "Warn", "Ignore"):
            raise status.bad_request(f"fieldValidation parameter unsupported: {mode}")
        node = self.schema_of(rt)
        unknown: list[str] = []
        try:
            pruned = schema.check(obj, node, "", unknown, prune=True) if node is not None else obj
        except schema.TypeMismatch as exc:
            raise status.bad_request(f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
                                     f"json: {exc}") from None
        issues = [f'unknown field "{u}"' for u in unknown]
        issues += [f'duplicate field "{d}"' for d in r.http.get("duplicate_fields") or []]
        # what calicolab does not act on, whatever fieldValidation says (docs/inventory.md)
        calico = calico_warnings(rt.kind, (obj.get("metadata") or {}).get("name", "")) if rt.crd is None else []
        if not issues or mode == "Ignore":
            return pruned, calico
        if mode == "Strict":
            raise status.bad_request("strict decoding error: " + ", ".join(issues))
        return pruned, issues + calico

    def schema_of(self, rt: ResourceType) -> schema.Node | None:
        if rt.crd is not None:
            return self.crds.schema_of(rt)
        if rt.model:
            return schema.model_node(rt.model)
        return None

    # --- admission: the rules of each kind ----------------------------------------------------
    def check_identity(self, r: Request, obj: Any, name: str | None = None) -> dict:
        rt = r.rt
        if not isinstance(obj, dict):
            raise status.bad_request(f"json: cannot unmarshal {schema._json_type(obj)} into Go value of type "
                                     f"struct {{ APIVersion string \"json:\\\"apiVersion,omitempty\\\"\"; "
                                     f"Kind string \"json:\\\"kind,omitempty\\\"\" }}")
        kind, api = obj.get("kind"), obj.get("apiVersion")
        if not kind:
            raise status.bad_request(f"Object 'Kind' is missing in '{json.dumps(obj, separators=(',', ':'))[:200]}'")
        if not api:
            raise status.bad_request(f"Object 'apiVersion' is missing in '{json.dumps(obj, separators=(',', ':'))[:200]}'")
        if rt.group == "events.k8s.io" and api == rt.api_version and kind == "Event":
            pass
        elif api != rt.api_version or kind != rt.kind:
            if kind != rt.kind and api == rt.api_version:
                raise status.bad_request(f"the kind in the data ({kind}) does not match the expected kind "
                                         f"({rt.kind})")
            raise status.bad_request(f"the API version in the data ({api}) does not match the expected API version "
                                     f"({rt.api_version})")
        meta = obj.get("metadata")
        if meta is None:
            obj["metadata"] = meta = {}
        if not isinstance(meta, dict):
            raise status.bad_request(f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: json: '
                                     f"cannot unmarshal {schema._json_type(meta)} into Go struct field "
                                     f"{rt.kind}.metadata of type v1.ObjectMeta")
        if rt.namespaced:
            ns = meta.get("namespace")
            if ns and r.namespace and ns != r.namespace:
                raise status.bad_request("the namespace of the provided object does not match the namespace sent "
                                         "on the request")
            meta["namespace"] = r.namespace
        else:
            meta.pop("namespace", None)
        if name is not None and meta.get("name") and meta["name"] != name:
            raise status.bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL "
                                     f"({name})")
        if name is not None:
            meta["name"] = name
        return obj

    def validate(self, rt: ResourceType, obj: dict, old: dict | None) -> None:
        errs = validation.check_meta(rt.kind, obj, rt.namespaced)
        if rt.crd is not None:
            errs += self.crds.validate(rt, obj)
        elif rt.group != "events.k8s.io":
            errs += validation.validate(obj, old)
        if rt.kind == "CustomResourceDefinition":
            errs += self.crds.validate_crd(obj, old)
        if errs:
            raise status.invalid(rt.kind, rt.group, (obj.get("metadata") or {}).get("name") or "", errs)

    def default(self, rt: ResourceType, obj: dict) -> None:
        if rt.crd is not None:
            self.crds.default(rt, obj)
        elif rt.kind == "CustomResourceDefinition":
            self.crds.default_crd(obj)
        else:
            validation.default(obj)

    # --- create -----------------------------------------------------------------------------
    async def create(self, r: Request) -> web.Response:
        body = await self.decode_body(r, expect_kind=r.rt.kind)
        obj = self.check_identity(r, body)
        obj, warnings = self.check_fields(r, r.rt, obj)
        if r.rt.verbs == ("create",):
            return self.respond(r, await self.review(r, obj), 201, warnings)
        if r.rt.group == "events.k8s.io":
            from testbed.apiserver.events import events_to_core

            obj = events_to_core(obj)
        created = await self.create_object(self.storage_type(r.rt), obj, dry_run=bool(r.query.getall("dryRun", [])),
                                           manager=self.manager(r), input_rt=r.rt)
        return self.respond(r, created, 201, warnings)

    async def review(self, r: Request, obj: dict) -> dict:
        """Answer a create-only review. Authorization is not enforced (RBAC objects are
        stored only), so every access review is allowed and says why."""
        kind = r.rt.kind
        user = r.user
        out = {k: v for k, v in obj.items() if k != "status"}
        out.setdefault("metadata", {})["creationTimestamp"] = None
        info = {"username": user.name, "groups": user.groups}
        if user.uid:
            info["uid"] = user.uid
        if user.extra:
            info["extra"] = user.extra
        if kind == "SelfSubjectReview":
            out["status"] = {"userInfo": info}
        elif kind == "TokenReview":
            token = ((obj.get("spec") or {}).get("token")) or ""
            try:
                from testbed.apiserver.auth import user_from_claims

                claims = self.server.tokens.verify(token)
                if not await self.service_account_valid(claims):
                    raise ValueError("the ServiceAccount of the token no longer exists")
                u = user_from_claims(claims)
                out["status"] = {"authenticated": True, "user": {"username": u.name, "groups": u.groups,
                                                                  "uid": u.uid},
                                 "audiences": claims.get("aud") or []}
            except Exception as exc:  # noqa: BLE001 - any invalid token is "not authenticated"
                out["status"] = {"authenticated": False, "error": str(exc)}
        elif kind == "SelfSubjectRulesReview":
            out["status"] = {"resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                             "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                             "incomplete": False}
        else:
            out["status"] = {"allowed": True, "reason": "calicolab does not enforce RBAC: every authenticated "
                                                        "user may do everything"}
        return out

    def storage_type(self, rt: ResourceType) -> ResourceType:
        if rt.group == "events.k8s.io":
            return self.registry.get("", "v1", "events")
        return rt

    def manager(self, r: Request) -> str:
        m = r.q("fieldManager")
        if m:
            return m
        ua = r.http.headers.get("User-Agent", "unknown")
        return ua.split("/")[0] or "unknown"

    async def create_object(self, rt: ResourceType, obj: dict, dry_run: bool = False, manager: str = "",
                            input_rt: ResourceType | None = None, operation: str = "Update",
                            applied: dict | None = None) -> dict:
        """Admit and store a new object; returns it as stored."""
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(random.choice("bcdfghjklmnpqrstvwxz2456789")
                                                          for _ in range(5))
        if rt.namespaced and meta.get("namespace"):
            await self.check_namespace(rt, meta)
        for k in ("uid", "resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            meta.pop(k, None)
        meta["creationTimestamp"] = now_iso()
        meta["uid"] = objects.new_uid()
        self.default(rt, obj)
        if rt.kind in objects.GENERATION_KINDS or rt.crd is not None:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        if self.has_status(rt) and rt.kind not in ("Pod", "Node", "Namespace", "Service"):
            obj.pop("status", None)
        if rt.kind == "Job":
            self._job_selector(obj)
        if rt.kind == "Namespace":  # NamespaceStrategy.PrepareForCreate
            obj.setdefault("spec", {})["finalizers"] = ["kubernetes"]
            obj["status"] = {"phase": "Active"}
        self.validate(rt, obj, None)
        self.track(obj, manager, operation, input_rt or rt, applied)
        allocated = None
        if rt.kind == "Service":
            if await self.storage.get(rt.key(meta["name"], meta.get("namespace"))) is not None:
                raise status.already_exists(rt.plural, rt.group, meta["name"])
            allocated = await self.allocate_cluster_ip(obj)
        if rt.kind == "Pod" and not dry_run:
            await self.pod_admission(obj)
        if dry_run:
            if allocated:
                await self.release_ip(allocated)
            return obj
        try:
            rev = await self.storage.create(rt.key(meta["name"], meta.get("namespace")), obj)
        except ds_errors.AlreadyExists:
            if allocated:
                await self.release_ip(allocated)
            raise status.already_exists(rt.plural, rt.group, meta["name"]) from None
        except ds_errors.DatastoreUnavailable as exc:
            raise status.unavailable(str(exc)) from None
        meta["resourceVersion"] = str(rev)
        if rt.kind == "CustomResourceDefinition":
            await self.crds.established(obj)
        return obj

    def has_status(self, rt: ResourceType) -> bool:
        return "status" in rt.subresources

    async def check_namespace(self, rt: ResourceType, meta: dict) -> None:
        ns = meta["namespace"]
        nsrt = self.registry.get("", "v1", "namespaces")
        e = self.storage.hub.cache.get(nsrt.key(ns, None))
        if e is None:
            e = await self.storage.get(nsrt.key(ns, None))
        if e is None:
            raise status.not_found("namespaces", "", ns)
        if (e.obj.get("metadata") or {}).get("deletionTimestamp") or (e.obj.get("status") or {}).get("phase") == \
                "Terminating":
            msg = f"unable to create new content in namespace {ns} because it is being terminated"
            raise APIError(403, "Forbidden", f'{rt.plural}{"." + rt.group if rt.group else ""} '
                           f'"{meta.get("name", "")}" is forbidden: {msg}',
                           {"name": meta.get("name", ""), "group": rt.group, "kind": rt.plural,
                            "causes": [{"reason": "NamespaceTerminating", "message": msg,
                                        "field": "metadata.namespace"}]})

    def _job_selector(self, obj: dict) -> None:
        spec = obj.get("spec") or {}
        if spec.get("manualSelector"):
            return
        uid = obj["metadata"]["uid"]
        labels = ((spec.setdefault("template", {}).setdefault("metadata", {})).setdefault("labels", {}))
        labels["batch.kubernetes.io/controller-uid"] = uid
        labels["controller-uid"] = uid
        labels["batch.kubernetes.io/job-name"] = obj["metadata"]["name"]
        labels["job-name"] = obj["metadata"]["name"]
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}

    async def pod_admission(self, pod: dict) -> None:
        """What admission plugins do to a new pod: the ServiceAccount token volume."""
        spec = pod.get("spec") or {}
        if spec.get("automountServiceAccountToken") is False:
            return
        vols = spec.setdefault("volumes", [])
        if any(v.get("name", "").startswith("kube-api-access-") for v in vols if isinstance(v, dict)):
            return
        name = "kube-api-access-" + "".join(random.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
        vols.append({"name": name, "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1",
                                                                           "fieldPath": "metadata.namespace"}}]}}]}})
        for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
            if isinstance(c, dict):
                c.setdefault("volumeMounts", []).append(
                    {"name": name, "readOnly": True, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"})

    def track(self, obj: dict, manager: str, operation: str, rt: ResourceType, applied: dict | None = None,
              sub: str = "") -> None:
        """managedFields: one entry per (manager, operation, subresource) with the time of its
        last write; Apply entries carry the applied field set (used to prune on re-apply)."""
        if not manager:
            return
        meta = obj["metadata"]
        entries = [e for e in meta.get("managedFields") or [] if isinstance(e, dict)]
        entries = [e for e in entries if not (e.get("manager") == manager and e.get("operation") == operation
                                              and e.get("subresource", "") == sub)]
        entry: dict[str, Any] = {"manager": manager, "operation": operation, "apiVersion": rt.api_version,
                                 "time": now_iso(), "fieldsType": "FieldsV1"}
        if applied is not None:
            entry["fieldsV1"] = field_set(applied, self.schema_of(rt))
        else:
            entry["fieldsV1"] = {}
        if sub:
            entry["subresource"] = sub
        entries.append(entry)
        meta["managedFields"] = entries

    async def allocate_cluster_ip(self, svc: dict) -> str | None:
        spec = svc["spec"]
        want = spec.get("clusterIP") or ((spec.get("clusterIPs") or [None])[0])
        if want == "None":
            spec["clusterIPs"] = ["None"]
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
            return None
        net = ipaddress.ip_network(self.server.opts.service_cluster_ip_range)
        owner = json.dumps({"namespace": svc["metadata"].get("namespace"), "name": svc["metadata"]["name"]}).encode()
        name = svc["metadata"]["name"]
        if want:
            if ipaddress.ip_address(want) not in net:
                raise status.invalid("Service", "", name, [status.invalid_value(
                    "spec.clusterIPs", [want], f"failed to allocate IP {want}: the provided IP ({want}) is not in "
                    f"the valid range. The range of valid IPs is {net}")])
            try:
                await self.storage.create_raw(SERVICE_IP_PREFIX + want, owner)
            except ds_errors.AlreadyExists:
                raise status.invalid("Service", "", name, [status.invalid_value(
                    "spec.clusterIPs", [want], f"failed to allocate IP {want}: provided IP is already allocated")]) \
                    from None
            ip = want
        else:
            size = net.num_addresses - 2
            for _ in range(64):
                cand = str(net.network_address + random.randint(11, max(11, min(size, 65534))))
                try:
                    await self.storage.create_raw(SERVICE_IP_PREFIX + cand, owner)
                    ip = cand
                    break
                except ds_errors.AlreadyExists:
                    continue
            else:
                raise status.internal(f"failed to allocate a serviceIP: range {net} is full")
        spec["clusterIP"] = ip
        spec["clusterIPs"] = [ip]
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        return ip

    async def release_ip(self, ip: str) -> None:
        await self.storage.delete_raw(SERVICE_IP_PREFIX + ip)

    # --- update -----------------------------------------------------------------------------
    async def update(self, r: Request) -> web.Response:
        self._need_namespace(r)
        body = await self.decode_body(r, expect_kind=r.rt.kind)
        obj = self.check_identity(r, body, r.name)
        obj, warnings = self.check_fields(r, r.rt, obj)
        if r.rt.group == "events.k8s.io":
            from testbed.apiserver.events import events_to_core

            obj = events_to_core(obj)
        rt = self.storage_type(r.rt)
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        for fresh in (False, True):
            e, cached = await self.for_update(rt, r.name, r.namespace, rv, fresh)
            if e is None:
                if rt.kind in ("Pod",) or rt.crd is None and rt.kind not in ("Lease", "ConfigMap", "Secret",
                                                                             "Endpoints", "EndpointSlice", "Service"):
                    raise status.not_found(rt.plural, rt.group, r.name)
                # create on update (AllowCreateOnUpdate kinds)
                obj["metadata"].pop("resourceVersion", None)
                created = await self.create_object(rt, obj, bool(r.query.getall("dryRun", [])), self.manager(r), r.rt)
                return self.respond(r, created, 201, warnings)
            if rv and rv != str(e.rev):
                raise status.conflict(rt.plural, rt.group, r.name)
            uid, cur_uid = (obj.get("metadata") or {}).get("uid"), (e.obj.get("metadata") or {}).get("uid")
            if uid and cur_uid and uid != cur_uid:  # the object's UID is a precondition of a PUT
                if cached:
                    continue
                raise status.conflict(rt.plural, rt.group, r.name, f"Precondition failed: UID in precondition: "
                                      f"{uid}, UID in object meta: {cur_uid}")
            try:
                new = await self.update_object(rt, e, obj, sub=None, manager=self.manager(r),
                                               dry_run=bool(r.query.getall("dryRun", [])), input_rt=r.rt,
                                               cached=cached)
            except StaleCache:
                continue
            return self.respond(r, new, 200, warnings)
        raise AssertionError("unreachable: the second attempt reads etcd")

    async def update_object(self, rt: ResourceType, cur: Entry, obj: dict, sub: str | None = None,
                            manager: str = "", dry_run: bool = False, input_rt: ResourceType | None = None,
                            operation: str = "Update", applied: dict | None = None, cached: bool = False) -> dict:
        """Admit ``obj`` as the new state of ``cur`` and CAS-write it. ``cached``: ``cur`` is
        the watch cache's copy (:meth:`for_update`), and what cannot be decided on it raises
        :class:`StaleCache`."""
        old = cur.obj
        if cached and (dry_run or (old.get("metadata") or {}).get("deletionTimestamp")):
            raise StaleCache  # (rare paths: decided on etcd's copy)
        meta, ometa = obj.setdefault("metadata", {}), old.get("metadata") or {}
        if meta.get("uid") and ometa.get("uid") and meta["uid"] != ometa["uid"]:
            # validateCommonFields: the UID is immutable (a patch carrying another UID)
            raise status.invalid(rt.kind, rt.group, ometa.get("name", ""),
                                 [status.invalid_value("metadata.uid", meta["uid"], "field is immutable")])
        if sub == "status":
            new = deep(old)
            new["status"] = obj.get("status")
            if new["status"] is None:
                new.pop("status")
            # status writers may also change labels/annotations (as the real status strategies allow)
            for k in ("labels", "annotations"):
                if k in meta:
                    new["metadata"][k] = meta[k]
            obj = new
            meta = obj["metadata"]
        else:
            for k in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
                if k in ometa:
                    meta[k] = ometa[k]
                else:
                    meta.pop(k, None)
            if sub is None and self.has_status(rt) and "status" in old:
                obj["status"] = deep(old["status"])
            elif sub is None and self.has_status(rt):
                obj.pop("status", None)
            self.default(rt, obj)
            if rt.kind == "Service":
                spec, ospec = obj.setdefault("spec", {}), old.get("spec") or {}
                if not spec.get("clusterIP") and ospec.get("clusterIP"):
                    spec["clusterIP"] = ospec["clusterIP"]
                    spec["clusterIPs"] = ospec.get("clusterIPs") or [ospec["clusterIP"]]
                for k in ("ipFamilies", "ipFamilyPolicy"):
                    if k in ospec:
                        spec.setdefault(k, ospec[k])
            if rt.kind == "Pod":
                spec, ospec = obj.setdefault("spec", {}), old.get("spec") or {}
                for k in ("nodeName", "volumes"):
                    if k in ospec and k not in spec:
                        spec[k] = ospec[k]
                for c, oc in zip(spec.get("containers") or [], ospec.get("containers") or [], strict=False):
                    if isinstance(c, dict) and "volumeMounts" in oc and "volumeMounts" not in c:
                        c["volumeMounts"] = oc["volumeMounts"]
            if rt.kind == "Job":
                spec, ospec = obj.setdefault("spec", {}), old.get("spec") or {}
                if "selector" in ospec and "selector" not in spec:
                    spec["selector"] = ospec["selector"]
            if "generation" in ometa and _spec_of(obj) != _spec_of(old):
                meta["generation"] = int(ometa.get("generation") or 1) + 1
        if ometa.get("deletionTimestamp"):
            # finalizers may only be removed once deletion started; other changes ok
            pass
        self.validate(rt, obj, old)
        if sub == "finalize":
            pass
        self.track(obj, manager, operation, input_rt or rt, applied, sub or "")
        meta["resourceVersion"] = str(cur.rev)
        if _same(obj, old):
            if cached:  # a no-op is answered with etcd's current object, not the cache's
                raise StaleCache
            return deep(old)
        if dry_run:
            return obj
        if ometa.get("deletionTimestamp") and not meta.get("finalizers") and (
                rt.kind != "Namespace" or not (obj.get("spec") or {}).get("finalizers")) and \
                (rt.kind != "Pod" or ometa.get("deletionGracePeriodSeconds") == 0 or
                 not (old.get("spec") or {}).get("nodeName")):
            # the last finalizer is gone: deletion completes
            await self._remove(rt, cur.key, cur.rev, obj)
            return obj
        try:
            rev = await self.storage.update(cur.key, obj, cur.rev)
        except ds_errors.Conflict:
            if cached:
                raise StaleCache from None
            raise status.conflict(rt.plural, rt.group, meta.get("name", "")) from None
        except ds_errors.NotFound:
            raise status.not_found(rt.plural, rt.group, meta.get("name", "")) from None
        meta["resourceVersion"] = str(rev)
        if rt.kind == "CustomResourceDefinition":
            await self.crds.established(obj)
        return obj

    # --- patch ------------------------------------------------------------------------------
    async def patch(self, r: Request, sub: str | None = None) -> web.Response:
        self._need_namespace(r)
        ctype = (r.http.headers.get("Content-Type") or "").split(";")[0].strip()
        ptype = PATCH_TYPES.get(ctype)
        if ptype is None or ptype == "apply-cbor":
            raise status.unsupported_media(ctype, list(k for k in PATCH_TYPES if "cbor" not in k))
        if ptype == "strategic" and r.rt.crd is not None:
            raise status.unsupported_media(ctype, ["application/json-patch+json", "application/merge-patch+json",
                                                   "application/apply-patch+yaml"])
        body = await self.decode_body(r)
        rt = self.storage_type(r.rt)
        if ptype == "apply" and not r.q("fieldManager"):
            raise status.bad_request("PATCH, application/apply-patch+yaml requires fieldManager to be set")
        for attempt in range(10):
            e, cached = await self.for_update(rt, r.name, r.namespace, fresh=attempt > 0)
            if e is None:
                if ptype == "apply":
                    obj = self.check_identity(r, deep(body), r.name)
                    obj, warnings = self.check_fields(r, r.rt, obj)
                    created = await self.create_object(rt, obj, bool(r.query.getall("dryRun", [])), self.manager(r),
                                                       r.rt, "Apply", deep(body))
                    return self.respond(r, created, 201, warnings)
                raise status.not_found(rt.plural, rt.group, r.name)
            cur = self.output(r.rt, e.obj)
            target = deep(cur)
            node = self.schema_of(r.rt)
            try:
                if sub == "status":
                    pass
                if ptype == "json":
                    patched = json_patch(target, body)
                elif ptype == "merge":
                    if not isinstance(body, dict):
                        raise PatchError("json: cannot unmarshal into map")
                    patched = merge_patch(target, body)
                elif ptype == "strategic":
                    if not isinstance(body, dict):
                        raise PatchError("json: cannot unmarshal into map")
                    patched = strategic_merge(target, body, node)
                else:
                    if not isinstance(body, dict):
                        raise status.bad_request("error decoding YAML: object expected")
                    self.check_identity(r, deep(body), r.name)
                    old_set = None
                    for mf in (cur.get("metadata") or {}).get("managedFields") or []:
                        if mf.get("manager") == r.q("fieldManager") and mf.get("operation") == "Apply" and \
                                mf.get("subresource", "") == (sub or ""):
                            old_set = mf.get("fieldsV1")
                    patched = apply_patch(target, body, node, old_set)
            except PatchError as exc:
                # a JSON patch that cannot apply is 422 (as the real server); a malformed patch 400
                raise status.APIError(422 if ptype == "json" else 400, "Invalid" if ptype == "json" else "BadRequest",
                                      str(exc)) from None
            if not isinstance(patched, dict):
                raise status.bad_request("the patch produced a non-object")
            patched.setdefault("metadata", {})
            patched["metadata"]["name"] = r.name
            if r.namespace:
                patched["metadata"]["namespace"] = r.namespace
            if patched.get("apiVersion") != r.rt.api_version or patched.get("kind") != r.rt.kind:
                self.check_identity(r, patched, r.name)
            patched, warnings = self.check_fields(r, r.rt, patched)
            if r.rt.group == "events.k8s.io":
                from testbed.apiserver.events import events_to_core

                patched = events_to_core(patched)
            want_rv = patched["metadata"].get("resourceVersion")
            if want_rv and want_rv != str(e.rev):
                if cached:
                    continue
                raise status.conflict(rt.plural, rt.group, r.name)
            try:
                new = await self.update_object(rt, e, patched, sub=sub, manager=self.manager(r),
                                               dry_run=bool(r.query.getall("dryRun", [])), input_rt=r.rt,
                                               operation="Apply" if ptype == "apply" else "Update",
                                               applied=deep(body) if ptype == "apply" else None, cached=cached)
            except StaleCache:
                continue
            except APIError as err:
                if err.reason == "Conflict" and not want_rv:
                    continue
                raise
            return self.respond(r, new, 200, warnings)
        raise status.conflict(rt.plural, rt.group, r.name)

    # --- delete -----------------------------------------------------------------------------
    async def delete_options(self, r: Request) -> dict:
        opts: dict[str, Any] = {}
        raw = await self.read_body(r)
        ctype = (r.http.headers.get("Content-Type") or "").split(";")[0].strip()
        if raw and ctype == "application/vnd.kubernetes.protobuf":
            from testbed.apiserver import protobuf

            try:
                opts = protobuf.decode(raw)
            except protobuf.ProtobufError as exc:
                raise status.bad_request(f"error decoding protobuf: {exc}") from None
        elif raw.strip():
            try:
                opts = json.loads(raw)
            except ValueError as exc:
                raise status.bad_request(f"couldn't get version/kind; json parse error: {_go_json_error(exc)}") \
                    from None
            if not isinstance(opts, dict):
                raise status.bad_request("json: cannot unmarshal into DeleteOptions")
        q = r.query
        if "gracePeriodSeconds" in q:
            try:
                opts["gracePeriodSeconds"] = int(q["gracePeriodSeconds"])
            except ValueError:
                raise status.bad_request(f'invalid gracePeriodSeconds "{q["gracePeriodSeconds"]}"') from None
        if "propagationPolicy" in q:
            opts["propagationPolicy"] = q["propagationPolicy"]
        if "orphanDependents" in q:
            opts["orphanDependents"] = q["orphanDependents"].lower() == "true"
        if q.getall("dryRun", []):
            opts["dryRun"] = q.getall("dryRun")
        pp = opts.get("propagationPolicy")
        if pp is not None and pp not in ("Orphan", "Background", "Foreground"):
            raise status.invalid("DeleteOptions", "", "", [status.not_supported(
                "propagationPolicy", pp, ["Foreground", "Background", "Orphan", "nil"])])
        return opts

    async def delete(self, r: Request) -> web.Response:
        self._need_namespace(r)
        opts = await self.delete_options(r)
        rt = self.storage_type(r.rt)
        obj, _done = await self.delete_object(rt, r.name, r.namespace, opts)
        return self.respond(r, obj, 200)  # the object, also while its deletion is pending

    async def delete_object(self, rt: ResourceType, name: str, ns: str | None, opts: dict) -> tuple[dict, bool]:
        """Delete (or start deleting) an object. Returns (its state, deleted now?)."""
        for _attempt in range(10):
            e = await self.get_entry(rt, name, ns)
            obj = deep(e.obj)
            meta = obj["metadata"]
            pre = opts.get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != meta.get("uid"):
                raise status.conflict(rt.plural, rt.group, name,
                                      f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: "
                                      f"{meta.get('uid')}")
            if pre.get("resourceVersion") and pre["resourceVersion"] != str(e.rev):
                raise status.conflict(rt.plural, rt.group, name,
                                      f"Precondition failed: ResourceVersion in precondition: "
                                      f"{pre['resourceVersion']}, ResourceVersion in object meta: {e.rev}")
            if opts.get("dryRun"):
                return obj, False
            policy = opts.get("propagationPolicy")
            if policy is None and opts.get("orphanDependents") is not None:
                policy = "Orphan" if opts["orphanDependents"] else "Background"
            finalizers = list(meta.get("finalizers") or [])
            changed = False
            if policy == "Foreground" and "foregroundDeletion" not in finalizers:
                finalizers.append("foregroundDeletion")
                changed = True
            if policy == "Orphan" and "orphan" not in finalizers:
                finalizers.append("orphan")
                changed = True
            grace = 0
            if rt.kind == "Pod":
                grace = self._pod_grace(obj, opts)
            if rt.kind == "Namespace":
                if not meta.get("deletionTimestamp"):
                    meta["deletionTimestamp"] = now_iso()
                    meta["deletionGracePeriodSeconds"] = 0
                    obj.setdefault("status", {})["phase"] = "Terminating"
                    changed = True
                if changed:
                    meta["finalizers"] = finalizers or meta.get("finalizers")
                    if not meta["finalizers"]:
                        meta.pop("finalizers")
                    try:
                        rev = await self.storage.update(e.key, obj, e.rev)
                    except ds_errors.Conflict:
                        continue
                    meta["resourceVersion"] = str(rev)
                    self.gc.kick()
                return obj, False
            if finalizers or grace > 0:
                if finalizers:
                    meta["finalizers"] = finalizers
                now = time.time()
                if not meta.get("deletionTimestamp") or (rt.kind == "Pod" and grace < int(
                        meta.get("deletionGracePeriodSeconds") or 0)):
                    meta["deletionTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + grace))
                    meta["deletionGracePeriodSeconds"] = grace
                    changed = True
                if not changed:
                    return obj, False
                try:
                    rev = await self.storage.update(e.key, obj, e.rev)
                except ds_errors.Conflict:
                    continue
                meta["resourceVersion"] = str(rev)
                self.gc.kick()
                return obj, False
            try:
                await self._remove(rt, e.key, e.rev, obj)
            except ds_errors.Conflict:
                continue
            return obj, True
        raise status.conflict(rt.plural, rt.group, name)

    def _pod_grace(self, pod: dict, opts: dict) -> int:
        spec, st = pod.get("spec") or {}, pod.get("status") or {}
        grace = opts.get("gracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        grace = max(0, int(grace))
        if not spec.get("nodeName") or st.get("phase") in ("Succeeded", "Failed"):
            return 0
        if grace == 0 and opts.get("gracePeriodSeconds") == 0:
            return 0
        # a pod on a node waits for its kubelet (which deletes it with grace 0); a force
        # delete (--grace-period=0 --force) removes it now
        return max(grace, 1) if opts.get("gracePeriodSeconds") != 0 else 0

    async def _remove(self, rt: ResourceType, key: str, rev: int, obj: dict) -> None:
        try:
            await self.storage.delete(key, rev)
        except ds_errors.NotFound:
            raise status.not_found(rt.plural, rt.group, obj["metadata"].get("name", "")) from None
        if rt.kind == "Service":
            ip = (obj.get("spec") or {}).get("clusterIP")
            if ip and ip != "None":
                await self.release_ip(ip)
        if rt.kind == "CustomResourceDefinition":
            await self.crds.removed(obj)
        self.gc.kick()

    async def delete_collection(self, r: Request) -> web.Response:
        if "deletecollection" not in r.rt.verbs:
            raise status.method_not_allowed()
        opts = await self.delete_options(r)
        labels, fields = self.selectors(r)
        ok = self._filter(r, labels, fields)
        rt = self.storage_type(r.rt)
        entries, rev, _ = await self.storage.list(r.rt.list_prefix(r.namespace))
        items = []
        for e in entries:
            if not ok(e.obj):
                continue
            try:
                obj, _ = await self.delete_object(rt, e.obj["metadata"]["name"], e.obj["metadata"].get("namespace"),
                                                  opts)
                items.append(self.output(r.rt, obj))
            except APIError as err:
                if err.code != 404:
                    raise
        from testbed.apiserver.responses import json_response

        return json_response({"kind": f"{r.rt.kind}List", "apiVersion": r.rt.api_version,
                              "metadata": {"resourceVersion": str(rev)}, "items": items})

    # --- subresources -----------------------------------------------------------------------
    async def subresource(self, r: Request) -> web.StreamResponse:
        sub, m = r.sub, r.method
        self._need_namespace(r)
        if sub == "status" or sub == "finalize":
            if m == "GET" and sub == "status":
                return await self.get(r)
            if m == "PUT":
                body = await self.decode_body(r, expect_kind=r.rt.kind)
                obj = self.check_identity(r, body, r.name)
                obj, warnings = self.check_fields(r, r.rt, obj)
                rv = obj["metadata"].get("resourceVersion")
                for fresh in (False, True):
                    e, cached = await self.for_update(r.rt, r.name, r.namespace, rv, fresh)
                    if e is None:
                        raise status.not_found(r.rt.plural, r.rt.group, r.name)
                    if rv and rv != str(e.rev):
                        raise status.conflict(r.rt.plural, r.rt.group, r.name)
                    target = obj
                    if sub == "finalize":
                        target = deep(e.obj)
                        target.setdefault("spec", {})["finalizers"] = (obj.get("spec") or {}).get("finalizers") or []
                        if not target["spec"]["finalizers"]:
                            target["spec"].pop("finalizers")
                    try:
                        out = await self.update_object(r.rt, e, target, sub="status" if sub == "status" else "finalize",
                                                       manager=self.manager(r), cached=cached)
                    except StaleCache:
                        continue
                    return self.respond(r, out, 200, warnings)
                raise AssertionError("unreachable: the second attempt reads etcd")
            if m == "PATCH" and sub == "status":
                return await self.patch(r, sub="status")
            raise status.method_not_allowed()
        if sub == "scale":
            return await self.scale(r)
        if sub == "binding":
            if m != "POST":
                raise status.method_not_allowed()
            return await self.bind(r)
        if sub == "token":
            if m != "POST":
                raise status.method_not_allowed()
            return await self.token_request(r)
        if sub == "eviction":
            if m != "POST":
                raise status.method_not_allowed()
            await self.decode_body(r)
            obj, _ = await self.delete_object(r.rt, r.name, r.namespace, {})
            from testbed.apiserver.responses import json_response

            return json_response(status.status_success(), 201)
        if sub in ("log", "exec", "attach", "portforward"):
            return await self.kubelet.handle(r)
        raise status.page_not_found()

    async def scale(self, r: Request) -> web.Response:
        from testbed.apiserver.responses import json_response

        e = await self.get_entry(r.rt, r.name, r.namespace)

        def as_scale(obj: dict) -> dict:
            spec, st = obj.get("spec") or {}, obj.get("status") or {}
            from kubeclient.selectors import to_string

            return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                    "metadata": {k: obj["metadata"][k] for k in ("name", "namespace", "uid", "resourceVersion",
                                                                "creationTimestamp") if k in obj["metadata"]},
                    "spec": {"replicas": spec.get("replicas", 0)},
                    "status": {"replicas": st.get("replicas", 0),
                               "selector": to_string(spec.get("selector"))}}

        if r.method == "GET":
            return json_response(as_scale(e.obj))
        if r.method in ("PUT", "PATCH"):
            body = await self.decode_body(r)
            if r.method == "PUT":
                scale = body
            else:
                ctype = (r.http.headers.get("Content-Type") or "").split(";")[0]
                base = as_scale(e.obj)
                try:
                    scale = json_patch(base, body) if PATCH_TYPES.get(ctype) == "json" else merge_patch(base, body)
                except PatchError as exc:
                    raise status.APIError(422, "Invalid", str(exc)) from None
            reps = ((scale or {}).get("spec") or {}).get("replicas")
            if not isinstance(reps, int) or isinstance(reps, bool) or reps < 0:
                raise status.invalid("Scale", "autoscaling", r.name, [status.invalid_value(
                    "spec.replicas", reps, "must be greater than or equal to 0")])
            rv = ((scale or {}).get("metadata") or {}).get("resourceVersion")
            if rv and rv != str(e.rev):
                raise status.conflict(r.rt.plural, r.rt.group, r.name)
            obj = deep(e.obj)
            obj.setdefault("spec", {})["replicas"] = reps
            new = await self.update_object(r.rt, e, obj, manager=self.manager(r))
            return json_response(as_scale(new))
        raise status.method_not_allowed()

    async def bind(self, r: Request) -> web.Response:
        body = await self.decode_body(r, expect_kind="Binding")
        if not isinstance(body, dict):
            raise status.bad_request("expected a Binding")
        target = body.get("target") or {}
        node = target.get("name")
        if not node:
            raise status.invalid("Binding", "", r.name, [status.required("target.name")])
        from testbed.apiserver.responses import json_response

        for attempt in range(10):
            e, cached = await self.for_update(r.rt, r.name, r.namespace, fresh=attempt > 0)
            if e is None:
                raise status.not_found(r.rt.plural, r.rt.group, r.name)
            pod = deep(e.obj)
            if cached and ((pod.get("metadata") or {}).get("deletionTimestamp") or (pod.get("spec") or {}).get(
                    "nodeName")):
                continue  # a refusal is decided on etcd's copy
            if (pod.get("metadata") or {}).get("deletionTimestamp"):
                raise status.conflict("pods/binding", "", r.name, f"pod {r.name} is being deleted, cannot be assigned "
                                      "to a host")
            if (pod.get("spec") or {}).get("nodeName"):
                raise status.conflict("pods/binding", "", r.name,
                                      f'pod {r.name} is already assigned to node "{pod["spec"]["nodeName"]}"')
            pod["spec"]["nodeName"] = node
            conds = [c for c in (pod.setdefault("status", {}).get("conditions") or [])
                     if c.get("type") != "PodScheduled"]
            conds.append({"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                          "lastTransitionTime": now_iso()})
            pod["status"]["conditions"] = conds
            for k, v in ((body.get("metadata") or {}).get("annotations") or {}).items():
                pod["metadata"].setdefault("annotations", {})[k] = v
            try:
                await self.storage.update(e.key, pod, e.rev)
            except ds_errors.Conflict:
                continue
            return json_response(status.status_success(), 201)
        raise status.conflict("pods/binding", "", r.name)

    async def token_request(self, r: Request) -> web.Response:
        from testbed.apiserver.auth import sign_token
        from testbed.apiserver.responses import json_response

        body = await self.decode_body(r, expect_kind="TokenRequest")
        e = await self.get_entry(r.rt, r.name, r.namespace)
        if self.server.sa_signing_key is None:
            raise status.internal("no service account signing key configured")
        spec = (body or {}).get("spec") or {}
        exp = int(spec.get("expirationSeconds") or 3600)
        if exp < 600:
            raise status.invalid("TokenRequest", "authentication.k8s.io", r.name, [status.invalid_value(
                "spec.expirationSeconds", exp, "may not specify a duration less than 10 minutes")])
        pod = None
        ref = spec.get("boundObjectRef")
        if ref and ref.get("kind") == "Pod":
            pod = {"name": ref.get("name", ""), "uid": ref.get("uid", "")}
        token = sign_token(self.server.sa_signing_key, r.namespace or "", r.name, e.obj["metadata"].get("uid", ""),
                           expiration=exp, audiences=spec.get("audiences") or None, pod=pod)
        t_exp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + exp))
        return json_response({"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                              "metadata": {"name": r.name, "namespace": r.namespace,
                                           "creationTimestamp": now_iso()},
                              "spec": {"audiences": spec.get("audiences") or
                                       ["https://kubernetes.default.svc.cluster.local"],
                                       "expirationSeconds": exp, "boundObjectRef": ref},
                              "status": {"token": token, "expirationTimestamp": t_exp}}, 201)

    async def service_account_valid(self, claims: dict) -> bool:
        """A token's ServiceAccount must still exist (with the uid it was issued for). Read
        from the watch cache; when the cache does not have it (or has another uid) the
        storage is read, as kube-apiserver's token getter falls back from its informer to a
        live GET: a token for a ServiceAccount created a moment ago authenticates although
        the cache has not seen the create yet."""
        k8s = claims.get("kubernetes.io") or {}
        sa = k8s.get("serviceaccount") or {}
        rt = self.registry.get("", "v1", "serviceaccounts")
        key = rt.key(sa.get("name", ""), k8s.get("namespace", ""))
        uid = sa.get("uid")

        def matches(e: Any) -> bool:
            return e is not None and (not uid or e.obj["metadata"].get("uid") == uid)

        if matches(self.storage.hub.cache.get(key)):
            return True
        try:
            return matches(await self.storage.get(key))
        except Exception as exc:  # noqa: BLE001 - etcd unreachable: the token cannot be checked
            log.info("token of %s: its ServiceAccount cannot be read: %s", key, exc)
            return False

    # --- bootstrap and controllers ------------------------------------------------------------
    async def bootstrap(self) -> None:
        """What kube-apiserver's bootstrap controllers ensure: system namespaces, the
        ``kubernetes`` Service and its endpoints, the system PriorityClasses, the
        ``kube-root-ca.crt`` ConfigMap and ``default`` ServiceAccount of each namespace."""
        from testbed.apiserver import bootstrap

        await self.crds.load()
        await bootstrap.ensure(self)

    def start_controllers(self) -> list[asyncio.Task]:
        from testbed.apiserver import bootstrap

        tasks = [asyncio.create_task(bootstrap.namespace_contents(self))]
        if self.server.opts.enable_garbage_collector:
            tasks.append(asyncio.create_task(self.gc.run()))
        if self.server.opts.etcd_compaction_interval > 0:
            tasks.append(asyncio.create_task(self.compactor(self.server.opts.etcd_compaction_interval)))
        return tasks

    async def compactor(self, interval: float) -> None:
        """Compact etcd's history as kube-apiserver does: every interval, up to the revision
        seen one interval before (so a watcher is never more than one interval behind)."""
        last = 0
        while True:
            await asyncio.sleep(interval)
            try:
                now = await self.storage.revision()
                if last:
                    await self.storage.call("/v3/kv/compaction", {"revision": str(last)})
                    log.info("compacted etcd to revision %d", last)
                last = now
            except ds_errors.Compacted:
                last = 0
            except ds_errors.DatastoreError as exc:
                if "compacted" not in str(exc):
                    log.info("compaction skipped: %s", exc)

    async def internal_create(self, obj: dict) -> dict | None:
        """Create an object as the server itself (bootstrap); None if it exists."""
        rt = self.registry.by_kind(obj["apiVersion"], obj["kind"])
        try:
            return await self.create_object(rt, obj, manager="kube-apiserver")
        except APIError as err:
            if err.code == 409:
                return None
            raise


def _spec_of(obj: dict) -> Any:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _same(a: dict, b: dict) -> bool:
    def strip(o: dict) -> dict:
        o = dict(o)
        m = dict(o.get("metadata") or {})
        m.pop("resourceVersion", None)
        m.pop("managedFields", None)
        o["metadata"] = m
        return o

    return strip(a) == strip(b)


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def _go_json_error(exc: ValueError) -> str:
    msg = str(exc)
    if "Expecting value" in msg:
        return "invalid character looking for beginning of value"
    if "Unterminated string" in msg or "Expecting" in msg:
        return "unexpected end of JSON input" if "line 1" in msg and "char" in msg and "Unterminated" in msg \
            else f"invalid character after object key:value pair ({msg})"
    return msg
