"""The topology's workloads created as ``kubectl apply -f`` creates them, without the kubectl process.

``calicolab up`` applies the topology's workloads once every node is Ready. Run as the real
kubectl (a process start, API discovery, the OpenAPI documents, then one GET and one POST
per object) that took 0.4-0.7 s of a 3-node lab's start-up, on its critical path. For objects
that do not exist yet, client-side ``kubectl apply`` does one thing: it creates the object with
its ``kubectl.kubernetes.io/last-applied-configuration`` annotation, field manager
``kubectl-client-side-apply``, strict field validation. :func:`plan` builds exactly those
objects (pure); the supervisor creates them through the API, in the stream's order, and
hands the whole stream to the real kubectl instead whenever that is not enough: a kind that
is not built in (discovery would be needed), a document kubectl itself would treat specially
(``List``, no name, ``generateName``), or any error from the API (kubectl then reports it in
its own words, and what was created already is ``unchanged`` for it). A later
``kubectl apply`` of the same manifests finds the annotation it would have written.
"""

from __future__ import annotations

import copy
import json
from typing import Any

#: the annotation client-side apply keeps the applied configuration in
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
#: the field manager of kubectl's client-side apply (managedFields)
FIELD_MANAGER = "kubectl-client-side-apply"


def last_applied(obj: dict) -> str:
    """The annotation's value for ``obj`` as kubectl writes it: the object without that
    annotation, as Go's encoding/json prints a map (keys sorted, no spaces), plus a newline."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


def plan(docs: list[dict], builtin: dict[str, tuple[str, str, bool]],
         default_namespace: str = "default") -> list[dict] | None:
    """The objects ``kubectl apply`` would create for ``docs`` on a cluster that has none of
    them, in order: each with its namespace (namespaced kinds; ``default_namespace`` when the
    document has none) and the last-applied annotation. None when one document needs the real
    kubectl (see the module docstring). ``builtin``: kind -> (apiVersion, plural, namespaced)."""
    out = []
    for doc in docs:
        if not isinstance(doc, dict):
            return None
        kind, api = doc.get("kind"), doc.get("apiVersion")
        meta = doc.get("metadata")
        known = builtin.get(kind or "")
        if known is None or known[0] != api or not isinstance(meta, dict) or not meta.get("name") \
                or meta.get("generateName"):
            return None
        obj = copy.deepcopy(doc)
        meta = obj["metadata"]
        if known[2]:
            meta["namespace"] = meta.get("namespace") or default_namespace
        annotations = dict(meta.get("annotations") or {})
        annotations.pop(LAST_APPLIED, None)
        meta["annotations"] = annotations  # kubectl leaves an empty map in the applied form
        value = last_applied(obj)
        meta["annotations"] = {**annotations, LAST_APPLIED: value}
        out.append(obj)
    return out


def describe(obj: dict) -> str:
    """kubectl's ``<kind>.<group>/<name> created`` line for ``obj``."""
    api = obj["apiVersion"]
    group = "." + api.split("/")[0] if "/" in api else ""
    return f"{obj['kind'].lower()}{group}/{obj['metadata']['name']} created"


def create(client: Any, objs: list[dict]) -> list[str]:
    """Create ``objs`` (from :func:`plan`) in order through ``client`` (a kubeclient.Client);
    returns kubectl's output lines. Raises kubeclient.KubeError at the first failure."""
    lines = []
    for obj in objs:
        client.create(obj, field_manager=FIELD_MANAGER)
        lines.append(describe(obj))
    return lines
