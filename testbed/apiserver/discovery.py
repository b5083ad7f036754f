"""Discovery: /api, /apis, /apis/<group>, per group-version resource lists, and the
aggregated discovery documents (apidiscovery.k8s.io/v2) client-go asks for first."""

from __future__ import annotations

import hashlib
from typing import Any

from aiohttp import web

from testbed.apiserver import status
from testbed.apiserver.registry import ResourceType

AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"

SUBRESOURCE_VERBS = {
    "status": ["get", "patch", "update"],
    "scale": ["get", "patch", "update"],
    "binding": ["create"],
    "eviction": ["create"],
    "log": ["get"],
    "exec": ["create", "get"],
    "attach": ["create", "get"],
    "portforward": ["create", "get"],
    "finalize": ["update"],
    "token": ["create"],
}


def subresource_kind(rt: ResourceType, sub: str) -> tuple[str, str, str]:
    """(group, version, kind) a subresource answers with."""
    if sub == "scale":
        return "autoscaling", "v1", "Scale"
    if sub == "binding":
        return "", "v1", "Binding"
    if sub == "eviction":
        return "policy", "v1", "Eviction"
    if sub == "token":
        return "authentication.k8s.io", "v1", "TokenRequest"
    if sub in ("exec", "attach", "portforward"):
        return "", "v1", {"exec": "PodExecOptions", "attach": "PodAttachOptions",
                          "portforward": "PodPortForwardOptions"}[sub]
    if sub == "log":
        return "", "v1", "Pod"
    return rt.group, rt.version, rt.kind


def _hash(rt: ResourceType) -> str:
    import base64

    return base64.b64encode(hashlib.sha256(f"{rt.group}/{rt.version}/{rt.kind}".encode()).digest()[:8]).decode()


def _accepts_aggregated(req: web.Request) -> bool:
    return "as=APIGroupDiscoveryList" in req.headers.get("Accept", "") and "apidiscovery.k8s.io" in req.headers.get(
        "Accept", "")


def _json(doc: Any, ctype: str = "application/json") -> web.Response:
    import json

    resp = web.Response(body=json.dumps(doc, separators=(",", ":")).encode())
    resp.headers["Content-Type"] = ctype
    return resp


def api_root(server: Any, req: web.Request) -> web.Response:
    if _accepts_aggregated(req):
        return _json(aggregated(server, core=True), AGGREGATED)
    addr = server.opts.advertise_address or "127.0.0.1"
    return _json({"kind": "APIVersions", "versions": ["v1"],
                  "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                  "serverAddress": f"{addr}:{server.opts.secure_port}"}]})


def _group_doc(name: str, versions: list[str]) -> dict[str, Any]:
    vs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": vs, "preferredVersion": vs[0]}


def apis_root(server: Any, req: web.Request) -> web.Response:
    if _accepts_aggregated(req):
        return _json(aggregated(server, core=False), AGGREGATED)
    groups = [_group_doc(g, vs) for g, vs in server.registry.groups().items() if g]
    return _json({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})


def group(server: Any, name: str) -> web.Response:
    vs = server.registry.groups().get(name)
    if not vs or not name:
        raise status.page_not_found()
    doc = _group_doc(name, vs)
    doc.update({"kind": "APIGroup", "apiVersion": "v1"})
    return _json(doc)


def resource_list(server: Any, grp: str, version: str) -> web.Response:
    rts = server.registry.in_group_version(grp, version)
    if not rts:
        raise status.page_not_found()
    resources = []
    for rt in sorted(rts, key=lambda r: r.plural):
        r: dict[str, Any] = {"name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced,
                             "kind": rt.kind, "verbs": list(rt.verbs)}
        if rt.short_names:
            r["shortNames"] = list(rt.short_names)
        if rt.categories:
            r["categories"] = list(rt.categories)
        r["storageVersionHash"] = _hash(rt)
        resources.append(r)
        for sub in rt.subresources:
            g, v, k = subresource_kind(rt, sub)
            sr: dict[str, Any] = {"name": f"{rt.plural}/{sub}", "singularName": "", "namespaced": rt.namespaced,
                                  "kind": k, "verbs": SUBRESOURCE_VERBS.get(sub, ["get"])}
            if g != rt.group or v != rt.version:
                sr["group"], sr["version"] = g, v
            resources.append(sr)
    gv = f"{grp}/{version}" if grp else version
    return _json({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})


def aggregated(server: Any, core: bool) -> dict[str, Any]:
    """The APIGroupDiscoveryList of /api (core) or /apis (groups)."""
    items = []
    for g, versions in server.registry.groups().items():
        if (g == "") != core:
            continue
        vdocs = []
        for v in versions:
            res = []
            for rt in sorted(server.registry.in_group_version(g, v), key=lambda r: r.plural):
                d: dict[str, Any] = {"resource": rt.plural,
                                     "responseKind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
                                     "scope": "Namespaced" if rt.namespaced else "Cluster",
                                     "singularResource": rt.singular, "verbs": list(rt.verbs)}
                if rt.short_names:
                    d["shortNames"] = list(rt.short_names)
                if rt.categories:
                    d["categories"] = list(rt.categories)
                subs = []
                for sub in rt.subresources:
                    sg, sv, sk = subresource_kind(rt, sub)
                    subs.append({"subresource": sub, "responseKind": {"group": sg, "version": sv, "kind": sk},
                                 "verbs": SUBRESOURCE_VERBS.get(sub, ["get"])})
                if subs:
                    d["subresources"] = subs
                res.append(d)
            vdocs.append({"version": v, "resources": res, "freshness": "Current"})
        items.append({"metadata": {"name": g, "creationTimestamp": None}, "versions": vdocs})
    return {"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {},
            "items": items}
