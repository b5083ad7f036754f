"""Property test of the RIB's indexes (hypothesis): after any sequence of announcements,
withdrawals (with and without ADD-PATH ids), local route changes, peer drops and
graceful-restart stale/sweep, the Loc-RIB is exactly what selecting from scratch over the
Adj-RIBs-In gives, and the per-prefix index holds exactly the Adj-RIB-In paths."""

from __future__ import annotations

from ipaddress import IPv4Address as A

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.bgp import messages as M
from agent.bgp.prefix import parse
from agent.bgp.rib import RIB, PeerInfo, select

pytestmark = pytest.mark.unit

PREFIXES = [parse(f"10.0.{i}.0/24") for i in range(4)]
PEERS = [PeerInfo(f"p{i}", A(f"172.30.0.{i}"), 64512 if i < 3 else 65009,
                  router_id=A(f"172.30.0.{i}")) for i in range(1, 5)]

peer_st = st.sampled_from(PEERS)
prefixes_st = st.lists(st.sampled_from(PREFIXES), min_size=1, max_size=4)
ids_st = st.one_of(st.none(), st.integers(1, 3))

op_st = st.one_of(
    st.tuples(st.just("announce"), peer_st, prefixes_st, ids_st, st.integers(0, 2),
              st.sampled_from([100, 200])),
    st.tuples(st.just("withdraw"), peer_st, prefixes_st, ids_st),
    st.tuples(st.just("local"), st.dictionaries(st.sampled_from(PREFIXES), st.booleans(),
                                                max_size=2)),
    st.tuples(st.just("drop"), peer_st),
    st.tuples(st.just("stale"), peer_st),
    st.tuples(st.just("sweep"), peer_st),
)


def brute_force(rib: RIB) -> dict:
    out = {}
    for pfx in PREFIXES:
        cands = [p for table in rib.adj_in.values() for pk, p in table.items() if pk >> 32 == pfx]
        if pfx in rib.local:
            cands.append(rib.local[pfx])
        sel = select(cands)
        if sel:
            out[pfx] = sel
    return out


def same(a: tuple, b: tuple) -> bool:
    """Equal selections: the same best path, the same ECMP set."""
    return bool(a) == bool(b) and (not a or (a[0] is b[0] and set(map(id, a)) == set(map(id, b))))


@settings(max_examples=300, deadline=None)
@given(st.lists(op_st, max_size=25))
def test_loc_rib_equals_selection_from_scratch(ops):
    rib = RIB(64512, A("172.30.0.100"))
    for op in ops:
        before = dict(rib.loc)
        kind = op[0]
        if kind == "announce":
            _k, peer, pfxs, pid, nh, lp = op
            attrs = M.Attributes(origin=0, next_hop=A(f"172.30.1.{nh + 1}"), local_pref=lp,
                                 as_path=((2, (65009,)),) if peer.asn != 64512 else ())
            upd = M.Update(attributes=attrs, nlri=list(pfxs),
                           nlri_ids=[pid] * len(pfxs) if pid else None)
            changed = rib.apply_update(peer, upd)
        elif kind == "withdraw":
            _k, peer, pfxs, pid = op
            changed = rib.apply_update(peer, M.Update(
                withdrawn=list(pfxs), withdrawn_ids=[pid] * len(pfxs) if pid else None))
        elif kind == "local":
            changed = rib.set_local(op[1])
        elif kind == "drop":
            changed = rib.drop_peer(op[1].key)
        elif kind == "stale":
            rib.mark_stale(op[1].key)
            changed = None
        else:
            changed = rib.sweep_stale(op[1].key)
        want = brute_force(rib)
        assert set(rib.loc) == set(want), op
        for pfx, sel in want.items():
            assert same(rib.loc[pfx], sel), (op, pfx)
        if changed is not None:  # what changed is reported (and nothing else is claimed)
            moved = {p for p in PREFIXES if not same(before.get(p, ()), rib.loc.get(p, ()))}
            assert moved <= changed, (op, moved, changed)
        # the per-prefix index holds exactly the Adj-RIB-In paths
        index = {}
        for pfx, v in rib.by_prefix.items():
            index[pfx] = set(map(id, v.values())) if isinstance(v, dict) else {id(v)}
            assert index[pfx], pfx
        adj = {}
        for table in rib.adj_in.values():
            for pk, p in table.items():
                adj.setdefault(pk >> 32, set()).add(id(p))
        assert index == adj, op
