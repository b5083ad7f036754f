"""Topology files -> validated model: shipped labs load, bad input names file, line and field."""

from __future__ import annotations

import textwrap
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from testbed.lab.topology import Route, TopologyError, load, loads

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

BASE = """\
name: t1
segments:
  - name: lan0
    cidr: 172.30.0.0/24
nodes:
  - name: k8s-m
    role: control-plane
    address: 172.30.0.10
    segment: lan0
  - name: k8s-w0
    role: worker
    address: 172.30.0.11
    segment: lan0
"""


def err(text: str) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        loads(textwrap.dedent(text), file="x.yaml")
    return info.value


def test_walkthrough_file():
    t = load(ROOT / "topologies" / "walkthrough.yaml")
    assert t.name == "walkthrough"
    assert [n.name for n in t.nodes] == ["k8s-m", "k8s-w0", "k8s-w1"]
    assert t.control_plane.name == "k8s-m"
    assert t.etcd_endpoints == ["http://172.30.0.10:2379"]
    pool = t.calico.pool
    assert (pool.cidr, pool.block_size, pool.ipip_mode, pool.nat_outgoing) == (
        IPv4Network("192.168.0.0/16"), 24, "Always", True)
    assert t.external[0].address in IPv4Network("203.0.113.0/24")
    # nodes default-route to the in-lab router, never anywhere else
    assert t.routes_of("k8s-w0") == [Route(IPv4Network("0.0.0.0/0"), IPv4Address("172.30.0.1"))]
    assert t.routes_of("internet") == [Route(IPv4Network("0.0.0.0/0"), IPv4Address("203.0.113.1"))]
    env = t.calico_node_env()
    assert env["CALICO_IPV4POOL_BLOCK_SIZE"] == "24" and env["CALICO_IPV4POOL_IPIP"] == "Always"
    for n in t.nodes:
        assert n.address not in IPv4Network("10.0.0.0/8")


def test_datastore_setting_and_the_node_environment(tmp_path):
    """``calico.datastore`` (kubernetes or etcdv3; ``up --datastore`` overrides the file) sets
    calico-node's DATASTORE_TYPE and every node shell's, so calicoctl reads the lab's datastore."""
    from testbed.lab import state as labstate
    from testbed.lab.topology import DEFAULT_DATASTORE

    walk = ROOT / "topologies" / "walkthrough.yaml"
    # Calico's default datastore is the lab's: a topology that does not say runs kubernetes
    assert DEFAULT_DATASTORE == "kubernetes"
    assert load(walk).calico.datastore == "kubernetes"
    assert loads("name: x\nsegments: [{name: l, cidr: 172.30.9.0/24}]\n"
                 "nodes: [{name: m, role: control-plane, address: 172.30.9.10, segment: l}]\n"
                 ).calico.datastore == "kubernetes"
    for ds in ("kubernetes", "etcdv3"):
        t = load(walk, datastore=ds)
        assert t.calico.datastore == ds and t.calico_node_env()["DATASTORE_TYPE"] == ds
        assert labstate.node_env(labstate.plan(t), "k8s-w0", base={})["DATASTORE_TYPE"] == ds
    f = tmp_path / "t.yaml"
    f.write_text(walk.read_text().replace("calico:\n", "calico:\n  datastore: kubernetes\n"))
    assert load(f).calico.datastore == "kubernetes"
    assert load(f, datastore="etcdv3").calico.datastore == "etcdv3"
    with pytest.raises(TopologyError, match="consul"):
        load(walk, datastore="consul")
    f.write_text(walk.read_text().replace("calico:\n", "calico:\n  datastore: etcd\n"))
    with pytest.raises(TopologyError, match=r"calico\.datastore: 'etcd' is not one of kubernetes, etcdv3"):
        load(f)
    # a lab over several machines (hosts:) is etcd-only and says so; the default (kubernetes) is
    # refused there naming the line to write, as is kubernetes from the file or the flag
    multi = ROOT / "topologies" / "vagrant-multi.yaml"
    assert load(multi).calico.datastore == "etcdv3"  # said in the file
    f.write_text(multi.read_text().replace("  datastore: etcdv3\n", ""))
    with pytest.raises(TopologyError, match=r"t\.yaml:\d+: calico\.datastore: not given, so the default, "
                       r"kubernetes, .* write 'datastore: etcdv3' under 'calico:'"):
        load(f)
    assert load(f, datastore="etcdv3").calico.datastore == "etcdv3"  # the flag says it as well
    with pytest.raises(TopologyError, match="Kubernetes datastore is not implemented for a lab over several"):
        load(multi, datastore="kubernetes")
    f.write_text(multi.read_text().replace("datastore: etcdv3", "datastore: kubernetes"))
    with pytest.raises(TopologyError, match=r"calico\.datastore: the Kubernetes datastore is not implemented"):
        load(f)


def test_mesh4_has_six_sessions():
    t = load(ROOT / "topologies" / "mesh4.yaml")
    assert len(t.nodes) == 4 and t.expected_bgp_sessions() == 6


def test_crosssubnet_routed():
    t = load(ROOT / "topologies" / "crosssubnet.yaml")
    assert t.calico.pool.ipip_mode == "CrossSubnet"
    assert t.routes_of("k8s-w1")[0].via == IPv4Address("172.30.9.1")
    assert t.interface_of("r0") == [("eth0", "lan0", IPv4Address("172.30.8.1"), 24),
                                    ("eth1", "lan1", IPv4Address("172.30.9.1"), 24),
                                    ("eth2", "inet", IPv4Address("203.0.113.1"), 24)]


def test_defaults_and_name_override():
    t = loads(BASE, name="other")
    assert t.name == "other"
    assert t.calico.pool.cidr == IPv4Network("192.168.0.0/16")
    assert t.calico.pool.block_size == 26 and t.calico.bgp.mesh and t.calico.bgp.as_number == 64512
    # no router: an on-link route to Calico's pod gateway (proxy ARP answers only with a route)
    assert t.routes_of("k8s-m") == [Route(IPv4Network("169.254.1.1/32"), None)]


def test_router_chain_routes():
    t = loads(textwrap.dedent("""\
        name: chain
        segments:
          - {name: a, cidr: 172.30.1.0/24}
          - {name: b, cidr: 172.30.2.0/24, gateway: 172.30.2.1}
          - {name: c, cidr: 172.30.3.0/24}
        routers:
          - name: r1
            interfaces: [{segment: a, address: 172.30.1.1}, {segment: b, address: 172.30.2.1}]
          - name: r2
            interfaces: [{segment: b, address: 172.30.2.2}, {segment: c, address: 172.30.3.1}]
        nodes:
          - {name: m, role: control-plane, address: 172.30.1.10, segment: a}
          - {name: w, address: 172.30.3.10, segment: c}
        """))
    assert t.routes_of("r1") == [Route(IPv4Network("172.30.3.0/24"), IPv4Address("172.30.2.2"))]
    assert t.routes_of("r2") == [Route(IPv4Network("172.30.1.0/24"), IPv4Address("172.30.2.1"))]
    assert t.routes_of("w") == [Route(IPv4Network("0.0.0.0/0"), IPv4Address("172.30.3.1"))]


def test_two_routers_need_an_explicit_gateway():
    e = err("""\
        name: chain
        segments:
          - {name: a, cidr: 172.30.1.0/24}
          - {name: b, cidr: 172.30.2.0/24}
        routers:
          - {name: r1, interfaces: [{segment: a, address: 172.30.1.1}, {segment: b, address: 172.30.2.1}]}
          - {name: r2, interfaces: [{segment: a, address: 172.30.1.2}, {segment: b, address: 172.30.2.2}]}
        nodes:
          - {name: m, role: control-plane, address: 172.30.1.10, segment: a}
        """)
    assert e.field == "segments[0]" and "gateway" in str(e) and e.line == 3


@pytest.mark.parametrize("text, line, field, words", [
    ("name: t1\nsegments: [\n", 3, "", "malformed YAML"),
    (BASE + "colour: red\n", 14, "colour", "unknown field"),
    (BASE.replace("    segment: lan0\n  - name: k8s-w0", "    segment: lan0\n    zone: a\n  - name: k8s-w0"),
     10, "nodes[0].zone", "unknown field"),
    (BASE.replace("k8s-w0", "k8s-m"), 10, "nodes[1].name", "duplicate name"),
    (BASE.replace("172.30.0.11", "172.30.1.11"), 12, "nodes[1].address", "outside its segment"),
    (BASE.replace("cidr: 172.30.0.0/24", "cidr: 172.30.0.0/33"), 4, "segments[0].cidr", "not an IPv4 CIDR"),
    (BASE.replace("cidr: 172.30.0.0/24", "cidr: 172.30.0.1/24"), 4, "segments[0].cidr", "host bits"),
    (BASE.replace("cidr: 172.30.0.0/24", "cidr: 10.1.0.0/24").replace("172.30.0.1", "10.1.0.1"),
     4, "segments[0].cidr", "10.0.0.0/8"),
    (BASE.replace("control-plane", "master"), 7, "nodes[0].role", "not one of"),
    (BASE.replace("control-plane", "worker"), 5, "nodes", "exactly one"),
    (BASE.replace("172.30.0.11", "172.30.0.10"), 12, "nodes[1].address", "already used"),
    (BASE.replace("segment: lan0\n  - name: k8s-w0", "segment: lan9\n  - name: k8s-w0"), 9,
     "nodes[0].segment", "unknown segment"),
    (BASE.replace("name: t1", "name: T_1"), 1, "name", "invalid name"),
    (BASE.replace("name: lan0", "name: lo").replace("segment: lan0", "segment: lo"), 3,
     "segments[0].name", "reserved"),
    (BASE + "calico:\n  pool:\n    blockSize: 40\n", 16, "calico.pool.blockSize", "out of range"),
    (BASE + "calico:\n  pool:\n    cidr: 172.30.0.0/16\n", 16, "calico.pool.cidr", "overlaps segment"),
    (BASE + "calico:\n  pool:\n    ipipMode: Always\n    vxlanMode: Always\n", 17,
     "calico.pool.vxlanMode", "both"),
    (BASE + "calico:\n  bgp:\n    routeReflectors: [k8s-x]\n", 16, "calico.bgp.routeReflectors[0]",
     "unknown node"),
    (BASE + "calico:\n  pool:\n    natOutgoing: yes please\n", 16, "calico.pool.natOutgoing",
     "true or false"),
])
def test_errors_name_line_and_field(text, line, field, words):
    e = err(text)
    assert e.file == "x.yaml" and e.line == line and e.field == field, str(e)
    assert words in str(e) and str(e).startswith("x.yaml")


def test_overlapping_segments():
    e = err(BASE.replace("segments:\n", "segments:\n  - {name: lan1, cidr: 172.30.0.128/25}\n"))
    assert e.field == "segments[1].cidr" and "overlaps segment lan1" in str(e) and e.line == 5


def test_duplicate_yaml_key():
    e = err(BASE.replace("    role: worker\n", "    role: worker\n    role: worker\n"))
    assert e.field == "nodes[1].role" and e.line == 12 and "duplicate key" in str(e)


def test_external_host_must_be_on_documentation_prefix():
    text = BASE + textwrap.dedent("""\
        external:
          - {name: inet, address: 172.30.0.99, segment: lan0}
        """)
    e = err(text)
    assert e.field == "external[0].segment" and "documentation prefix" in str(e) and e.line == 15


def test_workload_for_unknown_node(tmp_path):
    (tmp_path / "pod.yaml").write_text(textwrap.dedent("""\
        apiVersion: v1
        kind: Pod
        metadata: {name: p}
        spec: {nodeName: k8s-w9, containers: [{name: c, image: nginx}]}
        """))
    (tmp_path / "lab.yaml").write_text(BASE + "workloads:\n  - file: pod.yaml\n")
    with pytest.raises(TopologyError) as info:
        load(tmp_path / "lab.yaml")
    assert info.value.field == "workloads[0].file" and "k8s-w9" in str(info.value)
    assert info.value.line == 15


def test_workloads_file_and_inline(tmp_path):
    (tmp_path / "dep.yaml").write_text(textwrap.dedent("""\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: nginx}
        spec:
          replicas: 2
          template: {spec: {nodeName: k8s-w0, containers: [{name: c, image: nginx}]}}
        """))
    (tmp_path / "lab.yaml").write_text(BASE + textwrap.dedent("""\
        workloads:
          - dep.yaml
          - manifest: {apiVersion: v1, kind: Namespace, metadata: {name: demo}}
        """))
    t = load(tmp_path / "lab.yaml")
    assert [w.documents[0]["kind"] for w in t.workloads] == ["Deployment", "Namespace"]
    assert t.workloads[1].source == "<inline workloads[1]>"


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(TopologyError) as info:
        load(tmp_path / "nope.yaml")
    assert "cannot read" in str(info.value)


def test_mode_topologies():
    """The modes' labs: VXLAN (BGP off, calico-vxlan.yaml), no encapsulation, CrossSubnet for both."""
    want = {"walkthrough": ("Always", "Never", "bird"), "vxlan": ("Never", "Always", "vxlan"),
            "noencap": ("Never", "Never", "bird"), "crosssubnet": ("CrossSubnet", "Never", "bird"),
            "crosssubnet-vxlan": ("Never", "CrossSubnet", "vxlan")}
    for name, (ipip, vxlan, backend) in want.items():
        t = load(ROOT / "topologies" / f"{name}.yaml")
        env = t.calico_node_env()
        assert (t.calico.pool.ipip_mode, t.calico.pool.vxlan_mode, env["CALICO_NETWORKING_BACKEND"]) == (
            ipip, vxlan, backend), name
        assert env["CALICO_IPV4POOL_VXLAN"] == vxlan and env["CALICO_IPV4POOL_IPIP"] == ipip
        assert [e.name for e in t.external] == ["internet"], name  # the walkthrough's four flows run there
        assert {n.name for n in t.nodes} == {"k8s-m", "k8s-w0", "k8s-w1"}, name
    for name in ("crosssubnet", "crosssubnet-vxlan"):
        t = load(ROOT / "topologies" / f"{name}.yaml")
        assert t.node("k8s-m").segment == t.node("k8s-w0").segment != t.node("k8s-w1").segment
    with pytest.raises(TopologyError, match="Cannot enable both VXLAN and IPIP on the same IPPool"):
        loads(BASE + "calico:\n  pool: {ipipMode: Always, vxlanMode: CrossSubnet}\n")
