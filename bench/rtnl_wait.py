"""Benchmark: how long a netlink request waits for the kernel's RTNL lock, while a command runs.

Every link, address and route change on the machine (and, on this kernel, every link dump and
``RTM_GETLINK``) takes one global lock, the RTNL mutex, whatever the network namespace. A lab
of 50 nodes changes links and routes in 50 namespaces at once; a holder that sleeps under the
lock (an RCU grace period, for instance) and then waits for a CPU keeps every other node
waiting. This tool asks for ``lo`` (``RTM_GETLINK`` by name, read only) every ``--interval``
seconds from a ``SCHED_FIFO`` thread, so its own wait for a CPU stays out of the measurement,
and reports how long the answers took, next to its floor: the same requests for
``--floor-seconds`` just before the command starts (~0.1 ms on an idle machine).

Run a command under it (sampling stops when the command ends) or sample for ``--seconds``::

    flock /work/wt/heavy.lock .venv/bin/python bench/rtnl_wait.py -- \\
        .venv/bin/python bench/install_manifest.py --sizes 50 --modes upstream

Prints a table with the load average; ``--json`` writes it too. Needs root (SCHED_FIFO).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kernel.netlink import Netlink  # noqa: E402

STUCK_S = 0.1  # an answer slower than this counts as a stall


def summarize(latencies: list[float], stuck: float = STUCK_S) -> dict[str, float | int]:
    """Percentiles (ms) of ``latencies`` (seconds), how many took longer than ``stuck`` and their
    total (s) (pure)."""
    if not latencies:
        return {"samples": 0}
    ds = sorted(latencies)

    def pct(q: float) -> float:
        return round(1000 * ds[min(len(ds) - 1, int(len(ds) * q))], 2)

    slow = [d for d in ds if d > stuck]
    return {"samples": len(ds), "p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99),
            "max_ms": round(1000 * ds[-1], 1), "stalls": len(slow), "stalled_s": round(sum(slow), 2)}


def sample(until: Callable[[], bool], interval: float) -> list[float]:
    """GETLINK ``lo`` every ``interval`` s until ``until()``; the answer times (s)."""
    out: list[float] = []
    with Netlink() as nl:
        while not until():
            t = time.monotonic()
            nl.link("lo")
            out.append(time.monotonic() - t)
            time.sleep(interval)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=600.0, help="sample at most this long (default 600)")
    p.add_argument("--interval", type=float, default=0.02, help="seconds between requests (default 0.02)")
    p.add_argument("--floor-seconds", type=float, default=2.0,
                   help="sample this long before the command starts: the floor (default 2)")
    p.add_argument("--json", default="reports/bench/rtnl_wait.json", help="where to write the results")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND...: sample while it runs")
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except PermissionError:
        p.error("needs root: the sampler runs as SCHED_FIFO so that its own wait for a CPU is not measured")
    load0 = os.getloadavg()
    floor_end = time.monotonic() + args.floor_seconds
    floor = summarize(sample(lambda: time.monotonic() >= floor_end, args.interval))
    proc = None
    if cmd:
        proc = subprocess.Popen(cmd, preexec_fn=lambda: os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0)))
    deadline = time.monotonic() + args.seconds
    try:
        lat = sample(lambda: time.monotonic() >= deadline or (proc is not None and proc.poll() is not None),
                     args.interval)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait()
    res = summarize(lat)
    res.update({"floor": floor, "command": cmd, "load_before": [round(x, 1) for x in load0],
                "load_after": [round(x, 1) for x in os.getloadavg()],
                "returncode": proc.returncode if proc is not None else None})
    print(f"\nRTNL wait (RTM_GETLINK lo every {args.interval * 1000:.0f} ms, SCHED_FIFO), load "
          f"{res['load_before'][0]} -> {res['load_after'][0]}")
    print(f"{'':>8} {'samples':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'>100 ms':>8} "
          f"{'stalled s':>10}")
    for label, row in (("floor", floor), ("during", res)):
        if row["samples"]:
            print(f"{label:>8} {row['samples']:>8} {row['p50_ms']:>8} {row['p90_ms']:>8} {row['p99_ms']:>8} "
                  f"{row['max_ms']:>8} {row['stalls']:>8} {row['stalled_s']:>10}")
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {args.json}")
    return proc.returncode if proc is not None and proc.returncode else 0


if __name__ == "__main__":
    sys.exit(main())
