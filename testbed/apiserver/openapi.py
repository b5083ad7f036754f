"""OpenAPI v3 (per group-version, as ``/openapi/v3/<path>?hash=...``) and v2 (JSON)
documents of the served types, generated from :mod:`schema` (built-ins) and the CRDs'
``openAPIV3Schema``. Enough for ``kubectl explain``, ``kubectl apply``'s
fieldValidation support check and its strategic-merge patch metadata."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from aiohttp import web

from testbed.apiserver import schema, status
from testbed.apiserver.registry import ResourceType

META = "io.k8s.apimachinery.pkg.apis.meta.v1."
INTSTR = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"

_PKG = {"": "io.k8s.api.core", "apps": "io.k8s.api.apps", "batch": "io.k8s.api.batch",
        "networking.k8s.io": "io.k8s.api.networking", "policy": "io.k8s.api.policy",
        "rbac.authorization.k8s.io": "io.k8s.api.rbac", "discovery.k8s.io": "io.k8s.api.discovery",
        "coordination.k8s.io": "io.k8s.api.coordination", "events.k8s.io": "io.k8s.api.events",
        "scheduling.k8s.io": "io.k8s.api.scheduling", "storage.k8s.io": "io.k8s.api.storage",
        "apiextensions.k8s.io": "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions",
        "apiregistration.k8s.io": "io.k8s.kube-aggregator.pkg.apis.apiregistration",
        "authentication.k8s.io": "io.k8s.api.authentication", "autoscaling": "io.k8s.api.autoscaling"}
_META_MODELS = {"V1ObjectMeta", "V1ManagedFieldsEntry", "V1OwnerReference", "V1LabelSelector",
                "V1LabelSelectorRequirement", "V1ListMeta", "V1Condition", "V1Status", "V1StatusDetails",
                "V1StatusCause", "V1DeleteOptions", "V1Preconditions"}
_STRIP = re.compile(r"^(?:[A-Z][a-z]+)?V\d+(?:alpha\d+|beta\d+)?(.+)$")


def _short(model: str) -> str:
    m = _STRIP.match(model)
    return m.group(1) if m else model


class Builder:
    """Builds the components of one document, naming each model once."""

    def __init__(self, pkg: str, version: str):
        self.pkg, self.version = pkg, version
        self.schemas: dict[str, Any] = {}
        self.names: dict[int, str] = {}

    def name_of(self, node: schema.Node) -> str:
        if node.model in _META_MODELS:
            return META + _short(node.model)
        return f"{self.pkg}.{self.version}.{_short(node.model)}"

    def ref(self, node: schema.Node, v3: bool = True) -> dict:
        name = self.name_of(node)
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder against recursion
            self.schemas[name] = self.object(node, v3)
        return {"$ref": ("#/components/schemas/" if v3 else "#/definitions/") + name}

    def object(self, node: schema.Node, v3: bool) -> dict:
        props = {}
        for k, sub in node.fields.items():
            props[k] = self.prop(sub, v3)
        d: dict[str, Any] = {"description": node.description, "type": "object", "properties": props}
        if node.required:
            d["required"] = list(node.required)
        return d

    def prop(self, n: schema.Node, v3: bool) -> dict:
        d: dict[str, Any]
        if n.type == "object" and n.model:
            r = self.ref(n, v3)
            d = {"allOf": [r]} if v3 else dict(r)
            if n.description:
                d["description"] = n.description
            d["default"] = {}
        elif n.type == "object":
            d = {"type": "object"}
            if n.fields:
                d["properties"] = {k: self.prop(s, v3) for k, s in n.fields.items()}
            if n.preserve_unknown:
                d["x-kubernetes-preserve-unknown-fields"] = True
        elif n.type == "array":
            items = self.prop(n.item, v3) if n.item else {}
            if "allOf" in items or "$ref" in items:  # the item type's own description stays on its schema
                items.pop("description", None)
            d = {"type": "array", "items": items}
        elif n.type == "map":
            d = {"type": "object", "additionalProperties": self.prop(n.item, v3) if n.item else {}}
        elif n.type == "int-or-string":
            self.schemas.setdefault(INTSTR, {"type": "string", "format": "int-or-string",
                                             "description": "IntOrString is a type that can hold an int32 or a "
                                                            "string."})
            d = {"allOf": [{"$ref": "#/components/schemas/" + INTSTR}]} if v3 else \
                {"$ref": "#/definitions/" + INTSTR}
        elif n.type == "quantity":
            self.schemas.setdefault(QUANTITY, {"type": "string", "description": "Quantity is a fixed-point "
                                                                                "representation of a number."})
            d = {"allOf": [{"$ref": "#/components/schemas/" + QUANTITY}]} if v3 else \
                {"$ref": "#/definitions/" + QUANTITY}
        elif n.type == "any":
            d = {"type": "object", "x-kubernetes-preserve-unknown-fields": True} if v3 else {"type": "object"}
        else:
            d = {"type": n.type}
            if n.format:
                d["format"] = n.format
        if n.description and "description" not in d:
            d["description"] = n.description
        if n.patch_strategy:
            d["x-kubernetes-patch-strategy"] = n.patch_strategy
        if n.merge_key:
            d["x-kubernetes-patch-merge-key"] = n.merge_key
            d["x-kubernetes-list-type"] = "map"
            d["x-kubernetes-list-map-keys"] = [n.merge_key]
        return d


def _params(v3: bool, names: list[str], where: str = "query") -> list[dict]:
    out = []
    for n in names:
        typ = "boolean" if n in ("force", "watch", "allowWatchBookmarks", "sendInitialEvents") else \
            "integer" if n in ("limit", "timeoutSeconds", "gracePeriodSeconds") else "string"
        p: dict[str, Any] = {"name": n, "in": where, "description": n, "uniqueItems": True}
        if where == "path":
            p["required"] = True
        if v3:
            p["schema"] = {"type": typ}
        else:
            p["type"] = typ
        out.append(p)
    return out


LIST_PARAMS = ["allowWatchBookmarks", "continue", "fieldSelector", "labelSelector", "limit", "resourceVersion",
               "resourceVersionMatch", "sendInitialEvents", "timeoutSeconds", "watch"]
WRITE_PARAMS = ["dryRun", "fieldManager", "fieldValidation"]


def _ops(rt: ResourceType, ref: dict, v3: bool) -> dict[str, Any]:
    """Paths of one resource with their operations."""
    gvk = {"group": rt.group, "kind": rt.kind, "version": rt.version}
    base = f"/apis/{rt.group}/{rt.version}" if rt.group else "/api/v1"
    coll = f"{base}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced else f"{base}/{rt.plural}"
    item = coll + "/{name}"
    ident = re.sub(r"[^A-Za-z0-9]", "", rt.group.title()) + rt.version.title() + rt.kind

    def body() -> dict:
        return {"content": {"*/*": {"schema": ref}}, "required": True} if v3 else {}

    def resp(code: str = "200") -> dict:
        if v3:
            return {code: {"description": "OK", "content": {"application/json": {"schema": ref}}}}
        return {code: {"description": "OK", "schema": ref}}

    def op(action: str, oid: str, params: list[str], with_body: bool = False) -> dict:
        o: dict[str, Any] = {"description": f"{action} {rt.kind}", "operationId": oid,
                             "parameters": _params(v3, params), "responses": resp(),
                             "x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk}
        if with_body:
            if v3:
                o["requestBody"] = body()
            else:
                o["parameters"].append({"name": "body", "in": "body", "required": True, "schema": ref})
        return o

    path_params = _params(v3, (["namespace"] if rt.namespaced else []) + ["name"], "path")
    paths = {
        coll: {"get": op("list", f"list{ident}", LIST_PARAMS), "post": op("post", f"create{ident}", WRITE_PARAMS, True),
               "parameters": _params(v3, ["namespace"], "path") if rt.namespaced else []},
        item: {"get": op("get", f"read{ident}", []),
               "put": op("put", f"replace{ident}", WRITE_PARAMS, True),
               "patch": op("patch", f"patch{ident}", WRITE_PARAMS + ["force"], True),
               "delete": op("delete", f"delete{ident}", ["dryRun", "gracePeriodSeconds", "propagationPolicy"]),
               "parameters": path_params},
    }
    return paths


def _doc_for(server: Any, group: str, version: str, v3: bool = True) -> dict:
    rts = server.registry.in_group_version(group, version)
    pkg = _PKG.get(group, ".".join(reversed(group.split("."))) if group else "io.k8s.api.core")
    b = Builder(pkg, version)
    paths: dict[str, Any] = {}
    for rt in sorted(rts, key=lambda r: r.plural):
        if rt.crd is not None:
            name = f"{pkg}.{version}.{rt.kind}"
            s = json.loads(json.dumps(((server.handlers.crds.version_of(rt).get("schema") or {})
                                       .get("openAPIV3Schema")) or {"type": "object"}))
            s.setdefault("properties", {})
            s["properties"]["metadata"] = {"allOf": [b.ref(schema.model_node("V1ObjectMeta"), v3)]} if v3 else \
                b.ref(schema.model_node("V1ObjectMeta"), v3)
            s["properties"].setdefault("apiVersion", {"type": "string"})
            s["properties"].setdefault("kind", {"type": "string"})
            s["x-kubernetes-group-version-kind"] = [{"group": rt.group, "kind": rt.kind, "version": rt.version}]
            b.schemas[name] = s
            ref = {"$ref": ("#/components/schemas/" if v3 else "#/definitions/") + name}
        else:
            node = schema.model_node(rt.model) if rt.model else None
            if node is None:
                continue
            ref = b.ref(node, v3)
            top = b.schemas[b.name_of(node)]
            top["x-kubernetes-group-version-kind"] = [{"group": rt.group, "kind": rt.kind, "version": rt.version}]
        paths.update(_ops(rt, ref, v3))
    info = {"title": "Kubernetes", "version": server_version()}
    if v3:
        return {"openapi": "3.0.0", "info": info, "paths": paths, "components": {"schemas": b.schemas}}
    return {"swagger": "2.0", "info": info, "paths": paths, "definitions": b.schemas}


def server_version() -> str:
    from testbed.apiserver.responses import KUBE_VERSION

    return KUBE_VERSION


def _registry_key(server: Any, gv: tuple[str, str] | None = None) -> str:
    """What a document is built from: the served resources (and their CRD objects) of group
    version ``gv``, or of every group (None: the v2 document)."""
    rts = server.registry.all() if gv is None else server.registry.in_group_version(*gv)
    items = sorted((rt.group, rt.version, rt.plural, id(rt.crd)) for rt in rts)
    return hashlib.sha256(repr(items).encode()).hexdigest()


_cache: dict[tuple[int, str, str], tuple[str, bytes, str]] = {}


def _encoded(server: Any, key: str, build: Any, gv: tuple[str, str] | None = None) -> tuple[bytes, str]:
    """The JSON of document ``key`` and its hash, built again only when what it is built from
    changed (:func:`_registry_key`): a group-version's document stays valid when another
    group's resources come (Calico's CRDs right after start-up, which made the first
    ``kubectl apply`` rebuild every document to answer /openapi/v3)."""
    reg = _registry_key(server, gv)
    c = _cache.get((id(server), key, "x"))
    if c is not None and c[0] == reg:
        return c[1], c[2]
    body = json.dumps(build(), separators=(",", ":")).encode()
    h = hashlib.sha512(body).hexdigest()[:128].upper()
    _cache[(id(server), key, "x")] = (reg, body, h)
    return body, h


async def serve(server: Any, req: web.Request, path: str) -> web.StreamResponse:
    """Answer /openapi/v2, /openapi/v3 and /openapi/v3/<api|apis/...>."""
    if path == "/openapi/v2":
        accept = req.headers.get("Accept", "")
        if accept and "json" not in accept and "*/*" not in accept:
            raise status.not_acceptable(["application/json"])

        def build_v2() -> dict:
            doc = {"swagger": "2.0", "info": {"title": "Kubernetes", "version": server_version()},
                   "paths": {}, "definitions": {}}
            for g, vs in server.registry.groups().items():
                for v in vs:
                    d = _doc_for(server, g, v, v3=False)
                    doc["paths"].update(d["paths"])
                    doc["definitions"].update(d["definitions"])
            return doc

        body, _ = _encoded(server, "v2", build_v2)
        return web.Response(body=body, headers={"Content-Type": "application/json"})
    if path == "/openapi/v3":
        paths = {}
        for g, vs in server.registry.groups().items():
            for v in vs:
                p = f"apis/{g}/{v}" if g else "api/v1"
                _, h = _encoded(server, p, lambda g=g, v=v: _doc_for(server, g, v), (g, v))
                paths[p] = {"serverRelativeURL": f"/openapi/v3/{p}?hash={h}"}
        return web.Response(body=json.dumps({"paths": paths}).encode(), headers={"Content-Type": "application/json"})
    rest = path[len("/openapi/v3/"):]
    parts = rest.split("/")
    if parts[0] == "api" and len(parts) == 2:
        g, v = "", parts[1]
    elif parts[0] == "apis" and len(parts) == 3:
        g, v = parts[1], parts[2]
    else:
        raise status.page_not_found()
    if v not in server.registry.groups().get(g, []):
        raise status.page_not_found()
    body, h = _encoded(server, rest, lambda: _doc_for(server, g, v), (g, v))
    headers = {"Content-Type": "application/json", "Etag": f'"{h}"'}
    if req.query.get("hash") == h:
        headers["Cache-Control"] = "public, immutable"
    return web.Response(body=body, headers=headers)
