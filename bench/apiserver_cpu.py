"""Benchmark: the API server's CPU during a lab's bring-up (issue 11's start-up cost).

For each size, ``calicolab up`` of bench/lab_up.py's topology (3 nodes: the walkthrough's),
which returns once every node is Ready; then the CPU (utime + stime, from /proc) of the
lab's processes, found in the lab's cgroup: the API server's, etcd's and everything's
together, with the API server's share and its cost per node; then the lab goes down. Prints
a table with the load average before and after each run, writes JSON (default
reports/bench/apiserver_cpu.json). Run as root under the shared lock::

    flock /work/wt/heavy.lock .venv/bin/python bench/apiserver_cpu.py [--sizes 3,20] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.lab_up import topology  # noqa: E402
from testbed.lab import state as labstate  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_by_process(lab: str) -> dict[str, float]:
    """CPU seconds of the lab's live processes, summed by role (``apiserver``, ``etcd``, ...)."""
    cg = labstate.cgroup_path(lab)
    out: dict[str, float] = {}
    if cg is None or not cg.exists():
        raise SystemExit(f"no cgroup for lab {lab} (cgroup v2 needed)")
    for procs in cg.rglob("cgroup.procs"):
        for pid in procs.read_text().split():
            try:
                st = Path(f"/proc/{pid}/stat").read_text()
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            f = st[st.rindex(")") + 2:].split()
            cpu = (int(f[11]) + int(f[12])) / TICK
            args = [a.decode(errors="replace") for a in argv if a]
            role = "other"
            if any(a == "testbed.apiserver" for a in args):
                role = "apiserver"
            elif args and args[0].endswith("etcd"):
                role = "etcd"
            out[role] = out.get(role, 0.0) + cpu
            out["total"] = out.get("total", 0.0) + cpu
    return out


def one_run(nodes: int) -> dict:
    """Bring a lab of ``nodes`` up, read its CPU at Ready, take it down."""
    name = "walkthrough" if nodes == 3 else f"apicpu{nodes}"
    with tempfile.TemporaryDirectory() as d:
        topo = REPO / "topologies" / "walkthrough.yaml" if nodes == 3 else Path(d) / f"{name}.yaml"
        if nodes != 3:
            topo.write_text(topology(name, nodes, 4))
        load0 = os.getloadavg()[0]
        t0 = time.monotonic()
        up = subprocess.run([sys.executable, "-m", "testbed.cli", "up", str(topo)], cwd=REPO,
                            capture_output=True, text=True)
        took = time.monotonic() - t0
        try:
            if up.returncode != 0:
                raise SystemExit(f"calicolab up failed:\n{up.stdout[-2000:]}{up.stderr[-2000:]}")
            cpu = cpu_by_process(name)
        finally:
            subprocess.run([sys.executable, "-m", "testbed.cli", "--lab", name, "down"], cwd=REPO,
                           capture_output=True)
    return {"nodes": nodes, "up_s": round(took, 2), "load": [round(load0, 1), round(os.getloadavg()[0], 1)],
            "apiserver_s": round(cpu.get("apiserver", 0.0), 2), "etcd_s": round(cpu.get("etcd", 0.0), 2),
            "total_s": round(cpu.get("total", 0.0), 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="3,20", help="comma-separated node counts (default 3,20)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", default=str(REPO / "reports" / "bench" / "apiserver_cpu.json"))
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    runs = [one_run(n) for _ in range(args.repeat) for n in sizes]
    print(f"API server CPU when `calicolab up` returns (nodes Ready); {os.cpu_count()} CPUs")
    print("| nodes | run | up | load before -> after | API server CPU | etcd CPU | lab CPU |")
    print("|---|---|---|---|---|---|---|")
    for i, r in enumerate(runs):
        print(f"| {r['nodes']} | {i // len(sizes) + 1} | {r['up_s']:.2f} s | {r['load'][0]} -> {r['load'][1]} | "
              f"{r['apiserver_s']:.2f} s | {r['etcd_s']:.2f} s | {r['total_s']:.2f} s |")
    med = {n: statistics.median(r["apiserver_s"] for r in runs if r["nodes"] == n) for n in sizes}
    if len(sizes) > 1:
        lo, hi = min(sizes), max(sizes)
        print(f"API server CPU per node ({lo} -> {hi} nodes, medians): {(med[hi] - med[lo]) / (hi - lo):.3f} s")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"benchmark": "apiserver_cpu", "runs": runs, "median_apiserver_s": med},
                                          indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
