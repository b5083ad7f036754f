"""``calicoctl patch <KIND> <NAME> --patch=<PATCH>``, as calicoctl v3.28.1 (calico.md section 13).

The patch is JSON, applied as a Kubernetes strategic merge patch onto the stored
object (``resourcemgr.Patch``): Calico's types declare no merge keys, so maps
merge recursively, lists are replaced whole and ``null`` deletes a key
(``$patch: replace|delete`` directives work on maps); ``metadata.finalizers``
merges as Kubernetes' ObjectMeta declares. The result is validated and written
with a compare-and-swap on the revision read, like ``calicoctl replace``.
``--type json|merge`` is accepted and ignored, as calicoctl does (its help says
"not yet implemented"); we say so on stderr.
"""

from __future__ import annotations

import copy
import json
from typing import Any, TextIO

from datastore import errors
from datastore.resources import Resource, from_document, resolve_kind

#: kinds ``-n`` applies to (the others are cluster-wide)
NAMESPACED_PATCH_KINDS = ("NetworkPolicy", "NetworkSet", "WorkloadEndpoint")


class PatchError(ValueError):
    """The patch is not valid JSON, or not an object."""


def strategic_merge(original: Any, patch: Any, path: str = "") -> Any:
    """Apply a strategic merge patch for types without merge keys (pure)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive is not None:
        raise PatchError(f"{path or 'patch'}: unknown $patch directive {directive!r} (use replace or delete)")
    if not isinstance(original, dict):
        original = {}
    out = copy.deepcopy(original)
    for key, value in patch.items():
        if key.startswith("$"):
            raise PatchError(f"{path}{key}: patch directives other than $patch are not supported")
        where = f"{path}{key}."
        if value is None:
            out.pop(key, None)
        elif path == "metadata." and key == "finalizers" and isinstance(value, list):
            cur = out.get(key) or []
            out[key] = cur + [f for f in value if f not in cur]
        elif isinstance(value, dict):
            merged = strategic_merge(out.get(key), value, where)
            if merged is None:
                out.pop(key, None)
            else:
                out[key] = merged
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_patch(text: str) -> dict[str, Any]:
    """The patch document (JSON only, as calicoctl)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PatchError(f"performing strategic merge patch: invalid JSON at line {exc.lineno} column "
                         f"{exc.colno}: {exc.msg} (calicoctl patches are JSON)") from None
    if not isinstance(doc, dict):
        raise PatchError("performing strategic merge patch: the patch must be a JSON object")
    return doc


def patched(current: Resource, patch: dict[str, Any]) -> Resource:
    """The object ``current`` becomes with ``patch`` applied (labels and annotations merge)."""
    doc = current.to_dict()
    doc["metadata"].pop("resourceVersion", None)
    new = strategic_merge(doc, patch)
    if not isinstance(new, dict):
        raise PatchError("performing strategic merge patch: the patch deletes the whole resource")
    meta = new.setdefault("metadata", {})
    for field in ("name", "namespace"):
        if meta.get(field) != doc["metadata"].get(field):
            raise PatchError(f"metadata.{field} cannot be changed by a patch "
                             f"(is {doc['metadata'].get(field)!r})")
    obj = from_document(new)
    obj.metadata.resource_version = current.metadata.resource_version
    return obj


def run(client: Any, kind: str, name: str, namespace: str | None, text: str, ptype: str | None,
        out: TextIO, err: TextIO, refuse: Any = None) -> int:
    """``calicoctl patch``; ``refuse(obj, op)`` raises for objects calicoctl must not modify."""
    cls = resolve_kind(kind)
    if ptype not in (None, "strategic", "json", "merge"):
        err.write(f"Failed to execute command: unknown patch type {ptype!r} (use strategic, json or merge)\n")
        return 1
    if ptype in ("json", "merge"):
        err.write(f"warning: --type {ptype} is not implemented by calicoctl v3.28.1 either; the patch is "
                  "applied as a strategic merge patch\n")
    if namespace and cls.KIND not in NAMESPACED_PATCH_KINDS:
        namespace = None
    ns = (namespace or "default") if cls.NAMESPACED else None
    try:
        current = client.get(cls, name, ns)
    except errors.NotFound:
        where = f"{ns}/" if ns else ""
        err.write(f"Failed to patch '{cls.KIND}' resource: resource does not exist: {cls.KIND}({where}{name})\n")
        return 1
    try:
        patch = parse_patch(text)
        obj = patched(current, patch)
        if refuse is not None:
            refuse(obj, "apply or replace")
        obj.apply_defaults()
        obj.validate()
        client.update(obj)
    except (PatchError, errors.ValidationError) as exc:
        err.write(f"Failed to patch '{cls.KIND}' resource: {exc}\n")
        return 1
    except errors.DatastoreUnavailable:
        raise
    except errors.DatastoreError as exc:
        err.write(f"Failed to patch '{cls.KIND}' resource: updating existing resource: {exc}\n")
        return 1
    out.write(f"Successfully patched 1 '{cls.KIND}' resource\n")
    from testbed.calicoctl.resources import warn_unimplemented

    warn_unimplemented([obj], err, before=[current])  # what the patch set that calicolab does not honour
    return 0
