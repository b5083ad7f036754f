"""Benchmark: time from `calicolab up` to all nodes Ready and N pods Running and reachable.

For each size (default 3, 20 and 50 nodes) the script writes a topology (one
node segment with a gateway router, IPIP Always, an nginx Deployment as the
lab's workload), brings the
lab up with calico-node, then polls until every Node is Ready, every pod is
Running with an IP, and every pod answers HTTP 200 from the control-plane node
(through the IPIP tunnel when it runs elsewhere). Then it takes the lab down and
checks nothing is left. Prints a table, writes JSON (default
reports/bench/lab_up.json)::

    sudo .venv/bin/python bench/lab_up.py [--sizes 3,20,50] [--pods 4] [--json PATH]

Targets (issue 4): 3 nodes + 4 pods <= 3 s, 20 nodes <= 10 s, 50 nodes <= 30 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from testbed.lab import lifecycle as labmod  # noqa: E402
from testbed.lab import netns as nsmod  # noqa: E402
from testbed.lab.clean import clean_lab  # noqa: E402
from testbed.poll import WaitTimeout, wait_for  # noqa: E402

TARGETS = {3: 3.0, 20: 10.0, 50: 30.0}


def topology(name: str, nodes: int, pods: int) -> str:
    """An IPIP lab of ``nodes`` nodes behind a gateway router, with ``pods`` nginx replicas."""
    lines = [f"name: {name}", "segments:", "  - {name: lan0, cidr: 172.30.96.0/22}",
             "  - {name: inet, cidr: 203.0.113.0/24}",
             "routers:",  # the nodes' default gateway, as on a real network
             "  - {name: r0, interfaces: [{segment: lan0, address: 172.30.96.1},"
             " {segment: inet, address: 203.0.113.1}]}",
             "nodes:"]
    for i in range(nodes):
        role = "control-plane" if i == 0 else "worker"
        node = "k8s-m" if i == 0 else f"k8s-w{i - 1}"
        lines.append(f"  - {{name: {node}, role: {role}, address: 172.30.{96 + (10 + i) // 256}."
                     f"{(10 + i) % 256}, segment: lan0}}")
    lines += [
        "calico:",
        "  pool: {cidr: 192.168.0.0/16, blockSize: 26, ipipMode: Always, natOutgoing: true}",
        "workloads:",
        "  - manifest:",
        "      apiVersion: apps/v1",
        "      kind: Deployment",
        "      metadata: {name: nginx, namespace: default}",
        "      spec:",
        f"        replicas: {pods}",
        "        selector: {matchLabels: {app: nginx}}",
        "        template:",
        "          metadata: {labels: {app: nginx}}",
        "          spec: {containers: [{name: nginx, image: nginx}]}",
    ]
    return "\n".join(lines) + "\n"


def cluster_view(cp_netns: str, endpoints: list[str]) -> dict:
    """Nodes' readiness and pods' phase/IP, read from the lab's store inside its netns."""
    from testbed.k8s.store import Store

    def read() -> dict:
        store = Store.from_endpoints(endpoints)
        nodes = {}
        for n in store.list("Node"):
            conds = (n.get("status") or {}).get("conditions") or []
            nodes[n["metadata"]["name"]] = any(c.get("type") == "Ready" and c.get("status") == "True"
                                               for c in conds)
        pods = {p["metadata"]["name"]: ((p.get("status") or {}).get("phase"),
                                        (p.get("status") or {}).get("podIP"),
                                        (p.get("spec") or {}).get("nodeName"))
                for p in store.list("Pod", "default")}
        return {"nodes": nodes, "pods": pods}

    return nsmod.run_in(cp_netns, read)


def probe_until_200(ips: list[str], timeout: float = 60.0, attempt_timeout: float = 3.0,
                    interval: float = 0.1) -> dict[str, float]:
    """Wall-clock time (epoch) at which each IP first answered ``GET /`` on port 80 with
    status 200. One thread, non-blocking sockets: every IP gets a new connection
    attempt every ``interval`` s while it has not answered (earlier attempts stay open
    up to ``attempt_timeout``, so an answer that needed a SYN retransmission still
    counts, at the time it came), until ``timeout``. Runs in the caller's netns."""
    import selectors
    import socket

    sel = selectors.DefaultSelector()
    seen: dict[str, float] = {}
    start = time.monotonic()
    next_try = dict.fromkeys(ips, start)
    conns: dict[socket.socket, tuple[str, float, bytearray]] = {}

    def close(sock: socket.socket) -> None:
        conns.pop(sock)
        sel.unregister(sock)
        sock.close()

    while len(seen) < len(ips) and time.monotonic() - start < timeout:
        now = time.monotonic()
        for ip in [i for i, t in next_try.items() if t <= now and i not in seen]:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.connect_ex((ip, 80))
            conns[sock] = (ip, now, bytearray())
            sel.register(sock, selectors.EVENT_WRITE)
            next_try[ip] = now + interval
        for key, events in sel.select(timeout=0.01):
            sock = key.fileobj
            ip, _, buf = conns[sock]
            if events & selectors.EVENT_WRITE:
                try:
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        raise OSError("connect failed")
                    sock.send(f"GET / HTTP/1.0\r\nHost: {ip}\r\n\r\n".encode())
                except OSError:
                    close(sock)
                    continue
                sel.modify(sock, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            buf += data
            if b"\r\n" in buf or not data:
                status = buf.split(b"\r\n", 1)[0].split()
                if len(status) >= 2 and status[1] == b"200" and ip not in seen:
                    seen[ip] = time.time()
                close(sock)
        now = time.monotonic()
        for sock in [s for s, (ip, began, _) in conns.items() if ip in seen or now - began > attempt_timeout]:
            close(sock)
    for sock in list(conns):
        close(sock)
    sel.close()
    return seen


def reachable_at(cp_netns: str, ips: list[str], timeout: float = 60.0) -> dict[str, float]:
    """Wall-clock time (epoch) at which each pod IP first answered HTTP 200 from the
    control-plane node (:func:`probe_until_200` inside its netns; one light process for
    every pod, so the measurement does not load the machine it measures)."""
    return nsmod.run_in(cp_netns, probe_until_200, ips, timeout)


def run_one(nodes: int, pods: int, workdir: Path) -> dict:
    """Bring one lab up, measure, take it down."""
    name = f"bench{nodes}-{os.getpid() % 10000}"
    path = workdir / f"{name}.yaml"
    path.write_text(topology(name, nodes, pods))
    result: dict = {"nodes": nodes, "pods": pods, "lab": name}
    t0 = time.monotonic()
    epoch0 = time.time()
    try:
        st = labmod.up(path, progress=lambda m: print(f"  [{time.monotonic() - t0:6.2f}s] {m}",
                                                      file=sys.stderr),
                       timeout=300, ready_timeout=60)
        result["up_returned_s"] = round(time.monotonic() - t0, 3)
        result["supervisor_timings_s"] = st.get("timings", {})
        cp_ns = st["hosts"][st["control_plane"]]["netns"]
        eps = st["etcd_endpoints"]

        def all_ready(v: dict) -> bool:
            return len(v["nodes"]) == nodes and all(v["nodes"].values())

        try:
            wait_for(lambda: cluster_view(cp_ns, eps), all_ready, timeout=60,
                     what=f"{nodes} nodes Ready")
            result["nodes_ready_s"] = round(time.monotonic() - t0, 3)
        except WaitTimeout as exc:  # record who is stuck; pods may still run elsewhere
            last = exc.last or {"nodes": {}}
            result["nodes_not_ready"] = sorted(n for n, ok in last["nodes"].items() if not ok)

        def pods_running(v: dict) -> bool:
            return len(v["pods"]) == pods and all(ph == "Running" and ip
                                                  for ph, ip, _ in v["pods"].values())

        view = wait_for(lambda: cluster_view(cp_ns, eps), pods_running, timeout=180,
                        what=f"{pods} pods Running")
        result["pods_running_s"] = round(time.monotonic() - t0, 3)
        ips = sorted(ip for _, ip, _ in view["pods"].values())
        seen = reachable_at(cp_ns, ips)
        missing = sorted(set(ips) - set(seen))
        if missing:
            raise RuntimeError(f"pods never answered HTTP 200 from {st['control_plane']}: "
                               f"{', '.join(missing)}")
        result["pods_reachable_s"] = round(max(seen.values()) - epoch0, 3)
        result["pod_nodes"] = sorted({n for _, _, n in view["pods"].values()})
        t1 = time.monotonic()
        labmod.down(name, progress=lambda _m: None)
        result["down_s"] = round(time.monotonic() - t1, 3)
        result["left_behind"] = [n for n in st["netns"] if Path("/run/netns", n).exists()]
    except Exception as exc:  # noqa: BLE001 - recorded in the results, lab removed below
        result["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
    finally:
        clean_lab(name)
    target = TARGETS.get(nodes)
    result["target_s"] = target
    done = result.get("pods_reachable_s")
    result["meets_target"] = bool(target and done is not None and done <= target)
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a table; write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="3,20,50", help="node counts, comma separated")
    ap.add_argument("--pods", type=int, default=4,
                    help="pods for the 3-node lab; bigger labs run one pod per worker")
    ap.add_argument("--json", default=str(REPO / "reports" / "bench" / "lab_up.json"))
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/lab_up.py needs root", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="calicolab-bench-") as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            pods = args.pods if n <= 3 else n - 1
            print(f"lab of {n} nodes, {pods} pods ...", file=sys.stderr)
            results.append(run_one(n, pods, Path(tmp)))
    hdr = ("nodes", "pods", "up returns", "nodes Ready", "pods Running", "pods reachable",
           "target", "ok", "down")
    print("  ".join(f"{h:>14}" for h in hdr))
    for r in results:
        def f(key: str, r: dict = r) -> str:
            v = r.get(key)
            return f"{v:.2f}s" if isinstance(v, float | int) else "-"
        row = (str(r["nodes"]), str(r["pods"]), f("up_returned_s"), f("nodes_ready_s"),
               f("pods_running_s"), f("pods_reachable_s"), f("target_s"),
               "yes" if r["meets_target"] else "NO", f("down_s"))
        print("  ".join(f"{c:>14}" for c in row))
        if r.get("nodes_not_ready"):
            print(f"    never Ready: {', '.join(r['nodes_not_ready'])}")
        if r.get("error"):
            print(f"    error: {r['error']}")
    out = {"benchmark": "lab_up", "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
