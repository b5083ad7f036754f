"""The speaker's configuration file (what ``python -m agent.bgp.daemon -c`` reads)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N

import pytest

from agent.bgp import config as C
from agent.bgp import prefix as PF
from agent.bgp.daemon import load_config
from agent.bgp.fsm import Timers

pytestmark = pytest.mark.unit


def sample() -> C.SpeakerConfig:
    me = A("172.30.0.10")
    peers = (C.PeerConfig("Mesh_172_30_0_11", A("172.30.0.11"), 64512, passive=True),
             C.PeerConfig("Global_10_0_0_1", A("10.0.0.1"), 65000, C.GLOBAL, multihop=True))
    return C.SpeakerConfig(router_id=me, local_as=64512, local_address=me, peers=peers,
                           originate=((PF.parse("192.168.1.0/26"), True),
                                      (PF.parse("192.168.9.7/32"), False)),
                           export_pools=(N("192.168.0.0/16"),),
                           kernel=C.KernelPolicy(ipip_pools=(N("192.168.0.0/16"),),
                                                 local_subnet=N("172.30.0.0/24")),
                           timers=Timers(hold=9, connect_delay=1))


def test_file_round_trip(tmp_path):
    path = tmp_path / "speaker.json"
    path.write_text(json.dumps(C.to_dict(sample())))
    assert load_config(str(path)) == sample()


@pytest.mark.parametrize("change, message", [
    ({"bogus": 1}, "unknown key(s) bogus"),
    ({"originate": ["192.168.1.1/26"]}, "'192.168.1.1/26' has host bits set"),
    ({"originate": ["nonsense"]}, "'nonsense' is not an IPv4 prefix"),
    ({"local_as": 0}, "invalid local AS 0"),
    ({"timers": {"hold": 1}}, "hold time must be 0 or at least 3 seconds"),
])
def test_bad_file_is_refused_naming_the_problem(tmp_path, change, message):
    path = tmp_path / "speaker.json"
    path.write_text(json.dumps({**C.to_dict(sample()), **change}))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(str(path))
    path.write_text("{not json")
    with pytest.raises(ValueError, match="speaker.json"):
        load_config(str(path))
