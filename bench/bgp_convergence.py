"""Benchmark: BGP full-mesh convergence and new-block propagation, calicolab vs BIRD 2.

N namespaces on one bridge, ONE DAEMON PROCESS PER NODE (as a lab runs calico-node), for
our speaker and for Debian's BIRD 2 in the same run, interleaved (ABBA order), repeated;
medians and ratios are printed with the load average. Timers are matched, connect delay
1 s for both (BIRD's floor). Each node originates its /26 block as a blackhole; received
blocks go to the kernel (``proto bird``). Measured:

* mesh convergence: first daemon spawned -> every node holds every block in its kernel
  (N(N-1)/2 sessions; process start-up, connect delay and route exchange included);
* new block: a /26 added to node 0's file + SIGHUP -> the route in every other node's kernel;
  with it, the CPU each receiver spent meanwhile (``/proc/<pid>/task/*/schedstat``), median.

Prints a table and writes JSON (``--json``). Needs root and bird2. Run under the lock:
``flock /work/wt/heavy.lock .venv/bin/python bench/bgp_convergence.py [--sizes 10,30] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bgp_peers import (  # noqa: E402
    ROOT,
    TIMERS,
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


def block(i: int) -> str:
    return f"10.{100 + i // 256}.{i % 256}.0/26"


NEW_BLOCK = "10.200.0.0/26"


def one_run(bench: Bench, impl: str, timeout: float) -> dict:
    nss = bench.namespaces
    addrs = [a for _ns, a in bench.lab.nodes]
    n = len(nss)
    nodes = [Node(ns, a, [b for b in addrs if b != a], blackholes=[block(i)])
             for i, (ns, a) in enumerate(bench.lab.nodes)]
    w = bench.watch
    try:
        t0 = time.monotonic()
        bench.start(impl, nodes)
        t_spawned = time.monotonic()
        w.wait(lambda: all(w.count(ns) == n for ns in nss), timeout, f"{impl}: mesh of {n}")
        t_conv = w.last_arrival(nss)
        others = nss[1:]
        nodes[0].blackholes.append(NEW_BLOCK)
        ran0 = [d.run_ns() for d in bench.daemons]
        t_apply = time.monotonic()
        bench.daemons[0].reconfigure()
        w.wait(lambda: all(w.when(ns, NEW_BLOCK) is not None for ns in others), timeout,
               f"{impl}: new block everywhere")
        t_new = w.last_arrival(others, {NEW_BLOCK})
        # CPU each receiver spent from the signal until the block was everywhere: what one
        # UPDATE costs it (the receivers share the machine's CPUs, so this sets the spread)
        ran = [(d.run_ns() - r0) / 1000 for d, r0 in zip(bench.daemons, ran0, strict=True)]
        cpu = sum(d.cpu_s() for d in bench.daemons)
        return {"impl": impl, "nodes": n, "spawn_all_s": round(t_spawned - t0, 3),
                "converged_s": round(t_conv - t0, 3),
                "new_block_ms": round((t_new - t_apply) * 1000, 1),
                "new_block_receiver_cpu_us": round(median(ran[1:]), 1),
                "new_block_sender_cpu_us": round(ran[0], 1), "cpu_s": round(cpu, 2)}
    except (TimeoutError, RuntimeError):
        for d in bench.daemons[:3]:
            print(f"--- {d.kind} {d.node.ns} log:\n{d.log_tail()}", file=sys.stderr)
        raise
    finally:
        bench.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,30")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--impls", default="calicolab,bird")
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "results",
                                                   "bgp_convergence.json"))
    args = ap.parse_args()
    require_root_and_bird()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    compile_bytecode()
    impls = args.impls.split(",")
    load_before = load()
    runs, summary = [], []
    for n in (int(x) for x in args.sizes.split(",")):
        bench = Bench(n, "172.29.0.0/22")
        try:
            for rep in range(args.repeat):
                order = impls if rep % 2 == 0 else impls[::-1]  # ABBA: drift hits both
                for impl in order:
                    r = one_run(bench, impl, args.timeout)
                    r["rep"] = rep
                    r["load1"] = load()[0]
                    runs.append(r)
                    print(f"  N={n} rep {rep} {impl}: converged {r['converged_s']} s, "
                          f"new block {r['new_block_ms']} ms (CPU per receiver "
                          f"{r['new_block_receiver_cpu_us']} us), {r['cpu_s']} CPU-s", file=sys.stderr)
        finally:
            bench.close()
        row = {"nodes": n}
        for impl in impls:
            mine = [r for r in runs if r["nodes"] == n and r["impl"] == impl]
            row[f"{impl}_converged_s"] = median([r["converged_s"] for r in mine])
            row[f"{impl}_new_block_ms"] = median([r["new_block_ms"] for r in mine])
            row[f"{impl}_rx_cpu_us"] = median([r["new_block_receiver_cpu_us"] for r in mine])
            row[f"{impl}_cpu_s"] = median([r["cpu_s"] for r in mine])
        if len(impls) == 2:
            a, b = impls
            row["converged_ratio"] = round(row[f"{a}_converged_s"] / row[f"{b}_converged_s"], 2)
            row["new_block_ratio"] = round(row[f"{a}_new_block_ms"] / row[f"{b}_new_block_ms"], 2)
            row["rx_cpu_ratio"] = (round(row[f"{a}_rx_cpu_us"] / row[f"{b}_rx_cpu_us"], 2)
                                   if row[f"{b}_rx_cpu_us"] else None)
            row["cpu_ratio"] = round(row[f"{a}_cpu_s"] / row[f"{b}_cpu_s"], 2) if row[f"{b}_cpu_s"] else None
        summary.append(row)
    load_after = load()
    print_table(f"BGP mesh convergence and new-block propagation (medians of {args.repeat}, "
                f"connect delay {TIMERS.connect_delay:g} s both; load average before "
                f"{load_before}, after {load_after})", summary, list(summary[0]))
    write_json(args.json, {"benchmark": "bgp_convergence", "peer": bird_version(),
                           "process_model": "one daemon process per node (ip netns exec; harness at nice -5, daemons at 0)",
                           "timers": TIMERS.__dict__, "repeat": args.repeat,
                           "load_before": load_before, "load_after": load_after,
                           "summary": summary, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
