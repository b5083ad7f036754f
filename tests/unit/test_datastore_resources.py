"""Resources: calicoctl shapes, strict decoding, validation naming the field, keys."""

import json

import pytest

from datastore import errors
from datastore.names import veth_name, workload_endpoint_name
from datastore.resources import (
    BGPPeer,
    BlockAffinity,
    IPAMBlock,
    IPAMConfig,
    IPAMHandle,
    IPPool,
    Metadata,
    Node,
    WorkloadEndpoint,
    from_document,
    kind_for_key,
    resolve_kind,
)
from datastore.selector import SelectorError, parse_selector

pytestmark = pytest.mark.unit


def pool(**spec) -> IPPool:
    p = IPPool(metadata=Metadata(name="p1"), spec=IPPool.Spec(**spec))
    p.apply_defaults()
    return p


def test_ippool_defaults_and_shape_match_calicoctl():
    p = pool(cidr="192.168.0.0/16", ipip_mode="Always", nat_outgoing=True)
    p.validate()
    assert p.to_dict() == {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": "p1"},
        "spec": {
            "allowedUses": ["Workload", "Tunnel"],
            "blockSize": 26,
            "cidr": "192.168.0.0/16",
            "ipipMode": "Always",
            "natOutgoing": True,
            "nodeSelector": "all()",
            "vxlanMode": "Never",
        },
    }


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"cidr": "192.168.0.0/33"}, "spec.cidr", "not a valid CIDR"),
        ({"cidr": "banana"}, "spec.cidr", "not a valid CIDR"),
        ({"cidr": "192.168.0.0/16", "block_size": 19}, "spec.blockSize", "between 20 and 32"),
        ({"cidr": "192.168.0.0/24", "block_size": 20}, "spec.blockSize", "larger than the pool"),
        ({"cidr": "192.168.0.0/16", "ipip_mode": "Sometimes"}, "spec.ipipMode", "one of"),
        ({"cidr": "192.168.0.0/16", "ipip_mode": "Always", "vxlan_mode": "Always"}, "spec.vxlanMode", "both"),
        ({"cidr": "192.168.0.0/16", "node_selector": "a =="}, "spec.nodeSelector", "selector"),
    ],
)
def test_ippool_validation_names_the_field(spec, field, words):
    with pytest.raises(errors.ValidationError) as exc:
        pool(**spec).validate()
    assert exc.value.field == f"IPPool(p1).{field}"
    assert words in str(exc.value)


def test_strict_decoding_names_unknown_fields_and_types():
    with pytest.raises(errors.ValidationError, match=r"IPPool\(x\)\.spec\.blokSize: unknown field"):
        from_document({"kind": "IPPool", "metadata": {"name": "x"}, "spec": {"blokSize": 3}})
    with pytest.raises(errors.ValidationError, match=r"IPPool\(x\)\.spec\.natOutgoing: must be true or false"):
        from_document({"kind": "IPPool", "metadata": {"name": "x"}, "spec": {"natOutgoing": "yes"}})
    with pytest.raises(errors.ValidationError, match="unknown resource type 'Pool'"):
        from_document({"kind": "Pool", "metadata": {"name": "x"}})
    with pytest.raises(errors.ValidationError, match=r"apiVersion"):
        from_document({"apiVersion": "v1", "kind": "IPPool", "metadata": {"name": "x"}})


def test_node_roundtrip_uses_calico_field_names():
    doc = {
        "apiVersion": "projectcalico.org/v3",
        "kind": "Node",
        "metadata": {"name": "k8s-w0"},
        "spec": {"bgp": {"ipv4Address": "172.16.0.11/24", "ipv4IPIPTunnelAddr": "192.168.1.0"},
                 "orchRefs": [{"nodeName": "k8s-w0", "orchestrator": "k8s"}]},
    }
    node = from_document(doc)
    assert isinstance(node, Node)
    assert node.spec.bgp.ipv4_ipip_tunnel_addr == "192.168.1.0"
    assert str(node.ipv4().ip) == "172.16.0.11"
    assert node.to_dict() == doc


def test_bgppeer_peer_ip_forms_and_validation():
    peer = BGPPeer(metadata=Metadata(name="tor"), spec=BGPPeer.Spec(peer_ip="172.16.0.1:1179", as_number=64513))
    peer.validate()
    assert peer.peer_address() == ("172.16.0.1", 1179)
    bad = BGPPeer(metadata=Metadata(name="tor"), spec=BGPPeer.Spec(peer_ip="172.16.0.300", as_number=1))
    with pytest.raises(errors.ValidationError, match=r"spec\.peerIP"):
        bad.validate()
    noas = BGPPeer(metadata=Metadata(name="tor"), spec=BGPPeer.Spec(peer_ip="172.16.0.1"))
    with pytest.raises(errors.ValidationError, match=r"spec\.asNumber"):
        noas.validate()


def test_ipam_kinds_use_calico_etcd_layout_and_model_format():
    blk = IPAMBlock(spec=IPAMBlock.Spec(cidr="10.0.0.0/26", affinity="host:node1",
                                        allocations=[0, None], unallocated=[1]))
    assert blk.key() == "/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26"
    stored = json.loads(blk.encode_value())
    assert stored["affinity"] == "host:node1" and stored["allocations"] == [0, None]
    back = IPAMBlock.decode_value(blk.key(), blk.encode_value(), 7)
    assert back.metadata.name == "10-0-0-0-26" and back.revision == 7 and back.spec == blk.spec

    aff = BlockAffinity(spec=BlockAffinity.Spec(state="confirmed", node="node1", cidr="10.0.0.0/26"))
    assert aff.key() == "/calico/ipam/v2/host/node1/ipv4/block/10.0.0.0-26"
    assert json.loads(aff.encode_value()) == {"state": "confirmed", "deleted": False}
    back = BlockAffinity.decode_value(aff.key(), aff.encode_value(), 3)
    assert back.metadata.name == "node1-10-0-0-0-26" and back.spec.node == "node1"
    assert BlockAffinity.key_for("node-1-10-0-0-0-26") == "/calico/ipam/v2/host/node-1/ipv4/block/10.0.0.0-26"

    h = IPAMHandle(metadata=Metadata(name="k8s-pod-network.abc"),
                   spec=IPAMHandle.Spec(handle_id="k8s-pod-network.abc", block={"10.0.0.0/26": 1}))
    assert h.key() == "/calico/ipam/v2/handle/k8s-pod-network.abc"
    assert IPAMConfig().key() == "/calico/ipam/v2/config"

    assert kind_for_key("/calico/ipam/v2/host/node1/ipv4/block/10.0.0.0-26")[0] is BlockAffinity
    assert kind_for_key("/calico/resources/v3/projectcalico.org/workloadendpoints/default/n-k8s-p-eth0") == \
        (WorkloadEndpoint, "default", "n-k8s-p-eth0")
    assert kind_for_key("/calico/felix/v2/no-region/host/x/status") is None


def test_ipamconfig_rules():
    cfg = IPAMConfig(metadata=Metadata(name="default"), spec=IPAMConfig.Spec(auto_allocate_blocks=False))
    with pytest.raises(errors.ValidationError, match="autoAllocateBlocks"):
        cfg.validate()
    cfg = IPAMConfig(metadata=Metadata(name="default"), spec=IPAMConfig.Spec(max_blocks_per_host=4))
    with pytest.raises(errors.ValidationError, match="requires strictAffinity"):
        cfg.validate()


def test_kind_aliases():
    assert resolve_kind("ippools") is IPPool
    assert resolve_kind("wep") is WorkloadEndpoint
    assert resolve_kind("IPAMBlock") is IPAMBlock
    with pytest.raises(errors.ValidationError, match="unknown resource type"):
        resolve_kind("pods")


def test_names_match_calico_vectors():
    assert veth_name("default", "nginx") == "calic440f455693"
    assert veth_name("test", "test-pod") == "cali998e5f7d75d"
    assert workload_endpoint_name("node1", "k8s", "pod-1", "eth0") == "node1-k8s-pod--1-eth0"


def test_selectors():
    labels = {"role": "rr", "zone": "a"}
    assert parse_selector("all()").matches({})
    assert parse_selector("").matches(labels)
    assert parse_selector("has(role) && zone == 'a'").matches(labels)
    assert not parse_selector("!has(role)").matches(labels)
    assert parse_selector("zone in {'a', 'b'} || role == 'x'").matches(labels)
    assert parse_selector("zone not in {'b'}").matches(labels)
    assert not parse_selector("(role != 'rr')").matches(labels)
    # Calico's string operators; a missing label never matches them
    rack = {"rack": "eu-west-r12"}
    assert parse_selector("rack contains 'west'").matches(rack)
    assert parse_selector("rack starts with 'eu-' && rack ends with 'r12'").matches(rack)
    assert not parse_selector("rack starts with 'us-'").matches(rack)
    assert not parse_selector("rack ends with 'r1'").matches(rack)
    assert not parse_selector("other contains ''").matches(rack)
    for bad in ("role ==", "has(", "role ~ 'x'", "a == 'b' &&", "rack starts 'eu'", "rack contains eu"):
        with pytest.raises(SelectorError):
            parse_selector(bad)


def test_felixconfiguration_intervals_are_go_durations():
    from datastore.resources import FelixConfiguration

    ok = FelixConfiguration(metadata=Metadata(name="default"),
                            spec=FelixConfiguration.Spec(route_refresh_interval="1m30s"))
    ok.validate()
    bad = FelixConfiguration(metadata=Metadata(name="default"),
                             spec=FelixConfiguration.Spec(route_refresh_interval="90"))
    with pytest.raises(errors.ValidationError, match="routeRefreshInterval.*missing unit"):
        bad.validate()


def test_bgppeer_selector_rules():
    ok = BGPPeer(metadata=Metadata(name="rr"), spec=BGPPeer.Spec(node_selector="all()",
                                                                 peer_selector="route-reflector == 'true'"))
    ok.validate()
    both = BGPPeer(metadata=Metadata(name="rr"), spec=BGPPeer.Spec(peer_selector="has(x)", peer_ip="1.2.3.4",
                                                                   as_number=1))
    with pytest.raises(errors.ValidationError, match=r"spec\.peerIP: must be empty"):
        both.validate()
    asn = BGPPeer(metadata=Metadata(name="rr"), spec=BGPPeer.Spec(peer_selector="has(x)", as_number=1))
    with pytest.raises(errors.ValidationError, match=r"spec\.asNumber: must be empty"):
        asn.validate()
    rev = BGPPeer(metadata=Metadata(name="rr"), spec=BGPPeer.Spec(peer_selector="has(x)", reverse_peering="No"))
    with pytest.raises(errors.ValidationError, match=r"spec\.reversePeering"):
        rev.validate()
