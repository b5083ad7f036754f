#!/usr/bin/env python3
"""Route add and dump: the kernel layer (kernel.netlink) next to pyroute2, same run, same netns.

In a throwaway netns with a veth up, each repeat (implementations interleaved, so a
change in the machine's load hits both alike):

* ``add N``: N ``/32 dev v0 scope link`` routes; ours batched (one send per 256),
  ours one request per route, pyroute2 one ``route("add")`` per route;
* ``dump``: the main table with N routes, parsed into objects;
* ``del N``: the same routes removed;
* ``open``: a handle bound to the netns: ``Netlink(ns)`` vs ``pyroute2.NetNS(ns)``,
  with the processes each forks (pyroute2 forks a helper per netns socket);
* ``import``: ``python -c 'import kernel.netlink'`` vs ``import pyroute2`` (minus ``pass``).

Prints a table and writes JSON (default reports/bench/netlink_bench.json). Run as root:
``.venv/bin/python bench/netlink_bench.py [--routes 1000] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
PY = os.path.join(REPO, ".venv", "bin", "python")

from kernel import RT_SCOPE_LINK, Route, RouteAdd, RouteDel, netns  # noqa: E402
from kernel.netlink import Netlink  # noqa: E402

_forks = [0]
os.register_at_fork(after_in_parent=lambda: _forks.__setitem__(0, _forks[0] + 1))


def median_exec(code: str, n: int = 7) -> float:
    """Median wall ms of ``python -c code``."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([PY, "-c", code], check=True, cwd=REPO)
        out.append((time.perf_counter() - t0) * 1000)
    return statistics.median(out)


def dsts(n: int) -> list[str]:
    """N distinct /32s."""
    return [f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}/32" for i in range(n)]


def ours(ns: str, n: int, batched: bool) -> dict[str, float]:
    """Add, dump, delete N routes with kernel.netlink."""
    with Netlink(ns) as k:
        oif = k.index("v0")
        routes = [Route(d, oif=oif, scope=RT_SCOPE_LINK) for d in dsts(n)]
        t0 = time.perf_counter()
        if batched:
            k.do(*[RouteAdd(r) for r in routes])
        else:
            for r in routes:
                k.do(RouteAdd(r))
        t1 = time.perf_counter()
        got = k.routes()
        t2 = time.perf_counter()
        if batched:
            k.do(*[RouteDel(r) for r in routes])
        else:
            for r in routes:
                k.do(RouteDel(r))
        t3 = time.perf_counter()
    assert len(got) >= n, f"dump saw {len(got)} routes, want >= {n}"
    return {"add": t1 - t0, "dump": t2 - t1, "del": t3 - t2}


def pyroute2_run(ns: str, n: int) -> dict[str, float]:
    """The same with pyroute2's IPRoute (socket made in the netns: no helper process)."""
    from pyroute2 import IPRoute

    with netns.entered(ns):
        ipr = IPRoute()
    try:
        oif = ipr.link_lookup(ifname="v0")[0]
        ds = dsts(n)
        t0 = time.perf_counter()
        for d in ds:
            ipr.route("add", dst=d, oif=oif, scope=RT_SCOPE_LINK)
        t1 = time.perf_counter()
        got = list(ipr.route("dump", family=2, table=254))
        t2 = time.perf_counter()
        for d in ds:
            ipr.route("del", dst=d, oif=oif, scope=RT_SCOPE_LINK)
        t3 = time.perf_counter()
    finally:
        ipr.close()
    assert len(got) >= n, f"pyroute2 dump saw {len(got)} routes, want >= {n}"
    return {"add": t1 - t0, "dump": t2 - t1, "del": t3 - t2}


def open_cost(ns: str, repeat: int) -> dict[str, dict[str, float]]:
    """Time to a usable handle bound to the netns (one link read), and the forks it made."""
    from pyroute2 import NetNS

    out: dict[str, dict[str, float]] = {}
    for name, make in (("kernel.netlink Netlink(ns)", lambda: Netlink(ns)),
                       ("pyroute2 NetNS(ns)", lambda: NetNS(ns))):
        times = []
        before = _forks[0]
        for _ in range(repeat):
            t0 = time.perf_counter()
            h = make()
            h.link("lo") if isinstance(h, Netlink) else h.link_lookup(ifname="lo")
            times.append(time.perf_counter() - t0)
            h.close()
        out[name] = {"median_ms": statistics.median(times) * 1000, "forks_per_open": (_forks[0] - before) / repeat}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--routes", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default=os.path.join(REPO, "reports", "bench", "netlink_bench.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    import pyroute2

    ns = f"nlb{uuid.uuid4().hex[:6]}"
    res: dict[str, object] = {"benchmark": "netlink_bench", "routes": args.routes, "repeat": args.repeat,
                              "cpus": os.cpu_count(), "pyroute2": pyroute2.__version__,
                              "loadavg_1m_before": os.getloadavg()[0]}
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in ("link add v0 type veth peer name v1", "link set v0 up", "link set v1 up"):
            subprocess.run(["ip", "-n", ns, *cmd.split()], check=True)
        runs: dict[str, list[dict[str, float]]] = {"kernel.netlink batched": [], "kernel.netlink one by one": [],
                                                   "pyroute2": []}
        for _ in range(args.repeat):
            runs["kernel.netlink batched"].append(ours(ns, args.routes, True))
            runs["kernel.netlink one by one"].append(ours(ns, args.routes, False))
            runs["pyroute2"].append(pyroute2_run(ns, args.routes))
        res["ops_median_ms"] = {impl: {op: round(statistics.median(r[op] for r in rs) * 1000, 2)
                                       for op in ("add", "dump", "del")} for impl, rs in runs.items()}
        res["open"] = {k: {kk: round(vv, 2) for kk, vv in v.items()} for k, v in open_cost(ns, args.repeat).items()}
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)
    base = median_exec("pass")
    res["import_ms"] = {"kernel.netlink": round(median_exec("import kernel.netlink") - base, 1),
                        "pyroute2": round(median_exec("import pyroute2") - base, 1)}
    res["loadavg_1m_after"] = os.getloadavg()[0]
    ops = res["ops_median_ms"]
    print(f"netlink: {args.routes} routes, median of {args.repeat} ({os.cpu_count()} CPUs, load "
          f"{res['loadavg_1m_before']:.2f} -> {res['loadavg_1m_after']:.2f}), pyroute2 {pyroute2.__version__}")
    print(f"{'implementation':<28} {'add ms':>9} {'dump ms':>9} {'del ms':>9}   add/dump vs pyroute2")
    p = ops["pyroute2"]  # type: ignore[index]
    for impl, v in ops.items():  # type: ignore[union-attr]
        print(f"{impl:<28} {v['add']:>9.1f} {v['dump']:>9.1f} {v['del']:>9.1f}   "
              f"{p['add'] / v['add']:.1f}x / {p['dump'] / v['dump']:.1f}x")
    for name, v in res["open"].items():  # type: ignore[union-attr]
        print(f"open {name:<32} {v['median_ms']:>7.2f} ms, forks per open: {v['forks_per_open']:g}")
    print("import: " + ", ".join(f"{k} {v} ms" for k, v in res["import_ms"].items()))  # type: ignore[union-attr]
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(res, f, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
