"""The reference captures under pcaps/reference/ (pointed to by the docs) show what the docs say."""

from pathlib import Path

import pytest

from testbed.capture import pcapassert as pa

pytestmark = pytest.mark.unit
REF = Path(__file__).resolve().parents[2] / "pcaps" / "reference"
POD_W0, POD_W1 = "192.168.133.1", "192.168.132.1"
NODE_W0, NODE_W1 = "172.30.0.11", "172.30.0.12"


def test_cross_node_on_the_pods_cali_interface_starts_with_proxy_arp():
    cali = REF / "cross-node-k8s-w0-cali.pcap"
    pa.assert_arp_gateway(cali, asker=POD_W0, before_traffic=True)
    pa.assert_http_exchange(cali, POD_W0, POD_W1, status=200)


def test_cross_node_on_eth0_is_ipip_between_the_nodes():
    eth0 = REF / "cross-node-k8s-w0-eth0.pcap"
    pa.assert_ipip(eth0, outer_src=NODE_W0, outer_dst=NODE_W1, inner_src=POD_W0, inner_dst=POD_W1)
    pa.assert_no_plain(eth0, POD_W0, POD_W1)


def test_cross_node_on_tunl0_is_the_inner_packets():
    pa.assert_on_tunnel(REF / "cross-node-k8s-w0-tunl0.pcap", POD_W0, POD_W1)


def test_internet_sees_the_node_address():
    pa.assert_masqueraded(REF / "internet-eth0.pcap", node_ip=NODE_W0, pod_ip=POD_W0, dst="203.0.113.10")
