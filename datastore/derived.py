"""Calico objects derived from Kubernetes objects in the Kubernetes datastore, as
libcalico-go's k8s backend derives them (calico.md section 8). Pure logic on the JSON the
API serves.

* a Calico **Node** is the Kubernetes Node plus its ``projectcalico.org/*`` annotations
  (``K8sNodeToCalico``): BGP addresses, tunnel addresses, AS number, route reflector
  cluster ID; ``orchRefs`` naming the node; ``status.podCIDRs`` from ``spec.podCIDRs``;
  the Kubernetes labels as labels (remembered in ``projectcalico.org/kube-labels``). A
  write merges the Calico fields back into the annotations (``mergeCalicoNodeIntoK8sNode``).
* a **WorkloadEndpoint** is a scheduled, non-hostNetwork Pod (``podToDefaultWorkloadEndpoint``):
  IPs from ``status.podIPs`` / ``status.podIP`` / the CNI plugin's ``cni.projectcalico.org/podIPs``
  / ``podIP`` annotations (none once the pod finished), ``containerID`` from its annotation,
  the interface name from the veth naming rule, profiles, labels and named/host ports. The
  CNI plugin's write is a patch of those annotations (``calcCNIAnnotations``).
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from datastore import names
from datastore.conversion import pod_labels, pod_profiles
from datastore.resources import (
    EndpointPort,
    Metadata,
    Node,
    NodeAddress,
    NodeBGPSpec,
    NodeWireguardSpec,
    OrchRef,
    WorkloadEndpoint,
)

# libcalico-go/lib/backend/k8s/resources/node.go
ANN_IPV4_ADDRESS = "projectcalico.org/IPv4Address"
ANN_IPV4_IPIP_TUNNEL = "projectcalico.org/IPv4IPIPTunnelAddr"
ANN_IPV4_VXLAN_TUNNEL = "projectcalico.org/IPv4VXLANTunnelAddr"
ANN_VXLAN_MAC = "projectcalico.org/VXLANTunnelMACAddr"
ANN_IPV6_VXLAN_TUNNEL = "projectcalico.org/IPv6VXLANTunnelAddr"
ANN_VXLAN_MAC_V6 = "projectcalico.org/VXLANTunnelMACAddrV6"
ANN_IPV6_ADDRESS = "projectcalico.org/IPv6Address"
ANN_AS_NUMBER = "projectcalico.org/ASNumber"
ANN_RR_CLUSTER_ID = "projectcalico.org/RouteReflectorClusterID"
ANN_KUBE_LABELS = "projectcalico.org/kube-labels"
ANN_WG_IPV4 = "projectcalico.org/IPv4WireguardInterfaceAddr"
ANN_WG_IPV6 = "projectcalico.org/IPv6WireguardInterfaceAddr"
ANN_WG_KEY = "projectcalico.org/WireguardPublicKey"
ANN_WG_KEY_V6 = "projectcalico.org/WireguardPublicKeyV6"
# resources.go: Calico metadata of objects that are not custom resources
ANN_LABELS = "projectcalico.org/labels"
ANN_ANNOTATIONS = "projectcalico.org/annotations"
# conversion/constants.go
ANN_POD_IP = "cni.projectcalico.org/podIP"
ANN_POD_IPS = "cni.projectcalico.org/podIPs"
ANN_CONTAINER_ID = "cni.projectcalico.org/containerID"
ANN_AWS_POD_IPS = "vpc.amazonaws.com/pod-ips"


def _go_json(value: Any) -> str:
    """Go's json.Marshal of a map (sorted keys, no spaces)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _cidr_v4(value: str) -> bool:
    try:
        net = ipaddress.ip_interface(value)
    except ValueError:
        return False
    return net.version == 4 and "/" in value


def _cidr_v6(value: str) -> bool:
    try:
        net = ipaddress.ip_interface(value)
    except ValueError:
        return False
    return net.version == 6 and "/" in value


def _ipv4_net(value: str) -> bool:
    """``ValidateIPv4Network``: an IPv4 address, with or without a prefix."""
    try:
        return ipaddress.ip_interface(value).version == 4
    except ValueError:
        return False


def _ipv6_net(value: str) -> bool:
    try:
        return ipaddress.ip_interface(value).version == 6
    except ValueError:
        return False


def _mac(value: str) -> bool:
    parts = value.split(":")
    return len(parts) == 6 and all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts)


def _ann(ann: dict[str, str], key: str, valid: Any) -> str | None:
    """``getAnnotation``: the value if present and valid, else None."""
    value = ann.get(key) or ""
    return value if value and valid(value) else None


def _meta_from_annotations(md: Metadata, k8s: dict[str, Any]) -> None:
    """``SetCalicoMetadataFromK8sAnnotations``."""
    m = k8s.get("metadata") or {}
    md.resource_version = m.get("resourceVersion")
    md.creation_timestamp = m.get("creationTimestamp")
    md.uid = m.get("uid")
    ann = m.get("annotations") or {}
    for key, attr in ((ANN_LABELS, "labels"), (ANN_ANNOTATIONS, "annotations")):
        if key in ann:
            try:
                value = json.loads(ann[key])
            except ValueError:
                continue
            if isinstance(value, dict):
                setattr(md, attr, {str(k): str(v) for k, v in value.items()})


def k8s_node_to_calico(k8s: dict[str, Any]) -> Node:
    """The Calico Node of a Kubernetes Node."""
    m = k8s.get("metadata") or {}
    spec = k8s.get("spec") or {}
    ann = m.get("annotations") or {}
    node = Node(metadata=Metadata(name=m.get("name", "")))
    _meta_from_annotations(node.metadata, k8s)
    labels = dict(node.metadata.labels or {})
    k8s_labels = dict(m.get("labels") or {})
    labels.update(k8s_labels)
    node.metadata.labels = labels or None
    annotations = dict(node.metadata.annotations or {})
    annotations[ANN_KUBE_LABELS] = _go_json(k8s_labels)
    node.metadata.annotations = annotations
    bgp = NodeBGPSpec(ipv4_address=_ann(ann, ANN_IPV4_ADDRESS, _cidr_v4),
                      ipv6_address=_ann(ann, ANN_IPV6_ADDRESS, _cidr_v6),
                      route_reflector_cluster_id=_ann(ann, ANN_RR_CLUSTER_ID, _ipv4_net),
                      ipv4_ipip_tunnel_addr=_ann(ann, ANN_IPV4_IPIP_TUNNEL, _ipv4_net))
    asn = ann.get(ANN_AS_NUMBER)
    if asn:
        try:
            bgp.as_number = _as_number(asn)
        except ValueError:
            pass
    if bgp != NodeBGPSpec():
        node.spec.bgp = bgp
    wg = NodeWireguardSpec(interface_ipv4_address=_ann(ann, ANN_WG_IPV4, _ipv4_net),
                           interface_ipv6_address=_ann(ann, ANN_WG_IPV6, _ipv6_net))
    if wg != NodeWireguardSpec():
        node.spec.wireguard = wg
    node.spec.orch_refs = [OrchRef(node_name=m.get("name", ""), orchestrator="k8s")]
    node.spec.ipv4_vxlan_tunnel_addr = _ann(ann, ANN_IPV4_VXLAN_TUNNEL, _ipv4_net)
    node.spec.vxlan_tunnel_mac_addr = _ann(ann, ANN_VXLAN_MAC, _mac)
    node.spec.ipv6_vxlan_tunnel_addr = _ann(ann, ANN_IPV6_VXLAN_TUNNEL, _ipv6_net)
    node.spec.vxlan_tunnel_mac_addr_v6 = _ann(ann, ANN_VXLAN_MAC_V6, _mac)
    status: dict[str, Any] = {}
    if ann.get(ANN_WG_KEY):
        status["wireguardPublicKey"] = ann[ANN_WG_KEY]
    if ann.get(ANN_WG_KEY_V6):
        status["wireguardPublicKeyV6"] = ann[ANN_WG_KEY_V6]
    if spec.get("podCIDRs"):
        status["podCIDRs"] = list(spec["podCIDRs"])
    node.status = status or None
    # fillAllAddresses
    addrs = []
    if node.spec.bgp is not None:
        for a in (node.spec.bgp.ipv4_address, node.spec.bgp.ipv6_address):
            if a:
                addrs.append(NodeAddress(address=a, type="CalicoNodeIP"))
    for a in (k8s.get("status") or {}).get("addresses") or []:
        if a.get("type") in ("InternalIP", "ExternalIP"):
            addrs.append(NodeAddress(address=a.get("address", ""), type=a["type"]))
    node.spec.addresses = addrs
    return node


def _as_number(text: str) -> int:
    """``ASNumberFromString``: ``64512`` or dotted ``1.10``."""
    if "." in text:
        hi, lo = text.split(".", 1)
        value = (int(hi) << 16) + int(lo)
    else:
        value = int(text)
    if not 0 <= value < 2**32:
        raise ValueError(text)
    return value


def merge_node_into_k8s(node: Node, k8s: dict[str, Any]) -> dict[str, Any]:
    """The Kubernetes Node ``k8s`` with ``node``'s Calico fields written into its annotations
    (``mergeCalicoNodeIntoK8sNode``); ``k8s`` itself is not changed."""
    out = json.loads(json.dumps(k8s))
    m = out.setdefault("metadata", {})
    ann = dict(m.get("annotations") or {})
    # restoreCalicoLabels: labels that are the Kubernetes node's are not Calico's own
    labels = dict(node.metadata.labels or {})
    annotations = dict(node.metadata.annotations or {})
    raw = annotations.pop(ANN_KUBE_LABELS, "")
    if raw:
        try:
            for k in json.loads(raw):
                labels.pop(k, None)
        except ValueError:
            pass
    if labels:
        ann[ANN_LABELS] = _go_json(labels)
    else:
        ann.pop(ANN_LABELS, None)
    if annotations:
        ann[ANN_ANNOTATIONS] = _go_json(annotations)
    else:
        ann.pop(ANN_ANNOTATIONS, None)

    def put(key: str, value: Any) -> None:
        if value:
            ann[key] = str(value)
        else:
            ann.pop(key, None)

    s = node.spec
    put(ANN_IPV4_VXLAN_TUNNEL, s.ipv4_vxlan_tunnel_addr)
    put(ANN_VXLAN_MAC, s.vxlan_tunnel_mac_addr)
    put(ANN_IPV6_VXLAN_TUNNEL, s.ipv6_vxlan_tunnel_addr)
    put(ANN_VXLAN_MAC_V6, s.vxlan_tunnel_mac_addr_v6)
    bgp = s.bgp or NodeBGPSpec()
    put(ANN_IPV4_ADDRESS, bgp.ipv4_address)
    put(ANN_IPV4_IPIP_TUNNEL, bgp.ipv4_ipip_tunnel_addr)
    put(ANN_IPV6_ADDRESS, bgp.ipv6_address)
    put(ANN_AS_NUMBER, bgp.as_number if bgp.as_number is not None else None)
    put(ANN_RR_CLUSTER_ID, bgp.route_reflector_cluster_id)
    wg = s.wireguard or NodeWireguardSpec()
    put(ANN_WG_IPV4, wg.interface_ipv4_address)
    put(ANN_WG_IPV6, wg.interface_ipv6_address)
    st = node.status or {}
    put(ANN_WG_KEY, st.get("wireguardPublicKey"))
    put(ANN_WG_KEY_V6, st.get("wireguardPublicKeyV6"))
    m["annotations"] = ann
    return out


# ---------------------------------------------------------------------------
# pods


def is_workload(pod: dict[str, Any]) -> bool:
    """``IsValidCalicoWorkloadEndpoint``: scheduled and not host-networked."""
    spec = pod.get("spec") or {}
    return bool(spec.get("nodeName")) and not spec.get("hostNetwork")


def is_finished(pod: dict[str, Any]) -> bool:
    """``IsFinished``: Succeeded/Failed/Completed, or deleting after the CNI plugin blanked podIP."""
    m = pod.get("metadata") or {}
    ann = m.get("annotations") or {}
    if m.get("deletionTimestamp"):
        if ann.get(ANN_POD_IP, None) == "" and ANN_POD_IP in ann:
            return True
        if ANN_AWS_POD_IPS in ann and ann[ANN_AWS_POD_IPS] == "":
            return True
    return (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded", "Completed")


def pod_ips(pod: dict[str, Any]) -> list[str]:
    """``getPodIPs``: status.podIPs, status.podIP, then the CNI annotations; as CIDRs (/32)."""
    st = pod.get("status") or {}
    ann = (pod.get("metadata") or {}).get("annotations") or {}
    if st.get("podIPs"):
        raw = [p.get("ip", "") for p in st["podIPs"]]
    elif st.get("podIP"):
        raw = [st["podIP"]]
    elif ann.get(ANN_POD_IPS):
        raw = ann[ANN_POD_IPS].split(",")
    elif ann.get(ANN_POD_IP):
        raw = [ann[ANN_POD_IP]]
    elif ann.get(ANN_AWS_POD_IPS):
        raw = ann[ANN_AWS_POD_IPS].split(",")
    else:
        return []
    out = []
    for ip in raw:
        ip = ip.strip()
        if not ip:
            continue
        try:
            out.append(str(ipaddress.ip_network(ip, strict=False)))
        except ValueError:
            raise ValueError(f"pod IP {ip!r} is not an IP address or CIDR") from None
    return out


def pod_to_workload_endpoint(pod: dict[str, Any], interface_prefix: str = names.DEFAULT_PREFIX) -> WorkloadEndpoint:
    """The WorkloadEndpoint of a pod (call only for :func:`is_workload` pods)."""
    m = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    ns, name = m.get("namespace") or "default", m.get("name", "")
    node = spec.get("nodeName", "")
    sa = spec.get("serviceAccountName") or ""
    ann = m.get("annotations") or {}
    ips = [] if is_finished(pod) else pod_ips(pod)
    ports = []
    for c in spec.get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("containerPort") and (p.get("hostPort") or p.get("name")):
                proto = (p.get("protocol") or "TCP").upper()
                if proto not in ("TCP", "UDP", "SCTP"):
                    continue
                ports.append(EndpointPort(name=p.get("name", ""), protocol=proto, port=int(p["containerPort"]),
                                          host_port=int(p.get("hostPort") or 0), host_ip=p.get("hostIP") or None))
    wep = WorkloadEndpoint(metadata=Metadata(
        name=names.workload_endpoint_name(node, "k8s", name, "eth0"), namespace=ns,
        uid=m.get("uid"), creation_timestamp=m.get("creationTimestamp"),
        resource_version=m.get("resourceVersion"), labels=pod_labels(m.get("labels"), ns, sa)))
    s = wep.spec
    s.orchestrator, s.node, s.pod, s.endpoint = "k8s", node, name, "eth0"
    s.container_id = ann.get(ANN_CONTAINER_ID, "")
    s.interface_name = names.veth_name(ns, name, prefix=interface_prefix)
    s.profiles = pod_profiles(ns, sa)
    s.ip_networks = ips
    s.ports = ports
    s.service_account_name = sa
    allowed = ann.get("cni.projectcalico.org/allowedSourcePrefixes")
    if allowed:
        try:
            s.allow_spoofed_source_prefixes = [str(ipaddress.ip_network(p, strict=False))
                                               for p in json.loads(allowed)]
        except (ValueError, TypeError):
            pass
    return wep


def cni_annotations(wep: WorkloadEndpoint) -> dict[str, str]:
    """``calcCNIAnnotations``: podIP (first), podIPs (comma-joined), containerID."""
    ips = wep.spec.ip_networks
    if not ips:
        return {}
    out = {ANN_POD_IP: ips[0], ANN_POD_IPS: ",".join(ips)}
    if wep.spec.container_id:
        out[ANN_CONTAINER_ID] = wep.spec.container_id
    return out


def annotation_patch(annotations: dict[str, str], resource_version: str | None = None,
                     uid: str | None = None) -> dict[str, Any]:
    """``calculateAnnotationPatch``: the strategic merge patch of a pod's status that sets
    ``annotations`` with the resourceVersion and UID (when known) as preconditions."""
    md: dict[str, Any] = {}
    if annotations:
        md["annotations"] = annotations
    if resource_version:
        md["resourceVersion"] = resource_version
    if uid:
        md["uid"] = uid
    return {"metadata": md}


def parse_wep_name(name: str) -> tuple[str, str, str, str] | None:
    """``<node>-k8s-<pod>-<endpoint>`` (``-`` doubled inside segments) -> (node, orch, pod,
    endpoint), or None if ``name`` is not of that form."""
    parts: list[str] = []
    cur = ""
    i = 0
    while i < len(name):
        if name[i] == "-":
            if i + 1 < len(name) and name[i + 1] == "-":
                cur += "-"
                i += 2
                continue
            parts.append(cur)
            cur = ""
        else:
            cur += name[i]
        i += 1
    parts.append(cur)
    if len(parts) != 4 or not all(parts):
        return None
    return parts[0], parts[1], parts[2], parts[3]
