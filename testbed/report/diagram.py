"""SVG pictures of a lab and of a flow, from plain data, by our own code.

:class:`LabModel` is the data: segments, nodes (address, blocks, tunnel
address, pods), routers, external hosts, BGP sessions and IPIP tunnels. Build
it by hand, from a dict (:meth:`LabModel.from_dict`, e.g. JSON written by the
lab) or from a :class:`testbed.lab.topology.Topology` (:meth:`LabModel.from_topology`).

:func:`render_lab_svg` draws the lab: node boxes with their pods, BGP sessions
as arcs above the nodes, IPIP tunnels as dashed arcs below, and the L2
segments as bars that nodes, routers and external hosts hang from.
:func:`render_ladder_svg` draws a flow hop by hop: one column per interface,
one row per packet sighting, a line joining sightings of the same packet.

Every element carries ``class`` and ``data-*`` attributes (``data-name``,
``data-ip``...) so tests and scripts can find it in the SVG. Pure logic: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape, quoteattr

__all__ = ["PodBox", "NodeBox", "HostBox", "Segment", "Session", "LabModel",
           "render_lab_svg", "render_ladder_svg", "LadderRow", "DiagramError"]

FONT = "font-family='DejaVu Sans, Verdana, sans-serif'"
NODE_W, NODE_GAP, POD_H, HOST_W = 250, 40, 40, 170
MARGIN = 24
COLORS = {"bgp": "#1565c0", "bgp_down": "#c62828", "tunnel": "#ef6c00", "segment": "#546e7a",
          "node": "#37474f", "node_fill": "#f5f7fb", "pod": "#2e7d32", "pod_fill": "#e8f5e9",
          "host_fill": "#fff8e1", "host": "#8d6e63", "hl": "#d81b60", "drop": "#c62828"}


class DiagramError(ValueError):
    """The lab model is inconsistent (unknown node in a session, bad address...)."""


def _check_ip(value: str, what: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise DiagramError(f"{what}: not an IP address: {value!r}") from None
    return value


@dataclass
class PodBox:
    """A pod as drawn: name, IP, host-side interface (``cali...``)."""

    name: str
    ip: str
    iface: str = ""
    namespace: str = "default"

    def __post_init__(self) -> None:
        _check_ip(self.ip, f"pod {self.name}")


@dataclass
class NodeBox:
    """A Kubernetes node: address on its segment, IPAM blocks, tunnel, pods."""

    name: str
    address: str
    segment: str = ""
    role: str = "worker"
    blocks: list[str] = field(default_factory=list)
    tunnel_ip: str | None = None
    tunnel_dev: str = "tunl0"
    datapath: str = ""  # "kernel" or "userspace" (calicolab status)
    ready: bool | None = None
    pods: list[PodBox] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_ip(self.address, f"node {self.name}")
        if self.tunnel_ip:
            _check_ip(self.tunnel_ip, f"node {self.name} tunnel")
        for b in self.blocks:
            try:
                ipaddress.ip_network(b)
            except ValueError:
                raise DiagramError(f"node {self.name}: bad block {b!r}") from None


@dataclass
class HostBox:
    """A router or an external host: ``addresses`` maps segment name -> address."""

    name: str
    addresses: dict[str, str]
    kind: str = "external"  # or "router"


@dataclass
class Segment:
    """An L2 segment (one bridge)."""

    name: str
    cidr: str


@dataclass
class Session:
    """A BGP session between two nodes (names), with its state as ``calicoctl node status``."""

    a: str
    b: str
    state: str = "Established"


@dataclass
class LabModel:
    """Everything the lab diagram shows. ``bgp``/``tunnels`` None = full mesh of the nodes."""

    name: str
    nodes: list[NodeBox]
    segments: list[Segment] = field(default_factory=list)
    hosts: list[HostBox] = field(default_factory=list)
    bgp: list[Session] | None = None
    tunnels: list[tuple[str, str]] | None = None
    pool: str = ""
    mode: str = "IPIP Always"

    def __post_init__(self) -> None:
        names = [n.name for n in self.nodes]
        if not names:
            raise DiagramError(f"lab {self.name!r} has no nodes")
        if len(set(names)) != len(names):
            raise DiagramError(f"lab {self.name!r}: duplicate node names in {names}")
        seg_names = {s.name for s in self.segments}
        for n in self.nodes:
            if n.segment and self.segments and n.segment not in seg_names:
                raise DiagramError(f"node {n.name}: unknown segment {n.segment!r}")
        for s in self.sessions():
            for end in (s.a, s.b):
                if end not in names:
                    raise DiagramError(f"BGP session {s.a}-{s.b}: unknown node {end!r}")
        for a, b in self.tunnel_pairs():
            for end in (a, b):
                if end not in names:
                    raise DiagramError(f"tunnel {a}-{b}: unknown node {end!r}")

    def sessions(self) -> list[Session]:
        """The BGP sessions drawn (the full mesh when none were given)."""
        if self.bgp is not None:
            return self.bgp
        ns = [n.name for n in self.nodes]
        return [Session(a, b) for i, a in enumerate(ns) for b in ns[i + 1:]]

    def tunnel_pairs(self) -> list[tuple[str, str]]:
        """The tunnels drawn (when none were given: every node pair in an IPIP or VXLAN
        mode; with CrossSubnet, the pairs on different segments)."""
        if self.tunnels is not None:
            return self.tunnels
        if self.tunnel_kind is None:
            return []
        cross = "CrossSubnet" in self.mode
        ns = self.nodes
        return [(a.name, b.name) for i, a in enumerate(ns) for b in ns[i + 1:]
                if not cross or a.segment != b.segment]

    @property
    def tunnel_kind(self) -> str | None:
        """"VXLAN", "IPIP" or None (no encapsulation), from the mode."""
        for kind in ("VXLAN", "IPIP"):
            if kind in self.mode:
                return kind
        return None

    def node(self, name: str) -> NodeBox:
        """The node called ``name``."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabModel:
        """Build from plain data (as JSON): keys as the dataclass fields; sessions as
        ``{"a","b","state"}`` dicts, tunnels as ``[a, b]`` pairs."""
        try:
            nodes = [NodeBox(**{**n, "pods": [PodBox(**p) for p in n.get("pods", [])]})
                     for n in d["nodes"]]
            segs = [Segment(**s) for s in d.get("segments", [])]
            hosts = [HostBox(**h) for h in d.get("hosts", [])]
            bgp = [Session(**s) for s in d["bgp"]] if d.get("bgp") is not None else None
            tunnels = ([tuple(t) for t in d["tunnels"]] if d.get("tunnels") is not None
                       else None)
        except (KeyError, TypeError) as exc:
            raise DiagramError(f"bad lab model data: {exc}") from None
        return cls(name=d.get("name", "lab"), nodes=nodes, segments=segs, hosts=hosts, bgp=bgp,
                   tunnels=tunnels, pool=d.get("pool", ""), mode=d.get("mode", "IPIP Always"))

    @classmethod
    def from_topology(cls, topo: Any) -> LabModel:
        """Nodes, segments, routers and external hosts of a :class:`testbed.lab.topology.Topology`
        (no pods or blocks yet: fill them in from the running lab)."""
        from testbed.modes import Mode

        pool = topo.calico.pool
        mode = Mode(pool.ipip_mode, pool.vxlan_mode).name
        hosts = [HostBox(r.name, {i.segment: str(i.address) for i in r.interfaces}, "router")
                 for r in topo.routers]
        hosts += [HostBox(e.name, {e.segment: str(e.address)}, "external") for e in topo.external]
        return cls(name=topo.name,
                   nodes=[NodeBox(n.name, str(n.address), n.segment, n.role) for n in topo.nodes],
                   segments=[Segment(s.name, str(s.cidr)) for s in topo.segments],
                   hosts=hosts, bgp=None if topo.calico.bgp.mesh and
                   topo.calico_node_env()["CALICO_NETWORKING_BACKEND"] == "bird" else [],
                   pool=str(pool.cidr), mode=mode)


# ----------------------------------------------------------------------------- lab SVG


def _t(x: float, y: float, text: str, size: int = 12, anchor: str = "start",
       weight: str = "normal", color: str = "#263238", cls: str = "", extra: str = "") -> str:
    c = f" class={quoteattr(cls)}" if cls else ""
    return (f"<text x='{x:.0f}' y='{y:.0f}' font-size='{size}' text-anchor='{anchor}' "
            f"font-weight='{weight}' fill='{color}' {FONT}{c}{extra}>{escape(text)}</text>")


def _title(full: str) -> str:
    """A data attribute holding the untruncated text (for readers and tests)."""
    return f" data-full={quoteattr(full)}"


def render_lab_svg(model: LabModel, highlight: Iterable[str] = ()) -> str:
    """The lab as a standalone SVG document (a string).

    ``highlight``: names of nodes, pods or hosts to outline (e.g. a flow's ends).
    """
    hl = set(highlight)
    n = len(model.nodes)
    max_pods = max((len(nd.pods) for nd in model.nodes), default=0)
    node_h = 92 + max(1, max_pods) * (POD_H + 6)
    arc_band = 34 + 22 * max(0, n - 2) + 18
    title_h = 44
    top = title_h + arc_band
    xs = [MARGIN + i * (NODE_W + NODE_GAP) for i in range(n)]
    hosts_x0 = MARGIN + n * (NODE_W + NODE_GAP)
    width = hosts_x0 + len(model.hosts) * (HOST_W + NODE_GAP) + MARGIN - NODE_GAP
    width = max(width, 640)
    tunnel_band = 30 + 16 * max(0, n - 2) if model.tunnel_pairs() else 10
    seg_y0 = top + node_h + tunnel_band + 30
    segs = model.segments or [Segment(model.nodes[0].segment or "lan", "")]
    seg_y = {s.name: seg_y0 + i * 44 for i, s in enumerate(segs)}
    height = seg_y0 + 44 * len(segs) + 10
    out: list[str] = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}' class='lab' data-name={quoteattr(model.name)}>",
        f"<rect x='0' y='0' width='{width}' height='{height}' fill='white'/>",
        _t(MARGIN, 28, f"lab {model.name}", 18, weight="bold"),
        _t(MARGIN + 12 + 11 * len(model.name) + 40, 28,
           " · ".join(x for x in (f"pool {model.pool}" if model.pool else "", model.mode,
                                  f"{len(model.sessions())} BGP session(s)") if x), 13,
           color="#546e7a"),
    ]
    centers = {nd.name: xs[i] + NODE_W / 2 for i, nd in enumerate(model.nodes)}
    # BGP sessions: arcs above the nodes
    for s in model.sessions():
        x1, x2 = sorted((centers[s.a], centers[s.b]))
        span = round((x2 - x1) / (NODE_W + NODE_GAP))
        h = 30 + 22 * (span - 1)
        up = s.state.lower() in ("established", "up")
        color = COLORS["bgp"] if up else COLORS["bgp_down"]
        dash = "" if up else " stroke-dasharray='6 4'"
        out.append(f"<path class='bgp' data-a={quoteattr(s.a)} data-b={quoteattr(s.b)} "
                   f"data-state={quoteattr(s.state)} d='M {x1:.0f} {top} C {x1:.0f} {top - h * 1.3:.0f} "
                   f"{x2:.0f} {top - h * 1.3:.0f} {x2:.0f} {top}' fill='none' stroke='{color}' "
                   f"stroke-width='2'{dash}/>")
        out.append(_t((x1 + x2) / 2, top - h - 2, f"BGP {s.state}", 10, "middle", color=color,
                      cls="bgp-label"))
    # node boxes with pods
    for i, nd in enumerate(model.nodes):
        x = xs[i]
        stroke = COLORS["hl"] if nd.name in hl else COLORS["node"]
        out.append(f"<g class='node' data-name={quoteattr(nd.name)} "
                   f"data-ip={quoteattr(nd.address)}>")
        out.append(f"<rect x='{x}' y='{top}' width='{NODE_W}' height='{node_h}' rx='8' "
                   f"fill='{COLORS['node_fill']}' stroke='{stroke}' stroke-width='2'/>")
        ready = "" if nd.ready is None else (" · Ready" if nd.ready else " · NotReady")
        out.append(_t(x + 10, top + 20, nd.name, 15, weight="bold"))
        out.append(_t(x + NODE_W - 10, top + 20, f"{nd.role}{ready}", 10, "end", color="#607d8b"))
        out.append(_t(x + 10, top + 38, f"eth0 {nd.address}", 12))
        blocks = ", ".join(nd.blocks) or "no block yet"
        out.append(_t(x + 10, top + 54, f"block {blocks}", 11, color="#455a64"))
        tun = f"{nd.tunnel_dev} {nd.tunnel_ip}" if nd.tunnel_ip else f"{nd.tunnel_dev} -"
        if nd.datapath:
            tun += f" ({nd.datapath})"
        out.append(_t(x + 10, top + 70, tun, 11, color=COLORS["tunnel"]))
        py = top + 82
        if not nd.pods:
            out.append(_t(x + 12, py + 24, "no pods", 11, color="#90a4ae"))
        for pod in nd.pods:
            pstroke = COLORS["hl"] if pod.name in hl else COLORS["pod"]
            out.append(f"<g class='pod' data-name={quoteattr(pod.name)} "
                       f"data-ip={quoteattr(pod.ip)} data-node={quoteattr(nd.name)}>")
            out.append(f"<rect x='{x + 10}' y='{py}' width='{NODE_W - 20}' height='{POD_H}' "
                       f"rx='6' fill='{COLORS['pod_fill']}' stroke='{pstroke}' stroke-width='1.5'/>")
            name = pod.name if len(pod.name) <= 28 else pod.name[:27] + "…"
            out.append(_t(x + 18, py + 16, name, 12, weight="bold", extra=_title(pod.name)))
            out.append(_t(x + NODE_W - 18, py + 33, pod.ip, 12, "end"))
            if pod.iface:
                out.append(_t(x + 18, py + 32, pod.iface, 10, color="#558b2f"))
            out.append("</g>")
            py += POD_H + 6
        out.append("</g>")
    # tunnels (IPIP or VXLAN): dashed arcs below the nodes, between the tunnel devices
    bottom = top + node_h
    for a, b in model.tunnel_pairs():
        x1, x2 = sorted((centers[a] - NODE_W / 4, centers[b] - NODE_W / 4))
        span = round((x2 - x1) / (NODE_W + NODE_GAP))
        h = 18 + 16 * (span - 1)
        out.append(f"<path class='tunnel' data-a={quoteattr(a)} data-b={quoteattr(b)} "
                   f"d='M {x1:.0f} {bottom} C {x1:.0f} {bottom + h * 1.3:.0f} {x2:.0f} "
                   f"{bottom + h * 1.3:.0f} {x2:.0f} {bottom}' fill='none' "
                   f"stroke='{COLORS['tunnel']}' stroke-width='2' stroke-dasharray='5 4'/>")
        out.append(_t((x1 + x2) / 2, bottom + h + 12, model.tunnel_kind or "tunnel", 9, "middle",
                      color=COLORS["tunnel"], cls="tunnel-label"))
    # segments and attachments
    for s in segs:
        y = seg_y[s.name]
        out.append(f"<g class='segment' data-name={quoteattr(s.name)}>"
                   f"<rect x='{MARGIN}' y='{y}' width='{width - 2 * MARGIN}' height='8' rx='4' "
                   f"fill='{COLORS['segment']}'/>"
                   + _t(width - MARGIN, y + 24, f"{s.name} {s.cidr}".strip(), 12, "end",
                        color=COLORS["segment"]) + "</g>")
    def attach(x: float, y1: float, y2: float, cls: str = "attach") -> None:
        """A vertical line from a box down to its bar, with gaps where it crosses others."""
        cuts = sorted(y for y in seg_y.values() if y1 < y < y2)
        y = y1
        for c in cuts:
            out.append(f"<line class='{cls}' x1='{x:.0f}' y1='{y:.0f}' x2='{x:.0f}' "
                       f"y2='{c - 5:.0f}' stroke='{COLORS['segment']}' stroke-width='2'/>")
            y = c + 13
        out.append(f"<line class='{cls}' x1='{x:.0f}' y1='{y:.0f}' x2='{x:.0f}' y2='{y2:.0f}' "
                   f"stroke='{COLORS['segment']}' stroke-width='2'/>")
        out.append(f"<circle cx='{x:.0f}' cy='{y2 + 4:.0f}' r='4' fill='{COLORS['segment']}'/>")

    for nd in model.nodes:
        y = seg_y.get(nd.segment, seg_y[segs[0].name])
        cx = centers[nd.name] + NODE_W / 4
        attach(cx, bottom, y)
        out.append(_t(cx + 6, bottom - 4, "eth0", 10, color=COLORS["segment"]))
        if model.tunnel_pairs():
            tx = centers[nd.name] - NODE_W / 4
            out.append(f"<circle class='tunnel-port' cx='{tx:.0f}' cy='{bottom}' r='5' "
                       f"fill='{COLORS['tunnel']}'/>")
            out.append(_t(tx + 8, bottom - 4, nd.tunnel_dev, 10, color=COLORS["tunnel"]))
    for j, h in enumerate(model.hosts):
        x = hosts_x0 + j * (HOST_W + NODE_GAP)
        hh = 34 + 16 * len(h.addresses)
        stroke = COLORS["hl"] if h.name in hl else COLORS["host"]
        first_ip = next(iter(h.addresses.values()), "")
        out.append(f"<g class={quoteattr(h.kind)} data-name={quoteattr(h.name)} "
                   f"data-ip={quoteattr(first_ip)}>")
        out.append(f"<rect x='{x}' y='{top}' width='{HOST_W}' height='{hh}' rx='8' "
                   f"fill='{COLORS['host_fill']}' stroke='{stroke}' stroke-width='2'/>")
        out.append(_t(x + 10, top + 20, f"{h.name} ({h.kind})", 13, weight="bold"))
        for k, (seg, addr) in enumerate(h.addresses.items()):
            out.append(_t(x + 10, top + 38 + 16 * k, f"{seg}: {addr}", 11))
        out.append("</g>")
        for k, seg in enumerate(h.addresses):
            if seg in seg_y:
                attach(x + 30 + k * 50, top + hh, seg_y[seg])
    out.append("</svg>")
    return "\n".join(out)


# ----------------------------------------------------------------------------- ladder SVG


@dataclass
class LadderRow:
    """One sighting of a packet: at time ``t`` (s, relative) on column ``column``."""

    t: float
    column: str  # "node/iface"
    label: str
    key: str = ""  # sightings with the same key are the same packet on different hops
    drop: bool = False  # the packet ends here: dropped by the rule the label names


def render_ladder_svg(rows: Sequence[LadderRow], columns: Sequence[str] | None = None,
                      title: str = "") -> str:
    """A flow hop by hop: interfaces as columns (in path order), packets as rows."""
    cols = list(columns) if columns else list(dict.fromkeys(r.column for r in rows))
    col_w, row_h, left = 120, 22, 70
    label_w = 20 + 7 * min(130, max((len(r.label) for r in rows), default=40))
    head = 58 if title else 40
    width = left + col_w * max(1, len(cols)) + label_w
    height = head + row_h * max(1, len(rows)) + 16
    cx = {c: left + col_w * i + col_w / 2 for i, c in enumerate(cols)}
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
           f"viewBox='0 0 {width} {height}' class='ladder'>",
           f"<rect x='0' y='0' width='{width}' height='{height}' fill='white'/>"]
    if title:
        out.append(_t(10, 20, title, 14, weight="bold"))
    y0 = head - 10
    for c in cols:
        node, _, iface = c.partition("/")
        color = _iface_color(iface)
        out.append(f"<g class='column' data-name={quoteattr(c)}>"
                   + _t(cx[c], y0 - 14, node, 10, "middle", color="#607d8b")
                   + _t(cx[c], y0 - 2, iface[:15], 11, "middle", weight="bold", color=color)
                   + f"<line x1='{cx[c]:.0f}' y1='{y0 + 4}' x2='{cx[c]:.0f}' y2='{height - 8}' "
                   f"stroke='{color}' stroke-opacity='0.35' stroke-width='2'/></g>")
    last: dict[str, tuple[float, float]] = {}
    for i, r in enumerate(rows):
        y = head + row_h * i + 8
        if r.column not in cx:
            continue
        x = cx[r.column]
        if r.key and r.key in last:
            px, py = last[r.key]
            out.append(f"<line class='hop' x1='{px:.0f}' y1='{py:.0f}' x2='{x:.0f}' y2='{y:.0f}' "
                       f"stroke='#90a4ae' stroke-width='1.5'/>")
        if r.key:
            last[r.key] = (x, y)
        color = _iface_color(r.column.partition("/")[2])
        if r.drop:
            out.append(f"<g class='drop' data-column={quoteattr(r.column)}>"
                       f"<line x1='{x - 6:.0f}' y1='{y - 6:.0f}' x2='{x + 6:.0f}' y2='{y + 6:.0f}' "
                       f"stroke='{COLORS['drop']}' stroke-width='3'/>"
                       f"<line x1='{x - 6:.0f}' y1='{y + 6:.0f}' x2='{x + 6:.0f}' y2='{y - 6:.0f}' "
                       f"stroke='{COLORS['drop']}' stroke-width='3'/></g>")
        else:
            out.append(f"<circle class='sighting' cx='{x:.0f}' cy='{y:.0f}' r='5' fill='{color}' "
                       f"data-column={quoteattr(r.column)}/>")
        out.append(_t(6, y + 4, f"{r.t * 1000:8.3f} ms", 10, color="#78909c"))
        out.append(_t(left + col_w * len(cols) + 10, y + 4, r.label[:130], 11, cls="packet"))
    out.append("</svg>")
    return "\n".join(out)


def _iface_color(iface: str) -> str:
    if iface == "iptables":
        return COLORS["drop"]
    if iface.startswith("cali"):
        return COLORS["pod"]
    if iface.startswith(("tunl", "vxlan")):
        return COLORS["tunnel"]
    return COLORS["bgp"]
