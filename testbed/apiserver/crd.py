"""CustomResourceDefinitions (apiextensions.k8s.io/v1): served dynamically.

A CRD that is created (or found at start) becomes one :class:`ResourceType` per served
version, stored under ``/registry/<group>/<plural>/`` as kube-apiserver stores custom
resources. Objects are checked against the version's structural ``openAPIV3Schema``
(types, required, enum, min/max, pattern, unknown fields pruned unless
``x-kubernetes-preserve-unknown-fields``), defaults from the schema are applied, the
``status`` subresource and ``additionalPrinterColumns`` are honoured.
"""

from __future__ import annotations

from typing import Any

from testbed.apiserver import goregexp, schema, status
from testbed.apiserver.objects import now_iso
from testbed.apiserver.registry import VERBS, ResourceType
from testbed.apiserver.status import FieldError


class CRDs:
    """The CRD-backed types of one server."""

    def __init__(self, h: Any):
        self.h = h
        self._schemas: dict[tuple[str, str, str], schema.Node] = {}
        self._versions: dict[tuple[str, str, str], dict] = {}

    # --- registration --------------------------------------------------------------------
    def register(self, crd: dict) -> None:
        """Serve (or re-serve) the versions of ``crd``."""
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        group, plural = spec.get("group", ""), names.get("plural", "")
        storage = next((v.get("name") for v in spec.get("versions") or [] if v.get("storage")), None)
        for rt in list(self.h.registry.all()):
            if rt.crd is not None and rt.group == group and rt.plural == plural:
                self.h.registry.remove(rt.group, rt.version, rt.plural)
        for v in spec.get("versions") or []:
            if not v.get("served", True):
                continue
            subs = tuple(k for k in ("status", "scale") if k in (v.get("subresources") or {}))
            rt = ResourceType(group, v["name"], names.get("kind", ""), plural,
                              spec.get("scope", "Namespaced") == "Namespaced", f"{group}/{plural}",
                              None, tuple(names.get("shortNames") or ()), tuple(names.get("categories") or ()),
                              subs, tuple(VERBS), crd, storage)
            key = (group, v["name"], plural)
            self._versions[key] = v
            s = ((v.get("schema") or {}).get("openAPIV3Schema")) or {}
            node = schema.from_openapi(s, top=True)
            if node.type == "object":
                node.fields.setdefault("apiVersion", schema.Node("string"))
                node.fields.setdefault("kind", schema.Node("string"))
                node.fields["metadata"] = schema.model_node("V1ObjectMeta")
            self._schemas[key] = node
            self.h.registry.add(rt)

    def unregister(self, crd: dict) -> None:
        spec = crd.get("spec") or {}
        group, plural = spec.get("group", ""), (spec.get("names") or {}).get("plural", "")
        for rt in list(self.h.registry.all()):
            if rt.crd is not None and rt.group == group and rt.plural == plural:
                self.h.registry.remove(rt.group, rt.version, rt.plural)

    async def load(self) -> None:
        """Serve every stored CRD (at start)."""
        rt = self.h.registry.get("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        entries, _, _ = await self.h.storage.list(rt.list_prefix())
        for e in entries:
            if not (e.obj.get("metadata") or {}).get("deletionTimestamp"):
                self.register(e.obj)

    async def established(self, crd: dict) -> None:
        """After a CRD write: serve it, and mark it Established/NamesAccepted."""
        self.register(crd)
        conds = {c.get("type"): c for c in (crd.get("status") or {}).get("conditions") or []}
        if conds.get("Established", {}).get("status") == "True":
            return
        rt = self.h.registry.get("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        cur = await self.h.storage.get(rt.key(crd["metadata"]["name"], None))
        if cur is None:
            return
        new = dict(cur.obj)
        names = dict((new.get("spec") or {}).get("names") or {})
        t = now_iso()
        new["status"] = {"acceptedNames": names, "storedVersions": [
            v["name"] for v in (new.get("spec") or {}).get("versions") or [] if v.get("storage")],
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "lastTransitionTime": t, "reason": "NoConflicts",
                 "message": "no conflicts found"},
                {"type": "Established", "status": "True", "lastTransitionTime": t, "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted"}]}
        try:
            await self.h.storage.update(cur.key, new, cur.rev)
        except Exception:  # noqa: BLE001 - someone else wrote it: their write carries on
            pass

    async def removed(self, crd: dict) -> None:
        self.unregister(crd)

    # --- per type ------------------------------------------------------------------------
    def schema_of(self, rt: ResourceType) -> schema.Node | None:
        return self._schemas.get((rt.group, rt.version, rt.plural))

    def version_of(self, rt: ResourceType) -> dict:
        return self._versions.get((rt.group, rt.version, rt.plural)) or {}

    def selectable_fields(self, rt: ResourceType) -> set[str]:
        if rt.crd is None:
            return set()
        return {f.get("jsonPath", "").lstrip(".") for f in self.version_of(rt).get("selectableFields") or []}

    def default(self, rt: ResourceType, obj: dict) -> None:
        node = self.schema_of(rt)
        if node is not None and node.openapi:
            _apply_defaults(obj, node.openapi)

    def validate(self, rt: ResourceType, obj: dict) -> list[FieldError]:
        node = self.schema_of(rt)
        errs: list[FieldError] = []
        if node is not None and node.openapi:
            s = dict(node.openapi)
            props = dict(s.get("properties") or {})
            props.pop("metadata", None)
            s["properties"] = props
            _validate(obj, s, "", errs, top=True)
        return errs

    # --- the CRD kind itself -----------------------------------------------------------------
    def default_crd(self, crd: dict) -> None:
        spec = crd.setdefault("spec", {})
        names = spec.setdefault("names", {})
        if names.get("kind"):
            names.setdefault("singular", names["kind"].lower())
            names.setdefault("listKind", names["kind"] + "List")
        spec.setdefault("conversion", {"strategy": "None"})
        for v in spec.get("versions") or []:
            if isinstance(v, dict):
                v.setdefault("served", True)

    def validate_crd(self, crd: dict, old: dict | None) -> list[FieldError]:
        errs: list[FieldError] = []
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        group, plural = spec.get("group", ""), names.get("plural", "")
        if not group:
            errs.append(status.required("spec.group"))
        elif "." not in group:
            errs.append(status.invalid_value("spec.group", group, "should be a domain with at least one dot"))
        if not plural:
            errs.append(status.required("spec.names.plural"))
        if not names.get("kind"):
            errs.append(status.required("spec.names.kind"))
        want = f"{plural}.{group}"
        if (crd.get("metadata") or {}).get("name") != want:
            errs.append(status.invalid_value("metadata.name", (crd.get("metadata") or {}).get("name", ""),
                                             'must be spec.names.plural+"."+spec.group'))
        scope = spec.get("scope")
        if scope not in ("Namespaced", "Cluster"):
            errs.append(status.not_supported("spec.scope", scope, ["Cluster", "Namespaced"]) if scope
                        else status.required("spec.scope"))
        versions = spec.get("versions") or []
        if not versions:
            errs.append(status.required("spec.versions", "must have exactly one version marked as storage version"))
        if sum(1 for v in versions if isinstance(v, dict) and v.get("storage")) != 1 and versions:
            errs.append(status.invalid_value("spec.versions", _short(versions),
                                             "must have exactly one version marked as storage version"))
        for i, v in enumerate(versions):
            if not isinstance(v, dict):
                continue
            s = (v.get("schema") or {}).get("openAPIV3Schema")
            if s is None:
                errs.append(status.required(f"spec.versions[{i}].schema.openAPIV3Schema",
                                            "schemas are required"))
            elif s.get("type") != "object":
                errs.append(status.required(f"spec.versions[{i}].schema.openAPIV3Schema.type",
                                            "must not be empty at the root") if not s.get("type") else
                            status.invalid_value(f"spec.versions[{i}].schema.openAPIV3Schema.type", s.get("type"),
                                                 "must be object at the root"))
        if spec.get("conversion", {}).get("strategy") not in (None, "None"):
            errs.append(status.forbidden("spec.conversion.strategy",
                                         "conversion webhooks are not served by calicolab (only \"None\")"))
        return errs


def _short(v: Any) -> str:
    return str([x.get("name") for x in v if isinstance(x, dict)])


def _apply_defaults(obj: Any, s: dict) -> None:
    if not isinstance(obj, dict):
        return
    for k, sub in (s.get("properties") or {}).items():
        if k == "metadata":
            continue
        if k not in obj and "default" in sub:
            import copy

            obj[k] = copy.deepcopy(sub["default"])
        if k in obj:
            v = obj[k]
            if isinstance(v, dict):
                _apply_defaults(v, sub)
            elif isinstance(v, list) and isinstance(sub.get("items"), dict):
                for it in v:
                    _apply_defaults(it, sub["items"])
    addl = s.get("additionalProperties")
    if isinstance(addl, dict) and not s.get("properties"):
        for v in obj.values():
            _apply_defaults(v, addl)


_TYPES = {"string": str, "boolean": bool, "object": dict, "array": list}


def _validate(v: Any, s: dict, path: str, errs: list[FieldError], top: bool = False) -> None:
    if v is None:
        if s.get("nullable"):
            return
        return
    typ = s.get("type")
    p = path or "<root>"
    if s.get("x-kubernetes-int-or-string"):
        if isinstance(v, bool) or not isinstance(v, int | str):
            errs.append(status.FieldError("FieldValueTypeInvalid", p, 'must be of type int-or-string', v, True))
        return
    if typ == "integer":
        if isinstance(v, bool) or not isinstance(v, int):
            errs.append(status.FieldError("FieldValueTypeInvalid", p, "must be of type integer", _typename(v), True))
            return
    elif typ == "number":
        if isinstance(v, bool) or not isinstance(v, int | float):
            errs.append(status.FieldError("FieldValueTypeInvalid", p, "must be of type number", _typename(v), True))
            return
    elif typ in _TYPES:
        if not isinstance(v, _TYPES[typ]) or (typ != "boolean" and isinstance(v, bool)):
            errs.append(status.FieldError("FieldValueTypeInvalid", p, f"must be of type {typ}", _typename(v), True))
            return
    if "enum" in s and v not in s["enum"]:
        errs.append(status.not_supported(p, v, [str(x) for x in s["enum"]]))
    if isinstance(v, int | float) and not isinstance(v, bool):
        if "minimum" in s and (v < s["minimum"] or s.get("exclusiveMinimum") and v == s["minimum"]):
            errs.append(status.invalid_value(p, v, f"should be greater than or equal to {s['minimum']}"))
        if "maximum" in s and (v > s["maximum"] or s.get("exclusiveMaximum") and v == s["maximum"]):
            errs.append(status.invalid_value(p, v, f"should be less than or equal to {s['maximum']}"))
    if isinstance(v, str):
        if "maxLength" in s and len(v) > s["maxLength"]:
            errs.append(status.FieldError("FieldValueTooLong", p, f"may not be more than {s['maxLength']} bytes",
                                          v, False))
        if "minLength" in s and len(v) < s["minLength"]:
            errs.append(status.invalid_value(p, v, f"should be at least {s['minLength']} chars long"))
        if "pattern" in s:
            try:  # Go's regexp syntax, as kube-apiserver evaluates it (Calico's CRDs use (?i))
                if not goregexp.search(s["pattern"], v):
                    errs.append(status.invalid_value(p, v, f"should match '{s['pattern']}'"))
            except goregexp.GoRegexpError as exc:
                errs.append(status.invalid_value(p, v, f"the schema's pattern cannot be evaluated: {exc}"))
    if isinstance(v, list):
        if "maxItems" in s and len(v) > s["maxItems"]:
            errs.append(status.FieldError("FieldValueTooMany", p,
                                          f"must have at most {s['maxItems']} items", len(v), True))
        if "minItems" in s and len(v) < s["minItems"]:
            errs.append(status.invalid_value(p, len(v), f"should have at least {s['minItems']} items"))
        if isinstance(s.get("items"), dict):
            for i, it in enumerate(v):
                _validate(it, s["items"], f"{path}[{i}]", errs)
    if isinstance(v, dict):
        for r in s.get("required") or []:
            if r not in v:
                errs.append(status.required(f"{path}.{r}" if path else r))
        props = s.get("properties") or {}
        for k, sub in props.items():
            if k in v and not (top and k in ("apiVersion", "kind", "metadata")):
                _validate(v[k], sub, f"{path}.{k}" if path else k, errs)
        addl = s.get("additionalProperties")
        if isinstance(addl, dict):
            for k, item in v.items():
                if k not in props:
                    _validate(item, addl, f"{path}[{k}]" if path else k, errs)


def _typename(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return "null"
