"""Pod-to-pod TCP throughput through tunl0 without kernel ipip, next to its peers, same run.

Two node namespaces joined by a veth, one pod namespace on each, iperf3 from pod a to pod
b. Cases, interleaved round by round (so a busy machine hits them alike):

* ``routed veth``: no tunnel, nodes route the pod blocks ``via <node> dev eth0`` (the floor
  every encapsulation is measured against);
* ``ipip tc-bpf``: tunl0 as calico-node sets it up here (agent/felix/bpftunnel.py: the
  in-kernel encap/decap programs, no process);
* ``kernel vxlan``: the kernel's vxlan device as Felix's VXLAN mode makes it (vxlan.calico,
  VNI 4096, port 4789, MTU uplink-50, ``<block> via <vtep> dev vxlan.calico onlink`` with
  static ARP and FDB entries);
* ``ipip userspace``: the fallback TUN tunl0 + pump (agent/felix/pump.py), with the pumps'
  CPU per MB delivered (node a's pump transmits, node b's receives).

Prints a table (best and median Gbit/s per case, the median's ratio to the routed veth's,
retransmits, the load average) and writes JSON (default reports/bench/tunnel_throughput.json).
Run as root, under the heavy lock::

    flock /work/wt/heavy.lock .venv/bin/python bench/tunnel_throughput.py --seconds 5 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.netns.felix_support import Topo, run, two_node_bpf_tunnel, two_node_tunnel  # noqa: E402

CASES = ("routed veth", "ipip tc-bpf", "kernel vxlan", "ipip userspace")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def iperf(topo: Topo, client_ns: str, server_ns: str, server_ip: str, seconds: int, streams: int,
          pumps: tuple = ()) -> dict:
    """Run iperf3 client->server; returns Gbit/s, retransmits and (given pump processes tx, rx)
    their CPU microseconds per MB received."""
    srv = topo.spawn(server_ns, "iperf3", "-s", "-1", "-B", server_ip, stdout=open(os.devnull, "w"))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if "5201" in run("ss", "-ltn", netns=server_ns, check=False):
            break
        time.sleep(0.05)
    before = [cpu_seconds(p.pid) for p in pumps]
    out = run("iperf3", "-c", server_ip, "-t", str(seconds), "-P", str(streams), "-J", netns=client_ns)
    after = [cpu_seconds(p.pid) for p in pumps]
    topo.stop(srv)
    data = json.loads(out)
    end = data["end"]
    res = {
        "gbit_s": round(end["sum_received"]["bits_per_second"] / 1e9, 3),
        "retransmits": end["sum_sent"].get("retransmits", 0),
    }
    mb = end["sum_received"]["bytes"] / 1e6
    for name, b, a in zip(("tx_pump_us_per_mb", "rx_pump_us_per_mb"), before, after, strict=False):
        res[name] = round((a - b) * 1e6 / mb, 1) if mb else None
    return res


def routed_case(topo: Topo) -> dict:
    """Pods on two nodes with plain routes via eth0 (no encapsulation)."""
    a, b = topo.node("a"), topo.node("b")
    topo.link_nodes(a, b, "172.31.9.1/24", "172.31.9.2/24")
    pa = topo.pod(a, "192.168.10.5", "cali0a0000001", mtu=1500)
    pb = topo.pod(b, "192.168.20.7", "cali0b0000001", mtu=1500)
    run("ip", "-n", a, "route", "add", "192.168.20.0/26", "via", "172.31.9.2", "dev", "eth0")
    run("ip", "-n", b, "route", "add", "192.168.10.0/26", "via", "172.31.9.1", "dev", "eth0")
    return {"pa": pa, "pb": pb, "ipb": "192.168.20.7"}


def vxlan_case(topo: Topo) -> dict:
    """Pods on two nodes over the kernel's vxlan.calico, made and filled by Felix's own VXLAN
    manager code (:func:`agent.felix.encap.plan` -> ``ensure_vxlan_device``, ``VxlanFdb``,
    ``VxlanRouteDriver``): VNI 4096, port 4789, MTU 1450, permanent ARP/FDB, ``<block> via
    <vtep> dev vxlan.calico onlink``."""
    from agent.felix import encap
    from agent.felix.model import Block, FelixInput, HostNode, Pool
    from agent.felix.vxlan import ensure_vxlan_device
    from agent.felix.vxlanfdb import VxlanFdb
    from agent.felix.vxlanroutes import VxlanRouteDriver
    from kernel.netlink import Netlink

    a, b = topo.node("a"), topo.node("b")
    topo.link_nodes(a, b, "172.31.9.1/24", "172.31.9.2/24")
    pa = topo.pod(a, "192.168.10.5", "cali0a0000001", mtu=1450)
    pb = topo.pod(b, "192.168.20.7", "cali0b0000001", mtu=1450)
    nodes = (HostNode("a", "172.31.9.1/24", None, "192.168.10.0"), HostNode("b", "172.31.9.2/24", None, "192.168.20.0"))
    blocks = (Block("192.168.10.0/26", "a"), Block("192.168.20.0/26", "b"))
    for ns, me in ((a, "a"), (b, "b")):
        plan = encap.plan(FelixInput(hostname=me, nodes=nodes, pools=(Pool("192.168.0.0/16", vxlan_mode="Always"),),
                                     blocks=blocks, host_mtu=1500))
        assert plan.device is not None
        with Netlink(ns) as k:
            dev, parent = ensure_vxlan_device(k, plan.device)
            VxlanFdb(k).apply(dev.index, plan.neighbours(), plan.fdb())
            _, waiting = VxlanRouteDriver(k).apply(plan, dev.index, parent.index)
            assert not waiting, waiting
    return {"pa": pa, "pb": pb, "ipb": "192.168.20.7"}


BUILDERS = {"routed veth": routed_case, "ipip tc-bpf": two_node_bpf_tunnel, "kernel vxlan": vxlan_case,
            "ipip userspace": two_node_tunnel}


def one(name: str, seconds: int, streams: int) -> dict:
    """Build case ``name``, measure once, tear down."""
    topo = Topo()
    try:
        env = BUILDERS[name](topo)
        for _ in range(100):  # the pumps may still be loading routes
            if " 0% packet loss" in run("ping", "-c", "1", "-W", "1", env["ipb"], netns=env["pa"], check=False):
                break
        pumps = (env["ta"], env["tb"]) if "ta" in env else ()
        load = os.getloadavg()[0]
        r = iperf(topo, env["pa"], env["pb"], env["ipb"], seconds, streams, pumps)
        for p in pumps:
            topo.stop(p)
        return {"case": name, "seconds": seconds, "streams": streams, "loadavg": round(load, 2), **r}
    finally:
        topo.close()


def main() -> int:
    """Run the cases round by round and print/write the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="rounds (every case once per round, interleaved)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of: {', '.join(CASES)}")
    ap.add_argument("--json", default=os.path.join(REPO, "reports", "bench", "tunnel_throughput.json"))
    args = ap.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in BUILDERS]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    results = []
    for _ in range(args.repeat):
        for name in cases:
            results.append(one(name, args.seconds, args.streams))
    medians = {}
    print(f"{'case':<16} {'best Gbit/s':>11} {'median':>7} {'x routed':>9} {'runs':>5} {'retransmits':>12} "
          f"{'loadavg':>8} {'tx pump us/MB':>14} {'rx pump us/MB':>14}")
    for name in cases:
        rs = [r for r in results if r["case"] == name]
        rates = sorted(r["gbit_s"] for r in rs)
        medians[name] = rates[len(rates) // 2]
    base = medians.get("routed veth")
    for name in cases:
        rs = [r for r in results if r["case"] == name]
        rates = sorted(r["gbit_s"] for r in rs)
        ratio = f"{medians[name] / base:>9.2f}" if base else f"{'-':>9}"
        cpu = []
        for key in ("tx_pump_us_per_mb", "rx_pump_us_per_mb"):
            vals = sorted(r[key] for r in rs if r.get(key) is not None)
            cpu.append(f"{vals[len(vals) // 2]:>14.0f}" if vals else f"{'-':>14}")
        loads = sorted(r["loadavg"] for r in rs)
        print(f"{name:<16} {rates[-1]:>11.2f} {medians[name]:>7.2f} {ratio} {len(rs):>5} "
              f"{sum(r['retransmits'] for r in rs):>12} {loads[0]:>3.1f}-{loads[-1]:<4.1f} {cpu[0]} {cpu[1]}")
    summary = {name: {"median_gbit_s": medians[name], "ratio_to_routed": round(medians[name] / base, 3) if base else None}
               for name in cases}
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"benchmark": "tunnel_throughput", "cpus": os.cpu_count(), "summary": summary,
                   "results": results}, f, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
