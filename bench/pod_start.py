"""Benchmark: pod start per runtime (netns, containerd, docker) and the runtime's floor.

For each runtime the script brings up a 2-node lab (``topologies/containers.yaml``, calico-node
started directly), pulls the nginx image once (one pod, deleted: the import is not what is
measured), then applies 20 nginx pods pinned to ``k8s-w1`` in one ``kubectl apply`` and records
for each pod when it is first ``Running`` (the store polled every 50 ms) and when it first
answers ``GET /`` with 200 from ``k8s-w0`` (through the IPIP tunnel; each pod probed from the
moment it is Running). Latencies are from the
apply; the table gives p50 and max over the 20 pods.

The floor, in the same lab on the same node: 20 containers of the same image started without
CNI by the runtime's own client, 8 at a time as the kubelet's workers do (``ctr run -d`` for
containerd, ``containers.run(network_mode="none")`` through the Docker SDK for docker), each
timed until nginx listens on :80 in its netns. The netns runtime has no floor (no runtime).
Prints a table with the load average, writes JSON (default reports/bench/pod_start.json)::

    sudo flock /work/wt/heavy.lock .venv/bin/python bench/pod_start.py [--runtimes netns,containerd,docker] [--pods 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from lab_up import probe_until_200  # noqa: E402

from testbed.k8s import containerd, dockerrt, imagebuild, runtime  # noqa: E402
from testbed.lab import lifecycle as labmod  # noqa: E402
from testbed.lab import netns as nsmod  # noqa: E402
from testbed.lab import state as labstate  # noqa: E402
from testbed.lab.clean import clean_lab  # noqa: E402
from testbed.poll import wait_for  # noqa: E402

TOPOLOGY = REPO / "topologies" / "containers.yaml"
NODE, PROBER = "k8s-w1", "k8s-w0"


def pods_yaml(n: int, prefix: str) -> str:
    """``n`` nginx pods pinned to :data:`NODE`."""
    return "".join(f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {prefix}{i}}}\n"
                   f"spec:\n  nodeName: {NODE}\n  containers:\n  - {{name: nginx, image: nginx}}\n"
                   for i in range(n))


def kubectl(lab: str, *args: str, stdin: str | None = None) -> str:
    """``calicolab --lab LAB kubectl ...``."""
    res = subprocess.run([sys.executable, "-m", "testbed.cli", "--lab", lab, "kubectl", *args],
                         input=stdin, capture_output=True, text=True, timeout=120, cwd=str(REPO))
    if res.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


def pod_phases(cp_ns: str, kubeconfig: str, prefix: str) -> dict[str, tuple[str, str]]:
    """name -> (phase, podIP) of the benchmark's pods, read through the lab's API server."""
    from kubeclient import Client, from_kubeconfig

    def read() -> dict:
        return {p["metadata"]["name"]: ((p.get("status") or {}).get("phase"), (p.get("status") or {}).get("podIP"))
                for p in Client(from_kubeconfig(kubeconfig)).list("v1", "pods", "default")["items"]
                if p["metadata"]["name"].startswith(prefix)}

    return nsmod.run_in(cp_ns, read)


def measure_pods(lab: str, st: dict, n: int) -> dict:
    """Apply ``n`` pods; per pod the seconds to Running and to HTTP 200."""
    cp_ns = st["hosts"][PROBER]["netns"]
    from testbed.lab import kubeadm

    eps = str(kubeadm.admin_conf(st))
    kubectl(lab, "apply", "-f", "-", stdin=pods_yaml(1, "warm"))
    wait_for(lambda: pod_phases(cp_ns, eps, "warm"), lambda v: v.get("warm0", ("",))[0] == "Running",
             timeout=120, what="the warm-up pod Running")
    kubectl(lab, "delete", "pod", "warm0")
    t0 = time.time()
    kubectl(lab, "apply", "-f", "-", stdin=pods_yaml(n, "b"))
    running: dict[str, float] = {}
    probes = []
    pool = ThreadPoolExecutor(n)
    deadline = time.monotonic() + 180
    while len(running) < n and time.monotonic() < deadline:
        for name, (phase, ip) in pod_phases(cp_ns, eps, "b").items():
            if phase == "Running" and ip and name not in running:
                running[name] = time.time() - t0
                # each pod probed from the moment it is Running, as a user's curl would
                probes.append(pool.submit(nsmod.run_in, cp_ns, probe_until_200, [ip], 60.0))
        time.sleep(0.05)
    if len(running) < n:
        raise RuntimeError(f"only {len(running)} of {n} pods Running after 180 s")
    answered = [t - t0 for f in probes for t in f.result().values()]
    pool.shutdown()
    if len(answered) < n:
        raise RuntimeError(f"only {len(answered)} of {n} pods answered HTTP 200")
    return {"running": sorted(running.values()), "answering": sorted(answered)}


def _listening_within(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if runtime.listening(pid, 80):
            return True
        time.sleep(0.005)
    return False


def floor_containerd(lab: str, n: int) -> list[float]:
    """``ctr run -d`` of the nginx image ``n`` times (8 at a time), no CNI; seconds to :80."""
    base = labstate.runtime_dir(lab, NODE) / "containerd"
    ctr = containerd.Ctr(containerd.socket_path(base))
    ref = imagebuild.reference(imagebuild.SPECS["nginx"])
    t0 = time.monotonic()
    ids = [f"floor-{os.getpid()}-{i}" for i in range(n)]

    def one(cid: str) -> float:
        ctr.run_ctr("run", "-d", "--null-io", "--cgroup", f"calicolab-{lab}/{NODE}/{cid}", ref, cid)
        pid = ctr.tasks()[cid].pid
        if not _listening_within(pid):
            raise RuntimeError(f"{cid}: nginx did not listen")
        return time.monotonic() - t0

    try:
        with ThreadPoolExecutor(8) as pool:
            return sorted(pool.map(one, ids))
    finally:
        for cid in ids:
            ctr.kill(cid, "SIGKILL")
        time.sleep(0.3)
        for cid in ids:
            ctr.delete_task(cid)
            ctr.remove(cid)


def floor_docker(lab: str, n: int) -> list[float]:
    """Docker SDK ``containers.run(network_mode="none")`` ``n`` times (8 at a time); seconds to :80."""
    import docker

    client = docker.DockerClient(base_url=f"unix://{dockerrt.socket_path(labstate.runtime_dir(lab, NODE))}",
                                 version=dockerrt.API_VERSION)
    ref = imagebuild.reference(imagebuild.SPECS["nginx"])
    t0 = time.monotonic()
    made = []

    def one(i: int) -> float:
        c = client.containers.run(ref, name=f"floor-{os.getpid()}-{i}", detach=True, network_mode="none")
        made.append(c)
        c.reload()
        if not _listening_within(int(c.attrs["State"]["Pid"])):
            raise RuntimeError(f"{c.name}: nginx did not listen")
        return time.monotonic() - t0

    try:
        with ThreadPoolExecutor(8) as pool:
            return sorted(pool.map(one, range(n)))
    finally:
        for c in made:
            c.remove(force=True)


def run_one(rt: str, n: int) -> dict:
    """One lab with runtime ``rt``: the pods, then the floor."""
    lab = f"bps{rt[:4]}{os.getpid() % 10000}"
    out: dict = {"runtime": rt, "pods": n}
    try:
        st = labmod.up(TOPOLOGY, name=lab, runtime=rt, timeout=300, ready_timeout=60,
                       progress=lambda m: print(f"  {lab}: {m}", file=sys.stderr))
        out.update(measure_pods(lab, st, n))
        try:
            if rt == "containerd":
                out["floor"] = floor_containerd(lab, n)
            elif rt == "docker":
                out["floor"] = floor_docker(lab, n)
        except Exception as exc:  # noqa: BLE001 - reported in the table and the JSON
            out["floor_error"] = f"{type(exc).__name__}: {exc}"[:300]
            print(f"  {lab}: the floor failed: {out['floor_error']}", file=sys.stderr)
    finally:
        try:
            labmod.down(lab, progress=lambda m: None)
        finally:
            clean_lab(lab)
    return out


def p50(xs: list[float] | None) -> str:
    """Median in ms, or '-'."""
    return f"{statistics.median(xs) * 1000:.0f}" if xs else "-"


def mx(xs: list[float] | None) -> str:
    """Max in ms, or '-'."""
    return f"{max(xs) * 1000:.0f}" if xs else "-"


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runtimes", default="netns,containerd,docker")
    ap.add_argument("--pods", type=int, default=20)
    ap.add_argument("--json", default=str(REPO / "reports" / "bench" / "pod_start.json"))
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    results = [run_one(rt, args.pods) for rt in args.runtimes.split(",")]
    load_after = os.getloadavg()
    print(f"\npod start, {args.pods} nginx pods applied at once on one node "
          f"(ms from kubectl apply; load avg before {load_before[0]:.2f}, after {load_after[0]:.2f}, "
          f"{os.cpu_count()} CPUs)")
    print(f"{'runtime':<11} {'Running p50':>12} {'max':>7} {'HTTP 200 p50':>13} {'max':>7}   "
          f"{'floor (runtime alone, no CNI) p50':>34} {'max':>7}")
    for r in results:
        if r.get("floor_error"):
            print(f"  ({r['runtime']} floor failed: {r['floor_error']})")
        print(f"{r['runtime']:<11} {p50(r['running']):>12} {mx(r['running']):>7} {p50(r['answering']):>13} "
              f"{mx(r['answering']):>7}   {p50(r.get('floor')):>34} {mx(r.get('floor')):>7}")
    doc = {"bench": "pod_start", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": platform.node(), "cpus": os.cpu_count(), "loadavg_before": load_before,
           "loadavg_after": load_after, "results": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=1))
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
