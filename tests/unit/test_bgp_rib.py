"""RIB: best path, ECMP, split horizon, route reflection, graceful-restart stale routes."""

from ipaddress import IPv4Address as A

import pytest

from agent.bgp import messages as M
from agent.bgp.prefix import parse as N
from agent.bgp.rib import RIB, PeerInfo

pytestmark = pytest.mark.unit

P = N("192.168.5.0/26")


def peer(n, asn=64512, **kw):
    return PeerInfo(key=f"p{n}", address=A(f"10.0.0.{n}"), asn=asn, router_id=A(f"10.0.0.{n}"), **kw)


def ann(nh, prefix=P, **kw):
    kw.setdefault("origin", 0)
    return M.Update(attributes=M.Attributes(next_hop=A(nh), **kw), nlri=[prefix])


def hops(rib, prefix=P):
    return [str(p.next_hop) for p in rib.loc.get(prefix, [])]


@pytest.mark.parametrize("a_kw, b_kw", [
    ({"local_pref": 200}, {"local_pref": 100}),
    ({}, {"as_path": ((2, (65001,)),)}),
    ({"origin": 0}, {"origin": 2}),
    ({"med": 5, "as_path": ((2, (65001,)),)}, {"med": 10, "as_path": ((2, (65001,)),)}),
])
def test_best_path_steps(a_kw, b_kw):
    rib = RIB(64512, A("10.0.0.100"))
    rib.apply_update(peer(2), ann("10.0.0.2", **b_kw))
    rib.apply_update(peer(3), ann("10.0.0.3", **a_kw))
    assert hops(rib)[0] == "10.0.0.3" and len(hops(rib)) == 1


def test_ebgp_over_ibgp_and_router_id_tiebreak():
    rib = RIB(64512, A("10.0.0.100"))
    rib.apply_update(peer(2), ann("10.0.0.2", as_path=((2, (65001,)),)))
    rib.apply_update(peer(3, asn=65001), ann("10.0.0.3", as_path=((2, (65001,)),)))
    assert hops(rib) == ["10.0.0.3"]
    rib2 = RIB(64512, A("10.0.0.100"))
    rib2.apply_update(peer(4), ann("10.0.0.4"))
    rib2.apply_update(peer(2), ann("10.0.0.2"))
    assert hops(rib2) == ["10.0.0.2", "10.0.0.4"]          # best = lowest router id, ECMP both


def test_withdraw_and_drop_peer():
    rib = RIB(64512, A("10.0.0.100"))
    assert rib.apply_update(peer(2), ann("10.0.0.2")) == {P}
    rib.apply_update(peer(3), ann("10.0.0.3"))
    assert rib.apply_update(peer(2), M.Update(withdrawn=[P])) == {P}
    assert hops(rib) == ["10.0.0.3"]
    assert rib.drop_peer("p3") == {P} and P not in rib.loc


def test_local_routes_win_and_export_next_hop_self():
    rib = RIB(64512, A("10.0.0.100"))
    rib.apply_update(peer(2), ann("10.0.0.2"))
    rib.set_local({P: True})
    assert rib.loc[P][0].source == "local" and rib.loc[P][0].blackhole
    out = rib.export(P, peer(3, local_address=A("10.0.0.100")))
    assert out.next_hop == A("10.0.0.100") and out.as_path == () and out.local_pref == 100
    ebgp = rib.export(P, peer(9, asn=65009))
    assert ebgp.as_path == ((2, (64512,)),) and ebgp.local_pref is None
    assert rib.export(P, peer(3), exportable=lambda p: False) is None


def test_ibgp_split_horizon_without_rr():
    rib = RIB(64512, A("10.0.0.100"))
    peers = {"p2": peer(2), "p3": peer(3)}
    rib.apply_update(peers["p2"], ann("10.0.0.2"))
    assert rib.export(P, peers["p3"], peers=peers) is None
    assert rib.export(P, peers["p2"], peers=peers) is None        # never back to its source


def test_route_reflection_sets_originator_and_cluster_list():
    cid = A("224.0.0.1")
    rib = RIB(64512, A("10.0.0.100"), cluster_id=cid)
    peers = {"p2": peer(2, rr_client=True), "p3": peer(3, rr_client=True), "p4": peer(4)}
    rib.apply_update(peers["p2"], ann("10.0.0.2"))
    out = rib.export(P, peers["p3"], peers=peers)
    assert out.originator_id == A("10.0.0.2") and out.cluster_list == (cid,)
    assert out.next_hop == A("10.0.0.2")                          # next hop unchanged
    assert rib.export(P, peers["p4"], peers=peers) is not None    # client -> non-client
    # a route carrying our cluster id (a loop) is ignored
    rib.apply_update(peers["p4"], ann("10.0.0.4", N("10.9.0.0/24"), cluster_list=(cid,)))
    assert N("10.9.0.0/24") not in rib.loc


def test_loop_checks():
    rib = RIB(64512, A("10.0.0.100"))
    rib.apply_update(peer(9, asn=65009), ann("10.0.0.9", as_path=((2, (65009, 64512)),)))
    rib.apply_update(peer(2), ann("10.0.0.2", N("10.1.0.0/16"), originator_id=A("10.0.0.100")))
    assert rib.loc == {}


def test_graceful_restart_stale_then_sweep():
    rib = RIB(64512, A("10.0.0.100"))
    q = N("192.168.6.0/26")
    rib.apply_update(peer(2), ann("10.0.0.2"))
    rib.apply_update(peer(2), ann("10.0.0.2", q))
    rib.mark_stale("p2")
    assert hops(rib) == ["10.0.0.2"] and rib.loc[P][0].stale
    rib.apply_update(peer(2), ann("10.0.0.2"))           # re-announced after restart
    assert rib.sweep_stale("p2") == {q}
    assert P in rib.loc and q not in rib.loc


def test_addpath_ids_are_separate_paths():
    rib = RIB(64512, A("10.0.0.100"))
    u = ann("10.0.0.2")
    u.nlri_ids = [1]
    v = ann("10.0.0.3")
    v.nlri_ids = [2]
    rib.apply_update(peer(5), u)
    rib.apply_update(peer(5), v)
    assert sorted(hops(rib)) == ["10.0.0.2", "10.0.0.3"]
    rib.apply_update(peer(5), M.Update(withdrawn=[P], withdrawn_ids=[1]))
    assert hops(rib) == ["10.0.0.3"]


def test_export_cache_respects_per_prefix_filter_and_shares_objects():
    rib = RIB(64512, A("10.0.0.100"))
    q = N("10.9.0.0/24")
    shared = M.Update(attributes=M.Attributes(origin=0, next_hop=A("10.0.0.9"),
                                              as_path=((2, (65009,)),)), nlri=[P, q])
    rib.apply_update(peer(9, asn=65009), shared)
    allowed = {P}
    to = peer(3)
    first = rib.export(P, to, lambda p: p in allowed)
    assert first is not None and first.local_pref == 100
    assert rib.export(q, to, lambda p: p in allowed) is None     # same attributes, filtered
    assert rib.export(P, to, lambda p: p in allowed) is first    # one object for the group
    rib.set_local({N("192.168.9.0/26"): True, N("192.168.10.0/26"): True})
    a = rib.export(N("192.168.9.0/26"), to)
    assert a is rib.export(N("192.168.10.0/26"), to)
