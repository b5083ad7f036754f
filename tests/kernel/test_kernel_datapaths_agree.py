"""The tunl0 datapaths held to one behaviour.

The same cross-node flow and MTU probes (testbed.kerneltier.flow) run on this host with
Felix's tc-BPF tunl0 and with its userspace fallback (TUN + pump; the host kernel has no
ipip), and were run in the qemu guest with the kernel's ipip tunl0 (session fixture
``guest``).  The captures must agree: same protocol, same outer (node) and inner (pod)
addresses, lengths, TTLs, DF bits and TOS bytes, same ICMP, same packets on tunl0, and the
same MTU outcomes.  Outer IP ids advance per packet for one node pair as the kernel's
``__ip_select_ident`` hands them out on the tc-BPF tunnel; the pump's raw socket sends 0
with DF (its one documented difference, docs/felix.md).
"""

from __future__ import annotations

import json
import os

import pytest

from testbed.capture import pcapassert as pa
from testbed.kerneltier import cluster as kc
from testbed.kerneltier import flow
from tests.support import require, require_root, require_tool

pytestmark = pytest.mark.kernel  # needs the guest session; its host half is netns-tier work


@pytest.fixture(scope="module", params=["bpf", "userspace"])
def ours(request, tmp_path_factory):
    """The flow and MTU records (and pcaps) of one of this host's datapaths (kernel-less tunl0)."""
    require_root()
    require_tool("tcpdump")
    if request.param == "bpf":
        from agent.felix.bpftunnel import unsupported_reason

        require(unsupported_reason() is None, f"tc-BPF tunnel: {unsupported_reason()}")
    else:
        require(os.path.exists("/dev/net/tun"), "needs /dev/net/tun for the userspace tunl0")
    out = tmp_path_factory.mktemp(f"{request.param}-datapath")
    c = kc.build(3, datapath=request.param)
    try:
        rec = flow.cross_node_flow(c, out)
        mtu = flow.mtu_behaviour(c, out)
    finally:
        c.close()
    return out, rec, mtu


@pytest.fixture(scope="module")
def kernel(guest):
    """The same records the guest wrote to the results share."""
    out = guest.results / "pcaps"
    paths = [guest.results / "flow-kernel.json", guest.results / "mtu-kernel.json"]
    for p in paths:
        assert p.exists(), f"the guest left no {p.name}\n{guest.log_tail()}"
    return out, json.loads(paths[0].read_text()), json.loads(paths[1].read_text())


@pytest.mark.parametrize("capture", ["n1-eth0", "n2-eth0", "n1-tunl0"])
def test_same_packets_on_both_datapaths(kernel, ours, capture):
    """Per interface, the same IPv4 packets: protocol, outer and inner addresses, lengths, TTL and
    DF of every header (the outer's copied from the inner by both), ICMP."""
    kdir, krec, _ = kernel
    udir, urec, _ = ours
    ktrace = pa.load(kdir / krec["pcaps"][capture])
    utrace = pa.load(udir / urec["pcaps"][capture])
    # Distinct kinds of packets, not counts: a ping retransmits what a datapath dropped.
    ksig = set(flow.signature(ktrace, ttl_df=True, tos=True))
    usig = set(flow.signature(utrace, ttl_df=True, tos=True))
    assert ksig, f"the kernel capture {capture} is empty:\n{ktrace.summary()}"
    only_k, only_u = ksig - usig, usig - ksig
    assert not only_k and not only_u, (
        f"{capture} differs between datapaths\nonly kernel: {sorted(only_k)}\n"
        f"only {urec['datapath']}: {sorted(only_u)}\nkernel:\n{ktrace.summary()}\n"
        f"{urec['datapath']}:\n{utrace.summary()}"
    )
    if capture.endswith("eth0"):
        assert all(h[0][2] == 4 for (h, *_rest) in usig), "non-IPIP IPv4 on the uplink"
        # TTL and DF of the outer header are the inner's (ttl inherit, nopmtudisc), on both.
        for sig in (ksig, usig):
            assert all(h[0][4:6] == h[1][4:6] for (h, *_rest) in sig), sorted(sig)


def test_same_pings_and_tunl0(kernel, ours):
    """Every ping answered on both (ping got all its replies; retransmissions aside); tunl0 has
    the same address (/32) and MTU, kind aside."""
    _, krec, _ = kernel
    _, urec, _ = ours
    for rec in (krec, urec):
        for ip, res in rec["pings"].items():
            assert res["rc"] == 0, f"{rec['datapath']}: ping {ip}: {res['output']}"
    assert [t["kind"] for t in krec["tunl0"]] == ["kernel"] * 3
    assert [t["kind"] for t in urec["tunl0"]] == [urec["datapath"]] * 3

    def strip(tunnels):
        return [{k: v for k, v in t.items() if k != "kind"} for t in tunnels]

    assert strip(krec["tunl0"]) == strip(urec["tunl0"])


@pytest.mark.parametrize("capture", ["n1-eth0", "n2-eth0"])
def test_outer_ids_advance_as_ip_select_ident(kernel, ours, capture):
    """ip_tunnel_xmit takes the outer id from __ip_select_ident even with DF: per node pair a
    counter that advances per packet. The tc-BPF tunnel's per-node counter does the same; the
    pump's raw socket sends 0 when DF is set (documented) and lets the kernel pick an id
    (advancing) otherwise."""
    kdir, krec, _ = kernel
    udir, urec, _ = ours
    utrace = pa.load(udir / urec["pcaps"][capture])
    kids = flow.outer_ids(pa.load(kdir / krec["pcaps"][capture]))
    uids = flow.outer_ids(utrace)
    assert set(kids) == set(uids) and kids
    for pair, ids in kids.items():
        assert flow.outer_ids_advance(ids), (capture, pair, ids)
    if urec["datapath"] == "userspace":
        for pair, ids in flow.outer_ids(utrace, df=True).items():
            assert set(ids) == {0}, (capture, pair, ids)  # with DF: the raw socket's 0
        for pair, ids in flow.outer_ids(utrace, df=False).items():
            assert len(ids) < 2 or flow.outer_ids_advance(ids), (capture, pair, ids)
    else:
        for pair, ids in uids.items():
            assert flow.outer_ids_advance(ids), (capture, pair, ids)


def test_same_mtu_behaviour(kernel, ours):
    """Largest DF ping passes on both, one byte more is refused / answered frag-needed alike."""
    kdir, _, kmtu = kernel
    udir, _, umtu = ours
    assert kmtu["probes"] == umtu["probes"], (kmtu["probes"], umtu["probes"])
    for d, rec in ((kdir, kmtu), (udir, umtu)):
        pa.assert_frag_needed(d / rec["pcaps"]["n1-bigpod"], mtu=rec["tunnel_mtu"],
                              to=rec["big_pod"], about_dst=rec["dst"])  # fmt: skip
