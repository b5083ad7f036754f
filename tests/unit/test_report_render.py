"""testbed.report.flows and testbed.report.diagram: the report renders and shows what it must.

The lab SVG is parsed (xml.etree) and its geometry checked: every box inside
the canvas, pods inside their node, no two boxes overlapping, one arc per BGP
session. The HTML report is parsed as XML and checked for the summary table,
each flow's hops in time order across interfaces, and the embedded diagrams.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import ARP, Ether
from scapy.utils import wrpcap

from testbed.capture import pcapassert as pa
from testbed.report import flows as report
from testbed.report.diagram import (
    DiagramError,
    HostBox,
    LabModel,
    LadderRow,
    NodeBox,
    PodBox,
    Segment,
    Session,
    render_lab_svg,
    render_ladder_svg,
)

pytestmark = pytest.mark.unit

# explicit MACs: a bare Ether() makes scapy resolve one by ARP on the machine's network
MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"

SVG = "{http://www.w3.org/2000/svg}"
XHTML = "{http://www.w3.org/1999/xhtml}"
W0, W1 = "172.30.0.11", "172.30.0.12"
POD0, POD1 = "192.168.1.2", "192.168.2.2"


def walkthrough_model(**kw) -> LabModel:
    return LabModel(
        name="walkthrough", pool="192.168.0.0/16",
        segments=[Segment("lan0", "172.30.0.0/24"), Segment("inet", "203.0.113.0/24")],
        nodes=[
            NodeBox("k8s-m", "172.30.0.10", "lan0", "control-plane", ["192.168.0.0/24"],
                    "192.168.0.1", ready=True),
            NodeBox("k8s-w0", W0, "lan0", blocks=["192.168.1.0/24"], tunnel_ip="192.168.1.1",
                    datapath="userspace", ready=True,
                    pods=[PodBox("nginx-7c9d-abcde", POD0, "cali1a2b3c4d5e6"),
                          PodBox("nginx-7c9d-fghij", "192.168.1.3", "cali6e5d4c3b2a1")]),
            NodeBox("k8s-w1", W1, "lan0", blocks=["192.168.2.0/24"], tunnel_ip="192.168.2.1",
                    pods=[PodBox("k8s-w1", POD1, "cali0f0f0f0f0f0")]),
        ],
        hosts=[HostBox("r0", {"lan0": "172.30.0.1", "inet": "203.0.113.1"}, "router"),
               HostBox("internet", {"inet": "203.0.113.10"})],
        **kw)


def _float(el, name: str) -> float:
    return float(el.get(name))


def _rect_of(group) -> tuple[float, float, float, float]:
    r = group.find(f"{SVG}rect")
    return _float(r, "x"), _float(r, "y"), _float(r, "width"), _float(r, "height")


def _inside(inner, outer) -> bool:
    x, y, w, h = inner
    X, Y, W, H = outer
    return X <= x and Y <= y and x + w <= X + W and y + h <= Y + H


def _overlap(a, b) -> bool:
    return not (a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0] or a[1] + a[3] <= b[1]
                or b[1] + b[3] <= a[1])


def test_lab_svg_parses_and_shows_nodes_pods_blocks_tunnels_sessions():
    svg = render_lab_svg(walkthrough_model(), highlight=["k8s-w1"])
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    _, _, width, height = (float(v) for v in root.get("viewBox").split())
    nodes = {g.get("data-name"): g for g in root.iter(f"{SVG}g") if g.get("class") == "node"}
    pods = [g for g in root.iter(f"{SVG}g") if g.get("class") == "pod"]
    assert list(nodes) == ["k8s-m", "k8s-w0", "k8s-w1"]
    assert {(p.get("data-name"), p.get("data-ip"), p.get("data-node")) for p in pods} == {
        ("nginx-7c9d-abcde", POD0, "k8s-w0"), ("nginx-7c9d-fghij", "192.168.1.3", "k8s-w0"),
        ("k8s-w1", POD1, "k8s-w1")}
    text = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    for needle in ("eth0 172.30.0.11", "block 192.168.1.0/24", "tunl0 192.168.1.1 (userspace)",
                   "cali1a2b3c4d5e6", "lan0 172.30.0.0/24", "internet (external)",
                   "inet: 203.0.113.10", "BGP Established", "IPIP", "control-plane · Ready"):
        assert needle in text, needle
    # geometry: boxes in the canvas, pods in their node, nodes and hosts apart
    boxes = {n: _rect_of(g) for n, g in nodes.items()}
    boxes.update({g.get("data-name"): _rect_of(g) for g in root.iter(f"{SVG}g")
                  if g.get("class") in ("router", "external")})
    for name, box in boxes.items():
        assert _inside(box, (0, 0, width, height)), name
    for p in pods:
        assert _inside(_rect_of(p), boxes[p.get("data-node")]), p.get("data-name")
    names = list(boxes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not _overlap(boxes[a], boxes[b]), (a, b)
    sessions = [p for p in root.iter(f"{SVG}path") if p.get("class") == "bgp"]
    tunnels = [p for p in root.iter(f"{SVG}path") if p.get("class") == "tunnel"]
    assert len(sessions) == 3 and len(tunnels) == 3  # full mesh of 3 nodes
    # the highlighted node is outlined differently from the others
    strokes = {n: g.find(f"{SVG}rect").get("stroke") for n, g in nodes.items()}
    assert strokes["k8s-w1"] != strokes["k8s-w0"] == strokes["k8s-m"]


def test_lab_svg_shows_down_sessions_and_mesh_of_four():
    m = LabModel("mesh4", [NodeBox(f"n{i}", f"172.30.4.1{i}") for i in range(4)],
                 bgp=[Session("n0", "n1", "Active")], mode="BGP, no encapsulation")
    root = ET.fromstring(render_lab_svg(m))
    (s,) = [p for p in root.iter(f"{SVG}path") if p.get("class") == "bgp"]
    assert s.get("data-state") == "Active" and s.get("stroke-dasharray")
    assert not [p for p in root.iter(f"{SVG}path") if p.get("class") == "tunnel"]
    default = LabModel("mesh4", [NodeBox(f"n{i}", f"172.30.4.1{i}") for i in range(4)])
    assert len(default.sessions()) == 6


def test_lab_model_rejects_inconsistent_data():
    with pytest.raises(DiagramError, match="pod p: not an IP address: '192.168.1'"):
        PodBox("p", "192.168.1")
    with pytest.raises(DiagramError, match="unknown node 'k8s-w9'"):
        walkthrough_model(bgp=[Session("k8s-w0", "k8s-w9")])
    with pytest.raises(DiagramError, match="has no nodes"):
        LabModel("x", [])
    with pytest.raises(DiagramError, match="bad block"):
        NodeBox("n", "172.30.0.1", blocks=["192.168.1.0/33"])
    with pytest.raises(DiagramError, match="bad lab model data"):
        LabModel.from_dict({"name": "x", "nodes": [{"name": "n"}]})


def test_lab_model_from_dict_and_topology():
    d = {"name": "w", "pool": "192.168.0.0/16",
         "nodes": [{"name": "a", "address": "172.30.0.11", "pods": [{"name": "p", "ip": POD0}]},
                   {"name": "b", "address": "172.30.0.12"}],
         "bgp": [{"a": "a", "b": "b", "state": "Established"}], "tunnels": [["a", "b"]]}
    m = LabModel.from_dict(d)
    assert m.node("a").pods[0].ip == POD0 and m.tunnel_pairs() == [("a", "b")]
    from pathlib import Path

    from testbed.lab import topology

    topo_file = Path(__file__).resolve().parents[2] / "topologies" / "walkthrough.yaml"
    tm = LabModel.from_topology(topology.load(topo_file))
    assert [n.name for n in tm.nodes] == ["k8s-m", "k8s-w0", "k8s-w1"]
    assert tm.mode == "IPIP Always" and {h.name for h in tm.hosts} >= {"internet"}
    ET.fromstring(render_lab_svg(tm))


def test_ladder_joins_sightings_of_the_same_packet():
    rows = [LadderRow(0.0, "k8s-w0/cali1", "SYN", "k1"), LadderRow(0.0001, "k8s-w0/eth0", "SYN", "k1"),
            LadderRow(0.0002, "k8s-w1/eth0", "SYN", "k1"), LadderRow(0.0003, "k8s-w1/eth0", "SA", "k2")]
    root = ET.fromstring(render_ladder_svg(rows, title="cross node"))
    cols = [g.get("data-name") for g in root.iter(f"{SVG}g") if g.get("class") == "column"]
    assert cols == ["k8s-w0/cali1", "k8s-w0/eth0", "k8s-w1/eth0"]
    assert len([x for x in root.iter(f"{SVG}line") if x.get("class") == "hop"]) == 2
    assert len([c for c in root.iter(f"{SVG}circle")]) == 4


# ----------------------------------------------------------------------------- from pcaps


def _cross_node_pcaps(tmp_path) -> list:
    """A curl w0-pod -> w1-pod seen on w0 cali, w0 tunl0, w0 eth0, w1 eth0, w1 tunl0, w1 cali."""
    req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    inner = [
        IP(src=POD0, dst=POD1) / TCP(sport=40000, dport=80, flags="S", seq=100),
        IP(src=POD1, dst=POD0) / TCP(sport=80, dport=40000, flags="SA", seq=900, ack=101),
        IP(src=POD0, dst=POD1) / TCP(sport=40000, dport=80, flags="A", seq=101, ack=901),
        IP(src=POD0, dst=POD1) / TCP(sport=40000, dport=80, flags="PA", seq=101, ack=901) / req,
        IP(src=POD1, dst=POD0) / TCP(sport=80, dport=40000, flags="PA", seq=901, ack=129) / resp,
    ]
    hops = [("k8s-w0", "cali1a2b3c4d5e6", "eth"), ("k8s-w0", "tunl0", "raw"),
            ("k8s-w0", "eth0", "ipip"), ("k8s-w1", "eth0", "ipip"), ("k8s-w1", "tunl0", "raw"),
            ("k8s-w1", "cali0f0f0f0f0f0", "eth")]
    t0 = 1700000000.0
    files = []
    for h, (node, iface, kind) in enumerate(hops):
        pkts = []
        if iface.startswith("cali") and node == "k8s-w0":
            arp = [Ether(src="0a:58:00:00:00:01", dst="ff:ff:ff:ff:ff:ff")
                   / ARP(op=1, psrc=POD0, pdst="169.254.1.1"),
                   Ether(src="ee:ee:ee:ee:ee:ee", dst="0a:58:00:00:00:01") / ARP(op=2, hwsrc="ee:ee:ee:ee:ee:ee",
                                                        psrc="169.254.1.1", pdst=POD0)]
            for k, a in enumerate(arp):
                a.time = t0 - 0.001 + k * 0.0001
            pkts += arp
        for i, p in enumerate(inner):
            forward = p.src == POD0
            hop = h if forward else len(hops) - 1 - h
            if kind == "eth":
                q = Ether(src=MAC_A, dst=MAC_B) / p
            elif kind == "ipip":
                src, dst = (W0, W1) if forward else (W1, W0)
                q = Ether(src=MAC_A, dst=MAC_B) / IP(src=src, dst=dst, proto=4) / p
            else:
                q = p
            q.time = t0 + i * 0.01 + hop * 0.00005
            pkts.append(q)
        pkts.sort(key=lambda q: q.time)
        path = tmp_path / f"{node}-{iface}.pcap"
        wrpcap(str(path), pkts, linktype=101 if kind == "raw" else 1)
        files.append(path)
    return files


def test_flow_hops_orders_key_packets_across_interfaces(tmp_path):
    files = _cross_node_pcaps(tmp_path)
    hops = report.flow_hops(files, pa.between(POD0, POD1) | pa.arp_request() | pa.arp_reply())
    assert hops[0].summary.startswith("ARP who-has 169.254.1.1")
    syn = [h for h in hops if "[S]" in h.summary]
    assert [h.where for h in syn] == ["k8s-w0/cali1a2b3c4d5e6", "k8s-w0/tunl0", "k8s-w0/eth0",
                                      "k8s-w1/eth0", "k8s-w1/tunl0", "k8s-w1/cali0f0f0f0f0f0"]
    assert len({h.key for h in syn}) == 1  # the same packet, followed hop by hop
    assert "IP 172.30.0.11 > 172.30.0.12 ipip:" in syn[2].summary
    assert not [h for h in hops if h.summary.endswith("[A] seq 101")]  # bare ACKs dropped
    t_syn = syn[0].time
    window = report.flow_hops(files, pa.between(POD0, POD1), since=t_syn + 0.005,
                              until=t_syn + 0.015)
    assert window and all("[SA]" in h.summary for h in window)
    assert report.path_taken(hops)[0] == "k8s-w0/cali1a2b3c4d5e6"
    times = [h.time for h in hops]
    assert times == sorted(times)


def test_hop_key_follows_a_packet_through_dnat(tmp_path):
    syn = TCP(sport=40123, dport=80, flags="S", seq=777)
    client = tmp_path / "k8s-w1-caliclient.pcap"
    pod = tmp_path / "k8s-w0-calitarget.pcap"
    a, b = Ether(src=MAC_A, dst=MAC_B) / IP(src=POD1, dst="10.96.0.20") / syn, Ether(src=MAC_A, dst=MAC_B) / IP(src=POD1, dst=POD0) / syn
    a.time, b.time = 1700000000.0, 1700000000.001
    wrpcap(str(client), [a])
    wrpcap(str(pod), [b])
    hops = report.flow_hops([client, pod])
    assert [h.where for h in hops] == ["k8s-w1/caliclient", "k8s-w0/calitarget"]
    assert hops[0].key == hops[1].key
    assert "10.96.0.20.80" in hops[0].summary and "192.168.1.2.80" in hops[1].summary


def test_html_report_parses_and_holds_flows_hops_and_diagrams(tmp_path):
    files = _cross_node_pcaps(tmp_path)
    hops = report.flow_hops(files, pa.between(POD0, POD1) | pa.arp_request() | pa.arp_reply())
    flows = [
        report.FlowResult("cross-node", "pod k8s-w0 -> pod k8s-w1 through IPIP", "200", True,
                          hops, [str(f) for f in files], description="curl prints 200",
                          highlight=["nginx-7c9d-abcde", "k8s-w1"]),
        report.FlowResult("service", "curl to the ClusterIP", "000", False, [], [],
                          error="expected SYN * > 192.168.1.2:80 (after DNAT)\n  on x.pcap"),
    ]
    out = report.write_report(tmp_path / "rep" / "report.html", flows, walkthrough_model(),
                              title="walkthrough <demo>")
    text = out.read_text()
    root = ET.fromstring(text.replace("<!DOCTYPE html>", "", 1))
    assert root.find(f"{XHTML}head/{XHTML}title").text == "walkthrough <demo>"
    rows = [r for r in root.iter(f"{XHTML}tr") if r.get("class") == "flow-row"]
    assert [r.get("data-flow") for r in rows] == ["cross-node", "service"]
    first = "".join(rows[0].itertext())
    assert "k8s-w0/cali1a2b3c4d5e6 → k8s-w0/tunl0 → k8s-w0/eth0 → k8s-w1/eth0" in first
    assert "k8s-w0-eth0.pcap" in first and "ok" in first
    assert "FAIL" in "".join(rows[1].itertext())
    hop_rows = [r for r in root.iter(f"{XHTML}tr") if r.get("class") == "hop"]
    assert len(hop_rows) == len(hops)
    assert "ARP who-has 169.254.1.1" in "".join(hop_rows[0].itertext())
    svgs = list(root.iter(f"{SVG}svg"))
    assert [s.get("class") for s in svgs] == ["lab", "lab", "ladder"]  # flow's ends outlined
    assert {g.get("data-name") for g in svgs[0].iter(f"{SVG}g") if g.get("class") == "pod"} == {
        "nginx-7c9d-abcde", "nginx-7c9d-fghij", "k8s-w1"}
    errs = [p for p in root.iter(f"{XHTML}pre") if p.get("class") == "err"]
    assert "after DNAT" in errs[0].text
    table = report.results_table(flows)
    assert table.splitlines()[0].split() == ["FLOW", "PATH", "TAKEN", "RESULT", "PCAP", "FILES"]
    assert "ok 200" in table and "FAIL 000" in table


def test_markdown_report_writes_svgs_beside_it(tmp_path):
    files = _cross_node_pcaps(tmp_path)
    hops = report.flow_hops(files, pa.between(POD0, POD1))
    flow = report.FlowResult("cross-node", "pods on two nodes", "200", True, hops)
    out = report.write_report(tmp_path / "md" / "report.md", [flow], walkthrough_model())
    text = out.read_text()
    assert "![lab walkthrough](lab.svg)" in text and "![cross-node hop by hop](flow-cross-node.svg)" in text
    assert "| cross-node | k8s-w0/cali1a2b3c4d5e6 → k8s-w0/tunl0" in text
    for name in ("lab.svg", "flow-cross-node.svg"):
        ET.parse(tmp_path / "md" / name)
    with pytest.raises(ValueError, match="unknown report format 'pdf'"):
        report.write_report(tmp_path / "x.pdf", [flow], fmt="pdf")
