"""Benchmark: UPDATE throughput — one speaker announces P prefixes to K neighbours.

Measures, in namespaces on one bridge: time from the originating speaker's configuration
change (P new prefixes) until every neighbour's Loc-RIB holds all of them, and (separately)
the same with kernel programming on the receivers. Prints a table, writes JSON.
Reference point (calico.md / issue 6): BIRD and FRR pass 100k prefixes to 5 neighbours in
3-4 s. Run: ``sudo .venv/bin/python bench/bgp_throughput.py [--prefixes 100000] [--peers 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from ipaddress import IPv4Network

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from agent.bgp.config import KernelPolicy  # noqa: E402
from agent.bgp.fsm import Timers  # noqa: E402
from agent.bgp.runner import SpeakerThread  # noqa: E402
from tests.netns.test_bgp_mesh import NetLab, mesh_config  # noqa: E402

TIMERS = Timers(connect_delay=0.1, connect_retry=1, error_wait_min=0.5, error_wait_max=2)
POOL = IPv4Network("10.0.0.0/8")


def prefixes(n: int) -> list[IPv4Network]:
    base = int(POOL.network_address)
    if n > 2 ** 18:
        raise ValueError(f"at most {2 ** 18} /26 prefixes fit in {POOL}")
    return [IPv4Network((base + (i << 6), 26)) for i in range(n)]


def run(n_prefixes: int, n_peers: int, program_kernel: bool, timeout: float) -> dict:
    lab = NetLab("172.28.0.0/24")
    speakers: list[SpeakerThread] = []
    try:
        nodes = [lab.add_node() for _ in range(n_peers + 1)]
        lab.static_neighbors()
        addrs = [a for _ns, a in nodes]
        cfgs = []
        for i, (_ns, a) in enumerate(nodes):
            peers = addrs if i == 0 else [addrs[0], a]
            c = mesh_config(a, peers, [], timers=TIMERS)
            cfgs.append(replace(c, export_pools=(POOL,), kernel=KernelPolicy()))
        for i, (ns, _a) in enumerate(nodes):
            t = SpeakerThread(cfgs[i], netns=ns, program_kernel=program_kernel or i == 0,
                              name=f"tp{i}")
            speakers.append(t)
            t.start()
        deadline = time.monotonic() + 10
        while sum(s.status()["established"] for s in speakers[1:]) < n_peers:
            if time.monotonic() > deadline:
                raise TimeoutError("sessions did not come up")
            time.sleep(0.02)
        nets = prefixes(n_prefixes)
        cfg0 = replace(cfgs[0], originate=tuple((p, False) for p in nets))
        t0 = time.monotonic()
        speakers[0].apply(cfg0)
        t_applied = time.monotonic()

        def done() -> bool:
            if program_kernel:
                return all(len(s.speaker.kernel_routes) >= n_prefixes for s in speakers[1:])
            return all(len(s.speaker.rib.loc) >= n_prefixes for s in speakers[1:])

        while not done():
            if time.monotonic() - t0 > timeout:
                raise TimeoutError("prefixes did not arrive")
            time.sleep(0.02)
        t_end = time.monotonic()
        return {"prefixes": n_prefixes, "peers": n_peers, "kernel": program_kernel,
                "originate_s": round(t_applied - t0, 3), "all_received_s": round(t_end - t0, 3),
                "prefixes_per_s_per_peer": round(n_prefixes / (t_end - t0))}
    finally:
        for s in speakers:
            try:
                s.stop(timeout=60)
            except Exception:  # noqa: BLE001 - cleanup goes on
                pass
        lab.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prefixes", type=int, default=100000)
    ap.add_argument("--peers", type=int, default=5)
    ap.add_argument("--kernel-prefixes", type=int, default=10000,
                    help="prefix count for the run that also programs the receivers' kernels")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "bgp_throughput.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (namespaces)", file=sys.stderr)
        return 2
    rows = [run(args.prefixes, args.peers, False, args.timeout),
            run(args.kernel_prefixes, args.peers, True, args.timeout)]
    cols = list(rows[0])
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]).rjust(len(c)) for c in cols))
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"benchmark": "bgp_throughput", "results": rows}, f, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
