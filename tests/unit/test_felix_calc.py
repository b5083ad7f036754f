"""Felix's pure calculation: datastore-shaped inputs -> routes, chains, ipsets, tunl0 (Felix v3.28.1)."""

import dataclasses

import pytest

from agent.felix.calc import Calculator, calculate, ipip_enabled
from agent.felix.marks import allocate
from agent.felix.model import Endpoint, FelixInput, FelixSettings, HostNode, Pool
from agent.felix.names import (
    endpoint_chain,
    length_limited_id,
    policy_chain,
    profile_chain,
    rule_hashes,
)
from agent.felix.policy import Profile, Rule

pytestmark = pytest.mark.unit

NODES = (HostNode("k8s-w0", "172.30.0.11/24", "192.168.1.0"), HostNode("k8s-w1", "172.30.0.12/24", "192.168.2.64"),
         HostNode("k8s-m", "172.30.0.10/24", None))
POOL = Pool("192.168.0.0/16", "Always", nat_outgoing=True)
EP = Endpoint("default/k8s-w0-k8s-nginx-eth0", "calic440f455693", ("192.168.1.5/32",), ("kns.default", "ksa.default.default"))
KNS = Profile("kns.default", (Rule(),), (Rule(),), {"pcns.projectcalico.org/name": "default"})


def inp(**kw) -> FelixInput:
    base = dict(hostname="k8s-w0", endpoints=(EP,), nodes=NODES, pools=(POOL,), host_mtu=1500,
                profiles={"kns.default": KNS})
    base.update(kw)
    return FelixInput(**base)


# ---------------------------------------------------------------------------
# calico.md section 4 golden vectors


def test_rule_hash_golden_vectors():
    fwd = calculate(inp()).tables["filter"].chains["cali-FORWARD"]
    assert rule_hashes("cali-FORWARD", fwd.rules) == [
        "vjrMJCRpqwy5oRoX", "A_sPAO0mcxbT9mOV", "8ZoYfO5HKXWbB3pk", "jdEuaPBe14V2hutn", "12bc6HljsMKsmfr-",
        "NOSxoaGx8OIstr1z"]
    inp_rules = calculate(inp()).tables["filter"].chains["cali-INPUT"].rules
    assert rule_hashes("cali-INPUT", inp_rules[:2]) == ["PajejrV4aFdkZojI", "_wjq-Yrma8Ly1Svo"]
    f = calculate(inp()).tables["filter"]
    assert rule_hashes("FORWARD", f.inserts["FORWARD"]) == ["wUHhoiAYhphO9Mso"]
    assert rule_hashes("INPUT", f.inserts["INPUT"]) == ["Cz_u1IQiXIMmKD4c"]
    assert rule_hashes("FORWARD*appends*", f.appends["FORWARD"]) == ["S93hcgKJrXEqnTfs", "mp77cMpurHhyjLrM"]


def test_chain_name_golden_vectors():
    assert policy_chain("pi", "default/knp.default.allow-web") == "cali-pi-_QMREAWxglfqoREwyt41"
    assert policy_chain("po", "default/knp.default.allow-web") == "cali-po-_QMREAWxglfqoREwyt41"
    assert profile_chain("pri", "ksa.default.default") == "cali-pri-ksa.default.default"  # exactly 28
    assert profile_chain("pri", "ksa.kube-system.coredns") == "cali-pri-_u2Tn2rSoAPffvE7JO6"
    assert profile_chain("pri", "kns.default") == "cali-pri-kns.default"
    # GetLengthLimitedID: a 28-char name whose suffix starts with "_" is hashed; shorter ones are not
    assert length_limited_id("cali-pri-", "_" + "x" * 18).startswith("cali-pri-_") and \
        length_limited_id("cali-pri-", "_" + "x" * 18) != "cali-pri-_" + "x" * 18
    assert length_limited_id("cali-pri-", "_x") == "cali-pri-_x"
    assert endpoint_chain("tw", "calic440f455693") == "cali-tw-calic440f455693"
    with pytest.raises(ValueError):
        endpoint_chain("xx", "cali1")


def test_mark_bits_and_masks():
    mk = allocate()
    assert (mk.accept, mk.pass_, mk.scratch0, mk.scratch1, mk.endpoint) == (
        0x10000, 0x20000, 0x40000, 0x80000, 0xFFF00000)
    assert mk.all_calico == 0xF0000
    t = calculate(inp()).tables
    assert t["filter"].chains["cali-FORWARD"].rules[0] == "--jump MARK --set-mark 0/0xe0000"
    for table, chain in (("filter", "cali-INPUT"), ("filter", "cali-OUTPUT"), ("raw", "cali-PREROUTING"),
                         ("raw", "cali-OUTPUT"), ("mangle", "cali-POSTROUTING")):
        assert "--jump MARK --set-mark 0/0xf0000" in t[table].chains[chain].rules, (table, chain)
    with pytest.raises(ValueError, match="needs at least 4"):
        allocate(0x7)


# ---------------------------------------------------------------------------
# the skeleton


def test_routes_tunnel_and_mtu():
    d = calculate(inp())
    assert d.routes == {"192.168.1.5/32": "calic440f455693"}
    assert d.tunnel is not None and (d.tunnel.address, d.tunnel.mtu) == ("192.168.1.0", 1480)
    assert d.mtu_file == 1480
    assert d.interfaces == {"calic440f455693"}
    assert d.ipip_sources == {"172.30.0.10", "172.30.0.11", "172.30.0.12"}


def test_remote_and_foreign_endpoints_are_not_local():
    veth = Endpoint("x/y", "veth123", ("192.168.1.9/32",))
    remote = Endpoint("x/z", "cali00000000001", ("192.168.2.9/32",), node="k8s-w1")
    d = calculate(inp(endpoints=(EP, veth, remote), settings=FelixSettings(ipip_mtu=1400)))
    assert d.routes == {"192.168.1.5/32": "calic440f455693"}
    assert d.tunnel.mtu == 1400 and d.mtu_file == 1400


def test_ipip_derivation():
    assert ipip_enabled(inp())
    assert not ipip_enabled(inp(pools=(Pool("192.168.0.0/16", "Never"),)))
    assert not ipip_enabled(inp(pools=(Pool("192.168.0.0/16", "Always", disabled=True),)))
    assert ipip_enabled(inp(pools=(), settings=FelixSettings(ipip_enabled=True)))
    d = calculate(inp(pools=(Pool("192.168.0.0/16", "Never"),)))
    assert d.tunnel is None and d.mtu_file == 1500
    assert not any("-p 4 " in r for r in d.tables["filter"].chains["cali-INPUT"].rules)
    assert not any("-p 4 " in r for r in d.tables["filter"].chains["cali-OUTPUT"].rules)
    assert not any("tunl0" in r for r in d.tables["nat"].chains["cali-POSTROUTING"].rules)


def test_cali_input_and_output():
    f = calculate(inp()).tables["filter"]
    rules = f.chains["cali-INPUT"].rules
    assert rules[0] == ('-m comment --comment "Allow IPIP packets from Calico hosts" -p 4 -m set --match-set '
                        'cali40all-hosts-net src -m addrtype --dst-type LOCAL --jump ACCEPT')
    assert rules[1] == '-m comment --comment "Drop IPIP packets from non-Calico hosts" -p 4 --jump DROP'
    assert rules[2] == "--in-interface cali+ --goto cali-wl-to-host"
    assert f.chains["cali-wl-to-host"].rules == (
        "--jump cali-from-wl-dispatch",
        '-m comment --comment "Configured DefaultEndpointToHostAction" --jump ACCEPT')
    assert f.chains["cali-OUTPUT"].rules == (
        "-m mark --mark 0x10000/0x10000 --jump ACCEPT",
        "--out-interface cali+ --jump RETURN",
        '-m comment --comment "Allow IPIP packets to other Calico hosts" -p 4 -m set --match-set '
        "cali40all-hosts-net dst -m addrtype --src-type LOCAL --jump ACCEPT",
        "--jump MARK --set-mark 0/0xf0000",
        "-m conntrack ! --ctstate DNAT --jump cali-to-host-endpoint",
        '-m comment --comment "Host endpoint policy accepted packet." -m mark --mark 0x10000/0x10000 '
        "--jump ACCEPT")


def test_raw_prerouting_rpf_and_unreferenced_failsafes():
    d = calculate(inp(endpoints=(dataclasses.replace(EP, allow_spoofed=("10.7.0.0/16",)),)))
    raw = d.tables["raw"]
    assert raw.inserts == {"PREROUTING": ("--jump cali-PREROUTING",), "OUTPUT": ("--jump cali-OUTPUT",)}
    assert raw.chains["cali-PREROUTING"].rules == (
        "--jump MARK --set-mark 0/0xf0000",
        "--in-interface cali+ --jump MARK --set-mark 0x40000/0x40000",
        "-m mark --mark 0x40000/0x40000 --jump cali-rpf-skip",
        "-m mark --mark 0x40000/0x40000 -m rpfilter --invert --validmark --jump DROP",
        "-m mark --mark 0/0x40000 --jump cali-from-host-endpoint",
        "-m mark --mark 0x10000/0x10000 --jump ACCEPT")
    assert raw.chains["cali-rpf-skip"].rules == (
        "--in-interface calic440f455693 --source 10.7.0.0/16 --jump ACCEPT",)
    # failsafe chains are rendered but only host-endpoint chains jump to them: not programmed
    for table in ("filter", "raw", "mangle"):
        assert "cali-failsafe-in" not in d.tables[table].chains
    from agent.felix import static
    from agent.felix.model import rule_config

    cfg = rule_config(FelixSettings(), True)
    assert static.failsafe_in(cfg, "filter")[0] == "-p tcp -m multiport --destination-ports 22 --jump ACCEPT"
    raw_in = static.failsafe_in(cfg, "raw")
    assert len(raw_in) == 18 and raw_in[9] == "-p udp -m multiport --source-ports 53 --jump ACCEPT"


def test_mangle_and_nat():
    d = calculate(inp(pools=(POOL, Pool("10.244.0.0/16", "Never", nat_outgoing=False))))
    mangle = d.tables["mangle"].chains
    assert mangle["cali-PREROUTING"].rules[0] == "-m conntrack --ctstate RELATED,ESTABLISHED --jump ACCEPT"
    assert mangle["cali-POSTROUTING"].rules[2] == "-m conntrack --ctstate DNAT --jump cali-to-host-endpoint"
    nat = d.tables["nat"]
    assert nat.chains["cali-nat-outgoing"].rules == (
        "-m set --match-set cali40masq-ipam-pools src -m set ! --match-set cali40all-ipam-pools dst "
        "--jump MASQUERADE --random-fully",)
    assert nat.chains["cali-POSTROUTING"].rules[-1] == (
        "--out-interface tunl0 -m addrtype ! --src-type LOCAL --limit-iface-out -m addrtype --src-type LOCAL "
        "--jump MASQUERADE --random-fully")
    assert d.ipsets["cali40masq-ipam-pools"].members == {"192.168.0.0/16"}
    assert d.ipsets["cali40all-ipam-pools"].members == {"192.168.0.0/16", "10.244.0.0/16"}
    assert d.ipsets["cali40all-hosts-net"].members == {"172.30.0.10", "172.30.0.11", "172.30.0.12"}
    d = calculate(inp(pools=(Pool("192.168.0.0/16", "Always"),), host_ips=frozenset({"172.30.0.11"})))
    assert d.tables["nat"].chains["cali-nat-outgoing"].rules == ()
    assert (d.ipsets["cali40this-host"].type, d.ipsets["cali40this-host"].members) == ("hash:ip", {"172.30.0.11"})


def test_endpoint_chains_with_profiles_and_missing_profile_drops():
    f = calculate(inp()).tables["filter"]
    fw = f.chains["cali-fw-calic440f455693"].rules
    assert fw[:5] == (
        "-m conntrack --ctstate RELATED,ESTABLISHED --jump ACCEPT",
        "-m conntrack --ctstate INVALID --jump DROP",
        "--jump MARK --set-mark 0/0x30000",
        '-m comment --comment "Drop VXLAN encapped packets originating in workloads" -p 17 -m multiport '
        "--destination-ports 4789 --jump DROP",
        '-m comment --comment "Drop IPinIP encapped packets originating in workloads" -p 4 --jump DROP')
    assert fw[5:] == (
        "--jump cali-pro-kns.default",
        '-m comment --comment "Return if profile accepted" -m mark --mark 0x10000/0x10000 --jump RETURN',
        "--jump cali-pro-ksa.default.default",
        '-m comment --comment "Return if profile accepted" -m mark --mark 0x10000/0x10000 --jump RETURN',
        '-m comment --comment "Drop if no profiles matched" --jump DROP')
    tw = f.chains["cali-tw-calic440f455693"].rules
    assert not any("-p 4 " in r for r in tw) and tw[3] == "--jump cali-pri-kns.default"
    # kns.* allows everything: one set-mark rule (the trailing RETURN is stripped)
    assert f.chains["cali-pri-kns.default"].rules == (
        '-m comment --comment "Profile kns.default ingress" --jump MARK --set-mark 0x10000/0x10000',)
    # ksa.default.default does not exist: Felix's default-drop profile
    assert f.chains["cali-pri-ksa.default.default"].rules == (
        '-m comment --comment "Profile ksa.default.default ingress" --jump DROP',)
    # an existing profile without rules: one comment-only rule
    g = calculate(inp(profiles={"kns.default": KNS, "ksa.default.default": Profile("ksa.default.default")}))
    assert g.tables["filter"].chains["cali-pro-ksa.default.default"].rules == (
        '-m comment --comment "Profile ksa.default.default egress"',)
    assert all(len(name) <= 28 for t in g.tables.values() for name in t.chains)


def _dispatch(chains, root: str, iface: str) -> str:
    """Follow the dispatch chains like the kernel would for ``-i iface``; returns the goto target."""
    chain = root
    for _ in range(5):
        for rule in chains[chain].rules:
            parts = rule.split()
            if parts[0] != "--in-interface":
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


def test_dispatch_chains_split_one_level():
    # one endpoint: a direct goto and the DROP
    f = calculate(inp()).tables["filter"]
    assert f.chains["cali-from-wl-dispatch"].rules == (
        "--in-interface calic440f455693 --goto cali-fw-calic440f455693",
        '-m comment --comment "Unknown interface" --jump DROP')
    # cali1a.., cali1b.., cali2x..: common prefix "cali", keys cali1 (two) and cali2 (one)
    eps = tuple(Endpoint(f"ns/{n}", n, (f"10.1.0.{i}/32",), ("kns.default",))
                for i, n in enumerate(["cali1aaaaaaaaaa", "cali1bbbbbbbbbb", "cali2xxxxxxxxxx"]))
    f = calculate(inp(endpoints=eps)).tables["filter"]
    assert f.chains["cali-from-wl-dispatch"].rules == (
        "--in-interface cali1+ --goto cali-from-wl-dispatch-1",
        "--in-interface cali2xxxxxxxxxx --goto cali-fw-cali2xxxxxxxxxx",
        '-m comment --comment "Unknown interface" --jump DROP')
    assert f.chains["cali-from-wl-dispatch-1"].rules == (
        "--in-interface cali1aaaaaaaaaa --goto cali-fw-cali1aaaaaaaaaa",
        "--in-interface cali1bbbbbbbbbb --goto cali-fw-cali1bbbbbbbbbb",
        '-m comment --comment "Unknown interface" --jump DROP')
    assert f.chains["cali-to-wl-dispatch-1"].rules[0] == \
        "--out-interface cali1aaaaaaaaaa --goto cali-tw-cali1aaaaaaaaaa"
    # no endpoints: only the DROP
    f = calculate(inp(endpoints=())).tables["filter"]
    assert f.chains["cali-from-wl-dispatch"].rules == ('-m comment --comment "Unknown interface" --jump DROP',)


def test_thousand_endpoints_dispatch_is_exactly_one_level():
    import hashlib

    eps = tuple(Endpoint(f"ns/p{i}", "cali" + hashlib.sha1(f"ns.p{i}".encode()).hexdigest()[:11],
                         (f"10.1.{i // 250}.{i % 250}/32",), ("kns.default",)) for i in range(1000))
    f = calculate(inp(endpoints=eps)).tables["filter"]
    tree = {n: c for n, c in f.chains.items() if n.startswith("cali-from-wl-dispatch")}
    assert len(tree) == 17  # the root and one child per hex digit
    assert all(not r.split()[1].endswith("+") for n, c in tree.items() if n != "cali-from-wl-dispatch"
               for r in c.rules[:-1])
    for ep in eps[::37]:
        assert _dispatch(f.chains, "cali-from-wl-dispatch", ep.iface) == f"cali-fw-{ep.iface}"
    assert _dispatch(f.chains, "cali-from-wl-dispatch", "caliZZZZZZZZZZZ") == "DROP"


def test_rule_hashes_depend_on_chain_and_position():
    a = rule_hashes("cali-INPUT", ["--jump A", "--jump B"])
    b = rule_hashes("cali-INPUT", ["--jump X", "--jump B"])
    c = rule_hashes("cali-OUTPUT", ["--jump A", "--jump B"])
    assert all(len(h) == 16 for h in a)
    assert a[1] != b[1] and a[0] != c[0]


def test_duplicate_interfaces_and_bad_settings():
    dup = Endpoint("default/other", EP.iface, ("192.168.1.6/32",), ("kns.default",))
    d = calculate(inp(endpoints=(EP, dup)))
    assert len(d.routes) == 1
    with pytest.raises(ValueError, match="defaultEndpointToHostAction"):
        calculate(inp(settings=FelixSettings(default_endpoint_to_host_action="BOUNCE")))


def test_unchanged_input_gives_the_same_chain_objects():
    c = Calculator()
    i = inp()
    a = c.calculate(i)
    b = c.calculate(i)
    assert all(a.tables[t].chains[n] is b.tables[t].chains[n] for t in a.tables for n in a.tables[t].chains)

