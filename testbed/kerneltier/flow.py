"""The cross-node flow and the MTU probes both datapaths are held to.

Each function drives a :class:`~testbed.kerneltier.cluster.Cluster`, captures with tcpdump
inside the nodes, and returns a JSON-able record of what a user observed (ping results,
tunl0 counters, MTU outcomes, pcap file names relative to ``out_dir``).  The same functions
run inside the qemu guest (kernel tunl0) and on the host (userspace tunl0); tests then compare
the records and assert on the pcaps with :mod:`testbed.capture.pcapassert`.
"""

from __future__ import annotations

import ipaddress
import json
from collections import Counter
from pathlib import Path

from testbed.kerneltier.cluster import (
    PING_LOSS,
    Cluster,
    link_counters,
    mtu_probe,
    ping,
    run,
    wait_ping_ok,
)
from testbed.poll import WaitTimeout, wait_for

PING_COUNT = 3


def tunl0_state(cluster: Cluster) -> list[dict]:
    """Per node: tunl0 kind (from sysfs), MTU and IPv4 addresses, as ``ip`` shows them."""
    out = []
    for node in cluster.nodes:
        detail = run("ip", "-d", "-o", "link", "show", "tunl0", netns=node.netns)
        mtu = int(detail.split(" mtu ")[1].split()[0])
        kind = "kernel" if " ipip " in f" {detail} " else ("bpf" if " veth " in f" {detail} " else "userspace")
        addrs = run("ip", "-o", "-4", "addr", "show", "dev", "tunl0", netns=node.netns).split()
        cidrs = [addrs[i + 1] for i, w in enumerate(addrs) if w == "inet"]
        out.append({"node": node.index, "kind": kind, "mtu": mtu, "addresses": cidrs})
    return out


def cross_node_flow(cluster: Cluster, out_dir: Path) -> dict:
    """pod-1 pings pod-2 and pod-3 while node 1's eth0 and tunl0 and node 2's eth0 are captured."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n1, n2 = cluster.node(1), cluster.node(2)
    src = n1.pods[0]
    targets = [n.pods[0] for n in cluster.nodes[1:]]
    for t in targets:  # ARP / proxy ARP settle before the measured flow
        wait_ping_ok(src, t.ip)
    tag = cluster.datapath
    caps = {
        "n1-eth0": cluster.capture(n1, "eth0", out_dir / f"{tag}-n1-eth0.pcap"),
        "n1-tunl0": cluster.capture(n1, "tunl0", out_dir / f"{tag}-n1-tunl0.pcap"),
        "n2-eth0": cluster.capture(n2, "eth0", out_dir / f"{tag}-n2-eth0.pcap"),
    }
    before = {n.index: link_counters(n.netns, "tunl0") for n in cluster.nodes}
    pings = {}
    try:
        for t in targets:
            res = ping(src, t.ip, count=PING_COUNT)
            loss = PING_LOSS.search(res.stdout)
            pings[t.ip] = {
                "rc": res.returncode,
                "loss_percent": int(loss.group(1)) if loss else None,
                "output": (res.stdout + res.stderr).strip()[-400:],
            }
    finally:
        files = {name: cap.stop().name for name, cap in caps.items()}
    after = {n.index: link_counters(n.netns, "tunl0") for n in cluster.nodes}
    return {
        "datapath": cluster.datapath,
        "src": src.ip,
        "nodes": {n.index: n.address for n in cluster.nodes},
        "pods": {n.index: n.pods[0].ip for n in cluster.nodes},
        "pings": pings,
        "tunl0_delta": {
            i: {"tx": after[i][0] - before[i][0], "rx": after[i][1] - before[i][1]}
            for i in before
        },
        "pcaps": files,
        "tunl0": tunl0_state(cluster),
    }


def mtu_behaviour(cluster: Cluster, out_dir: Path) -> dict:
    """DF pings of the largest payload that fits the tunnel and one byte more.

    From pod-1 (MTU = the tunnel MTU, as the CNI plugin sets it) and from a pod with the
    uplink's MTU (so the node's tunnel has to answer frag-needed), captured on its host veth.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    n1 = cluster.node(1)
    dst = cluster.node(2).pods[0].ip
    fits = cluster.uplink_mtu - 20 - 20 - 8  # tunnel MTU (host - 20) minus IP and ICMP headers
    normal = n1.pods[0]
    big = next((p for p in n1.pods if p.name == "big"), None) or cluster.add_pod(
        n1, "big", f"192.168.{n1.index}.9", mtu=cluster.uplink_mtu
    )
    wait_ping_ok(big, dst)
    path = out_dir / f"{cluster.datapath}-n1-bigpod.pcap"
    cap = cluster.capture(n1, big.host_iface, path)
    try:
        probes = {
            "pod": [mtu_probe(normal, dst, fits), mtu_probe(normal, dst, fits + 1)],
            "big_pod": [mtu_probe(big, dst, fits), mtu_probe(big, dst, fits + 1)],
        }
        if any(p["outcome"] == "frag-needed" for p in probes["big_pod"]):
            _wait_captured(path)
    finally:
        pcap = cap.stop().name
    return {
        "datapath": cluster.datapath,
        "uplink_mtu": cluster.uplink_mtu,
        "tunnel_mtu": cluster.tunnel_mtu,
        "largest_fitting_payload": fits,
        "dst": dst,
        "big_pod": big.ip,
        "probes": probes,
        "pcaps": {"n1-bigpod": pcap},
    }


def _wait_captured(path: Path, timeout: float = 5.0) -> None:
    """Wait until the capture holds the frag-needed ICMP the pod already received: ping exits
    as soon as it sees it, and tcpdump stopped at that moment may not have read it yet (a slow
    TCG guest). Gives up quietly at the deadline: the test's assertion then shows the capture."""
    from testbed.capture import pcapassert as pa

    def seen() -> bool:
        try:
            pa.load(path).expect(pa.frag_needed())
        except Exception:  # noqa: BLE001 - not there yet, or a record half written
            return False
        return True

    try:
        wait_for(seen, timeout=timeout, what=f"the frag-needed ICMP in {path.name}")
    except WaitTimeout:
        pass


def write(record: dict, path: Path) -> Path:
    """Write ``record`` as JSON (the results share's contract with the host tests)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def signature(frames, pool: str = "192.168.0.0/16", ttl_df: bool = False, tos: bool = False) -> Counter:
    """What must be the same on both datapaths, per IPv4 frame of a capture, counted.

    Each frame becomes ((src, dst, proto, total length) for every IP header, outermost first,
    ICMP type, ICMP code).  With ``ttl_df`` every header also carries its TTL and DF bit:
    the kernel's fallback tunl0 (``ttl inherit nopmtudisc``) gives the outer header the inner
    packet's TTL (as forwarded) and DF, and the userspace pump does the same
    (``tests/kernel/test_kernel_datapaths_agree.py`` compares with them).  IP ids are always
    left out (they differ per packet: :func:`outer_ids_advance` holds them to the kernel's rule);
    with ``tos`` every header carries its TOS byte too.  Only the
    pods' flow counts: IPIP frames and frames to or from ``pool``; node-to-node traffic such
    as BGP keepalives and IGMP reports is skipped.
    ``frames`` are :class:`testbed.capture.pcapassert.Frame` objects (a ``Trace`` iterates them).
    """
    out: Counter = Counter()
    net = ipaddress.ip_network(pool)
    for f in frames:
        if not f.ips or f.ips[0].version != 4:
            continue
        in_pool = any(
            ipaddress.ip_address(a) in net for h in f.ips if h.version == 4 for a in (h.src, h.dst)
        )
        if f.ips[0].proto != 4 and not in_pool:
            continue
        if ttl_df:
            headers = tuple((h.src, h.dst, h.proto, h.length, h.ttl, h.df) + ((h.tos,) if tos else ())
                            for h in f.ips)
        else:
            headers = tuple((h.src, h.dst, h.proto, h.length) for h in f.ips)
        out[(headers, f.icmp_type, f.icmp_code)] += 1
    return out


def outer_ids(frames, df: bool | None = None) -> dict[tuple[str, str], list[int]]:
    """The IP ids of the outer headers of IPIP frames, per (outer source, destination), in
    capture order; with ``df`` only those of outer headers whose DF bit is ``df``."""
    out: dict[tuple[str, str], list[int]] = {}
    for f in frames:
        if f.ips and f.ips[0].version == 4 and f.ips[0].proto == 4 and df in (None, f.ips[0].df):
            out.setdefault((f.ips[0].src, f.ips[0].dst), []).append(f.ips[0].ident)
    return out


def outer_ids_advance(ids: list[int]) -> bool:
    """Whether each id moves forward from the one before, as ``__ip_select_ident`` hands them out
    for one (source, destination, protocol): a counter advanced by at least one per packet (the
    kernel adds a random jump after idle time), modulo 2^16; never the same id twice in a row,
    never 0 throughout (what a raw socket sends with DF)."""
    if len(ids) < 2 or not any(ids):
        return False
    return all(1 <= (b - a) % 65536 < 32768 for a, b in zip(ids, ids[1:], strict=False))
