"""The encapsulation logic, pure (calico.md sections 3 and 7): pool types, CrossSubnet
decisions, the VTEP MAC, the VXLAN manager's routes, ARP/FDB entries and ipset, the pod
MTU per mode, and the VXLAN iptables rules."""

from __future__ import annotations

import pytest

from agent.felix import encap
from agent.felix.calc import calculate
from agent.felix.convert import block_from_ipamblock, host_from_node, settings
from agent.felix.model import Block, Endpoint, FelixInput, FelixSettings, HostNode, Pool

pytestmark = pytest.mark.unit

# two subnets: w0 and w1 share 172.30.8.0/24, w2 is on 172.30.9.0/24
NODES = (
    HostNode("w0", "172.30.8.11/24", None, "192.168.0.0", None),
    HostNode("w1", "172.30.8.12/24", None, "192.168.1.0", None),
    HostNode("w2", "172.30.9.11/24", None, "192.168.2.0", "ee:00:00:00:00:02"),
)
BLOCKS = (Block("192.168.0.0/26", "w0"), Block("192.168.1.0/26", "w1"),
          Block("192.168.2.0/26", "w2", borrowed=(("192.168.2.9", "w1"), ("192.168.2.10", "w0"))),
          Block("192.168.3.0/26", None))


def inp(mode: str = "Always", *, kind: str = "vxlan", nodes=NODES, blocks=BLOCKS, **kw) -> FelixInput:
    pool = Pool("192.168.0.0/16", mode if kind == "ipip" else "Never", True, False,
                mode if kind == "vxlan" else "Never")
    return FelixInput(hostname="w0", nodes=nodes, pools=(pool,), blocks=blocks, host_mtu=1500, **kw)


def rendered(plan: encap.VxlanPlan) -> dict[str, str]:
    return {dst: r.render("eth0") for dst, r in plan.routes.items()}


def test_vtep_mac_is_f_and_sha1_of_the_node_name():
    assert encap.vtep_mac("node1") == "66:f9:37:c3:7e:94"  # calico.md section 7
    assert encap.vtep_mac("k8s-w0").startswith("66:") and encap.vtep_mac("k8s-w0") != encap.vtep_mac("k8s-w1")


def test_pool_type_and_cross_subnet():
    assert encap.pool_type(Pool("10.0.0.0/16", "Always")) == "ipip"
    assert encap.pool_type(Pool("10.0.0.0/16", "Never", vxlan_mode="CrossSubnet")) == "vxlan"
    assert encap.pool_type(Pool("10.0.0.0/16")) == "none"
    assert encap.cross_subnet(Pool("10.0.0.0/16", "CrossSubnet"))
    assert encap.cross_subnet(Pool("10.0.0.0/16", vxlan_mode="CrossSubnet"))
    assert not encap.cross_subnet(Pool("10.0.0.0/16", vxlan_mode="Always"))


def test_same_subnet_uses_my_address_prefix_and_a_slash_32_forces_encapsulation():
    w0, w1, w2 = NODES
    assert encap.same_subnet(w0, w1) and not encap.same_subnet(w0, w2)
    assert not encap.same_subnet(HostNode("w0", "172.30.8.11/32"), w1)  # calico#1584: /32 -> always encap
    assert not encap.same_subnet(HostNode("w0", "172.30.8.11"), w1)  # a bare address is a /32
    assert not encap.same_subnet(None, w1) and not encap.same_subnet(w0, HostNode("w9"))


def test_vxlan_always_routes_every_remote_block_via_the_vtep_and_blackholes_its_own():
    plan = encap.plan(inp("Always"))
    assert rendered(plan) == {
        "192.168.0.0/26": "blackhole 192.168.0.0/26 proto 80",
        "192.168.1.0/26": "192.168.1.0/26 via 192.168.1.0 dev vxlan.calico onlink",
        "192.168.2.0/26": "192.168.2.0/26 via 192.168.2.0 dev vxlan.calico onlink",
        "192.168.2.9/32": "192.168.2.9/32 via 192.168.1.0 dev vxlan.calico onlink",  # borrowed by w1
    }  # w0's own borrowed /32 is a local workload (the CNI's route); the unaffine block has no route
    dev = plan.device
    assert dev is not None and (dev.name, dev.vni, dev.port, dev.local, dev.mtu, dev.address) == (
        "vxlan.calico", 4096, 4789, "172.30.8.11", 1450, "192.168.0.0")
    assert dev.mac == encap.vtep_mac("w0")
    assert plan.neighbours() == {"192.168.1.0": encap.vtep_mac("w1"), "192.168.2.0": "ee:00:00:00:00:02"}
    assert plan.fdb() == {encap.vtep_mac("w1"): "172.30.8.12", "ee:00:00:00:00:02": "172.30.9.11"}
    assert plan.allowed_sources == {"172.30.8.12", "172.30.9.11"}


def test_vxlan_cross_subnet_routes_same_subnet_nodes_unencapsulated():
    plan = encap.plan(inp("CrossSubnet"))
    assert rendered(plan)["192.168.1.0/26"] == "192.168.1.0/26 via 172.30.8.12 dev eth0 proto 80 onlink"
    assert rendered(plan)["192.168.2.0/26"] == "192.168.2.0/26 via 192.168.2.0 dev vxlan.calico onlink"
    assert rendered(plan)["192.168.2.9/32"] == "192.168.2.9/32 via 172.30.8.12 dev eth0 proto 80 onlink"
    # with a /32 node address nothing is "in my subnet": everything is encapsulated (calico#1584)
    nodes = (HostNode("w0", "172.30.8.11/32", None, "192.168.0.0"), *NODES[1:])
    assert rendered(encap.plan(inp("CrossSubnet", nodes=nodes)))["192.168.1.0/26"].endswith("dev vxlan.calico onlink")


def test_remote_blocks_wait_for_their_vtep_and_no_device_without_a_tunnel_address():
    nodes = (NODES[0], HostNode("w1", "172.30.8.12/24"), NODES[2])  # w1 has no VXLAN tunnel address yet
    plan = encap.plan(inp("Always", nodes=nodes))
    assert "192.168.1.0/26" not in plan.routes and plan.waiting == ("192.168.1.0/26", "192.168.2.9/32")
    assert [v.node for v in plan.vteps] == ["w2"]
    plan = encap.plan(inp("Always", nodes=(HostNode("w0", "172.30.8.11/24"), *NODES[1:])))
    assert plan.device is None and plan.enabled  # no local VTEP: routes are known, the device waits


def test_ipip_and_unencapsulated_pools_are_left_to_bgp():
    for mode, kind in (("Always", "ipip"), ("CrossSubnet", "ipip"), ("Never", "vxlan")):
        plan = encap.plan(inp(mode, kind=kind))
        assert not plan.enabled and plan.routes == {} and plan.device is None
    # FelixConfiguration vxlanEnabled=false wins over the pools; true turns it on without one
    assert not encap.plan(inp("Always", settings=FelixSettings(vxlan_enabled=False))).enabled
    assert encap.plan(inp("Never", settings=FelixSettings(vxlan_enabled=True))).enabled
    disabled = FelixInput(hostname="w0", nodes=NODES, pools=(Pool("192.168.0.0/16", disabled=True,
                                                                  vxlan_mode="Always"),))
    assert not encap.vxlan_enabled(disabled)


def test_pod_mtu_is_the_smallest_enabled_encapsulation():
    assert encap.pod_mtu(inp("Always")) == 1450
    assert encap.pod_mtu(inp("Always", kind="ipip")) == 1480
    assert encap.pod_mtu(inp("Never")) == 1500
    assert encap.pod_mtu(inp("Always", settings=FelixSettings(vxlan_mtu=1400))) == 1400
    both = inp("Always", settings=FelixSettings(ipip_enabled=True))
    assert encap.pod_mtu(both) == 1450  # IPIP 1480 and VXLAN 1450 both on: the smaller
    assert calculate(inp("Always")).mtu_file == 1450


def test_vxlan_iptables_rules_ipsets_and_tunnel_masquerade():
    """As Felix renders them (static.go filterInputChain/filterOutputChain, calico.md section 7)."""
    d = calculate(inp("Always"))
    rules = d.tables["filter"].chains["cali-INPUT"].rules
    vx = "-p 17 -m multiport --destination-ports 4789"
    assert rules[0] == ('-m comment --comment "Allow IPv4 VXLAN packets from allowed hosts" ' + vx +
                        " -m set --match-set cali40all-vxlan-net src -m addrtype --dst-type LOCAL --jump ACCEPT")
    assert rules[1] == ('-m comment --comment "Drop IPv4 VXLAN packets from non-allowed hosts" ' + vx +
                        " -m addrtype --dst-type LOCAL --jump DROP")
    assert not any("-p 4 " in r for r in rules)  # no IPIP rules without IPIP
    out = d.tables["filter"].chains["cali-OUTPUT"].rules
    assert ('-m comment --comment "Allow IPv4 VXLAN packets to other allowed hosts" ' + vx +
            " -m addrtype --src-type LOCAL -m set --match-set cali40all-vxlan-net dst --jump ACCEPT") in out
    assert d.ipsets["cali40all-vxlan-net"].members == {"172.30.8.12", "172.30.9.11"}
    assert "cali40all-hosts-net" not in d.ipsets  # the IPIP manager's set
    post = d.tables["nat"].chains["cali-POSTROUTING"].rules
    assert post[-1] == ("--out-interface vxlan.calico -m addrtype ! --src-type LOCAL --limit-iface-out "
                        "-m addrtype --src-type LOCAL --jump MASQUERADE --random-fully")
    plain = calculate(inp("Never"))
    assert "cali40all-vxlan-net" not in plain.ipsets
    assert not any("vxlan" in r or "tunl0" in r for r in plain.tables["nat"].chains["cali-POSTROUTING"].rules)
    assert not any("4789" in r for r in plain.tables["filter"].chains["cali-INPUT"].rules)


def test_datastore_objects_to_felix_inputs():
    from datastore.resources import AllocationAttribute, IPAMBlock, Metadata, Node, NodeBGPSpec

    n = Node(metadata=Metadata(name="w2"))
    n.spec.bgp = NodeBGPSpec(ipv4_address="172.30.9.11/24", ipv4_ipip_tunnel_addr=None)
    n.spec.ipv4_vxlan_tunnel_addr = "192.168.2.0"
    n.spec.vxlan_tunnel_mac_addr = "ee:00:00:00:00:02"
    assert host_from_node(n) == NODES[2]
    b = IPAMBlock(metadata=Metadata(name="192-168-2-0-26"))
    b.spec.cidr, b.spec.affinity = "192.168.2.0/26", "host:w2"
    b.spec.attributes = [AllocationAttribute("vxlan-tunnel-addr-w2", {"node": "w2", "type": "vxlanTunnelAddress"}),
                         AllocationAttribute("h1", {"node": "w1"}),
                         AllocationAttribute("h2", {"node": "w3", "type": "vxlanTunnelAddress"})]
    b.spec.allocations = [0, None, None, 1, 2] + [None] * 59
    assert block_from_ipamblock(b) == Block("192.168.2.0/26", "w2", (("192.168.2.3", "w1"),))
    b.spec.deleted = True
    assert block_from_ipamblock(b) is None
    s = settings("w0", {}, {"FELIX_VXLANENABLED": "true", "FELIX_VXLANMTU": "1400", "FELIX_VXLANVNI": "7",
                            "FELIX_VXLANPORT": "8472"})
    assert (s.vxlan_enabled, s.vxlan_mtu, s.vxlan_vni, s.vxlan_port) == (True, 1400, 7, 8472)
    from agent.felix.convert import ConfigError

    with pytest.raises(ConfigError, match="vxlan_port: 70000 is out of range"):
        settings("w0", {}, {"FELIX_VXLANPORT": "70000"})


def test_felix_configuration_vxlan_fields_take_effect():
    from datastore.resources import FelixConfiguration, Metadata

    cfg = FelixConfiguration(metadata=Metadata(name="default"))
    cfg.spec.vxlan_vni, cfg.spec.vxlan_port, cfg.spec.vxlan_mtu = 7, 8472, 1400
    s = settings("w0", {"default": cfg}, {})
    d = calculate(inp("Always", settings=s))
    dev = d.vxlan.device
    assert dev is not None and (dev.vni, dev.port, dev.mtu) == (7, 8472, 1400) and d.mtu_file == 1400
    assert "--destination-ports 8472" in d.tables["filter"].chains["cali-INPUT"].rules[0]
    d2 = calculate(FelixInput(hostname="w0", nodes=NODES, pools=inp("Always").pools, blocks=BLOCKS, settings=s,
                              endpoints=(Endpoint("ns/p", "cali0000000001", ("192.168.0.5/32",), ("kns.ns",)),)))
    fw = d2.tables["filter"].chains["cali-fw-cali0000000001"].rules
    assert any("VXLAN encapped packets originating in workloads" in r and "--destination-ports 8472" in r
               for r in fw), fw
    cfg.spec.vxlan_enabled = False
    assert not calculate(inp("Always", settings=settings("w0", {"default": cfg}, {}))).vxlan.enabled
