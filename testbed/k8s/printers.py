"""kubectl's output formats: tables (default and ``-o wide``), custom-columns, name, json, yaml.

Pure functions from objects (dicts) to text; no I/O.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from typing import Any

from testbed.k8s.errors import Invalid
from testbed.k8s.model import KINDS

NONE = "<none>"


def human_duration(seconds: float) -> str:
    """Age as kubectl prints it: 45s, 3m20s, 12m, 5h3m, 2d4h, 40d, 2y30d."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    d = h // 24
    if h < 24 * 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if d < 365 * 2:
        return f"{d}d"
    y = d // 365
    if y < 8:
        return f"{y}y{d % 365}d" if d % 365 else f"{y}y"
    return f"{y}y"


def age(obj: dict, now: float | None = None) -> str:
    """The AGE column of an object."""
    ts = (obj.get("metadata") or {}).get("creationTimestamp")
    if not ts:
        return NONE
    created = calendar.timegm(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ"))
    return human_duration((time.time() if now is None else now) - created)


def render_table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded as kubectl's tabwriter does (3 spaces between columns)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [headers, *rows]:
        cells = [c.ljust(widths[i] + 3) if i < len(row) - 1 else c for i, c in enumerate(row)]
        lines.append("".join(cells).rstrip())
    return "\n".join(lines) + "\n"


# --- per-kind columns ------------------------------------------------------------------------

def pod_status(pod: dict) -> str:
    """The STATUS column of a pod (phase, or a container's waiting/terminated reason)."""
    status = pod.get("status") or {}
    reason = status.get("reason") or status.get("phase") or "Pending"
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif "terminated" in state:
            t = state["terminated"]
            reason = t.get("reason") or (f"Signal:{t['signal']}" if t.get("signal") else f"ExitCode:{t.get('exitCode', 0)}")
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        reason = "Terminating"
    return reason


def _pod_row(pod: dict, wide: bool) -> list[str]:
    status = pod.get("status") or {}
    css = status.get("containerStatuses") or []
    total = len((pod.get("spec") or {}).get("containers") or [])
    ready = sum(1 for cs in css if cs.get("ready"))
    restarts = sum(int(cs.get("restartCount", 0)) for cs in css)
    row = [pod["metadata"]["name"], f"{ready}/{total}", pod_status(pod), str(restarts), age(pod)]
    if wide:
        row += [status.get("podIP") or NONE, pod["spec"].get("nodeName") or NONE, NONE, NONE]
    return row


def node_ready(node: dict) -> bool:
    """True when the node's Ready condition is True."""
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def node_roles(node: dict) -> str:
    """ROLES: the node-role.kubernetes.io/<role> labels."""
    roles = sorted(k.split("/", 1)[1] for k in (node["metadata"].get("labels") or {})
                   if k.startswith("node-role.kubernetes.io/"))
    return ",".join(roles) or NONE


def _address(node: dict, typ: str) -> str:
    for a in (node.get("status") or {}).get("addresses") or []:
        if a.get("type") == typ:
            return a.get("address", NONE)
    return NONE


def _node_row(node: dict, wide: bool) -> list[str]:
    status = "Ready" if node_ready(node) else "NotReady"
    if (node.get("spec") or {}).get("unschedulable"):
        status += ",SchedulingDisabled"
    info = (node.get("status") or {}).get("nodeInfo") or {}
    row = [node["metadata"]["name"], status, node_roles(node), age(node), info.get("kubeletVersion", "")]
    if wide:
        row += [_address(node, "InternalIP"), _address(node, "ExternalIP"), info.get("osImage", NONE),
                info.get("kernelVersion", NONE), info.get("containerRuntimeVersion", NONE)]
    return row


def _selector_text(sel: dict | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((sel or {}).items())) or NONE


def _deployment_row(d: dict, wide: bool) -> list[str]:
    st = d.get("status") or {}
    spec = d.get("spec") or {}
    row = [d["metadata"]["name"], f"{st.get('readyReplicas', 0)}/{spec.get('replicas', 0)}",
           str(st.get("updatedReplicas", 0)), str(st.get("availableReplicas", 0)), age(d)]
    if wide:
        cs = spec["template"]["spec"]["containers"]
        row += [",".join(c["name"] for c in cs), ",".join(c["image"] for c in cs),
                _selector_text(spec.get("selector", {}).get("matchLabels"))]
    return row


def _replicaset_row(rs: dict, wide: bool) -> list[str]:
    st = rs.get("status") or {}
    spec = rs.get("spec") or {}
    row = [rs["metadata"]["name"], str(spec.get("replicas", 0)), str(st.get("replicas", 0)),
           str(st.get("readyReplicas", 0)), age(rs)]
    if wide:
        cs = spec["template"]["spec"]["containers"]
        row += [",".join(c["name"] for c in cs), ",".join(c["image"] for c in cs),
                _selector_text(spec.get("selector", {}).get("matchLabels"))]
    return row


def _daemonset_row(d: dict, wide: bool) -> list[str]:
    st = d.get("status") or {}
    spec = d.get("spec") or {}
    sel = spec["template"]["spec"].get("nodeSelector")
    row = [d["metadata"]["name"]] + [str(st.get(k, 0)) for k in (
        "desiredNumberScheduled", "currentNumberScheduled", "numberReady", "updatedNumberScheduled",
        "numberAvailable")] + [_selector_text(sel), age(d)]
    if wide:
        cs = spec["template"]["spec"]["containers"]
        row += [",".join(c["name"] for c in cs), ",".join(c["image"] for c in cs),
                _selector_text(spec.get("selector", {}).get("matchLabels"))]
    return row


def _service_row(s: dict, wide: bool) -> list[str]:
    spec = s.get("spec") or {}
    ports = ",".join(f"{p['port']}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or []) or NONE
    row = [s["metadata"]["name"], spec.get("type", "ClusterIP"), spec.get("clusterIP") or NONE,
           ",".join(spec.get("externalIPs") or []) or NONE, ports, age(s)]
    if wide:
        row.append(_selector_text(spec.get("selector")))
    return row


def endpoints_text(ep: dict) -> str:
    """ENDPOINTS column: ip:port list, first three then ``+ N more...``."""
    items = []
    for subset in ep.get("subsets") or []:
        for addr in subset.get("addresses") or []:
            for port in subset.get("ports") or [{}]:
                items.append(f"{addr['ip']}:{port['port']}" if port.get("port") else addr["ip"])
    if not items:
        return NONE
    text = ",".join(items[:3])
    if len(items) > 3:
        text += f" + {len(items) - 3} more..."
    return text


def _endpoints_row(ep: dict, wide: bool) -> list[str]:
    return [ep["metadata"]["name"], endpoints_text(ep), age(ep)]


def _namespace_row(ns: dict, wide: bool) -> list[str]:
    return [ns["metadata"]["name"], (ns.get("status") or {}).get("phase", "Active"), age(ns)]


def _netpol_row(np: dict, wide: bool) -> list[str]:
    sel = ((np.get("spec") or {}).get("podSelector") or {}).get("matchLabels")
    return [np["metadata"]["name"], _selector_text(sel) if sel else "<none>", age(np)]


def _serviceaccount_row(sa: dict, wide: bool) -> list[str]:
    return [sa["metadata"]["name"], str(len(sa.get("secrets") or [])), age(sa)]


def _configmap_row(cm: dict, wide: bool) -> list[str]:
    return [cm["metadata"]["name"], str(len(cm.get("data") or {})), age(cm)]


TABLES = {
    "Pod": (["NAME", "READY", "STATUS", "RESTARTS", "AGE"], ["IP", "NODE", "NOMINATED NODE", "READINESS GATES"], _pod_row),
    "Node": (["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
             ["INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"], _node_row),
    "Deployment": (["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"], ["CONTAINERS", "IMAGES", "SELECTOR"], _deployment_row),
    "ReplicaSet": (["NAME", "DESIRED", "CURRENT", "READY", "AGE"], ["CONTAINERS", "IMAGES", "SELECTOR"],
                   _replicaset_row),
    "DaemonSet": (["NAME", "DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE", "NODE SELECTOR", "AGE"],
                  ["CONTAINERS", "IMAGES", "SELECTOR"], _daemonset_row),
    "Service": (["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"], ["SELECTOR"], _service_row),
    "Endpoints": (["NAME", "ENDPOINTS", "AGE"], [], _endpoints_row),
    "Namespace": (["NAME", "STATUS", "AGE"], [], _namespace_row),
    "ConfigMap": (["NAME", "DATA", "AGE"], [], _configmap_row),
    "ServiceAccount": (["NAME", "SECRETS", "AGE"], [], _serviceaccount_row),
    "NetworkPolicy": (["NAME", "POD-SELECTOR", "AGE"], [], _netpol_row),
}


def table(kind: str, objs: list[dict], wide: bool = False, all_namespaces: bool = False,
          kind_prefix: bool = False) -> str:
    """The default (or wide) table for objects of one kind."""
    base, extra, row_fn = TABLES[kind]
    headers = base + (extra if wide else [])
    rows = []
    for o in objs:
        row = row_fn(o, wide)
        if kind_prefix:
            row[0] = f"{KINDS[kind].group_name}/{row[0]}"
        if all_namespaces and KINDS[kind].namespaced:
            row = [o["metadata"].get("namespace", "")] + row
        rows.append(row)
    if all_namespaces and KINDS[kind].namespaced:
        headers = ["NAMESPACE"] + headers
    return render_table(headers, rows)


def name_of(obj: dict) -> str:
    """``-o name``: ``pod/nginx``, ``deployment.apps/web``."""
    return f"{KINDS[obj['kind']].group_name}/{obj['metadata']['name']}"


# --- JSONPath-like field paths ---------------------------------------------------------------

_TOKEN = re.compile(r"\.([^.\[\]]+)|\[(\*|-?\d+)\]|\[['\"]([^'\"]+)['\"]\]")


def parse_path(path: str) -> list[str | int]:
    """Parse ``.status.addresses[0].address`` (also ``{...}`` and ``['a.b']``) into steps; ``*`` = all."""
    text = path.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    if text and not text.startswith((".", "[")):
        text = "." + text
    steps: list[str | int] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise Invalid("custom-columns", f'unexpected path string, "{path}" at position {pos}')
        if m.group(1) is not None:
            steps.append(m.group(1))
        elif m.group(3) is not None:
            steps.append(m.group(3))
        else:
            steps.append("*" if m.group(2) == "*" else int(m.group(2)))
        pos = m.end()
    return steps


def lookup(obj: Any, steps: list[str | int]) -> list[Any]:
    """All values the path selects (empty when it selects nothing)."""
    values = [obj]
    for step in steps:
        nxt = []
        for v in values:
            if step == "*":
                if isinstance(v, list):
                    nxt.extend(v)
                elif isinstance(v, dict):
                    nxt.extend(v.values())
            elif isinstance(step, int):
                if isinstance(v, list) and -len(v) <= step < len(v):
                    nxt.append(v[step])
            elif isinstance(v, dict) and step in v:
                nxt.append(v[step])
        values = nxt
    return values


def format_value(v: Any) -> str:
    """A value as a custom-columns cell (maps as map[k:v], lists as [a b])."""
    if v is None:
        return NONE
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{format_value(x)}" for k, x in sorted(v.items())) + "]"
    if isinstance(v, list):
        return "[" + " ".join(format_value(x) for x in v) + "]"
    return str(v)


def parse_custom_columns(spec: str) -> list[tuple[str, list[str | int]]]:
    """``NAME:.metadata.name,IP:.status.podIP`` -> [(header, steps)]."""
    cols = []
    for part in spec.split(","):
        if ":" not in part:
            raise Invalid("custom-columns", f'expected <header>:<json-path-expr>, got "{part}"')
        header, path = part.split(":", 1)
        cols.append((header, parse_path(path)))
    if not cols:
        raise Invalid("custom-columns", "custom-columns format specified but no custom columns given")
    return cols


def custom_columns(spec: str, objs: list[dict]) -> str:
    """The ``-o custom-columns=...`` table."""
    cols = parse_custom_columns(spec)
    rows = []
    for o in objs:
        row = []
        for _, steps in cols:
            vals = lookup(o, steps)
            row.append(",".join(format_value(v) for v in vals) if vals else NONE)
        rows.append(row)
    return render_table([h for h, _ in cols], rows)


def as_list(objs: list[dict]) -> dict:
    """kubectl's List wrapper for several objects."""
    return {"apiVersion": "v1", "items": objs, "kind": "List", "metadata": {"resourceVersion": ""}}


def to_json(data: Any) -> str:
    """``-o json``."""
    return json.dumps(data, indent=4, sort_keys=True) + "\n"


def to_yaml(data: Any) -> str:
    """``-o yaml``."""
    import yaml

    return yaml.safe_dump(data, sort_keys=True, default_flow_style=False)


def jsonpath(expr: str, data: Any) -> str:
    """A small ``-o jsonpath=...``: ``{.a.b}`` templates with literal text between them."""
    out = []
    pos = 0
    for m in re.finditer(r"\{([^}]*)\}", expr):
        out.append(expr[pos:m.start()])
        vals = lookup(data, parse_path(m.group(1))) if m.group(1).strip() not in ("", "@") else [data]
        out.append(" ".join(v if isinstance(v, str) else json.dumps(v) for v in vals))
        pos = m.end()
    out.append(expr[pos:])
    return "".join(out).replace("\\n", "\n").replace("\\t", "\t")
