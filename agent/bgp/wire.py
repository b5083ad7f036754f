"""The byte stream of one BGP TCP connection: an asyncio buffered protocol that frames messages.

A session's socket is read into one reused buffer (``recv_into``, no allocation per read) and
every complete message is handed to the connection that owns the stream, in the callback that
read it. A stream reader and a reading task cost a wakeup of that task, two ``readexactly``
calls and a fresh 256 KiB read buffer (mmap, mremap, munmap) per message; a single-prefix
UPDATE reaching 29 receivers on two CPUs (a new block in a 30-node mesh) paid that 29 times
(docs/bgp.md).

The owner (:class:`agent.bgp.speaker.Connection`) implements three calls:

* ``on_wire(data) -> bool``: one whole message, header included; False stops delivery (the
  connection was dropped or ended while handling it);
* ``on_wire_error(err)``: the header of the next message is invalid (a BGPError naming it);
  nothing is delivered after it;
* ``on_wire_lost(reason)``: the peer closed the connection or the socket failed.

Bytes that arrive before an owner is bound wait in the buffer and are delivered by
:meth:`Wire.bind`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from agent.bgp import errors as E
from agent.bgp import messages as M

#: the read buffer a connection starts with: two maximum-size messages (a mesh's sessions carry
#: a few small messages each; a 100-node node holds 99 of them); compacted when less than one
#: message fits at its end
INITIAL_BUFFER_SIZE = 2 * M.MAX_MESSAGE_LEN
#: what it grows to, doubling each time a read fills the room offered (more bytes wait: a full
#: table being sent), so bulk transfers read up to 16 messages per call
BUFFER_SIZE = 16 * M.MAX_MESSAGE_LEN


class Wire(asyncio.BufferedProtocol):
    """One TCP connection's BGP framing (see the module docstring)."""

    def __init__(self, on_made: Callable[[asyncio.Transport, Wire], None] | None = None) -> None:
        """``on_made(transport, wire)``: called when the connection is made (a listener's
        accept callback); None for an outgoing connection, bound by its creator."""
        self.transport: asyncio.Transport | None = None
        self.owner: Any = None
        self.lost: asyncio.Future | None = None  # done once the socket is closed
        self._on_made = on_made
        self._buf = bytearray(INITIAL_BUFFER_SIZE)
        self._view = memoryview(self._buf)
        self._start = 0  # the first byte not yet delivered
        self._end = 0    # the end of the bytes read
        self._offered = 0  # the room the last get_buffer gave
        self._grow = False  # the last read filled it: a larger buffer next time
        self._failed = False

    # ---- asyncio protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # noqa: D102
        self.transport = transport  # type: ignore[assignment]
        self.lost = asyncio.get_running_loop().create_future()
        if self._on_made is not None:
            self._on_made(self.transport, self)

    def get_buffer(self, sizehint: int) -> memoryview:  # noqa: D102
        rest = self._end - self._start
        if self._grow or len(self._buf) - rest < M.MAX_MESSAGE_LEN:
            # a larger one: reads fill it (bulk), or the undelivered bytes do (read before an
            # owner was bound: asyncio treats a buffer with no room as a fatal error)
            self._grow = False
            grown = bytearray(2 * len(self._buf))
            grown[:rest] = self._buf[self._start:self._end]
            self._buf, self._view = grown, memoryview(grown)
            self._start, self._end = 0, rest
        elif len(self._buf) - self._end < M.MAX_MESSAGE_LEN:
            # keep room for a whole message after the undelivered bytes
            self._buf[:rest] = self._buf[self._start:self._end]
            self._start, self._end = 0, rest
        self._offered = len(self._buf) - self._end
        return self._view[self._end:]

    def buffer_updated(self, nbytes: int) -> None:  # noqa: D102
        self._end += nbytes
        if nbytes >= self._offered and len(self._buf) < BUFFER_SIZE:
            self._grow = True
        if self.owner is not None:
            self._deliver()

    def eof_received(self) -> bool | None:  # noqa: D102
        return None  # close our end too: connection_lost(None) follows

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)
        owner, self.owner = self.owner, None
        if owner is not None and not self._failed:
            owner.on_wire_lost("connection closed" if exc is None else f"Socket: {exc}")

    def pause_writing(self) -> None:  # noqa: D102
        """Writes are never awaited (the kernel's socket buffer and the transport's own
        buffer hold a session's UPDATEs); nothing to pause."""

    def resume_writing(self) -> None:  # noqa: D102
        """See :meth:`pause_writing`."""

    # ---- owner side
    def bind(self, owner: Any) -> None:
        """Deliver to ``owner`` from now on, starting with what is buffered already."""
        self.owner = owner
        self._deliver()

    def unbind(self) -> None:
        """Deliver nothing more (the owner dropped this connection)."""
        self.owner = None

    def _deliver(self) -> None:
        buf = self._buf
        while not self._failed:
            owner = self.owner
            start = self._start
            avail = self._end - start
            if owner is None or avail < M.HEADER_LEN:
                break
            try:
                length, _type = M.parse_header(bytes(buf[start:start + M.HEADER_LEN]))
            except E.BGPError as err:
                self._failed = True  # the stream is out of step: nothing more from it
                owner.on_wire_error(err)
                break
            if avail < length:
                break
            self._start = start + length
            if not owner.on_wire(bytes(buf[start:start + length])):
                break
        if self._start == self._end:
            self._start = self._end = 0
