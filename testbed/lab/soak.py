"""A pod churn soak: many pod create/delete cycles across nodes, then a leak check.

The soak drives a running lab as a user would, through the real kubectl against the
lab's API server: it applies batches of one-container pods spread over the nodes, waits
until they are Running with an IP, deletes them, and meanwhile creates the next batch (so
IPs freed by one batch are handed to the next while its pods are still going away).
While pods of two batches live, every IP a Running pod shows must be distinct: an IP
handed out twice is counted.

Before the first batch and after the last one is gone it takes a :class:`Footprint` of
everything a pod leaves behind when its teardown goes wrong: IPAM allocations (handle and
address) and WorkloadEndpoints in the datastore; on every node the ``cali*`` links, the
routes, the iptables chains and rules, the ipset members, the network namespaces; and the
processes in the lab's cgroup. :func:`leaks` compares the two (pure logic).

Used by the soak test (tests/lab/test_soak.py, a reduced run) and its benchmark
(bench/pod_soak.py, 1,000 cycles, a table and JSON).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from testbed.lab.faults import pod_running

#: what every Running pod adds to the footprint, at least one item each
SEEN_PER_POD = ("ips", "workloadendpoints", "veths", "routes")

#: footprint categories, in the order the table prints them
CATEGORIES = ("ips", "workloadendpoints", "veths", "routes", "chains", "rules", "ipsets", "netns")


@dataclass(frozen=True)
class Footprint:
    """What pods leave behind, as sets of comparable strings (each item names its node)."""

    ips: frozenset[str] = frozenset()  # "<handle> <ip>"
    workloadendpoints: frozenset[str] = frozenset()  # "<node>/<name>"
    veths: frozenset[str] = frozenset()  # "<node> <ifname>"
    routes: frozenset[str] = frozenset()  # "<node> <ip route line>"
    chains: frozenset[str] = frozenset()  # "<node> <table> <chain>"
    rules: frozenset[str] = frozenset()  # "<node> <table> -A ..."
    ipsets: frozenset[str] = frozenset()  # "<node> <set> <member>"
    netns: frozenset[str] = frozenset()  # "<node> <netns name>"
    processes: int = 0


def leaks(before: Footprint, after: Footprint) -> dict[str, list[str]]:
    """Per category, what ``after`` has that ``before`` had not (sorted); ``processes``
    lists the surplus as one item ("N more") when the cgroup holds more than before."""
    out: dict[str, list[str]] = {}
    for cat in CATEGORIES:
        extra = sorted(getattr(after, cat) - getattr(before, cat))
        if extra:
            out[cat] = extra
    if after.processes > before.processes:
        out["processes"] = [f"{after.processes - before.processes} more ({before.processes} -> {after.processes})"]
    return out


def duplicate_ips(pods: list[dict]) -> dict[str, list[str]]:
    """IPs shown by more than one live pod: ``{ip: [namespace/name, ...]}``. A pod being
    deleted still counts while it is Running: its IP must not be anyone else's yet."""
    owners: dict[str, list[str]] = {}
    for p in pods:
        st = p.get("status") or {}
        if st.get("phase") != "Running":
            continue
        meta = p.get("metadata") or {}
        for ip in {i.get("ip") for i in st.get("podIPs") or []} | {st.get("podIP")}:
            if ip:
                owners.setdefault(ip, []).append(f"{meta.get('namespace', 'default')}/{meta.get('name')}")
    return {ip: sorted(who) for ip, who in owners.items() if len(who) > 1}


def batch_manifest(run: str, batch: int, size: int, nodes: list[str], image: str = "busybox",
                   grace: int = 1) -> dict:
    """A v1 List of ``size`` pods labelled ``soak=<run>, batch=<batch>``, bound round-robin to
    ``nodes`` (the scheduler's work is not what the soak measures)."""
    if not nodes:
        raise ValueError("a soak needs at least one node to put pods on")
    if size < 1:
        raise ValueError(f"batch size must be at least 1, not {size}")
    items = []
    for i in range(size):
        items.append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{run}-{batch}-{i}", "namespace": "default",
                         "labels": {"soak": run, "batch": str(batch)}},
            "spec": {"nodeName": nodes[i % len(nodes)], "terminationGracePeriodSeconds": grace,
                     "containers": [{"name": "c", "image": image}]},
        })
    return {"apiVersion": "v1", "kind": "List", "items": items}


@dataclass
class SoakResult:
    """What a soak did and found."""

    cycles: int = 0
    batches: int = 0
    seconds: float = 0.0
    max_live: int = 0
    duplicate_ips: dict[str, list[str]] = field(default_factory=dict)
    leaks: dict[str, list[str]] = field(default_factory=dict)
    settle_seconds: float = 0.0
    error: str = ""
    #: per category, how many items the footprint gained while the first batch ran: proof
    #: that the leak check sees pods at all (a blind check would find nothing either way)
    seen: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.error or self.leaks or self.duplicate_ips)

    def row(self) -> dict:
        """A flat record for the table and JSON."""
        rec = {"cycles": self.cycles, "batches": self.batches, "seconds": round(self.seconds, 2),
               "pods_per_s": round(self.cycles / self.seconds, 1) if self.seconds else 0.0,
               "max_live": self.max_live, "duplicate_ips": len(self.duplicate_ips),
               "settle_s": round(self.settle_seconds, 2)}
        for cat in (*CATEGORIES, "processes"):
            rec[f"leaked_{cat}"] = len(self.leaks.get(cat, []))
        rec["verdict"] = self.verdict
        return rec

    @property
    def verdict(self) -> str:
        """ok, or what failed first: the run's error, leaks, duplicate IPs."""
        if self.error:
            return self.error
        if self.leaks:
            return "leaks: " + ", ".join(f"{k} {len(v)}" for k, v in self.leaks.items())
        if self.duplicate_ips:
            return f"{len(self.duplicate_ips)} IP(s) handed out twice"
        return "ok"


class Cluster:
    """What the soak needs from a lab (the kernel and API side, injected for tests)."""

    def nodes(self) -> list[str]:
        """Nodes pods may run on."""
        raise NotImplementedError

    def apply(self, manifest: dict) -> None:
        raise NotImplementedError

    def pods(self, selector: str) -> list[dict]:
        raise NotImplementedError

    def delete(self, selector: str) -> None:
        raise NotImplementedError

    def footprint(self) -> Footprint:
        raise NotImplementedError


def steady_footprint(cluster: Cluster, timeout: float, clock: Callable[[], float],
                     sleep: Callable[[float], None], interval: float = 1.0) -> Footprint:
    """The footprint once two reads ``interval`` apart agree (a lab still converging, BGP routes
    still arriving, would otherwise count its late routes as the soak's leaks); after
    ``timeout`` the last read, whatever it is."""
    deadline = clock() + timeout
    last = cluster.footprint()
    while clock() < deadline:
        sleep(interval)
        now = cluster.footprint()
        if now == last:
            return now
        last = now
    return last


def soak(cluster: Cluster, cycles: int, batch: int, *, run: str = "soak", timeout: float = 120.0,
         settle: float = 60.0, progress: Callable[[str], None] = lambda _m: None,
         clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
         poll: float = 0.2) -> SoakResult:
    """``cycles`` pod create/delete cycles in batches of ``batch``; the leak check after.

    Each step applies batch *i*, deletes batch *i-1* without waiting, then waits until
    batch *i* is Running (checking for duplicate IPs among every live pod of the run
    meanwhile). After the last batch it waits, up to ``settle`` seconds, for the run's
    pods to be gone and the footprint to be back to what it was before."""
    if cycles < 1:
        raise ValueError(f"cycles must be at least 1, not {cycles}")
    nodes = cluster.nodes()
    res = SoakResult()
    before = steady_footprint(cluster, settle, clock, sleep)
    t0 = clock()
    done = 0
    prev: str | None = None
    b = 0
    try:
        while done < cycles:
            size = min(batch, cycles - done)
            cluster.apply(batch_manifest(run, b, size, nodes))
            if prev is not None:
                cluster.delete(prev)
            sel = f"soak={run},batch={b}"
            deadline = clock() + timeout
            while True:
                live = cluster.pods(f"soak={run}")
                res.max_live = max(res.max_live, sum(1 for p in live if pod_running(p)))
                for ip, who in duplicate_ips(live).items():
                    res.duplicate_ips[ip] = sorted(set(res.duplicate_ips.get(ip, [])) | set(who))
                mine = [p for p in live if (p.get("metadata") or {}).get("labels", {}).get("batch") == str(b)]
                up = sum(1 for p in mine if pod_running(p))
                if up == size:
                    break
                if clock() > deadline:
                    raise TimeoutError(f"batch {b}: {up}/{size} pods Running after {timeout:.0f} s")
                sleep(poll)
            if b == 0:
                during = leaks(before, cluster.footprint())
                res.seen = {k: len(v) for k, v in during.items() if k != "processes"}
                blind = [k for k in SEEN_PER_POD if res.seen.get(k, 0) < size]
                if blind:
                    raise RuntimeError(f"the footprint does not see the first batch's {size} pods in "
                                       f"{', '.join(blind)} (it saw {res.seen}): the leak check would be blind")
            done += size
            res.batches += 1
            prev = sel
            b += 1
            progress(f"{done}/{cycles} pods created and Running ({clock() - t0:.1f} s)")
        cluster.delete(f"soak={run}")
    except (TimeoutError, RuntimeError) as exc:
        res.error = str(exc)
        try:
            cluster.delete(f"soak={run}")
        except RuntimeError as again:
            res.error += f"; cleaning up: {again}"
    res.cycles = done
    res.seconds = clock() - t0
    t1 = clock()
    deadline = t1 + settle
    while True:
        left = cluster.pods(f"soak={run}")
        found = leaks(before, cluster.footprint()) if not left else {"pods": [
            f"{(p.get('metadata') or {}).get('name')}" for p in left]}
        if not found or clock() > deadline:
            break
        sleep(0.5)
    res.settle_seconds = clock() - t1
    res.leaks = found
    progress(f"settled in {res.settle_seconds:.1f} s: "
             f"{'nothing leaked' if not found else json.dumps({k: len(v) for k, v in found.items()})}")
    return res
