"""Benchmark: the watches the API server serves at N nodes, with Typha and without it.

Issue 15: in the Kubernetes datastore Calico recommends Typha in front of every Felix, so the
API server sees one watcher per Typha instead of one per node. Two labs of N nodes (the
install benches' topology: one node segment behind a gateway, Kubernetes datastore, an nginx
pod per worker), each once every Node is Ready and every pod answers:

- **typha**: ``calicolab up`` (calico-system as the operator lays it out: calico-typha, and
  every Felix a client of it);
- **no-typha**: ``calicolab up --no-cni``, then Calico v3.28.1's own calico.yaml applied
  unchanged (``install-cni --manifest FILE``): no Typha, every Felix watches the API server.

The count is what ``kubectl get --raw /metrics`` says (``apiserver_longrunning_requests``,
verb WATCH), read after a settle time, per API group; the Kubernetes components' own watches
(kubelets, kube-proxy, scheduler, controllers) are in both. Prints a table with the load
average and writes JSON (default reports/bench/api_watchers.json). Root, under the lock::

    flock /work/wt/heavy.lock .venv/bin/python bench/api_watchers.py [--sizes 50] [--settle 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import install_manifest  # noqa: E402

from testbed.apiserver.metrics import parse  # noqa: E402
from testbed.k8s.install import kubectl_argv  # noqa: E402

MODES = ("typha", "no-typha")
CALICO_GROUP = "crd.projectcalico.org"


def watches(lab: str) -> Counter:
    """WATCH requests being served, per (group, resource), from the lab's /metrics."""
    out = subprocess.run(kubectl_argv(lab, "get", "--raw", "/metrics"), capture_output=True, text=True,
                         timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl get --raw /metrics failed: {out.stderr.strip()[:300]}")
    per: Counter = Counter()
    for (group, _v, resource, _scope, _sub, verb), n in parse(out.stdout).items():
        if verb == "WATCH":
            per[(group or "core", resource)] += n
    return per


def run_one(mode: str, nodes: int, workdir: Path, upstream_file: str | None, settle: float) -> dict:
    """One lab in ``mode`` (bench/install_manifest.py's ``direct`` or ``upstream`` lab); its
    watch counts once every Node is Ready and every pod answers."""

    def count(lab: str, result: dict) -> None:
        time.sleep(settle)  # let restarts and re-lists finish: the count is of a settled cluster
        per = watches(lab)
        result["watches_total"] = sum(per.values())
        result["watches_calico"] = sum(n for (g, _), n in per.items() if g == CALICO_GROUP)
        result["watches_core"] = sum(n for (g, _), n in per.items() if g != CALICO_GROUP)
        result["per_resource"] = {f"{g}/{r}": n for (g, r), n in sorted(per.items())}

    result = install_manifest.run_one("direct" if mode == "typha" else "upstream", nodes, max(nodes - 1, 1),
                                      workdir, upstream_file, after=count, prefix="aw")
    return dict(result, mode=mode)


def main(argv: list[str] | None = None) -> int:
    """Run both modes per size; print a table; write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="50", help="node counts, comma separated")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds between 'answering' and the count")
    ap.add_argument("--json", default=str(REPO / "reports" / "bench" / "api_watchers.json"))
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/api_watchers.py needs root", file=sys.stderr)
        return 2
    from testbed.k8s import upstream

    try:
        upstream_file = str(upstream.path("calico.yaml"))
    except upstream.Unavailable as exc:
        print(f"no-typha needs Calico's calico.yaml, which cannot be obtained here: {exc}", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="calicolab-bench-") as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            for mode in MODES:
                print(f"{mode}: {n} nodes ...", file=sys.stderr)
                results.append(run_one(mode, n, Path(tmp), upstream_file, args.settle))
    load_after = os.getloadavg()
    print(f"Watches served by the API server (apiserver_longrunning_requests, verb WATCH), settled; "
          f"{os.cpu_count()} CPUs, load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    hdr = ("nodes", "mode", "all watches", f"{CALICO_GROUP}", "per node", "Kubernetes groups")
    print("  ".join(f"{h:>22}" for h in hdr))
    for r in results:
        if "error" in r:
            print(f"{r['nodes']:>22}  {r['mode']:>22}  error: {r['error']}")
            continue
        row = (r["nodes"], r["mode"], r["watches_total"], r["watches_calico"],
               f"{r['watches_calico'] / r['nodes']:.2f}", r["watches_core"])
        print("  ".join(f"{c!s:>22}" for c in row))
    for r in results:
        if "per_resource" in r:
            top = sorted(r["per_resource"].items(), key=lambda kv: -kv[1])[:8]
            print(f"  {r['mode']}: " + ", ".join(f"{k} {v}" for k, v in top))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"bench": "api_watchers", "host": platform.node(), "cpus": os.cpu_count(),
                               "load_before": load_before, "load_after": load_after, "results": results},
                              indent=2) + "\n")
    print(f"JSON: {out}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
