"""Benchmark: UPDATE throughput, calicolab vs BIRD 2 in the same run.

One sender announces P prefixes (/26s of 10.0.0.0/8, one set of attributes) to K receivers,
each node one daemon process in its own namespace (``bench.bgp_peers``). The trigger is the
same for both: the sender's configuration file gains the P routes, then SIGHUP. Measured
from the signal until:

* ``rib``: every receiver holds all P routes in its RIB (control socket count; receivers do
  not program the kernel), default 100k prefixes to 5 peers;
* ``kernel``: every receiver has all P routes in its kernel (rtnetlink listener), default
  10k prefixes to 5 peers.

Interleaved (ABBA), repeated, medians, ratios and the load average. Needs root and bird2:
``flock /work/wt/heavy.lock .venv/bin/python bench/bgp_throughput.py [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bgp_peers import (  # noqa: E402
    ROOT,
    Bench,
    Node,
    bird_version,
    compile_bytecode,
    load,
    median,
    print_table,
    require_root_and_bird,
    write_json,
)

BASE = int.from_bytes(socket.inet_aton("10.0.0.0"), "big")


def prefixes(n: int) -> list[str]:
    if n > 2 ** 18:
        raise ValueError(f"at most {2 ** 18} /26 prefixes fit in 10.0.0.0/8")
    return [f"{socket.inet_ntoa((BASE + (i << 6)).to_bytes(4, 'big'))}/26" for i in range(n)]


def one_run(bench: Bench, impl: str, mode: str, nets: list[str], timeout: float) -> dict:
    addrs = [a for _ns, a in bench.lab.nodes]
    nss = bench.namespaces
    kernel = mode == "kernel"
    nodes = [Node(nss[0], addrs[0], addrs[1:], kernel=False)]
    nodes += [Node(ns, a, [addrs[0]], kernel=kernel) for ns, a in bench.lab.nodes[1:]]
    p = len(nets)
    try:
        bench.start(impl, nodes)
        bench.wait_sockets()
        recv = bench.daemons[1:]
        deadline = time.monotonic() + timeout

        def established() -> bool:
            for d in recv:
                out = d.query("show protocols")
                if out.count("Established") != 1:
                    return False
            return True

        while not established():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{impl}: sessions did not come up")
            time.sleep(0.05)
        nodes[0].unicast = nets
        t0 = time.monotonic()
        bench.daemons[0].reconfigure()
        if kernel:
            w = bench.watch
            w.wait(lambda: all(w.count(ns) >= p for ns in nss[1:]), timeout,
                   f"{impl}: {p} routes in every receiver's kernel")
            t_end = w.last_arrival(nss[1:])
        else:
            pending = list(recv)
            while pending:
                pending = [d for d in pending if d.rib_routes() < p]
                if pending:
                    if time.monotonic() > deadline + timeout:
                        raise TimeoutError(f"{impl}: {p} routes did not reach every RIB")
                    time.sleep(0.005)
            t_end = time.monotonic()
        return {"impl": impl, "mode": mode, "prefixes": p, "peers": len(recv),
                "seconds": round(t_end - t0, 3)}
    except (TimeoutError, RuntimeError):
        for d in bench.daemons[:2]:
            print(f"--- {d.kind} {d.node.ns} log:\n{d.log_tail()}", file=sys.stderr)
        raise
    finally:
        bench.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prefixes", type=int, default=100000)
    ap.add_argument("--kernel-prefixes", type=int, default=10000)
    ap.add_argument("--peers", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modes", default="rib,kernel")
    ap.add_argument("--impls", default="calicolab,bird")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "bgp_throughput.json"))
    args = ap.parse_args()
    require_root_and_bird()
    compile_bytecode()
    impls = args.impls.split(",")
    load_before = load()
    bench = Bench(args.peers + 1, "172.28.0.0/24")
    runs, summary = [], []
    try:
        for mode in args.modes.split(","):
            nets = prefixes(args.prefixes if mode == "rib" else args.kernel_prefixes)
            for rep in range(args.repeat):
                for impl in (impls if rep % 2 == 0 else impls[::-1]):
                    r = one_run(bench, impl, mode, nets, args.timeout)
                    r["rep"], r["load1"] = rep, load()[0]
                    runs.append(r)
                    print(f"  {mode} rep {rep} {impl}: {r['seconds']} s", file=sys.stderr)
            row = {"what": f"{len(nets)} prefixes to {args.peers} peers ({mode})"}
            for impl in impls:
                row[f"{impl}_s"] = median([r["seconds"] for r in runs
                                           if r["mode"] == mode and r["impl"] == impl])
            if len(impls) == 2:
                row["ratio"] = round(row[f"{impls[0]}_s"] / row[f"{impls[1]}_s"], 2)
            summary.append(row)
    finally:
        bench.close()
    load_after = load()
    print_table(f"BGP UPDATE throughput (medians of {args.repeat}; load average before "
                f"{load_before}, after {load_after})", summary, list(summary[0]))
    write_json(args.json, {"benchmark": "bgp_throughput", "peer": bird_version(),
                           "process_model": "one daemon process per node (ip netns exec; harness at nice -5, daemons at 0)",
                           "repeat": args.repeat, "load_before": load_before,
                           "load_after": load_after, "summary": summary, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
