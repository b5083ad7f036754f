"""PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386), strategic merge
patch (with the built-in types' patch merge keys from :mod:`schema`), and the field
set bookkeeping server-side apply needs."""

from __future__ import annotations

import copy
from typing import Any

from testbed.apiserver.schema import Node


class PatchError(Exception):
    """A patch that cannot be applied (answered 422 or 400 by the caller)."""


# --- JSON patch ------------------------------------------------------------------------------

def _ptr(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f'invalid JSON pointer "{path}": must start with "/"')
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> tuple[Any, str]:
    cur = doc
    for p in parts[:-1]:
        if isinstance(cur, dict):
            if p not in cur:
                raise PatchError(f"doc is missing path: {path}: missing value")
            cur = cur[p]
        elif isinstance(cur, list):
            try:
                cur = cur[int(p)]
            except (ValueError, IndexError):
                raise PatchError(f"doc is missing path: {path}: missing value") from None
        else:
            raise PatchError(f"doc is missing path: {path}: missing value")
    return cur, parts[-1]


def _get(doc: Any, path: str) -> Any:
    cur = doc
    for p in _ptr(path):
        if isinstance(cur, dict) and p in cur:
            cur = cur[p]
        elif isinstance(cur, list):
            try:
                cur = cur[int(p)]
            except (ValueError, IndexError):
                raise PatchError(f"unable to get nil value at {path}") from None
        else:
            raise PatchError(f"doc is missing path: {path}: missing value")
    return cur


def json_patch(doc: Any, ops: Any) -> Any:
    """Apply an RFC 6902 patch."""
    if not isinstance(ops, list):
        raise PatchError("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op:
            raise PatchError("Unexpected kind: missing op")
        kind, path = op["op"], op.get("path", "")
        if kind == "test":
            if _get(doc, path) != op.get("value"):
                raise PatchError(f"testing value {path} failed: test failed")
            continue
        if kind in ("move", "copy"):
            val = copy.deepcopy(_get(doc, op.get("from", "")))
            if kind == "move":
                doc = _remove(doc, op.get("from", ""))
            doc = _add(doc, path, val)
            continue
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            doc = _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)
            doc = _remove(doc, path)
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        else:
            raise PatchError(f"Unexpected kind: {kind}")
    return doc


def _add(doc: Any, path: str, val: Any) -> Any:
    parts = _ptr(path)
    if not parts:
        return val
    parent, last = _parent(doc, parts, path)
    if isinstance(parent, dict):
        parent[last] = val
    elif isinstance(parent, list):
        if last == "-":
            parent.append(val)
        else:
            try:
                i = int(last)
            except ValueError:
                raise PatchError(f"add operation does not apply: doc is missing path: {path}") from None
            if i < 0 or i > len(parent):
                raise PatchError(f"add operation does not apply: doc is missing path: \"{path}\": missing value")
            parent.insert(i, val)
    else:
        raise PatchError(f"add operation does not apply: doc is missing path: \"{path}\": missing value")
    return doc


def _remove(doc: Any, path: str) -> Any:
    parts = _ptr(path)
    parent, last = _parent(doc, parts, path)
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"remove operation does not apply: doc is missing path: \"{path}\": missing value")
        del parent[last]
    elif isinstance(parent, list):
        try:
            del parent[int(last)]
        except (ValueError, IndexError):
            raise PatchError(f"remove operation does not apply: doc is missing path: \"{path}\": missing value") from None
    return doc


# --- JSON merge patch -----------------------------------------------------------------------

def merge_patch(doc: Any, patch: Any) -> Any:
    """Apply an RFC 7386 merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(doc) if isinstance(doc, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


# --- strategic merge patch -------------------------------------------------------------------

DIRECTIVES = ("$patch", "$retainKeys", "$setElementOrder", "$deleteFromPrimitiveList")


def strategic_merge(doc: Any, patch: Any, node: Node | None) -> Any:
    """Apply a strategic merge patch using the schema's patch strategies and merge keys."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    out = copy.deepcopy(doc) if isinstance(doc, dict) else {}
    fields = node.fields if node is not None and node.type == "object" else {}
    retain = patch.get("$retainKeys")
    for k, v in patch.items():
        if k.startswith("$setElementOrder/") or k in ("$retainKeys", "$patch"):
            continue
        if k.startswith("$deleteFromPrimitiveList/"):
            name = k.split("/", 1)[1]
            if isinstance(out.get(name), list) and isinstance(v, list):
                out[name] = [x for x in out[name] if x not in v]
            continue
        sub = fields.get(k)
        if node is not None and node.type == "map":
            sub = node.item
        if v is None:
            out.pop(k, None)
            continue
        if isinstance(v, list) and sub is not None and sub.type == "array" and "merge" in sub.patch_strategy:
            out[k] = _merge_list(out.get(k), v, sub)
            order = patch.get(f"$setElementOrder/{k}")
            if order is not None and isinstance(out[k], list):
                out[k] = _reorder(out[k], order, sub.merge_key)
        elif isinstance(v, dict):
            if v.get("$patch") == "delete":
                out.pop(k, None)
                continue
            child = sub
            out[k] = strategic_merge(out.get(k), v, child if child is not None and child.type in ("object", "map")
                                     else None)
            if out[k] is None:
                out.pop(k)
        else:
            out[k] = copy.deepcopy(v)
    if isinstance(retain, list):
        for k in list(out):
            if k not in retain:
                del out[k]
    return out


def _merge_list(cur: Any, patch: list, node: Node) -> list:
    cur = copy.deepcopy(cur) if isinstance(cur, list) else []
    key = node.merge_key
    item_node = node.item
    if key is None:  # a merged list of primitives (finalizers, podCIDRs)
        for v in patch:
            if isinstance(v, dict) and v.get("$patch") == "delete":
                continue
            if v not in cur:
                cur.append(copy.deepcopy(v))
        return cur
    for item in patch:
        if not isinstance(item, dict):
            cur.append(copy.deepcopy(item))
            continue
        if item.get("$patch") == "replace" and len(item) == 1:
            return [x for x in patch if not (isinstance(x, dict) and x.get("$patch"))]
        kv = item.get(key)
        idx = next((i for i, x in enumerate(cur) if isinstance(x, dict) and x.get(key) == kv), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                cur.pop(idx)
            continue
        if idx is None:
            cur.append(strategic_merge({}, item, item_node))
        else:
            cur[idx] = strategic_merge(cur[idx], item, item_node)
    return cur


def _reorder(items: list, order: list, key: str | None) -> list:
    def ident(x: Any) -> Any:
        return x.get(key) if key and isinstance(x, dict) else x

    pos = {repr(ident(o)): i for i, o in enumerate(order)}
    ordered = sorted((x for x in items if repr(ident(x)) in pos), key=lambda x: pos[repr(ident(x))])
    rest = [x for x in items if repr(ident(x)) not in pos]
    return ordered + rest


# --- server-side apply -----------------------------------------------------------------------

def field_set(obj: Any, node: Node | None, prefix: str = "") -> dict:
    """The managedFields ``fieldsV1`` of an applied configuration (f:/k: keys)."""
    out: dict[str, Any] = {}
    if not isinstance(obj, dict):
        return out
    for k, v in obj.items():
        if prefix == "" and k in ("apiVersion", "kind"):
            continue
        if prefix == "" and k == "metadata" and isinstance(v, dict):
            sub: dict[str, Any] = {}
            for mk in ("labels", "annotations"):
                if isinstance(v.get(mk), dict):
                    sub[f"f:{mk}"] = {f"f:{x}": {} for x in v[mk]}
            if isinstance(v.get("finalizers"), list):
                sub["f:finalizers"] = {f'v:"{x}"': {} for x in v["finalizers"]}
            if sub:
                out["f:metadata"] = sub
            continue
        child = None
        if node is not None:
            child = node.item if node.type == "map" else node.fields.get(k) if node.type == "object" else None
        if isinstance(v, dict):
            out[f"f:{k}"] = field_set(v, child, prefix + "." + k) or {}
        elif isinstance(v, list) and child is not None and child.type == "array" and child.merge_key:
            items = {}
            for it in v:
                if isinstance(it, dict) and child.merge_key in it:
                    items[f'k:{{"{child.merge_key}":{_json(it[child.merge_key])}}}'] = \
                        {".": {}, **field_set(it, child.item, prefix + "." + k)}
            out[f"f:{k}"] = items
        else:
            out[f"f:{k}"] = {}
    return out


def _json(v: Any) -> str:
    import json

    return json.dumps(v, separators=(",", ":"))


def remove_unowned(live: Any, old_set: dict, new_set: dict, node: Node | None) -> Any:
    """Remove from ``live`` the fields in ``old_set`` (what this manager applied before)
    that are not in ``new_set`` (what it applies now): SSA's pruning of dropped fields."""
    if not isinstance(live, dict):
        return live
    for fk, sub_old in old_set.items():
        if not fk.startswith("f:"):
            continue
        k = fk[2:]
        if k not in live:
            continue
        sub_new = new_set.get(fk)
        child = None
        if node is not None:
            child = node.item if node.type == "map" else node.fields.get(k) if node.type == "object" else None
        if sub_new is None:
            if k == "metadata":
                continue
            del live[k]
            continue
        if k == "metadata":
            for mk in ("labels", "annotations"):
                o = (sub_old or {}).get(f"f:{mk}") or {}
                n = (sub_new or {}).get(f"f:{mk}") or {}
                for lk in o:
                    if lk not in n and isinstance(live[k].get(mk), dict):
                        live[k][mk].pop(lk[2:], None)
            continue
        if isinstance(live[k], dict) and sub_old:
            remove_unowned(live[k], sub_old, sub_new, child)
        elif isinstance(live[k], list) and child is not None and child.merge_key:
            keep = []
            for it in live[k]:
                ident = f'k:{{"{child.merge_key}":{_json(it.get(child.merge_key))}}}' if isinstance(it, dict) else None
                if ident in (sub_old or {}) and ident not in (sub_new or {}):
                    continue
                if ident in (sub_new or {}) and ident in (sub_old or {}):
                    remove_unowned(it, sub_old[ident], sub_new[ident], child.item)
                keep.append(it)
            live[k] = keep
    return live


def apply_patch(live: dict | None, applied: dict, node: Node | None, old_set: dict | None) -> dict:
    """Server-side apply of ``applied`` (one manager) onto ``live``: fields this manager
    set before and no longer sets are removed, the rest merges as a strategic merge
    (list items by merge key, other lists replaced)."""
    base = copy.deepcopy(live) if live else {}
    if old_set:
        base = remove_unowned(base, old_set, field_set(applied, node), node)
    return strategic_merge(base, applied, node)
