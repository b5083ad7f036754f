"""Benchmark: Calico installed by manifest (the second seed), N nodes Ready and pods answering, next to `up`'s direct layout.

bench/install_operator.py's labs and end point (one node segment behind a gateway router,
Kubernetes datastore, its topology and pool, an nginx pod per worker), for the manifest
installs, interleaved with the same peer:

- **manifest**: ``calicolab up --no-cni``, then what ``calicolab install-cni`` does
  (``kubectl apply`` of the project's manifests/calico.yaml rendered for the lab), then every
  Node Ready, every pod Running and answering HTTP 200 from the control-plane node. Timed from
  the apply ("install") and from the start of ``up`` ("total").
- **upstream**: the same with Calico v3.28.1's own calico.yaml applied unchanged
  (``install-cni --manifest FILE``; testbed.k8s.upstream; its pool is kubeadm's pod CIDR in /26
  blocks, IPIP Always). Skipped, saying why, when the file cannot be obtained.
- **direct** (the peer): ``calicolab up`` without ``--no-cni`` (calico-system laid out by the lab).

Ready and answering are observed as they happen (install_operator.follow), not after
``install-cni``'s own wait for calico-node on every node.

Must hold (issue 15): by manifest, 50 nodes Ready and pods answering <= 30 s (the install;
67 s before). Prints a table with the load average, writes JSON (default
reports/bench/install_manifest.json). Run as root under the shared lock::

    flock /work/wt/heavy.lock .venv/bin/python bench/install_manifest.py [--sizes 50] [--repeat 1] [--modes manifest,upstream,direct]
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
sys.path.insert(0, str(REPO / "bench"))

from install_operator import _end_point, _median, follow, kdd_topology  # noqa: E402

from testbed.lab import lifecycle as labmod  # noqa: E402
from testbed.lab.clean import clean_lab  # noqa: E402

MUST_HOLD_SECONDS = {50: 30.0}
MODES = ("manifest", "upstream", "direct")
KEYS = ("up_returned_s", "applied_s", "nodes_ready_install_s", "pods_answer_install_s", "nodes_ready_total_s",
        "pods_answer_total_s")


def run_one(mode: str, nodes: int, pods: int, workdir: Path, upstream_file: str | None,
            after: Callable[[str, dict], None] | None = None, prefix: str = "im") -> dict:
    """One lab: ``manifest``/``upstream`` (up --no-cni + install-cni [--manifest FILE]) or ``direct`` (up).
    ``after(lab, result)`` runs once pods answer, before the lab goes (other benches' readings)."""
    name = f"{prefix}{nodes}{mode[0]}-{os.getpid() % 10000}"
    path = workdir / f"{name}.yaml"
    path.write_text(kdd_topology(name, nodes, pods))
    result: dict = {"mode": mode, "nodes": nodes, "pods": pods, "lab": name}
    t0, epoch0 = time.monotonic(), time.time()

    def progress(m: str) -> None:
        print(f"  [{time.monotonic() - t0:6.2f}s] {m}", file=sys.stderr)

    try:
        st = labmod.up(path, progress=progress, timeout=300, ready_timeout=60, no_cni=(mode != "direct"))
        result["up_returned_s"] = round(time.monotonic() - t0, 3)
        if mode != "direct":
            t1, epoch1 = time.monotonic(), time.time()
            seen = follow(st, nodes, pods, t1)
            # install-cni: kubectl apply, then calico-node ready on every node and every Node Ready
            labmod.install_cni(name, timeout=180, manifest=upstream_file if mode == "upstream" else None)
            result["applied_s"] = round(time.monotonic() - t1, 3)
            _end_point(result, seen(), nodes, pods, epoch1, "install")
            if "nodes_ready_install_s" in result:
                result["nodes_ready_total_s"] = round(result["nodes_ready_install_s"] + (t1 - t0), 3)
            result["pods_answer_total_s"] = round(result["pods_answer_install_s"] + (epoch1 - epoch0), 3)
        else:
            _end_point(result, follow(st, nodes, pods, t0)(), nodes, pods, epoch0, "total")
        if after is not None:
            after(name, result)
        labmod.down(name, progress=lambda _m: None)
    except Exception as exc:  # noqa: BLE001 - recorded, lab removed below
        result["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
    finally:
        clean_lab(name)
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the modes interleaved per size; print a table; write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="50", help="node counts, comma separated")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each per size")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma separated, of {', '.join(MODES)}")
    ap.add_argument("--json", default=str(REPO / "reports" / "bench" / "install_manifest.json"))
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/install_manifest.py needs root", file=sys.stderr)
        return 2
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        print(f"unknown mode(s) {', '.join(bad)} (modes: {', '.join(MODES)})", file=sys.stderr)
        return 2
    upstream_file = None
    skipped: dict[str, str] = {}
    if "upstream" in modes:
        from testbed.k8s import upstream

        try:
            upstream_file = str(upstream.path("calico.yaml"))
        except upstream.Unavailable as exc:
            skipped["upstream"] = str(exc)
            modes.remove("upstream")
            print(f"upstream: skipped: {exc}", file=sys.stderr)
    load_before = os.getloadavg()
    sizes = []
    with tempfile.TemporaryDirectory(prefix="calicolab-bench-") as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            pods = max(n - 1, 1)
            runs: dict[str, list[dict]] = {m: [] for m in modes}
            for k in range(args.repeat):
                for mode in modes:
                    print(f"{mode}: {n} nodes, {pods} pods (run {k + 1}/{args.repeat}) ...", file=sys.stderr)
                    runs[mode].append(run_one(mode, n, pods, Path(tmp), upstream_file))
            med = {m: {key: _median(rs, key) for key in KEYS} for m, rs in runs.items()}
            entry: dict = {"nodes": n, "pods": pods, "runs": runs, "median_s": med}
            if n in MUST_HOLD_SECONDS:
                entry["must_hold"] = f"by manifest: Ready and pods answering <= {MUST_HOLD_SECONDS[n]:g} s (install)"
                entry["holds"] = {}
                for m in (x for x in ("manifest", "upstream") if x in runs):
                    worst = max((v for v in (med[m]["nodes_ready_install_s"], med[m]["pods_answer_install_s"]) if v),
                                default=None)
                    entry["holds"][m] = worst is not None and worst <= MUST_HOLD_SECONDS[n] and \
                        all("error" not in r and not r.get("nodes_not_ready") for r in runs[m])
            sizes.append(entry)
    load_after = os.getloadavg()
    print(f"Calico installed by manifest vs `up`'s direct layout (Kubernetes datastore), medians of {args.repeat}, "
          f"interleaved; {os.cpu_count()} CPUs, load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    hdr = ("nodes", "pods", "mode", "up returns", "applied+ready", "Ready (inst)", "answer (inst)", "Ready (total)",
           "answer (total)", "<= 30 s")

    def f(v: float | None) -> str:
        return f"{v:.2f}s" if v is not None else "-"

    print("  ".join(f"{h:>13}" for h in hdr))
    for e in sizes:
        for mode in runs:
            m = e["median_s"][mode]
            holds = e.get("holds", {}).get(mode)
            verdict = "" if holds is None else ("HOLDS" if holds else "DOES NOT HOLD")
            row = (str(e["nodes"]), str(e["pods"]), mode, f(m["up_returned_s"]), f(m["applied_s"]),
                   f(m["nodes_ready_install_s"]), f(m["pods_answer_install_s"]), f(m["nodes_ready_total_s"]),
                   f(m["pods_answer_total_s"]), verdict)
            print("  ".join(f"{c:>13}" for c in row))
        for rs in e["runs"].values():
            for r in rs:
                if r.get("pod_nodes"):
                    print(f"    {r['mode']}: pods on {r['pod_nodes']} node(s)")
                if r.get("nodes_not_ready"):
                    print(f"    {r['mode']}: never Ready: {', '.join(r['nodes_not_ready'])}")
                if r.get("error"):
                    print(f"    {r['mode']}: error: {r['error']}")
    for mode, why in skipped.items():
        print(f"    {mode}: skipped: {why}")
    out = {"benchmark": "install_manifest", "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
           "load_average": {"before": load_before, "after": load_after}, "repeat": args.repeat, "skipped": skipped,
           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sizes": sizes}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}")
    return 0 if all("error" not in r for e in sizes for rs in e["runs"].values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
