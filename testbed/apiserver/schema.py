"""Schemas of the built-in kinds, derived from the official Python client's models.

The ``kubernetes`` package's model classes carry, for every API type, its fields
(``openapi_types``), their JSON names (``attribute_map``), which are required and the
field descriptions: the same facts as the API's OpenAPI document, so the server
checks unknown fields (``fieldValidation``), value types, and serves OpenAPI v2/v3
(for ``kubectl explain`` and ``apply``) from one source, without a hand-kept copy.

A schema node is a :class:`Node`; custom resources get Nodes from their CRD's
``openAPIV3Schema`` (:func:`from_openapi`).

Building the built-in kinds' Nodes from the client's models (importing ~150 pydantic
model classes) costs ~0.5 s of CPU, and the API server needs them at once (request
checks, OpenAPI). :func:`preload` keeps the built graph on disk as plain JSON under
``.cache/schema/`` of the checkout (``$CALICOLAB_SCHEMA_CACHE`` overrides), keyed by a
hash of this module's source, the client package's version and the models asked for:
a start then loads it in ~20 ms and never imports the client.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any

# (model, json field) -> (patch strategy, merge key): the built-in types' strategic-merge
# patch metadata (the Go types' patchStrategy/patchMergeKey struct tags).
PATCH_META: dict[tuple[str, str], tuple[str, str | None]] = {
    ("V1PodSpec", "containers"): ("merge", "name"),
    ("V1PodSpec", "initContainers"): ("merge", "name"),
    ("V1PodSpec", "ephemeralContainers"): ("merge", "name"),
    ("V1PodSpec", "volumes"): ("merge,retainKeys", "name"),
    ("V1PodSpec", "imagePullSecrets"): ("merge", "name"),
    ("V1PodSpec", "hostAliases"): ("merge", "ip"),
    ("V1PodSpec", "resourceClaims"): ("merge,retainKeys", "name"),
    ("V1PodSpec", "schedulingGates"): ("merge", "name"),
    ("V1Container", "ports"): ("merge", "containerPort"),
    ("V1Container", "env"): ("merge", "name"),
    ("V1Container", "volumeMounts"): ("merge", "mountPath"),
    ("V1Container", "volumeDevices"): ("merge", "devicePath"),
    ("V1EphemeralContainer", "env"): ("merge", "name"),
    ("V1EphemeralContainer", "volumeMounts"): ("merge", "mountPath"),
    ("V1ServiceSpec", "ports"): ("merge", "port"),
    ("V1ObjectMeta", "finalizers"): ("merge", None),
    ("V1ObjectMeta", "ownerReferences"): ("merge", "uid"),
    ("V1PodStatus", "conditions"): ("merge", "type"),
    ("V1PodStatus", "podIPs"): ("merge", "ip"),
    ("V1PodStatus", "hostIPs"): ("merge", "ip"),
    ("V1NodeStatus", "conditions"): ("merge", "type"),
    ("V1NodeStatus", "addresses"): ("merge", "type"),
    ("V1NodeSpec", "podCIDRs"): ("merge", None),
    ("V1NamespaceStatus", "conditions"): ("merge", "type"),
    ("V1DeploymentStatus", "conditions"): ("merge", "type"),
    ("V1ReplicaSetStatus", "conditions"): ("merge", "type"),
    ("V1DaemonSetStatus", "conditions"): ("merge", "type"),
    ("V1StatefulSetStatus", "conditions"): ("merge", "type"),
    ("V1DeploymentSpec", "strategy"): ("retainKeys", None),
    ("V1DaemonSetSpec", "updateStrategy"): ("retainKeys", None),
    ("V1ServiceAccount", "secrets"): ("merge", "name"),
    ("V1ServiceStatus", "conditions"): ("merge", "type"),
    ("V1PodDisruptionBudgetStatus", "conditions"): ("merge", "type"),
    ("V1CustomResourceDefinitionStatus", "conditions"): ("merge", "type"),
}

QUANTITY_MAPS = {"limits", "requests", "capacity", "allocatable", "hard", "used"}


@dataclass
class Node:
    """One schema node: ``type`` is object/array/map/string/integer/number/boolean/
    int-or-string/quantity/any."""

    type: str
    fields: dict[str, Node] = field(default_factory=dict)  # object
    item: Node | None = None  # array / map values
    required: tuple[str, ...] = ()
    model: str = ""  # model class name (object) - also the OpenAPI definition name
    description: str = ""
    patch_strategy: str = ""
    merge_key: str | None = None
    format: str = ""
    preserve_unknown: bool = False  # x-kubernetes-preserve-unknown-fields
    embedded: bool = False
    openapi: dict[str, Any] | None = None  # CRD schema of this node (for CR validation)


def _models():
    import kubernetes.client.models as m

    return m


_LIST = re.compile(r"^List\[(.+)\]$")
_DICT = re.compile(r"^Dict\[str, (.+)\]$")


def _annotation_is_int_or_str(ann: Any) -> bool:
    text = repr(ann)
    return "StrictInt" in text and "StrictStr" in text


log = logging.getLogger("apiserver.schema")

_preloaded: dict[str, Node] = {}


def model_node(model: str) -> Node:
    """The Node of a client model class (``V1Pod``): from :func:`preload`'s graph, else
    built from the client's model once and cached."""
    n = _preloaded.get(model)
    return n if n is not None else _model_node_built(model)


@functools.cache
def _model_node_built(model: str) -> Node:
    return _build(model, {})


def cache_dir() -> str:
    """``$CALICOLAB_SCHEMA_CACHE``, else ``.cache/schema`` of the checkout."""
    return os.environ.get("CALICOLAB_SCHEMA_CACHE") or os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), ".cache", "schema")


def cache_key(models: list[str]) -> str:
    """What the built graph depends on: this module's source (how Nodes are built), the
    client package (its ``__init__`` carries its version) and the root models."""
    h = hashlib.sha256()
    with open(__file__, "rb") as f:
        h.update(f.read())
    spec = importlib.util.find_spec("kubernetes")
    if spec is not None and spec.origin:
        with open(spec.origin, "rb") as f:
            h.update(f.read())
    h.update("\0".join(sorted(models)).encode())
    return h.hexdigest()[:32]


def preload(models: list[str] | set[str] | tuple[str, ...]) -> None:
    """Make the Nodes of ``models`` (and every model they reach) available to
    :func:`model_node` from the on-disk cache; on a miss build them (one graph: a model
    reached from several roots is one Node, as within one root) and write the cache.
    A cache that cannot be read or written only costs the build."""
    roots = sorted(set(models))
    if all(m in _preloaded for m in roots):
        return
    path = os.path.join(cache_dir(), f"models-{cache_key(roots)}.json")
    try:
        with open(path, "rb") as f:
            _preloaded.update(decode_graph(json.loads(f.read())))
        return
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        if not isinstance(exc, FileNotFoundError):
            log.warning("schema cache %s unreadable (%s): building it again", path, exc)
    seen: dict[str, Node] = {}
    built = {m: _build(m, seen) for m in roots}
    _preloaded.update(built)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".models-")
        with os.fdopen(fd, "w") as f:
            json.dump(encode_graph(built), f, separators=(",", ":"))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("schema cache %s not written: %s", path, exc)


def encode_graph(roots: dict[str, Node]) -> dict[str, Any]:
    """The Node graph under ``roots`` as plain JSON, keeping its sharing (a Node or a
    ``fields`` dict reached twice is one entry: recursive models, and a field's copy of a
    model node shares that model's ``fields``)."""
    nodes: list[list[Any]] = []
    dicts: list[dict[str, int]] = []
    node_ix: dict[int, int] = {}
    dict_ix: dict[int, int] = {}

    def nref(n: Node) -> int:
        i = node_ix.get(id(n))
        if i is not None:
            return i
        if n.openapi is not None:
            raise ValueError(f"a CRD schema node ({n.model or n.type}) is not cached")
        i = node_ix[id(n)] = len(nodes)
        row: list[Any] = [n.type, -1, -1, list(n.required), n.model, n.description, n.patch_strategy,
                          n.merge_key, n.format, n.preserve_unknown, n.embedded]
        nodes.append(row)
        row[1] = dref(n.fields)
        row[2] = nref(n.item) if n.item is not None else -1
        return i

    def dref(d: dict[str, Node]) -> int:
        i = dict_ix.get(id(d))
        if i is not None:
            return i
        i = dict_ix[id(d)] = len(dicts)
        out: dict[str, int] = {}
        dicts.append(out)
        for k, v in d.items():
            out[k] = nref(v)
        return i

    return {"roots": {m: nref(n) for m, n in roots.items()}, "nodes": nodes, "dicts": dicts}


def decode_graph(doc: dict[str, Any]) -> dict[str, Node]:
    """The roots of a graph :func:`encode_graph` wrote (the same sharing)."""
    rows = doc["nodes"]
    dicts: list[dict[str, Node]] = [{} for _ in doc["dicts"]]
    nodes = [Node(r[0], dicts[r[1]], None, tuple(r[3]), r[4], r[5], r[6], r[7], r[8], r[9], r[10]) for r in rows]
    for n, r in zip(nodes, rows, strict=True):
        if r[2] >= 0:
            n.item = nodes[r[2]]
    for d, src in zip(dicts, doc["dicts"], strict=True):
        for k, i in src.items():
            d[k] = nodes[i]
    return {m: nodes[i] for m, i in doc["roots"].items()}


def _build(model: str, seen: dict[str, Node]) -> Node:
    if model in seen:
        return seen[model]
    cls = getattr(_models(), model)
    doc = (cls.__doc__ or "").strip().split("\n\n")[0].strip()
    node = Node("object", model=model, description=doc)
    seen[model] = node
    req = []
    for py, typ in cls.openapi_types.items():
        json_name = cls.attribute_map[py]
        f = cls.model_fields.get(py)
        sub = _type_node(typ, f.annotation if f else None, seen, json_name)
        if f is not None:
            sub = _with_description(sub, f.description or "")
            if f.is_required():
                req.append(json_name)
        meta = PATCH_META.get((model, json_name))
        if meta:
            sub = _copy(sub)
            sub.patch_strategy, sub.merge_key = meta
        node.fields[json_name] = sub
    node.required = tuple(req)
    return node


def _copy(n: Node) -> Node:
    return Node(n.type, n.fields, n.item, n.required, n.model, n.description, n.patch_strategy, n.merge_key,
                n.format, n.preserve_unknown, n.embedded, n.openapi)


def _with_description(n: Node, desc: str) -> Node:
    if n.type == "object":  # keep the shared (recursive) object node; description on a copy
        c = _copy(n)
        c.description = desc or n.description
        return c
    n.description = desc
    return n


def _type_node(typ: str, ann: Any, seen: dict[str, Node], json_name: str) -> Node:
    m = _LIST.match(typ)
    if m:
        return Node("array", item=_type_node(m.group(1), None, seen, json_name))
    m = _DICT.match(typ)
    if m:
        inner = m.group(1)
        if inner == "str" and json_name in QUANTITY_MAPS:
            return Node("map", item=Node("quantity"))
        if inner == "bytes":
            return Node("map", item=Node("string", format="byte"))
        return Node("map", item=_type_node(inner, None, seen, json_name))
    if typ == "str":
        return Node("string")
    if typ == "int":
        return Node("integer")
    if typ == "float":
        return Node("number")
    if typ == "bool":
        return Node("boolean")
    if typ in ("datetime", "date"):
        return Node("string", format="date-time")
    if typ == "bytes":
        return Node("string", format="byte")
    if typ == "object":
        if ann is not None and _annotation_is_int_or_str(ann):
            return Node("int-or-string")
        return Node("any")
    return _build(typ, seen)


# --- checking ---------------------------------------------------------------------------------

class TypeMismatch(Exception):
    """A value of the wrong JSON type (the Go decoder's ``cannot unmarshal``)."""

    def __init__(self, path: str, got: str, want: str):
        super().__init__(f"cannot unmarshal {got} into Go struct field {path} of type {want}")
        self.path, self.got, self.want = path, got, want


def _json_type(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return "null"


_GO = {"string": "string", "integer": "int64", "number": "float64", "boolean": "bool", "object": "object",
       "array": "array", "map": "map[string]", "quantity": "resource.Quantity", "int-or-string": "intstr.IntOrString"}


def check(value: Any, node: Node, path: str, unknown: list[str], prune: bool = True) -> Any:
    """Check ``value`` against ``node``: unknown field paths are appended to ``unknown``
    (and dropped when ``prune``), a type mismatch raises :class:`TypeMismatch`.
    Returns the (pruned) value."""
    if value is None:
        return None
    t = node.type
    if t == "any" or node.preserve_unknown and t != "object":
        return value
    if t == "object":
        if not isinstance(value, dict):
            raise TypeMismatch(path or ".", _json_type(value), "object")
        if node.preserve_unknown and not node.fields:
            return value
        out = {}
        for k, v in value.items():
            sub = node.fields.get(k)
            p = f"{path}.{k}" if path else k
            if sub is None:
                if node.preserve_unknown:
                    out[k] = v
                    continue
                unknown.append(p)
                if not prune:
                    out[k] = v
                continue
            out[k] = check(v, sub, p, unknown, prune)
        return out
    if t == "array":
        if not isinstance(value, list):
            raise TypeMismatch(path, _json_type(value), "[]" + _GO.get(node.item.type if node.item else "any", "any"))
        return [check(v, node.item, f"{path}[{i}]", unknown, prune) if node.item else v
                for i, v in enumerate(value)]
    if t == "map":
        if not isinstance(value, dict):
            raise TypeMismatch(path, _json_type(value), "map[string]" + _GO.get(node.item.type if node.item else "any", ""))
        return {k: check(v, node.item, f"{path}.{k}", unknown, prune) if node.item else v for k, v in value.items()}
    if t == "string":
        if not isinstance(value, str):
            raise TypeMismatch(path, _json_type(value), "string")
    elif t == "integer":
        if isinstance(value, bool) or not (isinstance(value, int) or isinstance(value, float) and value.is_integer()):
            raise TypeMismatch(path, _json_type(value), "int64" if not isinstance(value, float) else "int64")
        return int(value)
    elif t == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeMismatch(path, _json_type(value), "float64")
    elif t == "boolean":
        if not isinstance(value, bool):
            raise TypeMismatch(path, _json_type(value), "bool")
    elif t in ("int-or-string", "quantity"):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeMismatch(path, _json_type(value), _GO[t])
    return value


def node_at(node: Node | None, path: list[str]) -> Node | None:
    """The node at a field path (list items and map values step through)."""
    for step in path:
        if node is None:
            return None
        if node.type in ("array", "map"):
            node = node.item
        if node is None or node.type != "object":
            return None
        node = node.fields.get(step)
    return node


# --- CRD schemas ----------------------------------------------------------------------------

def from_openapi(s: dict[str, Any] | None, top: bool = False) -> Node:
    """A Node from a CRD's structural ``openAPIV3Schema``."""
    if not s:
        return Node("any")
    typ = s.get("type")
    if s.get("x-kubernetes-int-or-string"):
        n = Node("int-or-string")
    elif typ == "object" or "properties" in s:
        props = s.get("properties") or {}
        n = Node("object", fields={k: from_openapi(v) for k, v in props.items()},
                 required=tuple(s.get("required") or ()))
        addl = s.get("additionalProperties")
        if isinstance(addl, dict) and not props:
            n = Node("map", item=from_openapi(addl))
        elif addl is True or (typ == "object" and not props and not s.get("x-kubernetes-preserve-unknown-fields")
                              and addl is None and not top):
            n.preserve_unknown = bool(addl is True)
        if s.get("x-kubernetes-preserve-unknown-fields"):
            n.preserve_unknown = True
        if s.get("x-kubernetes-embedded-resource"):
            n.embedded = True
            n.preserve_unknown = n.preserve_unknown or not props
    elif typ == "array":
        n = Node("array", item=from_openapi(s.get("items") or {}))
    elif typ in ("string", "integer", "number", "boolean"):
        n = Node(typ, format=s.get("format", ""))
    else:
        n = Node("any")
        n.preserve_unknown = True
    if s.get("x-kubernetes-preserve-unknown-fields") and n.type != "object":
        n.preserve_unknown = True
    n.description = s.get("description", "")
    n.openapi = s
    return n
