"""SPDY/3.1 framing (draft-mbelshe-httpbis-spdy-00) as kubectl's port-forward speaks it,
either directly (``Upgrade: SPDY/3.1``) or tunnelled in WebSocket binary messages
(subprotocol ``SPDY/3.1+portforward.k8s.io``). Pure codec plus a small session that
accepts the peer's streams; the transport is injected (``send`` coroutine, ``feed`` bytes).
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
RST_PROTOCOL_ERROR, RST_CANCEL = 1, 5
INITIAL_WINDOW = 64 * 1024

_WORDS = (
    "options head post put delete trace accept accept-charset accept-encoding accept-language "
    "accept-ranges age allow authorization cache-control connection content-base content-encoding "
    "content-language content-length content-location content-md5 content-range content-type date etag "
    "expect expires from host if-match if-modified-since if-none-match if-range if-unmodified-since "
    "last-modified location max-forwards pragma proxy-authenticate proxy-authorization range referer "
    "retry-after server te trailer transfer-encoding upgrade user-agent vary via warning www-authenticate "
    "method get status|200 OK|version|HTTP/1.1|url|public|set-cookie|keep-alive|origin"
)
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)


def _dictionary() -> bytes:
    """The SPDY/3 header compression dictionary (spec section 2.6.10.1): length-prefixed
    header words, then a block of common values."""
    head, _, rest = _WORDS.partition(" status|")
    words = head.split(" ") + ["status"] + rest.split("|")
    out = b"".join(struct.pack(">I", len(w)) + w.encode() for w in words)
    return out + _TAIL.encode()


DICTIONARY = _dictionary()


@dataclass
class Frame:
    """One frame: control (``type`` > 0) or data (``type`` == 0)."""

    type: int
    flags: int
    stream_id: int = 0
    data: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 0
    delta: int = 0
    settings: list[tuple[int, int, int]] = field(default_factory=list)
    ping_id: int = 0


class ProtocolError(Exception):
    """A frame that does not parse."""


class HeaderCodec:
    """The per-direction zlib contexts of a session (compression state spans frames)."""

    def __init__(self) -> None:
        self._in = zlib.decompressobj(zdict=DICTIONARY)
        self._out = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY,
                                     DICTIONARY)

    def decode(self, block: bytes) -> dict[str, str]:
        try:
            raw = self._in.decompress(block)
        except zlib.error as exc:
            raise ProtocolError(f"header block does not inflate: {exc}") from None
        if len(raw) < 4:
            return {}
        (n,) = struct.unpack_from(">I", raw, 0)
        pos, out = 4, {}
        for _ in range(n):
            (kl,) = struct.unpack_from(">I", raw, pos)
            k = raw[pos + 4:pos + 4 + kl].decode()
            pos += 4 + kl
            (vl,) = struct.unpack_from(">I", raw, pos)
            v = raw[pos + 4:pos + 4 + vl].decode()
            pos += 4 + vl
            out[k.lower()] = v
        return out

    def encode(self, headers: dict[str, str]) -> bytes:
        raw = struct.pack(">I", len(headers))
        for k, v in headers.items():
            kb, vb = k.lower().encode(), v.encode()
            raw += struct.pack(">I", len(kb)) + kb + struct.pack(">I", len(vb)) + vb
        return self._out.compress(raw) + self._out.flush(zlib.Z_SYNC_FLUSH)


def parse(buf: bytearray, codec: HeaderCodec) -> list[Frame]:
    """Take every complete frame off the front of ``buf``."""
    frames = []
    while len(buf) >= 8:
        (length,) = struct.unpack_from(">I", buf, 4)
        flags, length = length >> 24, length & 0xFFFFFF
        if len(buf) < 8 + length:
            break
        head = bytes(buf[:8])
        body = bytes(buf[8:8 + length])
        del buf[:8 + length]
        if head[0] & 0x80:
            (vt,) = struct.unpack_from(">I", head, 0)
            version, typ = (vt >> 16) & 0x7FFF, vt & 0xFFFF
            if version != VERSION:
                raise ProtocolError(f"SPDY version {version} is not served (3 is)")
            f = Frame(typ, flags)
            if typ == SYN_STREAM:
                f.stream_id = struct.unpack_from(">I", body, 0)[0] & 0x7FFFFFFF
                f.headers = codec.decode(body[10:])
            elif typ in (SYN_REPLY, HEADERS):
                f.stream_id = struct.unpack_from(">I", body, 0)[0] & 0x7FFFFFFF
                f.headers = codec.decode(body[4:])
            elif typ == RST_STREAM:
                f.stream_id, f.status = struct.unpack_from(">II", body, 0)
                f.stream_id &= 0x7FFFFFFF
            elif typ == WINDOW_UPDATE:
                f.stream_id, f.delta = struct.unpack_from(">II", body, 0)
                f.stream_id &= 0x7FFFFFFF
            elif typ == PING:
                (f.ping_id,) = struct.unpack_from(">I", body, 0)
            elif typ == SETTINGS:
                (n,) = struct.unpack_from(">I", body, 0)
                for i in range(n):
                    idf, val = struct.unpack_from(">II", body, 4 + 8 * i)
                    f.settings.append((idf >> 24, idf & 0xFFFFFF, val))
            elif typ == GOAWAY:
                f.stream_id = struct.unpack_from(">I", body, 0)[0] & 0x7FFFFFFF
            frames.append(f)
        else:
            (sid,) = struct.unpack_from(">I", head, 0)
            frames.append(Frame(0, flags, sid & 0x7FFFFFFF, body))
    return frames


def _control(typ: int, flags: int, body: bytes) -> bytes:
    return struct.pack(">HHI", 0x8000 | VERSION, typ, (flags << 24) | len(body)) + body


def syn_reply(codec: HeaderCodec, sid: int, headers: dict[str, str], fin: bool = False) -> bytes:
    return _control(SYN_REPLY, FLAG_FIN if fin else 0, struct.pack(">I", sid) + codec.encode(headers))


def data(sid: int, payload: bytes, fin: bool = False) -> bytes:
    return struct.pack(">II", sid, ((FLAG_FIN if fin else 0) << 24) | len(payload)) + payload


def rst_stream(sid: int, status: int) -> bytes:
    return _control(RST_STREAM, 0, struct.pack(">II", sid, status))


def window_update(sid: int, delta: int) -> bytes:
    return _control(WINDOW_UPDATE, 0, struct.pack(">II", sid, delta))


def ping(pid: int) -> bytes:
    return _control(PING, 0, struct.pack(">I", pid))


def goaway(last: int, status: int = 0) -> bytes:
    return _control(GOAWAY, 0, struct.pack(">II", last, status))


class Stream:
    """A stream the peer opened: its headers and a queue of received data (b"" = FIN)."""

    def __init__(self, session: Session, sid: int, headers: dict[str, str]):
        self.session, self.id, self.headers = session, sid, headers
        self.incoming: asyncio.Queue[bytes] = asyncio.Queue()
        self.closed_local = False

    async def write(self, payload: bytes, fin: bool = False) -> None:
        if self.closed_local:
            return
        step = 16384
        for i in range(0, max(len(payload), 1), step):
            last = i + step >= len(payload)
            await self.session.send(data(self.id, payload[i:i + step], fin and last))
        if fin:
            self.closed_local = True

    async def close(self) -> None:
        if not self.closed_local:
            self.closed_local = True
            await self.session.send(data(self.id, b"", True))

    async def reset(self) -> None:
        self.closed_local = True
        await self.session.send(rst_stream(self.id, RST_CANCEL))


class Session:
    """The server side of one SPDY session: feed it bytes; it replies to SYN_STREAMs and
    calls ``on_stream`` with each new :class:`Stream`."""

    def __init__(self, send: Callable[[bytes], Awaitable[None]], on_stream: Callable[[Stream], Awaitable[None]]):
        self._send = send
        self.on_stream = on_stream
        self.codec = HeaderCodec()
        self.buf = bytearray()
        self.streams: dict[int, Stream] = {}
        self._lock = asyncio.Lock()
        self.closed = False

    async def send(self, frame: bytes) -> None:
        async with self._lock:
            await self._send(frame)

    async def feed(self, chunk: bytes) -> None:
        self.buf += chunk
        for f in parse(self.buf, self.codec):
            await self._handle(f)

    async def _handle(self, f: Frame) -> None:
        if f.type == 0:
            s = self.streams.get(f.stream_id)
            if s is not None:
                if f.data:
                    s.incoming.put_nowait(f.data)
                    await self.send(window_update(f.stream_id, len(f.data)) + window_update(0, len(f.data)))
                if f.flags & FLAG_FIN:
                    s.incoming.put_nowait(b"")
            return
        if f.type == SYN_STREAM:
            s = Stream(self, f.stream_id, f.headers)
            self.streams[f.stream_id] = s
            await self.send(syn_reply(self.codec, f.stream_id, {}))
            if f.flags & FLAG_FIN:
                s.incoming.put_nowait(b"")
            await self.on_stream(s)
        elif f.type == RST_STREAM:
            s = self.streams.get(f.stream_id)
            if s is not None:
                s.closed_local = True
                s.incoming.put_nowait(b"")
        elif f.type == PING:
            await self.send(ping(f.ping_id))
        elif f.type == GOAWAY:
            self.closed = True
