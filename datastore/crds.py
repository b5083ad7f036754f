"""Calico resources as Kubernetes custom resources (``crd.projectcalico.org/v1``), as
libcalico-go's k8s backend stores them (calico.md section 8). Pure logic.

* The 18 CustomResourceDefinitions of v3.28.1 (:data:`CRDS`); there is none for Node,
  WorkloadEndpoint or Profile (those are derived from Nodes, Pods, Namespaces and
  ServiceAccounts: :mod:`datastore.derived`).
* :func:`to_cr` / :func:`from_cr`: a typed resource <-> the custom resource's JSON. As
  ``ConvertCalicoResourceToK8sResource`` does, the Calico metadata (labels, annotations,
  creationTimestamp) travels in the annotation ``projectcalico.org/metadata``; only
  ``projectcalico.org/`` labels and annotations stay on the custom resource itself; the
  custom resource's UID is the Calico UID with its bits reversed (``ConvertUID``).
  Policies are stored under their tier-prefixed names (``default.<name>``).
* IPAM kinds keep libcalico-go's shapes: IPAMBlock ``10-0-0-0-26`` with every field of
  the block, BlockAffinity ``<node>-10-0-0-0-26`` whose ``deleted`` is the **string**
  ``"false"``/``"true"``, IPAMHandle named by the lower-cased handle ID, IPAMConfig
  ``default``.
* :func:`crd_definitions`: the CRD objects, with structural ``openAPIV3Schema``s generated
  from the typed resources (:mod:`datastore.resources`), shipped in ``manifests/``
  (``python -m datastore.crds``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
import uuid
from dataclasses import dataclass
from typing import Any, Union

from datastore import codec
from datastore.errors import ValidationError
from datastore.resources import (
    KINDS,
    AllocationAttribute,
    BlockAffinity,
    BlockAffinitySpec,
    IPAMBlock,
    IPAMBlockSpec,
    IPAMConfig,
    IPAMConfigSpec,
    IPAMHandle,
    IPAMHandleSpec,
    Metadata,
    Resource,
    _PolicyBase,
    cidr_name,
    policy_name_from_storage,
)

GROUP = "crd.projectcalico.org"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"
#: where the Calico metadata of a custom resource is kept (resources.go ``metadataAnnotation``)
METADATA_ANNOTATION = "projectcalico.org/metadata"


@dataclass(frozen=True)
class CRD:
    """One custom resource type of Calico's."""

    kind: str
    plural: str
    namespaced: bool = False

    @property
    def name(self) -> str:
        """``ippools.crd.projectcalico.org``."""
        return f"{self.plural}.{GROUP}"

    @property
    def singular(self) -> str:
        return self.kind.lower()


#: Calico v3.28.1's CRDs (manifests/calico.yaml, kdd-crds.yaml): cluster-scoped except
#: networkpolicies and networksets.
CRDS: tuple[CRD, ...] = (
    CRD("BGPConfiguration", "bgpconfigurations"),
    CRD("BGPFilter", "bgpfilters"),
    CRD("BGPPeer", "bgppeers"),
    CRD("BlockAffinity", "blockaffinities"),
    CRD("CalicoNodeStatus", "caliconodestatuses"),
    CRD("ClusterInformation", "clusterinformations"),
    CRD("FelixConfiguration", "felixconfigurations"),
    CRD("GlobalNetworkPolicy", "globalnetworkpolicies"),
    CRD("GlobalNetworkSet", "globalnetworksets"),
    CRD("HostEndpoint", "hostendpoints"),
    CRD("IPAMBlock", "ipamblocks"),
    CRD("IPAMConfig", "ipamconfigs"),
    CRD("IPAMHandle", "ipamhandles"),
    CRD("IPPool", "ippools"),
    CRD("IPReservation", "ipreservations"),
    CRD("KubeControllersConfiguration", "kubecontrollersconfigurations"),
    CRD("NetworkPolicy", "networkpolicies", namespaced=True),
    CRD("NetworkSet", "networksets", namespaced=True),
)
BY_KIND: dict[str, CRD] = {c.kind: c for c in CRDS}


# ---------------------------------------------------------------------------
# UIDs and names


def reverse_uid(uid: str) -> str:
    """libcalico-go's ``ConvertUID``: reverse the bits of every byte of the UUID except the
    version (7th) and variant (9th) bytes. Its own inverse: CR UID <-> Calico UID."""
    raw = bytearray(uuid.UUID(uid).bytes)
    for i in (*range(6), 7, *range(9, 16)):
        raw[i] = int(f"{raw[i]:08b}"[::-1], 2)
    return str(uuid.UUID(bytes=bytes(raw)))


def affinity_name(node: str, cidr: str) -> str:
    """``<node>-<cidr name>``; a name of 253 characters or more is cut and suffixed with
    11 hex digits of sha256(``<node>+<cidr name>``) (``blockAffinityClient.parseKey``)."""
    cname = cidr_name(cidr)
    name = f"{node}-{cname}"
    if len(name) >= 253:
        digest = hashlib.sha256(f"{node}+{cname}".encode()).hexdigest()[:11]
        name = f"{node[:252 - len(cname) - 13]}-{cname}-{digest}"
    return name


def handle_name(handle_id: str) -> str:
    """The IPAMHandle custom resource's name: the handle ID lower-cased."""
    return handle_id.lower()


def cr_name(obj: Resource) -> str:
    """The custom resource's name for ``obj``."""
    if isinstance(obj, IPAMBlock):
        return cidr_name(obj.spec.cidr)
    if isinstance(obj, BlockAffinity):
        return affinity_name(obj.spec.node, obj.spec.cidr)
    if isinstance(obj, IPAMHandle):
        return handle_name(obj.spec.handle_id or obj.metadata.name)
    if isinstance(obj, IPAMConfig):
        return "default"
    if isinstance(obj, _PolicyBase):
        return obj.storage_name()
    return obj.metadata.name


def name_for(cls: type[Resource], name: str) -> str:
    """The custom resource's name of the Calico object ``name`` of kind ``cls``."""
    if cls is IPAMHandle:
        return handle_name(name)
    if cls is IPAMConfig:
        return "default"
    if issubclass(cls, _PolicyBase):
        from datastore.resources import policy_storage_name

        return policy_storage_name(name)
    return name


# ---------------------------------------------------------------------------
# metadata


def _ours(key: str) -> bool:
    return "projectcalico.org/" in key or "operator.tigera.io/" in key


def _metadata_annotation(md: Metadata) -> str:
    """The JSON of the Calico ObjectMeta without name, namespace, resourceVersion and uid, in
    Go's field order (creationTimestamp is never omitted: ``null`` when unset)."""
    doc: dict[str, Any] = {"creationTimestamp": md.creation_timestamp}
    if md.labels:
        doc["labels"] = md.labels
    if md.annotations:
        doc["annotations"] = md.annotations
    return json.dumps(doc, separators=(",", ":"))


def cr_metadata(obj: Resource) -> dict[str, Any]:
    """The custom resource's metadata for ``obj`` (``ConvertCalicoResourceToK8sResource``)."""
    md = obj.metadata
    out: dict[str, Any] = {"name": cr_name(obj)}
    if obj.NAMESPACED:
        out["namespace"] = md.namespace or "default"
    if md.resource_version:
        out["resourceVersion"] = str(md.resource_version)
    if md.uid:
        out["uid"] = reverse_uid(md.uid)
    labels = {k: v for k, v in (md.labels or {}).items() if _ours(k)}
    if labels:
        out["labels"] = labels
    annotations = {METADATA_ANNOTATION: _metadata_annotation(md)}
    annotations.update({k: v for k, v in (md.annotations or {}).items() if _ours(k)})
    out["annotations"] = annotations
    return out


def calico_metadata(cr: dict[str, Any], name: str | None = None) -> Metadata:
    """The Calico metadata of a custom resource (``ConvertK8sResourceToCalicoResource``)."""
    m = cr.get("metadata") or {}
    annotations = dict(m.get("annotations") or {})
    labels = dict(m.get("labels") or {})
    stored: dict[str, Any] = {}
    raw = annotations.pop(METADATA_ANNOTATION, None)
    if raw:
        try:
            stored = json.loads(raw) or {}
        except ValueError:
            stored = {}
    labels.update(stored.get("labels") or {})
    annotations.update(stored.get("annotations") or {})
    return Metadata(
        name=name if name is not None else m.get("name", ""),
        namespace=m.get("namespace"),
        uid=reverse_uid(m["uid"]) if m.get("uid") else None,
        creation_timestamp=stored.get("creationTimestamp") or m.get("creationTimestamp"),
        resource_version=str(m["resourceVersion"]) if m.get("resourceVersion") else None,
        labels=labels or None,
        annotations=annotations or None,
    )


# ---------------------------------------------------------------------------
# resource <-> custom resource


def _ipam_spec(obj: Resource) -> dict[str, Any]:
    if isinstance(obj, IPAMBlock):
        s = obj.spec
        spec: dict[str, Any] = {"cidr": s.cidr}
        if s.affinity is not None:
            spec["affinity"] = s.affinity
        spec.update({
            "allocations": list(s.allocations), "unallocated": list(s.unallocated),
            "attributes": [{k: v for k, v in (("handle_id", a.handle_id), ("secondary", a.secondary))
                            if v is not None} for a in s.attributes],
            "sequenceNumber": s.sequence_number,
            "sequenceNumberForAllocation": dict(s.sequence_number_for_allocation or {}),
            "deleted": s.deleted, "strictAffinity": s.strict_affinity})
        return spec
    if isinstance(obj, BlockAffinity):
        s = obj.spec
        return {"state": s.state, "node": s.node, "cidr": s.cidr, "deleted": "true" if s.deleted else "false"}
    if isinstance(obj, IPAMHandle):
        s = obj.spec
        return {"handleID": s.handle_id or obj.metadata.name, "block": dict(s.block), "deleted": s.deleted}
    if isinstance(obj, IPAMConfig):
        s = obj.spec
        spec = {"strictAffinity": s.strict_affinity,
                "autoAllocateBlocks": True if s.auto_allocate_blocks is None else s.auto_allocate_blocks}
        if s.max_blocks_per_host:
            spec["maxBlocksPerHost"] = s.max_blocks_per_host
        return spec
    raise TypeError(type(obj).__name__)


def to_cr(obj: Resource) -> dict[str, Any]:
    """The custom resource (JSON) that stores ``obj``."""
    crd = BY_KIND[obj.KIND]
    doc: dict[str, Any] = {"apiVersion": API_VERSION, "kind": crd.kind, "metadata": cr_metadata(obj)}
    if obj.MODEL_STORED:
        doc["spec"] = _ipam_spec(obj)
    else:
        d = obj.to_dict()
        doc["spec"] = d.get("spec") or {}
        if "status" in d:
            doc["status"] = d["status"]
    return doc


def _bool(value: Any, path: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", ""):
        return value.lower() == "true"
    raise ValidationError(path, f"{value!r} is not a boolean")


def from_cr(cls: type[Resource], cr: dict[str, Any]) -> Resource:
    """The typed Calico resource stored in custom resource ``cr``."""
    m = cr.get("metadata") or {}
    spec = cr.get("spec") or {}
    path = f"{cls.KIND}({m.get('name', '')})"
    if cls is IPAMBlock:
        md = calico_metadata(cr)
        bspec = IPAMBlockSpec(
            cidr=spec.get("cidr", ""), affinity=spec.get("affinity"),
            strict_affinity=_bool(spec.get("strictAffinity", False), f"{path}.spec.strictAffinity"),
            allocations=list(spec.get("allocations") or []), unallocated=list(spec.get("unallocated") or []),
            attributes=[AllocationAttribute(a.get("handle_id"), a.get("secondary"))
                        for a in spec.get("attributes") or []],
            sequence_number=int(spec.get("sequenceNumber") or 0),
            sequence_number_for_allocation={k: int(v) for k, v in
                                            (spec.get("sequenceNumberForAllocation") or {}).items()},
            deleted=_bool(spec.get("deleted", False), f"{path}.spec.deleted"))
        md.name = cidr_name(bspec.cidr) if bspec.cidr else md.name
        return IPAMBlock(metadata=md, spec=bspec)
    if cls is BlockAffinity:
        md = calico_metadata(cr)
        return BlockAffinity(metadata=md, spec=BlockAffinitySpec(
            state=spec.get("state", ""), node=spec.get("node", ""), cidr=spec.get("cidr", ""),
            deleted=_bool(spec.get("deleted", "false"), f"{path}.spec.deleted")))
    if cls is IPAMHandle:
        handle = spec.get("handleID") or m.get("name", "")
        md = calico_metadata(cr, name=handle)
        return IPAMHandle(metadata=md, spec=IPAMHandleSpec(
            handle_id=handle, block={k: int(v) for k, v in (spec.get("block") or {}).items()},
            deleted=_bool(spec.get("deleted", False), f"{path}.spec.deleted")))
    if cls is IPAMConfig:
        md = calico_metadata(cr, name="default")
        return IPAMConfig(metadata=md, spec=IPAMConfigSpec(
            strict_affinity=_bool(spec.get("strictAffinity", False), f"{path}.spec.strictAffinity"),
            auto_allocate_blocks=_bool(spec.get("autoAllocateBlocks", True), f"{path}.spec.autoAllocateBlocks"),
            max_blocks_per_host=int(spec.get("maxBlocksPerHost") or 0)))
    name = m.get("name", "")
    if issubclass(cls, _PolicyBase):
        name = policy_name_from_storage(name)
    md = calico_metadata(cr, name=name)
    doc: dict[str, Any] = {"apiVersion": "projectcalico.org/v3", "kind": cls.KIND,
                           "metadata": codec.to_json(md), "spec": spec}
    if "status" in cr and hasattr(cls, "status"):
        doc["status"] = cr["status"]
    return cls.from_dict(doc)


# ---------------------------------------------------------------------------
# CRD definitions (structural schemas from the typed resources)


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return True, args[0]
        return type(None) in typing.get_args(tp), Union[tuple(args)]  # noqa: UP007 - runtime union
    return False, tp


def schema_of(tp: Any) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a codec type (dataclass, list, dict, scalar)."""
    _, tp = _is_optional(tp)
    if tp is Any:
        return {"x-kubernetes-preserve-unknown-fields": True}
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        props = {}
        for f in dataclasses.fields(tp):
            if not f.init:
                continue
            props[f.metadata.get("json") or codec.camel(f.name)] = schema_of(hints[f.name])
        return {"type": "object", "properties": dict(sorted(props.items()))}
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        nullable, inner = _is_optional(item)
        items = schema_of(inner)
        if nullable:
            items["nullable"] = True
        return {"type": "array", "items": items}
    if origin is dict:
        _, vt = typing.get_args(tp) or (str, Any)
        return {"type": "object", "additionalProperties": schema_of(vt)}
    if origin in (Union, types.UnionType):
        alts = set(typing.get_args(tp)) - {type(None)}
        if alts == {int, str}:
            return {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}
        if alts <= {int, float}:
            return {"type": "number"}
        return {"x-kubernetes-preserve-unknown-fields": True}
    return {str: {"type": "string"}, bool: {"type": "boolean"}, int: {"type": "integer"},
            float: {"type": "number"}}.get(tp, {"x-kubernetes-preserve-unknown-fields": True})


_IPAM_SCHEMAS: dict[str, dict[str, Any]] = {
    "IPAMBlock": {"type": "object", "required": ["allocations", "attributes", "cidr", "strictAffinity",
                                                  "unallocated"], "properties": {
        "affinity": {"type": "string"},
        "allocations": {"type": "array", "items": {"type": "integer", "nullable": True}},
        "attributes": {"type": "array", "items": {"type": "object", "properties": {
            "handle_id": {"type": "string"},
            "secondary": {"type": "object", "additionalProperties": {"type": "string"}}}}},
        "cidr": {"type": "string"},
        "deleted": {"type": "boolean"},
        "sequenceNumber": {"type": "integer", "format": "int64", "default": 0},
        "sequenceNumberForAllocation": {"type": "object", "additionalProperties": {"type": "integer",
                                                                                   "format": "int64"}},
        "strictAffinity": {"type": "boolean"},
        "unallocated": {"type": "array", "items": {"type": "integer"}}}},
    "BlockAffinity": {"type": "object", "required": ["cidr", "deleted", "node", "state"], "properties": {
        "cidr": {"type": "string"}, "deleted": {"type": "string"}, "node": {"type": "string"},
        "state": {"type": "string"}}},
    "IPAMHandle": {"type": "object", "required": ["block", "handleID"], "properties": {
        "block": {"type": "object", "additionalProperties": {"type": "integer"}},
        "deleted": {"type": "boolean"}, "handleID": {"type": "string"}}},
    "IPAMConfig": {"type": "object", "required": ["autoAllocateBlocks", "strictAffinity"], "properties": {
        "autoAllocateBlocks": {"type": "boolean"},
        "maxBlocksPerHost": {"type": "integer", "minimum": 0, "maximum": 2147483647},
        "strictAffinity": {"type": "boolean"}}},
}


def _spec_schema(kind: str) -> dict[str, Any]:
    if kind in _IPAM_SCHEMAS:
        return _IPAM_SCHEMAS[kind]
    cls = KINDS.get(kind)
    if cls is None or cls.Spec is dict:
        # a kind calicolab does not model (datastore.resources.NOT_STORED): stored as given
        return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return schema_of(cls.Spec)


def crd_definition(crd: CRD) -> dict[str, Any]:
    """The CustomResourceDefinition object of ``crd``."""
    props: dict[str, Any] = {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                             "metadata": {"type": "object"}, "spec": _spec_schema(crd.kind)}
    cls = KINDS.get(crd.kind)
    if crd.kind == "CalicoNodeStatus" or (cls is not None and hasattr(cls, "status")):
        props["status"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": crd.name},
        "spec": {
            "group": GROUP,
            "names": {"kind": crd.kind, "listKind": crd.kind + "List", "plural": crd.plural,
                      "singular": crd.singular},
            "preserveUnknownFields": False,
            "scope": "Namespaced" if crd.namespaced else "Cluster",
            "versions": [{"name": VERSION, "served": True, "storage": True,
                          "schema": {"openAPIV3Schema": {"type": "object", "properties": props}}}],
        },
    }


def crd_definitions() -> list[dict[str, Any]]:
    """Every CRD of :data:`CRDS`, in order."""
    return [crd_definition(c) for c in CRDS]


def render_yaml() -> str:
    """The CRDs as one multi-document YAML (``manifests/crds.yaml``)."""
    import yaml

    head = ("# Calico v3.28.1's CustomResourceDefinitions (crd.projectcalico.org/v1), generated by\n"
            "# `python -m datastore.crds` from calicolab's typed resources (datastore/resources.py).\n")
    return head + "".join("---\n" + yaml.safe_dump(d, sort_keys=False) for d in crd_definitions())


if __name__ == "__main__":  # pragma: no cover - generator
    import sys

    sys.stdout.write(render_yaml())
