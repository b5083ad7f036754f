"""Routing information bases, pure: Adj-RIB-In per peer, Loc-RIB best path with ECMP,
export rules (iBGP split horizon, route reflection per RFC 4456) and graceful-restart
stale handling. No sockets, no kernel.

Prefixes are :mod:`agent.bgp.prefix` keys (ints). A :class:`Path` describes where a route
came from and with which attributes, not which prefix: every prefix of one UPDATE shares
one Path object (and every locally originated blackhole shares another), so applying an
UPDATE of 800 NLRI makes one object, and the Loc-RIB entry of a prefix with a single
candidate is that path's shared one-element tuple. Only the prefixes an event touched are
recomputed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network

from agent.bgp import messages as M
from agent.bgp import prefix as PF

LOCAL = "local"
DEFAULT_LOCAL_PREF = 100
_NO_ID = IPv4Address("0.0.0.0")


@dataclass(frozen=True)
class PeerInfo:
    """What the RIB needs to know about a peer."""

    key: str                       # protocol name, e.g. Mesh_172_30_0_11
    address: IPv4Address
    asn: int
    router_id: IPv4Address = _NO_ID
    rr_client: bool = False        # we reflect to/from it (we are its route reflector)
    local_address: IPv4Address | None = None  # our next hop toward it


@dataclass(frozen=True, eq=False)
class Path:
    """One path: its source and attributes, shared by every prefix that has it (identity
    is the path: two UPDATEs make two paths even with equal attributes)."""

    source: str                    # peer key or LOCAL
    attrs: M.Attributes
    path_id: int = 0
    ibgp: bool = False
    router_id: IPv4Address = _NO_ID
    peer_address: IPv4Address = _NO_ID
    stale: bool = False
    blackhole: bool = False        # local: program a blackhole route for it
    solo: tuple = field(init=False, compare=False, repr=False)  # (self,): a Loc-RIB entry

    def __post_init__(self) -> None:
        object.__setattr__(self, "solo", (self,))

    @property
    def next_hop(self) -> IPv4Address | None:
        """The BGP next hop."""
        return self.attrs.next_hop


def _slot(p: Path) -> object:
    """A path's place among a prefix's candidates: its peer (and path id)."""
    return p.source if p.path_id == 0 else (p.source, p.path_id)


def _local_pref(p: Path) -> int:
    lp = p.attrs.local_pref
    return DEFAULT_LOCAL_PREF if lp is None else lp


def _mergeable_key(p: Path) -> tuple:
    """The comparison up to (and including) eBGP-over-iBGP: equal keys may share ECMP."""
    return (-_local_pref(p), p.attrs.as_path_length(),
            p.attrs.origin if p.attrs.origin is not None else 2, p.attrs.med or 0,
            0 if not p.ibgp else 1)


def better(a: Path, b: Path) -> bool:
    """True when ``a`` is preferred over ``b`` (RFC 4271 9.1.2.2 plus RFC 4456 tie-breaks)."""
    if (a.source == LOCAL) != (b.source == LOCAL):
        return a.source == LOCAL
    if _local_pref(a) != _local_pref(b):
        return _local_pref(a) > _local_pref(b)
    if a.attrs.as_path_length() != b.attrs.as_path_length():
        return a.attrs.as_path_length() < b.attrs.as_path_length()
    oa, ob = (a.attrs.origin or 0), (b.attrs.origin or 0)
    if oa != ob:
        return oa < ob
    if a.attrs.first_as() == b.attrs.first_as():
        ma, mb = a.attrs.med or 0, b.attrs.med or 0
        if ma != mb:
            return ma < mb
    if a.ibgp != b.ibgp:
        return not a.ibgp
    ra = a.attrs.originator_id or a.router_id
    rb = b.attrs.originator_id or b.router_id
    if ra != rb:
        return ra < rb
    if len(a.attrs.cluster_list) != len(b.attrs.cluster_list):
        return len(a.attrs.cluster_list) < len(b.attrs.cluster_list)
    if a.peer_address != b.peer_address:
        return a.peer_address < b.peer_address
    return a.path_id < b.path_id


def select(paths: Iterable[Path]) -> tuple[Path, ...]:
    """Best path first, followed by the other paths usable for ECMP (equal through the
    eBGP/iBGP step, with distinct next hops)."""
    paths = list(paths)
    if not paths:
        return ()
    if len(paths) == 1:
        return paths[0].solo
    best = paths[0]
    for p in paths[1:]:
        if better(p, best):
            best = p
    if best.source == LOCAL:
        return best.solo
    key = _mergeable_key(best)
    out = [best]
    hops = {best.next_hop}
    for p in sorted(paths, key=lambda x: (str(x.peer_address), x.path_id)):
        if p is best or p.source == LOCAL or _mergeable_key(p) != key or p.next_hop in hops:
            continue
        hops.add(p.next_hop)
        out.append(p)
    return best.solo if len(out) == 1 else tuple(out)


class RIB:
    """Adj-RIB-In per peer plus the Loc-RIB, keyed by prefix keys (ints).

    Mutators return the set of prefixes whose best-path set changed, so callers know what
    to re-export and re-program.
    """

    def __init__(self, local_as: int, router_id: IPv4Address,
                 cluster_id: IPv4Address | None = None):
        self.local_as = local_as
        self.router_id = router_id
        self.cluster_id = cluster_id
        # peer key -> {prefix << 32 | path id: Path}
        self.adj_in: dict[str, dict[int, Path]] = {}
        # prefix -> its candidate path (the common case: one), or {slot: Path} with a slot
        # per (peer, path id) when there are several: selection never scans every peer
        self.by_prefix: dict[int, Path | dict[object, Path]] = {}
        self.local: dict[int, Path] = {}
        self.loc: dict[int, tuple[Path, ...]] = {}
        self._local_paths: dict[bool, Path] = {}
        # export results shared by every prefix with the same best path (one object, so
        # the speaker encodes them once per UPDATE group)
        self._xcache: dict[tuple, tuple[object, M.Attributes | None]] = {}

    # ---- inputs
    def _recompute(self, prefixes: Iterable[int]) -> set[int]:
        changed: set[int] = set()
        loc, local, by_prefix = self.loc, self.local, self.by_prefix
        for pfx in prefixes:
            cands = by_prefix.get(pfx)
            mine = local.get(pfx)
            if mine is not None:
                new = mine.solo  # a local route always wins (better(): local first)
            elif cands is None:
                new = ()
            elif type(cands) is not dict:
                new = cands.solo
            else:
                new = select(cands.values())
            old = loc.get(pfx, ())
            if new is old or new == old:
                continue
            changed.add(pfx)
            if new:
                loc[pfx] = new
            else:
                del loc[pfx]
        return changed

    def _local_path(self, blackhole: bool) -> Path:
        path = self._local_paths.get(blackhole)
        if path is None or path.router_id != self.router_id:
            path = self._local_paths[blackhole] = Path(
                LOCAL, M.Attributes(origin=M.ORIGIN_IGP), blackhole=blackhole,
                router_id=self.router_id)
        return path

    def set_local(self, routes: dict[int | IPv4Network, bool]) -> set[int]:
        """Replace the locally originated routes: {prefix: blackhole?}."""
        black, plain = self._local_path(True), self._local_path(False)
        new = {PF.of(p): (black if bh else plain) for p, bh in routes.items()}
        old = self.local
        self.local = new
        touched = [p for p, path in new.items() if old.get(p) is not path]
        touched += [p for p in old if p not in new]
        return self._recompute(touched)

    def acceptable(self, peer: PeerInfo, attrs: M.Attributes) -> bool:
        """Loop checks: our AS in an eBGP path; our router id / cluster id reflected back."""
        if peer.asn != self.local_as:
            for _t, asns in attrs.as_path:
                if self.local_as in asns:
                    return False
        else:
            if attrs.originator_id == self.router_id:
                return False
            if self.cluster_id is not None and self.cluster_id in attrs.cluster_list:
                return False
        return attrs.next_hop is not None

    def _index(self, pfx: int, slot: object, path: Path) -> None:
        bp = self.by_prefix
        cur = bp.get(pfx)
        if cur is None:
            bp[pfx] = path
        elif type(cur) is dict:
            cur[slot] = path
        else:
            mine = _slot(cur)
            bp[pfx] = path if mine == slot else {mine: cur, slot: path}

    def _unindex(self, pfx: int, slot: object) -> None:
        bp = self.by_prefix
        cur = bp.get(pfx)
        if cur is None:
            return
        if type(cur) is dict:
            cur.pop(slot, None)
            if len(cur) == 1:
                bp[pfx] = next(iter(cur.values()))
            elif not cur:
                del bp[pfx]
        elif _slot(cur) == slot:
            del bp[pfx]

    def _remove(self, key: str, table: dict[int, Path], pfx: int, pid: int) -> bool:
        if table.pop(pfx << 32 | pid, None) is None:
            return False
        self._unindex(pfx, key if pid == 0 else (key, pid))
        return True

    def apply_update(self, peer: PeerInfo, upd: M.Update) -> set[int]:
        """Apply a decoded UPDATE from ``peer`` to its Adj-RIB-In."""
        key = peer.key
        table = self.adj_in.setdefault(key, {})
        touched: list[int] = []
        wids = upd.withdrawn_ids
        for n, pfx in enumerate(upd.withdrawn):
            if self._remove(key, table, pfx, wids[n] if wids else 0):
                touched.append(pfx)
        if upd.nlri and upd.attributes is not None:
            if not self.acceptable(peer, upd.attributes):
                ids = upd.nlri_ids
                for n, pfx in enumerate(upd.nlri):
                    self._remove(key, table, pfx, ids[n] if ids else 0)
                    touched.append(pfx)
                return self._recompute(touched)
            ibgp = peer.asn == self.local_as
            ids = upd.nlri_ids
            if not ids:  # one path for the whole UPDATE: bulk dict operations
                path = Path(key, upd.attributes, 0, ibgp=ibgp, router_id=peer.router_id,
                            peer_address=peer.address)
                nlri = upd.nlri
                table.update(dict.fromkeys([p << 32 for p in nlri], path))
                bp = self.by_prefix
                if bp.keys().isdisjoint(nlri):
                    bp.update(dict.fromkeys(nlri, path))
                else:
                    for pfx in nlri:
                        if pfx in bp:
                            self._index(pfx, key, path)
                        else:
                            bp[pfx] = path
                return self._recompute(touched + nlri if touched else nlri)
            paths: dict[int, Path] = {}
            by_prefix = self.by_prefix
            index = self._index
            for n, pfx in enumerate(upd.nlri):
                pid = ids[n] if ids else 0
                path = paths.get(pid)
                if path is None:
                    path = paths[pid] = Path(key, upd.attributes, pid, ibgp=ibgp,
                                             router_id=peer.router_id,
                                             peer_address=peer.address)
                table[pfx << 32 | pid] = path
                if pfx not in by_prefix:
                    by_prefix[pfx] = path  # the common case: its only candidate
                else:
                    index(pfx, key if pid == 0 else (key, pid), path)
            touched.extend(upd.nlri)
        return self._recompute(touched)

    def drop_peer(self, key: str) -> set[int]:
        """Forget everything learned from a peer."""
        table = self.adj_in.pop(key, {})
        touched = []
        for pk in table:
            pfx, pid = pk >> 32, pk & 0xFFFFFFFF
            self._unindex(pfx, key if pid == 0 else (key, pid))
            touched.append(pfx)
        return self._recompute(touched)

    def mark_stale(self, key: str) -> None:
        """Graceful restart (receiving side): keep the peer's routes, flagged stale."""
        table = self.adj_in.get(key, {})
        copies: dict[int, Path] = {}
        prefixes = []
        for pk, path in table.items():
            stale = copies.get(id(path))
            if stale is None:
                stale = copies[id(path)] = replace(path, stale=True)
            table[pk] = stale
            pfx, pid = pk >> 32, pk & 0xFFFFFFFF
            self._index(pfx, key if pid == 0 else (key, pid), stale)
            prefixes.append(pfx)
        # the Loc-RIB keeps forwarding on them; refreshed so the flag is visible
        self._recompute(prefixes)

    def sweep_stale(self, key: str) -> set[int]:
        """End-of-RIB or restart timer: remove the peer's routes still flagged stale."""
        table = self.adj_in.get(key, {})
        gone = [pk for pk, p in table.items() if p.stale]
        touched = []
        for pk in gone:
            self._remove(key, table, pk >> 32, pk & 0xFFFFFFFF)
            touched.append(pk >> 32)
        return self._recompute(touched)

    def prefixes_from(self, key: str) -> set[int]:
        """Prefixes present in a peer's Adj-RIB-In."""
        return {pk >> 32 for pk in self.adj_in.get(key, {})}

    def count_from(self, key: str) -> int:
        """How many paths a peer's Adj-RIB-In holds (cheap; for status)."""
        return len(self.adj_in.get(key, {}))

    # ---- export (Adj-RIB-Out)
    def export_path(self, best: Path, to: PeerInfo,
                    peers: Mapping[str, PeerInfo] | None = None) -> tuple[M.Attributes | None, bool]:
        """What to advertise to ``to`` for any prefix whose best path is ``best``:
        (attributes or None, whether the prefix must also pass the export filter). The
        attributes object is shared by every prefix of the group."""
        if best.source == to.key:
            return None, False
        ibgp_out = to.asn == self.local_as
        nh_self = to.local_address or self.router_id
        if best.source == LOCAL:
            key = ("local", ibgp_out, nh_self, self.local_as)
            hit = self._xcache.get(key)
            if hit is None:
                if ibgp_out:
                    out = M.Attributes(origin=M.ORIGIN_IGP, as_path=(), next_hop=nh_self,
                                       local_pref=DEFAULT_LOCAL_PREF)
                else:
                    out = M.Attributes(origin=M.ORIGIN_IGP, next_hop=nh_self,
                                       as_path=((M.AS_SEQUENCE, (self.local_as,)),))
                hit = self._xcache[key] = (None, out)
            return hit[1], True
        a = best.attrs
        reflect = best.ibgp and ibgp_out
        if reflect and self.cluster_id is None:
            return None, False  # iBGP split horizon, no reflection configured: the mesh case
        key = (id(a), best.router_id, best.ibgp, best.source, ibgp_out, nh_self, to.asn,
               to.rr_client, self.cluster_id)
        hit = self._xcache.get(key)
        if hit is None or hit[0] is not a:
            out = self._transform(best, to, ibgp_out, nh_self, peers)
            if len(self._xcache) > 50000:
                self._xcache.clear()
            hit = self._xcache[key] = (a, out)
        return hit[1], not reflect

    def export(self, prefix: int | IPv4Network, to: PeerInfo,
               exportable: Callable[[int], bool] = lambda p: True,
               peers: Mapping[str, PeerInfo] | None = None) -> M.Attributes | None:
        """Attributes to advertise ``prefix`` with to ``to``, or None to not advertise."""
        pfx = PF.of(prefix)
        paths = self.loc.get(pfx)
        if not paths:
            return None
        out, filtered = self.export_path(paths[0], to, peers)
        if out is not None and filtered and not exportable(pfx):
            return None
        return out

    def _transform(self, best: Path, to: PeerInfo, ibgp_out: bool, nh_self: IPv4Address,
                   peers: Mapping[str, PeerInfo] | None) -> M.Attributes | None:
        a = best.attrs
        if best.ibgp and ibgp_out:
            src = (peers or {}).get(best.source)
            from_client = bool(src and src.rr_client)
            if self.cluster_id is None or not (from_client or to.rr_client):
                return None  # iBGP split horizon
            return replace(a, originator_id=a.originator_id or best.router_id,
                           cluster_list=(self.cluster_id, *a.cluster_list),
                           local_pref=_local_pref(best))
        if ibgp_out:  # eBGP-learned to iBGP: keep next hop, set local pref
            return replace(a, local_pref=_local_pref(best), originator_id=None, cluster_list=())
        if to.asn in {x for _t, s in a.as_path for x in s}:
            return None
        segs = list(a.as_path)
        if segs and segs[0][0] == M.AS_SEQUENCE and len(segs[0][1]) < 255:
            segs[0] = (M.AS_SEQUENCE, (self.local_as, *segs[0][1]))
        else:
            segs.insert(0, (M.AS_SEQUENCE, (self.local_as,)))
        return replace(a, as_path=tuple(segs), next_hop=nh_self, local_pref=None,
                       originator_id=None, cluster_list=(), med=None)
