"""Pod-to-pod TCP throughput over the userspace tunl0, next to plain routed veths.

Two node namespaces joined by a veth, one pod namespace on each, iperf3 from
pod a to pod b. Cases:

* ``routed``: no tunnel, nodes route the pod blocks ``via <node> dev eth0``.
* ``ipip-userspace``: the TUN tunl0 + IpipPump of agent/felix (as on this machine).

For the tunnel case the pumps' CPU time during the run is read from /proc
(node a's pump transmits, node b's receives) and reported per MB delivered:
a measure of the pump's own cost that a busy shared machine disturbs less
than Gbit/s does.

Prints a table and writes JSON (default reports/bench/tunnel_throughput.json).
Run as root: ``.venv/bin/python bench/tunnel_throughput.py [--seconds 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.netns.felix_support import Topo, run, two_node_tunnel  # noqa: E402


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


def main() -> int:
    """Run the cases and print/write the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1, help="runs per case (the machine may be shared: best and median shown)")
    ap.add_argument("--json", default=os.path.join(REPO, "reports", "bench", "tunnel_throughput.json"))
    args = ap.parse_args()
    results = []
    for _ in range(args.repeat):
        for name, build in (("routed veth", routed_case), ("ipip userspace tunl0", two_node_tunnel)):
            topo = Topo()
            try:
                env = build(topo)
                if "ta" in env:  # wait until the pumps know their routes
                    for _ in range(100):
                        if " 0% packet loss" in run("ping", "-c", "1", "-W", "1", env["ipb"], netns=env["pa"],
                                                    check=False):
                            break
                pumps = (env["ta"], env["tb"]) if "ta" in env else ()
                r = iperf(topo, env["pa"], env["pb"], env["ipb"], args.seconds, args.streams, pumps)
                if "ta" in env:
                    topo.stop(env["ta"])
                    topo.stop(env["tb"])
                results.append({"case": name, "seconds": args.seconds, "streams": args.streams,
                                "loadavg": os.getloadavg()[0], **r})
            finally:
                topo.close()
    print(f"{'case':<24} {'best Gbit/s':>12} {'median':>8} {'runs':>5} {'retransmits':>12} {'loadavg':>8} "
          f"{'tx pump us/MB':>14} {'rx pump us/MB':>14}")
    for name in dict.fromkeys(r["case"] for r in results):
        rs = [r for r in results if r["case"] == name]
        rates = sorted(r["gbit_s"] for r in rs)
        cpu = []
        for key in ("tx_pump_us_per_mb", "rx_pump_us_per_mb"):
            vals = sorted(r[key] for r in rs if r.get(key) is not None)
            cpu.append(f"{vals[len(vals) // 2]:>14.0f}" if vals else f"{'-':>14}")
        print(f"{name:<24} {rates[-1]:>12.3f} {rates[len(rates) // 2]:>8.3f} {len(rs):>5} "
              f"{sum(r['retransmits'] for r in rs):>12} {max(r['loadavg'] for r in rs):>8.1f} {cpu[0]} {cpu[1]}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"benchmark": "tunnel_throughput", "cpus": os.cpu_count(), "results": results}, f, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
