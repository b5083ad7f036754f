"""How fast Felix programs workload endpoints (routes, sysctls, iptables chains, ipsets).

Runs inside a throwaway netns (never the root namespace) with cali* veths made
up front. Measures:

* ``dataplane N``: one Felix apply (calculation + drivers) from an empty
  dataplane to N endpoints (N = 100, 1000); for N = 1000, interleaved with it, the
  *floor*: one ``ipset restore`` plus one ``iptables-restore`` of the identical
  ruleset (the sets and rules, hash comments included, that Felix programs; built
  by bench/felix_policy.py's ``restore_texts``), and the same floor plus the 1000
  routes (one ``ip -batch``) and the per-interface sysctls (plain writes). Issue 18's
  must-hold: dataplane 1000 <= 1.5x the raw restore. Felix's phases are printed too;
* ``dataplane +1``: one more endpoint with 1000 present;
* ``end-to-end +1``: a running Felix (watching a real etcd inside the netns):
  from writing one more WorkloadEndpoint to it being programmed, 1000 present;
* ``end-to-end 1000``: 1000 WorkloadEndpoints written to etcd -> all programmed
  (the etcd write time is reported apart).

Targets: 1,000 endpoints <= 2 s, one more <= 50 ms. Prints a table (load average
before and after) and writes JSON (default reports/bench/felix_endpoints.json). Run
as root under the shared lock:
``flock /work/wt/heavy.lock .venv/bin/python bench/felix_endpoints.py [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

import benchlib
from benchlib import REPO, iface, ip_of

N_MAX = 1000


def make_links(n: int) -> None:
    """n veth pairs cali<i> <-> p<i> in the current netns, host ends up."""
    lines = []
    for i in range(n):
        lines.append(f"link add {iface(i)} type veth peer name p{i:011x}")  # peers stay in this netns
        lines.append(f"link set {iface(i)} up")
    subprocess.run(["ip", "-batch", "-"], input="\n".join(lines) + "\n", text=True, check=True)


def endpoints(n: int, start: int = 0):
    from agent.felix.model import Endpoint

    return tuple(Endpoint(f"bench/p{i}", iface(i), (f"{ip_of(i)}/32",), ("kns.bench", "ksa.bench.default"))
                 for i in range(start, start + n))


def felix_input(eps):
    from agent.felix.model import FelixInput, FelixSettings, HostNode, Pool

    return FelixInput(hostname="bench", endpoints=eps, nodes=(HostNode("bench", "172.31.50.1/24", "10.64.250.0"),),
                      pools=(Pool("10.64.0.0/16", "Never", nat_outgoing=True),), settings=FelixSettings(),
                      host_mtu=1500)


def flush_dataplane() -> None:
    """Remove what Felix programmed (routes go with ``ip route flush``; chains and sets are dropped)."""
    benchlib.flush_dataplane(("filter", "nat"), routes=True)


FLOOR_RAW = "floor: ipset restore + iptables-restore (same rules)"
FLOOR_FULL = "floor + ip -batch routes + sysctl writes"


def raw_floor(desired) -> tuple[float, float]:
    """One raw restore of ``desired``'s sets and rules (seconds), then (the second value) the
    same plus its routes with one ``ip -batch`` and its interfaces' sysctls written in turn."""
    from agent.felix.sysctl import global_settings, interface_settings

    ipt_text, set_text = benchlib.restore_texts(desired)
    routes = "".join(f"route replace {dst} dev {dev} scope link proto boot\n" for dst, dev in desired.routes.items())
    t0 = time.perf_counter()
    t1 = t0 + benchlib.raw_restore(ipt_text, set_text)
    subprocess.run(["ip", "-batch", "-"], input=routes, text=True, check=True)
    for key, val in [*global_settings().items(),
                     *(kv for i in sorted(desired.interfaces) for kv in interface_settings(i, "1").items())]:
        try:
            with open(f"/proc/sys/{key}", "w") as f:
                f.write(val)
        except FileNotFoundError:
            pass  # e.g. IPv6 off, as Felix's driver allows
    return t1 - t0, time.perf_counter() - t0


def timed_phases(felix, phases: dict[str, float]) -> None:
    """Wrap ``felix``'s calculation and drivers so each apply adds its seconds to ``phases``."""
    benchlib.time_phases(felix, phases, {"calculate": "calculation", "ipsets": "ipsets", "routes": "routes",
                                         "sysctls": "sysctls", "iptables": "iptables"})


def inside(repeat: int) -> dict:
    """The measurements (run inside the bench netns)."""
    from agent.felix.daemon import Felix

    make_links(N_MAX + 1)
    out: dict[str, list[float]] = {}

    class NoClient:
        pass

    # what Felix programs for N_MAX endpoints (an unmeasured apply): the floor restores exactly that
    flush_dataplane()
    f = Felix(NoClient(), "bench", env={}, var_lib=tempfile.mkdtemp())
    f.apply(felix_input(endpoints(N_MAX)), resync={"routes", "iptables", "ipsets"})
    reference = f.desired
    f.close()
    for n in (100, N_MAX):
        times = []
        for _ in range(repeat):
            if n == N_MAX:  # the floor, interleaved: one raw restore of what Felix programs
                flush_dataplane()
                raw, full = raw_floor(reference)
                out.setdefault(FLOOR_RAW, []).append(raw)
                out.setdefault(FLOOR_FULL, []).append(full)
            flush_dataplane()
            f = Felix(NoClient(), "bench", env={}, var_lib=tempfile.mkdtemp())
            phases: dict[str, float] = {}
            if n == N_MAX:
                timed_phases(f, phases)
            inp = felix_input(endpoints(n))
            t0 = time.perf_counter()
            f.apply(inp, resync={"routes", "iptables", "ipsets"})
            times.append(time.perf_counter() - t0)
            for name, secs in phases.items():
                out.setdefault(f"  of which: {name}", []).append(secs)
            check_programmed(n)
            f.close()
        out[f"dataplane {n}"] = times
    # One more with 1000 present (same Felix; its caches are warm, as in a running agent).
    flush_dataplane()
    f = Felix(NoClient(), "bench", env={}, var_lib=tempfile.mkdtemp())
    f.apply(felix_input(endpoints(N_MAX)), resync={"routes", "iptables", "ipsets"})
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f.apply(felix_input(endpoints(N_MAX + 1)))
        times.append(time.perf_counter() - t0)
        check_programmed(N_MAX + 1)
        f.apply(felix_input(endpoints(N_MAX)))  # remove it again
    out["dataplane +1 (1000 present)"] = times
    f.close()
    out.update(end_to_end(repeat))
    return out


def check_programmed(n: int) -> None:
    """Fail loudly unless the last endpoint's route and chain are in the kernel."""
    last = n - 1
    routes = subprocess.run(["ip", "-4", "route", "show", f"{ip_of(last)}/32"], capture_output=True, text=True).stdout
    if iface(last) not in routes:
        raise SystemExit(f"route for endpoint {last} missing: {routes!r}")
    chains = subprocess.run(["iptables", "-S", f"cali-tw-{iface(last)}"], capture_output=True, text=True)
    if chains.returncode != 0:
        raise SystemExit(f"chain cali-tw-{iface(last)} missing: {chains.stderr}")


def end_to_end(repeat: int) -> dict[str, list[float]]:
    """A running Felix watching a real etcd inside this netns."""
    from agent.felix.daemon import Felix
    from datastore import Client
    from datastore.resources import IPPool, Metadata, Node, NodeBGPSpec, WorkloadEndpoint

    flush_dataplane()
    data = tempfile.mkdtemp(prefix="bench-etcd-")
    etcd, url = benchlib.start_etcd(data, 23790)
    try:
        client = Client([url])
        client.create(IPPool(metadata=Metadata(name="p"), spec=IPPool.Spec(cidr="10.64.0.0/16", block_size=26,
                                                                             ipip_mode="Never", nat_outgoing=True)))
        node = Node(metadata=Metadata(name="bench"))
        node.spec.bgp = NodeBGPSpec(ipv4_address="172.31.50.1/24")
        client.create(node)

        def wep(i: int) -> WorkloadEndpoint:
            w = WorkloadEndpoint(metadata=Metadata(name=f"bench-k8s-p{i}-eth0", namespace="bench"))
            w.spec.orchestrator, w.spec.node, w.spec.pod, w.spec.endpoint = "k8s", "bench", f"p{i}", "eth0"
            w.spec.ip_networks = [f"{ip_of(i)}/32"]
            w.spec.profiles = ["kns.bench", "ksa.bench.default"]
            w.spec.interface_name = iface(i)
            return w

        felix = Felix(client, "bench", env={}, var_lib=tempfile.mkdtemp())
        felix.start()
        if not felix.wait_ready(20):
            raise SystemExit(f"felix not ready: {felix.status()}")
        t0 = time.perf_counter()
        for i in range(N_MAX):
            client.create(wep(i))
        t_written = time.perf_counter()
        while not (felix.desired is not None and len(felix.desired.routes) == N_MAX and not felix._dirty.is_set()):
            felix.applied_event.wait(0.01)
            felix.applied_event.clear()
            if time.perf_counter() - t0 > 120:
                raise SystemExit("1000 endpoints not programmed within 120 s")
        t_done = time.perf_counter()
        check_programmed(N_MAX)
        res = {"end-to-end 1000: etcd writes": [t_written - t0], "end-to-end 1000: programmed after last write":
               [t_done - t_written], "end-to-end 1000: total": [t_done - t0]}
        times = []
        for _ in range(repeat):
            felix.applied_event.clear()
            t0 = time.perf_counter()
            client.create(wep(N_MAX))
            while not (felix.desired is not None and f"{ip_of(N_MAX)}/32" in felix.desired.routes):
                if not felix.applied_event.wait(5):
                    raise SystemExit("one more endpoint not programmed within 5 s")
                felix.applied_event.clear()
            times.append(time.perf_counter() - t0)
            check_programmed(N_MAX + 1)
            client.delete("WorkloadEndpoint", f"bench-k8s-p{N_MAX}-eth0", namespace="bench")
            while f"{ip_of(N_MAX)}/32" in felix.desired.routes:
                felix.applied_event.wait(5)
                felix.applied_event.clear()
        res["end-to-end +1 (1000 present)"] = times
        felix.stop()
        return res
    finally:
        etcd.terminate()
        etcd.wait(10)
        subprocess.run(["rm", "-rf", data])


def main() -> int:
    """Outer: make the netns, run the measurements inside, print and write the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=os.path.join(REPO, "reports", "bench", "felix_endpoints.json"))
    ap.add_argument("--inside", metavar="OUT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inside:
        res = inside(args.repeat)
        with open(args.inside, "w") as f:
            json.dump(res, f)
        return 0
    res, load_before, load_after = benchlib.run_inside_netns(__file__, ["--repeat", str(args.repeat)], "fbench")
    targets = {"dataplane 1000": 2.0, "dataplane +1 (1000 present)": 0.05, "end-to-end +1 (1000 present)": 0.05}
    print(f"Felix programming workload endpoints, {os.cpu_count()} CPUs, load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after; {args.repeat} repeats, medians")

    def target_of(name: str, med: float) -> tuple[str, dict]:
        tgt = targets.get(name)
        return (f"{tgt * 1000:.0f} ms" if tgt else "-",
                {"target_s": tgt, "meets_target": (med <= tgt) if tgt else None})

    rows = benchlib.print_median_table(res, 54, "median ms", target_of)
    med = {name: statistics.median(times) for name, times in res.items()}
    ratios = {"dataplane 1000 / raw restore": med["dataplane 1000"] / med[FLOOR_RAW],
              "dataplane 1000 / raw restore + routes + sysctls": med["dataplane 1000"] / med[FLOOR_FULL]}
    for name, ratio in ratios.items():
        print(f"ratio {name} (same run): {ratio:.2f}x")
    holds = ratios["dataplane 1000 / raw restore"] <= 1.5
    print(f"issue 18 must-hold, 1,000 endpoints from empty <= 1.5x one raw restore: "
          f"{'HOLDS' if holds else 'DOES NOT HOLD'}")
    benchlib.write_json(args.json, {"benchmark": "felix_endpoints", "cpus": os.cpu_count(), "repeat": args.repeat,
                                    "load_average": {"before": load_before, "after": load_after}, "ratios": ratios,
                                    "must_hold_1000_le_1_5x_raw_restore": holds, "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
