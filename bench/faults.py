"""Benchmark: faults injected into a walkthrough lab, with the time each takes to recover.

Brings up the walkthrough lab (plain `up`: calico-node, etcd, the API server, the kubelets
and calico-kube-controllers are the lab's supervised services), puts pod fault-a on k8s-w0
and fault-b on k8s-w1, and pings fault-b from fault-a every 0.1 s through every fault.
For each fault it measures:

* recovered (s): from the injection (for a link flap: from the link coming back) until the
  daemon runs again, `calicolab status` says healthy and a ping is answered again;
* probes lost: pings from fault-a to fault-b never answered (0.1 s apart);
* leaked: routes or iptables rules on the affected node programmed twice or different from
  before the fault, lab processes more than before;
* verdict: ok (recovered within 15 s, nothing leaked), or what failed.

Then the lab is taken down and checked for leftovers. Prints a table and writes JSON
(default reports/bench/faults.json)::

    sudo .venv/bin/python bench/faults.py [--json PATH] [--flap 2] [--soak 1000] [--soak-batch 50]

The last row is the churn soak (:mod:`testbed.lab.soak`): ``--soak`` pod create/delete
cycles across the workers while the pings go on; its "recovered" is the time from the last
batch's deletion until the pods are gone and nothing is left.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from testbed.lab import faults  # noqa: E402
from testbed.lab import lifecycle as labmod  # noqa: E402
from testbed.lab import state as labstate  # noqa: E402
from testbed.lab.clean import clean_lab  # noqa: E402
from testbed.lab.footprint import LabCluster  # noqa: E402
from testbed.lab.soak import soak  # noqa: E402
from testbed.poll import WaitTimeout, wait_for  # noqa: E402

BOUND = 15.0  # the "converged within 15 s"


def healthy(lab: str) -> bool:
    return labmod.status(lab)["health"]["state"] == "healthy"


def service_running(lab: str, key: str, restarts: int) -> bool:
    rec = labstate.read_state(lab)["services"][key]
    return labstate.pid_alive(rec["pid"], rec["start"]) and rec.get("restarts", 0) >= restarts


def measure(lab: str, prober: faults.Prober, name: str, node: str, inject: Callable[[], float],
            done: Callable[[], bool]) -> dict:
    """Inject one fault; wait until ``done`` and the lab is healthy and pings flow again."""
    st = labstate.read_state(lab)
    routes0, rules0 = faults.node_dataplane(lab, node)
    procs0 = faults.lab_processes(st)
    _a0, lost0, _ = prober.result()
    t0 = inject()
    error = None
    try:
        wait_for(done, timeout=60, what=f"{name}: daemon back")
        wait_for(lambda: healthy(lab), timeout=60, what=f"{name}: status healthy")
        wait_for(lambda: prober.answered_since(time.time() - 0.3), lambda n: n > 0, timeout=60,
                 what=f"{name}: pings answered")
    except WaitTimeout as exc:
        error = str(exc)
    recovered = time.time() - t0
    time.sleep(1.0)  # let probes in flight at recovery be answered or counted
    _a1, lost1, _ = prober.result()
    routes1, rules1 = faults.node_dataplane(lab, node)
    leaks = []
    if faults.duplicates(routes1) or faults.duplicates(rules1):
        leaks.append("duplicate routes/rules")
    if sorted(routes1) != sorted(routes0):
        leaks.append(f"routes differ ({len(routes0)} -> {len(routes1)})")
    if len(rules1) != len(rules0):
        leaks.append(f"rules {len(rules0)} -> {len(rules1)}")
    procs1 = faults.lab_processes(labstate.read_state(lab))
    if procs1 > procs0:
        leaks.append(f"processes {procs0} -> {procs1}")
    verdict = "ok" if error is None and recovered <= BOUND and not leaks else (
        error or ("slower than 15 s" if recovered > BOUND else "leaked"))
    return {"fault": name, "recovered_s": round(recovered, 2), "probes_lost": lost1 - lost0,
            "leaked": ", ".join(leaks) or "nothing", "verdict": verdict}


def soak_row(lab: str, prober: faults.Prober, cycles: int, batch: int) -> dict:
    """The churn soak as a row: recovered = until its pods are gone and the footprint is back;
    probes lost = fault-a -> fault-b pings lost meanwhile; leaked = the soak's leak check."""
    _a0, lost0, _ = prober.result()
    res = soak(LabCluster(lab), cycles, batch, run="soak", progress=lambda m: print(f"  soak: {m}", flush=True))
    _a1, lost1, _ = prober.result()
    for cat, items in res.leaks.items():
        print(f"  soak left {cat}: {items[:10]}", flush=True)
    leaked = ", ".join(f"{k} {len(v)}" for k, v in res.leaks.items())
    if res.duplicate_ips:
        leaked = ", ".join(filter(None, [leaked, f"{len(res.duplicate_ips)} duplicate IP(s)"]))
    return {"fault": f"{res.cycles:,}-pod churn soak ({batch} per batch, {res.row()['pods_per_s']} pods/s)",
            "recovered_s": round(res.settle_seconds, 2), "probes_lost": lost1 - lost0,
            "leaked": leaked or "nothing", "verdict": res.verdict, "soak": res.row(),
            "soak_leaks": {k: v[:20] for k, v in res.leaks.items()},
            "soak_duplicate_ips": res.duplicate_ips}


def kill(lab: str, key: str) -> Callable[[], float]:
    def go() -> float:
        t = time.time()
        faults.kill_service(lab, key)
        return t
    return go


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=str(REPO / "reports" / "bench" / "faults.json"))
    ap.add_argument("--flap", type=float, default=2.0, help="seconds the uplink stays down")
    ap.add_argument("--soak", type=int, default=1000, metavar="CYCLES",
                    help="pod create/delete cycles of the churn soak (0: no soak row)")
    ap.add_argument("--soak-batch", type=int, default=50, metavar="N", help="pods per soak batch")
    args = ap.parse_args(argv)
    if args.soak < 0 or args.soak_batch < 1:
        ap.error("--soak must be >= 0 and --soak-batch >= 1")
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    load0 = os.getloadavg()
    lab = f"fb{os.getpid() % 100000}"
    tmp = Path(tempfile.mkdtemp(prefix="faults-bench-"))
    topo = tmp / f"{lab}.yaml"
    text = (REPO / "topologies" / "walkthrough.yaml").read_text()
    topo.write_text("\n".join(f"name: {lab}" if line.startswith("name: ") else line
                              for line in text.splitlines()) + "\n")
    rows: list[dict] = []
    leftovers: list[str] = []
    try:
        t_up = time.monotonic()
        labmod.up(topo, progress=lambda _m: None, ready_timeout=30, datastore="etcdv3")  # tests/lab/test_faults.py's lab
        faults.apply_pod(lab, "fault-a", "k8s-w0")
        faults.apply_pod(lab, "fault-b", "k8s-w1")
        ps = wait_for(lambda: faults.pods(lab), lambda p: all(faults.pod_running(p.get(n))
                                                               for n in ("fault-a", "fault-b")),
                      timeout=60, what="pods Running")
        print(f"lab {lab} up with 2 pods in {time.monotonic() - t_up:.1f}s", flush=True)
        prober = faults.Prober(faults.pod_pid(ps["fault-a"]), ps["fault-b"]["status"]["podIP"]).start()
        wait_for(lambda: prober.result()[0], lambda n: n >= 5, timeout=20, what="first pings answered")
        try:
            plan = [
                ("kill -9 calico-node (k8s-w0)", "k8s-w0", "k8s-w0/calico-node"),
                ("kill -9 kubelet (k8s-w1)", "k8s-w1", "k8s-w1/kubelet"),
                ("kill -9 etcd", "k8s-m", "k8s-m/etcd"),
                ("kill -9 kube-apiserver", "k8s-m", "k8s-m/kube-apiserver"),
                ("kill -9 calico-kube-controllers", "k8s-m", "k8s-m/calico-kube-controllers"),
                ("kill -9 calico-node (k8s-m)", "k8s-m", "k8s-m/calico-node"),
            ]
            for name, node, key in plan:
                before = labstate.read_state(lab)["services"][key].get("restarts", 0)
                rows.append(measure(lab, prober, name, node, kill(lab, key),
                                    lambda key=key, n=before + 1: service_running(lab, key, n)))
                print(rows[-1], flush=True)

            def flap() -> float:
                faults.set_link(lab, "k8s-w0", "eth0", up=False)
                time.sleep(args.flap)
                faults.set_link(lab, "k8s-w0", "eth0", up=True)
                return time.time()

            ns = labstate.netns_name(lab, "k8s-w0")

            def default_route() -> bool:
                import subprocess
                out = subprocess.run(["ip", "-n", ns, "route"], capture_output=True, text=True).stdout
                return "default via" in out

            rows.append(measure(lab, prober, f"{args.flap:g} s flap of k8s-w0 eth0", "k8s-w0", flap, default_route))
            print(rows[-1], flush=True)
            if args.soak:
                rows.append(soak_row(lab, prober, args.soak, args.soak_batch))
                print(rows[-1], flush=True)
        finally:
            prober.stop()
        st = labstate.read_state(lab)
        labmod.down(lab, progress=lambda _m: None)
        from tests.lab.lab_helpers import leftovers as find_leftovers

        leftovers = find_leftovers(st)
    finally:
        clean_lab(lab)
    load1 = os.getloadavg()
    header = ("FAULT", "RECOVERED (s)", "PROBES LOST", "LEAKED", "VERDICT")
    table = [header] + [(r["fault"], f"{r['recovered_s']:.2f}", str(r["probes_lost"]), r["leaked"], r["verdict"])
                        for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(len(header))]
    print()
    for t in table:
        print("  ".join(c.ljust(w) for c, w in zip(t, widths, strict=True)).rstrip())
    print(f"\nprobes: ping every 0.1 s fault-a (k8s-w0) -> fault-b (k8s-w1); bound {BOUND:g} s; "
          f"leftovers after down: {leftovers or 'none'}")
    print(f"load average before {load0[0]:.2f}, after {load1[0]:.2f}; {os.cpu_count()} CPUs; {platform.node()}")
    out = {"rows": rows, "leftovers_after_down": leftovers, "bound_s": BOUND, "probe_interval_s": 0.1,
           "loadavg_before": load0, "loadavg_after": load1, "cpus": os.cpu_count(),
           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0 if all(r["verdict"] == "ok" for r in rows) and not leftovers else 1


if __name__ == "__main__":
    sys.exit(main())
