"""Benchmark: BGP full-mesh convergence and new-block propagation.

For each N (default 10, 30, 50) it builds N namespaces on one bridge (a TUN ``tunl0`` in
each), starts one speaker per namespace (threads of this process, each in its namespace),
and measures:

* mesh convergence: last speaker started -> every node has every other node's block
  programmed in its kernel (``proto bird`` route via tunl0) -- N(N-1)/2 sessions;
* new block: a block added to node 0's configuration -> programmed on every other node.

Prints a table and writes JSON (``--json``, default bench/results/bgp_convergence.json).
Needs root. Run: ``sudo .venv/bin/python bench/bgp_convergence.py [--sizes 10,30,50]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from dataclasses import replace
from ipaddress import IPv4Network

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from agent.bgp.fsm import Timers  # noqa: E402
from agent.bgp.runner import SpeakerThread  # noqa: E402
from tests.netns.test_bgp_mesh import NetLab, bird_routes, mesh_config  # noqa: E402

BENCH_TIMERS = Timers(connect_delay=0.1, connect_retry=1, error_wait_min=0.5, error_wait_max=2)


def block(i: int) -> IPv4Network:
    return IPv4Network(f"10.{100 + i // 256}.{i % 256}.0/26")


def wait_all(pred, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while True:
        if pred():
            return time.monotonic()
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.01)


def run(n: int, timeout: float) -> dict:
    lab = NetLab("172.29.0.0/22")
    speakers: list[SpeakerThread] = []
    try:
        t_setup = time.monotonic()
        nodes = [lab.add_node() for _ in range(n)]
        lab.static_neighbors()
        setup = time.monotonic() - t_setup
        addrs = [a for _ns, a in nodes]
        configs = [replace(mesh_config(a, addrs, [block(i)], timers=BENCH_TIMERS),
                           export_pools=(IPv4Network("10.0.0.0/8"),))
                   for i, (_ns, a) in enumerate(nodes)]
        configs = [replace(c, kernel=replace(c.kernel, ipip_pools=(IPv4Network("10.0.0.0/8"),)))
                   for c in configs]
        t_first = time.monotonic()
        for i, (ns, _a) in enumerate(nodes):
            t = SpeakerThread(configs[i], netns=ns, name=f"bgp{i}")
            speakers.append(t)
            t.start()
        t_last = time.monotonic()

        def converged() -> bool:
            return all(s.speaker is not None and len(s.speaker.kernel_routes) == n
                       for s in speakers)

        t_conv = wait_all(converged, timeout, "mesh convergence")
        sessions = sum(s.status()["established"] for s in speakers) // 2
        # the kernel really holds it (checked once, outside the timing)
        sample = bird_routes(nodes[-1][0])
        assert len(sample) == n, sample

        new = IPv4Network("10.200.0.0/26")
        cfg0 = replace(configs[0], originate=configs[0].originate + ((new, True),))
        t_apply = time.monotonic()
        speakers[0].apply(cfg0)

        def everywhere() -> bool:
            return all(new in s.speaker.kernel_routes for s in speakers[1:])

        t_new = wait_all(everywhere, timeout, "new block everywhere")
        return {"nodes": n, "sessions": sessions, "expected_sessions": n * (n - 1) // 2,
                "netns_setup_s": round(setup, 3),
                "start_all_s": round(t_last - t_first, 3),
                "converge_after_last_start_s": round(t_conv - t_last, 3),
                "converge_after_first_start_s": round(t_conv - t_first, 3),
                "new_block_everywhere_s": round(t_new - t_apply, 3)}
    finally:
        for s in speakers:
            try:
                s.stop()
            except Exception:  # noqa: BLE001 - cleanup goes on
                pass
        lab.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,30,50")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "results",
                                                   "bgp_convergence.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (namespaces)", file=sys.stderr)
        return 2
    # all speakers share this process: 50 nodes hold ~2,500 sockets (a real node holds ~50)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        rows.append(run(n, args.timeout))
        print(f"  done N={n}", file=sys.stderr)
    cols = ["nodes", "sessions", "start_all_s", "converge_after_last_start_s",
            "converge_after_first_start_s", "new_block_everywhere_s"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]).rjust(len(c)) for c in cols))
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"benchmark": "bgp_convergence", "timers": BENCH_TIMERS.__dict__,
                   "process_model": "one process, one thread + asyncio loop per speaker",
                   "results": rows}, f, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
