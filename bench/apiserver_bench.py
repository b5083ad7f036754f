#!/usr/bin/env python3
"""The API server's speed, against its own throwaway etcd and server (fresh PKI):

* ``list 1000 pods``: p50/p99 of one LIST of 1,000 pods (kubeclient, JSON; target p50 <= 50 ms);
* ``write -> 100 watchers``: one update observed by all of 100 concurrent watches (the time
  until the last of them sees it), p50/p99 over the writes (target p50 <= 100 ms);
* ``kubectl get pods`` wall time next to ``kubectl version --client`` (the client's own
  floor) in the same run (target <= 1.5x), in a namespace of 10 pods and (for
  information) in the namespace of 1,000 pods.

Prints a table and writes JSON (default reports/bench/apiserver_bench.json)::

    flock /work/wt/heavy.lock .venv/bin/python bench/apiserver_bench.py [--pods 1000] [--watchers 100]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import kubeclient  # noqa: E402
from tests.apiserver_support import APIServerProcess, real_kubectl  # noqa: E402
from tests.support import EtcdServer  # noqa: E402


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def make_pods(c: kubeclient.Client, ns: str, n: int) -> None:
    def pod(i: int) -> dict:
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"bench-{i:05d}", "namespace": ns, "labels": {"app": "bench", "i": str(i)}},
                "spec": {"nodeName": f"node-{i % 50}", "containers": [
                    {"name": "web", "image": "nginx:1.25", "ports": [{"containerPort": 80}],
                     "env": [{"name": "INDEX", "value": str(i)}]}]}}

    def worker(start: int) -> None:
        for i in range(start, n, 8):
            c.create(pod(i))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def bench_list(c: kubeclient.Client, ns: str, samples: int) -> dict:
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        doc = c.request("GET", f"/api/v1/namespaces/{ns}/pods", raw=True)
        times.append((time.perf_counter() - t0) * 1000)
    n = len(json.loads(doc)["items"])
    return {"items": n, "samples": samples, "p50_ms": round(pct(times, 50), 1), "p99_ms": round(pct(times, 99), 1)}


def bench_watch(c: kubeclient.Client, watchers: int, writes: int) -> dict:
    c.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bench-watch", "namespace": "default"},
              "data": {"n": "0"}})
    seen: dict[str, list[float]] = {}
    lock = threading.Lock()
    ready = threading.Barrier(watchers + 1)
    rv0 = c.list("v1", "configmaps", "default", limit=1)["metadata"]["resourceVersion"]
    streams = []

    def watch() -> None:
        w = c.watch("v1", "configmaps", "default", resource_version=rv0, field_selector="metadata.name=bench-watch",
                    bookmarks=False)
        streams.append(w)
        first = True
        try:
            for _typ, obj in w:
                if first:
                    first = False
                now = time.perf_counter()
                with lock:
                    seen.setdefault(obj["metadata"]["resourceVersion"], []).append(now)
        except kubeclient.KubeError:
            return

    threads = [threading.Thread(target=watch, daemon=True) for _ in range(watchers)]
    for t in threads:
        t.start()
    # every watch is open once each has seen the initial write's successor: write a warm-up first
    deadline = time.monotonic() + 30
    cur = c.get("v1", "configmaps", "bench-watch", "default")
    cur["data"] = {"n": "warm"}
    warm = c.replace(cur)["metadata"]["resourceVersion"]
    while time.monotonic() < deadline:
        with lock:
            if len(seen.get(warm, [])) >= watchers:
                break
        time.sleep(0.01)
    _ = ready
    lat_all, lat_each = [], []
    for i in range(writes):
        cur["data"] = {"n": str(i)}
        cur["metadata"].pop("resourceVersion", None)
        t0 = time.perf_counter()
        rv = c.replace(cur)["metadata"]["resourceVersion"]
        end = time.monotonic() + 5
        while time.monotonic() < end:
            with lock:
                got = list(seen.get(rv, []))
            if len(got) >= watchers:
                break
            time.sleep(0.0005)
        lat_all.append((max(got) - t0) * 1000 if len(got) >= watchers else float("inf"))
        lat_each += [(t - t0) * 1000 for t in got]
        time.sleep(0.02)
    for w in streams:
        w.close()
    return {"watchers": watchers, "writes": writes, "all_p50_ms": round(pct(lat_all, 50), 1),
            "all_p99_ms": round(pct(lat_all, 99), 1), "each_p50_ms": round(pct(lat_each, 50), 1)}


def bench_kubectl(server: APIServerProcess, ns: str, runs: int) -> dict:
    k = real_kubectl()
    env = server.env()

    def wall(args: list[str]) -> float:
        t0 = time.perf_counter()
        subprocess.run([k, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        return (time.perf_counter() - t0) * 1000

    wall(["get", "pods", "-n", ns])  # warm kubectl's discovery cache, as a user's second command is
    get, ver = [], []
    for _ in range(runs):
        ver.append(wall(["version", "--client"]))
        get.append(wall(["get", "pods", "-n", ns]))
    g, v = statistics.median(get), statistics.median(ver)
    return {"namespace": ns, "runs": runs, "get_pods_ms": round(g, 1), "version_client_ms": round(v, 1),
            "ratio": round(g / v, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--watchers", type=int, default=100)
    ap.add_argument("--writes", type=int, default=50)
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", default=os.path.join(REPO, "reports", "bench", "apiserver_bench.json"))
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="apiserver-bench-"))
    etcd = EtcdServer(str(work / "etcd"))
    etcd.start()
    server = APIServerProcess(work, etcd.endpoint)
    try:
        server.start()
        c = server.client()
        c.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "small"}})
        t0 = time.perf_counter()
        make_pods(c, "default", args.pods)
        create_s = time.perf_counter() - t0
        make_pods(c, "small", 10)
        lst = bench_list(c, "default", args.samples)
        wat = bench_watch(c, args.watchers, args.writes)
        small = bench_kubectl(server, "small", args.runs)
        big = bench_kubectl(server, "default", args.runs)
    finally:
        server.stop()
        etcd.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    rows = [
        (f"list {lst['items']} pods p50", f"{lst['p50_ms']} ms", f"p99 {lst['p99_ms']} ms; target p50 <= 50 ms"),
        (f"write -> {wat['watchers']} watchers p50", f"{wat['all_p50_ms']} ms",
         f"until the last watcher; p99 {wat['all_p99_ms']} ms; per watcher p50 {wat['each_p50_ms']} ms; "
         "target p50 <= 100 ms"),
        ("kubectl get pods (10 pods)", f"{small['get_pods_ms']} ms",
         f"kubectl version --client {small['version_client_ms']} ms: {small['ratio']}x (target <= 1.5x)"),
        (f"kubectl get pods ({lst['items']} pods)", f"{big['get_pods_ms']} ms",
         f"kubectl version --client {big['version_client_ms']} ms: {big['ratio']}x (information)"),
        (f"create {args.pods} pods (8 clients)", f"{create_s:.1f} s", f"{args.pods / create_s:.0f} creates/s"),
    ]
    w = [max(len(r[i]) for r in rows) for i in range(2)]
    print(f"{'metric':<{w[0]}}  {'value':>{w[1]}}  notes")
    print("-" * (w[0] + w[1] + 60))
    for m, v, n in rows:
        print(f"{m:<{w[0]}}  {v:>{w[1]}}  {n}")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump({"list": lst, "watch": wat, "kubectl_small": small, "kubectl_big": big,
                   "create_per_s": round(args.pods / create_s, 1),
                   "machine": {"cpus": os.cpu_count(), "loadavg_1m_at_end": round(os.getloadavg()[0], 2)}},
                  fh, indent=2)
    print(f"\n(load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
