"""Felix's policy model and rendering: v3 -> v1 conversion, rule scanner ipsets, iptables rules,
endpoint chains with policies and groups, and the incremental calculation (calico.md sections 5-6)."""

import dataclasses

import pytest

from agent.felix import render
from agent.felix.calc import Calculator, calculate
from agent.felix.model import (
    Endpoint,
    FelixInput,
    FelixSettings,
    HostNode,
    NamedPort,
    NetSet,
    Pool,
    rule_config,
)
from agent.felix.names import policy_chain
from agent.felix.policy import Policy, Profile, Rule, parse_rule, policy_from_resource
from datastore.resources import from_document
from datastore.rules import PortRange

pytestmark = pytest.mark.unit

CFG = rule_config(FelixSettings(), True)
KNS = Profile("kns.default", (Rule(),), (Rule(),), {"pcns.projectcalico.org/name": "default"})


def resource(doc):
    obj = from_document(doc)
    obj.apply_defaults()
    obj.validate()
    return obj


def test_k8s_policy_selectors_as_felix_sees_them():
    np = resource({"kind": "NetworkPolicy", "metadata": {"name": "knp.default.allow-web", "namespace": "default"},
                   "spec": {"order": 1000, "selector": "projectcalico.org/orchestrator == 'k8s' && app == 'web'",
                            "types": ["Ingress"],
                            "ingress": [{"action": "Allow", "protocol": "TCP",
                                         "source": {"selector": "projectcalico.org/orchestrator == 'k8s' && "
                                                                "role == 'client'",
                                                    "namespaceSelector": "team == 'a'"},
                                         "destination": {"ports": [80]}},
                                        {"action": "Allow", "source": {"namespaceSelector": "all()"}},
                                        {"action": "Allow", "source": {"selector": "role == 'x'"}},
                                        {"action": "Allow", "source": {"nets": ["10.0.0.0/8"],
                                                                       "notNets": ["10.1.0.0/16"]}}]}})
    pol = policy_from_resource(np)
    assert pol.id == "default/knp.default.allow-web"
    assert pol.selector == ('((projectcalico.org/orchestrator == "k8s" && app == "web") && '
                            'projectcalico.org/namespace == "default")')
    assert pol.types == ("ingress",) and pol.order == 1000
    r0, r1, r2, r3 = pol.inbound
    assert r0.src_selector == ('(pcns.team == "a") && (projectcalico.org/orchestrator == \'k8s\' && '
                               "role == 'client')")
    assert r0.protocol == "tcp" and r0.dst_ports == (PortRange(80, 80),)
    assert r1.src_selector == "has(projectcalico.org/namespace)"
    assert r2.src_selector == "(projectcalico.org/namespace == 'default') && (role == 'x')"
    assert (r3.src_selector, r3.src_nets, r3.not_src_nets) == ("", ("10.0.0.0/8",), ("10.1.0.0/16",))


def test_calico_policy_names_service_accounts_and_gnp_namespace_selector():
    np = resource({"kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "shop"},
                   "spec": {"serviceAccountSelector": "role == 'db'",
                            "egress": [{"action": "Deny", "destination": {
                                "serviceAccounts": {"names": ["api", "web"], "selector": "tier == 'x'"}}}]}})
    pol = policy_from_resource(np)
    assert pol.id == "shop/default.p" and pol.types == ("egress",)
    assert pol.selector == '(projectcalico.org/namespace == "shop" && pcsa.role == "db")'
    assert pol.outbound[0].action == "deny"
    assert pol.outbound[0].dst_selector == (
        "(projectcalico.org/namespace == 'shop') && ((pcsa.tier == \"x\") && "
        '(projectcalico.org/serviceaccount in {"api", "web"}))')
    gnp = resource({"kind": "GlobalNetworkPolicy", "metadata": {"name": "g"},
                    "spec": {"selector": "all()", "namespaceSelector": "team == 'a'", "order": 5,
                             "ingress": [{"action": "Pass", "source": {"notSelector": "x == 'y'"}}]}})
    pol = policy_from_resource(gnp)
    assert pol.id == "default.g"
    assert pol.selector == '(has(projectcalico.org/namespace) && pcns.team == "a")'
    assert pol.inbound[0].action == "next-tier"
    assert (pol.inbound[0].src_selector, pol.inbound[0].not_src_selector) == ("", "x == 'y'")


def rules(*rs: Rule, comment="Policy p ingress"):
    return render.rules_to_iptables(tuple(rs), CFG, comment)


def test_rule_actions():
    allow = rules(Rule(action="allow", protocol="tcp", dst_ports=(PortRange(80, 80), PortRange(8000, 8080))))
    assert allow == ('-m comment --comment "Policy p ingress" -p tcp -m multiport --destination-ports 80,8000:8080 '
                     "--jump MARK --set-mark 0x10000/0x10000",)  # the trailing RETURN is stripped
    two = rules(Rule(action="allow", protocol=6), Rule(action="deny"))
    assert two == ('-m comment --comment "Policy p ingress" -p 6 --jump MARK --set-mark 0x10000/0x10000',
                   "-m mark --mark 0x10000/0x10000 --jump RETURN",
                   "--jump DROP")
    assert rules(Rule(action="next-tier"), Rule(action="log")) == (
        '-m comment --comment "Policy p ingress" --jump MARK --set-mark 0x20000/0x20000',
        "-m mark --mark 0x20000/0x20000 --jump RETURN",
        '--jump LOG --log-prefix "calico-packet: " --log-level 5')
    assert rules() == ('-m comment --comment "Policy p ingress"',)
    icmp = rules(Rule(action="deny", protocol="icmp", icmp_type=8, icmp_code=0, not_icmp_type=3))
    assert icmp == ('-m comment --comment "Policy p ingress" -p icmp -m icmp --icmp-type 8/0 '
                    "-m icmp ! --icmp-type 3 --jump DROP",)
    neg = rules(Rule(action="deny", not_protocol="udp", not_dst_nets=("10.0.0.0/8",),
                     not_dst_ports=(PortRange(53, 53),)))
    assert neg == ('-m comment --comment "Policy p ingress" ! -p udp ! --destination 10.0.0.0/8 '
                   "-m multiport ! --destination-ports 53 --jump DROP",)
    v6 = rules(Rule(action="deny", ip_version=6), Rule(action="deny", src_nets=("fd00::/64",)))
    assert v6 == ('-m comment --comment "Policy p ingress"',)
    annotated = rules(Rule(action="deny", annotations=(("team", "a"),)))
    assert annotated == ('-m comment --comment "team=a" -m comment --comment "Policy p ingress" --jump DROP',)


def test_selectors_become_ipsets():
    r = Rule(action="allow", src_selector="role == 'client'", protocol="tcp",
             dst_ports=(PortRange(name="http"),))
    parsed, sets = parse_rule(r)
    by_uid = {s.uid: s for s in sets}
    (sel_set,) = [s for s in sets if not s.named_port]
    assert sel_set.selector == 'role == "client"' and sel_set.ipset_type == "hash:net"
    (np_set,) = [s for s in sets if s.named_port]
    assert (np_set.named_port, np_set.protocol, np_set.selector, np_set.ipset_type) == (
        "http", "tcp", "all()", "hash:ip,port")
    assert parsed.src_ipset_ids == (sel_set.uid,) and parsed.dst_named_port_ids == (np_set.uid,)
    assert np_set.uid.startswith("n:") and sel_set.uid.startswith("s:") and set(by_uid) == {sel_set.uid, np_set.uid}
    out = rules(r)
    name = ("cali40" + sel_set.uid)[:31]
    assert out[0] == (f'-m comment --comment "Policy p ingress" -p tcp -m set --match-set {name} src '
                      f"-m set --match-set {('cali40' + np_set.uid)[:31]} dst,dst "
                      "--jump MARK --set-mark 0x10000/0x10000")
    # a negated selector folds into the positive one
    parsed, sets = parse_rule(Rule(src_selector="a == 'b'", not_src_selector="c == 'd'"))
    assert [s.selector for s in sets] == ['(a == "b" && !c == "d")'] and not parsed.not_src_ipset_ids
    parsed, sets = parse_rule(Rule(not_src_selector="c == 'd'"))
    assert parsed.not_src_ipset_ids and rules(Rule(not_src_selector="c == 'd'"))[0].count("! --match-set") == 1


def test_match_blocks_for_several_cidrs_and_ports():
    r = Rule(action="allow", protocol="tcp", src_nets=("10.0.0.0/8", "172.16.0.0/12"), not_src_nets=("10.1.0.0/16",),
             dst_ports=tuple(PortRange(p, p) for p in range(1, 17)))
    out = rules(r)
    assert out[0] == '-m comment --comment "Policy p ingress" --jump MARK --set-mark 0x0/0xc0000'
    assert out[1].endswith("--destination-ports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15 --jump MARK --set-mark "
                           "0x40000/0x40000")
    assert out[3] == "--source 10.0.0.0/8 --jump MARK --set-mark 0x80000/0x80000"
    assert out[5] == "-m mark --mark 0/0x80000 --jump MARK --set-mark 0/0x40000"
    # the single negated CIDR still fits the final rule (only the positive ones moved to a block)
    assert out[6] == "-p tcp ! --source 10.1.0.0/16 -m mark --mark 0x40000/0x40000 --jump MARK --set-mark 0x10000/0x10000"
    two_neg = rules(dataclasses.replace(r, not_src_nets=("10.1.0.0/16", "10.2.0.0/16"), src_nets=("10.0.0.0/8",)))
    assert "--source 10.1.0.0/16 --jump MARK --set-mark 0/0x40000" in two_neg


def test_endpoint_chain_with_policies_groups_and_pass():
    a = render.PolicyGroup("inbound", ("ns/default.a",), "x")
    b = render.PolicyGroup("inbound", ("ns/default.b", "ns/default.c"), "y")
    name, out = render.endpoint_chain_rules("tw", "cali1", (a, b), ("kns.ns",), CFG)
    assert name == "cali-tw-cali1"
    assert out[3:] == (
        f"-m mark --mark 0/0x20000 --jump {policy_chain('pi', 'ns/default.a')}",
        '-m comment --comment "Return if policy accepted" -m mark --mark 0x10000/0x10000 --jump RETURN',
        f"-m mark --mark 0/0x20000 --jump {b.chain_name()}",
        '-m comment --comment "Return if policy accepted" -m mark --mark 0x10000/0x10000 --jump RETURN',
        '-m comment --comment "Drop if no policies passed packet" -m mark --mark 0/0x20000 --jump DROP',
        "--jump cali-pri-kns.ns",
        '-m comment --comment "Return if profile accepted" -m mark --mark 0x10000/0x10000 --jump RETURN',
        '-m comment --comment "Drop if no profiles matched" --jump DROP')
    assert b.chain_name().startswith("cali-gi-") and len(b.chain_name()) == 28
    six = render.PolicyGroup("outbound", tuple(f"p{i}" for i in range(6)), "s")
    g = render.group_chain_rules(six, CFG)
    assert g[0] == "--jump cali-po-p0" and g[1] == "-m mark --mark 0/0x30000 --jump cali-po-p1"
    assert g[5] == '-m comment --comment "Return on verdict" -m mark ! --mark 0/0x30000 --jump RETURN'
    assert g[6] == "--jump cali-po-p5"


def ep(name, ip, labels, node="", ports=()):
    return Endpoint(f"default/{name}", f"cali{name:0>11}"[:15], (f"{ip}/32",), ("kns.default",), node=node,
                    labels={"projectcalico.org/namespace": "default", **labels}, ports=ports)


def pol(pid, selector, order=None, inbound=(), outbound=(), types=("ingress",)):
    return Policy(pid, selector, order, types, inbound, outbound, "default")


def base(**kw):
    d = dict(hostname="w0", nodes=(HostNode("w0", "172.30.0.11/24", "192.168.1.0"),),
             pools=(Pool("192.168.0.0/16", "Always"),), profiles={"kns.default": KNS})
    d.update(kw)
    return FelixInput(**d)


def test_policy_order_groups_and_ipset_members():
    web = ep("web", "192.168.1.5", {"app": "web"}, ports=(NamedPort("http", "tcp", 8080),))
    cli = ep("cli", "192.168.2.7", {"app": "cli"}, node="w1")
    p1 = pol("default/default.b", '(app == "web")', order=10,
             inbound=(Rule(action="allow", src_selector="app == 'cli'", protocol="tcp",
                           dst_ports=(PortRange(name="http"),)),))
    p2 = pol("default/default.a", '(app == "web")', order=10, inbound=(Rule(action="deny"),))
    p3 = pol("default/default.z", '(app == "web")', order=None, inbound=(Rule(action="allow"),))
    p4 = pol("default/default.first", "has(app)", order=1, inbound=(Rule(action="next-tier"),))
    c = Calculator()
    d = c.calculate(base(endpoints={e.key: e for e in (web, cli)},
                         policies={p.id: p for p in (p1, p2, p3, p4)}))
    assert c.policies_of(web.key) == (("default/default.first", "default/default.a", "default/default.b",
                                       "default/default.z"), ())
    tw = d.tables["filter"].chains["cali-tw-" + web.iface].rules
    group = [r for r in tw if "cali-gi-" in r]
    assert len(group) == 1  # a, b and z share the selector: one group chain after "first"
    assert tw.index(f"-m mark --mark 0/0x20000 --jump {policy_chain('pi', 'default/default.first')}") < \
        tw.index(group[0])
    sets = {s.name: s for s in d.ipsets.values() if s.name.startswith(("cali40s:", "cali40n:"))}
    members = {n: set(s.members) for n, s in sets.items()}
    assert {"192.168.2.7/32"} in members.values()  # app == 'cli' holds the remote endpoint
    assert {"192.168.1.5,tcp:8080"} in members.values()  # named port http of every endpoint
    assert policy_chain("po", "default/default.a") not in d.tables["filter"].chains  # ingress-only: unreferenced


def test_label_change_moves_members_without_touching_chains():
    web = ep("web", "192.168.1.5", {"app": "web"})
    cli = ep("cli", "192.168.2.7", {"app": "other"}, node="w1")
    p = pol("default/default.allow", '(app == "web")', inbound=(Rule(action="allow", src_selector="app == 'cli'"),))
    c = Calculator()
    i1 = base(endpoints={web.key: web, cli.key: cli}, policies={p.id: p})
    d1 = c.calculate(i1)
    (name,) = [n for n in d1.ipsets if n.startswith("cali40s:")]
    assert d1.ipsets[name].members == frozenset()
    cli2 = dataclasses.replace(cli, labels={**cli.labels, "app": "cli"})
    d2 = c.calculate(dataclasses.replace(i1, endpoints={web.key: web, cli.key: cli2}))
    assert d2.ipsets[name].members == {"192.168.2.7/32"}
    assert d2.tables["filter"] is d1.tables["filter"]  # no chain rebuilt, nothing for iptables to do
    # the same answer from scratch
    assert calculate(dataclasses.replace(i1, endpoints={web.key: web, cli.key: cli2})).ipsets[name].members == \
        {"192.168.2.7/32"}


def test_new_policy_then_delete_restores_the_chain():
    web = ep("web", "192.168.1.5", {"app": "web"})
    c = Calculator()
    i1 = base(endpoints={web.key: web})
    before = c.calculate(i1).tables["filter"].chains["cali-tw-" + web.iface]
    p = pol("default/knp.default.deny", '(app == "web")')
    during = c.calculate(dataclasses.replace(i1, policies={p.id: p})).tables["filter"]
    tw = during.chains["cali-tw-" + web.iface].rules
    assert '-m comment --comment "Drop if no policies passed packet" -m mark --mark 0/0x20000 --jump DROP' in tw
    assert during.chains[policy_chain("pi", p.id)].rules == ('-m comment --comment "Policy '
                                                             'default/knp.default.deny ingress"',)
    after = c.calculate(dataclasses.replace(i1, policies={})).tables["filter"]
    assert after.chains["cali-tw-" + web.iface] is before
    assert policy_chain("pi", p.id) not in after.chains


def test_profile_labels_are_inherited_for_namespace_selectors():
    web = ep("web", "192.168.1.5", {"app": "web"})
    other = Endpoint("shop/x", "cali00000000009", ("192.168.2.9/32",), ("kns.shop",), node="w1",
                     labels={"projectcalico.org/namespace": "shop"})
    shop = Profile("kns.shop", (Rule(),), (Rule(),), {"pcns.team": "a"})
    p = pol("default/default.ns", '(app == "web")', inbound=(Rule(src_selector="(pcns.team == 'a') && (all())"),))
    i = base(endpoints={web.key: web, other.key: other}, policies={p.id: p},
             profiles={"kns.default": KNS, "kns.shop": shop})
    c = Calculator()
    d = c.calculate(i)
    (name,) = [n for n in d.ipsets if n.startswith("cali40s:")]
    assert d.ipsets[name].members == {"192.168.2.9/32"}
    d = c.calculate(dataclasses.replace(i, profiles={"kns.default": KNS,
                                                     "kns.shop": Profile("kns.shop", labels={"pcns.team": "b"})}))
    assert d.ipsets[name].members == frozenset()


def test_network_sets_feed_selector_ipsets():
    web = ep("web", "192.168.1.5", {"app": "web"})
    inet = NetSet("GlobalNetworkSet/inet", ("203.0.113.0/24",), {"role": "internet"})
    p = pol("default/default.out", '(app == "web")', types=("egress",),
            outbound=(Rule(action="allow", dst_selector="role == 'internet'"),))
    d = calculate(base(endpoints={web.key: web}, policies={p.id: p}, netsets={inet.key: inet}))
    (name,) = [n for n in d.ipsets if n.startswith("cali40s:")]
    assert d.ipsets[name].members == {"203.0.113.0/24"}
    assert any(f"--match-set {name} dst" in r for r in d.tables["filter"].chains[policy_chain(
        "po", p.id)].rules)


def test_apply_on_forward_does_not_change_workload_chains():
    web = ep("web", "192.168.1.5", {"app": "web"})
    chains = []
    for aof in (False, True):
        p = dataclasses.replace(pol("default.g", '(app == "web")', inbound=(Rule(action="deny"),)),
                                namespace="", apply_on_forward=aof)
        chains.append(calculate(base(endpoints={web.key: web}, policies={p.id: p})).tables["filter"].chains)
    assert chains[0] == chains[1] and policy_chain("pi", "default.g") in chains[0]
