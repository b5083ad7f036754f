"""Defaulting and validation of the built-in kinds, as the API server does them.

``default(obj)`` fills the defaults kube-apiserver's defaulting functions fill (so what a
client reads back matches a real cluster's object); ``validate(obj, old)`` returns the
field errors the real validation returns (worded as field.Error words them). Semantic
rules are ported from ``testbed/k8s/model.py``; unknown fields and value types are
checked against the schema (``schema.py``) by the request handler.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from typing import Any

from testbed.apiserver.status import (
    FieldError,
    duplicate,
    forbidden,
    invalid_value,
    not_supported,
    required,
)

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                 "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
                 "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
             "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
             "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
DNS1035_MSG = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
               "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
               "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

# Kinds whose names are DNS-1123 labels (the rest: subdomains); Services: DNS-1035 labels.
LABEL_NAMED = {"Namespace"}
PATH_SEGMENT_NAMED = {"ClusterRole", "Role", "RoleBinding", "ClusterRoleBinding"}


def check_subdomain(value: str, path: str) -> list[FieldError]:
    errs = []
    if len(value) > 253:
        errs.append(invalid_value(path, value, "must be no more than 253 characters"))
    if not DNS1123_SUBDOMAIN.match(value):
        errs.append(invalid_value(path, value, SUBDOMAIN_MSG))
    return errs


def check_label(value: str, path: str) -> list[FieldError]:
    errs = []
    if len(value) > 63:
        errs.append(invalid_value(path, value, "must be no more than 63 characters"))
    if not DNS1123_LABEL.match(value):
        errs.append(invalid_value(path, value, LABEL_MSG))
    return errs


def check_name(kind: str, name: str, path: str = "metadata.name") -> list[FieldError]:
    """The name rules of ``kind`` (ValidateObjectMeta's name validation)."""
    if kind in PATH_SEGMENT_NAMED:
        if name in (".", "..") or "/" in name or "%" in name:
            return [invalid_value(path, name, 'may not contain "/" or "%"' if name not in (".", "..")
                                  else f"may not be '{name}'")]
        return []
    if kind == "Service":
        if len(name) > 63 or not DNS1035.match(name):
            return [invalid_value(path, name, DNS1035_MSG)]
        return []
    if kind in LABEL_NAMED:
        return check_label(name, path)
    return check_subdomain(name, path)


def check_qualified_key(key: str, path: str) -> list[FieldError]:
    """A label/annotation key: optional DNS-subdomain prefix and a qualified name."""
    msg = ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
           "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
           "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")
    prefix, _, name = key.rpartition("/")
    errs = []
    if "/" in key and not prefix:
        errs.append(invalid_value(path, key, "prefix part must be non-empty"))
    elif prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        errs.append(invalid_value(path, key, "prefix part " + SUBDOMAIN_MSG))
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        errs.append(invalid_value(path, key, msg if name and len(name) <= 63
                                  else "name part must be non-empty" if not name
                                  else "name part must be no more than 63 characters"))
    return errs


def check_labels(labels: dict | None, path: str) -> list[FieldError]:
    errs: list[FieldError] = []
    for k, v in (labels or {}).items():
        errs += check_qualified_key(k, path)
        if not isinstance(v, str):
            continue
        if len(v) > 63 or not _LABEL_VALUE.match(v):
            errs.append(invalid_value(f"{path}", v, "a valid label must be an empty string or consist of "
                                      "alphanumeric characters, '-', '_' or '.', and must start and end with an "
                                      "alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex "
                                      "used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"))
    return errs


def check_meta(kind: str, obj: dict, namespaced: bool) -> list[FieldError]:
    """ValidateObjectMeta: name, namespace, labels, annotation keys."""
    meta = obj.get("metadata") or {}
    errs: list[FieldError] = []
    name = meta.get("name")
    if not name:
        errs.append(required("metadata.name", "name or generateName is required"))
    else:
        errs += check_name(kind, name)
    if namespaced:
        ns = meta.get("namespace")
        if not ns:
            errs.append(required("metadata.namespace"))
        else:
            errs += check_label(ns, "metadata.namespace")
    errs += check_labels(meta.get("labels"), "metadata.labels")
    for k in (meta.get("annotations") or {}):
        errs += check_qualified_key(k, "metadata.annotations")
    total = sum(len(k) + len(v or "") for k, v in (meta.get("annotations") or {}).items())
    if total > 256 * 1024:
        errs.append(FieldError("FieldValueTooLong", "metadata.annotations", "must have at most 262144 bytes"))
    return errs


# --- defaults ---------------------------------------------------------------------------------

def _image_pull_policy(image: str) -> str:
    tail = image.rsplit("/", 1)[-1]
    if "@" in tail:
        return "IfNotPresent"
    if ":" not in tail or tail.endswith(":latest"):
        return "Always"
    return "IfNotPresent"


def default_container(c: dict) -> None:
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    if c.get("image"):
        c.setdefault("imagePullPolicy", _image_pull_policy(c["image"]))
    c.setdefault("resources", {})
    for p in c.get("ports") or []:
        if isinstance(p, dict):
            p.setdefault("protocol", "TCP")
    for e in c.get("env") or []:
        vf = (e or {}).get("valueFrom") or {}
        if "fieldRef" in vf and isinstance(vf["fieldRef"], dict):
            vf["fieldRef"].setdefault("apiVersion", "v1")


def default_pod_spec(spec: dict) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        if isinstance(c, dict):
            default_container(c)
    for v in spec.get("volumes") or []:
        if isinstance(v, dict):
            for src in ("configMap", "secret"):
                if isinstance(v.get(src), dict):
                    v[src].setdefault("defaultMode", 420)
            if isinstance(v.get("hostPath"), dict):
                v["hostPath"].setdefault("type", "")
            if isinstance(v.get("emptyDir"), dict) is False and "emptyDir" in v and v["emptyDir"] is None:
                v["emptyDir"] = {}


def default_pod(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    default_pod_spec(spec)
    sa = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    spec["serviceAccountName"] = sa
    spec["serviceAccount"] = sa
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("priority", 0)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    tols = spec.setdefault("tolerations", []) or []
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
        if not any(isinstance(t, dict) and t.get("key") == key for t in tols):
            tols.append({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300})
    spec["tolerations"] = tols
    status = obj.setdefault("status", {})
    status.setdefault("phase", "Pending")
    status.setdefault("qosClass", qos_class(spec))


def qos_class(spec: dict) -> str:
    """The pod's QoS class from its containers' requests/limits."""
    reqs, lims, n_guaranteed, n = False, False, 0, 0
    for c in spec.get("containers") or []:
        if not isinstance(c, dict):
            continue
        n += 1
        r = (c.get("resources") or {}).get("requests") or {}
        lim = (c.get("resources") or {}).get("limits") or {}
        reqs = reqs or bool(r)
        lims = lims or bool(lim)
        if lim.get("cpu") is not None and lim.get("memory") is not None and \
                all(str(r.get(k, lim[k])) == str(lim[k]) for k in ("cpu", "memory")):
            n_guaranteed += 1
    if n and n_guaranteed == n:
        return "Guaranteed"
    if reqs or lims:
        return "Burstable"
    return "BestEffort"


def default_workload(obj: dict) -> None:
    kind = obj["kind"]
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    if kind in ("Deployment", "ReplicaSet", "StatefulSet"):
        spec.setdefault("replicas", 1)
    if kind in ("Deployment", "DaemonSet", "StatefulSet"):
        spec.setdefault("revisionHistoryLimit", 10)
    if kind == "Deployment":
        st = spec.setdefault("strategy", {})
        if isinstance(st, dict):
            st.setdefault("type", "RollingUpdate")
            if st["type"] == "RollingUpdate":
                ru = st.setdefault("rollingUpdate", {})
                ru.setdefault("maxUnavailable", "25%")
                ru.setdefault("maxSurge", "25%")
        spec.setdefault("progressDeadlineSeconds", 600)
    elif kind == "DaemonSet":
        st = spec.setdefault("updateStrategy", {})
        if isinstance(st, dict):
            st.setdefault("type", "RollingUpdate")
            if st["type"] == "RollingUpdate":
                ru = st.setdefault("rollingUpdate", {})
                ru.setdefault("maxUnavailable", 1)
                ru.setdefault("maxSurge", 0)
    elif kind == "StatefulSet":
        spec.setdefault("podManagementPolicy", "OrderedReady")
        st = spec.setdefault("updateStrategy", {})
        if isinstance(st, dict):
            st.setdefault("type", "RollingUpdate")
            if st["type"] == "RollingUpdate":
                st.setdefault("rollingUpdate", {}).setdefault("partition", 0)
        spec.setdefault("persistentVolumeClaimRetentionPolicy", {"whenDeleted": "Retain", "whenScaled": "Retain"})
    elif kind == "Job":
        spec.setdefault("parallelism", 1)
        spec.setdefault("completions", 1)
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
    elif kind == "CronJob":
        spec.setdefault("concurrencyPolicy", "Allow")
        spec.setdefault("suspend", False)
        spec.setdefault("successfulJobsHistoryLimit", 3)
        spec.setdefault("failedJobsHistoryLimit", 1)
    tmpl = spec.get("template")
    if kind == "CronJob":
        tmpl = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template")
    if isinstance(tmpl, dict):
        tmpl.setdefault("metadata", {})
        if isinstance(tmpl.get("spec"), dict):
            default_pod_spec(tmpl["spec"])


def default_service(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    for p in spec.get("ports") or []:
        if isinstance(p, dict):
            p.setdefault("protocol", "TCP")
            if "port" in p:
                p.setdefault("targetPort", p["port"])
    obj.setdefault("status", {}).setdefault("loadBalancer", {})


def default_netpol(obj: dict) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    if spec.get("policyTypes") is None:
        spec["policyTypes"] = ["Ingress"] + (["Egress"] if spec.get("egress") else [])
    for d in ("ingress", "egress"):
        for rule in spec.get(d) or []:
            for p in (rule or {}).get("ports") or []:
                if isinstance(p, dict):
                    p.setdefault("protocol", "TCP")


def default_secret(obj: dict) -> None:
    obj.setdefault("type", "Opaque")
    sd = obj.pop("stringData", None)
    if isinstance(sd, dict):
        data = obj.setdefault("data", {}) or {}
        for k, v in sd.items():
            data[k] = base64.b64encode(str(v).encode()).decode()
        obj["data"] = data


def default(obj: dict) -> None:
    """Fill the API server's defaults in place (built-in kinds)."""
    kind = obj.get("kind")
    if kind == "Pod":
        default_pod(obj)
    elif kind in ("Deployment", "ReplicaSet", "DaemonSet", "StatefulSet", "Job", "CronJob"):
        default_workload(obj)
    elif kind == "Service":
        default_service(obj)
    elif kind == "NetworkPolicy":
        default_netpol(obj)
    elif kind == "Secret":
        default_secret(obj)
    elif kind == "Namespace":
        name = (obj.get("metadata") or {}).get("name")
        if name:
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        obj.setdefault("spec", {})
        obj.setdefault("status", {}).setdefault("phase", "Active")
    elif kind == "PriorityClass":
        obj.setdefault("preemptionPolicy", "PreemptLowerPriority")
    elif kind == "EndpointSlice":
        for p in obj.get("ports") or []:
            if isinstance(p, dict):
                p.setdefault("protocol", "TCP")


# --- validation -------------------------------------------------------------------------------

def _port_ok(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65535


def validate_pod_spec(spec: Any, path: str) -> list[FieldError]:
    errs: list[FieldError] = []
    if not isinstance(spec, dict):
        return [required(path)]
    containers = spec.get("containers")
    if not containers:
        errs.append(required(f"{path}.containers"))
    names: set[str] = set()
    for group in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(group) or []):
            cp = f"{path}.{group}[{i}]"
            if not isinstance(c, dict):
                continue
            n = c.get("name")
            if not n:
                errs.append(required(f"{cp}.name"))
            else:
                errs += check_label(n, f"{cp}.name")
                if n in names:
                    errs.append(duplicate(f"{cp}.name", n))
                names.add(n)
            if not c.get("image"):
                errs.append(required(f"{cp}.image"))
            pnames: set[str] = set()
            for j, p in enumerate(c.get("ports") or []):
                if not isinstance(p, dict):
                    continue
                if not _port_ok(p.get("containerPort")):
                    errs.append(invalid_value(f"{cp}.ports[{j}].containerPort", p.get("containerPort"),
                                              "must be between 1 and 65535, inclusive"))
                if p.get("protocol") not in (None, "TCP", "UDP", "SCTP"):
                    errs.append(not_supported(f"{cp}.ports[{j}].protocol", p["protocol"], ["SCTP", "TCP", "UDP"]))
                if p.get("name"):
                    if p["name"] in pnames:
                        errs.append(duplicate(f"{cp}.ports[{j}].name", p["name"]))
                    pnames.add(p["name"])
            if c.get("imagePullPolicy") not in (None, "Always", "IfNotPresent", "Never"):
                errs.append(not_supported(f"{cp}.imagePullPolicy", c["imagePullPolicy"],
                                          ["Always", "IfNotPresent", "Never"]))
    rp = spec.get("restartPolicy")
    if rp is not None and rp not in ("Always", "OnFailure", "Never"):
        errs.append(not_supported(f"{path}.restartPolicy", rp, ["Always", "OnFailure", "Never"]))
    dp = spec.get("dnsPolicy")
    if dp is not None and dp not in ("ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"):
        errs.append(not_supported(f"{path}.dnsPolicy", dp, ["ClusterFirst", "ClusterFirstWithHostNet", "Default",
                                                             "None"]))
    if spec.get("nodeName"):
        errs += check_subdomain(spec["nodeName"], f"{path}.nodeName")
    vnames: set[str] = set()
    for i, v in enumerate(spec.get("volumes") or []):
        if isinstance(v, dict):
            n = v.get("name")
            if not n:
                errs.append(required(f"{path}.volumes[{i}].name"))
            elif n in vnames:
                errs.append(duplicate(f"{path}.volumes[{i}].name", n))
            vnames.add(n or "")
    return errs


def _selector_matches(sel: dict, labels: dict) -> bool:
    from kubeclient.selectors import match_label_selector

    return match_label_selector(sel, labels)


def validate_workload(obj: dict) -> list[FieldError]:
    kind = obj["kind"]
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    errs: list[FieldError] = []
    if kind == "CronJob":
        if not spec.get("schedule"):
            errs.append(required("spec.schedule"))
        jt = (spec.get("jobTemplate") or {}).get("spec") or {}
        errs += validate_pod_spec((jt.get("template") or {}).get("spec"), "spec.jobTemplate.spec.template.spec")
        return errs
    reps = spec.get("replicas")
    if isinstance(reps, int) and reps < 0:
        errs.append(invalid_value("spec.replicas", reps, "must be greater than or equal to 0"))
    sel = spec.get("selector")
    tmpl = spec.get("template") or {}
    labels = (tmpl.get("metadata") or {}).get("labels") or {}
    if kind != "Job" or spec.get("manualSelector"):
        if not sel:
            errs.append(required("spec.selector"))
        elif not (sel.get("matchLabels") or sel.get("matchExpressions")):
            errs.append(invalid_value("spec.selector", _go_map(sel), "empty selector is invalid for deployment")
                        if kind == "Deployment" else required("spec.selector"))
        elif not _selector_matches(sel, labels):
            errs.append(invalid_value("spec.template.metadata.labels", _go_map(labels),
                                      "`selector` does not match template `labels`"))
    errs += check_labels(labels, "spec.template.metadata.labels")
    errs += validate_pod_spec(tmpl.get("spec"), "spec.template.spec")
    rp = ((tmpl.get("spec") or {}).get("restartPolicy"))
    if kind in ("Deployment", "ReplicaSet", "DaemonSet", "StatefulSet") and rp not in (None, "Always"):
        errs.append(not_supported("spec.template.spec.restartPolicy", rp, ["Always"]))
    if kind == "Job" and rp not in (None, "OnFailure", "Never"):
        errs.append(not_supported("spec.template.spec.restartPolicy", rp, ["OnFailure", "Never"]))
    if kind == "StatefulSet" and spec.get("podManagementPolicy") not in (None, "OrderedReady", "Parallel"):
        errs.append(not_supported("spec.podManagementPolicy", spec["podManagementPolicy"],
                                  ["OrderedReady", "Parallel"]))
    return errs


def _go_map(d: dict) -> str:
    if not isinstance(d, dict):
        return str(d)
    return "map[string]string{" + ", ".join(f'"{k}":"{v}"' for k, v in sorted(d.items())) + "}"


SERVICE_TYPES = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]


def validate_service(obj: dict) -> list[FieldError]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    errs: list[FieldError] = []
    stype = spec.get("type", "ClusterIP")
    if stype not in SERVICE_TYPES:
        errs.append(not_supported("spec.type", stype, SERVICE_TYPES))
    elif stype != "ClusterIP":
        errs.append(forbidden("spec.type", f'type "{stype}" is not served by calicolab (only "ClusterIP")'))
    ports = spec.get("ports") or []
    if not ports and spec.get("clusterIP") != "None":
        errs.append(required("spec.ports"))
    names: set[str] = set()
    for i, p in enumerate(ports):
        if not isinstance(p, dict):
            continue
        if not _port_ok(p.get("port")):
            errs.append(invalid_value(f"spec.ports[{i}].port", p.get("port"), "must be between 1 and 65535, inclusive"))
        if p.get("protocol") not in (None, "TCP", "UDP", "SCTP"):
            errs.append(not_supported(f"spec.ports[{i}].protocol", p["protocol"], ["SCTP", "TCP", "UDP"]))
        if len(ports) > 1 and not p.get("name"):
            errs.append(required(f"spec.ports[{i}].name"))
        if p.get("name"):
            if p["name"] in names:
                errs.append(duplicate(f"spec.ports[{i}].name", p["name"]))
            names.add(p["name"])
        tp = p.get("targetPort")
        if isinstance(tp, int) and not isinstance(tp, bool) and not _port_ok(tp):
            errs.append(invalid_value(f"spec.ports[{i}].targetPort", tp, "must be between 1 and 65535, inclusive"))
    cip = spec.get("clusterIP")
    if cip and cip != "None":
        try:
            ipaddress.ip_address(cip)
        except ValueError:
            errs.append(invalid_value("spec.clusterIPs[0]", cip, "must be a valid IP address, (e.g. 10.9.8.7 or "
                                      "2001:db8::ffff)"))
    errs += check_labels(spec.get("selector"), "spec.selector")
    sa = spec.get("sessionAffinity")
    if sa not in (None, "None", "ClientIP"):
        errs.append(not_supported("spec.sessionAffinity", sa, ["ClientIP", "None"]))
    return errs


def validate_netpol(obj: dict) -> list[FieldError]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    errs: list[FieldError] = []
    for i, t in enumerate(spec.get("policyTypes") or []):
        if t not in ("Ingress", "Egress"):
            errs.append(not_supported(f"spec.policyTypes[{i}]", t, ["Egress", "Ingress"]))
    for d, peer in (("ingress", "from"), ("egress", "to")):
        for i, rule in enumerate(spec.get(d) or []):
            for j, p in enumerate((rule or {}).get("ports") or []):
                if p.get("protocol") not in (None, "TCP", "UDP", "SCTP"):
                    errs.append(not_supported(f"spec.{d}[{i}].ports[{j}].protocol", p["protocol"],
                                              ["SCTP", "TCP", "UDP"]))
            for j, pe in enumerate((rule or {}).get(peer) or []):
                ipb = (pe or {}).get("ipBlock")
                if ipb:
                    try:
                        ipaddress.ip_network(ipb.get("cidr", ""), strict=False)
                    except ValueError:
                        errs.append(invalid_value(f"spec.{d}[{i}].{peer}[{j}].ipBlock.cidr", ipb.get("cidr"),
                                                  "must be a valid CIDR"))
    return errs


def validate_node(obj: dict) -> list[FieldError]:
    spec = obj.get("spec") or {}
    errs: list[FieldError] = []
    for i, c in enumerate(spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])):
        try:
            ipaddress.ip_network(c)
        except ValueError:
            errs.append(invalid_value(f"spec.podCIDRs[{i}]", c, "must be a valid CIDR"))
    return errs


def validate_configmap(obj: dict) -> list[FieldError]:
    errs: list[FieldError] = []
    keyrx = re.compile(r"^[-._a-zA-Z0-9]+$")
    for field in ("data", "binaryData"):
        for k in (obj.get(field) or {}):
            if not keyrx.match(k) or len(k) > 253:
                errs.append(invalid_value(f"{field}[{k}]", k, "a valid config key must consist of alphanumeric "
                                          "characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or "
                                          "'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"))
    return errs


def validate(obj: dict, old: dict | None = None) -> list[FieldError]:
    """Semantic validation of a built-in kind (after defaulting)."""
    kind = obj.get("kind")
    if kind == "Pod":
        errs = validate_pod_spec(obj.get("spec"), "spec")
        if old is not None:
            errs += validate_pod_update(obj, old)
        return errs
    if kind in ("Deployment", "ReplicaSet", "DaemonSet", "StatefulSet", "Job", "CronJob"):
        errs = validate_workload(obj)
        if old is not None and kind in ("Deployment", "ReplicaSet", "DaemonSet", "StatefulSet"):
            if (old.get("spec") or {}).get("selector") != (obj.get("spec") or {}).get("selector"):
                errs.append(invalid_value("spec.selector", _go_map(((obj.get("spec") or {}).get("selector") or {})
                                                                   .get("matchLabels") or {}),
                                          "field is immutable"))
        return errs
    if kind == "Service":
        errs = validate_service(obj)
        if old is not None:
            oc = (old.get("spec") or {}).get("clusterIP")
            nc = (obj.get("spec") or {}).get("clusterIP")
            if oc and nc != oc:
                errs.append(invalid_value("spec.clusterIPs[0]", nc, "may not change once set"))
        return errs
    if kind == "NetworkPolicy":
        return validate_netpol(obj)
    if kind == "Node":
        return validate_node(obj)
    if kind in ("ConfigMap", "Secret"):
        errs = validate_configmap(obj)
        if old is not None and old.get("immutable") and (
                old.get("data") != obj.get("data") or old.get("binaryData") != obj.get("binaryData")):
            errs.append(forbidden("data", "field is immutable when `immutable` is set"))
        return errs
    return []


POD_MUTABLE = ("containers", "initContainers", "activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds",
               "schedulingGates")


def validate_pod_update(new: dict, old: dict) -> list[FieldError]:
    """Pod updates may change only images, activeDeadlineSeconds, added tolerations."""
    ns, os_ = dict(new.get("spec") or {}), dict(old.get("spec") or {})
    for spec in (ns, os_):
        for group in ("containers", "initContainers"):
            spec[group] = [{k: v for k, v in c.items() if k != "image"} for c in spec.get(group) or []
                           if isinstance(c, dict)]
        spec.pop("activeDeadlineSeconds", None)
        spec.pop("tolerations", None)
        spec.pop("terminationGracePeriodSeconds", None)
        spec.pop("schedulingGates", None)
    if ns != os_:
        changed = sorted(k for k in set(ns) | set(os_) if ns.get(k) != os_.get(k))
        return [forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`,"
                          "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only "
                          "additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be "
                          "set to 1 if it was previously negative) (changed: "
                          + ", ".join("spec." + k for k in changed) + ")")]
    return []
