"""Object lifecycle rules shared by every handler: metadata on create/update, field
lookups for field selectors, deep copies, timestamps."""

from __future__ import annotations

import copy
import json
import time
import uuid
from typing import Any

from kubeclient.selectors import SelectorError

# Kinds whose metadata.generation is kept (bumped on spec changes).
GENERATION_KINDS = {"Deployment", "ReplicaSet", "DaemonSet", "StatefulSet", "Job", "CronJob",
                    "PodDisruptionBudget", "CustomResourceDefinition", "NetworkPolicy", "Pod"}

# Field selector labels each kind supports besides metadata.name / metadata.namespace.
FIELD_LABELS: dict[str, set[str]] = {
    "Pod": {"spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
            "spec.hostNetwork", "status.phase", "status.podIP", "status.podIPs", "status.nominatedNodeName"},
    "Event": {"involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
              "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
              "reason", "reportingComponent", "source", "type", "regarding.kind", "regarding.name",
              "regarding.namespace", "regarding.uid", "reportingController"},
    "Node": {"spec.unschedulable"},
    "Namespace": {"status.phase"},
    "Secret": {"type"},
    "ReplicaSet": {"status.replicas"},
    "ReplicationController": {"status.replicas"},
    "Job": {"status.successful"},
    "Service": {"spec.clusterIP", "spec.type"},
    "CertificateSigningRequest": {"spec.signerName"},
}


def now_iso() -> str:
    """The current time as Kubernetes writes timestamps."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def now_micro() -> str:
    """MicroTime (events.k8s.io eventTime, Lease renewTime)."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1e6):06d}Z"


def deep(obj: Any) -> Any:
    """A deep copy of a JSON value (faster than copy.deepcopy for plain JSON)."""
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError):
        return copy.deepcopy(obj)


def new_uid() -> str:
    return str(uuid.uuid4())


def field_value(obj: dict, path: str) -> str:
    """The string form of a field for field selectors (``spec.nodeName``)."""
    v: Any = obj
    for part in path.split("."):
        if isinstance(v, dict):
            v = v.get(part)
        else:
            v = None
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return ""
    if isinstance(v, list):
        return ",".join(str((x or {}).get("ip", x)) if isinstance(x, dict) else str(x) for x in v)
    return str(v)


def check_field_labels(kind: str, terms: list[tuple[str, str, str]], custom: set[str] | None = None) -> None:
    """Reject a field selector on a field the kind does not index (as the server does)."""
    allowed = {"metadata.name", "metadata.namespace"} | FIELD_LABELS.get(kind, set()) | (custom or set())
    for f, _, _ in terms:
        if f not in allowed:
            raise SelectorError(f'field label not supported: {f}')


def fields_match(obj: dict, terms: list[tuple[str, str, str]]) -> bool:
    """True when ``obj`` satisfies every field selector term."""
    for f, op, v in terms:
        have = field_value(obj, f)
        if f == "source" and obj.get("kind") == "Event":
            have = ((obj.get("source") or {}).get("component")) or obj.get("reportingComponent") or ""
        if (have == v) != (op == "="):
            return False
    return True
