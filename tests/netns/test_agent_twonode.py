"""The whole calico-node agent in two node namespaces with a real etcd.

Node namespaces w0 and w1 share a link; etcd runs inside w0 on its node
address (as in a lab). Pods are namespaces wired by the test (the CNI plugin
is not under test here); their WorkloadEndpoints and IPs come from the real
datastore and IPAM. Cross-node block routes are installed by the test
(``via <node> dev tunl0 onlink``, the BGP speaker's job), so this exercises
Felix alone: start-up, tunl0, workload routes, iptables/NAT, health, restart.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from testbed.capture import pcapassert
from testbed.poll import wait_for
from tests.netns.agent_support import W0, W1, running, strip_counters
from tests.netns.felix_support import echo_pair, ping_until_ok, run, stop_capture_when
from tests.netns.felix_support import say as echo_say

pytestmark = pytest.mark.netns

EXT = "203.0.113.9"


@pytest.fixture
def cluster():
    with running() as c:
        yield c


def _dupes(text: str) -> list[str]:
    lines = [ln for ln in text.splitlines() if ln.startswith("-A ")]
    return sorted({ln for ln in lines if lines.count(ln) > 1})


def _snapshot(ns: str) -> tuple[str, str, str]:
    return (run("ip", "-4", "route", netns=ns), run("iptables-save", "-t", "filter", netns=ns),
            run("iptables-save", "-t", "nat", netns=ns))


def test_two_node_agent_end_to_end(cluster, tmp_path):
    c = cluster
    c.start("w0", c.w0)
    c.start("w1", c.w1)
    s0 = c.wait_ready("w0", c.w0)
    s1 = c.wait_ready("w1", c.w1)

    # Start-up: Nodes registered with autodetected CIDRs and tunnel addresses; one pool; datastore ready.
    n0, n1 = c.node("w0"), c.node("w1")
    assert n0.spec.bgp.ipv4_address == f"{W0}/24" and n1.spec.bgp.ipv4_address == f"{W1}/24"
    # this machine's kernel has no ipip: the in-kernel tc-BPF tunnel, pinned where the env says
    assert s0["datapath"] == "bpf" and s0["datapath_note"] is None, s0
    assert s0["tunnel_address"] == n0.spec.bgp.ipv4_ipip_tunnel_addr
    assert sorted(os.listdir(os.path.join(c.env("w0")["CALICO_TUNNEL_BPFFS"], "calico", "ipip"))) == [
        "cali_ipip_dec", "cali_ipip_enc", "cali_ipip_hosts", "cali_ipip_nodes", "cali_ipip_stats"]
    assert s1["tunnel_address"] == n1.spec.bgp.ipv4_ipip_tunnel_addr
    pools = c.ds.call(lambda: c.client.list("IPPool"))
    assert [(p.metadata.name, p.spec.cidr, p.spec.ipip_mode, p.spec.nat_outgoing) for p in pools] == [
        ("default-ipv4-ippool", "192.168.0.0/16", "Always", True)]
    assert c.ds.call(lambda: c.client.get("ClusterInformation", "default")).spec.datastore_ready is True
    env0 = c.env("w0")
    with open(os.path.join(env0["CALICO_VAR_LIB_DIR"], "nodename")) as f:
        assert f.read() == "w0"
    with open(os.path.join(env0["CALICO_VAR_LIB_DIR"], "mtu")) as f:
        assert f.read().strip() == "1480"
    with open(os.path.join(env0["CNI_NET_DIR"], "10-calico.conflist")) as f:
        conf = json.load(f)
    assert conf["plugins"][0]["etcd_endpoints"] == c.etcd and conf["plugins"][1]["type"] == "portmap"
    assert os.path.islink(os.path.join(env0["CNI_BIN_DIR"], "calico-ipam"))
    tun = run("ip", "-4", "-o", "addr", "show", "dev", "tunl0", netns=c.w0).split()
    assert tun[3] == f"{n0.spec.bgp.ipv4_ipip_tunnel_addr}/32"

    # Pods; Felix programs their /32 routes.
    pa, ipa = c.add_pod(c.w0, "w0", "pod-a", "cali0a0000001")
    pb, ipb = c.add_pod(c.w1, "w1", "pod-b", "cali0b0000001")
    wait_for(lambda: run("ip", "-4", "route", netns=c.w0), lambda r: f"{ipa} dev cali0a0000001 scope link" in r,
             timeout=10, what="pod-a route on w0")
    wait_for(lambda: run("ip", "-4", "route", netns=c.w1), lambda r: f"{ipb} dev cali0b0000001 scope link" in r,
             timeout=10, what="pod-b route on w1")
    # The BGP speaker's routes (installed by hand here): remote block via the node over tunl0.
    block_a = ipa.rsplit(".", 1)[0] + f".{int(ipa.rsplit('.', 1)[1]) // 64 * 64}/26"
    block_b = ipb.rsplit(".", 1)[0] + f".{int(ipb.rsplit('.', 1)[1]) // 64 * 64}/26"
    run("ip", "route", "add", block_b, "via", W1, "dev", "tunl0", "onlink", netns=c.w0)
    run("ip", "route", "add", block_a, "via", W0, "dev", "tunl0", "onlink", netns=c.w1)
    ping_until_ok(pa, ipb)
    filt = run("iptables-save", "-t", "filter", netns=c.w0)
    assert "-A cali-from-wl-dispatch -i cali0a0000001" in filt and "cali-pri-kns.default" in filt

    # NAT outgoing: a pod reaching an address outside every pool is masqueraded to its node's address.
    ext = c.topo.netns("x")
    run("ip", "link", "add", "eth1", "netns", c.w0, "type", "veth", "peer", "name", "eth0", "netns", ext)
    run("ip", "-n", c.w0, "addr", "add", "203.0.113.1/24", "dev", "eth1")
    run("ip", "-n", c.w0, "link", "set", "eth1", "up")
    run("ip", "-n", ext, "addr", "add", f"{EXT}/24", "dev", "eth0")
    run("ip", "-n", ext, "link", "set", "eth0", "up")
    pcap = str(tmp_path / "x-eth0.pcap")
    cap = c.topo.spawn(ext, "tcpdump", "-ni", "eth0", "--immediate-mode", "-U", "-w", pcap, "icmp[icmptype] == 8",
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    cap.stderr.readline()
    ping_until_ok(pa, EXT)
    # SNAT: the request reaches the outside host from w0's address there, not the pod's
    stop_capture_when(cap, pcap, pcapassert.plain("203.0.113.1", EXT) & pcapassert.icmp(8))
    pcapassert.assert_none(pcap, pcapassert.plain(ipa, EXT))

    # Drift repair within the (1 s) refresh interval.
    run("ip", "route", "del", f"{ipa}/32", netns=c.w0)
    run("iptables", "-D", "INPUT", "1", netns=c.w0)
    wait_for(lambda: run("ip", "-4", "route", netns=c.w0), lambda r: f"{ipa} dev cali0a0000001" in r,
             timeout=5, what="pod route restored by resync")
    wait_for(lambda: run("iptables-save", "-t", "filter", netns=c.w0), lambda t: "-j cali-INPUT" in t,
             timeout=5, what="INPUT hook restored by resync")

    # Restart (SIGTERM) and kill -9: established flows survive; nothing duplicated.
    cli = echo_pair(pb, pa, ipb, 7007, timeout=90)  # TCP backoff after a slow restart

    def say(word: str) -> str:
        return echo_say(cli, word)

    assert say("hello") == "hello"
    before = _snapshot(c.w0)
    programs = run("tc", "filter", "show", "dev", "eth0", "ingress", netns=c.w0)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        c.topo.stop(c.agents["w0"], sig)
        c.start("w0", c.w0)
        c.wait_ready("w0", c.w0)
        assert say(f"after-{sig.name}") == f"after-{sig.name}"
        after = _snapshot(c.w0)
        assert after[0] == before[0], "routes changed across the restart"
        assert strip_counters(after[1]) == strip_counters(before[1])
        assert strip_counters(after[2]) == strip_counters(before[2])
        assert _dupes(after[1]) == [] and _dupes(after[2]) == []
        assert run("iptables-save", netns=c.w0).count("-j cali-INPUT") == 1
        assert run("tc", "filter", "show", "dev", "eth0", "ingress", netns=c.w0) == programs  # adopted

    # Endpoint deleted: its route and chains go away.
    c.ds.call(lambda: c.client.delete("WorkloadEndpoint", "w0-k8s-pod-a-eth0",
                                      namespace="default"))
    wait_for(lambda: run("iptables-save", "-t", "filter", netns=c.w0), lambda t: "cali-fw-cali0a0000001" not in t,
             timeout=5, what="endpoint chains removed")
    assert f"{ipa} dev" not in run("ip", "-4", "route", netns=c.w0)

    # IPIP switched off (the pool's ipipMode Never): the tc-BPF tunnel goes: filters, tunl0 and
    # its peer, the pins.
    def ipip_off():
        pool = c.client.get("IPPool", "default-ipv4-ippool")
        pool.spec.ipip_mode = "Never"
        c.client.update(pool)

    c.ds.call(ipip_off)
    pins = os.path.join(c.env("w0")["CALICO_TUNNEL_BPFFS"], "calico", "ipip")

    def tunnel_left() -> dict:
        links = run("ip", "-o", "link", "show", netns=c.w0)
        return {"links": [ln.split(":")[1].strip() for ln in links.splitlines() if "tunl0" in ln],
                "filters": " bpf " in run("tc", "filter", "show", "dev", "eth0", "ingress", netns=c.w0),
                "pins": sorted(os.listdir(pins)) if os.path.exists(pins) else None}

    wait_for(tunnel_left, lambda left: left == {"links": [], "filters": False, "pins": None}, timeout=10,
             what="tunl0, tunl0-bpf, the eth0 filter and the pins removed on w0", ignore=(FileNotFoundError,))
