"""Server-side Table printing (``Accept: application/json;as=Table;v=v1;g=meta.k8s.io``):
the columns kubectl shows for every built-in kind, as kube-apiserver's printers
(pkg/printers/internalversion/printers.go) define them, and ``additionalPrinterColumns``
for custom resources, for every kind served.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable
from typing import Any

from kubeclient.selectors import to_string as selector_string

NONE = "<none>"
UNKNOWN = "<unknown>"

Col = tuple[str, str, str, int]  # name, type, format, priority


def human_duration(seconds: float) -> str:
    """Age as kubectl prints it (duration.HumanDuration): 45s, 3m20s, 12m, 5h3m, 2d4h, 40d, 2y30d."""
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


def parse_time(ts: str | None) -> float | None:
    if not ts:
        return None
    try:
        return calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def since(ts: str | None, now: float) -> str:
    t = parse_time(ts)
    return UNKNOWN if t is None else human_duration(now - t)


def age(obj: dict, now: float) -> str:
    return since((obj.get("metadata") or {}).get("creationTimestamp"), now)


def _join(items: list[str]) -> str:
    return ",".join(items) if items else NONE


def _containers(spec: dict) -> tuple[str, str]:
    cs = [c for c in (spec.get("containers") or []) if isinstance(c, dict)]
    return ",".join(c.get("name", "") for c in cs), ",".join(c.get("image", "") for c in cs)


def _sel(sel: dict | None) -> str:
    return selector_string(sel) or NONE


# --- per-kind rows ----------------------------------------------------------------------------

def pod_status_reason(pod: dict) -> tuple[str, int, int, str]:
    """(STATUS, ready, total, restarts text) as printPod computes them."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    total = len(spec.get("containers") or [])
    restarts, ready = 0, 0
    last_restart: float | None = None
    reason = status.get("phase") or "Pending"
    if status.get("reason"):
        reason = status["reason"]
    initializing = False
    inits = spec.get("initContainers") or []
    for i, cs in enumerate(status.get("initContainerStatuses") or []):
        restarts += int(cs.get("restartCount", 0))
        st = cs.get("state") or {}
        term, wait = st.get("terminated"), st.get("waiting")
        if term and term.get("exitCode", 0) == 0:
            continue
        if term:
            r = term.get("reason") or (f"Signal:{term['signal']}" if term.get("signal")
                                       else f"ExitCode:{term.get('exitCode')}")
            reason = "Init:" + r
        elif wait and wait.get("reason") and wait["reason"] != "PodInitializing":
            reason = "Init:" + wait["reason"]
        else:
            reason = f"Init:{i}/{len(inits)}"
        initializing = True
        break
    if not initializing:
        has_running = False
        for cs in reversed(status.get("containerStatuses") or []):
            restarts += int(cs.get("restartCount", 0))
            lt = ((cs.get("lastState") or {}).get("terminated") or {}).get("finishedAt")
            t = parse_time(lt)
            if t is not None and (last_restart is None or t > last_restart):
                last_restart = t
            st = cs.get("state") or {}
            if (st.get("waiting") or {}).get("reason"):
                reason = st["waiting"]["reason"]
            elif st.get("terminated"):
                term = st["terminated"]
                reason = term.get("reason") or (f"Signal:{term['signal']}" if term.get("signal")
                                                else f"ExitCode:{term.get('exitCode')}")
            elif st.get("running") and cs.get("ready"):
                has_running = True
                ready += 1
        if reason == "Completed" and has_running:
            ready_cond = any(c.get("type") == "Ready" and c.get("status") == "True"
                             for c in status.get("conditions") or [])
            reason = "Running" if ready_cond else "NotReady"
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        reason = "Unknown" if status.get("reason") == "NodeLost" else "Terminating"
    rtext = str(restarts)
    if last_restart is not None:
        rtext = f"{restarts} ({human_duration(time.time() - last_restart)} ago)"
    return reason, ready, total, rtext


def pod_row(pod: dict, now: float) -> list[Any]:
    reason, ready, total, restarts = pod_status_reason(pod)
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    nominated = status.get("nominatedNodeName") or NONE
    gates = spec.get("readinessGates") or []
    if gates:
        conds = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        gtext = f"{sum(1 for g in gates if conds.get(g.get('conditionType')) == 'True')}/{len(gates)}"
    else:
        gtext = NONE
    return [pod["metadata"]["name"], f"{ready}/{total}", reason, restarts, age(pod, now),
            status.get("podIP") or NONE, spec.get("nodeName") or NONE, nominated, gtext]


POD_COLS: list[Col] = [("Name", "string", "name", 0), ("Ready", "string", "", 0), ("Status", "string", "", 0),
                       ("Restarts", "string", "", 0), ("Age", "string", "", 0), ("IP", "string", "", 1),
                       ("Node", "string", "", 1), ("Nominated Node", "string", "", 1),
                       ("Readiness Gates", "string", "", 1)]


def node_row(node: dict, now: float) -> list[Any]:
    status = node.get("status") or {}
    conds = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    st = "Ready" if conds.get("Ready") == "True" else ("NotReady" if "Ready" in conds else "Unknown")
    if (node.get("spec") or {}).get("unschedulable"):
        st += ",SchedulingDisabled"
    roles = sorted(k.split("/", 1)[1] for k in ((node.get("metadata") or {}).get("labels") or {})
                   if k.startswith("node-role.kubernetes.io/") and k.split("/", 1)[1])
    labels = (node.get("metadata") or {}).get("labels") or {}
    if labels.get("kubernetes.io/role"):
        roles.append(labels["kubernetes.io/role"])
    info = status.get("nodeInfo") or {}

    def addr(t: str) -> str:
        for a in status.get("addresses") or []:
            if a.get("type") == t:
                return a.get("address", NONE)
        return NONE

    return [node["metadata"]["name"], st, ",".join(roles) or NONE, age(node, now), info.get("kubeletVersion", ""),
            addr("InternalIP"), addr("ExternalIP"), info.get("osImage") or UNKNOWN,
            info.get("kernelVersion") or UNKNOWN, info.get("containerRuntimeVersion") or UNKNOWN]


NODE_COLS: list[Col] = [("Name", "string", "name", 0), ("Status", "string", "", 0), ("Roles", "string", "", 0),
                        ("Age", "string", "", 0), ("Version", "string", "", 0), ("Internal-IP", "string", "", 1),
                        ("External-IP", "string", "", 1), ("OS-Image", "string", "", 1),
                        ("Kernel-Version", "string", "", 1), ("Container-Runtime", "string", "", 1)]


def deployment_row(d: dict, now: float) -> list[Any]:
    st, spec = d.get("status") or {}, d.get("spec") or {}
    names, images = _containers(((spec.get("template") or {}).get("spec")) or {})
    return [d["metadata"]["name"], f"{st.get('readyReplicas', 0)}/{spec.get('replicas', 0)}",
            st.get("updatedReplicas", 0), st.get("availableReplicas", 0), age(d, now), names, images,
            _sel(spec.get("selector"))]


DEPLOYMENT_COLS: list[Col] = [("Name", "string", "name", 0), ("Ready", "string", "", 0),
                              ("Up-to-date", "integer", "", 0), ("Available", "integer", "", 0),
                              ("Age", "string", "", 0), ("Containers", "string", "", 1),
                              ("Images", "string", "", 1), ("Selector", "string", "", 1)]


def replicaset_row(rs: dict, now: float) -> list[Any]:
    st, spec = rs.get("status") or {}, rs.get("spec") or {}
    names, images = _containers(((spec.get("template") or {}).get("spec")) or {})
    return [rs["metadata"]["name"], spec.get("replicas", 0), st.get("replicas", 0), st.get("readyReplicas", 0),
            age(rs, now), names, images, _sel(spec.get("selector"))]


RS_COLS: list[Col] = [("Name", "string", "name", 0), ("Desired", "integer", "", 0), ("Current", "integer", "", 0),
                      ("Ready", "integer", "", 0), ("Age", "string", "", 0), ("Containers", "string", "", 1),
                      ("Images", "string", "", 1), ("Selector", "string", "", 1)]


def daemonset_row(d: dict, now: float) -> list[Any]:
    st, spec = d.get("status") or {}, d.get("spec") or {}
    tspec = ((spec.get("template") or {}).get("spec")) or {}
    names, images = _containers(tspec)
    ns = ",".join(f"{k}={v}" for k, v in sorted((tspec.get("nodeSelector") or {}).items())) or NONE
    return [d["metadata"]["name"], st.get("desiredNumberScheduled", 0), st.get("currentNumberScheduled", 0),
            st.get("numberReady", 0), st.get("updatedNumberScheduled", 0), st.get("numberAvailable", 0), ns,
            age(d, now), names, images, _sel(spec.get("selector"))]


DS_COLS: list[Col] = [("Name", "string", "name", 0), ("Desired", "integer", "", 0), ("Current", "integer", "", 0),
                      ("Ready", "integer", "", 0), ("Up-to-date", "integer", "", 0), ("Available", "integer", "", 0),
                      ("Node Selector", "string", "", 0), ("Age", "string", "", 0),
                      ("Containers", "string", "", 1), ("Images", "string", "", 1), ("Selector", "string", "", 1)]


def statefulset_row(s: dict, now: float) -> list[Any]:
    st, spec = s.get("status") or {}, s.get("spec") or {}
    names, images = _containers(((spec.get("template") or {}).get("spec")) or {})
    return [s["metadata"]["name"], f"{st.get('readyReplicas', 0)}/{spec.get('replicas', 0)}", age(s, now),
            names, images]


STS_COLS: list[Col] = [("Name", "string", "name", 0), ("Ready", "string", "", 0), ("Age", "string", "", 0),
                       ("Containers", "string", "", 1), ("Images", "string", "", 1)]


def job_row(j: dict, now: float) -> list[Any]:
    st, spec = j.get("status") or {}, j.get("spec") or {}
    conds = {c.get("type"): c.get("status") for c in st.get("conditions") or []}
    if conds.get("Complete") == "True":
        status = "Complete"
    elif conds.get("Failed") == "True":
        status = "Failed"
    elif conds.get("FailureTarget") == "True":
        status = "FailureTarget"
    elif conds.get("SuccessCriteriaMet") == "True":
        status = "SuccessCriteriaMet"
    elif conds.get("Suspended") == "True":
        status = "Suspended"
    else:
        status = "Running"
    comp = spec.get("completions")
    completions = f"{st.get('succeeded', 0)}/{comp}" if comp is not None else f"{st.get('succeeded', 0)}/1 of {spec.get('parallelism', 1)}"
    start, end = parse_time(st.get("startTime")), parse_time(st.get("completionTime"))
    duration = "" if start is None else human_duration((end if end is not None else now) - start)
    names, images = _containers(((spec.get("template") or {}).get("spec")) or {})
    return [j["metadata"]["name"], status, completions, duration, age(j, now), names, images,
            _sel(spec.get("selector"))]


JOB_COLS: list[Col] = [("Name", "string", "name", 0), ("Status", "string", "", 0),
                       ("Completions", "string", "", 0), ("Duration", "string", "", 0), ("Age", "string", "", 0),
                       ("Containers", "string", "", 1), ("Images", "string", "", 1), ("Selector", "string", "", 1)]


def cronjob_row(c: dict, now: float) -> list[Any]:
    st, spec = c.get("status") or {}, c.get("spec") or {}
    js = (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
    names, images = _containers(js)
    last = since(st.get("lastScheduleTime"), now) if st.get("lastScheduleTime") else NONE
    return [c["metadata"]["name"], spec.get("schedule", ""), spec.get("timeZone") or NONE,
            "True" if spec.get("suspend") else "False", len(st.get("active") or []), last, age(c, now), names,
            images, NONE]


CJ_COLS: list[Col] = [("Name", "string", "name", 0), ("Schedule", "string", "", 0), ("Timezone", "string", "", 0),
                      ("Suspend", "boolean", "", 0), ("Active", "integer", "", 0), ("Last Schedule", "string", "", 0),
                      ("Age", "string", "", 0), ("Containers", "string", "", 1), ("Images", "string", "", 1),
                      ("Selector", "string", "", 1)]


def _service_ports(spec: dict) -> str:
    out = []
    for p in spec.get("ports") or []:
        s = f"{p.get('port')}/{p.get('protocol', 'TCP')}"
        if p.get("nodePort"):
            s = f"{p.get('port')}:{p['nodePort']}/{p.get('protocol', 'TCP')}"
        out.append(s)
    return ",".join(out) or NONE


def service_row(s: dict, now: float) -> list[Any]:
    spec = s.get("spec") or {}
    st = spec.get("type", "ClusterIP")
    ext = spec.get("externalIPs") or []
    if st == "ExternalName":
        ext_text = spec.get("externalName") or NONE
    elif st == "LoadBalancer":
        ing = [i.get("ip") or i.get("hostname") for i in ((s.get("status") or {}).get("loadBalancer") or {})
               .get("ingress") or []]
        ext_text = ",".join(ing + ext) or "<pending>"
    else:
        ext_text = ",".join(ext) or NONE
    cip = spec.get("clusterIP") or NONE
    sel = spec.get("selector")
    return [s["metadata"]["name"], st, cip, ext_text, _service_ports(spec), age(s, now),
            ",".join(f"{k}={v}" for k, v in sorted(sel.items())) if sel else NONE]


SVC_COLS: list[Col] = [("Name", "string", "name", 0), ("Type", "string", "", 0), ("Cluster-IP", "string", "", 0),
                       ("External-IP", "string", "", 0), ("Port(s)", "string", "", 0), ("Age", "string", "", 0),
                       ("Selector", "string", "", 1)]


def endpoints_text(ep: dict) -> str:
    items = []
    for subset in ep.get("subsets") or []:
        ports = subset.get("ports") or []
        for a in subset.get("addresses") or []:
            if ports:
                for p in ports:
                    items.append(f"{a.get('ip')}:{p.get('port')}")
            else:
                items.append(a.get("ip", ""))
    if not items:
        return NONE
    text = ",".join(items[:3])
    if len(items) > 3:
        text += f" + {len(items) - 3} more..."
    return text


def endpoints_row(ep: dict, now: float) -> list[Any]:
    return [ep["metadata"]["name"], endpoints_text(ep), age(ep, now)]


def endpointslice_row(es: dict, now: float) -> list[Any]:
    ports = ",".join(str(p.get("port")) if p.get("port") is not None else "<unset>" for p in es.get("ports") or [])
    addrs = []
    for e in es.get("endpoints") or []:
        addrs.extend(e.get("addresses") or [])
    text = ",".join(addrs[:3]) + (f" + {len(addrs) - 3} more..." if len(addrs) > 3 else "")
    return [es["metadata"]["name"], es.get("addressType", ""), ports or NONE, text or NONE, age(es, now)]


def namespace_row(ns: dict, now: float) -> list[Any]:
    return [ns["metadata"]["name"], (ns.get("status") or {}).get("phase", "Active"), age(ns, now)]


def netpol_row(np: dict, now: float) -> list[Any]:
    sel = (np.get("spec") or {}).get("podSelector")
    return [np["metadata"]["name"], selector_string(sel) or NONE, age(np, now)]


def configmap_row(cm: dict, now: float) -> list[Any]:
    return [cm["metadata"]["name"], len(cm.get("data") or {}) + len(cm.get("binaryData") or {}), age(cm, now)]


def secret_row(s: dict, now: float) -> list[Any]:
    return [s["metadata"]["name"], s.get("type", ""), len(s.get("data") or {}), age(s, now)]


def serviceaccount_row(sa: dict, now: float) -> list[Any]:
    return [sa["metadata"]["name"], len(sa.get("secrets") or []), age(sa, now)]


def event_row(ev: dict, now: float) -> list[Any]:
    obj = ev.get("involvedObject") or ev.get("regarding") or {}
    first = ev.get("firstTimestamp") or ev.get("eventTime") or (ev.get("series") or {}).get("lastObservedTime")
    last = ev.get("lastTimestamp") or (ev.get("series") or {}).get("lastObservedTime") or ev.get("eventTime") or first
    count = ev.get("count") or (ev.get("series") or {}).get("count") or 1
    last_text = since(last, now)
    if count > 1:
        last_text = f"{last_text} (x{count} over {since(first, now)})"
    kind = (obj.get("kind") or "").lower()
    src = ev.get("source") or {}
    source = src.get("component") or ev.get("reportingComponent") or ev.get("reportingController") or ""
    if src.get("host"):
        source += ", " + src["host"]
    return [last_text, ev.get("type", ""), ev.get("reason", ""), f"{kind}/{obj.get('name', '')}",
            ev.get("message", ev.get("note", "")), ev.get("reportingComponent") or source, obj.get("fieldPath", ""),
            source, str(count), since(first, now), ev["metadata"]["name"]]


EVENT_COLS: list[Col] = [("Last Seen", "string", "", 0), ("Type", "string", "", 0), ("Reason", "string", "", 0),
                         ("Object", "string", "", 0), ("Message", "string", "", 0), ("Subobject", "string", "", 1),
                         ("Source", "string", "", 1), ("First Seen", "string", "", 1), ("Count", "string", "", 1),
                         ("Name", "string", "name", 1)]


def _event_row(ev: dict, now: float) -> list[Any]:
    r = event_row(ev, now)
    return [r[0], r[1], r[2], r[3], r[4], r[6], r[7], r[9], r[8], r[10]]


def lease_row(le: dict, now: float) -> list[Any]:
    return [le["metadata"]["name"], (le.get("spec") or {}).get("holderIdentity") or NONE, age(le, now)]


def pdb_row(p: dict, now: float) -> list[Any]:
    spec, st = p.get("spec") or {}, p.get("status") or {}
    return [p["metadata"]["name"], str(spec["minAvailable"]) if "minAvailable" in spec else "N/A",
            str(spec["maxUnavailable"]) if "maxUnavailable" in spec else "N/A", st.get("disruptionsAllowed", 0),
            age(p, now)]


def role_row(r: dict, now: float) -> list[Any]:
    return [r["metadata"]["name"], r["metadata"].get("creationTimestamp", "")]


def binding_row(b: dict, now: float) -> list[Any]:
    ref = b.get("roleRef") or {}
    users = [s.get("name", "") for s in b.get("subjects") or [] if s.get("kind") == "User"]
    groups = [s.get("name", "") for s in b.get("subjects") or [] if s.get("kind") == "Group"]
    sas = [f"{s.get('namespace', '')}/{s.get('name', '')}" for s in b.get("subjects") or []
           if s.get("kind") == "ServiceAccount"]
    return [b["metadata"]["name"], f"{ref.get('kind', '')}/{ref.get('name', '')}", age(b, now),
            ", ".join(users), ", ".join(groups), ", ".join(sas)]


BINDING_COLS: list[Col] = [("Name", "string", "name", 0), ("Role", "string", "", 0), ("Age", "string", "", 0),
                           ("Users", "string", "", 1), ("Groups", "string", "", 1),
                           ("ServiceAccounts", "string", "", 1)]


def priorityclass_row(p: dict, now: float) -> list[Any]:
    return [p["metadata"]["name"], p.get("value", 0), bool(p.get("globalDefault")), age(p, now),
            p.get("preemptionPolicy", "")]


def csidriver_row(c: dict, now: float) -> list[Any]:
    spec = c.get("spec") or {}
    modes = ",".join(spec.get("volumeLifecycleModes") or []) or NONE

    def b(k: str, d: Any) -> str:
        v = spec.get(k, d)
        return "true" if v is True else "false" if v is False else str(v) if v is not None else UNKNOWN

    return [c["metadata"]["name"], b("attachRequired", True), b("podInfoOnMount", False),
            b("storageCapacity", False), len(spec.get("tokenRequests") or []), b("requiresRepublish", False), modes,
            age(c, now)]


def csinode_row(c: dict, now: float) -> list[Any]:
    return [c["metadata"]["name"], len((c.get("spec") or {}).get("drivers") or []), age(c, now)]


def storageclass_row(s: dict, now: float) -> list[Any]:
    ann = (s.get("metadata") or {}).get("annotations") or {}
    name = s["metadata"]["name"]
    if ann.get("storageclass.kubernetes.io/is-default-class") == "true":
        name += " (default)"
    return [name, s.get("provisioner", ""), s.get("reclaimPolicy", "Delete"),
            s.get("volumeBindingMode", "Immediate"), bool(s.get("allowVolumeExpansion")), age(s, now)]


def crd_row(c: dict, now: float) -> list[Any]:
    return [c["metadata"]["name"], c["metadata"].get("creationTimestamp", "")]


def apiservice_row(a: dict, now: float) -> list[Any]:
    spec = a.get("spec") or {}
    svc = spec.get("service")
    service = f"{svc.get('namespace')}/{svc.get('name')}" if svc else "Local"
    conds = {c.get("type"): c for c in (a.get("status") or {}).get("conditions") or []}
    av = conds.get("Available")
    avail = UNKNOWN if av is None else (av.get("status", "") if av.get("status") == "True"
                                       else f"{av.get('status')} ({av.get('reason', '')})")
    return [a["metadata"]["name"], service, avail, age(a, now)]


def controllerrevision_row(c: dict, now: float) -> list[Any]:
    owner = NONE
    for ref in (c.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            g = ref.get("apiVersion", "").split("/")[0] if "/" in ref.get("apiVersion", "") else ""
            owner = f"{ref.get('kind', '').lower()}{'.' + g if g else ''}/{ref.get('name')}"
    return [c["metadata"]["name"], owner, c.get("revision", 0), age(c, now)]


def _simple(name: str = "Name") -> list[Col]:
    return [(name, "string", "name", 0), ("Age", "string", "", 0)]


TABLES: dict[str, tuple[list[Col], Callable[[dict, float], list[Any]]]] = {
    "Pod": (POD_COLS, pod_row),
    "Node": (NODE_COLS, node_row),
    "Deployment": (DEPLOYMENT_COLS, deployment_row),
    "ReplicaSet": (RS_COLS, replicaset_row),
    "DaemonSet": (DS_COLS, daemonset_row),
    "StatefulSet": (STS_COLS, statefulset_row),
    "Job": (JOB_COLS, job_row),
    "CronJob": (CJ_COLS, cronjob_row),
    "Service": (SVC_COLS, service_row),
    "Endpoints": ([("Name", "string", "name", 0), ("Endpoints", "string", "", 0), ("Age", "string", "", 0)],
                  endpoints_row),
    "EndpointSlice": ([("Name", "string", "name", 0), ("AddressType", "string", "", 0), ("Ports", "string", "", 0),
                       ("Endpoints", "string", "", 0), ("Age", "string", "", 0)], endpointslice_row),
    "Namespace": ([("Name", "string", "name", 0), ("Status", "string", "", 0), ("Age", "string", "", 0)],
                  namespace_row),
    "NetworkPolicy": ([("Name", "string", "name", 0), ("Pod-Selector", "string", "", 0), ("Age", "string", "", 0)],
                      netpol_row),
    "ConfigMap": ([("Name", "string", "name", 0), ("Data", "string", "", 0), ("Age", "string", "", 0)],
                  configmap_row),
    "Secret": ([("Name", "string", "name", 0), ("Type", "string", "", 0), ("Data", "string", "", 0),
                ("Age", "string", "", 0)], secret_row),
    "ServiceAccount": ([("Name", "string", "name", 0), ("Secrets", "string", "", 0), ("Age", "string", "", 0)],
                       serviceaccount_row),
    "Event": (EVENT_COLS, _event_row),
    "Lease": ([("Name", "string", "name", 0), ("Holder", "string", "", 0), ("Age", "string", "", 0)], lease_row),
    "PodDisruptionBudget": ([("Name", "string", "name", 0), ("Min Available", "string", "", 0),
                             ("Max Unavailable", "string", "", 0), ("Allowed Disruptions", "integer", "", 0),
                             ("Age", "string", "", 0)], pdb_row),
    "Role": ([("Name", "string", "name", 0), ("Created At", "string", "date", 0)], role_row),
    "ClusterRole": ([("Name", "string", "name", 0), ("Created At", "string", "date", 0)], role_row),
    "RoleBinding": (BINDING_COLS, binding_row),
    "ClusterRoleBinding": (BINDING_COLS, binding_row),
    "PriorityClass": ([("Name", "string", "name", 0), ("Value", "integer", "", 0),
                       ("Global-Default", "boolean", "", 0), ("Age", "string", "", 0),
                       ("Preemption-Policy", "string", "", 0)], priorityclass_row),
    "CSIDriver": ([("Name", "string", "name", 0), ("AttachRequired", "boolean", "", 0),
                   ("PodInfoOnMount", "boolean", "", 0), ("StorageCapacity", "boolean", "", 0),
                   ("TokenRequests", "string", "", 0), ("RequiresRepublish", "boolean", "", 0),
                   ("Modes", "string", "", 0), ("Age", "string", "", 0)], csidriver_row),
    "CSINode": ([("Name", "string", "name", 0), ("Drivers", "integer", "", 0), ("Age", "string", "", 0)],
                csinode_row),
    "StorageClass": ([("Name", "string", "name", 0), ("Provisioner", "string", "", 0),
                      ("ReclaimPolicy", "string", "", 0), ("VolumeBindingMode", "string", "", 0),
                      ("AllowVolumeExpansion", "string", "", 0), ("Age", "string", "", 0)], storageclass_row),
    "CustomResourceDefinition": ([("Name", "string", "name", 0), ("Created At", "date", "", 0)], crd_row),
    "APIService": ([("Name", "string", "name", 0), ("Service", "string", "", 0), ("Available", "string", "", 0),
                    ("Age", "string", "", 0)], apiservice_row),
    "ControllerRevision": ([("Name", "string", "name", 0), ("Controller", "string", "", 0),
                            ("Revision", "integer", "", 0), ("Age", "string", "", 0)], controllerrevision_row),
}

DESCRIPTIONS = {
    "Name": "Name must be unique within a namespace. Is required when creating resources, although some "
            "resources may allow a client to request the generation of an appropriate name automatically. "
            "Name is primarily intended for creation idempotence and configuration definition. Cannot be "
            "updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
    "Age": "CreationTimestamp is a timestamp representing the server time when this object was created.",
}


def _coldefs(cols: list[Col]) -> list[dict]:
    return [{"name": n, "type": t, "format": f, "description": DESCRIPTIONS.get(n, n), "priority": p}
            for n, t, f, p in cols]


def _partial(obj: dict) -> dict:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata") or {}}


def jsonpath_value(obj: Any, path: str) -> list[Any]:
    """Values of a simple JSONPath (``.status.replicas``, ``.spec.x[0].y``, ``.a[*].b``, a filter
    ``.conditions[?(@.type=='Available')].status``) as additionalPrinterColumns use them."""
    import re

    p = path.strip()
    if p.startswith("{") and p.endswith("}"):
        p = p[1:-1]
    steps = re.findall(r"\.([^.\[\]]+)|\[(\*|-?\d+)\]|\[['\"]([^'\"]+)['\"]\]"
                       r"|\[\?\(@\.([\w.]+)\s*==\s*['\"]([^'\"]*)['\"]\)\]", p)
    vals = [obj]
    for name, idx, quoted, fkey, fval in steps:
        nxt = []
        for v in vals:
            if fkey:
                for item in v if isinstance(v, list) else []:
                    cur: Any = item
                    for part in fkey.split("."):
                        cur = cur.get(part) if isinstance(cur, dict) else None
                    if cur is not None and str(cur) == fval:
                        nxt.append(item)
            elif name or quoted:
                key = name or quoted
                if isinstance(v, dict) and key in v:
                    nxt.append(v[key])
            elif idx == "*":
                if isinstance(v, list):
                    nxt.extend(v)
                elif isinstance(v, dict):
                    nxt.extend(v.values())
            else:
                i = int(idx)
                if isinstance(v, list) and -len(v) <= i < len(v):
                    nxt.append(v[i])
        vals = nxt
    return vals


def _cell(vals: list[Any], typ: str) -> Any:
    if not vals:
        return None
    v = vals[0] if len(vals) == 1 else vals
    if typ in ("integer", "number", "boolean") and not isinstance(v, list):
        return v
    if isinstance(v, dict | list):
        import json

        return json.dumps(v, separators=(",", ":"))
    return v if isinstance(v, str) else (str(v).lower() if isinstance(v, bool) else str(v))


def crd_columns(version: dict) -> list[dict]:
    """Column definitions of a CRD version (Name, the printer columns, Age by default)."""
    cols = version.get("additionalPrinterColumns")
    if cols is None:
        return _coldefs([("Name", "string", "name", 0), ("Age", "date", "", 0)])
    out = [{"name": "Name", "type": "string", "format": "name", "description": DESCRIPTIONS["Name"],
            "priority": 0}]
    for c in cols:
        out.append({"name": c.get("name", ""), "type": c.get("type", "string"), "format": c.get("format", ""),
                    "description": c.get("description", ""), "priority": c.get("priority", 0)})
    return out


def table(kind: str, objs: list[dict], rv: str = "", include: str = "Metadata", crd_version: dict | None = None,
          no_headers: bool = False, cont: str = "", remaining: int | None = None) -> dict:
    """The ``meta.k8s.io/v1`` Table of objects of one kind."""
    now = time.time()
    if crd_version is not None:
        coldefs = crd_columns(crd_version)
        specs = crd_version.get("additionalPrinterColumns")
        rows = []
        for o in objs:
            if specs is None:
                cells = [o["metadata"]["name"], age(o, now)]
            else:
                cells = [o["metadata"]["name"]]
                for c in specs:
                    vals = jsonpath_value(o, c.get("jsonPath", ""))
                    if c.get("type") == "date":
                        cells.append(since(vals[0], now) if vals and isinstance(vals[0], str) else None)
                    else:
                        cells.append(_cell(vals, c.get("type", "string")))
            rows.append(_row(cells, o, include))
    elif kind in TABLES:
        cols, fn = TABLES[kind]
        coldefs = _coldefs(cols)
        rows = [_row(fn(o, now), o, include) for o in objs]
    else:
        coldefs = _coldefs(_simple())
        rows = [_row([o["metadata"]["name"], age(o, now)], o, include) for o in objs]
    meta: dict[str, Any] = {"resourceVersion": rv}
    if cont:
        meta["continue"] = cont
    if remaining is not None:
        meta["remainingItemCount"] = remaining
    t: dict[str, Any] = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
                         "columnDefinitions": [] if no_headers else coldefs, "rows": rows}
    return t


def _row(cells: list[Any], obj: dict, include: str) -> dict:
    row: dict[str, Any] = {"cells": cells}
    if include == "Object":
        row["object"] = obj
    elif include != "None":
        row["object"] = _partial(obj)
    return row
