"""The speaker's transport for one session attempt (no sockets: the connect is a stand-in)."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network

import pytest

from agent.bgp import errors as E
from agent.bgp import fsm as F
from agent.bgp import messages as M
from agent.bgp.config import PeerConfig, SpeakerConfig
from agent.bgp.prefix import parse
from agent.bgp.speaker import Connection, Peer, Speaker

pytestmark = pytest.mark.unit


def attempt_in_flight() -> tuple[Connection, list]:
    me, other = A("172.30.0.10"), A("172.30.0.11")
    sp = Speaker(SpeakerConfig(router_id=me, local_as=64512, local_address=me,
                               timers=F.Timers(connect_delay=0.1, connect_retry=0.3)),
                 program_kernel=False)
    conn = Connection(Peer(sp, PeerConfig("Mesh_172_30_0_11", other, 64512)), incoming=False)
    started = []
    conn._connect = lambda attempt: started.append(attempt) or asyncio.sleep(3600)
    conn.feed(F.ManualStart())
    conn._fire("connect_retry")          # the connect delay: first attempt
    assert conn.state is F.State.CONNECT and len(started) == 1
    return conn, started


def test_retry_expiry_racing_a_completed_connect_lets_the_connect_win():
    async def main() -> None:
        conn, started = attempt_in_flight()
        conn._fire("connect_retry")      # expiry in the same iteration as the completion
        assert len(started) == 1 and "connect_retry" in conn.timers  # deferred, not fired
        conn._connecting.cancel()
        conn._connecting = None
        conn.feed(F.TcpConnected())      # the completion runs first: StopTimer cancels it
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert conn.state is F.State.OPENSENT and len(started) == 1
        conn._close()

    asyncio.run(main())


def test_retry_expiry_without_a_completion_drops_the_attempt_and_connects_again():
    async def main() -> None:
        conn, started = attempt_in_flight()
        first = conn._connecting
        conn._fire("connect_retry")
        await asyncio.sleep(0)           # the deferred expiry fires one iteration later
        await asyncio.sleep(0)
        assert len(started) == 2 and (first.cancelled() or first.cancelling())
        assert conn._connecting is not first and conn.state is F.State.CONNECT
        conn._close()

    asyncio.run(main())


def test_retry_expiry_after_the_kernel_connected_keeps_the_attempt():
    """On a loop slowed by load the transport of a connected socket takes several iterations
    to make: a connect-retry expiry meanwhile must not drop a connection the peer accepted."""
    async def main() -> None:
        conn, started = attempt_in_flight()
        first = conn._connecting
        conn._tcp_up = True              # sock_connect returned; open_connection under way
        conn._fire("connect_retry")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(started) == 1 and conn._connecting is first and not first.cancelled()
        assert conn.state is F.State.CONNECT and "connect_retry" not in conn.timers
        first.cancel()
        conn._connecting, conn._tcp_up = None, False
        conn.feed(F.TcpConnected())
        assert conn.state is F.State.OPENSENT
        conn._close()

    asyncio.run(main())


def test_peer_infos_are_made_only_for_the_peers_asked_for():
    """An export round builds the RIB's view of its target peer (and of a reflected route's
    source), not of every peer of the speaker: in a mesh each round was a pass over all peers."""
    me = A("172.30.0.10")
    sp = Speaker(SpeakerConfig(router_id=me, local_as=64512, local_address=me), program_kernel=False)
    made: list[str] = []
    for i in range(11, 61):
        peer = Peer(sp, PeerConfig(f"Mesh_172_30_0_{i}", A(f"172.30.0.{i}"), 64512))
        real = peer.info_for_rib
        peer.info_for_rib = lambda real=real, name=peer.config.name: made.append(name) or real()
        sp.peers[peer.config.name] = peer
    infos = sp._peer_infos()
    assert made == [] and len(infos) == 50 and "Mesh_172_30_0_12" in infos
    assert infos["Mesh_172_30_0_12"].address == A("172.30.0.12") and made == ["Mesh_172_30_0_12"]
    assert infos.get("Mesh_172_30_0_99") is None
    with pytest.raises(KeyError):
        infos["Mesh_172_30_0_99"]


def test_a_peers_open_is_encoded_once_while_it_stays_the_same(monkeypatch):
    """Each accepted connection and each outgoing attempt sends the peer the same OPEN: its
    bytes are kept, and made again when the OPEN changes (hold time, capabilities)."""
    from agent.bgp import messages as M

    me, other = A("172.30.0.10"), A("172.30.0.11")
    sp = Speaker(SpeakerConfig(router_id=me, local_as=64512, local_address=me), program_kernel=False)
    peer = Peer(sp, PeerConfig("Mesh_172_30_0_11", other, 64512))
    encodes: list[M.Open] = []
    real = M.encode
    monkeypatch.setattr(M, "encode", lambda msg, **kw: encodes.append(msg) or real(msg, **kw))
    first = F.FSM(peer.fsm_config())._open()
    data = [peer.open_bytes(F.FSM(peer.fsm_config())._open()) for _ in range(5)]
    assert data == [real(first)] * 5 and len(encodes) == 1
    shorter = M.Open(asn=first.asn, hold_time=9, router_id=first.router_id, capabilities=first.capabilities)
    assert peer.open_bytes(shorter) == real(shorter) and len(encodes) == 2
    assert M.decode(peer.open_bytes(shorter)).hold_time == 9


def test_a_hold_timer_restarted_by_every_message_keeps_one_entry_and_expires_after_the_last():
    """The hold timer restarts on every KEEPALIVE and UPDATE received. It expires ``hold``
    seconds after the last one, not the first; and the loop holds one entry for it however many
    messages came (a cancel and a new entry per message filled the heap the loop sorts)."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        conn, _started = attempt_in_flight()
        conn._close()
        conn = Connection(conn.peer, incoming=True)
        expired: list[tuple[str, float]] = []
        conn.feed = lambda ev: expired.append((ev.name, loop.time()))  # only timer expiries come
        t0 = loop.time()
        conn._do(F.StartTimer("hold", 0.3))
        first = conn.timers["hold"]
        before = len(loop._scheduled)
        for _ in range(50):              # messages over 0.2 s, each restarting the timer
            await asyncio.sleep(0.004)
            conn._do(F.StartTimer("hold", 0.3))
        last = loop.time()
        # One entry however many restarts. The handle is the first one unless the loop was
        # stalled past the first deadline (a loaded CI machine), when _due re-armed it once.
        assert len(loop._scheduled) <= before
        assert conn.timers["hold"] is first or loop.time() >= first.when(), (first, last)
        while not expired and loop.time() - t0 < 5:
            await asyncio.sleep(0.01)
        assert [name for name, _ in expired] == ["hold"]
        assert expired[0][1] >= last + 0.3 - 0.01, (expired, last)
        conn._do(F.StartTimer("hold", 0.1))  # a shorter deadline than the one set: set anew
        conn._do(F.StartTimer("keepalive", 0.05))
        conn._do(F.StopTimer("keepalive"))   # a stopped timer never expires
        await asyncio.sleep(0.2)
        assert [name for name, _ in expired] == ["hold", "hold"]
        conn._close()

    asyncio.run(main())


def test_sessions_the_daemon_accepts_run_without_nagle():
    """``python -m agent.bgp.daemon`` listens on a socket of its own (bind_listener); the
    sessions it accepts must have TCP_NODELAY as its outgoing ones do, or an UPDATE sent while
    a KEEPALIVE is unacknowledged waits for the peer's delayed ACK (tens of ms)."""
    import socket

    from agent.bgp.daemon import bind_listener

    async def main() -> list[int]:
        listener = bind_listener({"listen_address": "127.0.0.1", "listen_port": 0})
        got: list[int] = []
        accepted = asyncio.Event()

        async def on_accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            accepted.set()
            writer.close()

        server = await asyncio.start_server(on_accept, sock=listener)
        _r, w = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
        await asyncio.wait_for(accepted.wait(), 5)
        w.close()
        server.close()
        return got

    assert asyncio.run(main()) == [1]


def test_a_connection_the_peer_closes_is_tried_again_after_the_connect_delay_not_the_error_wait():
    """A passive peer that does not know us yet closes our connection (BIRD: "Unexpected
    connect from unknown address"). BIRD connects again after MAX(1 s, its connect delay);
    the error wait (5 s doubling to 30 s) follows protocol errors only. A 100-node lab's
    control plane closed 4-30 workers' first connections this way at start-up, and each
    session then came up 4-17 s later."""
    async def main() -> None:
        conn, _started = attempt_in_flight()
        peer = conn.peer
        peer.main, peer.stopped = conn, False
        conn._connecting.cancel()
        conn._connecting = None
        conn.feed(F.TcpConnected())
        assert conn.state is F.State.OPENSENT
        loop = asyncio.get_running_loop()
        conn.feed(F.TcpFailed("connection closed"))
        assert peer.main is None and peer.failures == 0
        assert peer.restart_handle.when() - loop.time() == pytest.approx(0.9, abs=0.05)  # 1 s - 0.1 s
        peer.restart_handle.cancel()

        conn2 = Connection(peer, incoming=False)       # and a protocol error: the error wait
        peer.main = conn2
        conn2._connect = lambda attempt: asyncio.sleep(3600)
        conn2.feed(F.ManualStart())
        conn2._fire("connect_retry")
        conn2._connecting.cancel()
        conn2._connecting = None
        conn2.feed(F.TcpConnected())
        conn2.feed(F.MessageReceived(M.Notification(E.OPEN_MESSAGE_ERROR, E.BAD_PEER_AS)))
        assert peer.failures == 1
        assert peer.restart_handle.when() - loop.time() == pytest.approx(5, abs=0.05)  # Calico's 5 s
        peer.restart_handle.cancel()

    asyncio.run(main())


class _Session:
    """An Established session that records what is sent (the export path's only use of it)."""

    state = F.State.ESTABLISHED
    send_addpath = False

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_raw(self, data: bytes) -> None:
        self.sent.append(data)


def _mesh_speaker(*peers: tuple[str, int]) -> tuple[Speaker, dict[str, Peer]]:
    me = A("172.30.0.10")
    sp = Speaker(SpeakerConfig(router_id=me, local_as=64512, local_address=me,
                               export_pools=(IPv4Network("192.168.0.0/16"),)), program_kernel=False)
    out = {}
    for i, (name, asn) in enumerate(peers):
        p = Peer(sp, PeerConfig(name, A(f"172.30.0.{11 + i}"), asn))
        p.session = _Session()
        sp.peers[name] = out[name] = p
    return sp, out


def _learn(sp: Speaker, peer: Peer, prefix: str) -> set[int]:
    upd = M.Update(attributes=M.Attributes(origin=0, next_hop=peer.config.address, local_pref=100),
                   nlri=[parse(prefix)])
    return sp.rib.apply_update(peer.info_for_rib(), upd)


def _updates(session: _Session) -> list[M.Update]:
    data = b"".join(session.sent)
    out = []
    while data:
        n = int.from_bytes(data[16:18], "big")
        out.append(M.decode(data[:n]))
        data = data[n:]
    return out


def test_a_route_learned_in_a_full_mesh_is_sent_to_no_ibgp_peer_and_still_to_an_ebgp_one():
    """Split horizon: a route learned from an iBGP peer goes to no other iBGP peer (no route
    reflection configured). Such a round skips the iBGP peers altogether; an eBGP peer still
    gets the route, and an iBGP peer that had been sent the prefix gets its withdrawal."""
    sp, peers = _mesh_speaker(("Mesh_172_30_0_11", 64512), ("Mesh_172_30_0_12", 64512),
                              ("Global_172_30_0_13", 65001))
    calls = []
    real = sp._export_items_to
    sp._export_items_to = lambda peer, *a: calls.append(peer.config.name) or real(peer, *a)
    sp._pending_export = _learn(sp, peers["Mesh_172_30_0_11"], "192.168.5.0/26")
    sp._flush_export()
    assert calls == ["Global_172_30_0_13"]                     # not one iBGP peer visited
    assert not peers["Mesh_172_30_0_12"].session.sent
    (upd,) = _updates(peers["Global_172_30_0_13"].session)
    assert upd.nlri == [parse("192.168.5.0/26")]

    # an iBGP peer that was sent the prefix before (e.g. when it was ours) is sent its withdrawal
    pfx = parse("192.168.6.0/26")
    peers["Mesh_172_30_0_12"].adj_out[pfx] = M.Attributes(origin=0, next_hop=A("172.30.0.10"))
    calls.clear()
    sp._pending_export = _learn(sp, peers["Mesh_172_30_0_11"], "192.168.6.0/26")
    sp._flush_export()
    assert sorted(calls) == ["Global_172_30_0_13", "Mesh_172_30_0_12"]
    (wd,) = _updates(peers["Mesh_172_30_0_12"].session)
    assert wd.withdrawn == [pfx] and pfx not in peers["Mesh_172_30_0_12"].adj_out
