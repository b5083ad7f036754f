"""Calico's network configuration (the JSON on stdin), parsed and validated (pure logic).

Field names are Calico's (``cni-plugin/pkg/types/types.go``). Only what calicolab
implements is accepted with a value; a known but unsupported value (e.g.
``etcd_scheme: https``) is an error naming the field, not a silent default.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from cni.spec import E_INVALID_CONFIG, CNIError
from datastore.inventory import Support, findings, missing, works, works_for

DEFAULT_NODENAME_FILE = "/var/lib/calico/nodename"
DEFAULT_MTU_FILE = "/var/lib/calico/mtu"
#: with no netconf mtu and no MTU file Calico leaves the veth at the kernel's default
DEFAULT_MTU = 1500
DEFAULT_IPAM_LOCK = "/var/run/calico/ipam.lock"
DEFAULT_ETCD = "http://127.0.0.1:2379"
LOG_LEVELS = ("debug", "info", "warning", "warn", "error", "fatal", "panic", "none", "")

_T_SPEC = "tests/unit/test_cni_spec.py::"
_T_PLUGIN = "tests/netns/test_cni_plugin.py::"
_T_EFFECTS = "tests/unit/test_settings_effects.py::"
_NO_V6 = "IPv6 is not implemented: calicolab is IPv4 only"
_NO_TLS = "the plugin reaches etcd over plain http at etcd_endpoints"
_NO_APISERVER = "the plugin reaches the Kubernetes API with kubernetes.kubeconfig only"
_WINDOWS = "Windows only"


def _falsy(value: Any) -> bool:
    return value in (False, 0, "", "false", "False", None)


#: Every key of Calico's netconf (``cni-plugin/pkg/types/types.go`` at v3.28.1, nested
#: keys dotted) and the CNI spec keys the plugin reads, with what calicolab does with
#: each. :func:`parse_netconf` refuses a key set to a value calicolab does not honour,
#: naming it; keys Calico does not know are ignored, as Calico ignores them.
NETCONF_KEYS: dict[str, Support] = {
    "cniVersion": works(_T_SPEC + "test_supported_versions_accepted", _T_SPEC + "test_calico_result_per_version",
                        _T_SPEC + "test_missing_cni_version_is_0_2_0"),
    "name": works(_T_SPEC + "test_netconf_parses_calico_fields", _T_PLUGIN + "test_add_check_del_every_version"),
    "type": works(_T_SPEC + "test_netconf_errors_name_the_field"),
    "mode": missing(_WINDOWS + " (vxlan or l2bridge networking)", sample="vxlan"),
    "vxlan_mac_prefix": missing(_WINDOWS, sample="0E-2A"),
    "vxlan_vni": missing(_WINDOWS, ok=_falsy, ok_doc="0", sample=4096),
    "ipam.type": works(_T_PLUGIN + "test_other_ipam_types_are_delegated_through_cni_path"),
    "ipam.subnet": missing("usePodCidr (host-local IPAM on the node's podCIDR) is not implemented",
                           ok=lambda v: not str(v).startswith("usePodCidr"), ok_doc="any but usePodCidr",
                           sample="usePodCidr"),
    "ipam.assign_ipv4": works_for(lambda v: not _falsy(v), _T_PLUGIN + "test_add_check_del_every_version",
                                  ok_doc="true", sample="false",
                                  note="IPv6 is not implemented, so IPv4 must be assigned"),
    "ipam.assign_ipv6": missing(_NO_V6, ok=_falsy, ok_doc="false", sample="true"),
    "ipam.ipv4_pools": works("tests/unit/test_cni_k8s.py::test_pool_precedence_pod_over_namespace_over_netconf"),
    "ipam.ipv6_pools": missing(_NO_V6, sample=["fd00:10::/64"]),
    "args.org.apache.mesos": missing("Mesos network info is not read", sample={"network_info": {"name": "x"}}),
    "mtu": works(_T_SPEC + "test_nodename_and_mtu_resolution"),
    "num_queues": works(_T_SPEC + "test_num_queues_default_and_value",
                        _T_PLUGIN + "test_veth_ends_have_the_netconf_queues"),
    "nodename": works(_T_SPEC + "test_nodename_and_mtu_resolution"),
    "nodename_file": works(_T_SPEC + "test_nodename_and_mtu_resolution",
                           _T_SPEC + "test_calico_node_started_is_calicos_nodename_file_guard"),
    "nodename_file_optional": works(_T_SPEC + "test_calico_node_started_is_calicos_nodename_file_guard"),
    "ipam_lock_file": works(_T_EFFECTS + "test_ipam_lock_file_is_the_one_locked"),
    "datastore_type": works_for(("etcdv3", "kubernetes"), _T_SPEC + "test_netconf_kubernetes_datastore",
                                "tests/netns/test_cni_kdd.py::test_add_del_write_the_pod_annotations",
                                sample="consul", note="Calico's datastores are etcdv3 and kubernetes"),
    "etcd_endpoints": works(_T_SPEC + "test_netconf_env_fallback_for_endpoints", _T_SPEC + "test_netconf_parses_calico_fields"),
    "etcd_discovery_srv": missing(_NO_TLS, sample="example.com"),
    "etcd_scheme": missing(_NO_TLS, ok=("http",), sample="https"),
    "etcd_key_file": missing(_NO_TLS, sample="/etc/calico/key.pem"),
    "etcd_cert_file": missing(_NO_TLS, sample="/etc/calico/cert.pem"),
    "etcd_ca_cert_file": missing(_NO_TLS, sample="/etc/calico/ca.pem"),
    "etcd_authority": missing(_NO_TLS + " (etcd_authority is deprecated)", sample="127.0.0.1:2379"),
    "log_level": works(_T_EFFECTS + "test_cni_log_file_and_level"),
    "log_file_path": works(_T_EFFECTS + "test_cni_log_file_and_level"),
    "log_file_max_size": missing("the log file is not rotated", sample=100),
    "log_file_max_age": missing("the log file is not rotated", sample=30),
    "log_file_max_count": missing("the log file is not rotated", sample=10),
    "policy.type": works_for(("k8s",), _T_PLUGIN + "test_pod_labels_ports_and_annotations_from_the_kubernetes_store",
                             sample="none", note="the plugin always takes labels and profiles from the pod (k8s)"),
    "policy.k8s_api_root": missing(_NO_APISERVER, sample="https://10.96.0.1:443"),
    "policy.k8s_auth_token": missing(_NO_APISERVER, sample="token"),
    "policy.k8s_client_certificate": missing(_NO_APISERVER, sample="/etc/cert.pem"),
    "policy.k8s_client_key": missing(_NO_APISERVER, sample="/etc/key.pem"),
    "policy.k8s_certificate_authority": missing(_NO_APISERVER, sample="/etc/ca.pem"),
    "kubernetes.k8s_api_root": missing(_NO_APISERVER, sample="https://10.96.0.1:443"),
    "kubernetes.kubeconfig": works(_T_SPEC + "test_netconf_kubernetes_datastore",
                                   "tests/netns/test_cni_kdd.py::test_add_del_write_the_pod_annotations"),
    "kubernetes.node_name": missing("the node name comes from nodename / nodename_file", sample="k8s-w0"),
    "feature_control.ip_addrs_no_ipam": missing("the ipAddrsNoIpam annotation is not implemented", ok=_falsy,
                                                ok_doc="false", sample=True),
    "feature_control.floating_ips": missing("floating IPs are not implemented", ok=_falsy, ok_doc="false",
                                            sample=True),
    "container_settings.allow_ip_forwarding": works(_T_PLUGIN + "test_container_settings_allow_ip_forwarding"),
    "include_default_routes": missing("the result carries no routes", ok=_falsy, ok_doc="false", sample=True),
    "dataplane_options": missing("there is one (Linux) dataplane", sample={"type": "x"}),
    "windows_pod_deletion_timestamp_timeout": missing(_WINDOWS, ok=_falsy, ok_doc="0", sample=60),
    "windows_use_single_network": missing(_WINDOWS, ok=_falsy, ok_doc="false", sample=True),
    "windows_disable_default_deny_all_policy": missing(_WINDOWS, ok=_falsy, ok_doc="false", sample=True),
    "windows_loopback_DSR": missing(_WINDOWS, ok=_falsy, ok_doc="false", sample=True),
    "readiness_gates": missing("ADD does not wait for readiness gates", sample=["http://127.0.0.1:9099/readiness"]),
    "policy_setup_timeout_seconds": missing("ADD does not wait for Felix to program policy", ok=_falsy,
                                            ok_doc="0", sample=5),
    "endpoint_status_dir": missing("read only with policy_setup_timeout_seconds > 0",
                                   ok=lambda v: True, ok_doc="any"),
    "hostname": missing("deprecated: use nodename", sample="k8s-w0"),
    "prevResult": works("tests/netns/test_cni_chain.py::test_chain_result_is_accepted_as_prev_result_in_every_chained_version",
                        note="CNI spec"),
    "cni.dev/valid-attachments": works(_T_PLUGIN + "test_status_version_and_gc", note="CNI spec 1.1 GC"),
}


def refuse_unimplemented(conf: dict[str, Any]) -> None:
    """Raise the CNI error naming the first key ``conf`` sets to a value calicolab cannot honour."""
    bad = findings("netconf", conf, NETCONF_KEYS, roots=tuple(conf))
    if bad:
        f = bad[0]
        why = f.support.note or "not implemented"
        raise _bad(f"{f.path!r} = {f.value!r} is not supported by calicolab: {why} "
                   f"(docs/inventory.md)")


@dataclass
class IPAMConf:
    """The ``ipam`` section."""

    type: str = "calico-ipam"
    ipv4_pools: list[str] = field(default_factory=list)
    assign_ipv4: bool = True
    assign_ipv6: bool = False
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass
class NetConf:
    """A validated Calico netconf."""

    cni_version: str
    name: str
    type: str
    datastore_type: str = "etcdv3"
    etcd_endpoints: list[str] = field(default_factory=list)
    #: ``kubernetes.kubeconfig``: how the plugin reaches the Kubernetes API (pods; the datastore
    #: itself with ``datastore_type: kubernetes``)
    kubeconfig: str = ""
    nodename: str = ""
    nodename_file: str = DEFAULT_NODENAME_FILE
    nodename_file_optional: bool = False
    mtu: int = 0
    num_queues: int = 1  # each veth end's tx and rx queues (Calico: 0 or less means 1)
    ipam: IPAMConf = field(default_factory=IPAMConf)
    log_level: str = "info"
    log_file_path: str = ""
    policy_type: str = ""
    allow_ip_forwarding: bool = False
    ipam_lock_file: str = DEFAULT_IPAM_LOCK
    raw: dict[str, Any] = field(default_factory=dict)
    prev_result: dict[str, Any] | None = None
    valid_attachments: list[dict[str, str]] | None = None


def _bad(msg: str) -> CNIError:
    return CNIError(E_INVALID_CONFIG, f"invalid network configuration: {msg}")


def _str(conf: dict[str, Any], key: str, default: str = "") -> str:
    value = conf.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _bad(f"{key!r} must be a string, got {value!r}")
    return value


def _bool(conf: dict[str, Any], key: str, default: bool) -> bool:
    value = conf.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _bad(f"{key!r} must be a boolean, got {value!r}")


def parse_ipam(raw: Any) -> IPAMConf:
    """Validate the ``ipam`` section."""
    if raw is None:
        raise _bad("'ipam' section is missing (want {\"type\": \"calico-ipam\"})")
    if not isinstance(raw, dict):
        raise _bad(f"'ipam' must be an object, got {raw!r}")
    itype = _str(raw, "type")
    if not itype:
        raise _bad("'ipam.type' is missing")
    pools = raw.get("ipv4_pools", []) or []
    if not isinstance(pools, list) or not all(isinstance(p, str) and p for p in pools):
        raise _bad(f"'ipam.ipv4_pools' must be a list of pool names or CIDRs, got {pools!r}")
    for p in pools:
        if "/" in p:
            try:
                ipaddress.IPv4Network(p, strict=False)
            except ValueError:
                raise _bad(f"'ipam.ipv4_pools' entry {p!r} is not an IPv4 CIDR") from None
    assign_v6 = _bool(raw, "assign_ipv6", False)
    if assign_v6:
        raise _bad("'ipam.assign_ipv6' is not supported by calicolab (IPv4 only)")
    assign_v4 = _bool(raw, "assign_ipv4", True)
    if itype == "calico-ipam" and not assign_v4:
        raise _bad("'ipam.assign_ipv4' is false and IPv6 is not supported: nothing to assign")
    return IPAMConf(type=itype, ipv4_pools=list(pools), assign_ipv4=assign_v4, assign_ipv6=False, raw=raw)


def parse_netconf(conf: dict[str, Any], *, expect_type: str | None = "calico", env: dict[str, str] | None = None) -> NetConf:
    """Validate a netconf dict (already JSON-decoded, cniVersion already checked).

    ``expect_type`` is the plugin's own type ("calico"); the IPAM plugin passes None
    because it receives the main plugin's netconf. ``env`` supplies the fallback for
    ``etcd_endpoints`` (``ETCD_ENDPOINTS``).
    """
    env = env or {}
    refuse_unimplemented(conf)
    name = _str(conf, "name")
    if not name:
        raise _bad("'name' is missing (the network name, e.g. \"k8s-pod-network\")")
    ptype = _str(conf, "type")
    if expect_type is not None and ptype != expect_type:
        raise _bad(f"'type' is {ptype!r}, this plugin is {expect_type!r}")
    dstype = _str(conf, "datastore_type", "etcdv3") or "etcdv3"
    if dstype not in ("etcdv3", "kubernetes"):
        raise _bad(f"'datastore_type' {dstype!r} is not a Calico datastore (etcdv3 or kubernetes)")
    kube = conf.get("kubernetes") or {}
    if not isinstance(kube, dict):
        raise _bad(f"'kubernetes' must be an object, got {kube!r}")
    kubeconfig = _str(kube, "kubeconfig")
    if dstype == "kubernetes" and not kubeconfig:
        raise _bad("'datastore_type' is kubernetes but 'kubernetes.kubeconfig' is not set (the kubeconfig "
                   "the plugin reaches the API server with, e.g. /etc/cni/net.d/calico-kubeconfig)")
    raw_eps = conf.get("etcd_endpoints")
    if raw_eps is None or raw_eps == "":
        raw_eps = env.get("ETCD_ENDPOINTS", "") or DEFAULT_ETCD
    if isinstance(raw_eps, list):
        endpoints = [str(e).strip() for e in raw_eps if str(e).strip()]
    elif isinstance(raw_eps, str):
        endpoints = [e.strip() for e in raw_eps.split(",") if e.strip()]
    else:
        raise _bad(f"'etcd_endpoints' must be a comma separated string, got {raw_eps!r}")
    for ep in endpoints:
        if not (ep.startswith("http://") or ep.startswith("https://")):
            raise _bad(f"'etcd_endpoints' entry {ep!r} must start with http:// or https://")
    mtu = conf.get("mtu", 0)
    if isinstance(mtu, str) and mtu.strip().isdigit():
        mtu = int(mtu)
    if mtu is None:
        mtu = 0
    if isinstance(mtu, bool) or not isinstance(mtu, int) or mtu < 0 or (mtu and not 68 <= mtu <= 65535):
        raise _bad(f"'mtu' must be 0 (auto) or between 68 and 65535, got {conf.get('mtu')!r}")
    num_queues = conf.get("num_queues", 0)
    if num_queues is None:
        num_queues = 0
    if isinstance(num_queues, bool) or not isinstance(num_queues, int):
        raise _bad(f"'num_queues' must be an integer, got {num_queues!r}")
    log_level = _str(conf, "log_level", "info").lower()
    if log_level not in LOG_LEVELS:
        raise _bad(f"'log_level' {log_level!r} is not one of {', '.join(x for x in LOG_LEVELS if x)}")
    policy = conf.get("policy") or {}
    if not isinstance(policy, dict):
        raise _bad(f"'policy' must be an object, got {policy!r}")
    container = conf.get("container_settings") or {}
    if not isinstance(container, dict):
        raise _bad(f"'container_settings' must be an object, got {container!r}")
    prev = conf.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise _bad("'prevResult' must be an object")
    attachments = conf.get("cni.dev/valid-attachments")
    if attachments is not None:
        if not isinstance(attachments, list) or not all(
            isinstance(a, dict) and isinstance(a.get("containerID"), str) for a in attachments
        ):
            raise _bad("'cni.dev/valid-attachments' must be a list of {containerID, ifname} objects")
    return NetConf(
        cni_version=conf.get("cniVersion", ""),
        name=name,
        type=ptype,
        datastore_type=dstype,
        etcd_endpoints=endpoints,
        kubeconfig=kubeconfig,
        nodename=_str(conf, "nodename"),
        nodename_file=_str(conf, "nodename_file", DEFAULT_NODENAME_FILE) or DEFAULT_NODENAME_FILE,
        nodename_file_optional=_bool(conf, "nodename_file_optional", False),
        mtu=mtu,
        num_queues=num_queues if num_queues > 0 else 1,
        ipam=parse_ipam(conf.get("ipam")),
        log_level=log_level,
        log_file_path=_str(conf, "log_file_path"),
        policy_type=_str(policy, "type"),
        allow_ip_forwarding=_bool(container, "allow_ip_forwarding", False),
        ipam_lock_file=_str(conf, "ipam_lock_file", DEFAULT_IPAM_LOCK) or DEFAULT_IPAM_LOCK,
        raw=conf,
        prev_result=prev,
        valid_attachments=attachments,
    )


def determine_nodename(nc: NetConf, hostname: str) -> str:
    """Calico's order: netconf ``nodename``, then ``nodename_file``, then (if optional) the hostname.

    Without any of them the error tells the operator what to check, as Calico's does.
    """
    if nc.nodename:
        return nc.nodename
    try:
        with open(nc.nodename_file) as f:
            name = f.read().strip()
        if name:
            return name
    except OSError:
        pass
    if nc.nodename_file_optional and hostname:
        return hostname
    raise CNIError(
        E_INVALID_CONFIG,
        f"no node name: netconf has no 'nodename' and {nc.nodename_file} is missing or empty; "
        "check that the calico/node container is running and has mounted /var/lib/calico/",
    )


def determine_mtu(nc: NetConf, mtu_file: str = DEFAULT_MTU_FILE) -> int:
    """Netconf ``mtu`` if set (0 = auto, as calico.yaml's ``veth_mtu: "0"``), else the MTU
    Felix wrote to /var/lib/calico/mtu, else 1500, the MTU the kernel gives a veth that
    Calico creates without one."""
    if nc.mtu:
        return nc.mtu
    try:
        with open(mtu_file) as f:
            value = int(f.read().strip())
        if 68 <= value <= 65535:
            return value
    except (OSError, ValueError):
        pass
    return DEFAULT_MTU
