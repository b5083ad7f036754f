"""calico-node in VXLAN mode with BGP off (``CALICO_NETWORKING_BACKEND=vxlan``), two node
namespaces and a real etcd: Felix alone routes the pods, from the IPAM blocks, over the
kernel's vxlan.calico (calico.md section 7), then CrossSubnet and VXLAN off, live.

Pods are namespaces wired by the test (as in test_agent_twonode); no route is installed by
hand: every cross-node route here is Felix's.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from agent.felix.encap import vtep_mac
from testbed.capture import pcapassert as pa
from testbed.poll import wait_for
from tests.netns.agent_support import W0, W1, Cluster, running
from tests.netns.felix_support import ping_until_ok, run, stop_capture_when

pytestmark = pytest.mark.netns


class VxlanCluster(Cluster):
    """Two agents with the default pool in VXLAN Always and no BGP (calico-vxlan.yaml)."""

    def env(self, name: str, **extra: str) -> dict[str, str]:
        env = super().env(name)
        env.update({"CALICO_IPV4POOL_IPIP": "Never", "CALICO_IPV4POOL_VXLAN": "Always",
                    "CALICO_NETWORKING_BACKEND": "vxlan"})
        env.update(extra)
        return env


@pytest.fixture
def cluster():
    with running(VxlanCluster, "tcpdump", "ethtool") as c:
        yield c


def _ipam(c: Cluster):
    from ipam import IPAM

    return IPAM(c.client)


def block_of(ip: str) -> str:
    a, b, cc, d = ip.split(".")
    return f"{a}.{b}.{cc}.{int(d) // 64 * 64}/26"


def capture(c: Cluster, ns: str, path: str, *filt: str) -> subprocess.Popen:
    p = c.topo.spawn(ns, "tcpdump", "-ni", "eth0", "--immediate-mode", "-U", "-w", path, *filt,
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    p.stderr.readline()  # "listening on eth0 ..."
    return p


def test_vxlan_mode_without_bgp_then_crosssubnet_then_off(cluster, tmp_path):
    c = cluster
    c.start("w0", c.w0)
    c.start("w1", c.w1)
    c.wait_ready("w0", c.w0)
    c.wait_ready("w1", c.w1)
    # Felix can be ready before calico-node has its VTEP address from IPAM (Calico allocates
    # tunnel addresses beside Felix): vxlan.calico follows once the address is in the Node
    s0, _ = [wait_for(lambda ns=ns: c.status(ns), lambda s: s.get("vxlan") is not None, timeout=15,
                      what=f"vxlan.calico in {name}'s Felix status") for name, ns in (("w0", c.w0), ("w1", c.w1))]
    assert s0["bgp"] is None and s0["encap"] == "vxlan" and s0["datapath"] == "kernel"

    # Start-up: VXLAN tunnel addresses from IPAM, no IPIP address, the device as Felix makes it.
    n0, n1 = c.node("w0"), c.node("w1")
    tun0, tun1 = n0.spec.ipv4_vxlan_tunnel_addr, n1.spec.ipv4_vxlan_tunnel_addr
    assert tun0 and tun1 and n0.spec.bgp.ipv4_ipip_tunnel_addr is None
    attrs = c.ds.call(lambda: _ipam(c).ip_info(tun0))
    assert attrs["handle_id"] == "vxlan-tunnel-addr-w0" and attrs["attrs"]["type"] == "vxlanTunnelAddress"
    assert s0["vxlan"]["address"] == tun0 and s0["vxlan"]["mac"] == vtep_mac("w0")
    link = run("ip", "-d", "link", "show", "vxlan.calico", netns=c.w0)
    assert "mtu 1450" in link and f"link/ether {vtep_mac('w0')}" in link, link
    assert re.search(rf"vxlan id 4096 local {W0} dev eth0 .*dstport 4789 nolearning", link), link
    assert run("ip", "-4", "-o", "addr", "show", "dev", "vxlan.calico", netns=c.w0).split()[3] == f"{tun0}/32"
    assert "tx-checksumming: off" in run("ethtool", "-k", "vxlan.calico", netns=c.w0)
    with open(os.path.join(c.env("w0")["CALICO_VAR_LIB_DIR"], "mtu")) as f:
        assert f.read().strip() == "1450"
    assert run("ip", "-o", "link", "show", "tunl0", netns=c.w0, check=False).strip() == ""  # no IPIP at all

    # Pods: Felix routes the remote block over vxlan.calico and blackholes its own (no BGP here).
    pa_ns, ipa = c.add_pod(c.w0, "w0", "pod-a", "cali0a0000001")
    pb_ns, ipb = c.add_pod(c.w1, "w1", "pod-b", "cali0b0000001")
    for ns in (pa_ns, pb_ns):
        run("ip", "link", "set", "eth0", "mtu", "1450", netns=ns)
    want0 = [f"{block_of(ipb)} via {tun1} dev vxlan.calico onlink", f"blackhole {block_of(ipa)} proto 80",
             f"{ipa} dev cali0a0000001 scope link"]
    routes0 = wait_for(lambda: run("ip", "-4", "route", netns=c.w0), lambda r: all(w in r for w in want0),
                       timeout=15, what=f"VXLAN routes on w0: {want0}")
    assert "proto bird" not in routes0
    neigh = run("ip", "neigh", "show", "dev", "vxlan.calico", netns=c.w0)
    assert f"{tun1} lladdr {vtep_mac('w1')} PERMANENT" in neigh, neigh
    fdb = run("bridge", "fdb", "show", "dev", "vxlan.calico", netns=c.w0)
    assert f"{vtep_mac('w1')} dst {W1} self permanent" in fdb, fdb
    filt = run("iptables-save", "-t", "filter", netns=c.w0)
    assert "Allow IPv4 VXLAN packets from allowed hosts" in filt and "cali40all-vxlan-net" in filt
    assert W1 in run("ipset", "list", "cali40all-vxlan-net", netns=c.w0)

    # A ping pod-a -> pod-b is VXLAN on the wire: UDP 4789, VNI 4096, node addresses outside,
    # the VTEP MACs and the pod addresses inside.
    pcap = str(tmp_path / "w1-eth0-vxlan.pcap")
    cap = capture(c, c.w1, pcap)
    ping_until_ok(pa_ns, ipb)
    stop_capture_when(cap, pcap, pa.vxlan(W0, W1, ipa, ipb, vni=4096), pa.vxlan(W1, W0, ipb, ipa, vni=4096))
    pa.assert_vxlan(pcap, outer_src=W0, outer_dst=W1, inner_src=ipa, inner_dst=ipb, vni=4096,
                    inner_mac_src=vtep_mac("w0"), inner_mac_dst=vtep_mac("w1"), no_plain="192.168.0.0/16")
    pa.assert_vxlan(pcap, outer_src=W1, outer_dst=W0, inner_src=ipb, inner_dst=ipa, vni=4096,
                    inner_mac_src=vtep_mac("w1"), inner_mac_dst=vtep_mac("w0"))

    # CrossSubnet: both nodes share 172.31.9.0/24, so the remote block goes unencapsulated.
    def set_pool(**modes: str) -> None:
        def upd():
            p = c.client.get("IPPool", "default-ipv4-ippool")
            for k, v in modes.items():
                setattr(p.spec, k, v)
            c.client.update(p)
        c.ds.call(upd)

    set_pool(vxlan_mode="CrossSubnet")
    wait_for(lambda: run("ip", "-4", "route", netns=c.w0),
             lambda r: f"{block_of(ipb)} via {W1} dev eth0 proto 80 onlink" in r, timeout=10,
             what="CrossSubnet no-encap route on w0")
    pcap = str(tmp_path / "w1-eth0-routed.pcap")
    cap = capture(c, c.w1, pcap)
    ping_until_ok(pa_ns, ipb)
    stop_capture_when(cap, pcap, pa.plain(ipa, ipb), pa.plain(ipb, ipa))
    pa.assert_routed(pcap, ipa, ipb)

    # VXLAN off: the device goes (with its routes), the tunnel address is released, MTU file back.
    set_pool(vxlan_mode="Never")
    wait_for(lambda: run("ip", "-o", "link", "show", "vxlan.calico", netns=c.w0, check=False),
             lambda out: out.strip() == "", timeout=10, what="vxlan.calico deleted on w0")
    wait_for(lambda: c.node("w0").spec.ipv4_vxlan_tunnel_addr, lambda a: a is None, timeout=10,
             what="w0's VXLAN tunnel address released")
    wait_for(lambda: run("ip", "-4", "route", netns=c.w0),
             lambda r: "proto 80" not in r and "vxlan.calico" not in r, timeout=10,
             what="w0 without the VXLAN manager's routes")
    assert c.ds.call(lambda: _ipam(c).ip_info(tun0))["in_use"] is False
    mtu_file = os.path.join(c.env("w0")["CALICO_VAR_LIB_DIR"], "mtu")
    wait_for(lambda: open(mtu_file).read().strip(), lambda m: m == "1500", timeout=5, what="mtu file 1500")
    assert "cali40all-vxlan-net" not in run("iptables-save", "-t", "filter", netns=c.w0)
