"""`calicoctl node status` rendering, BIRD-like protocols text, kernel route rendering."""

from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N

import pytest

from agent.bgp import messages as M
from agent.bgp.config import KernelPolicy, mesh_name, passive_towards
from agent.bgp.rib import Path
from agent.bgp.routes import kernel_route
from agent.bgp.status import parse_protocols, peer_address, render_node_status, wrap_cell

pytestmark = pytest.mark.unit

EXPECTED = """Calico process is running.

IPv4 BGP status
+--------------+-------------------+-------+----------+-------------+
| PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |    INFO     |
+--------------+-------------------+-------+----------+-------------+
| 172.17.8.102 | node-to-node mesh | up    | 23:30:04 | Established |
| 10.20.0.1    | global            | start | 16:28:38 | Connect     |
| 192.20.0.1   | node specific     | start | 16:28:57 | Connect     |
+--------------+-------------------+-------+----------+-------------+

IPv6 BGP status
No IPv6 peers found.

"""

PROTOCOLS = """name              proto    table    state  since       info
kernel1           Kernel   master   up     2016-11-21
device1           Device   master   up     2016-11-21
Mesh_172_17_8_102 BGP      master   up     23:30:04    Established
Global_10_20_0_1  BGP      master   start  16:28:38    Connect
Node_192_20_0_1   BGP      master   start  16:28:57    Connect
"""


def test_node_status_matches_calicoctl():
    assert render_node_status(PROTOCOLS) == EXPECTED


def test_node_status_without_peers_and_not_running():
    out = render_node_status([])
    assert "IPv4 BGP status\nNo IPv4 peers found.\n" in out
    assert render_node_status([], running=False) == "Calico process is not running.\n"


def test_parse_and_names():
    rows = parse_protocols(PROTOCOLS)
    assert rows[2] == {"name": "Mesh_172_17_8_102", "proto": "BGP", "table": "master",
                       "state": "up", "since": "23:30:04", "info": "Established"}
    assert peer_address("Global_10_0_0_1_port_1790") == "10.0.0.1.port.1790"   # as calicoctl
    assert mesh_name(A("172.30.0.11")) == "Mesh_172_30_0_11"


def test_passive_rule_is_string_comparison():
    assert passive_towards("172.30.0.10", "172.30.0.9")        # "…9" > "…10" as strings
    assert not passive_towards("172.30.0.9", "172.30.0.10")
    assert passive_towards("10.0.0.1", "10.0.0.2")


def _path(nh):
    return Path("p", M.Attributes(next_hop=A(nh)), ibgp=True)


def test_kernel_route_modes():
    ipip = KernelPolicy(ipip_pools=(N("192.168.0.0/16"),))
    assert kernel_route(N("192.168.1.0/26"), [_path("172.30.0.11")], ipip).render() == \
        "192.168.1.0/26 via 172.30.0.11 dev tunl0 proto bird onlink"
    plain = KernelPolicy()
    assert kernel_route(N("192.168.1.0/26"), [_path("172.30.0.11")], plain).render() == \
        "192.168.1.0/26 via 172.30.0.11 proto bird"
    cs = KernelPolicy(cross_subnet_pools=(N("192.168.0.0/16"),), local_subnet=N("172.30.0.0/24"))
    assert not kernel_route(N("192.168.1.0/26"), [_path("172.30.0.11")], cs).nexthops[0].onlink
    assert kernel_route(N("192.168.1.0/26"), [_path("172.30.1.11")], cs).nexthops[0].device == "tunl0"
    ecmp = kernel_route(N("192.168.1.0/26"), [_path("172.30.0.12"), _path("172.30.0.11")], ipip)
    assert [str(h.gateway) for h in ecmp.nexthops] == ["172.30.0.11", "172.30.0.12"]
    vx = KernelPolicy(reject_pools=(N("192.168.0.0/16"),))
    assert kernel_route(N("192.168.1.0/26"), [_path("172.30.0.11")], vx) is None
    local = Path("local", M.Attributes(), blackhole=True)
    assert kernel_route(N("192.168.2.0/26"), [local], vx) is None
    assert kernel_route(N("192.168.2.0/26"), [local], ipip).render() == \
        "blackhole 192.168.2.0/26 proto bird"


def test_long_info_wraps_like_calicoctl():
    rows = [{"name": "Global_10_20_0_1", "proto": "BGP", "table": "master", "state": "start",
             "since": "16:28:38", "info": "Active        Socket: Connection refused"}]
    out = render_node_status(rows)
    assert "| 10.20.0.1    | global    | start | 16:28:38 | Active Socket: Connection |" in out
    assert "|              |           |       |          | refused                   |" in out
    assert wrap_cell("Established") == ["Established"]


def test_ctl_reply_framing_is_birds():
    from agent.bgp.ctl import encode_reply, handle_command

    peers = [{"name": "Mesh_172_30_0_11", "state": "up", "since": 0, "info": "Established"}]
    blocks = handle_command("show protocols", lambda: {"peers": peers}, list)
    text = encode_reply(blocks).splitlines()
    assert text[0].startswith("2002-name") and text[0].split()[1:] == [
        "proto", "table", "state", "since", "info"]
    assert text[1].startswith("1002-Mesh_172_30_0_11 BGP") and text[-1] == "0000 "
