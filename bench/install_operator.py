"""Benchmark: Calico installed by the Tigera operator vs laid out directly by `up`, N nodes Ready and pods answering.

For each size (default 50 nodes) and each run, interleaved, two labs of the same topology (one
node segment behind a gateway router, Kubernetes datastore, pool 192.168.0.0/16 /26
VXLANCrossSubnet as custom-resources.yaml has it, an nginx Deployment of one pod per worker):

- **operator**: ``calicolab up --no-cni``, then what ``calicolab install-cni --operator`` does
  (``kubectl create -f tigera-operator.yaml``, ``kubectl create -f custom-resources.yaml`` with
  the real kubectl, waiting for ``kubectl get tigerastatus`` calico Available), then every Node
  Ready, every pod Running and answering HTTP 200 from the control-plane node. Timed from the
  first ``kubectl create`` ("install") and from the start of ``up`` ("total").
- **direct** (the peer): ``calicolab up`` without ``--no-cni`` (the same calico-system layout
  applied by the lab itself), timed from the start of ``up`` to the same end point.

The end point is observed as it happens (:func:`follow`: bench/lab_up.py's watches on the
Nodes and pods and its prober, started with the install), not after the install's own waits
(tigerastatus Available, calico-node ready on every node). Each run records on how many nodes
the pods ran (``pod_nodes``): pods created before the nodes are Ready go where the scheduler
finds room first.

Must hold (issue 15): by the operator, 50 nodes Ready and pods answering <= 30 s (the install).
Prints a table with the load average, writes JSON (default reports/bench/install_operator.json).
Run as root under the shared lock::

    flock /work/wt/heavy.lock .venv/bin/python bench/install_operator.py [--sizes 50] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from lab_up import observe, topology  # noqa: E402

from testbed.lab import lifecycle as labmod  # noqa: E402
from testbed.lab import netns as nsmod  # noqa: E402
from testbed.lab.clean import clean_lab  # noqa: E402

MUST_HOLD_SECONDS = {50: 30.0}
POOL = "  pool: {cidr: 192.168.0.0/16, blockSize: 26, ipipMode: Never, vxlanMode: CrossSubnet, natOutgoing: true}"


def kdd_topology(name: str, nodes: int, pods: int) -> str:
    """bench/lab_up.py's topology in the Kubernetes datastore with custom-resources.yaml's pool."""
    lines = topology(name, nodes, pods).splitlines()
    i = lines.index("calico:")
    j = next(k for k in range(i + 1, len(lines)) if lines[k].startswith("  pool:"))
    lines[j] = POOL
    lines.insert(i + 1, "  datastore: kubernetes")
    return "\n".join(lines) + "\n"


def follow(st: dict, nodes: int, pods: int, t0: float, timeout: float = 240.0) -> Callable[[], dict]:
    """Start following the lab now, while the install runs (bench/lab_up.py's ``observe`` in the
    control-plane node's netns, on a thread: watches on the Nodes and the pods, each pod probed
    from the moment its IP shows; times in monotonic seconds from ``t0``). Returns a function
    that waits for what it saw. The install's own waits (tigerastatus, calico-node ready on
    every node) do not delay what is observed: a Node Ready while calico-node still starts on
    another node counts when it turned Ready."""
    from testbed.lab import kubeadm

    cp_ns = st["hosts"][st["control_plane"]]["netns"]
    conf = str(kubeadm.admin_conf(st))
    box: dict = {}

    def target() -> None:
        try:
            box["obs"] = nsmod.run_in(cp_ns, observe, conf, nodes, pods, t0, timeout)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
            box["error"] = exc

    th = threading.Thread(target=target, name="follow", daemon=True)
    th.start()

    def result() -> dict:
        th.join(timeout + 30)
        if "error" in box:
            raise box["error"]
        if "obs" not in box:
            raise RuntimeError(f"following the lab did not end within {timeout + 30:.0f}s")
        return box["obs"]

    return result


def _end_point(result: dict, obs: dict, nodes: int, pods: int, epoch0: float, key: str) -> None:
    """Record from ``obs`` (:func:`follow`) when every Node was Ready, every pod Running and
    answering HTTP 200 (seconds since the follow's ``t0`` / ``epoch0``), and on how many nodes
    the pods run. Raises when a pod never ran or never answered."""
    if "nodes_ready_s" in obs:
        result[f"nodes_ready_{key}_s"] = obs["nodes_ready_s"]
    else:
        result["nodes_not_ready"] = sorted(n for n, ok in obs["nodes"].items() if not ok)
    if "pods_running_s" not in obs:
        raise RuntimeError(f"{pods} pods not Running with an IP; last seen: {obs.get('pods')}")
    result[f"pods_running_{key}_s"] = obs["pods_running_s"]
    seen = obs["seen"]
    ips = sorted(ip for _, ip, _ in obs["pods"].values())
    missing = sorted(set(ips) - set(seen))
    if missing:
        raise RuntimeError(f"pods never answered HTTP 200: {', '.join(missing)}")
    result[f"pods_answer_{key}_s"] = round(max(seen.values()) - epoch0, 3)
    result["pod_nodes"] = len({n for _, _, n in obs["pods"].values()})


def run_one(mode: str, nodes: int, pods: int, workdir: Path) -> dict:
    """One lab: ``operator`` (up --no-cni + the operator install) or ``direct`` (up)."""
    from testbed.k8s.tigera.install import install_by_operator

    name = f"inst{nodes}{mode[0]}-{os.getpid() % 10000}"
    path = workdir / f"{name}.yaml"
    path.write_text(kdd_topology(name, nodes, pods))
    result: dict = {"mode": mode, "nodes": nodes, "pods": pods, "lab": name}
    t0, epoch0 = time.monotonic(), time.time()

    def progress(m: str) -> None:
        print(f"  [{time.monotonic() - t0:6.2f}s] {m}", file=sys.stderr)

    try:
        st = labmod.up(path, progress=progress, timeout=300, ready_timeout=60, no_cni=(mode == "operator"))
        result["up_returned_s"] = round(time.monotonic() - t0, 3)
        if mode == "operator":
            t1, epoch1 = time.monotonic(), time.time()
            seen = follow(st, nodes, pods, t1)
            install_by_operator(name, progress, timeout=120)
            result["tigerastatus_available_s"] = round(time.monotonic() - t1, 3)
            labmod.install_cni(name, timeout=120, operator=True)
            _end_point(result, seen(), nodes, pods, epoch1, "install")
            if "nodes_ready_install_s" in result:
                result["nodes_ready_total_s"] = round(result["nodes_ready_install_s"] + (t1 - t0), 3)
            result["pods_answer_total_s"] = round(result["pods_answer_install_s"] + (epoch1 - epoch0), 3)
        else:
            _end_point(result, follow(st, nodes, pods, t0)(), nodes, pods, epoch0, "total")
        labmod.down(name, progress=lambda _m: None)
    except Exception as exc:  # noqa: BLE001 - recorded, lab removed below
        result["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
        result["calico_system_pods"] = _calico_pods(name)
    finally:
        clean_lab(name)
    return result


def _calico_pods(lab: str) -> list[str]:
    """What calico-system's pods were doing when a run failed (for the JSON)."""
    try:
        from testbed.lab import kubeadm
        from testbed.lab import netns as nsmod
        from testbed.lab import state as labstate

        st = labstate.resolve(lab)
        conf = str(kubeadm.admin_conf(st))

        def read() -> list[str]:
            import kubeclient

            client = kubeclient.Client(kubeclient.from_kubeconfig(conf))
            out = []
            for p in client.list("v1", "pods", "calico-system")["items"]:
                stt = p.get("status") or {}
                conds = {c["type"]: c["status"] for c in stt.get("conditions") or []}
                cs = [(c["name"], c.get("ready"), list((c.get("state") or {}).keys()), c.get("restartCount"))
                      for c in stt.get("containerStatuses") or []]
                if conds.get("Ready") != "True":
                    out.append(f"{p['metadata']['name']} on {p['spec'].get('nodeName')}: {stt.get('phase')} "
                               f"{conds} {cs}")
            return out

        return nsmod.run_in(st["hosts"][st["control_plane"]]["netns"], read)
    except Exception as exc:  # noqa: BLE001 - diagnostics only
        return [f"could not read: {exc}"]


def _median(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if isinstance(r.get(key), float | int)]
    return round(statistics.median(vals), 3) if vals else None


def main(argv: list[str] | None = None) -> int:
    """Run (operator, direct, operator, direct, ...) per size; print a table; write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="50", help="node counts, comma separated")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each per size")
    ap.add_argument("--json", default=str(REPO / "reports" / "bench" / "install_operator.json"))
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/install_operator.py needs root", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    sizes = []
    with tempfile.TemporaryDirectory(prefix="calicolab-bench-") as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            pods = max(n - 1, 1)
            runs: dict[str, list[dict]] = {"operator": [], "direct": []}
            for k in range(args.repeat):
                for mode in ("operator", "direct"):
                    print(f"{mode}: {n} nodes, {pods} pods (run {k + 1}/{args.repeat}) ...", file=sys.stderr)
                    runs[mode].append(run_one(mode, n, pods, Path(tmp)))
            med = {m: {key: _median(rs, key) for key in
                       ("up_returned_s", "tigerastatus_available_s", "nodes_ready_install_s", "pods_answer_install_s",
                        "nodes_ready_total_s", "pods_answer_total_s")} for m, rs in runs.items()}
            entry: dict = {"nodes": n, "pods": pods, "runs": runs, "median_s": med}
            if n in MUST_HOLD_SECONDS:
                op = med["operator"]
                worst = max((v for v in (op["nodes_ready_install_s"], op["pods_answer_install_s"]) if v), default=None)
                entry["must_hold"] = f"operator install: Ready and pods answering <= {MUST_HOLD_SECONDS[n]:g} s"
                entry["holds"] = worst is not None and worst <= MUST_HOLD_SECONDS[n] and \
                    all("error" not in r and not r.get("nodes_not_ready") for r in runs["operator"])
            sizes.append(entry)
    load_after = os.getloadavg()
    print(f"Calico install by the operator vs `up`'s direct layout (Kubernetes datastore), medians of {args.repeat}, "
          f"interleaved; {os.cpu_count()} CPUs, load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    hdr = ("nodes", "pods", "mode", "up returns", "calico Avail", "Ready (inst)", "answer (inst)", "Ready (total)",
           "answer (total)", "must hold", "")

    def f(v: float | None) -> str:
        return f"{v:.2f}s" if v is not None else "-"

    print("  ".join(f"{h:>13}" for h in hdr))
    for e in sizes:
        for mode in ("operator", "direct"):
            m = e["median_s"][mode]
            verdict = ("HOLDS" if e["holds"] else "DOES NOT HOLD") if mode == "operator" and "holds" in e else ""
            row = (str(e["nodes"]), str(e["pods"]), mode, f(m["up_returned_s"]), f(m["tigerastatus_available_s"]),
                   f(m["nodes_ready_install_s"]), f(m["pods_answer_install_s"]), f(m["nodes_ready_total_s"]),
                   f(m["pods_answer_total_s"]), e.get("must_hold", "-") if mode == "operator" else "", verdict)
            print("  ".join(f"{c:>13}" for c in row))
        for r in e["runs"]["operator"] + e["runs"]["direct"]:
            if r.get("pod_nodes"):
                print(f"    {r['mode']}: pods on {r['pod_nodes']} node(s)")
            if r.get("nodes_not_ready"):
                print(f"    {r['mode']}: never Ready: {', '.join(r['nodes_not_ready'])}")
            if r.get("error"):
                print(f"    {r['mode']}: error: {r['error']}")
    out = {"benchmark": "install_operator", "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
           "load_average": {"before": load_before, "after": load_after}, "repeat": args.repeat,
           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sizes": sizes}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}")
    return 0 if all("error" not in r for e in sizes for rs in e["runs"].values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
