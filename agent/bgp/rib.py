"""Routing information bases, pure: Adj-RIB-In per peer, Loc-RIB best path with ECMP,
export rules (iBGP split horizon, route reflection per RFC 4456) and graceful-restart
stale handling. No sockets, no kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network

from agent.bgp import messages as M

LOCAL = "local"
DEFAULT_LOCAL_PREF = 100


@dataclass(frozen=True)
class PeerInfo:
    """What the RIB needs to know about a peer."""

    key: str                       # protocol name, e.g. Mesh_172_30_0_11
    address: IPv4Address
    asn: int
    router_id: IPv4Address = IPv4Address("0.0.0.0")
    rr_client: bool = False        # we reflect to/from it (we are its route reflector)
    local_address: IPv4Address | None = None  # our next hop toward it


@dataclass(frozen=True)
class Path:
    """One path to a prefix."""

    prefix: IPv4Network
    source: str                    # peer key or LOCAL
    attrs: M.Attributes
    path_id: int = 0
    ibgp: bool = False
    router_id: IPv4Address = IPv4Address("0.0.0.0")
    peer_address: IPv4Address = IPv4Address("0.0.0.0")
    stale: bool = False
    blackhole: bool = False        # local: program a blackhole route for it

    @property
    def next_hop(self) -> IPv4Address | None:
        """The BGP next hop."""
        return self.attrs.next_hop


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


def select(paths: Iterable[Path]) -> list[Path]:
    """Best path first, followed by the other paths usable for ECMP (equal through the
    eBGP/iBGP step, with distinct next hops)."""
    paths = list(paths)
    if not paths:
        return []
    best = paths[0]
    for p in paths[1:]:
        if better(p, best):
            best = p
    if best.source == LOCAL:
        return [best]
    key = _mergeable_key(best)
    out = [best]
    hops = {best.next_hop}
    for p in sorted(paths, key=lambda x: (str(x.peer_address), x.path_id)):
        if p is best or p.source == LOCAL or _mergeable_key(p) != key or p.next_hop in hops:
            continue
        hops.add(p.next_hop)
        out.append(p)
    return out


class RIB:
    """Adj-RIB-In per peer plus the Loc-RIB.

    Mutators return the set of prefixes whose best-path set changed, so callers know what
    to re-export and re-program.
    """

    def __init__(self, local_as: int, router_id: IPv4Address,
                 cluster_id: IPv4Address | None = None):
        self.local_as = local_as
        self.router_id = router_id
        self.cluster_id = cluster_id
        self.adj_in: dict[str, dict[tuple[IPv4Network, int], Path]] = {}
        # the same paths indexed by prefix, so selection never scans every peer
        self.by_prefix: dict[IPv4Network, dict[tuple[str, int], Path]] = {}
        self.local: dict[IPv4Network, Path] = {}
        self.loc: dict[IPv4Network, list[Path]] = {}
        # export results shared by every prefix with the same attributes (one object, so
        # the speaker encodes them once per UPDATE group)
        self._xcache: dict[tuple, tuple[object, M.Attributes | None]] = {}

    # ---- inputs
    def _candidates(self, prefix: IPv4Network) -> list[Path]:
        out = [self.local[prefix]] if prefix in self.local else []
        out.extend(self.by_prefix.get(prefix, {}).values())
        return out

    def _put(self, key: str, pid: int, path: Path) -> None:
        self.adj_in.setdefault(key, {})[(path.prefix, pid)] = path
        self.by_prefix.setdefault(path.prefix, {})[(key, pid)] = path

    def _del(self, key: str, prefix: IPv4Network, pid: int) -> bool:
        found = self.adj_in.get(key, {}).pop((prefix, pid), None) is not None
        idx = self.by_prefix.get(prefix)
        if idx is not None:
            idx.pop((key, pid), None)
            if not idx:
                del self.by_prefix[prefix]
        return found

    def _recompute(self, prefixes: Iterable[IPv4Network]) -> set[IPv4Network]:
        changed = set()
        for prefix in set(prefixes):
            new = select(self._candidates(prefix))
            if new != self.loc.get(prefix, []):
                changed.add(prefix)
                if new:
                    self.loc[prefix] = new
                else:
                    self.loc.pop(prefix, None)
        return changed

    def set_local(self, routes: dict[IPv4Network, bool]) -> set[IPv4Network]:
        """Replace the locally originated routes: {prefix: blackhole?}."""
        routes = {M.as_prefix(p): bh for p, bh in routes.items()}
        touched = set(self.local) | set(routes)
        attrs = M.Attributes(origin=M.ORIGIN_IGP)
        old = self.local
        self.local = {}
        for p, bh in routes.items():
            prev = old.get(p)
            self.local[p] = prev if prev is not None and prev.blackhole == bh else Path(
                p, LOCAL, attrs, blackhole=bh, router_id=self.router_id)
        touched = {p for p in touched if old.get(p) is not self.local.get(p)}
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

    def apply_update(self, peer: PeerInfo, upd: M.Update) -> set[IPv4Network]:
        """Apply a decoded UPDATE from ``peer`` to its Adj-RIB-In."""
        self.adj_in.setdefault(peer.key, {})
        touched: set[IPv4Network] = set()
        for n, pfx in enumerate(upd.withdrawn):
            pid = upd.withdrawn_ids[n] if upd.withdrawn_ids else 0
            if self._del(peer.key, pfx, pid):
                touched.add(pfx)
        if upd.nlri and upd.attributes is not None:
            ok = self.acceptable(peer, upd.attributes)
            for n, pfx in enumerate(upd.nlri):
                pid = upd.nlri_ids[n] if upd.nlri_ids else 0
                if ok:
                    self._put(peer.key, pid, Path(pfx, peer.key, upd.attributes, pid,
                                                  ibgp=peer.asn == self.local_as,
                                                  router_id=peer.router_id,
                                                  peer_address=peer.address))
                else:
                    self._del(peer.key, pfx, pid)
                touched.add(pfx)
        return self._recompute(touched)

    def drop_peer(self, key: str) -> set[IPv4Network]:
        """Forget everything learned from a peer."""
        table = dict(self.adj_in.get(key, {}))
        for pfx, pid in table:
            self._del(key, pfx, pid)
        self.adj_in.pop(key, None)
        return self._recompute(p for p, _ in table)

    def mark_stale(self, key: str) -> None:
        """Graceful restart (receiving side): keep the peer's routes, flagged stale."""
        table = self.adj_in.get(key, {})
        for (_pfx, pid), path in list(table.items()):
            self._put(key, pid, replace(path, stale=True))
        # the loc-rib keeps forwarding on them; refresh objects so the flag is visible
        for prefix in {p for p, _ in table}:
            self.loc[prefix] = select(self._candidates(prefix))

    def sweep_stale(self, key: str) -> set[IPv4Network]:
        """End-of-RIB or restart timer: remove the peer's routes still flagged stale."""
        table = self.adj_in.get(key, {})
        gone = [k for k, p in table.items() if p.stale]
        for pfx, pid in gone:
            self._del(key, pfx, pid)
        return self._recompute(p for p, _ in gone)

    def prefixes_from(self, key: str) -> set[IPv4Network]:
        """Prefixes present in a peer's Adj-RIB-In."""
        return {p for p, _ in self.adj_in.get(key, {})}

    # ---- export (Adj-RIB-Out)
    def export(self, prefix: IPv4Network, to: PeerInfo,
               exportable: Callable[[IPv4Network], bool] = lambda p: True,
               peers: dict[str, PeerInfo] | None = None) -> M.Attributes | None:
        """Attributes to advertise ``prefix`` with to ``to``, or None to not advertise."""
        paths = self.loc.get(prefix)
        if not paths:
            return None
        best = paths[0]
        if best.source == to.key:
            return None
        ibgp_out = to.asn == self.local_as
        nh_self = to.local_address or self.router_id
        if best.source == LOCAL:
            if not exportable(prefix):
                return None
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
            return hit[1]
        a = best.attrs
        key = (id(a), best.router_id, best.ibgp, best.source, ibgp_out, nh_self, to.asn,
               to.rr_client, self.cluster_id)
        hit = self._xcache.get(key)
        if hit is not None and hit[0] is a:
            if hit[1] is not None and not exportable(prefix) and not (best.ibgp and ibgp_out):
                return None
            return hit[1]
        out = self._transform(best, to, ibgp_out, nh_self, exportable, prefix, peers)
        if len(self._xcache) > 50000:
            self._xcache.clear()
        if out is not None or (best.ibgp and ibgp_out):
            self._xcache[key] = (a, out)
        return out

    def _transform(self, best: Path, to: PeerInfo, ibgp_out: bool, nh_self: IPv4Address,
                   exportable: Callable[[IPv4Network], bool], prefix: IPv4Network,
                   peers: dict[str, PeerInfo] | None) -> M.Attributes | None:
        a = best.attrs
        if best.ibgp and ibgp_out:
            src = (peers or {}).get(best.source)
            from_client = bool(src and src.rr_client)
            if self.cluster_id is None or not (from_client or to.rr_client):
                return None  # iBGP split horizon
            return replace(a, originator_id=a.originator_id or best.router_id,
                           cluster_list=(self.cluster_id, *a.cluster_list),
                           local_pref=_local_pref(best))
        if not exportable(prefix):
            return None
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
