"""core/v1 Event <-> events.k8s.io/v1 Event: one stored object, two API shapes
(field mapping as kube-apiserver's conversion: involvedObject <-> regarding,
message <-> note, source.component <-> deprecatedSource, firstTimestamp <->
deprecatedFirstTimestamp, ...)."""

from __future__ import annotations

from typing import Any

_RENAMES = [  # core name, events.k8s.io name
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("related", "related"),
    ("reason", "reason"),
    ("type", "type"),
    ("action", "action"),
    ("eventTime", "eventTime"),
    ("series", "series"),
    ("reportingComponent", "reportingController"),
    ("reportingInstance", "reportingInstance"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
]


def core_to_events(obj: dict[str, Any]) -> dict[str, Any]:
    """A stored (core/v1) Event in the events.k8s.io/v1 shape."""
    out: dict[str, Any] = {"kind": "Event", "apiVersion": "events.k8s.io/v1", "metadata": obj.get("metadata") or {}}
    for core, ev in _RENAMES:
        if core in obj and obj[core] is not None:
            v = obj[core]
            if core == "series" and isinstance(v, dict):
                v = {"count": v.get("count", 0), "lastObservedTime": v.get("lastObservedTime")}
            out[ev] = v
    if "eventTime" not in out:
        out["eventTime"] = None
    return out


def events_to_core(obj: dict[str, Any]) -> dict[str, Any]:
    """An events.k8s.io/v1 Event in the stored core/v1 shape."""
    out: dict[str, Any] = {"kind": "Event", "apiVersion": "v1", "metadata": obj.get("metadata") or {}}
    for core, ev in _RENAMES:
        if ev in obj and obj[ev] is not None:
            out[core] = obj[ev]
    out.setdefault("involvedObject", {})
    return out
