"""confd's pure computation over datastore resources -> speaker configuration."""

import dataclasses
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N

import pytest

from agent.bgp.config import GLOBAL, MESH, NODE
from agent.confd import ConfdError, State, compute, render_bird_cfg
from datastore.resources import (
    AllocationAttribute,
    BGPConfiguration,
    BGPPeer,
    BlockAffinity,
    IPAMBlock,
    IPPool,
    Metadata,
    Node,
    NodeBGPSpec,
)

pytestmark = pytest.mark.unit


def node(name, ip, labels=None, **bgp):
    return Node(metadata=Metadata(name=name, labels=labels),
                spec=Node.Spec(bgp=NodeBGPSpec(ipv4_address=ip, **bgp)))


def pool(name, cidr, ipip="Always", **kw):
    return IPPool(metadata=Metadata(name=name),
                  spec=IPPool.Spec(cidr=cidr, block_size=26, ipip_mode=ipip, **kw))


def aff(node_name, cidr, state="confirmed"):
    return BlockAffinity(metadata=Metadata(name=f"{node_name}-{cidr}"),
                         spec=BlockAffinity.Spec(node=node_name, cidr=cidr, state=state))


def walkthrough_state():
    st = State()
    for n in (node("k8s-m", "172.30.0.10/24"), node("k8s-w0", "172.30.0.11/24"),
              node("k8s-w1", "172.30.0.12/24")):
        st.nodes[n.metadata.name] = n
    st.pools["default-ipv4-ippool"] = pool("default-ipv4-ippool", "192.168.0.0/16")
    for a in (aff("k8s-w0", "192.168.1.0/26"), aff("k8s-w0", "192.168.9.0/26", "pending"),
              aff("k8s-m", "192.168.2.0/26")):
        st.affinities[a.metadata.name] = a
    return st


def test_mesh_peers_names_passive_and_exports():
    cfg = compute("k8s-w0", walkthrough_state())
    assert cfg.router_id == A("172.30.0.11") and cfg.local_as == 64512
    assert [(p.name, p.peer_type, p.passive) for p in cfg.peers] == [
        ("Mesh_172_30_0_10", MESH, False),     # "…10" < "…11": we connect
        ("Mesh_172_30_0_12", MESH, True)]      # "…12" > "…11": we wait
    assert cfg.originate == ((N("192.168.1.0/26"), True),)   # pending affinity ignored
    assert cfg.export_pools == (N("192.168.0.0/16"),)
    assert cfg.kernel.ipip_pools == (N("192.168.0.0/16"),)
    assert cfg.kernel.local_subnet == N("172.30.0.0/24")


def test_no_address_yet_and_unknown_node():
    st = walkthrough_state()
    st.nodes["k8s-w2"] = Node(metadata=Metadata(name="k8s-w2"), spec=Node.Spec())
    assert compute("k8s-w2", st) is None
    assert compute("nope", st) is None


def test_as_numbers_and_mesh_off_with_global_peer():
    st = walkthrough_state()
    st.bgp_configs["default"] = BGPConfiguration(
        metadata=Metadata(name="default"),
        spec=BGPConfiguration.Spec(node_to_node_mesh_enabled=False, as_number=65100))
    st.bgp_peers["tor"] = BGPPeer(metadata=Metadata(name="tor"),
                                  spec=BGPPeer.Spec(peer_ip="172.30.0.1", as_number=65000,
                                                    keepalive_time="10s"))
    st.bgp_peers["w0-only"] = BGPPeer(metadata=Metadata(name="w0-only"),
                                      spec=BGPPeer.Spec(node="k8s-w0", peer_ip="10.9.9.9:1790",
                                                        as_number=65100))
    cfg = compute("k8s-w0", st)
    assert cfg.local_as == 65100
    assert [(p.name, p.peer_type, p.asn, p.port, p.passive) for p in cfg.peers] == [
        ("Global_172_30_0_1", GLOBAL, 65000, 179, False),
        ("Node_10_9_9_9_port_1790", NODE, 65100, 1790, False)]
    assert cfg.peers[0].keepalive == 10
    assert [p.name for p in compute("k8s-w1", st).peers] == ["Global_172_30_0_1"]


def test_route_reflector_topology():
    st = walkthrough_state()
    st.nodes["k8s-m"] = node("k8s-m", "172.30.0.10/24", {"rr": "yes"},
                             route_reflector_cluster_id="224.0.0.1")
    st.bgp_peers["to-rr"] = BGPPeer(metadata=Metadata(name="to-rr"),
                                    spec=BGPPeer.Spec(peer_selector="rr == 'yes'"))
    st.bgp_peers["rr-clients"] = BGPPeer(metadata=Metadata(name="rr-clients"),
                                         spec=BGPPeer.Spec(node_selector="rr == 'yes'",
                                                           peer_selector="all()"))
    rr = compute("k8s-m", st)
    assert rr.cluster_id == A("224.0.0.1")
    assert [(p.name, p.rr_client) for p in rr.peers] == [("Node_172_30_0_11", True),
                                                         ("Node_172_30_0_12", True)]
    w0 = compute("k8s-w0", st)
    # mesh skips the reflector; the selector peer reaches it; the mesh to w1 remains
    assert [p.name for p in w0.peers] == ["Mesh_172_30_0_12", "Node_172_30_0_10"]
    assert not any(p.rr_client for p in w0.peers)


def test_disable_bgp_export_cross_subnet_vxlan_and_borrowed():
    st = walkthrough_state()
    st.pools["quiet"] = pool("quiet", "10.50.0.0/16", ipip="Never", disable_bgp_export=True)
    st.pools["cs"] = pool("cs", "10.60.0.0/16", ipip="CrossSubnet")
    st.pools["vx"] = pool("vx", "10.70.0.0/16", ipip="Never", vxlan_mode="Always")
    st.affinities["q"] = aff("k8s-w0", "10.50.0.0/26")
    st.blocks["b"] = IPAMBlock(metadata=Metadata(name="192.168.2.0-26"), spec=IPAMBlock.Spec(
        cidr="192.168.2.0/26", affinity="host:k8s-m", allocations=[0, None, 1, 2],
        attributes=[AllocationAttribute("h0", {"node": "k8s-m"}),
                    AllocationAttribute("h1", {"node": "k8s-w0"}),
                    AllocationAttribute("vxlan-tunnel-addr-k8s-w0", {"node": "k8s-w0", "type": "vxlanTunnelAddress"})]))
    cfg = compute("k8s-w0", st)
    orig = dict(cfg.originate)
    assert orig[N("10.50.0.0/26")] is True                    # blackholed ...
    assert N("10.50.0.0/16") not in cfg.export_pools          # ... but never exported
    assert orig[N("192.168.2.2/32")] is False                 # borrowed /32, no blackhole
    assert N("192.168.2.3/32") not in orig                    # a borrowed tunnel address is no workload
    assert cfg.kernel.cross_subnet_pools == (N("10.60.0.0/16"),)
    assert cfg.kernel.reject_pools == (N("10.70.0.0/16"),)


def test_bad_input_is_named():
    st = walkthrough_state()
    st.bgp_peers["bad"] = BGPPeer(metadata=Metadata(name="bad"),
                                  spec=BGPPeer.Spec(peer_ip="not-an-ip", as_number=1))
    with pytest.raises(ConfdError, match="BGPPeer bad: invalid peerIP"):
        compute("k8s-w0", st)
    st.bgp_peers["bad"] = BGPPeer(metadata=Metadata(name="bad"),
                                  spec=BGPPeer.Spec(peer_ip="1.2.3.4", as_number=1,
                                                    keepalive_time="ten"))
    with pytest.raises(ConfdError, match="invalid duration"):
        compute("k8s-w0", st)


def test_bird_cfg_render_mentions_everything():
    text = render_bird_cfg(compute("k8s-w0", walkthrough_state()))
    assert "router id 172.30.0.11;" in text
    assert "protocol bgp Mesh_172_30_0_12 from bgp_template {" in text
    assert "passive on;" in text and "route 192.168.1.0/26 blackhole;" in text
    assert 'krt_tunnel = "tunl0"' in text


def test_listen_port_and_bind_mode():
    st = walkthrough_state()
    assert compute("k8s-w0", st).listen_address == "0.0.0.0"
    st.bgp_configs["default"] = BGPConfiguration(
        metadata=Metadata(name="default"),
        spec=BGPConfiguration.Spec(bind_mode="NodeIP", listen_port=1790))
    st.bgp_configs["node.k8s-w1"] = BGPConfiguration(
        metadata=Metadata(name="node.k8s-w1"), spec=BGPConfiguration.Spec(listen_port=1791))
    w0 = compute("k8s-w0", st)
    assert (w0.listen_address, w0.listen_port) == ("172.30.0.11", 1790)
    w1 = compute("k8s-w1", st)
    assert w1.listen_port == 1791
    assert {p.name: p.port for p in w0.peers} == {"Mesh_172_30_0_10": 1790,
                                                  "Mesh_172_30_0_12": 1791}


def lab_rr_state(reverse=None):
    """The lab's route-reflector shape (testbed/lab/supervisor.py): mesh off, k8s-m labelled and given a
    cluster id, one BGPPeer from every node to the reflectors."""
    st = walkthrough_state()
    st.bgp_configs["default"] = BGPConfiguration(
        metadata=Metadata(name="default"),
        spec=BGPConfiguration.Spec(node_to_node_mesh_enabled=False))
    st.nodes["k8s-m"] = node("k8s-m", "172.30.0.10/24", {"route-reflector": "true"},
                             route_reflector_cluster_id="244.0.0.1")
    st.bgp_peers["peer-with-route-reflectors"] = BGPPeer(
        metadata=Metadata(name="peer-with-route-reflectors"),
        spec=BGPPeer.Spec(node_selector="all()", peer_selector="route-reflector == 'true'",
                          reverse_peering=reverse))
    return st


def test_selector_peering_reaches_the_reflector_side_too():
    st = lab_rr_state()
    rr = compute("k8s-m", st)
    # the reflector matches peerSelector: it peers with every nodeSelector node but itself
    assert [(p.name, p.peer_type, p.rr_client, p.passive, p.asn) for p in rr.peers] == [
        ("Node_172_30_0_11", NODE, True, True, 64512),
        ("Node_172_30_0_12", NODE, True, True, 64512)]
    assert rr.cluster_id == A("244.0.0.1")
    for w, ip in (("k8s-w0", "172_30_0_11"), ("k8s-w1", "172_30_0_12")):
        cfg = compute(w, st)
        assert [(p.name, p.rr_client, p.passive) for p in cfg.peers] == [
            ("Node_172_30_0_10", False, False)], (w, ip)   # only the reflector, we connect
        assert cfg.cluster_id is None
    text = render_bird_cfg(rr)
    assert text.count("rr client; rr cluster id 244.0.0.1;") == 2


def test_reverse_peering_manual_and_node_specific_selector_peer():
    st = lab_rr_state(reverse="Manual")
    assert compute("k8s-m", st).peers == ()
    assert [p.name for p in compute("k8s-w0", st).peers] == ["Node_172_30_0_10"]
    # a node-specific BGPPeer with a peerSelector: the selected nodes peer back with that node
    st = lab_rr_state()
    st.bgp_peers["peer-with-route-reflectors"].spec.node_selector = ""
    st.bgp_peers["peer-with-route-reflectors"].spec.node = "k8s-w1"
    assert [p.name for p in compute("k8s-m", st).peers] == ["Node_172_30_0_12"]
    assert compute("k8s-w0", st).peers == ()
    assert [p.name for p in compute("k8s-w1", st).peers] == ["Node_172_30_0_10"]
    # no node and no nodeSelector: every node is on the local side, both ways
    st.bgp_peers["peer-with-route-reflectors"].spec.node = ""
    assert [p.name for p in compute("k8s-m", st).peers] == ["Node_172_30_0_11",
                                                            "Node_172_30_0_12"]


def test_selector_peer_uses_the_peer_nodes_listen_port():
    st = lab_rr_state()
    st.bgp_configs["node.k8s-m"] = BGPConfiguration(metadata=Metadata(name="node.k8s-m"),
                                                    spec=BGPConfiguration.Spec(listen_port=1790))
    assert [(p.address, p.port) for p in compute("k8s-w0", st).peers] == [(A("172.30.0.10"), 1790)]
    assert {p.port for p in compute("k8s-m", st).peers} == {179}


def test_bad_selector_peering_is_named():
    st = lab_rr_state(reverse="Sometimes")
    with pytest.raises(ConfdError, match="BGPPeer peer-with-route-reflectors: invalid "
                                         "spec.reversePeering 'Sometimes'"):
        compute("k8s-m", st)
    st = lab_rr_state()
    st.bgp_peers["peer-with-route-reflectors"].spec.peer_selector = "route-reflector =="
    with pytest.raises(ConfdError, match="BGPPeer peer-with-route-reflectors: spec.peerSelector: "
                                         "invalid selector"):
        compute("k8s-w0", st)


def test_peer_selector_with_peer_ip_or_as_number_is_refused():
    st = lab_rr_state()
    st.bgp_peers["peer-with-route-reflectors"].spec.as_number = 65000
    with pytest.raises(ConfdError, match="spec.asNumber must be empty when spec.peerSelector"):
        compute("k8s-w0", st)
    st = lab_rr_state()
    st.bgp_peers["peer-with-route-reflectors"].spec.peer_ip = "172.30.0.1"
    with pytest.raises(ConfdError, match="spec.peerIP must be empty when spec.peerSelector"):
        compute("k8s-w0", st)


def test_two_reflectors_of_one_cluster_peer_as_non_clients():
    st = lab_rr_state()
    st.nodes["k8s-w1"] = node("k8s-w1", "172.30.0.12/24", {"route-reflector": "true"},
                              route_reflector_cluster_id="244.0.0.1")
    m, w1 = compute("k8s-m", st), compute("k8s-w1", st)
    assert [(p.name, p.rr_client) for p in m.peers] == [("Node_172_30_0_11", True),
                                                        ("Node_172_30_0_12", False)]
    assert [(p.name, p.rr_client) for p in w1.peers] == [("Node_172_30_0_10", False),
                                                         ("Node_172_30_0_11", True)]
    assert [(p.name, p.rr_client) for p in compute("k8s-w0", st).peers] == [
        ("Node_172_30_0_10", False), ("Node_172_30_0_12", False)]
    # with the mesh back on, reflectors keep out of it; the plain worker meshes with nobody
    del st.bgp_configs["default"]
    assert [p.name for p in compute("k8s-w0", st).peers] == ["Node_172_30_0_10",
                                                             "Node_172_30_0_12"]


def test_an_update_state_calls_irrelevant_never_changes_any_nodes_configuration():
    """State.apply_event's False is a promise: compute() gives every node the same result."""
    st = walkthrough_state()
    names = sorted(st.nodes)

    def configs():
        return {n: compute(n, st) for n in names}

    def blk(rv, allocs):
        return IPAMBlock(metadata=Metadata(name="192.168.2.0-26", resource_version=rv), spec=IPAMBlock.Spec(
            cidr="192.168.2.0/26", affinity="host:k8s-m", allocations=list(range(len(allocs))),
            attributes=[AllocationAttribute(f"h{i}", {"node": o, **({"type": t} if t else {})})
                        for i, (o, t) in enumerate(allocs)]))

    updates = [
        ("IPAMBlock", blk("1", [("k8s-m", None)])),
        ("IPAMBlock", blk("2", [("k8s-m", None), ("k8s-m", None)])),
        ("IPAMBlock", blk("3", [("k8s-m", None), ("k8s-m", None), ("k8s-w0", "ipipTunnelAddress")])),
        ("IPAMBlock", blk("4", [("k8s-m", None), ("k8s-m", None), ("k8s-w0", "ipipTunnelAddress"),
                                ("k8s-w0", None)])),
        ("IPAMBlock", blk("5", [("k8s-m", None), ("k8s-w1", None), ("k8s-w0", "ipipTunnelAddress"),
                                ("k8s-w0", None)])),
    ]
    for name in names:
        n = st.nodes[name]
        updates.append(("Node", Node(metadata=Metadata(name=name, labels=n.metadata.labels, resource_version="9"),
                                     spec=n.spec)))
        updates.append(("Node", Node(metadata=Metadata(name=name, labels={**(n.metadata.labels or {}), "x": "y"}),
                                     spec=n.spec)))
    seen = []
    for kind, obj in updates:
        before = configs()
        relevant = st.apply_event(kind, obj.metadata.name, obj)
        seen.append(relevant)
        if not relevant:
            assert configs() == before, (kind, obj.metadata)
    # the first block and each Node's label change are changes; the own node's pod, the tunnel
    # address and a moved resourceVersion are not; a borrowed pod (and its owner moving) are
    assert seen[:5] == [True, False, False, True, True]
    assert seen[5:] == [False, True] * len(names)
    assert st.apply_event("IPAMBlock", "192.168.2.0-26", None) is True
    assert st.apply_event("IPAMBlock", "192.168.2.0-26", None) is False


def test_a_nodes_state_ignores_other_nodes_affinities_and_tunnel_addresses():
    """With State.node_name set, another node's block affinity and any Node's IPIP tunnel
    address are irrelevant (compute() for that node does not read them); its own affinity and
    a Node's BGP address, AS number and labels are not. False always means an unchanged result."""
    st = walkthrough_state()
    st.node_name = "k8s-w0"
    n = st.nodes["k8s-w1"]

    def w1(**bgp):
        spec = dataclasses.replace(n.spec, bgp=dataclasses.replace(n.spec.bgp, **bgp))
        return Node(metadata=Metadata(name="k8s-w1", labels=n.metadata.labels), spec=spec)

    updates = [
        ("BlockAffinity", aff("k8s-w1", "192.168.9.0/26"), False),
        ("BlockAffinity", aff("k8s-w1", "192.168.9.0/26", state="pending"), False),
        ("BlockAffinity", aff("k8s-w0", "192.168.8.0/26"), True),
        ("Node", w1(ipv4_ipip_tunnel_addr="192.168.9.1"), False),
        ("Node", w1(ipv4_ipip_tunnel_addr="192.168.9.1", as_number=65001), True),
        ("Node", w1(ipv4_ipip_tunnel_addr="192.168.9.1", as_number=65001, ipv4_address="172.30.0.99/24"), True),
    ]
    for kind, obj, want in updates:
        before = compute("k8s-w0", st)
        got = st.apply_event(kind, obj.metadata.name, obj)
        assert got is want, (kind, obj)
        if not got:
            assert compute("k8s-w0", st) == before
    assert st.apply_event("BlockAffinity", "k8s-w1-192.168.9.0/26", None) is False  # not ours
    assert st.apply_event("BlockAffinity", "k8s-w0-192.168.8.0/26", None) is True
