#!/usr/bin/env python3
"""CNI ADD/DEL wall time as a runtime sees it (exec to exit), 100 pods on one node.

Builds a node netns with its own etcd (nothing touches the root namespace), then for
each mode execs the real ``calico`` executable once per pod, as the kubelet would:

* ``server``: the thin executable forwards to a warm CNIServer running in the node
  (what calico-node provides in the lab);
* ``in-process``: no server, the executable imports everything and does the work.

Interleaved with them, pod by pod, the *floor* of each verb is measured in the same run
(issue 18): ADD = exec of ``python3 -IS -c pass`` (the interpreter our launcher runs)
plus ``ip link add <veth> type veth peer name eth0 netns <pod>``; DEL = the same exec
plus ``ip link del <veth>``. The same floor with ``/bin/true`` as the exec is printed
too. Must hold: ADD p50 and DEL p50 (server + launcher) <= 2x their floor.

Prints p50/p99 per verb and mode, the floors and the ratios, the load average, a
breakdown (interpreter start, imports, IPAM, netlink, datastore) and writes JSON
(default reports/bench/cni_bench.json). Run as root under the shared lock::

    flock /work/wt/heavy.lock .venv/bin/python bench/cni_bench.py [--pods 100] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import benchlib
from benchlib import REPO, VENV_BIN, in_netns, pct, summarize

ETCD = "http://127.0.0.1:2379"


def median_exec(cmd: list[str], n: int = 15, env: dict[str, str] | None = None) -> float:
    """Median wall time (ms) of running ``cmd`` to exit."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        out.append((time.perf_counter() - t0) * 1000)
    return statistics.median(out)


def median_extra(base: list[str], cmd: list[str], n: int = 15) -> float:
    """Median over ``n`` interleaved pairs of the wall time (ms) ``cmd`` takes more than ``base``
    (interleaved, so a change of the machine's load hits both alike)."""
    out = []
    for _ in range(n):
        out.append(median_exec(cmd, 1) - median_exec(base, 1))
    return statistics.median(out)


def start_etcd(ns: str, data: str) -> subprocess.Popen:
    """etcd on the node's loopback (port 2379)."""
    return benchlib.start_etcd(data, 2379, netns=ns)[0]


def reset_datastore(ns: str) -> None:
    """Empty etcd and create the default pool."""
    from datastore import Client
    from datastore.resources import IPPool, Metadata

    with in_netns(f"/run/netns/{ns}"):
        c = Client([ETCD])
        c.etcd.delete_prefix("/")
        c.create(IPPool(metadata=Metadata(name="default-ipv4-ippool"),
                        spec=IPPool.Spec(cidr="192.168.0.0/16", block_size=26, ipip_mode="Always", nat_outgoing=True)))
        c.etcd.close()


_PHASES = re.compile(r"done in ([\d.]+) ms \(ms: ([^)]*)\)")


def run_one(pod: str, cid: str, command: str, sock: str, log_path: str,
            exe: str) -> tuple[float, dict[str, float]]:
    """Exec the plugin once (caller's thread is in the node netns); wall ms and the plugin's phases."""
    conf = benchlib.cni_netconf(log_path, "bench-node", etcd_endpoints=ETCD)
    size = os.path.getsize(log_path) if os.path.exists(log_path) else 0
    wall = benchlib.exec_cni(exe, command, cid, pod, "bench", cid, sock, conf)
    ph: dict[str, float] = {}
    with open(log_path) as f:
        f.seek(size)
        m = _PHASES.search(f.read())
    if m:
        ph = {"plugin_total": float(m.group(1))}
        ph.update({k: float(v) for k, v in (kv.split("=") for kv in m.group(2).split())})
    return wall, ph


#: the exec part of each floor: the interpreter the launcher runs, and a trivial binary
FLOOR_EXECS = {"floor python3 -IS": ["/usr/bin/python3", "-I", "-S", "-c", "pass"], "floor /bin/true": ["/bin/true"]}


def floor_one(command: str, exec_argv: list[str], veth: str, pod: str) -> float:
    """One floor sample (ms; caller's thread is in the node netns): ``exec_argv`` to exit, then the
    veth into the pod's netns made (ADD) or deleted (DEL) with ``ip``."""
    ip = ["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", pod] if command == "ADD" \
        else ["ip", "link", "del", veth]
    t0 = time.perf_counter()
    subprocess.run(exec_argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
    subprocess.run(ip, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - t0) * 1000


def burst(ns: str, pods: list[str], concurrency: int, sock: str, exe: str, tmp: str) -> dict[str, object]:
    """A Deployment scale-up on one node: every pod ADDed (then DELed) with ``concurrency`` execs in flight."""
    from concurrent.futures import ThreadPoolExecutor

    reset_datastore(ns)
    out: dict[str, object] = {"concurrency": concurrency, "pods": len(pods)}

    def one(args: tuple[int, str]) -> float:
        i, command = args
        with in_netns(f"/run/netns/{ns}"):  # per worker thread
            return run_one(pods[i], f"burst-{i:04d}", command, sock, os.path.join(tmp, "burst.log"), exe)[0]

    for command in ("ADD", "DEL"):
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            walls = list(pool.map(one, [(i, command) for i in range(len(pods))]))
        total = time.perf_counter() - t0
        out[command] = {"total_s": round(total, 2), "pods_per_s": round(len(pods) / total, 1),
                        "p50_ms": round(pct(walls, 50), 2), "p99_ms": round(pct(walls, 99), 2)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--modes", nargs="*", help="subset of: server+cni/bin server+venv inproc+cni/bin inproc+venv")
    ap.add_argument("--burst", type=int, default=8, metavar="N",
                    help="then ADD/DEL all pods with N concurrent execs (server + launcher); 0 to skip")
    ap.add_argument("--json", default=os.path.join(REPO, "reports", "bench", "cni_bench.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    tag = uuid.uuid4().hex[:6]
    ns = f"cnib{tag}"
    pods = [f"cnibp{tag}{i:04d}" for i in range(args.pods * (4 + len(FLOOR_EXECS)))]
    tmp = tempfile.mkdtemp(prefix="cni-bench-")
    etcd = server = None
    netns = benchlib.Namespaces()
    results: dict[str, object] = {"benchmark": "cni_bench", "pods": args.pods, "cpus": os.cpu_count(),
                                  "loadavg_1m_before": os.getloadavg()[0]}
    try:
        netns.add(ns, lo_up=True)
        for p in pods:
            netns.add(p)
        etcd = start_etcd(ns, os.path.join(tmp, "etcd"))
        py = os.path.join(VENV_BIN, "python")
        breakdown = {
            "interpreter_start_ms": median_exec([py, "-c", "pass"]),
            "interpreter_start_isolated_ms": median_exec(["/usr/bin/python3", "-I", "-S", "-c", "pass"]),
            # as the launcher runs it: python3 -I -S, the repository put on sys.path
            "thin_client_import_ms": median_extra(["/usr/bin/python3", "-I", "-S", "-c", "pass"], [
                "/usr/bin/python3", "-I", "-S", "-c", f"import sys; sys.path.insert(0, {REPO!r}); import cni.main"]),
            "full_import_ms": median_exec([py, "-c", "import cni.plugin, cni.dataplane, datastore.client, ipam.ipam"]),
        }
        breakdown["full_import_ms"] -= breakdown["interpreter_start_ms"]
        results["breakdown"] = {k: round(v, 2) for k, v in breakdown.items()}
        sock = os.path.join(tmp, "cni.sock")
        server = benchlib.start_cni_server(ns, sock)
        modes = {}
        venv_exe, fast_exe = os.path.join(VENV_BIN, "calico"), benchlib.CNI_LAUNCHER
        breakdown["fast_launcher_version_ms"] = median_exec([fast_exe], env={"CNI_COMMAND": "VERSION", "CALICO_CNI_SOCKET": "none"})
        breakdown["venv_script_version_ms"] = median_exec([venv_exe], env={"CNI_COMMAND": "VERSION", "CALICO_CNI_SOCKET": "none"})
        results["breakdown"] = {k: round(v, 2) for k, v in breakdown.items()}
        chosen = [
            ("server+cni/bin", fast_exe, sock), ("server+venv", venv_exe, sock),
            ("inproc+cni/bin", fast_exe, "none"), ("inproc+venv", venv_exe, "none"),
        ]
        chosen = [c for c in chosen if not args.modes or c[0] in args.modes]
        reset_datastore(ns)
        # modes are interleaved pod by pod, so a change in the machine's load hits all of them alike
        data = {mode: {"ADD": ([], []), "DEL": ([], [])} for mode, _, _ in chosen}
        floors: dict[str, dict[str, list[float]]] = {f: {"ADD": [], "DEL": []} for f in FLOOR_EXECS}
        with in_netns(f"/run/netns/{ns}"):  # children inherit the node netns: no nsenter in the timing
            for command in ("ADD", "DEL"):
                for i in range(args.pods):
                    for m, (mode, exe, sockpath) in enumerate(chosen):
                        pod = pods[m * args.pods + i]
                        wall, ph = run_one(pod, f"b{m}-{i:04d}", command, sockpath,
                                           os.path.join(tmp, f"{m}.log"), exe)
                        data[mode][command][0].append(wall)
                        if ph:
                            data[mode][command][1].append(ph)
                    for k, (floor, argv) in enumerate(FLOOR_EXECS.items()):
                        pod = pods[(4 + k) * args.pods + i]
                        floors[floor][command].append(floor_one(command, argv, f"flr{k}x{i:04d}", pod))
        for mode, verbs in data.items():
            modes[mode] = {verb: summarize(w, p) for verb, (w, p) in verbs.items()}
        for floor, verbs in floors.items():
            modes[floor] = {verb: summarize(w, []) for verb, w in verbs.items()}
        results["modes"] = modes
        results["ratios_p50"] = {
            mode: {floor: {verb: round(modes[mode][verb]["p50_ms"] / modes[floor][verb]["p50_ms"], 2)
                           for verb in ("ADD", "DEL")} for floor in FLOOR_EXECS}
            for mode, _, _ in chosen}
        main_mode = "server+cni/bin" if "server+cni/bin" in results["ratios_p50"] else chosen[0][0]
        results["must_hold"] = {
            f"CNI {verb} p50 <= 2x floor (python3 -IS exec + ip veth), {main_mode}":
                results["ratios_p50"][main_mode]["floor python3 -IS"][verb] <= 2.0 for verb in ("ADD", "DEL")}
        if args.burst:
            results["burst"] = burst(ns, pods[: args.pods], args.burst, sock, fast_exe, tmp)
        results["loadavg_1m_after"] = os.getloadavg()[0]
    finally:
        benchlib.stop(server)
        if etcd is not None:
            etcd.kill()
            etcd.wait()
        netns.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"CNI exec-to-exit wall time, {args.pods} pods on one node ({os.cpu_count()} CPUs, "
          f"load {results['loadavg_1m_before']:.1f} -> {results.get('loadavg_1m_after', 0):.1f})")
    benchlib.print_verb_table("mode", results["modes"], phases=True)  # type: ignore[arg-type]
    print(f"p50 ratio to the floor measured in the same run (must hold: <= 2x, {', '.join(FLOOR_EXECS)})")
    for mode, by_floor in results["ratios_p50"].items():  # type: ignore[union-attr]
        cells = "  ".join(f"{verb} vs {f[6:]}: {by_floor[f][verb]:.2f}x" for f in FLOOR_EXECS for verb in ("ADD", "DEL"))
        print(f"{mode:<18} {cells}")
    for what, ok in results["must_hold"].items():  # type: ignore[union-attr]
        print(f"{what}: {'HOLDS' if ok else 'DOES NOT HOLD'}")
    if "burst" in results:
        b = results["burst"]
        for verb in ("ADD", "DEL"):
            r = b[verb]  # type: ignore[index]
            print(f"burst {verb} {b['pods']} pods, {b['concurrency']} in flight (server + launcher): "  # type: ignore[index]
                  f"{r['total_s']} s, {r['pods_per_s']} pods/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms")
    print("breakdown:", ", ".join(f"{k}={v} ms" for k, v in results["breakdown"].items()))  # type: ignore[union-attr]
    benchlib.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
