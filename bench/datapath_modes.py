"""Pod-to-pod TCP throughput per network mode, as ratios to plain routing, in the same run.

Two node namespaces joined by a veth (MTU 1500), one pod namespace on each, iperf3 from pod a
to pod b (one TCP stream). Cases, each wired the way its mode wires a node:

* ``routed``: no encapsulation, the nodes route the pod blocks ``via <node> dev eth0``
  (BGP's routes in a no-encap pool); pods MTU 1500;
* ``vxlan``: the kernel's vxlan.calico, made and filled by Felix's own VXLAN manager code
  (:mod:`agent.felix.encap` plan -> ``ensure_vxlan_device``, ``VxlanFdb``,
  ``VxlanRouteDriver``): VNI 4096, UDP 4789, permanent ARP/FDB, routes via the remote VTEP
  onlink; pods MTU 1450;
* ``ipip userspace``: tunl0 as a TUN with agent/felix's IpipPump (this machine's kernel has
  no ipip), routes ``via <node> dev tunl0 onlink``; pods MTU 1480.

Rounds interleave the cases (routed, vxlan, ipip, routed, ...) so a busy shared machine
weighs on all of them alike; each ratio is a case's median over routed's median. The load
average is recorded with every run. Prints a table and writes JSON (default
reports/bench/datapath_modes.json). Run as root, under the machine's heavy-work lock:
``flock /work/wt/heavy.lock .venv/bin/python bench/datapath_modes.py [--seconds 5 --repeat 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.tunnel_throughput import iperf, routed_case  # noqa: E402
from tests.netns.felix_support import Topo, run, two_node_tunnel  # noqa: E402

NODE_A, NODE_B = "172.31.9.1", "172.31.9.2"


def vxlan_case(topo: Topo) -> dict:
    """Pods on two nodes joined by Felix's vxlan.calico (the VXLAN manager's code, no agent)."""
    from agent.felix import encap
    from agent.felix.model import Block, FelixInput, HostNode, Pool
    from agent.felix.vxlan import ensure_vxlan_device
    from agent.felix.vxlanfdb import VxlanFdb
    from agent.felix.vxlanroutes import VxlanRouteDriver
    from kernel.netlink import Netlink

    a, b = topo.node("a"), topo.node("b")
    topo.link_nodes(a, b, f"{NODE_A}/24", f"{NODE_B}/24")
    pa = topo.pod(a, "192.168.10.5", "cali0a0000001", mtu=1450)
    pb = topo.pod(b, "192.168.20.7", "cali0b0000001", mtu=1450)
    nodes = (HostNode("a", f"{NODE_A}/24", None, "192.168.10.0"), HostNode("b", f"{NODE_B}/24", None, "192.168.20.0"))
    blocks = (Block("192.168.10.0/26", "a"), Block("192.168.20.0/26", "b"))
    for ns, me in ((a, "a"), (b, "b")):
        inp = FelixInput(hostname=me, nodes=nodes, pools=(Pool("192.168.0.0/16", vxlan_mode="Always"),),
                         blocks=blocks, host_mtu=1500)
        plan = encap.plan(inp)
        assert plan.device is not None
        with Netlink(ns) as k:
            dev, parent = ensure_vxlan_device(k, plan.device)
            VxlanFdb(k).apply(dev.index, plan.neighbours(), plan.fdb())
            _, waiting = VxlanRouteDriver(k).apply(plan, dev.index, parent.index)
            assert not waiting, waiting
    return {"pa": pa, "pb": pb, "ipb": "192.168.20.7"}


CASES = (("routed", routed_case), ("vxlan", vxlan_case), ("ipip userspace", two_node_tunnel))


def one(name: str, build, seconds: int, streams: int) -> dict:
    """Build one case in fresh namespaces, check a ping passes, run iperf3; remove it all."""
    topo = Topo()
    try:
        env = build(topo)
        for _ in range(100):  # the userspace pumps load their routes; the others pass at once
            if " 0% packet loss" in run("ping", "-c", "1", "-W", "1", env["ipb"], netns=env["pa"], check=False):
                break
        else:
            raise RuntimeError(f"{name}: pod a cannot ping pod b")
        pumps = (env["ta"], env["tb"]) if "ta" in env else ()
        r = iperf(topo, env["pa"], env["pb"], env["ipb"], seconds, streams, pumps)
        return {"case": name, "seconds": seconds, "streams": streams, "loadavg": round(os.getloadavg()[0], 2), **r}
    finally:
        topo.close()


def main() -> int:
    """Run the rounds, print the table and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="rounds (each runs every case once)")
    ap.add_argument("--json", default=os.path.join(REPO, "reports", "bench", "datapath_modes.json"))
    args = ap.parse_args()
    results = [one(name, build, args.seconds, args.streams) for _ in range(args.repeat) for name, build in CASES]
    med = {name: statistics.median(r["gbit_s"] for r in results if r["case"] == name) for name, _ in CASES}
    print(f"{'case':<16} {'median Gbit/s':>13} {'best':>7} {'ratio to routed':>16} {'runs':>5} "
          f"{'retransmits':>12} {'loadavg':>12}")
    summary = []
    for name, _ in CASES:
        rs = [r for r in results if r["case"] == name]
        ratio = med[name] / med["routed"] if med["routed"] else float("nan")
        loads = [r["loadavg"] for r in rs]
        print(f"{name:<16} {med[name]:>13.3f} {max(r['gbit_s'] for r in rs):>7.3f} {ratio:>16.3f} {len(rs):>5} "
              f"{sum(r['retransmits'] for r in rs):>12} {min(loads):>5.1f}-{max(loads):<6.1f}")
        summary.append({"case": name, "median_gbit_s": med[name], "ratio_to_routed": round(ratio, 4)})
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"benchmark": "datapath_modes", "cpus": os.cpu_count(), "summary": summary, "results": results},
                  f, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
