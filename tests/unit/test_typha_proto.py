"""Typha's framing and syncer choice (pure)."""

from __future__ import annotations

import socket
import struct

import pytest

from datastore.resources import IPPool, Metadata
from datastore.typha import (
    ProtocolError,
    decode_body,
    encode,
    kv_of,
    parse_address,
    read_msg,
    syncer_for,
)

pytestmark = pytest.mark.unit


def test_frame_round_trip_over_a_socketpair():
    a, b = socket.socketpair()
    with a, b:
        msg = {"type": "MsgClientHello", "Hostname": "k8s-w0", "SyncerType": "felix"}
        frame = encode(msg)
        assert struct.unpack(">I", frame[:4])[0] == len(frame) - 4
        a.sendall(frame[:3])
        a.sendall(frame[3:] + encode({"type": "MsgPing", "Timestamp": 1.5}))
        assert read_msg(b) == msg
        assert read_msg(b)["type"] == "MsgPing"


@pytest.mark.parametrize("body,problem", [(b"\xff\xfe", "not JSON"), (b"[1,2]", "not a Typha message"),
                                          (b'{"type":"MsgEvil"}', "not a Typha message")])
def test_bad_frames_are_named(body, problem):
    with pytest.raises(ProtocolError, match=problem):
        decode_body(body)


def test_oversized_frame_is_refused_before_reading_it():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(struct.pack(">I", 1 << 30))
        with pytest.raises(ProtocolError, match="exceeds"):
            read_msg(b)


def test_unknown_type_cannot_be_sent():
    with pytest.raises(ProtocolError):
        encode({"type": "Nope"})


def test_syncer_for_kinds():
    assert syncer_for(["WorkloadEndpoint", "Node", "IPPool", "FelixConfiguration"]) == "felix"
    assert syncer_for(["Node", "BGPConfiguration", "BGPPeer", "IPPool", "BlockAffinity", "IPAMBlock"]) == "bgp"
    with pytest.raises(ValueError, match="no Typha syncer"):
        syncer_for(["WorkloadEndpoint", "BGPPeer"])


def test_kv_of_uses_calico_keys():
    pool = IPPool(metadata=Metadata(name="p"), spec=IPPool.Spec(cidr="192.168.0.0/16", block_size=24))
    kv = kv_of("IPPool", "p", None, pool, 7, "new")
    assert kv["Key"] == "/calico/resources/v3/projectcalico.org/ippools/p" and kv["Revision"] == 7
    assert '"192.168.0.0/16"' in kv["Value"]
    gone = kv_of("IPPool", "p", None, None, 9, "deleted")
    assert gone["Value"] is None and gone["Key"] == kv["Key"]


def test_parse_address():
    assert parse_address("172.30.0.10") == ("172.30.0.10", 5473)
    assert parse_address("172.30.0.10:6000") == ("172.30.0.10", 6000)
    with pytest.raises(ValueError, match="port 'x'"):
        parse_address("h:x")


def test_every_kind_felix_and_confd_watch_comes_through_one_syncer():
    """Felix watches IPAM blocks (its VXLAN routes come from them), as Calico's felix syncer
    carries them; a kind missing here would leave a Typha-fed Felix never in sync."""
    from agent.confd.watcher import KINDS as CONFD_KINDS
    from agent.felix.daemon import WATCH_KINDS
    from datastore.typha import syncer_for

    assert syncer_for(WATCH_KINDS) == "felix" and "IPAMBlock" in WATCH_KINDS
    assert syncer_for(CONFD_KINDS) == "bgp"
