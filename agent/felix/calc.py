"""Felix's calculation (pure, incremental): inputs -> desired routes, ipsets, iptables tables, tunl0.

Felix's calc graph in miniature (calico.md sections 3-5):

* a policy index over the *local* endpoints finds, per endpoint, the policies
  whose selector matches it; a policy matching at least one local endpoint is
  *active*, and so is a profile an active endpoint names (a missing profile
  becomes Felix's default-drop profile);
* the rule scanner turns the active policies' and profiles' rule selectors and
  named ports into ipsets (``cali40s:...``, ``cali40n:...``), reference counted;
* an ipset index over *every* endpoint and network set of the cluster keeps
  their members: a label change only moves members, the chains stay as they are;
* the renderer (``agent.felix.render``, ``agent.felix.static``) gives the chains;
  chains are interned, so the iptables driver skips unchanged ones by identity,
  and, as Felix's table, only chains reachable from the kernel hooks are kept.

:class:`Calculator` keeps that state between calls: ``calculate(inp)`` diffs
``inp`` against the previous input by object identity (the daemon's caches
replace only what changed), so the work is proportional to the change.
:func:`calculate` is the one-shot form.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Hashable, Mapping
from functools import lru_cache

from agent.felix import encap, render, static
from agent.felix.encap import ipip_enabled
from agent.felix.labelindex import SelectorIndex
from agent.felix.model import (
    Chain,
    Desired,
    Endpoint,
    FelixInput,
    FelixSettings,
    IPSet,
    NetSet,
    RuleConfig,
    TableState,
    TunnelWant,
    make_chain,
    rule_config,
)
from agent.felix.names import (
    IPSET_ALL_HOSTS,
    IPSET_ALL_POOLS,
    IPSET_ALL_VXLAN,
    IPSET_MASQ_POOLS,
    IPSET_THIS_HOST,
    ipset_name,
)
from agent.felix.policy import IPSetSpec, Policy, Profile, drop_profile, ipsets_of
from datastore.selector import parse_selector

log = logging.getLogger(__name__)


def is_local(ep: Endpoint, inp: FelixInput) -> bool:
    """An endpoint of this node with an interface of our prefix."""
    return ep.node in ("", inp.hostname) and ep.iface.startswith(inp.settings.interface_prefix)


def local_endpoints(inp: FelixInput) -> list[Endpoint]:
    """Local endpoints sorted by interface name; duplicates by iface dropped."""
    seen: dict[str, Endpoint] = {}
    for ep in sorted(inp.endpoint_map().values(), key=lambda e: (e.iface, e.key)):
        if is_local(ep, inp) and ep.iface not in seen:
            seen[ep.iface] = ep
    return list(seen.values())


def calculate(inp: FelixInput) -> Desired:
    """The desired dataplane for ``inp.hostname`` (one-shot)."""
    return Calculator().calculate(inp)


@lru_cache(maxsize=65536)
def _v4(cidr: str) -> str | None:
    net = ipaddress.ip_network(cidr, strict=False)
    return str(net) if net.version == 4 else None


def _net(cidr: str) -> str:
    return str(ipaddress.ip_network(cidr, strict=False))


@lru_cache(maxsize=16)
def _static_parts(cfg: RuleConfig) -> tuple[dict[str, Chain], dict, dict, dict[str, Chain], dict[str, Chain]]:
    filt = {n: make_chain(n, r) for n, r in static.filter_chains(cfg).items()}
    ins, app = static.filter_hooks(cfg)
    mangle = {n: make_chain(n, r) for n, r in static.mangle_chains(cfg).items()}
    raw = {n: make_chain(n, r) for n, r in static.raw_chains(cfg).items()}
    return filt, ins, app, raw, mangle


@lru_cache(maxsize=64)
def _nat_mangle(cfg: RuleConfig, nat_outgoing: bool, tunnels: tuple[str, ...],
                random_fully: bool) -> tuple[TableState, TableState]:
    """The nat and mangle tables, pruned; one object per input, so an apply that changes
    neither finds them identical to what it wrote last and plans nothing for them. Callers
    must not change what they get."""
    mangle = TableState(chains=dict(_static_parts(cfg)[4]), inserts=static.mangle_hooks())
    return prune(static.nat_table(cfg, nat_outgoing, tunnels, random_fully)), prune(mangle)


@lru_cache(maxsize=64)
def _dispatch(ifaces: tuple[str, ...], cfg: RuleConfig) -> tuple[Chain, ...]:
    return tuple(make_chain(n, r) for n, r in render.dispatch_chains(ifaces, cfg).items())


@lru_cache(maxsize=16384)
def _policy_chains(policy: Policy, cfg: RuleConfig) -> tuple[Chain, ...]:
    return tuple(make_chain(n, r) for n, r in render.policy_chains(policy, cfg).items())


@lru_cache(maxsize=16384)
def _profile_chains(profile: Profile, cfg: RuleConfig) -> tuple[Chain, ...]:
    return tuple(make_chain(n, r) for n, r in render.profile_chains(profile, cfg).items())


@lru_cache(maxsize=16384)
def _group_chain(group: render.PolicyGroup, cfg: RuleConfig) -> Chain:
    return make_chain(group.chain_name(), render.group_chain_rules(group, cfg))


def prune(t: TableState) -> TableState:
    """Keep only chains reachable from the table's hooks (Felix programs referenced chains only)."""
    chains = t.chains
    seen: set[str] = set()
    frontier = {ref for rules in (*t.inserts.values(), *t.appends.values()) for r in rules
                for ref in make_chain("", (r,)).refs}
    while frontier:
        frontier = {n for n in frontier if n in chains} - seen
        seen |= frontier
        frontier = set().union(*(chains[n].refs for n in frontier)) if frontier else set()
    t.chains = {n: ch for n, ch in chains.items() if n in seen}
    return t


class Calculator:
    """Felix's calc graph state; ``calculate(inp)`` returns the Desired dataplane."""

    def __init__(self) -> None:
        self._reset(None, None)
        self.missing_profiles: set[str] = set()

    def _reset(self, settings: FelixSettings | None, cfg: RuleConfig | None) -> None:
        self.settings = settings
        self.cfg = cfg
        self.hostname = ""
        self._eps: dict[str, Endpoint] = {}
        self._nets: dict[str, NetSet] = {}
        self._pols: dict[str, Policy] = {}
        self._profs: dict[str, Profile] = {}
        self._local: dict[str, Endpoint] = {}
        # local endpoints x policy selectors
        self.pol_index = SelectorIndex(self._pol_match, self._pol_unmatch)
        # every endpoint and network set x active ipset selectors
        self.set_index = SelectorIndex(self._set_match, self._set_unmatch)
        self._prof_users: dict[str, set[str]] = {}  # profile -> local endpoint keys
        self._active_pols: set[str] = set()  # policies matching at least one local endpoint
        self._set_owners: dict[str, set[Hashable]] = {}  # ipset uid -> ("pol", id) / ("prof", name)
        self._owner_sets: dict[Hashable, dict[str, IPSetSpec]] = {}
        self._specs: dict[str, IPSetSpec] = {}
        self._counts: dict[str, dict[str, int]] = {}  # uid -> member -> refcount
        self._contrib: dict[tuple[str, Hashable], frozenset[str]] = {}
        self._ipsets: dict[str, IPSet] = {}  # uid -> current IPSet (rebuilt when dirty)
        self._dirty_sets: set[str] = set()
        self._dirty_eps: set[str] = set()
        self._ep_chains: dict[str, tuple[Chain, Chain, tuple[render.PolicyGroup, ...], tuple[Chain, ...]]] = {}
        # chains change only with endpoints, active policies or profiles; label changes only move ipset
        # members, so the tables of the previous calculation are reused while this stays False
        self._tables_dirty = True
        self._tables: tuple[TableState, TableState, dict[str, str], list[Endpoint]] | None = None

    # -- inputs ------------------------------------------------------------------------
    def calculate(self, inp: FelixInput) -> Desired:
        """Update from ``inp`` (changes found by identity) and return the desired dataplane."""
        s = inp.settings
        ipip = ipip_enabled(inp)
        cfg = rule_config(s, ipip, encap.vxlan_enabled(inp))
        if cfg != self.cfg or inp.hostname != self.hostname:
            self._reset(s, cfg)
            self.hostname = inp.hostname
        self._sync_profiles(inp.profiles)
        self._sync_netsets(inp.netsets)
        self._sync_endpoints(inp)
        self._sync_policies(inp.policies)
        return self._desired(inp, cfg, ipip)

    def _sync_profiles(self, profs: Mapping[str, Profile]) -> None:
        old = self._profs
        if profs is old:
            return
        changed = [n for n, p in profs.items() if old.get(n) is not p]
        gone = [n for n in old if n not in profs]
        self._profs = dict(profs)
        for name in changed:
            self.set_index.update_parent(name, self._profs[name].labels)
            self.pol_index.update_parent(name, self._profs[name].labels)
            self._profile_changed(name)
        for name in gone:
            self.set_index.update_parent(name, None)
            self.pol_index.update_parent(name, None)
            self._profile_changed(name)

    def _profile_changed(self, name: str) -> None:
        if self._prof_users.get(name):
            self._tables_dirty = True
            self._scan(("prof", name), self._profile(name))

    def _profile(self, name: str) -> Profile:
        prof = self._profs.get(name)
        return prof if prof is not None else drop_profile(name)

    def _sync_netsets(self, nets: Mapping[str, NetSet]) -> None:
        old = self._nets
        if nets is old:
            return
        for key, ns in nets.items():
            if old.get(key) is not ns:
                self._nets[key] = ns
                self._update_set_item(("ns", key), ns.labels, ns.profiles)
        for key in [k for k in old if k not in nets]:
            self._nets.pop(key, None)
            self._delete_set_item(("ns", key))
        self._nets = dict(nets)

    def _sync_endpoints(self, inp: FelixInput) -> None:
        eps = inp.endpoint_map()
        old = self._eps
        for key, ep in eps.items():
            if old.get(key) is ep:
                continue
            prev = old.get(key)
            self._eps[key] = ep
            self._update_set_item(("ep", key), _wep_labels(ep), ep.profiles)
            local = is_local(ep, inp)
            if local:
                self._set_local(key, ep, prev)
            elif key in self._local:
                self._unset_local(key)
        for key in [k for k in old if k not in eps]:
            del self._eps[key]
            self._delete_set_item(("ep", key))
            if key in self._local:
                self._unset_local(key)

    def _set_local(self, key: str, ep: Endpoint, prev: Endpoint | None) -> None:
        old_profiles = self._local[key].profiles if key in self._local else ()
        self._local[key] = ep
        for p in old_profiles:
            if p not in ep.profiles:
                self._unuse_profile(p, key)
        for p in ep.profiles:
            if p not in old_profiles:
                self._use_profile(p, key)
        self.pol_index.update_item(key, _wep_labels(ep), ep.profiles)
        self._dirty_eps.add(key)
        self._tables_dirty = True

    def _unset_local(self, key: str) -> None:
        ep = self._local.pop(key)
        for p in ep.profiles:
            self._unuse_profile(p, key)
        self.pol_index.delete_item(key)
        self._ep_chains.pop(key, None)
        self._dirty_eps.discard(key)
        self._tables_dirty = True

    def _use_profile(self, name: str, user: str) -> None:
        users = self._prof_users.setdefault(name, set())
        users.add(user)
        if len(users) == 1:
            self._scan(("prof", name), self._profile(name))

    def _unuse_profile(self, name: str, user: str) -> None:
        users = self._prof_users.get(name)
        if users is None:
            return
        users.discard(user)
        if not users:
            del self._prof_users[name]
            self._scan(("prof", name), None)

    def _sync_policies(self, pols: Mapping[str, Policy]) -> None:
        old = self._pols
        if pols is old:
            return
        for pid, pol in pols.items():
            prev = old.get(pid)
            if prev is pol:
                continue
            self._pols[pid] = pol
            if prev is not None and pid in self._active_pols:
                self._tables_dirty = True
                self._dirty_eps |= self.pol_index.matches_of(pid)
                self._scan(("pol", pid), pol)
            self.pol_index.update_selector(pid, parse_selector(pol.selector))
        for pid in [p for p in old if p not in pols]:
            self._tables_dirty = True
            self._dirty_eps |= self.pol_index.matches_of(pid)
            self.pol_index.delete_selector(pid)
            del self._pols[pid]
            self._active_pols.discard(pid)
            self._scan(("pol", pid), None)
        self._pols = dict(pols)

    # -- policy index callbacks ----------------------------------------------------------
    def _pol_match(self, pid: Hashable, ep_key: Hashable) -> None:
        self._dirty_eps.add(str(ep_key))
        self._tables_dirty = True
        if pid not in self._active_pols:
            self._active_pols.add(str(pid))
            self._scan(("pol", pid), self._pols.get(str(pid)))

    def _pol_unmatch(self, pid: Hashable, ep_key: Hashable) -> None:
        self._dirty_eps.add(str(ep_key))
        self._tables_dirty = True
        if pid in self._active_pols and not self.pol_index.sel_matches.get(pid):
            self._active_pols.discard(str(pid))
            self._scan(("pol", pid), None)

    # -- rule scanner ----------------------------------------------------------------------
    def _scan(self, owner: Hashable, obj: Policy | Profile | None) -> None:
        """The ipsets ``owner`` (an active policy or profile) needs now; reference counted."""
        want = ipsets_of(obj.inbound + obj.outbound) if obj is not None else {}
        have = self._owner_sets.get(owner, {})
        if want == have:
            return
        if want:
            self._owner_sets[owner] = want
        else:
            self._owner_sets.pop(owner, None)
        for uid, spec in want.items():
            if uid not in have:
                owners = self._set_owners.setdefault(uid, set())
                owners.add(owner)
                if len(owners) == 1:
                    self._activate_set(spec)
        for uid in have:
            if uid not in want:
                owners = self._set_owners.get(uid, set())
                owners.discard(owner)
                if not owners:
                    self._set_owners.pop(uid, None)
                    self._deactivate_set(uid)

    def _activate_set(self, spec: IPSetSpec) -> None:
        self._specs[spec.uid] = spec
        self._counts[spec.uid] = {}
        self._dirty_sets.add(spec.uid)
        if spec.service:
            return  # Kubernetes Services are not watched by this Felix: the set stays empty
        self.set_index.update_selector(spec.uid, parse_selector(spec.selector))

    def _deactivate_set(self, uid: str) -> None:
        self.set_index.delete_selector(uid)
        self._specs.pop(uid, None)
        self._counts.pop(uid, None)
        self._ipsets.pop(uid, None)
        self._dirty_sets.discard(uid)

    # -- ipset membership ----------------------------------------------------------------
    def _members_for(self, uid: str, item: Hashable) -> frozenset[str]:
        spec = self._specs[uid]
        kind, key = item  # type: ignore[misc]
        if kind == "ns":
            ns = self._nets.get(key)
            if ns is None or spec.named_port:
                return frozenset()
            return frozenset(n for n in (_v4(c) for c in ns.nets) if n)
        ep = self._eps.get(key)
        if ep is None:
            return frozenset()
        ips = [ip.split("/")[0] for ip in (_v4(c) for c in ep.ips) if ip]
        if not spec.named_port:
            return frozenset(f"{ip}/32" for ip in ips)
        ports = [p for p in ep.ports if p.name == spec.named_port and p.protocol == spec.protocol]
        return frozenset(f"{ip},{p.protocol}:{p.port}" for ip in ips for p in ports)

    def _add(self, uid: str, members: frozenset[str]) -> None:
        counts = self._counts[uid]
        for mem in members:
            counts[mem] = counts.get(mem, 0) + 1
        if members:
            self._dirty_sets.add(uid)

    def _remove(self, uid: str, members: frozenset[str]) -> None:
        counts = self._counts.get(uid)
        if counts is None:
            return
        for mem in members:
            n = counts.get(mem, 0) - 1
            if n > 0:
                counts[mem] = n
            else:
                counts.pop(mem, None)
        if members:
            self._dirty_sets.add(uid)

    def _set_match(self, uid: Hashable, item: Hashable) -> None:
        members = self._members_for(str(uid), item)
        self._contrib[(str(uid), item)] = members
        self._add(str(uid), members)

    def _set_unmatch(self, uid: Hashable, item: Hashable) -> None:
        self._remove(str(uid), self._contrib.pop((str(uid), item), frozenset()))

    def _update_set_item(self, item: Hashable, labels: Mapping[str, str], parents: tuple[str, ...]) -> None:
        before = set(self.set_index.selectors_of(item))
        self.set_index.update_item(item, labels, parents)
        for uid in before & self.set_index.selectors_of(item):
            old = self._contrib.get((str(uid), item), frozenset())
            new = self._members_for(str(uid), item)
            if new != old:
                self._remove(str(uid), old)
                self._add(str(uid), new)
                self._contrib[(str(uid), item)] = new

    def _delete_set_item(self, item: Hashable) -> None:
        self.set_index.delete_item(item)

    # -- output --------------------------------------------------------------------------
    def _endpoint_chains(self, key: str, cfg: RuleConfig) -> tuple[Chain, Chain, tuple[render.PolicyGroup, ...]]:
        ep = self._local[key]
        pids = sorted((self._pols[str(p)] for p in self.pol_index.selectors_of(key) if str(p) in self._pols),
                      key=Policy.sort_key)
        sels = {p.id: p.selector for p in pids}
        ingress = render.group_policies([p.id for p in pids if p.governs("ingress")], sels, "inbound")
        egress = render.group_policies([p.id for p in pids if p.governs("egress")], sels, "outbound")
        tw = make_chain(*render.endpoint_chain_rules("tw", ep.iface, ingress, ep.profiles, cfg))
        fw = make_chain(*render.endpoint_chain_rules("fw", ep.iface, egress, ep.profiles, cfg))
        groups = ingress + egress
        return tw, fw, groups, tuple(_group_chain(g, cfg) for g in groups if not g.inlined())

    def endpoint_chains(self, key: str) -> tuple[Chain, Chain] | None:
        """(``cali-tw-``, ``cali-fw-``) chains of a local endpoint as last calculated."""
        entry = self._ep_chains.get(key)
        return None if entry is None else (entry[0], entry[1])

    def policies_of(self, key: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(ingress, egress) policy IDs applying to a local endpoint, in order (for status and tests)."""
        entry = self._ep_chains.get(key)
        if entry is None:
            return (), ()
        groups = entry[2]
        return (tuple(p for g in groups if g.direction == "inbound" for p in g.policies),
                tuple(p for g in groups if g.direction == "outbound" for p in g.policies))

    def _filter_raw(self, inp: FelixInput, cfg: RuleConfig) -> tuple[TableState, TableState, dict[str, str],
                                                                      list[Endpoint]]:
        """The filter and raw tables, routes and local endpoints (recomputed only when chains change)."""
        if not self._tables_dirty and self._tables is not None:
            return self._tables
        endpoints = local_endpoints(inp)
        routes: dict[str, str] = {}
        for ep in endpoints:
            for ip in ep.ips:
                net = _v4(ip)
                if net is not None:
                    routes[net] = ep.iface
        for key in self._dirty_eps:
            if key in self._local:
                self._ep_chains[key] = self._endpoint_chains(key, cfg)
        self._dirty_eps.clear()
        filt_static, ins, app, raw_static, _ = _static_parts(cfg)
        f = TableState(chains=dict(filt_static), inserts=ins, appends=app)
        for ch in _dispatch(tuple(ep.iface for ep in endpoints), cfg):
            f.put(ch)
        profiles: set[str] = set()
        for ep in endpoints:
            tw, fw, _, group_chains = self._ep_chains[ep.key]
            f.put(tw)
            f.put(fw)
            for ch in group_chains:
                f.put(ch)
            profiles.update(ep.profiles)
        for pid in self._active_pols:
            if pid in self._pols:
                for ch in _policy_chains(self._pols[pid], cfg):
                    f.put(ch)
        missing = set()
        for name in profiles:
            if name not in self._profs:
                missing.add(name)
            for ch in _profile_chains(self._profile(name), cfg):
                f.put(ch)
        if missing - self.missing_profiles:
            log.warning("One or more endpoints uses a profile that doesn't exist; generating default-drop "
                        "profile: %s", ", ".join(sorted(missing - self.missing_profiles)))
        self.missing_profiles = missing
        spoof = {ep.iface: ep.allow_spoofed for ep in endpoints if ep.allow_spoofed}
        raw = TableState(chains=dict(raw_static), inserts=static.raw_hooks())
        if spoof:
            raw.add(static.RPF_SKIP, static.rpf_skip_rules(spoof))
        self._tables = (prune(f), prune(raw), routes, endpoints)
        self._tables_dirty = False
        return self._tables

    def _desired(self, inp: FelixInput, cfg: RuleConfig, ipip: bool) -> Desired:
        s = inp.settings
        me = next((n for n in inp.nodes if n.name == inp.hostname), None)
        tunnel = None
        tunnel_mtu = encap.ipip_mtu(inp)
        vx = encap.plan(inp)
        if ipip and me is not None and me.tunnel_addr:
            tunnel = TunnelWant(str(ipaddress.IPv4Address(me.tunnel_addr.split("/")[0])), tunnel_mtu)
        f, raw, routes, endpoints = self._filter_raw(inp, cfg)
        nat_out = any(p.nat_outgoing and not p.disabled for p in inp.pools)
        tunnels = (("tunl0",) if tunnel is not None else ()) + ((vx.device.name,) if vx.device is not None else ())
        nat, mangle = _nat_mangle(cfg, nat_out, tunnels, s.nat_random_fully)

        host_ips = frozenset(n.ip for n in inp.nodes if n.ip)
        active_pools = [p for p in inp.pools if not p.disabled]
        ipsets = {
            IPSET_ALL_POOLS: IPSet(IPSET_ALL_POOLS, "hash:net", frozenset(_net(p.cidr) for p in inp.pools)),
            IPSET_MASQ_POOLS: IPSet(IPSET_MASQ_POOLS, "hash:net",
                                    frozenset(_net(p.cidr) for p in active_pools if p.nat_outgoing)),
            IPSET_THIS_HOST: IPSet(IPSET_THIS_HOST, "hash:ip", inp.host_ips),
        }
        if ipip:  # the IPIP manager's set (every node address)
            ipsets[IPSET_ALL_HOSTS] = IPSet(IPSET_ALL_HOSTS, "hash:net", host_ips)
        if vx.enabled:  # the VXLAN manager's set (the remote VTEPs' node addresses)
            ipsets[IPSET_ALL_VXLAN] = IPSet(IPSET_ALL_VXLAN, "hash:net", vx.allowed_sources)
        for uid in self._dirty_sets:
            spec = self._specs.get(uid)
            if spec is not None:
                self._ipsets[uid] = IPSet(ipset_name(uid), spec.ipset_type, frozenset(self._counts[uid]))
        self._dirty_sets.clear()
        for ipset in self._ipsets.values():
            ipsets[ipset.name] = ipset
        return Desired(
            routes=routes,
            interfaces=frozenset(ep.iface for ep in endpoints),
            ipsets=ipsets,
            tables={"filter": f, "nat": nat, "raw": raw, "mangle": mangle},
            tunnel=tunnel,
            ipip_sources=host_ips,
            mtu_file=encap.pod_mtu(inp),
            interface_prefix=s.interface_prefix,
            vxlan=vx,
        )


def _wep_labels(ep: Endpoint) -> Mapping[str, str]:
    return ep.labels
