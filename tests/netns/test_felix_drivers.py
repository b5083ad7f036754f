"""Felix's iptables and ipset drivers against a real kernel, each inside its own netns.

The drivers run in this process with the calling thread inside the test's netns
(kernel.netns.entered), so the iptables-restore/ipset they exec act there. The route and
sysctl drivers' logic is unit-tested on the fake kernel (tests/unit/test_felix_kernel.py).
"""

from __future__ import annotations

import pytest

from agent.felix.calc import calculate
from agent.felix.ipsets import IpsetDriver
from agent.felix.iptables import IptablesError, IptablesTable, apply_tables
from agent.felix.model import Endpoint, FelixInput, HostNode, IPSet, Pool, TableState
from kernel.netns import entered
from tests.netns.felix_support import Topo, run
from tests.support import require_root, require_tool

pytestmark = pytest.mark.netns

NODES = (HostNode("w0", "172.31.9.1/24", "192.168.1.0"), HostNode("w1", "172.31.9.2/24", "192.168.2.0"))
POOL = Pool("192.168.0.0/16", "Always", nat_outgoing=True)


def ep(i: int) -> Endpoint:
    return Endpoint(f"ns/p{i}", f"cali{i:011x}", (f"192.168.1.{i}/32",), ("kns.ns",))


def desired(n: int, **kw):
    return calculate(FelixInput(hostname="w0", endpoints=tuple(ep(i) for i in range(1, n + 1)),
                                nodes=NODES, pools=(POOL,), **kw))


@pytest.fixture
def topo():
    require_root()
    t = Topo()
    yield t
    t.close()


def test_all_tables_in_one_restore_minimal_and_resync_repairs(topo):
    """apply_tables: every table from empty in one save + one restore; again: nothing written;
    a chain deleted by hand in one table is put back by a resync and nothing else is rewritten."""
    require_tool("iptables-restore")
    ns = topo.netns("n")
    names = ("raw", "mangle", "filter", "nat")
    with entered(ns):
        d = desired(2)
        IpsetDriver().apply_updates(d.ipsets)
        tables = {n: IptablesTable(n) for n in names}
        apply_tables(tables, d.tables)
        first = {n: len(t.last_written) for n, t in tables.items()}
        apply_tables(tables, d.tables)
        again = {n: t.last_written for n, t in tables.items()}
    assert all(first[n] > 0 for n in names), first
    assert again == {n: [] for n in names}
    for n in names:  # the kernel holds what a fresh table-by-table agent would want: it writes nothing
        with entered(ns):
            assert IptablesTable(n).apply(d.tables[n]) == [], n
    run("iptables", "-t", "nat", "-F", "cali-POSTROUTING", netns=ns)
    with entered(ns):
        apply_tables(tables, d.tables, resync=True)
        written = {n: t.last_written for n, t in tables.items()}
    assert written == {"raw": [], "mangle": [], "filter": [], "nat": ["cali-POSTROUTING"]}
    assert "-A cali-POSTROUTING" in run("iptables-save", "-t", "nat", netns=ns)


def test_iptables_apply_is_minimal_and_resync_repairs(topo):
    require_tool("iptables-restore")
    ns = topo.netns("n")
    # Someone else's rule in INPUT stays; ours go above it.
    run("iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT", netns=ns)
    with entered(ns):
        d = desired(2)
        IpsetDriver().apply_updates(d.ipsets)
        f, n = IptablesTable("filter"), IptablesTable("nat")
        first = f.apply(d.tables["filter"]) + n.apply(d.tables["nat"])
        again = f.apply(d.tables["filter"]) + n.apply(d.tables["nat"])
        fresh = IptablesTable("filter").apply(d.tables["filter"])  # a restarted agent: reads, writes nothing
        third = f.apply(desired(3).tables["filter"])
    r = {"first": len(first), "again": again, "fresh": fresh, "third": sorted(third)}
    assert r["first"] > 20 and r["again"] == [] and r["fresh"] == []
    assert r["third"] == ["cali-from-wl-dispatch", "cali-fw-cali00000000003", "cali-to-wl-dispatch",
                          "cali-tw-cali00000000003"]
    save = run("iptables-save", "-t", "filter", netns=ns)
    input_rules = [ln for ln in save.splitlines() if ln.startswith("-A INPUT")]
    assert "-j cali-INPUT" in input_rules[0] and "--dport 22" in input_rules[1]
    assert save.count("-j cali-INPUT") == 1
    assert "-A cali-INPUT -p ipencap -m comment --comment" in save
    assert "-m set --match-set cali40all-hosts-net src -m addrtype --dst-type LOCAL -j ACCEPT" in save
    assert '-A cali-from-wl-dispatch -i cali00000000003 -m comment --comment "cali:' in save
    nat = run("iptables-save", "-t", "nat", netns=ns)
    assert "-m set --match-set cali40masq-ipam-pools src -m set ! --match-set cali40all-ipam-pools dst" in nat
    tun = [ln for ln in nat.splitlines() if ln.startswith("-A cali-POSTROUTING -o tunl0")]
    assert len(tun) == 1 and tun[0].endswith(
        "-m addrtype ! --src-type LOCAL --limit-iface-out -m addrtype --src-type LOCAL -j MASQUERADE --random-fully")

    # Drift: delete a hook and a rule by hand; a resync puts exactly them back.
    run("iptables", "-D", "INPUT", "1", netns=ns)
    run("iptables", "-D", "cali-FORWARD", "3", netns=ns)
    run("iptables", "-I", "FORWARD", "-j", "ACCEPT", netns=ns)
    with entered(ns):
        r = sorted(IptablesTable("filter").apply(desired(3).tables["filter"], resync=True))
    assert r == ["FORWARD", "INPUT", "cali-FORWARD"]
    after = run("iptables-save", "-t", "filter", netns=ns)
    assert after.count("-j cali-INPUT") == 1 and after.count("-j cali-FORWARD") == 1
    fwd = [ln for ln in after.splitlines() if ln.startswith("-A FORWARD")]
    assert "-j cali-FORWARD" in fwd[0] and fwd[1] == "-A FORWARD -j ACCEPT"
    assert "Policy explicitly accepted packet." in fwd[-2]

    # Endpoints gone and IPIP off: per-endpoint chains and IPIP rules are removed, nothing dangles.
    with entered(ns):
        r = sorted(IptablesTable("filter").apply(desired(0).tables["filter"]))
    assert "cali-fw-cali00000000001" in r
    final = run("iptables-save", "-t", "filter", netns=ns)
    assert "cali-fw-" not in final and "cali-pri-kns.ns" not in final


def test_iptables_restore_failure_is_reported(topo):
    ns = topo.netns("n")
    bad = TableState()
    bad.add("cali-bad", ["--jump no-such-chain"])
    with entered(ns), pytest.raises(IptablesError) as exc:
        IptablesTable("filter", retries=2).apply(bad)
    r = str(exc.value)
    assert "failed 3 times" in r
    assert "cali-bad" not in run("iptables-save", "-t", "filter", netns=ns)


def test_ipsets_follow_desired_members(topo):
    require_tool("ipset")
    ns = topo.netns("n")
    with entered(ns):
        drv = IpsetDriver()
        d = desired(1)
        a = drv.apply_updates(d.ipsets)
        b = drv.apply_updates(d.ipsets)
        d.ipsets["cali40all-hosts-net"] = IPSet("cali40all-hosts-net", "hash:net",
                                                frozenset({"172.31.9.1", "172.31.9.3"}))
        c = IpsetDriver().apply_updates(d.ipsets)
        d.ipsets.pop("cali40masq-ipam-pools")
        stale = IpsetDriver().remove_stale(d.ipsets)
    r = {"a": a, "b": b, "c": c, "stale": stale}
    assert r["b"] == 0 and r["c"] == 2 and r["stale"] == ["cali40masq-ipam-pools"]
    save = run("ipset", "save", netns=ns)
    members = sorted(ln.split()[2] for ln in save.splitlines() if ln.startswith("add cali40all-hosts-net"))
    assert members == ["172.31.9.1", "172.31.9.3"]
    assert "cali40masq-ipam-pools" not in save
