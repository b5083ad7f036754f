#!/usr/bin/env python3
"""Calico IPAM speed against a real etcd: throughput and single-allocation latency.

Starts its own throwaway etcd (temporary data dir, free loopback port, stopped
by PID at the end), so it never touches a lab's datastore. Measures:

* ``alloc/s 1 proc``: one process (one node) allocating ``--allocs`` addresses
  from an empty pool, block claims included;
* ``alloc/s 4 procs``: four OS processes, each a different node, the same total;
* ``latency``: p50/p99 of one ``auto_assign(1)`` served from an existing affine
  block, with the etcd round trips it makes (target p50 <= 5 ms).

Prints a table and writes JSON (default reports/bench/ipam_bench.json)::

    .venv/bin/python bench/ipam_bench.py [--allocs 1000] [--samples 500] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from datastore import Client, errors  # noqa: E402
from datastore.resources import IPPool, Metadata  # noqa: E402
from ipam import IPAM  # noqa: E402


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Etcd:
    """A throwaway etcd on loopback."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ipam-bench-etcd-")
        self.port, self.peer = _free_port(), _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        binary = shutil.which("etcd") or "/usr/bin/etcd"
        peer = f"http://127.0.0.1:{self.peer}"
        self.proc = subprocess.Popen(
            [binary, "--name", "bench", "--data-dir", os.path.join(self.dir, "data"),
             "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"bench={peer}", "--log-level", "error", "--logger", "zap"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = Client([self.endpoint], timeout=1.0)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.etcd.revision()
                return
            except errors.DatastoreUnavailable:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise SystemExit(f"etcd did not start on {self.endpoint}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop etcd by PID and remove its data."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def reset(endpoint: str, cidr: str = "10.200.0.0/16", block_size: int = 26) -> Client:
    """Empty keyspace with one pool."""
    client = Client([endpoint])
    client.etcd.delete_prefix("/calico/")
    client.create(IPPool(metadata=Metadata(name="bench"), spec=IPPool.Spec(cidr=cidr, block_size=block_size)))
    return client


def _alloc_worker(args: tuple[str, str, int]) -> float:
    endpoint, node, count = args
    ipam = IPAM(Client([endpoint]))
    t0 = time.perf_counter()
    for i in range(count):
        ipam.auto_assign(1, f"k8s-pod-network.{node}-{i}", {"node": node, "pod": f"p{i}",
                                                             "namespace": "default"}, node)
    return time.perf_counter() - t0


def throughput(endpoint: str, procs: int, total: int) -> dict:
    """Allocations per second with ``procs`` processes (one node each) from an empty pool."""
    reset(endpoint)
    per = [total // procs + (1 if k < total % procs else 0) for k in range(procs)]
    jobs = [(endpoint, f"bench-node{k}", n) for k, n in enumerate(per)]
    t0 = time.perf_counter()
    if procs == 1:
        _alloc_worker(jobs[0])
    else:
        with multiprocessing.get_context("fork").Pool(procs) as pool:
            pool.map(_alloc_worker, jobs)
    wall = time.perf_counter() - t0
    return {"procs": procs, "allocations": total, "seconds": round(wall, 3),
            "allocs_per_sec": round(total / wall, 1)}


def latency(endpoint: str, samples: int) -> dict:
    """p50/p99 of one allocation from an existing affine block, and its etcd round trips."""
    client = reset(endpoint)
    ipam = IPAM(client)
    node = "bench-node"
    ipam.auto_assign(1, "warm", {"node": node}, node)  # claim the block
    calls = {"n": 0}
    real_call = client.etcd.call

    def counting(path, body):  # noqa: ANN001, ANN202
        calls["n"] += 1
        return real_call(path, body)

    times, trips = [], []
    for i in range(samples):
        handle = f"k8s-pod-network.lat{i}"
        client.etcd.call = counting
        calls["n"] = 0
        t0 = time.perf_counter()
        ipam.auto_assign(1, handle, {"node": node, "pod": f"p{i}", "namespace": "default"}, node)
        times.append((time.perf_counter() - t0) * 1000)
        trips.append(calls["n"])
        client.etcd.call = real_call
        ipam.release_by_handle(handle)  # keep the affine block from filling (not timed)
    return {"samples": samples, "p50_ms": round(pct(times, 50), 3), "p99_ms": round(pct(times, 99), 3),
            "mean_ms": round(statistics.fmean(times), 3),
            "etcd_round_trips": int(statistics.median(trips)), "target_p50_ms": 5.0,
            "meets_target": pct(times, 50) <= 5.0}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--allocs", type=int, default=1000, help="allocations per throughput run")
    ap.add_argument("--samples", type=int, default=500, help="latency samples")
    ap.add_argument("--json", default=os.path.join(REPO, "reports", "bench", "ipam_bench.json"))
    args = ap.parse_args(argv)
    etcd = Etcd()
    try:
        one = throughput(etcd.endpoint, 1, args.allocs)
        four = throughput(etcd.endpoint, 4, args.allocs)
        lat = latency(etcd.endpoint, args.samples)
    finally:
        etcd.stop()
    rows = [
        ("alloc/s, 1 process (1 node)", f"{one['allocs_per_sec']:.0f}", f"{one['allocations']} in {one['seconds']} s"),
        ("alloc/s, 4 processes (4 nodes)", f"{four['allocs_per_sec']:.0f}",
         f"{four['allocations']} in {four['seconds']} s"),
        ("affine-block alloc p50", f"{lat['p50_ms']:.2f} ms", f"target <= 5 ms: {'yes' if lat['meets_target'] else 'NO'}"),
        ("affine-block alloc p99", f"{lat['p99_ms']:.2f} ms", f"{lat['samples']} samples"),
        ("etcd round trips / alloc", str(lat["etcd_round_trips"]), "median"),
    ]
    w = [max(len(r[i]) for r in rows + [("metric", "value", "notes")]) for i in range(3)]
    print(f"{'metric':<{w[0]}}  {'value':>{w[1]}}  notes")
    print("-" * (w[0] + w[1] + w[2] + 4))
    for m, v, n in rows:
        print(f"{m:<{w[0]}}  {v:>{w[1]}}  {n}")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump({"throughput": [one, four], "latency": lat,
                   "machine": {"cpus": os.cpu_count(), "loadavg_1m_at_end": round(os.getloadavg()[0], 2)}},
                  fh, indent=2)
    print(f"\n(load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
