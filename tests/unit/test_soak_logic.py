"""The soak's pure logic: the leak diff, duplicate IPs, batch manifests, and the driver over an
in-memory cluster (a fake is fine here: the lab side is tests/lab/test_soak.py)."""

from __future__ import annotations

import pytest

from testbed.lab.footprint import node_items
from testbed.lab.soak import Cluster, Footprint, batch_manifest, duplicate_ips, leaks, soak

pytestmark = pytest.mark.unit


def test_leaks_lists_what_is_new_per_category_and_surplus_processes():
    before = Footprint(veths=frozenset({"w0 cali1"}), ips=frozenset({"block h1 10.0.0.1"}), processes=10)
    after = Footprint(veths=frozenset({"w0 cali1", "w0 cali2"}), ips=frozenset(), processes=12)
    assert leaks(before, after) == {"veths": ["w0 cali2"], "processes": ["2 more (10 -> 12)"]}
    assert leaks(after, after) == {}


def pod(name: str, ip: str | None, phase: str = "Running") -> dict:
    st = {"phase": phase}
    if ip:
        st.update(podIP=ip, podIPs=[{"ip": ip}])
    return {"metadata": {"name": name, "namespace": "default"}, "status": st}


def test_duplicate_ips_only_among_running_pods():
    assert duplicate_ips([pod("a", "10.0.0.1"), pod("b", "10.0.0.1"), pod("c", "10.0.0.2")]) == {
        "10.0.0.1": ["default/a", "default/b"]}
    assert duplicate_ips([pod("a", "10.0.0.1"), pod("b", "10.0.0.1", phase="Pending")]) == {}


def test_batch_manifest_spreads_pods_round_robin_and_refuses_bad_sizes():
    m = batch_manifest("r", 3, 5, ["w0", "w1"])
    assert [i["spec"]["nodeName"] for i in m["items"]] == ["w0", "w1", "w0", "w1", "w0"]
    assert m["items"][4]["metadata"] == {"name": "r-3-4", "namespace": "default",
                                         "labels": {"soak": "r", "batch": "3"}}
    with pytest.raises(ValueError, match="at least one node"):
        batch_manifest("r", 0, 1, [])
    with pytest.raises(ValueError, match="batch size"):
        batch_manifest("r", 0, 0, ["w0"])


def test_node_items_parse_what_the_commands_print():
    items = node_items(
        "w0",
        links="1: lo: <LOOPBACK> mtu 65536\n5: cali12345@if2: <UP> mtu 1480\n6: eth0@if9: <UP>\n",
        routes="default via 172.30.0.1 dev eth0\n192.168.1.2 dev cali12345 scope link\n",
        iptables="*filter\n:INPUT ACCEPT [0:0]\n:cali-tw-cali12345 - [0:0]\n-A cali-tw-cali12345 -j DROP\nCOMMIT\n",
        ipsets="create cali40all-ipam-pools hash:net family inet\nadd cali40all-ipam-pools 192.168.0.0/16\n",
        netns="cni-1234 (id: 0)\n")
    assert items["veths"] == {"w0 cali12345"}
    assert "w0 192.168.1.2 dev cali12345 scope link" in items["routes"]
    assert items["chains"] == {"w0 filter INPUT", "w0 filter cali-tw-cali12345"}
    assert items["rules"] == {"w0 filter -A cali-tw-cali12345 -j DROP"}
    assert items["ipsets"] == {"w0 cali40all-ipam-pools 192.168.0.0/16"}
    assert items["netns"] == {"w0 cni-1234"}


class MemoryCluster(Cluster):
    """Pods become Running on the next read; deleted pods vanish; IPs from a free list.
    ``leak_every`` leaves one veth behind every that many deletions; ``dup`` hands IP
    10.0.0.1 to two pods."""

    def __init__(self, leak_every: int = 0, dup: bool = False, blind: bool = False) -> None:
        self.pods_: dict[str, dict] = {}
        self.free = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(1000)]
        self.deleted = 0
        self.leak_every, self.dup, self.blind = leak_every, dup, blind
        self.veths: set[str] = set()

    def nodes(self) -> list[str]:
        return ["w0", "w1"]

    def apply(self, manifest: dict) -> None:
        for item in manifest["items"]:
            ip = "10.0.0.1" if self.dup else self.free.pop(0)
            self.pods_[item["metadata"]["name"]] = {**item, "status": {"phase": "Running", "podIP": ip,
                                                                         "podIPs": [{"ip": ip}]}}

    def _match(self, selector: str) -> list[str]:
        want = dict(kv.split("=") for kv in selector.split(","))
        return [n for n, p in self.pods_.items() if all(p["metadata"]["labels"].get(k) == v for k, v in want.items())]

    def pods(self, selector: str) -> list[dict]:
        return [self.pods_[n] for n in self._match(selector)]

    def delete(self, selector: str) -> None:
        for n in self._match(selector):
            p = self.pods_.pop(n)
            if not self.dup:
                self.free.append(p["status"]["podIP"])
            self.deleted += 1
            if self.leak_every and self.deleted % self.leak_every == 0:
                self.veths.add(f"w0 cali{self.deleted}")

    def footprint(self) -> Footprint:
        live = [] if self.blind else list(self.pods_.values())
        ips = {f"block h-{p['metadata']['name']} {p['status']['podIP']}" for p in live}
        return Footprint(ips=frozenset(ips),
                         workloadendpoints=frozenset(f"w0/{p['metadata']['name']}" for p in live),
                         veths=frozenset(self.veths | {f"w0 cali-{p['metadata']['name']}" for p in live}),
                         routes=frozenset(f"w0 {p['status']['podIP']} dev cali-{p['metadata']['name']}"
                                          for p in live))


def fake_time():
    now = [0.0]
    return (lambda: now[0]), (lambda s: now.__setitem__(0, now[0] + s))


def test_soak_runs_every_cycle_in_batches_and_finds_nothing_on_a_clean_cluster():
    clock, sleep = fake_time()
    c = MemoryCluster()
    res = soak(c, 25, 10, clock=clock, sleep=sleep)
    assert (res.cycles, res.batches, res.leaks, res.duplicate_ips, res.error) == (25, 3, {}, {}, "")
    assert res.max_live == 10  # this cluster deletes at once (in a lab two batches overlap)
    assert c.pods_ == {} and res.ok and res.row()["verdict"] == "ok"
    assert res.seen == {"ips": 10, "workloadendpoints": 10, "veths": 10, "routes": 10}


def test_soak_reports_leaks_and_duplicate_ips():
    clock, sleep = fake_time()
    res = soak(MemoryCluster(leak_every=7), 20, 5, clock=clock, sleep=sleep, settle=2)
    assert res.leaks == {"veths": ["w0 cali14", "w0 cali7"]} and not res.ok
    assert res.row()["leaked_veths"] == 2 and res.row()["verdict"] == "leaks: veths 2"
    res = soak(MemoryCluster(dup=True), 4, 2, clock=clock, sleep=sleep)
    assert res.duplicate_ips and res.row()["verdict"] == "1 IP(s) handed out twice"


def test_soak_fails_loudly_when_its_footprint_cannot_see_pods():
    clock, sleep = fake_time()
    res = soak(MemoryCluster(blind=True), 10, 5, clock=clock, sleep=sleep)
    assert "would be blind" in res.error and not res.ok and res.cycles == 0


def test_soak_refuses_zero_cycles():
    with pytest.raises(ValueError, match="cycles"):
        soak(MemoryCluster(), 0, 5)


def test_the_baseline_waits_until_the_footprint_stops_changing():
    from testbed.lab.soak import steady_footprint

    clock, sleep = fake_time()
    reads = iter([Footprint(routes=frozenset({"m a"})), Footprint(routes=frozenset({"m a", "m b"})),
                  Footprint(routes=frozenset({"m a", "m b"}))])

    class Converging(MemoryCluster):
        def footprint(self) -> Footprint:
            return next(reads)

    assert steady_footprint(Converging(), 30, clock, sleep).routes == {"m a", "m b"}
