"""Typha's framing and syncer choice (pure)."""

from __future__ import annotations

import json
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


def test_updates_encoded_once_frame_as_a_msgkvs():
    """Typha encodes each update once for all its clients: the frame is the same bytes as
    encoding the whole message, and decodes to it."""
    from datastore.typha import encode_kv, encode_kvs

    pool = IPPool(metadata=Metadata(name="p"), spec=IPPool.Spec(cidr="192.168.0.0/16", block_size=24))
    kvs = [kv_of("IPPool", "p", None, pool, 7, "new"), kv_of("IPPool", "q", None, None, 8, "deleted")]
    frame = encode_kvs([encode_kv(kv) for kv in kvs])
    assert frame == encode({"type": "MsgKVs", "KVs": kvs})
    assert decode_body(frame[4:]) == {"type": "MsgKVs", "KVs": kvs}
    assert decode_body(encode_kvs([])[4:]) == {"type": "MsgKVs", "KVs": []}


def test_stream_says_more_while_a_batch_has_events_to_come():
    """A MsgKVs of three pools is three events, ``more`` set on the first two: confd computes the
    BGP configuration and Felix wakes its dataplane once per batch, not per event."""
    import threading

    from datastore.typha import IN_SYNC, PROTOCOL_VERSION, TyphaClient

    def pool(name: str, rev: int) -> dict:
        p = IPPool(metadata=Metadata(name=name), spec=IPPool.Spec(cidr=f"10.{rev}.0.0/16", block_size=26))
        return kv_of("IPPool", name, None, p, rev, "new")

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def typha() -> None:
        conn, _ = listener.accept()
        with conn:
            hello = read_msg(conn)
            conn.sendall(encode({"type": "MsgServerHello", "Version": PROTOCOL_VERSION,
                                 "SyncerType": hello["SyncerType"]}))
            conn.sendall(encode({"type": "MsgKVs", "KVs": [pool("a", 1)]}))
            conn.sendall(encode({"type": "MsgSyncStatus", "SyncStatus": IN_SYNC}))
            conn.sendall(encode({"type": "MsgKVs", "KVs": [pool("b", 2), pool("c", 3), pool("d", 4)]}))
            conn.sendall(encode({"type": "MsgKVs", "KVs": [pool("e", 5)]}))
            conn.recv(1)  # until the client goes

    t = threading.Thread(target=typha, daemon=True)
    t.start()
    stream = TyphaClient(f"127.0.0.1:{port}", hostname="w0", read_timeout=5).stream(["IPPool", "Node"])
    seen = []
    deadline = threading.Timer(10, stream.close)  # a stream that never yields "e" ends, not hangs
    deadline.start()
    try:
        for ev in stream:
            seen.append((ev.type, ev.name, stream.more))
            if ev.name == "e":
                break
    finally:
        deadline.cancel()
        stream.close()
        listener.close()
        t.join(5)
    assert seen == [("ADDED", "a", False), ("SYNCED", "", False), ("ADDED", "b", True),
                    ("ADDED", "c", True), ("ADDED", "d", False), ("ADDED", "e", False)]


def test_server_skips_an_update_whose_value_did_not_change():
    """As Typha's snapcache (WouldBeNoOp): a new revision of the same value reaches no client
    and is counted as skipped; a changed value and a deletion (even a repeated one) pass."""
    from agent.typha.server import TyphaServer, _Conn

    server = TyphaServer(client=None)
    conn = _Conn(None, "test")  # type: ignore[arg-type] - _publish only queues
    conn.syncer = "bgp"
    server.conns.add(conn)
    pool = IPPool(metadata=Metadata(name="p"), spec=IPPool.Spec(cidr="192.168.0.0/16"))
    server._publish("IPPool", kv_of("IPPool", "p", None, pool, 5, "new"))
    server._publish("IPPool", kv_of("IPPool", "p", None, pool, 6, "updated"))  # same value
    pool.spec.ipip_mode = "Always"
    server._publish("IPPool", kv_of("IPPool", "p", None, pool, 7, "updated"))
    server._publish("IPPool", kv_of("IPPool", "p", None, None, 8, "deleted"))
    server._publish("IPPool", kv_of("IPPool", "p", None, None, 9, "deleted"))
    sent = [json.loads(text) for text in conn.pending]
    assert [(kv["Revision"], kv["UpdateType"]) for kv in sent] == [
        (5, "new"), (7, "updated"), (8, "deleted"), (9, "deleted")]
    assert server.stats["updates"] == 5 and server.stats["skipped"] == 1
    metrics = server.metrics_text()
    assert 'typha_updates_total{syncer="bgp"} 5' in metrics
    assert 'typha_updates_skipped{syncer="bgp"} 1' in metrics
    assert 'typha_updates_skipped{syncer="felix"} 1' in metrics  # IPPool is in both syncers
