"""calico-node's environment: every variable Calico documents for calico/node, and what
calicolab does with each (the inventory's registry for environment variables).

Sources: Calico v3.28.1's "Configuring calico/node" page (the ``CALICO_*``, ``IP*``,
``NODENAME``, datastore, logging and CNI variables), Felix's configuration reference
(``FELIX_<PARAM>`` for every FelixConfiguration field, Felix's parameter name upper-cased,
plus Felix's environment-only parameters), the install-cni variables calico.yaml sets,
and calicolab's own additions. The ``FELIX_*`` entries of FelixConfiguration fields take
their support from the field's entry in ``FelixConfiguration.INVENTORY`` unless Felix here
reads the variable itself (``FELIX_READ``).

Every variable calico-node's code reads must be in :data:`REGISTRY` (a unit test scans the
code for reads); :func:`get` is the way to read one whose name is not a literal.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from datastore import calico_api
from datastore.inventory import Finding, Support, json_fields, missing, works, works_for
from datastore.resources import FelixConfiguration, FelixConfigurationSpec

_T_STARTUP_UNIT = "tests/unit/test_felix_startup.py::"
_T_EFFECTS = "tests/unit/test_settings_effects.py::"
_T_EFFECTS_DS = "tests/etcd/test_settings_effects.py::"
_T_TWONODE = "tests/netns/test_agent_twonode.py::test_two_node_agent_end_to_end"
_T_VXLAN_NETNS = "tests/netns/test_agent_vxlan.py::test_vxlan_mode_without_bgp_then_crosssubnet_then_off"
_T_ENCAP = "tests/unit/test_felix_encap.py::"
_NO_V6 = "IPv6 is not implemented: calicolab is IPv4 only"
_T_KDD_UNIT = "tests/unit/test_kdd_logic.py::"
_T_UPSTREAM = "tests/unit/test_upstream_install.py::"
_T_KDD_AGENT = "tests/netns/test_agent_kdd.py::test_calico_node_in_the_kubernetes_datastore"
_NO_TLS = "calico-node reaches etcd over plain http at ETCD_ENDPOINTS"
_NO_TYPHA_TLS = "calico-node talks to Typha without TLS"
_FIXED_LOG = "calico-node logs to stderr at CALICO_LOG_LEVEL"


@dataclass(frozen=True)
class EnvVar:
    """One environment variable and what calicolab does with it."""

    name: str
    group: str  # the doc's section
    support: Support
    #: turns the text into the value ``support`` judges (e.g. "true" -> True)
    parse: Callable[[str], Any] = str
    #: the FelixConfiguration field this variable overrides (FELIX_*), if any
    felix_field: str = ""


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes", "on", "enabled"):
        return True
    if low in ("false", "0", "no", "off", "disabled"):
        return False
    raise ValueError(f"{text!r} is not a boolean")


def _seconds(text: str) -> str:
    """Felix reads its duration variables as seconds: "90" -> "90s" (FelixConfiguration's form)."""
    value = float(text)
    return f"{value:g}s"


def _ci(*values: str) -> Callable[[str], bool]:
    wanted = {v.lower() for v in values}
    return lambda v: v.strip().lower() in wanted


# -- calico-node's own variables (configure-calico-node.mdx) ----------------------------

_NODE: dict[str, tuple[str, Support]] = {
    # default IP pool(s)
    "CALICO_IPV4POOL_CIDR": ("default pool", works(_T_STARTUP_UNIT + "test_pool_from_env")),
    "CALICO_IPV4POOL_BLOCK_SIZE": ("default pool", works(_T_STARTUP_UNIT + "test_pool_from_env")),
    "CALICO_IPV4POOL_IPIP": ("default pool", works(_T_STARTUP_UNIT + "test_pool_from_env")),
    "CALICO_IPV4POOL_VXLAN": ("default pool", works(_T_STARTUP_UNIT + "test_pool_from_env", _T_VXLAN_NETNS)),
    "CALICO_IPV4POOL_NAT_OUTGOING": ("default pool", works(_T_STARTUP_UNIT + "test_pool_from_env")),
    "CALICO_IPV4POOL_NODE_SELECTOR": ("default pool", works(_T_EFFECTS + "test_default_pool_env")),
    "CALICO_IPV4POOL_DISABLE_BGP_EXPORT": ("default pool", works(_T_EFFECTS + "test_default_pool_env")),
    "CALICO_IPV6POOL_CIDR": ("default pool", missing(_NO_V6)),
    "CALICO_IPV6POOL_BLOCK_SIZE": ("default pool", missing(_NO_V6)),
    "CALICO_IPV6POOL_VXLAN": ("default pool", missing(_NO_V6)),
    "CALICO_IPV6POOL_NAT_OUTGOING": ("default pool", missing(_NO_V6)),
    "CALICO_IPV6POOL_NODE_SELECTOR": ("default pool", missing(_NO_V6)),
    "CALICO_IPV6POOL_DISABLE_BGP_EXPORT": ("default pool", missing(_NO_V6)),
    "NO_DEFAULT_POOLS": ("default pool", works(_T_EFFECTS_DS + "test_no_default_pools")),
    # BGP networking
    "NODENAME": ("node", works(_T_EFFECTS + "test_node_name_order")),
    "IP": ("node", works(_T_STARTUP_UNIT + "test_explicit_ip_and_none")),
    "IP6": ("node", missing(_NO_V6, ok=_ci("", "none"), ok_doc="none")),
    "IP_AUTODETECTION_METHOD": ("node", works_for(
        lambda v: not v.strip().startswith("kubernetes-internal-ip"),
        _T_STARTUP_UNIT + "test_interface_skip_interface_and_cidr_methods",
        _T_STARTUP_UNIT + "test_first_found_skips_calicos_list_and_link_local",
        ok_doc="first-found, can-reach=, interface=, skip-interface=, cidr=", sample="kubernetes-internal-ip",
        note="kubernetes-internal-ip is refused at start-up (no Kubernetes API client in calico-node)")),
    "IP6_AUTODETECTION_METHOD": ("node", missing(_NO_V6)),
    "AS": ("node", missing("set spec.bgp.asNumber on the Node (calicoctl) instead")),
    "CALICO_ROUTER_ID": ("node", missing("the BGP router id is always the node's IPv4 address")),
    "CALICO_K8S_NODE_REF": ("node", missing("calico-node writes no orchRefs")),
    # datastore
    "DATASTORE_TYPE": ("datastore", works_for(
        _ci("", "etcdv3", "kubernetes"), _T_KDD_UNIT + "test_datastore_type_resolution", _T_KDD_AGENT,
        "tests/etcd/test_datastore_client.py::test_bad_endpoint_and_datastore_type_are_explained",
        ok_doc="etcdv3, kubernetes", sample="consul", note="Calico's datastores are etcdv3 and kubernetes")),
    "KUBECONFIG": ("datastore", works(_T_KDD_UNIT + "test_kube_config_from_env", _T_KDD_AGENT)),
    "K8S_API_ENDPOINT": ("datastore", works(_T_KDD_UNIT + "test_kube_config_from_env")),
    "K8S_API_TOKEN": ("datastore", works(_T_KDD_UNIT + "test_kube_config_from_env")),
    "K8S_INSECURE_SKIP_TLS_VERIFY": ("datastore", works(_T_KDD_UNIT + "test_kube_config_from_env")),
    "K8S_CERT_FILE": ("datastore", works(_T_KDD_UNIT + "test_kube_config_from_env")),
    "K8S_KEY_FILE": ("datastore", works(_T_KDD_UNIT + "test_kube_config_from_env")),
    "K8S_CA_FILE": ("datastore", works(_T_KDD_UNIT + "test_kube_config_from_env")),
    "ETCD_ENDPOINTS": ("datastore", works(_T_TWONODE)),
    "ETCD_DISCOVERY_SRV": ("datastore", missing(_NO_TLS)),
    "ETCD_KEY_FILE": ("datastore", missing(_NO_TLS)),
    "ETCD_CERT_FILE": ("datastore", missing(_NO_TLS)),
    "ETCD_CA_CERT_FILE": ("datastore", missing(_NO_TLS)),
    # logging
    "CALICO_DISABLE_FILE_LOGGING": ("logging", missing("calico-node never logs to files", ok=_ci("true"),
                                                       ok_doc="true")),
    "CALICO_STARTUP_LOGLEVEL": ("logging", missing(_FIXED_LOG)),
    # CNI plugin
    "USE_POD_CIDR": ("CNI", missing("host-local IPAM is not supported: pods get addresses from Calico IPAM",
                                    ok=_ci("false"), ok_doc="false")),
    "CALICO_MANAGE_CNI": ("CNI", missing("there is no CNI kubeconfig to keep up to date (etcd datastore)")),
    # other
    "DISABLE_NODE_IP_CHECK": ("other", missing("calico-node never checks for duplicate node IPs",
                                               ok=_ci("true"), ok_doc="true")),
    "WAIT_FOR_DATASTORE": ("other", missing("calico-node always waits for etcd, retrying", ok=_ci("true"),
                                            ok_doc="true")),
    "CALICO_NETWORKING_BACKEND": ("other", works(
        _T_TWONODE, "tests/lab/test_walkthrough.py::test_cross_node_flow_is_ipip", _T_VXLAN_NETNS,
        "tests/lab/test_modes_vxlan.py::test_vxlan_crosssubnet_without_bgp_four_flows",
        note="bird runs the BGP speaker; vxlan and none run none (Felix routes VXLAN pools itself)")),
    "CLUSTER_TYPE": ("other", works(_T_EFFECTS_DS + "test_cluster_information_written_at_start_up")),
    "HOSTNAME": ("node", works(_T_EFFECTS + "test_node_name_order")),
}

# -- Felix's environment-only parameters (felix/config/config_params.go, "local") -------

_FELIX_LOCAL: dict[str, Support] = {
    "FELIX_DATASTORETYPE": missing("Felix runs inside calico-node with its datastore (DATASTORE_TYPE)",
                                   ok=_ci("etcdv3", "kubernetes"), ok_doc="etcdv3, kubernetes"),
    "FELIX_FELIXHOSTNAME": missing("Felix's host name is calico-node's NODENAME"),
    "FELIX_ETCDADDR": missing(_NO_TLS),
    "FELIX_ETCDSCHEME": missing(_NO_TLS, ok=_ci("http"), ok_doc="http"),
    "FELIX_ETCDKEYFILE": missing(_NO_TLS),
    "FELIX_ETCDCERTFILE": missing(_NO_TLS),
    "FELIX_ETCDCAFILE": missing(_NO_TLS),
    "FELIX_ETCDENDPOINTS": missing(_NO_TLS),
    "FELIX_TYPHAADDR": works(_T_EFFECTS + "test_typha_address_from_env"),
    "FELIX_TYPHAK8SSERVICENAME": works(
        "tests/etcd/test_typha_fanout.py::test_client_watch_goes_through_typha_found_by_service"),
    "FELIX_TYPHAK8SNAMESPACE": works(
        "tests/etcd/test_typha_fanout.py::test_client_watch_goes_through_typha_found_by_service"),
    "FELIX_TYPHAREADTIMEOUT": missing("the Typha client's read timeout is fixed (30 s)"),
    "FELIX_TYPHAWRITETIMEOUT": missing("the Typha client's write timeout is fixed"),
    "FELIX_TYPHAKEYFILE": missing(_NO_TYPHA_TLS),
    "FELIX_TYPHACERTFILE": missing(_NO_TYPHA_TLS),
    "FELIX_TYPHACAFILE": missing(_NO_TYPHA_TLS),
    "FELIX_TYPHACN": missing(_NO_TYPHA_TLS),
    "FELIX_TYPHAURISAN": missing(_NO_TYPHA_TLS),
    "FELIX_DEBUGBPFCGROUPV2": missing("the eBPF dataplane is not built"),
    "FELIX_DEBUGBPFMAPREPINENABLED": missing("the eBPF dataplane is not built"),
    "FELIX_DEBUGCPUPROFILEPATH": missing("Felix debug aids are not implemented"),
    "FELIX_DEBUGPANICAFTER": missing("Felix debug aids are not implemented"),
    "FELIX_DEBUGSIMULATEDATARACE": missing("Felix debug aids are not implemented"),
}

#: FelixConfiguration fields whose Felix parameter is not the field's name upper-cased
#: (``confignamev1`` tags in felixconfig.go).
FELIX_PARAM_NAMES: dict[str, str] = {
    "iptablesPostWriteCheckInterval": "IPTABLESPOSTWRITECHECKINTERVALSECS",
    "iptablesLockTimeout": "IPTABLESLOCKTIMEOUTSECS",
    "iptablesLockProbeInterval": "IPTABLESLOCKPROBEINTERVALMILLIS",
    "netlinkTimeout": "NETLINKTIMEOUTSECS",
    "ipipEnabled": "IPINIPENABLED",
    "ipipMTU": "IPINIPMTU",
    "reportingInterval": "REPORTINGINTERVALSECS",
    "reportingTTL": "REPORTINGTTLSECS",
    "endpointReportingDelay": "ENDPOINTREPORTINGDELAYSECS",
    "usageReportingInitialDelay": "USAGEREPORTINGINITIALDELAYSECS",
    "usageReportingInterval": "USAGEREPORTINGINTERVALSECS",
    "externalNodesList": "EXTERNALNODESCIDRLIST",
    "wireguardKeepAlive": "WIREGUARDPERSISTENTKEEPALIVE",
}

#: FELIX_* variables calico-node's Felix reads itself (agent.felix.convert, agent.main),
#: with the tests that show their effect.
FELIX_READ: dict[str, Support] = {
    "FELIX_IPINIPENABLED": works(_T_EFFECTS + "test_felix_environment_overrides_felix_configuration"),
    "FELIX_IPINIPMTU": works(_T_STARTUP_UNIT + "test_settings_precedence"),
    "FELIX_INTERFACEPREFIX": works(_T_EFFECTS + "test_felix_environment_overrides_felix_configuration"),
    "FELIX_DEFAULTENDPOINTTOHOSTACTION": works(_T_EFFECTS + "test_felix_environment_overrides_felix_configuration"),
    "FELIX_ROUTEREFRESHINTERVAL": works(_T_STARTUP_UNIT + "test_settings_precedence"),
    "FELIX_IPTABLESREFRESHINTERVAL": works(_T_EFFECTS + "test_felix_environment_overrides_felix_configuration"),
    "FELIX_IPSETSREFRESHINTERVAL": works(_T_EFFECTS + "test_felix_environment_overrides_felix_configuration"),
    "FELIX_HEALTHPORT": works(_T_TWONODE, "tests/lab/test_cli_lab.py::test_up_status_exec_tools_down"),
    "FELIX_HEALTHENABLED": missing("calico-node's health server always runs", ok=(True,)),
    "FELIX_VXLANENABLED": works(_T_ENCAP + "test_datastore_objects_to_felix_inputs"),
    "FELIX_VXLANMTU": works(_T_ENCAP + "test_datastore_objects_to_felix_inputs"),
    "FELIX_VXLANPORT": works(_T_ENCAP + "test_datastore_objects_to_felix_inputs"),
    "FELIX_VXLANVNI": works(_T_ENCAP + "test_datastore_objects_to_felix_inputs"),
    "FELIX_POLICYSYNCPATHPREFIX": works("tests/unit/test_csi_driver.py::test_felix_settings_policy_sync_path_prefix",
                                        note="endpoint updates and removes and InSync only (docs/csi.md)"),
}

# -- install-cni and calicolab's own -----------------------------------------------------

_INSTALL_CNI: dict[str, Support] = {
    "CNI_NET_DIR": works(_T_TWONODE),
    "CNI_BIN_DIR": works(_T_TWONODE),
    "CNI_MTU": works(_T_STARTUP_UNIT + "test_conflist_shape"),
    "CNI_CONF_NAME": works(_T_UPSTREAM + "test_install_cni_container_main",
                           note="the install-cni container's conflist name (default 10-calico.conflist); "
                                "calico-node's own step always writes 10-calico.conflist"),
    "CNI_NETWORK_CONFIG_FILE": works(_T_UPSTREAM + "test_install_cni_container_main",
                                     note="the install-cni container: the template from a file"),
    "KUBERNETES_NODE_NAME": works(_T_UPSTREAM + "test_install_cni_container_main",
                                  note="install-cni and upgrade-ipam containers: the node name"),
    "SLEEP": works(_T_UPSTREAM + "test_install_cni_container_main",
                   note="the install-cni container stays running after the install unless false"),
    "SKIP_CNI_BINARIES": missing("install-cni links every plugin binary", ok=("",)),
    "UPDATE_CNI_BINARIES": missing("install-cni always (re)links the plugin binaries", ok=("true",)),
    "CNI_OLD_CONF_NAME": missing("install-cni removes no older conflist", ok=("",)),
    "CNI_NETWORK_CONFIG": works(_T_STARTUP_UNIT + "test_conflist_from_cni_network_config",
                                _T_KDD_UNIT + "test_install_cni_kubernetes_conflist_and_kubeconfig",
                                note="the manifest's cni_network_config; a built-in copy without it"),
    "KUBERNETES_SERVICE_HOST": works(_T_KDD_UNIT + "test_install_cni_kubernetes_conflist_and_kubeconfig",
                                     note="in a pod: the API server the CNI kubeconfig names"),
    "KUBERNETES_SERVICE_PORT": works(_T_KDD_UNIT + "test_install_cni_kubernetes_conflist_and_kubeconfig"),
    "CALICO_CNI_SERVICE_ACCOUNT": works(_T_KDD_UNIT + "test_install_cni_kubernetes_conflist_and_kubeconfig",
                                        note="the ServiceAccount whose token the CNI kubeconfig carries "
                                             "(default calico-cni-plugin)"),
}

_CALICOLAB: dict[str, Support] = {
    "NODE_NAME": works(_T_EFFECTS + "test_node_name_order", note="read after NODENAME, as calico-node's k8s"),
    "CALICO_VAR_LIB_DIR": works(_T_TWONODE, note="calicolab: /var/lib/calico elsewhere (tests)"),
    "CALICO_VAR_RUN_DIR": works(_T_TWONODE, note="calicolab: /var/run/calico elsewhere (tests)"),
    "CALICO_TUNNEL_MODE": works("tests/netns/test_felix_tunnel.py::test_pod_to_pod_over_userspace_tunnel_is_real_ipip",
                                "tests/unit/test_felix_kernel.py::test_datapath_choice_and_its_fallback_note",
                                note="calicolab: auto, kernel, bpf (tc-BPF) or userspace tunl0 (docs/felix.md)"),
    "CALICO_TUNNEL_BPFFS": works("tests/netns/test_agent_twonode.py::test_two_node_agent_end_to_end",
                                 note="calicolab: where the tc-BPF tunnel pins its programs and maps "
                                      "(default /sys/fs/bpf, mounted if not)"),
    "CALICO_TUNNEL_GRO": works("tests/unit/test_felix_gro.py::test_in_order_full_segments_become_one_gso_frame",
                               note="calicolab: coalesce tunnelled TCP in the userspace tunnel"),
    "CALICO_INSTALL_CNI": works(_T_TWONODE, note="calicolab: false skips the install-cni step"),
    "CALICO_CNI_SERVER": works("tests/netns/test_cni_server.py::test_requests_are_served_by_the_warm_server",
                               note="calicolab: the warm CNI server (docs/cni.md)"),
    "CALICO_LOG_LEVEL": works(_T_EFFECTS + "test_log_level_from_env", note="calicolab: calico-node's log level"),
    "CALICOLAB_BGP_TIMERS": works("tests/lab/test_lab_rr.py::test_route_reflector_sessions_routes_and_pods",
                                  note="calicolab: the BGP speaker's timers (docs/bgp.md)"),
    "TYPHA_ADDR": works(_T_EFFECTS + "test_typha_address_from_env", note="calicolab: same as FELIX_TYPHAADDR"),
}


def _felix_parse(field_json: str) -> Callable[[str], Any]:
    if field_json in FelixConfiguration.DURATIONS:
        return _seconds
    tp = next(t for _a, j, t in json_fields(FelixConfigurationSpec) if j == field_json)
    args = typing.get_args(tp)
    if bool in args:
        return _bool
    if int in args:
        return lambda t: int(t, 0)
    return str


def felix_env_name(field_json: str) -> str:
    """``FELIX_<PARAM>`` for a FelixConfiguration field, as Felix maps it (``ipipMTU`` -> FELIX_IPINIPMTU)."""
    return "FELIX_" + FELIX_PARAM_NAMES.get(field_json, field_json.upper())


def _build() -> dict[str, EnvVar]:
    out: dict[str, EnvVar] = {}
    for name, (group, support) in _NODE.items():
        out[name] = EnvVar(name, f"calico-node: {group}", support,
                           _bool if name in ("NO_DEFAULT_POOLS",) else str)
    fields = [p[len("spec."):] for p in calico_api.KINDS["FelixConfiguration"] if p.count(".") == 1]
    for fj in fields:
        name = felix_env_name(fj)
        support = FELIX_READ.get(name)
        if support is None:
            entry = FelixConfiguration.INVENTORY[f"spec.{fj}"]
            support = entry if not entry.implemented else missing(
                f"set spec.{fj} in FelixConfiguration: calicolab's Felix does not read {name}")
        out[name] = EnvVar(name, "Felix (FelixConfiguration fields)", support, _felix_parse(fj), fj)
    for name, support in _FELIX_LOCAL.items():
        out[name] = EnvVar(name, "Felix (environment only)", support)
    for name, support in _INSTALL_CNI.items():
        out[name] = EnvVar(name, "install-cni", support)
    for name, support in _CALICOLAB.items():
        out[name] = EnvVar(name, "calicolab", support)
    return out


#: Every environment variable of calico-node, by name.
REGISTRY: dict[str, EnvVar] = _build()


def get(env: Mapping[str, str], name: str, default: str | None = "") -> str | None:
    """``env[name]`` (or ``default``) for a registered variable; an unregistered name is a
    programming error (add it to this module's tables, docs/inventory.md follows)."""
    if name not in REGISTRY:
        raise KeyError(f"environment variable {name} is read by calico-node but missing from agent.envvars")
    value = env.get(name)
    return default if value is None else value


def unimplemented(env: Mapping[str, str]) -> list[Finding]:
    """The registered variables set in ``env`` to values calicolab does not honour."""
    out = []
    for name in sorted(env):
        var = REGISTRY.get(name)
        text = env[name]
        if var is None or text == "":
            continue
        try:
            value = var.parse(text)
        except ValueError:
            value = text
        if not var.support.honours(value):
            out.append(Finding("env", name, text, var.support))
    return out
