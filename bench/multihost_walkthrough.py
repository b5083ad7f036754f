"""Benchmark: the walkthrough over two SSH hosts, next to the same walkthrough on one machine.

Both labs are topologies/walkthrough.yaml, run in the same invocation, alternating
(``--repeat`` times each, medians):

* **one machine**: the lab as ``calicolab demo`` makes it, everything on this machine;
* **two hosts**: the same lab with its members spread over two "remote hosts" (network
  namespaces running Debian's sshd with their own keys, tests/sshhosts.py) as the multi-host
  test places them (k8s-m and k8s-w0 on ``ha``; k8s-w1, r0 and the internet host on ``hb``):
  every command goes through paramiko, ``lan0`` spans the hosts over kernel VXLAN and the
  pcaps are pulled back over SFTP.

For each it times the walkthrough's phases (testbed.walkthrough.Walkthrough, the demo's
steps): ``up --no-cni`` to all nodes registered NotReady, ``install-cni`` to all Ready, the
user's inspection (IPAM, BGP), the routes, the workloads Running, the six flows under
capture, their checks on the pcaps, ``down``; and checks every flow is ok and nothing is
left. The ratio column is two hosts / one machine: what SSH, VXLAN and pulling pcaps back
cost. Prints a table with the load average and writes JSON (default
reports/bench/multihost_walkthrough.json). Root, under the shared lock::

    flock /work/wt/heavy.lock .venv/bin/python bench/multihost_walkthrough.py [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchlib import write_json  # noqa: E402

from testbed.lab import state as labstate  # noqa: E402
from testbed.walkthrough import TOPOLOGY, Walkthrough  # noqa: E402
from tests.sshhosts import SimHosts, part_leftovers, spread_walkthrough  # noqa: E402
from tests.support import unique  # noqa: E402

#: the walkthrough's phases, in order, as the methods of Walkthrough that make them
PHASES = (("up", "up"), ("install-cni", "install"), ("inspect", "inspect"),
          ("routes", "wait_routes"), ("workloads", "deploy"), ("captures", "start_captures"),
          ("flows", "run_flows"), ("checks", "check_flows"))


def one_run(kind: str, workdir: Path) -> dict:
    """One walkthrough of ``kind`` ("one machine" or "two hosts"): seconds per phase, flows."""
    lab = unique("mhb")
    run_dir = workdir / lab
    run_dir.mkdir(parents=True)
    os.environ["CALICOLAB_PCAPS"] = str(run_dir / "pcaps")
    hosts = None
    result: dict = {"kind": kind, "lab": lab, "phases": {}, "flows": {}, "left": []}
    try:
        if kind == "two hosts":
            t = time.monotonic()
            hosts = SimHosts(run_dir / "hosts")
            result["phases"]["hosts (sshd in netns)"] = time.monotonic() - t
            topo = spread_walkthrough(run_dir, hosts, lab)
        else:
            topo = TOPOLOGY
        wt = Walkthrough(lab, topo, progress=lambda m: None, datastore="etcdv3")  # as the two hosts run
        t_all = time.monotonic()
        try:
            for phase, method in PHASES:
                t = time.monotonic()
                getattr(wt, method)()
                result["phases"][phase] = time.monotonic() - t
        finally:
            if wt.captures is not None and wt.captures.result is None:
                wt.captures.stop()
            t = time.monotonic()
            wt.down()
            result["phases"]["down"] = time.monotonic() - t
            result["phases"]["total"] = time.monotonic() - t_all
            result["flows"] = {f.name: ("ok" if f.ok else (f.error or f.result)) for f in wt.flows}
        if labstate.state_dir(lab).exists():
            result["left"].append(f"state dir {labstate.state_dir(lab)}")
        if hosts is not None:
            for name in hosts.hosts:
                result["left"] += [f"{name}: {x}" for x in part_leftovers(hosts, name, lab)]
    except Exception as exc:  # noqa: BLE001 - reported in the table, the other runs go on
        result["error"] = f"{type(exc).__name__}: {exc}"[:600]
    finally:
        if hosts is not None:
            hosts.close()
    result["ok"] = ("error" not in result and not result["left"] and len(result["flows"]) == 6
                    and all(v == "ok" for v in result["flows"].values()))
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write JSON. Exit 1 if a run failed."""
    ap = argparse.ArgumentParser(prog="bench/multihost_walkthrough.py", description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1, help="runs of each kind (medians)")
    ap.add_argument("--json", default=str(REPO / "reports" / "bench" / "multihost_walkthrough.json"))
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/multihost_walkthrough.py: needs root", file=sys.stderr)
        return 2
    load0 = os.getloadavg()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="calicolab-mhbench-") as tmp:
        for i in range(args.repeat):
            for kind in ("one machine", "two hosts"):
                r = one_run(kind, Path(tmp))
                print(f"run {i + 1} {kind}: {'ok' if r['ok'] else 'FAILED'} "
                      f"{r['phases'].get('total', 0):.1f}s {r.get('error', '')} {r['left'] or ''}",
                      flush=True)
                runs.append(r)
    load1 = os.getloadavg()
    phases = ["hosts (sshd in netns)"] + [p for p, _ in PHASES] + ["down", "total"]

    def med(kind: str, phase: str) -> float | None:
        vals = [r["phases"][phase] for r in runs if r["kind"] == kind and phase in r["phases"]]
        return statistics.median(vals) if vals else None

    rows = [("PHASE", "ONE MACHINE (s)", "TWO HOSTS (s)", "RATIO")]
    for phase in phases:
        a, b = med("one machine", phase), med("two hosts", phase)
        ratio = f"{b / a:.2f}" if a and b else "-"
        rows.append((phase, "-" if a is None else f"{a:.1f}", "-" if b is None else f"{b:.1f}", ratio))
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(width[i]) if i == 0 else c.rjust(width[i]) for i, c in enumerate(r)))
    for r in runs:
        bad = {k: v for k, v in r["flows"].items() if v != "ok"}
        if bad or r.get("error") or r["left"]:
            print(f"{r['kind']} ({r['lab']}): flows not ok {bad} error {r.get('error')} left {r['left']}")
    print(f"runs: {args.repeat} of each (medians); load average before {load0[0]:.2f} {load0[1]:.2f} "
          f"{load0[2]:.2f}, after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; {os.cpu_count()} cpus, "
          f"{platform.release()}")
    out = {"runs": runs, "loadavg_before": load0, "loadavg_after": load1, "cpus": os.cpu_count(),
           "kernel": platform.release(), "repeat": args.repeat}
    write_json(args.json, out)
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
