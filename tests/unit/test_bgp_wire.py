"""agent.bgp.wire: framing a session's byte stream into whole messages (no sockets)."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address

import pytest

from agent.bgp import errors as E
from agent.bgp import messages as M
from agent.bgp.prefix import parse
from agent.bgp.wire import BUFFER_SIZE, INITIAL_BUFFER_SIZE, Wire

pytestmark = pytest.mark.unit


class Owner:
    """Records what the wire hands over; ``stop_after`` messages it asks for no more."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.messages: list[bytes] = []
        self.errors: list[E.BGPError] = []
        self.lost: list[str] = []
        self.stop_after = stop_after

    def on_wire(self, data: bytes) -> bool:
        self.messages.append(data)
        return self.stop_after is None or len(self.messages) < self.stop_after

    def on_wire_error(self, err: E.BGPError) -> None:
        self.errors.append(err)

    def on_wire_lost(self, reason: str) -> None:
        self.lost.append(reason)


class Transport:
    def get_extra_info(self, _name: str, default=None):
        return default


def feed(wire: Wire, data: bytes, chunk: int) -> None:
    """What the transport does: recv_into the wire's buffer (at most ``chunk`` bytes, at most
    what the buffer offers), then buffer_updated."""
    i = 0
    while i < len(data):
        view = wire.get_buffer(-1)
        assert len(view) >= M.MAX_MESSAGE_LEN  # room for a whole message, always
        part = data[i:i + min(chunk, len(view))]
        view[:len(part)] = part
        wire.buffer_updated(len(part))
        i += len(part)


def update(i: int, prefixes: int = 1) -> bytes:
    nlri = [parse(f"10.{(i * prefixes + k) // 256 % 256}.{(i * prefixes + k) % 256}.0/26")
            for k in range(prefixes)]
    return M.encode(M.Update(attributes=M.Attributes(origin=0, next_hop=IPv4Address("172.30.0.11"),
                                                     local_pref=100), nlri=nlri))


def made(on_made=None) -> Wire:
    w = Wire(on_made)
    w.connection_made(Transport())
    return w


@pytest.mark.parametrize("chunk", [1, 7, 19, 100, 4096, 65536])
def test_messages_come_out_whole_and_in_order_however_the_stream_is_cut(chunk):
    async def main() -> None:
        sizes = [1, 3, 780, 1, 50] * 40  # up to 4,000-byte UPDATEs, more bytes than the buffer holds
        msgs = [update(i, n) for i, n in enumerate(sizes)] + [M.encode(M.Keepalive())]
        assert sum(map(len, msgs)) > 2 * BUFFER_SIZE and max(map(len, msgs)) <= M.MAX_MESSAGE_LEN
        owner = Owner()
        w = made()
        w.bind(owner)
        feed(w, b"".join(msgs), chunk)
        assert owner.messages == msgs and not owner.errors

    asyncio.run(main())


def test_bytes_read_before_an_owner_is_bound_are_delivered_when_it_is():
    async def main() -> None:
        seen: list[Wire] = []
        w = made(lambda _t, wire: seen.append(wire))
        assert seen == [w]  # an accepted connection is handed over at once
        msgs = [update(1), update(2)]
        feed(w, b"".join(msgs) + msgs[0][:10], 4096)
        owner = Owner()
        w.bind(owner)
        assert owner.messages == msgs
        feed(w, msgs[0][10:], 4096)
        assert owner.messages == msgs + [msgs[0]]

    asyncio.run(main())


def test_more_bytes_than_the_buffer_holds_before_an_owner_is_bound_are_kept():
    """An outgoing connection is bound a few loop iterations after it is made; whatever the
    peer sends meanwhile waits, however much (the buffer grows rather than offering no room,
    which asyncio would treat as a fatal error)."""
    async def main() -> None:
        msgs = [update(i, 780) for i in range(40)]  # ~160 KB
        w = made()
        feed(w, b"".join(msgs), 65536)
        owner = Owner()
        w.bind(owner)
        assert owner.messages == msgs

    asyncio.run(main())


def test_a_bad_header_is_reported_once_and_nothing_after_it_is_delivered():
    async def main() -> None:
        owner = Owner()
        w = made()
        w.bind(owner)
        good = update(1)
        bad = b"\xff" * 15 + b"\x00" + b"\x00\x13\x04"  # the marker's last byte wrong
        feed(w, good + bad + good, 4096)
        assert owner.messages == [good]
        assert len(owner.errors) == 1 and owner.errors[0].subcode == E.CONNECTION_NOT_SYNCHRONIZED
        feed(w, good, 4096)
        w.connection_lost(None)  # the FSM drops the connection after its NOTIFICATION
        assert owner.messages == [good] and owner.lost == []

    asyncio.run(main())


def test_an_owner_that_stops_or_unbinds_gets_nothing_more():
    async def main() -> None:
        msgs = [update(i) for i in range(5)]
        owner = Owner(stop_after=2)
        w = made()
        w.bind(owner)
        feed(w, b"".join(msgs), 65536)
        assert owner.messages == msgs[:2]  # stopped inside the read that brought all five
        w.unbind()
        feed(w, update(9), 4096)
        w.connection_lost(None)
        assert owner.messages == msgs[:2] and owner.lost == []

    asyncio.run(main())


def test_the_peer_closing_or_the_socket_failing_is_reported_with_its_reason():
    async def main() -> None:
        for exc, reason in ((None, "connection closed"),
                            (ConnectionResetError(104, "Connection reset by peer"),
                             "Socket: [Errno 104] Connection reset by peer")):
            owner = Owner()
            w = made()
            w.bind(owner)
            assert w.eof_received() is None  # asyncio then closes our end too
            w.connection_lost(exc)
            assert owner.lost == [reason] and w.lost.done()

    asyncio.run(main())


def test_a_session_starts_with_a_small_buffer_and_a_bulk_transfer_grows_it():
    """A mesh session's few small messages fit the initial buffer; reads that fill the room
    offered (a full table arriving) double it up to BUFFER_SIZE, never further."""
    async def main() -> None:
        w = made()
        owner = Owner()
        w.bind(owner)
        feed(w, update(1), 4096)
        assert len(w._buf) == INITIAL_BUFFER_SIZE
        msgs = [update(i, 780) for i in range(60)]  # ~240 KB, fed as fast as offered
        feed(w, b"".join(msgs), 1 << 20)
        assert owner.messages == [update(1)] + msgs
        assert len(w._buf) == BUFFER_SIZE

    asyncio.run(main())
