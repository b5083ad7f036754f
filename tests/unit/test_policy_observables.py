"""What shows a denied flow: the pcap assertion, the rule counters and the report's ladder ending at the drop."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from scapy.layers.inet import IP, TCP
from scapy.utils import wrpcap

from testbed.capture import counters
from testbed.capture import pcapassert as pa
from testbed.report import flows as report
from tests.unit.test_pcapassert_flows import POD_A, POD_B, eth, http_exchange, write

pytestmark = pytest.mark.unit


def syns(n: int = 3) -> list:
    return [IP(src=POD_A, dst=POD_B) / TCP(sport=40000, dport=80, flags="S", seq=1000) for _ in range(n)]


def test_assert_dropped_holds_for_a_dropped_syn_and_fails_when_it_got_through(tmp_path):
    client = write(tmp_path, "w0-cali1", [eth(p) for p in syns()])
    tunnel = write(tmp_path, "w1-tunl0", syns(), linktype=101)
    server = write(tmp_path, "w1-cali2", [])
    got = pa.assert_dropped(client, server, client=POD_A, server=POD_B, port=80, tunnel=tunnel)
    assert len(got) == 3
    # the SYN reached the server: not a drop
    reached = write(tmp_path, "w1-cali3", [eth(p) for p in syns(1)])
    with pytest.raises(pa.CaptureAssertionError, match="reaching the server"):
        pa.assert_dropped(client, reached, client=POD_A, server=POD_B, port=80)
    # the connection was answered on the client side: not a drop
    answered = write(tmp_path, "w0-cali4", [eth(p) for p in http_exchange(POD_A, POD_B)])
    with pytest.raises(pa.CaptureAssertionError, match="SYN-ACK"):
        pa.assert_dropped(answered, server, client=POD_A, server=POD_B, port=80)
    # never left the client: nothing to prove
    with pytest.raises(pa.CaptureAssertionError, match="leaving the client"):
        pa.assert_dropped(server, server, client=POD_A, server=POD_B, port=80)
    # the tunnel must have carried it when it crosses nodes
    with pytest.raises(pa.CaptureAssertionError, match="tunnel"):
        pa.assert_dropped(client, server, client=POD_A, server=POD_B, port=80,
                          tunnel=write(tmp_path, "w1-tunl1", [], linktype=101))


def test_assert_dropped_window_leaves_out_a_later_allowed_connection(tmp_path):
    """The walkthrough's denied flow is followed by the same pair allowed: ``until`` bounds the drop."""
    later = [eth(p) for p in http_exchange(POD_A, POD_B)]
    client = write(tmp_path, "w0-cali5", [eth(p) for p in syns()] + later)
    server = write(tmp_path, "w1-cali6", [])
    first_later = 1700000000 + 3 * 0.001  # write() spaces frames 1 ms apart
    with pytest.raises(pa.CaptureAssertionError, match="SYN-ACK"):
        pa.assert_dropped(client, server, client=POD_A, server=POD_B, port=80)
    got = pa.assert_dropped(client, server, client=POD_A, server=POD_B, port=80, until=first_later - 0.0005)
    assert len(got) == 3


SAVE_BEFORE = """\
*filter
:cali-tw-cali2 - [0:0]
[10:600] -A cali-tw-cali2 -m comment --comment "cali:AAAAAAAAAAAAAAAA" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
[0:0] -A cali-tw-cali2 -m comment --comment "cali:BBBBBBBBBBBBBBBB" -m comment --comment "Drop if no policies passed packet" -m mark --mark 0x0/0x20000 -j DROP
[0:0] -A FORWARD -j DROP
COMMIT
"""
SAVE_AFTER = SAVE_BEFORE.replace("[0:0] -A cali-tw-cali2", "[3:180] -A cali-tw-cali2").replace(
    "[0:0] -A FORWARD", "[1:60] -A FORWARD")


def test_counters_name_the_rule_that_dropped():
    before, after = counters.parse(SAVE_BEFORE, "filter"), counters.parse(SAVE_AFTER, "filter")
    (rule,) = counters.dropped_by(before, after)
    assert (rule.chain, rule.position, rule.packets, rule.rule_hash) == ("cali-tw-cali2", 2, 3, "BBBBBBBBBBBBBBBB")
    assert rule.comments == ["Drop if no policies passed packet"]
    assert rule.describe() == ('filter cali-tw-cali2 rule 2 (-j DROP, "Drop if no policies passed packet"): '
                               "3 packet(s)")
    assert {r.chain for r in counters.delta(before, after)} == {"cali-tw-cali2", "FORWARD"}


def test_report_ladder_ends_at_the_drop(tmp_path):
    client = tmp_path / "k8s-w0-cali1.pcap"
    wrpcap(str(client), [eth(p) for p in syns(1)])
    hops = report.flow_hops([client], pa.between(POD_A, POD_B))
    flow = report.FlowResult("denied", "pod a -> pod b", result="000", ok=True, hops=hops,
                             drop=("k8s-w1", "filter cali-tw-cali2 rule 2 (-j DROP)"))
    html = report.render_html([flow])
    root = ET.fromstring(html.split("<!DOCTYPE html>")[-1].strip())
    drops = [el for el in root.iter() if el.get("class") == "drop"]
    assert drops and drops[0].get("data-column") == "k8s-w1/iptables"
    assert "DROPPED by filter cali-tw-cali2 rule 2" in html and "dropped</span> on k8s-w1" in html
    text, files = report.render_markdown([flow])
    assert "dropped on k8s-w1 by `filter cali-tw-cali2 rule 2 (-j DROP)`" in text and "flow-denied.svg" in files
