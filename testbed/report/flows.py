"""The flows report: for each flow its key packets in order, hop by hop, and the lab diagram.

Typical use (the demo, or a test that wants a picture)::

    from testbed.report import flows as report

    hops = report.flow_hops(run_dir.glob("*.pcap"), pa.between(pod_a, pod_b))
    flow = report.FlowResult("cross-node", "pod k8s-w0 -> pod k8s-w1", result="200",
                             ok=True, hops=hops, pcaps=[...])
    print(report.results_table([flow]))
    report.write_report("reports/walkthrough.html", [flow], lab=lab_model)

:func:`flow_hops` merges the packets of several captures (one per interface)
in time order and keeps the key ones (handshakes, HTTP request/response lines,
ARP, ICMP, BGP), so a reader sees a packet leave a cali interface, cross tunl0
and eth0 as IPIP, and arrive on the other node. :func:`write_report` writes a
self-contained HTML page (inline CSS and SVG, well-formed XML, no scripts) or
Markdown (with the SVGs written beside it).
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.report.diagram import LabModel, LadderRow, render_lab_svg, render_ladder_svg

__all__ = ["Hop", "FlowResult", "is_key_frame", "frame_key", "flow_hops", "path_taken",
           "results_table", "render_html", "render_markdown", "write_report"]


@dataclass
class Hop:
    """A packet seen on one interface of one node."""

    time: float  # capture timestamp (epoch seconds)
    node: str
    iface: str
    summary: str
    key: str = ""  # identity of the packet across hops (inner 5-tuple, seq, type)
    source: str = ""  # capture file name
    index: int = 0  # frame number in that file

    @property
    def where(self) -> str:
        """``node/iface``."""
        return f"{self.node}/{self.iface}"


@dataclass
class FlowResult:
    """One flow of the walkthrough, as the demo ran it."""

    name: str
    title: str
    result: str = ""  # what the user saw, e.g. "200" or "ping ok"
    ok: bool = True
    hops: list[Hop] = field(default_factory=list)
    pcaps: list[str] = field(default_factory=list)
    path: list[str] | None = None  # None: derived from the hops
    description: str = ""
    error: str | None = None  # the assertion message when not ok
    highlight: list[str] = field(default_factory=list)  # node/pod names to outline
    #: a flow that policy denied: (node, what dropped it, e.g. "filter cali-tw-calie1.. rule 9
    #: (-j DROP, "Drop if no policies passed packet"): 3 packet(s)")
    drop: tuple[str, str] | None = None
    mode: str = ""  # how the flow crossed between nodes, e.g. "VXLAN Always: encapsulated"

    def ladder_rows(self) -> list[LadderRow]:
        """The hops as ladder rows; a denied flow ends with the drop, on its node's iptables."""
        if not self.hops:
            return []
        t0 = self.hops[0].time
        rows = [LadderRow(h.time - t0, h.where, h.summary, h.key) for h in self.hops]
        if self.drop is not None:
            node, rule = self.drop
            last = self.hops[-1]
            rows.append(LadderRow(last.time - t0, f"{node}/iptables", f"DROPPED by {rule}", last.key, drop=True))
        return rows

    def ladder_columns(self) -> list[str] | None:
        cols = self.path_taken()
        if self.drop is not None:
            cols = [*cols, f"{self.drop[0]}/iptables"]
        return cols or None

    def path_taken(self) -> list[str]:
        """Interfaces the flow crossed, in order (given, or from the hops)."""
        return self.path if self.path is not None else path_taken(self.hops)


# ----------------------------------------------------------------------------- from pcaps


def is_key_frame(frame: Any) -> bool:
    """Frames worth showing: ARP, ICMP, TCP SYN/FIN/RST, HTTP lines, BGP, UDP; not bare ACKs."""
    if frame.arp_op is not None or frame.icmp_type is not None:
        return True
    if frame.tcp_flags is not None:
        flags = set(frame.tcp_flags)
        if flags & {"S", "F", "R"}:
            return True
        p = frame.payload
        return p.startswith(b"HTTP/1.") or p[:4] in (b"GET ", b"POST", b"PUT ", b"HEAD") or \
            (179 in (frame.sport, frame.dport) and bool(p))
    return bool(frame.ips) and frame.sport is not None


def frame_key(frame: Any) -> str:
    """Identity of a packet that survives encapsulation, hops and NAT.

    TCP: flags, sequence and acknowledgement numbers and payload length (NAT
    rewrites addresses and maybe ports, never these); ICMP: type, code, id and
    sequence; ARP: operation and addresses; others: addresses, ports, length.
    """
    if frame.arp_op is not None:
        return f"arp/{frame.arp_op}/{frame.arp_psrc}/{frame.arp_pdst}"
    if not frame.ips:
        return ""
    i = frame.inner
    if frame.tcp_flags is not None:
        return f"tcp/{frame.tcp_flags}/{frame.seq}/{frame.ack}/{len(frame.payload)}"
    if frame.icmp_type is not None:
        ident = (f"{frame.icmp_id}/{frame.icmp_seq}" if frame.icmp_id is not None
                 else f"{i.src}/{i.dst}")
        return f"icmp/{frame.icmp_type}/{frame.icmp_code}/{ident}"
    return f"{i.proto}/{i.src}/{frame.sport}/{i.dst}/{frame.dport}/{len(frame.payload)}"


def flow_hops(captures: Iterable[Any], match: Any = None, *, key_only: bool = True,
              limit: int = 60, since: float | None = None,
              until: float | None = None) -> list[Hop]:
    """Merge the frames of several captures (Traces or pcap paths) in time order.

    ``match`` (a :class:`testbed.capture.pcapassert.Match` or any predicate) selects the
    flow's packets; ``key_only`` keeps :func:`is_key_frame` ones; ``since`` and
    ``until`` (epoch seconds, e.g. ``time.time()`` before and after the flow)
    keep one flow apart from later traffic between the same addresses;
    ``limit`` caps the result (earliest first).
    """
    from testbed.capture.pcapassert import load

    hops: list[Hop] = []
    for cap in captures:
        tr = load(cap)
        node = tr.node or ""
        for f in tr.frames:
            if (since is not None and f.time < since) or (until is not None and f.time > until):
                continue
            if match is not None and not match(f):
                continue
            if key_only and not is_key_frame(f):
                continue
            hops.append(Hop(f.time, node, tr.iface, f.describe(),
                            frame_key(f), tr.path.name if tr.path else tr.label, f.index))
    hops.sort(key=lambda h: (h.time, h.source, h.index))
    return hops[:limit]


def path_taken(hops: Sequence[Hop]) -> list[str]:
    """``node/iface`` in order of first sighting."""
    return list(dict.fromkeys(h.where for h in hops))


# ----------------------------------------------------------------------------- text


def results_table(flows: Sequence[FlowResult]) -> str:
    """The demo's terminal table: flow, path taken, result, pcap files."""
    rows = [("FLOW", "PATH TAKEN", "RESULT", "PCAP FILES")]
    for f in flows:
        res = ("ok " if f.ok else "FAIL ") + f.result
        rows.append((f.name, " -> ".join(f.path_taken()) or "-", res.strip(),
                     ", ".join(Path(p).name for p in f.pcaps) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}"
                     for a, b, c, d in rows)


# ----------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:'DejaVu Sans',Verdana,sans-serif;margin:24px auto;max-width:1400px;color:#263238;
background:#fafafa}
h1{font-size:26px;margin-bottom:4px}h2{font-size:20px;margin-top:36px;border-bottom:2px solid #cfd8dc}
.sub{color:#607d8b;margin-top:0}
table{border-collapse:collapse;margin:10px 0;font-size:13px;background:white}
th,td{border:1px solid #cfd8dc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eceff1}
td.mono,span.mono{font-family:'DejaVu Sans Mono',monospace;font-size:12px}
.ok{color:#2e7d32;font-weight:bold}.fail{color:#c62828;font-weight:bold}
.desc{white-space:pre-line}
.iface{display:inline-block;padding:1px 6px;border-radius:8px;color:white;font-size:12px}
.cali{background:#2e7d32}.tunl{background:#ef6c00}.eth{background:#1565c0}.other{background:#78909c}
pre.err{background:#ffebee;border:1px solid #ef9a9a;padding:8px;white-space:pre-wrap;font-size:12px}
.figure{background:white;border:1px solid #cfd8dc;padding:8px;overflow-x:auto}
"""


def _iface_class(iface: str) -> str:
    for pfx, cls in (("cali", "cali"), ("tunl", "tunl"), ("vxlan", "tunl"), ("eth", "eth")):
        if iface.startswith(pfx):
            return cls
    return "other"


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _svg_inline(svg: str) -> str:
    """An SVG document to embed inline (drop any XML declaration)."""
    return svg.split("?>", 1)[1] if svg.lstrip().startswith("<?xml") else svg


def render_html(flows: Sequence[FlowResult], lab: LabModel | None = None, *,
                title: str = "calicolab flows", generated: str | None = None) -> str:
    """The report as a self-contained HTML page (also well-formed XML)."""
    when = generated or time.strftime("%Y-%m-%d %H:%M:%S %Z")
    ok = sum(1 for f in flows if f.ok)
    out = ["<!DOCTYPE html>", "<html xmlns='http://www.w3.org/1999/xhtml' lang='en'>",
           "<head><meta charset='utf-8'/>", f"<title>{_e(title)}</title>",
           f"<style>{_CSS}</style></head><body>",
           f"<h1>{_e(title)}</h1>",
           f"<p class='sub'>generated {_e(when)} · {ok} of {len(flows)} flow(s) ok</p>"]
    if lab is not None:
        out += ["<h2 id='lab'>The lab</h2>",
                f"<div class='figure'>{_svg_inline(render_lab_svg(lab))}</div>"]
    out += ["<h2 id='summary'>Flows</h2>", "<table class='summary'><tr><th>flow</th>"
            "<th>path taken</th><th>result</th><th>pcap files</th></tr>"]
    for f in flows:
        path = " → ".join(f.path_taken()) or "-"
        res = f"<span class='{'ok' if f.ok else 'fail'}'>{'ok' if f.ok else 'FAIL'}</span> "
        out.append(f"<tr class='flow-row' data-flow={_q(f.name)}><td><a href='#flow-{_e(f.name)}'>"
                   f"{_e(f.name)}</a></td><td class='mono'>{_e(path)}</td><td>{res}"
                   f"{_e(f.result)}</td><td class='mono'>"
                   + "<br/>".join(_e(Path(p).name) for p in f.pcaps) + "</td></tr>")
    out.append("</table>")
    for f in flows:
        out.append(f"<h2 id='flow-{_e(f.name)}'>{_e(f.name)}: {_e(f.title)}</h2>")
        if f.description:
            out.append(f"<p class='desc'>{_e(f.description)}</p>")
        status = "ok" if f.ok else "fail"
        out.append(f"<p>result: <span class='{status}'>{'ok' if f.ok else 'FAIL'}</span> "
                   f"{_e(f.result)}</p>")
        if f.mode:
            out.append(f"<p class='mode'>network mode: {_e(f.mode)}</p>")
        if f.error:
            out.append(f"<pre class='err'>{_e(f.error)}</pre>")
        if lab is not None and f.highlight:
            out.append("<div class='figure flow-lab'>"
                       + _svg_inline(render_lab_svg(lab, highlight=f.highlight)) + "</div>")
        if f.hops:
            t0 = f.hops[0].time
            out.append("<div class='figure'>" + _svg_inline(
                render_ladder_svg(f.ladder_rows(), f.ladder_columns(),
                                  title=f"{f.name} · {f.mode}" if f.mode else "")) + "</div>")
            out.append("<table class='hops'><tr><th>#</th><th>time</th><th>node</th>"
                       "<th>interface</th><th>packet</th><th>file:frame</th></tr>")
            for i, h in enumerate(f.hops, start=1):
                out.append(
                    f"<tr class='hop'><td>{i}</td><td class='mono'>+{(h.time - t0) * 1000:.3f} ms"
                    f"</td><td>{_e(h.node)}</td><td><span class='iface {_iface_class(h.iface)}'>"
                    f"{_e(h.iface)}</span></td><td class='mono'>{_e(h.summary)}</td>"
                    f"<td class='mono'>{_e(h.source)}:{h.index}</td></tr>")
            out.append("</table>")
            if f.drop is not None:
                out.append(f"<p class='drop'><span class='fail'>dropped</span> on {_e(f.drop[0])} by "
                           f"<span class='mono'>{_e(f.drop[1])}</span></p>")
        else:
            out.append("<p><em>no packets captured for this flow</em></p>")
    out.append("</body></html>")
    return "\n".join(out)


def _q(s: str) -> str:
    return '"' + _e(s) + '"'


# ----------------------------------------------------------------------------- Markdown


def _md(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_markdown(flows: Sequence[FlowResult], lab: LabModel | None = None, *,
                    title: str = "calicolab flows", svg_dir: str | None = None
                    ) -> tuple[str, dict[str, str]]:
    """The report as Markdown plus the SVG files it links to (``{file name: svg text}``)."""
    files: dict[str, str] = {}
    pre = f"{svg_dir}/" if svg_dir else ""
    out = [f"# {title}", ""]
    if lab is not None:
        files["lab.svg"] = render_lab_svg(lab)
        out += ["## The lab", "", f"![lab {lab.name}]({pre}lab.svg)", ""]
    out += ["## Flows", "", "| flow | path taken | result | pcap files |", "|---|---|---|---|"]
    for f in flows:
        out.append(f"| {_md(f.name)} | {_md(' → '.join(f.path_taken()) or '-')} | "
                   f"{'ok' if f.ok else 'FAIL'} {_md(f.result)} | "
                   f"{_md(', '.join(Path(p).name for p in f.pcaps) or '-')} |")
    for f in flows:
        out += ["", f"## {f.name}: {f.title}", ""]
        if f.description:
            out += [f.description, ""]
        out.append(f"result: **{'ok' if f.ok else 'FAIL'}** {f.result}")
        if f.mode:
            out.append(f"\nnetwork mode: {f.mode}")
        if f.error:
            out += ["", "```", f.error, "```"]
        if f.hops:
            t0 = f.hops[0].time
            name = f"flow-{f.name}.svg"
            files[name] = render_ladder_svg(f.ladder_rows(), f.ladder_columns(),
                                            title=f"{f.name} · {f.mode}" if f.mode else "")
            out += ["", f"![{f.name} hop by hop]({pre}{name})", "",
                    "| # | time | node | interface | packet |", "|---|---|---|---|---|"]
            for i, h in enumerate(f.hops, start=1):
                out.append(f"| {i} | +{(h.time - t0) * 1000:.3f} ms | {_md(h.node)} | "
                           f"{_md(h.iface)} | `{_md(h.summary)}` |")
            if f.drop is not None:
                out += ["", f"dropped on {f.drop[0]} by `{_md(f.drop[1])}`"]
    return "\n".join(out) + "\n", files


def write_report(path: str | os.PathLike[str], flows: Sequence[FlowResult],
                 lab: LabModel | None = None, *, title: str = "calicolab flows",
                 fmt: str | None = None) -> Path:
    """Write the report (``.html`` or ``.md`` by suffix, or ``fmt``); return its path.

    Markdown puts its SVGs in the same directory.
    """
    p = Path(path)
    fmt = fmt or ("md" if p.suffix.lower() in (".md", ".markdown") else "html")
    if fmt not in ("html", "md"):
        raise ValueError(f"unknown report format {fmt!r}: use 'html' or 'md'")
    p.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "html":
        p.write_text(render_html(flows, lab, title=title), encoding="utf-8")
        return p
    text, files = render_markdown(flows, lab, title=title)
    for name, svg in files.items():
        (p.parent / name).write_text(svg, encoding="utf-8")
    p.write_text(text, encoding="utf-8")
    return p
