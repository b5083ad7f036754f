"""The effect of settings the inventory lists as implemented that no other test showed:
FelixConfiguration fields and FELIX_* variables on the calculated dataplane, BGP restart
times on the speaker's peers, orchRefs in kube-controllers, default-pool and node-name
environment, Typha addresses, CNI logging and the IPAM lock file (docs/inventory.md)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.confd import State, compute
from agent.felix.calc import calculate
from agent.felix.convert import settings
from agent.felix.model import Endpoint, FelixInput, HostNode, Pool
from datastore.resources import (
    BGPConfiguration,
    BGPPeer,
    FelixConfiguration,
    Metadata,
    Node,
    NodeBGPSpec,
)
from datastore.resources import OrchRef as _OrchRef

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]

EP = Endpoint("default/w", "tap0123456789a", ("192.168.1.5/32",))
NODES = (HostNode("k8s-w0", "172.30.0.11/24", "192.168.1.0"), HostNode("k8s-w1", "172.30.0.12/24", None))
POOLS = (Pool("192.168.0.0/16", "Always", True),)


def _felix(name: str, spec: dict) -> FelixConfiguration:
    obj = FelixConfiguration.from_dict({"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
                                        "metadata": {"name": name}, "spec": spec})
    obj.validate()
    return obj


def _rules(desired, table: str, chain: str) -> tuple[str, ...]:
    return desired.tables[table].chains[chain].rules


def test_felix_configuration_fields_reach_the_dataplane():
    cfgs = {"default": _felix("default", {"interfacePrefix": "tap", "defaultEndpointToHostAction": "DROP",
                                          "ipipMTU": 1400, "routeRefreshInterval": "30s",
                                          "iptablesRefreshInterval": "1m", "ipsetsRefreshInterval": "20s"}),
            "node.k8s-w0": _felix("node.k8s-w0", {"ipsetsRefreshInterval": "5s"})}
    s = settings("k8s-w0", cfgs, {})
    assert (s.route_refresh_interval, s.iptables_refresh_interval, s.ipsets_refresh_interval) == (30, 60, 5)
    d = calculate(FelixInput("k8s-w0", (EP,), NODES, POOLS, s))
    assert d.routes == {"192.168.1.5/32": "tap0123456789a"}  # the prefix picks the workload interfaces
    assert "--in-interface tap+ --jump cali-from-wl-dispatch" in _rules(d, "filter", "cali-FORWARD")
    assert _rules(d, "filter", "cali-wl-to-host")[-1].endswith("--jump DROP")
    assert d.tunnel is not None and d.tunnel.mtu == 1400 and d.mtu_file == 1400
    off = settings("k8s-w0", {"default": _felix("default", {"ipipEnabled": False})}, {})
    d = calculate(FelixInput("k8s-w0", (EP,), NODES, POOLS, off))
    assert d.tunnel is None  # IPIP pool, but ipipEnabled: false
    assert not any("-p 4" in r for r in _rules(d, "filter", "cali-INPUT"))


def test_felix_environment_overrides_felix_configuration():
    cfgs = {"default": _felix("default", {"interfacePrefix": "cali", "ipipEnabled": True,
                                          "defaultEndpointToHostAction": "ACCEPT"})}
    env = {"FELIX_INTERFACEPREFIX": "tap,veth", "FELIX_IPINIPENABLED": "false",
           "FELIX_DEFAULTENDPOINTTOHOSTACTION": "RETURN", "FELIX_IPTABLESREFRESHINTERVAL": "20",
           "FELIX_IPSETSREFRESHINTERVAL": "15"}
    s = settings("k8s-w0", cfgs, env)
    assert (s.interface_prefix, s.ipip_enabled, s.default_endpoint_to_host_action) == ("tap", False, "RETURN")
    assert (s.iptables_refresh_interval, s.ipsets_refresh_interval) == (20, 15)
    d = calculate(FelixInput("k8s-w0", (EP,), NODES, POOLS, s))
    assert d.tunnel is None and _rules(d, "filter", "cali-wl-to-host")[-1].endswith("--jump RETURN")


def test_graceful_restart_times_reach_the_peers():
    st = State()
    for name, ip in (("k8s-w0", "172.30.0.11/24"), ("k8s-w1", "172.30.0.12/24")):
        st.nodes[name] = Node(metadata=Metadata(name=name), spec=Node.Spec(bgp=NodeBGPSpec(ipv4_address=ip)))
    st.bgp_configs["default"] = BGPConfiguration(metadata=Metadata(name="default"),
                                                 spec=BGPConfiguration.Spec(node_mesh_max_restart_time="90s"))
    st.bgp_peers["tor"] = BGPPeer(metadata=Metadata(name="tor"),
                                  spec=BGPPeer.Spec(peer_ip="172.30.0.1", as_number=65000, max_restart_time="5m"))
    times = {p.name: p.graceful_restart_time for p in compute("k8s-w0", st).peers}
    assert times == {"Mesh_172_30_0_12": 90.0, "Global_172_30_0_1": 300.0}


def test_orch_refs_name_the_kubernetes_node():
    from agent.kubecontrollers.config import Config
    from agent.kubecontrollers.controller import KubeControllers
    from agent.kubecontrollers.decisions import CalicoNodeRef

    class Store:  # the one read calico_nodes() makes (pure-logic test)
        def list(self, kind):
            assert kind == "Node"
            return [Node(metadata=Metadata(name="calico-w3"),
                         spec=Node.Spec(orch_refs=[_OrchRef(node_name="w3", orchestrator="k8s")])),
                    Node(metadata=Metadata(name="w4"),
                         spec=Node.Spec(orch_refs=[_OrchRef(node_name="other", orchestrator="openstack")]))]

    ctl = KubeControllers.__new__(KubeControllers)
    ctl.client, ctl.config = Store(), Config()
    assert ctl.calico_nodes() == [CalicoNodeRef("calico-w3", "w3"), CalicoNodeRef("w4", "w4")]


def test_default_pool_env():
    from agent.startup import pool_from_env

    p = pool_from_env({"CALICO_IPV4POOL_NODE_SELECTOR": "rack == 'r1'", "CALICO_IPV4POOL_DISABLE_BGP_EXPORT": "true"})
    assert p.spec.node_selector == "rack == 'r1'" and p.spec.disable_bgp_export is True
    assert pool_from_env({}).spec.disable_bgp_export is False


def test_node_name_order():
    from agent.startup import determine_nodename

    assert determine_nodename({"NODENAME": "a", "NODE_NAME": "b", "HOSTNAME": "c"}) == "a"
    assert determine_nodename({"NODE_NAME": "b", "HOSTNAME": "c"}) == "b"
    assert determine_nodename({"HOSTNAME": "c"}) == "c"


def test_typha_address_from_env():
    from datastore.typha import typha_from_env

    assert typha_from_env({"FELIX_TYPHAADDR": "10.9.0.5:5473"}, None).address == "10.9.0.5:5473"
    assert typha_from_env({"TYPHA_ADDR": "10.9.0.6"}, None).address == "10.9.0.6"
    assert typha_from_env({}, None) is None


def test_log_level_from_env():
    def run(level: str, *args: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, CALICO_LOG_LEVEL=level, PYTHONPATH=str(REPO))
        return subprocess.run([sys.executable, "-m", "agent.main", *args], env=env, capture_output=True,
                              text=True, timeout=30, cwd=REPO)

    assert "now debug" in " ".join(run("DEBUG", "--help").stdout.split())
    bad = run("chatty", "--startup-only")
    assert bad.returncode == 2 and "CALICO_LOG_LEVEL='chatty' is not one of" in bad.stderr


def test_cni_log_file_and_level(tmp_path):
    from cni.log import Log
    from cni.netconf import parse_netconf

    nc = parse_netconf({"cniVersion": "0.3.1", "name": "k8s-pod-network", "type": "calico",
                        "log_level": "warning", "log_file_path": str(tmp_path / "cni" / "cni.log"),
                        "ipam": {"type": "calico-ipam"}})
    log = Log()
    log.configure(nc.log_file_path, nc.log_level)
    log.info("not this")
    log.warning("this one")
    text = (tmp_path / "cni" / "cni.log").read_text()
    assert "this one" in text and "not this" not in text and log.stderr_text() == ""


def test_ipam_lock_file_is_the_one_locked(tmp_path):
    from cni.netconf import parse_netconf
    from cni.plugin import _IPAMLock

    nc = parse_netconf({"cniVersion": "0.3.1", "name": "n", "type": "calico", "ipam": {"type": "calico-ipam"},
                        "ipam_lock_file": str(tmp_path / "ipam.lock")})
    with _IPAMLock(nc.ipam_lock_file):
        fd = os.open(nc.ipam_lock_file, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
