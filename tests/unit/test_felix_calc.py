"""Felix's pure calculation: datastore-shaped inputs -> routes, chains, ipsets, tunl0."""

import pytest

from agent.felix.calc import DISPATCH_SPLIT_AT, calculate, ipip_enabled
from agent.felix.model import Endpoint, FelixInput, FelixSettings, HostNode, Pool
from agent.felix.names import endpoint_chain, length_limited_id, profile_chain, rule_hashes

pytestmark = pytest.mark.unit

NODES = (HostNode("k8s-w0", "172.30.0.11/24", "192.168.1.0"), HostNode("k8s-w1", "172.30.0.12/24", "192.168.2.64"),
         HostNode("k8s-m", "172.30.0.10/24", None))
POOL = Pool("192.168.0.0/16", "Always", nat_outgoing=True)
EP = Endpoint("default/k8s-w0-k8s-nginx-eth0", "calic440f455693", ("192.168.1.5/32",), ("kns.default", "ksa.default.default"))


def inp(**kw) -> FelixInput:
    base = dict(hostname="k8s-w0", endpoints=(EP,), nodes=NODES, pools=(POOL,), host_mtu=1500)
    base.update(kw)
    return FelixInput(**base)


def test_routes_tunnel_and_mtu():
    d = calculate(inp())
    assert d.routes == {"192.168.1.5/32": "calic440f455693"}
    assert d.tunnel is not None and (d.tunnel.address, d.tunnel.mtu) == ("192.168.1.0", 1480)
    assert d.mtu_file == 1480
    assert d.interfaces == {"calic440f455693"}
    assert d.ipip_sources == {"172.30.0.10", "172.30.0.11", "172.30.0.12"}


def test_endpoints_of_other_prefix_are_ignored_and_ipip_mtu_override():
    ep = Endpoint("x/y", "veth123", ("192.168.1.9/32",))
    d = calculate(inp(endpoints=(EP, ep), settings=FelixSettings(ipip_mtu=1400)))
    assert d.routes == {"192.168.1.5/32": "calic440f455693"}
    assert d.tunnel.mtu == 1400 and d.mtu_file == 1400


def test_ipip_derivation():
    assert ipip_enabled(inp())
    assert not ipip_enabled(inp(pools=(Pool("192.168.0.0/16", "Never"),)))
    assert not ipip_enabled(inp(pools=(Pool("192.168.0.0/16", "Always", disabled=True),)))
    assert ipip_enabled(inp(pools=(), settings=FelixSettings(ipip_enabled=True)))
    d = calculate(inp(pools=(Pool("192.168.0.0/16", "Never"),)))
    assert d.tunnel is None and d.mtu_file == 1500
    rules = d.tables["filter"].chains["cali-INPUT"].rules
    assert not any("-p 4" in r for r in rules)
    assert not any("tunl0" in r for r in d.tables["nat"].chains["cali-POSTROUTING"].rules)


def test_cali_input_ipip_rules_first():
    rules = calculate(inp()).tables["filter"].chains["cali-INPUT"].rules
    assert rules[0] == ('-m comment --comment "Allow IPIP packets from Calico hosts" -p 4 -m set --match-set '
                        'cali40all-hosts-net src -m addrtype --dst-type LOCAL -j ACCEPT')
    assert rules[1] == '-m comment --comment "Drop IPIP packets from non-Calico hosts" -p 4 -j DROP'
    assert rules[2] == "-i cali+ -g cali-wl-to-host"


def test_forward_and_dispatch_and_endpoint_chains():
    f = calculate(inp()).tables["filter"]
    assert f.inserts["FORWARD"] == ("-j cali-FORWARD",) and f.inserts["INPUT"] == ("-j cali-INPUT",)
    fwd = f.chains["cali-FORWARD"].rules
    assert fwd[2:4] == ("-i cali+ -j cali-from-wl-dispatch", "-o cali+ -j cali-to-wl-dispatch")
    assert f.chains["cali-from-wl-dispatch"].rules == (
        "-i calic440f455693 -g cali-fw-calic440f455693",
        '-m comment --comment "Unknown interface" -j DROP')
    assert f.chains["cali-to-wl-dispatch"].rules[0] == "-o calic440f455693 -g cali-tw-calic440f455693"
    fw = f.chains["cali-fw-calic440f455693"].rules
    assert fw[0] == "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    assert '-m comment --comment "Drop IPinIP encapped packets originating in workloads" -p 4 -j DROP' in fw
    assert "-j cali-pro-kns.default" in fw and fw[-1].endswith("-j DROP")
    tw = f.chains["cali-tw-calic440f455693"].rules
    assert "-j cali-pri-kns.default" in tw and not any("-p 4" in r for r in tw)
    assert f.chains["cali-pri-kns.default"].rules[0] == "-j MARK --set-xmark 0x10000/0x10000"
    assert f.chains["cali-pro-ksa.default.default"].rules == ()
    assert all(len(name) <= 28 for name in f.chains)


def test_nat_outgoing_and_ipsets():
    d = calculate(inp(pools=(POOL, Pool("10.244.0.0/16", "Never", nat_outgoing=False))))
    nat = d.tables["nat"]
    assert nat.inserts["POSTROUTING"] == ("-j cali-POSTROUTING",)
    assert nat.chains["cali-nat-outgoing"].rules == (
        "-m set --match-set cali40masq-ipam-pools src -m set ! --match-set cali40all-ipam-pools dst "
        "-j MASQUERADE --random-fully",)
    assert nat.chains["cali-POSTROUTING"].rules[-1] == (
        "-o tunl0 -m addrtype ! --src-type LOCAL --limit-iface-out -m addrtype --src-type LOCAL -j MASQUERADE")
    assert d.ipsets["cali40masq-ipam-pools"].members == {"192.168.0.0/16"}
    assert d.ipsets["cali40all-ipam-pools"].members == {"192.168.0.0/16", "10.244.0.0/16"}
    assert d.ipsets["cali40all-hosts-net"].members == {"172.30.0.10", "172.30.0.11", "172.30.0.12"}
    d = calculate(inp(pools=(Pool("192.168.0.0/16", "Always"),)))
    assert d.tables["nat"].chains["cali-nat-outgoing"].rules == ()


def _dispatch(chains, root: str, iface: str) -> str:
    """Follow the dispatch tree like the kernel would for ``-i iface``; returns the goto target."""
    chain = root
    for _ in range(20):
        for rule in chains[chain].rules:
            parts = rule.split()
            if parts[0] != "-i":
                continue
            match = parts[1]
            if (match.endswith("+") and iface.startswith(match[:-1])) or match == iface:
                chain = parts[3]
                break
        else:
            return "DROP"
        if chain.startswith("cali-fw-"):
            return chain
    raise AssertionError("dispatch loop")


@pytest.mark.parametrize("names", ["hashes", "sequential"])
def test_large_dispatch_is_a_prefix_tree(names):
    import hashlib

    def name(i):
        return "cali" + (hashlib.sha1(f"ns.p{i}".encode()).hexdigest()[:11] if names == "hashes" else f"{i:011x}")

    eps = tuple(Endpoint(f"ns/p{i}", name(i), (f"10.1.{i // 250}.{i % 250}/32",), ("kns.ns",)) for i in range(1000))
    f = calculate(inp(endpoints=eps)).tables["filter"]
    tree = {n: c for n, c in f.chains.items() if n.startswith("cali-from-wl-dispatch")}
    assert all(len(c.rules) <= DISPATCH_SPLIT_AT + 1 for c in tree.values())
    assert all(len(n) <= 28 for n in tree)
    for ep in eps[::37]:
        assert _dispatch(f.chains, "cali-from-wl-dispatch", ep.iface) == f"cali-fw-{ep.iface}"
    assert _dispatch(f.chains, "cali-from-wl-dispatch", "califfffffffff9") == "DROP"
    leaves = sum(len(c.rules) - 1 for c in tree.values() if not any(r.split()[1].endswith("+") for r in c.rules[:-1]))
    assert leaves == len(eps)
    # One more endpoint changes only its leaf chain (and the new fw/tw chains).
    extra = Endpoint("ns/x", name(5000), ("10.9.9.9/32",), ("kns.ns",))
    g = calculate(inp(endpoints=(*eps, extra))).tables["filter"]
    changed = {n for n in g.chains if f.chains.get(n) != g.chains[n]}
    assert {f"cali-fw-{extra.iface}", f"cali-tw-{extra.iface}"} <= changed and len(changed) <= 6, changed


def test_chain_name_hashing():
    assert length_limited_id("cali-pri-", "kns.default") == "cali-pri-kns.default"
    long = profile_chain("pri", "kns.a-very-long-namespace-name-indeed")
    assert len(long) == 28 and long.startswith("cali-pri-_")
    assert profile_chain("pri", "_x").startswith("cali-pri-_")  # leading "_" is always hashed
    assert endpoint_chain("tw", "calic440f455693") == "cali-tw-calic440f455693"
    with pytest.raises(ValueError):
        endpoint_chain("xx", "cali1")


def test_rule_hashes_depend_on_chain_and_position():
    a = rule_hashes("cali-INPUT", ["-j A", "-j B"])
    b = rule_hashes("cali-INPUT", ["-j X", "-j B"])
    c = rule_hashes("cali-OUTPUT", ["-j A", "-j B"])
    assert all(len(h) == 16 for h in a)
    assert a[1] != b[1] and a[0] != c[0]
    assert rule_hashes("cali-INPUT", ["-j A", "-j B"]) == a


def test_duplicate_interfaces_and_bad_settings():
    dup = Endpoint("default/other", EP.iface, ("192.168.1.6/32",), ("kns.default",))
    d = calculate(inp(endpoints=(EP, dup)))
    assert len(d.routes) == 1
    with pytest.raises(ValueError, match="defaultEndpointToHostAction"):
        calculate(inp(settings=FelixSettings(default_endpoint_to_host_action="BOUNCE")))
