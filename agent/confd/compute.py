"""confd as a pure function: datastore state -> the speaker's configuration.

Reproduces what Calico's confd templates (bird.cfg, bird_aggr.cfg, bird_ipam.cfg) tell BIRD
(calico.md section 4): mesh peers, global / per-node BGPPeers, route-reflector topology,
exported prefixes, and how received routes reach the kernel.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, ip_address

from agent.bgp.config import (
    GLOBAL,
    MESH,
    NODE,
    KernelPolicy,
    PeerConfig,
    SpeakerConfig,
    mesh_name,
    passive_towards,
)
from agent.bgp.fsm import Timers
from datastore.duration import parse_duration as go_duration
from ipam.ipam import borrowed

DEFAULT_AS = 64512


class ConfdError(ValueError):
    """The datastore holds something confd cannot turn into configuration."""


@dataclass
class State:
    """The resources confd reads (any objects shaped like datastore.resources)."""

    nodes: dict[str, object] = field(default_factory=dict)
    bgp_configs: dict[str, object] = field(default_factory=dict)
    bgp_peers: dict[str, object] = field(default_factory=dict)
    pools: dict[str, object] = field(default_factory=dict)
    affinities: dict[str, object] = field(default_factory=dict)
    blocks: dict[str, object] = field(default_factory=dict)

    #: the node whose configuration is computed from this state ("": any; see relevant())
    node_name: str = ""

    KINDS = {"Node": "nodes", "BGPConfiguration": "bgp_configs", "BGPPeer": "bgp_peers",
             "IPPool": "pools", "BlockAffinity": "affinities", "IPAMBlock": "blocks"}

    def apply_event(self, kind: str, name: str, obj: object | None) -> bool:
        """ADDED/MODIFIED (obj) or DELETED (None) of one resource. Returns False when the
        change cannot alter what :func:`compute` makes of the state for ``node_name`` (only
        metadata such as the resourceVersion changed, a Node's tunnel address, another node's
        block affinity, an allocation of a block's own node), so the caller need not compute
        again."""
        table = getattr(self, self.KINDS[kind])
        old = table.pop(name, None) if obj is None else table.get(name)
        if obj is not None:
            table[name] = obj
        before = None if old is None else relevant(kind, old, self.node_name)
        after = None if obj is None else relevant(kind, obj, self.node_name)
        return before != after


def relevant(kind: str, obj: object, node_name: str = "") -> object:
    """What :func:`compute` reads of a resource (None: nothing, for ``node_name``). Every
    field compute() reads must be here: a change outside it computes nothing.

    - Node: its labels and spec.bgp's addresses, AS number and route reflector cluster ID
      (not its IPIP tunnel address, VXLAN fields, addresses or orchRefs);
    - BlockAffinity: the whole spec, only for ``node_name``'s own (all when it is "");
    - IPAMBlock: its CIDR, affinity, deletion and the allocations that belong to another
      node than the block's (borrowed addresses; tunnel addresses are never originated);
    - the others: labels and spec.
    """
    spec = getattr(obj, "spec", None)
    labels = getattr(getattr(obj, "metadata", None), "labels", None)
    if spec is None:
        return (labels, None)
    if kind == "Node":
        bgp = spec.bgp
        if bgp is None:
            return (labels, None)
        return (labels, bgp.ipv4_address, bgp.ipv6_address, bgp.as_number, bgp.route_reflector_cluster_id)
    if kind == "BlockAffinity":
        return spec if not node_name or spec.node == node_name else None
    if kind != "IPAMBlock":
        return (labels, spec)
    return (spec.cidr, spec.affinity, bool(spec.deleted), borrowed(spec))


def _duration(text: str | None, what: str) -> float | None:
    """A Go duration as Calico stores it ('30s', '2m0s', '1h') -> seconds; None if unset."""
    if text in (None, ""):
        return None
    try:
        return go_duration(text)
    except ValueError as exc:
        raise ConfdError(f"{what}: invalid duration {text!r} ({exc}; expected e.g. '30s', '2m0s')") from None


def _labels(obj: object) -> dict:
    return dict(getattr(obj.metadata, "labels", None) or {})


# compute() runs on every datastore event and reads every node and block: in a 50-node
# lab ~110 times per node, ~1.5 million ipaddress parses across the lab's start. The
# addresses and CIDRs are parsed once per distinct string (ipaddress objects are immutable).
@functools.lru_cache(maxsize=4096)
def _interface(text: str) -> IPv4Interface:
    return IPv4Interface(text)


@functools.lru_cache(maxsize=4096)
def _network(text: str) -> IPv4Network:
    return IPv4Network(text)


def node_ip(node: object) -> IPv4Interface | None:
    """Node.spec.bgp.ipv4Address as an interface (address + subnet), or None."""
    bgp = getattr(node.spec, "bgp", None)
    addr = getattr(bgp, "ipv4_address", None) if bgp else None
    if not addr:
        return None
    try:
        return _interface(addr)
    except ValueError as exc:
        raise ConfdError(f"Node {node.metadata.name}: invalid spec.bgp.ipv4Address "
                         f"{addr!r}") from exc


@functools.lru_cache(maxsize=4096)
def _mesh_peer(address: str, my_ip: str, asn: int, port: int, restart: float | None) -> PeerConfig:
    """The mesh peering towards a node whose ``spec.bgp.ipv4Address`` is ``address``, seen
    from ``my_ip``. compute() runs on every batch of events and meets every node each time:
    the addresses, names and passive rule are worked out once per distinct peer."""
    ip = _interface(address).ip
    return PeerConfig(mesh_name(ip), ip, asn, MESH, port=port, passive=passive_towards(my_ip, ip),
                      graceful_restart_time=restart)


def _node_as(node: object, default_as: int) -> int:
    bgp = getattr(node.spec, "bgp", None)
    return (getattr(bgp, "as_number", None) if bgp else None) or default_as


def _cluster_id(node: object) -> str | None:
    bgp = getattr(node.spec, "bgp", None)
    return (getattr(bgp, "route_reflector_cluster_id", None) if bgp else None) or None


def _parse(text: str, what: str):
    from datastore.selector import SelectorError, parse_selector

    try:
        return parse_selector(text)
    except SelectorError as exc:
        raise ConfdError(f"{what}: invalid selector {text!r}: {exc}") from exc


def _peer_ip(text: str, what: str) -> tuple[IPv4Address, int]:
    host, port = text, 179
    if text.count(":") == 1:
        host, p = text.split(":")
        if not p.isdigit() or not 0 < int(p) < 65536:
            raise ConfdError(f"{what}: invalid port in peerIP {text!r}")
        port = int(p)
    try:
        ip = ip_address(host.strip("[]"))
    except ValueError as exc:
        raise ConfdError(f"{what}: invalid peerIP {text!r}") from exc
    if not isinstance(ip, IPv4Address):
        raise ConfdError(f"{what}: IPv6 peers are not supported ({text!r})")
    return ip, port


def is_local_side(spec: object, node_name: str, labels: dict, what: str) -> bool:
    """Whether ``node_name`` (with ``labels``) is on the BGPPeer's own side: named by
    ``spec.node``, matched by ``spec.nodeSelector``, or any node when both are empty."""
    if spec.node:
        return spec.node == node_name
    if spec.node_selector:
        return _parse(spec.node_selector, f"{what}: spec.nodeSelector").matches(labels)
    return True


def selector_peers(spec: object, node_name: str, st: State, what: str) -> list[str]:
    """Names of the Calico nodes ``node_name`` peers with through a BGPPeer with
    ``peerSelector`` (sorted; itself and nodes without a BGP address left out).

    Forward: a local-side node peers with every node matching peerSelector. Reverse (as
    Calico's confd does unless ``reversePeering: Manual``): a node matching peerSelector
    peers with every local-side node, so a route reflector picked by peerSelector gets
    its clients."""
    me = st.nodes[node_name]
    sel = _parse(spec.peer_selector, f"{what}: spec.peerSelector")
    mode = getattr(spec, "reverse_peering", None)
    if mode not in (None, "", "Auto", "Manual"):
        raise ConfdError(f"{what}: invalid spec.reversePeering {mode!r} "
                         f"(expected Auto or Manual)")
    forward = is_local_side(spec, node_name, _labels(me), what)
    reverse = mode != "Manual" and sel.matches(_labels(me))
    out = []
    for oname in sorted(st.nodes):
        other = st.nodes[oname]
        if oname == node_name or node_ip(other) is None:
            continue
        if (forward and sel.matches(_labels(other))) or \
                (reverse and is_local_side(spec, oname, _labels(other), what)):
            out.append(oname)
    return out


def compute(node_name: str, st: State, timers: Timers | None = None) -> SpeakerConfig | None:
    """The speaker configuration for ``node_name``; None while the node has no BGP address."""
    me = st.nodes.get(node_name)
    if me is None:
        return None
    my_if = node_ip(me)
    if my_if is None:
        return None
    my_ip = my_if.ip
    default_cfg = st.bgp_configs.get("default")
    global_as = (getattr(default_cfg.spec, "as_number", None) if default_cfg else None) or DEFAULT_AS
    my_as = _node_as(me, global_as)
    mesh_on = getattr(default_cfg.spec, "node_to_node_mesh_enabled", None) if default_cfg else None
    mesh_on = True if mesh_on is None else bool(mesh_on)
    def port_of(name: str) -> int:
        ncfg = st.bgp_configs.get(f"node.{name}")
        return int((getattr(ncfg.spec, "listen_port", None) if ncfg else None)
                   or (getattr(default_cfg.spec, "listen_port", None) if default_cfg else None)
                   or 179)

    listen_port = port_of(node_name)
    mesh_restart = _duration(getattr(default_cfg.spec, "node_mesh_max_restart_time", None)
                                  if default_cfg else None, "BGPConfiguration default")
    bind_mode = getattr(default_cfg.spec, "bind_mode", None) if default_cfg else None
    listen_address = str(my_ip) if bind_mode == "NodeIP" else "0.0.0.0"
    my_cid = _cluster_id(me)
    my_labels = _labels(me)
    peers: dict[IPv4Address, PeerConfig] = {}

    def add(pc: PeerConfig) -> None:
        if pc.address == my_ip or pc.address in peers:
            return
        peers[pc.address] = pc

    def rr_client(peer_as: int, peer_cid: str | None) -> bool:
        return bool(my_cid) and peer_as == my_as and peer_cid != my_cid

    # node-to-node mesh: every other node with an address that is not a route reflector
    if mesh_on and not my_cid:
        my_text = str(my_ip)
        for name in sorted(st.nodes):
            other = st.nodes[name]
            if name == node_name or _cluster_id(other):
                continue
            if node_ip(other) is None:  # (and a ConfdError naming a node with a bad address)
                continue
            add(_mesh_peer(other.spec.bgp.ipv4_address, my_text, _node_as(other, global_as),
                           port_of(name), mesh_restart))

    # explicit BGPPeers. A peerSelector peering works in both directions, as Calico's confd
    # makes it (unless spec.reversePeering is Manual): a "local" node (spec.node, or matching
    # nodeSelector, or every node) peers with each node matching peerSelector, and each node
    # matching peerSelector peers with every local node. Never with itself.
    for pname in sorted(st.bgp_peers):
        spec = st.bgp_peers[pname].spec
        what = f"BGPPeer {pname}"
        if not spec.peer_ip and not spec.peer_selector:
            raise ConfdError(f"{what}: needs spec.peerIP or spec.peerSelector")
        if spec.peer_selector and (spec.peer_ip or spec.as_number):
            field_ = "peerIP" if spec.peer_ip else "asNumber"
            raise ConfdError(f"{what}: spec.{field_} must be empty when spec.peerSelector is "
                             f"set (the selected nodes' own addresses and AS numbers are used)")
        keepalive = _duration(spec.keepalive_time, what)
        restart = _duration(spec.max_restart_time, what)
        kind = NODE if spec.node else GLOBAL
        if spec.peer_ip:
            if not is_local_side(spec, node_name, my_labels, what):
                continue
            ip, port = _peer_ip(spec.peer_ip, what)
            if spec.as_number is None:
                raise ConfdError(f"{what}: spec.asNumber is required with peerIP")
            calico_peer = next((n for n in st.nodes.values()
                                if (node_ip(n) or IPv4Interface("0.0.0.0/32")).ip == ip), None)
            cid = _cluster_id(calico_peer) if calico_peer is not None else None
            prefix = "Node_" if kind == NODE else "Global_"
            name = prefix + str(ip).replace(".", "_") + (f"_port_{port}" if port != 179 else "")
            add(PeerConfig(name, ip, int(spec.as_number), kind, port=port,
                           passive=calico_peer is not None and passive_towards(my_ip, ip),
                           rr_client=rr_client(int(spec.as_number), cid), keepalive=keepalive,
                           graceful_restart_time=restart, multihop=True))
            continue
        for oname in selector_peers(spec, node_name, st, what):
            other = st.nodes[oname]
            oip = node_ip(other).ip
            oas = _node_as(other, global_as)
            add(PeerConfig("Node_" + str(oip).replace(".", "_"), oip, oas, NODE,
                           port=port_of(oname), passive=passive_towards(my_ip, oip),
                           rr_client=rr_client(oas, _cluster_id(other)),
                           keepalive=keepalive, graceful_restart_time=restart))

    # pools
    ipip, cross, reject, export, all_pools = [], [], [], [], []
    for pname in sorted(st.pools):
        spec = st.pools[pname].spec
        try:
            net = _network(spec.cidr)
        except ValueError:
            continue  # IPv6 pools are not ours
        all_pools.append(net)
        if spec.vxlan_mode in ("Always", "CrossSubnet"):
            reject.append(net)
        elif spec.ipip_mode == "Always":
            ipip.append(net)
        elif spec.ipip_mode == "CrossSubnet":
            cross.append(net)
        if not spec.disable_bgp_export:
            export.append(net)

    # what this node originates: whole affine blocks (blackholed), borrowed /32s
    originate: dict[IPv4Network, bool] = {}
    for aff in st.affinities.values():
        s = aff.spec
        if s.node != node_name or s.deleted or s.state not in ("confirmed", ""):
            continue
        if getattr(s, "type", "host") not in ("host", ""):
            continue
        net = _network(s.cidr)
        if net.prefixlen == 32:
            continue
        originate[net] = True
    for blk in st.blocks.values():
        s = blk.spec
        if s.affinity == f"host:{node_name}" or s.deleted:
            continue
        if not any((a.secondary or {}).get("node") == node_name for a in s.attributes):
            continue  # nothing in this block was borrowed by this node
        base = _network(s.cidr)
        for ordinal, node in borrowed(s):
            if node == node_name:
                originate.setdefault(IPv4Network(base.network_address + ordinal), False)

    return SpeakerConfig(
        router_id=my_ip, local_as=my_as, local_address=my_ip,
        peers=tuple(sorted(peers.values(), key=lambda p: p.name)),
        originate=tuple(sorted(originate.items())),
        export_pools=tuple(export),
        kernel=KernelPolicy(ipip_pools=tuple(ipip), cross_subnet_pools=tuple(cross),
                            reject_pools=tuple(reject), local_subnet=my_if.network),
        cluster_id=IPv4Address(my_cid) if my_cid else None,
        listen_port=int(listen_port), listen_address=listen_address, timers=timers or Timers())


def _secs(option: str, value: float) -> str:
    """'  <option> <n>;' in whole seconds as BIRD wants them; a sub-second lab timer is
    rounded up, with the real value in a comment."""
    whole = max(1, math.ceil(value))
    note = "" if whole == value else f"  # the speaker uses {value:g} s"
    return f"  {option} {whole};{note}"


def render_bird_cfg(cfg: SpeakerConfig) -> str:
    """An equivalent bird.cfg for the user to read. It parses with stock BIRD 2
    (``bird -p -c FILE``); Calico's BIRD-only ``krt_tunnel`` lines appear as comments."""
    t = cfg.timers
    tun = cfg.kernel.tunnel_device
    out = ["# Generated by calicolab confd: equivalent of the running speaker's configuration",
           f"router id {cfg.router_id};", "",
           "# How received routes reach the kernel (Calico's BIRD sets krt_tunnel, which",
           f"# installs 'via <next hop> dev {tun} onlink'; stock BIRD has no such attribute).",
           "filter calico_kernel_programming {"]
    for p in cfg.kernel.reject_pools:
        out.append(f"  if (net ~ {p}) then reject;  # VXLAN pool: Felix programs it")
    for p in cfg.kernel.ipip_pools:
        out.append(f'  if (net ~ {p}) then accept;  # krt_tunnel = "{tun}"')
    for p in cfg.kernel.cross_subnet_pools:
        out.append(f"  if (net ~ {p}) then accept;  # krt_tunnel = \"\" if the next hop is in "
                   f'{cfg.kernel.local_subnet}, else "{tun}"')
    out += ["  accept;", "}", "",
            "protocol kernel {", "  learn; persist; scan time 2; graceful restart;",
            "  merge paths on; metric 0;",
            "  ipv4 { import all; export filter calico_kernel_programming; };", "}",
            "protocol device { scan time 2; }",
            "# interface routes, so BGP next hops resolve (gateway recursive)",
            'protocol direct { ipv4; interface -"cali*", -"kube-ipvs*", "*"; }', "",
            "# this node's affine blocks (and nothing inside them is exported on its own)",
            "protocol static {", "  ipv4;"]
    out += [f"  route {p} blackhole;" for p, bh in cfg.originate if bh]
    out += ["}", ""]
    borrowed = [p for p, bh in cfg.originate if not bh]
    if borrowed:
        out += ["# borrowed addresses, exported from the kernel's /32 routes to the pods:"]
        out += [f"#   {p}" for p in borrowed]
        out += [""]
    out += ["function calico_export_to_bgp_peers() {"]
    out += [f"  if (net ~ {p}) then accept;" for p in cfg.export_pools]
    out += ["  reject;", "}", "",
            "template bgp bgp_template {",
            '  description "Connection to BGP peer";',
            f"  local as {cfg.local_as};", "  graceful restart;",
            _secs("hold time", t.hold) if t.hold else "  hold time 0;",
            _secs("connect delay time", t.connect_delay),
            _secs("connect retry time", t.connect_retry),
            f"  error wait time {max(1, math.ceil(t.error_wait_min))},"
            f"{max(1, math.ceil(t.error_wait_max))};",
            "}", ""]
    for p in cfg.peers:
        out.append(f"# {p.peer_type}")
        out.append(f"protocol bgp {p.name} from bgp_template {{")
        out.append(f"  neighbor {p.address}{f' port {p.port}' if p.port != 179 else ''} "
                   f"as {p.asn};")
        out.append(f"  source address {cfg.local_address};")
        out.append("  ipv4 { import all; add paths on; gateway recursive; "
                   "export filter { calico_export_to_bgp_peers(); reject; }; };")
        if p.passive:
            out.append("  passive on;")
        if p.multihop:
            out.append("  multihop;")
        if p.rr_client and cfg.cluster_id:
            out.append(f"  rr client; rr cluster id {cfg.cluster_id};")
        if p.keepalive:
            ka = min(p.keepalive, t.hold / 3) if t.hold else p.keepalive  # as the speaker
            out.append(_secs("keepalive time", ka))
        if p.graceful_restart_time:
            out.append(_secs("graceful restart time", p.graceful_restart_time))
        out += ["}", ""]
    return "\n".join(out)
