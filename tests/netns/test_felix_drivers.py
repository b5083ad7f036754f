"""Felix's drivers against a real kernel, each inside its own netns (never the root namespace)."""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.netns.felix_support import PY, Topo, run
from tests.support import require_root, require_tool

pytestmark = pytest.mark.netns

PRELUDE = textwrap.dedent("""
    import json
    from agent.felix.calc import calculate
    from agent.felix.model import Endpoint, FelixInput, HostNode, Pool
    NODES = (HostNode("w0", "172.31.9.1/24", "192.168.1.0"), HostNode("w1", "172.31.9.2/24", "192.168.2.0"))
    POOL = Pool("192.168.0.0/16", "Always", nat_outgoing=True)
    def ep(i):
        return Endpoint(f"ns/p{i}", f"cali{i:011x}", (f"192.168.1.{i}/32",), ("kns.ns",))
    def desired(n, **kw):
        return calculate(FelixInput(hostname="w0", endpoints=tuple(ep(i) for i in range(1, n + 1)),
                                    nodes=NODES, pools=(POOL,), **kw))
""")


@pytest.fixture
def topo():
    require_root()
    t = Topo()
    yield t
    t.close()


def py(ns: str, code: str) -> dict:
    """Run PRELUDE + code in ``ns``; the code prints one JSON line last."""
    out = run(PY, "-c", PRELUDE + textwrap.dedent(code), netns=ns)
    return json.loads(out.strip().splitlines()[-1])


def test_iptables_apply_is_minimal_and_resync_repairs(topo):
    require_tool("iptables-restore")
    ns = topo.netns("n")
    # Someone else's rule in INPUT stays; ours go above it.
    run("iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT", netns=ns)
    r = py(ns, """
        from agent.felix.iptables import IptablesTable
        from agent.felix.ipsets import IpsetDriver
        d = desired(2)
        IpsetDriver().apply_updates(d.ipsets)
        f, n = IptablesTable("filter"), IptablesTable("nat")
        first = f.apply(d.tables["filter"]) + n.apply(d.tables["nat"])
        again = f.apply(d.tables["filter"]) + n.apply(d.tables["nat"])
        fresh = IptablesTable("filter").apply(d.tables["filter"])  # a restarted agent: reads, writes nothing
        d3 = desired(3)
        third = f.apply(d3.tables["filter"])
        print(json.dumps({"first": len(first), "again": again, "fresh": fresh, "third": sorted(third)}))
    """)
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
        "-m addrtype ! --src-type LOCAL --limit-iface-out -m addrtype --src-type LOCAL -j MASQUERADE")

    # Drift: delete a hook and a rule by hand; a resync puts exactly them back.
    run("iptables", "-D", "INPUT", "1", netns=ns)
    run("iptables", "-D", "cali-FORWARD", "3", netns=ns)
    run("iptables", "-I", "FORWARD", "-j", "ACCEPT", netns=ns)
    r = py(ns, """
        from agent.felix.iptables import IptablesTable
        print(json.dumps(sorted(IptablesTable("filter").apply(desired(3).tables["filter"], resync=True))))
    """)
    assert r == ["FORWARD", "INPUT", "cali-FORWARD"]
    after = run("iptables-save", "-t", "filter", netns=ns)
    assert after.count("-j cali-INPUT") == 1 and after.count("-j cali-FORWARD") == 1
    fwd = [ln for ln in after.splitlines() if ln.startswith("-A FORWARD")]
    assert "-j cali-FORWARD" in fwd[0] and fwd[1] == "-A FORWARD -j ACCEPT"
    assert "Policy explicitly accepted packet." in fwd[-2]

    # Endpoints gone and IPIP off: per-endpoint chains and IPIP rules are removed, nothing dangles.
    r = py(ns, """
        from agent.felix.iptables import IptablesTable
        from agent.felix.ipsets import IpsetDriver
        d = desired(0)
        print(json.dumps(sorted(IptablesTable("filter").apply(d.tables["filter"]))))
    """)
    assert "cali-fw-cali00000000001" in r
    final = run("iptables-save", "-t", "filter", netns=ns)
    assert "cali-fw-" not in final and "cali-pri-kns.ns" not in final


def test_iptables_restore_failure_is_reported(topo):
    ns = topo.netns("n")
    r = py(ns, """
        from agent.felix.iptables import IptablesError, IptablesTable
        from agent.felix.model import TableState
        bad = TableState(); bad.add("cali-bad", ["-j no-such-chain"])
        try:
            IptablesTable("filter", retries=2).apply(bad)
            print(json.dumps("applied"))
        except IptablesError as exc:
            print(json.dumps(str(exc)))
    """)
    assert "failed 3 times" in r
    assert "cali-bad" not in run("iptables-save", "-t", "filter", netns=ns)


def test_ipsets_follow_desired_members(topo):
    require_tool("ipset")
    ns = topo.netns("n")
    r = py(ns, """
        from agent.felix.ipsets import IpsetDriver
        from agent.felix.model import IPSet
        drv = IpsetDriver()
        d = desired(1)
        a = drv.apply_updates(d.ipsets)
        b = drv.apply_updates(d.ipsets)
        d.ipsets["cali40all-hosts-net"] = IPSet("cali40all-hosts-net", "hash:net", frozenset({"172.31.9.1", "172.31.9.3"}))
        c = IpsetDriver().apply_updates(d.ipsets)
        d.ipsets.pop("cali40masq-ipam-pools")
        stale = IpsetDriver().remove_stale(d.ipsets)
        print(json.dumps({"a": a, "b": b, "c": c, "stale": stale}))
    """)
    assert r["b"] == 0 and r["c"] == 2 and r["stale"] == ["cali40masq-ipam-pools"]
    save = run("ipset", "save", netns=ns)
    members = sorted(ln.split()[2] for ln in save.splitlines() if ln.startswith("add cali40all-hosts-net"))
    assert members == ["172.31.9.1", "172.31.9.3"]
    assert "cali40masq-ipam-pools" not in save


def test_routes_and_sysctls(topo):
    node = topo.node("n")
    pods = [topo.pod(node, f"192.168.1.{i}", f"cali{i:011x}", route=False) for i in (1, 2)]
    assert pods
    # A stale route on a cali interface (e.g. left by a deleted pod) is removed; others are not touched.
    run("ip", "route", "add", "10.99.0.0/24", "dev", "cali00000000002", netns=node)
    run("ip", "route", "add", "192.0.2.0/24", "dev", "lo", netns=node)
    run("sh", "-c", "echo 0 > /proc/sys/net/ipv4/conf/cali00000000001/proxy_arp", netns=node)
    r = py(node, """
        from agent.felix.routes import RouteDriver
        from agent.felix.sysctl import SysctlDriver
        d = desired(3)   # endpoint 3 has no interface yet
        rd = RouteDriver()
        first = rd.apply(d.routes)
        again = rd.apply(d.routes)
        missing = SysctlDriver().apply(d.interfaces)
        print(json.dumps({"first": first, "again": again, "sysctl_missing": missing}))
    """)
    assert r["first"] == [3, ["cali00000000003"]]  # 2 adds + 1 stale delete
    assert r["again"] == [0, ["cali00000000003"]]
    assert r["sysctl_missing"] == ["cali00000000003"]
    routes = run("ip", "-4", "route", netns=node)
    assert "192.168.1.1 dev cali00000000001 scope link \n" in routes
    assert "192.168.1.2 dev cali00000000002 scope link \n" in routes
    assert "10.99.0.0/24" not in routes and "192.0.2.0/24 dev lo" in routes
    assert "proto" not in run("ip", "-4", "route", "show", "192.168.1.1", netns=node)  # RTPROT_BOOT
    for key, want in (("conf/cali00000000001/proxy_arp", "1"), ("conf/cali00000000001/route_localnet", "1"),
                      ("neigh/cali00000000001/proxy_delay", "0"), ("conf/cali00000000001/forwarding", "1"),
                      ("ip_forward", "1")):
        assert run("cat", f"/proc/sys/net/ipv4/{key}", netns=node).strip() == want, key
    # Drift: a route deleted by hand comes back on resync.
    run("ip", "route", "del", "192.168.1.1/32", netns=node)
    r = py(node, """
        from agent.felix.routes import RouteDriver
        print(json.dumps(RouteDriver().apply(desired(2).routes, resync=True)))
    """)
    assert r[1] == []
    assert "192.168.1.1 dev cali00000000001" in run("ip", "-4", "route", netns=node)
