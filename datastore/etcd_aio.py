"""An asyncio etcd v3 client over etcd's JSON gateway, for servers on an event loop.

The same operations as :class:`datastore.etcd.EtcdClient` (its plans: what each asks
etcd and how it reads the answers), on keep-alive HTTP/1.1 connections owned by the
event loop instead of blocking sockets on a thread pool: the API server made every etcd
call hop to a pool thread and back (a queue, a thread wake-up, the GIL passed twice and
the loop's self-pipe), which cost it more CPU than the calls themselves. A connection
carries one request at a time; idle ones are kept for the next call, up to
``max_connections`` are open at once. The watch reads its stream on the loop too.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

from datastore import errors
from datastore.etcd import (
    KV,
    EtcdEvent,
    Plan,
    _reason,
    b64,
    decode_reply,
    json_documents,
    parse_endpoints,
    parse_reply_head,
    plan_create,
    plan_delete,
    plan_get,
    plan_list,
    plan_put,
    plan_revision,
    plan_update,
    post_request,
    prefix_end,
    watch_batch,
)

_BROKEN = (OSError, ValueError, EOFError, asyncio.LimitOverrunError)
"""What a failed exchange raises (IncompleteReadError is an EOFError)."""


class _Conn:
    """One keep-alive connection to the gateway."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> _Conn:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    def close(self) -> None:
        self.writer.close()

    async def post(self, host: str, port: int, path: str, payload: bytes) -> tuple[int, bytes, bool]:
        """POST ``payload`` (one write, headers and body): (status, body, keep the connection)."""
        self.writer.write(post_request(host, port, path, payload))
        r = self.reader
        code, length, chunked, close = parse_reply_head((await r.readuntil(b"\r\n\r\n"))[:-4])
        if chunked:
            parts = []
            while True:
                size = int((await r.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                if size == 0:
                    while (await r.readuntil(b"\r\n")) != b"\r\n":  # trailers (the gateway's errors have one)
                        pass
                    break
                parts.append((await r.readexactly(size + 2))[:-2])
            body = b"".join(parts)
        elif length is not None:
            body = await r.readexactly(length)
        else:  # delimited by the end of the connection
            body, close = await r.read(), True
        return code, body, not close


class AsyncEtcdClient:
    """etcd v3 on an event loop: ``await client.get(key)`` etc. (see EtcdClient)."""

    def __init__(self, endpoints: str | list[str], timeout: float = 3.0, max_connections: int = 16):
        self.endpoints = parse_endpoints(endpoints)
        self.timeout = timeout
        self._preferred = 0
        self._idle: dict[int, list[_Conn]] = {}
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    def _describe(self) -> str:
        return ", ".join(f"http://{h}:{p}" for h, p in self.endpoints)

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to the gateway ``path``; fail over across endpoints (as
        EtcdClient.call: a request is sent again only when a reused connection failed
        before any timeout)."""
        payload = json.dumps(body).encode()
        last: BaseException | None = None
        n = len(self.endpoints)
        async with self._slots:
            for k in range(n):
                idx = (self._preferred + k) % n
                host, port = self.endpoints[idx]
                for attempt in range(2):
                    idle = self._idle.get(idx)
                    conn = idle.pop() if idle else None
                    reused = conn is not None
                    try:
                        async with asyncio.timeout(self.timeout):
                            if conn is None:
                                conn = await _Conn.open(host, port)
                            status, data, keep = await conn.post(host, port, path, payload)
                    except _BROKEN as exc:
                        if conn is not None:
                            conn.close()
                        last = exc
                        if reused and attempt == 0 and not isinstance(exc, TimeoutError):
                            continue
                        break
                    except BaseException:  # cancelled mid-exchange: the connection's state is unknown
                        if conn is not None:
                            conn.close()
                        raise
                    if keep and not self._closed:
                        self._idle.setdefault(idx, []).append(conn)
                    else:
                        conn.close()
                    self._preferred = idx
                    return decode_reply(status, data, host, port)
        raise errors.DatastoreUnavailable(f"cannot reach etcd at {self._describe()}: {_reason(last)}")

    async def run(self, plan: Plan) -> Any:
        """Run ``plan`` (datastore.etcd's plans): each request it yields to :meth:`call`."""
        try:
            req = next(plan)
            while True:
                req = plan.send(await self.call(*req))
        except StopIteration as done:
            return done.value

    async def get(self, key: str) -> KV | None:
        """The pair at ``key``, or None."""
        return await self.run(plan_get(key))

    async def list(self, prefix: str) -> tuple[list[KV], int]:
        """Every pair under ``prefix`` (sorted by key) and the store revision."""
        return await self.run(plan_list(prefix))

    async def revision(self) -> int:
        """The current store revision."""
        return await self.run(plan_revision())

    async def put(self, key: str, value: bytes | str) -> int:
        """Unconditional write; the new revision."""
        return await self.run(plan_put(key, value))

    async def create(self, key: str, value: bytes | str) -> int:
        """Write only if ``key`` does not exist (else AlreadyExists); the new revision."""
        return await self.run(plan_create(key, value))

    async def update(self, key: str, value: bytes | str, mod_revision: int) -> int:
        """Compare-and-swap at ``mod_revision`` (else Conflict/NotFound); the new revision."""
        return await self.run(plan_update(key, value, mod_revision))

    async def delete(self, key: str, mod_revision: int | None = None) -> int:
        """Delete ``key`` (only at ``mod_revision`` if given): 0 when nothing was deleted,
        else the deletion's revision."""
        return await self.run(plan_delete(key, mod_revision))

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[EtcdEvent]]:
        """Batches of events under ``prefix`` from ``start_revision`` (inclusive), as
        EtcdClient.watch: Compacted if the revision is gone, DatastoreUnavailable when
        the stream breaks. Cancel the iterating task to stop."""
        host, port = self.endpoints[self._preferred]
        body = {"create_request": {"key": b64(prefix), "range_end": b64(prefix_end(prefix)),
                                   "start_revision": str(start_revision), "progress_notify": True}}
        try:
            async with asyncio.timeout(self.timeout):
                conn = await _Conn.open(host, port)
        except _BROKEN as exc:
            raise errors.DatastoreUnavailable(f"cannot reach etcd at http://{host}:{port}: {_reason(exc)}") from exc
        try:
            payload = json.dumps(body).encode()
            try:
                async with asyncio.timeout(self.timeout):
                    conn.writer.write(b"POST /v3/watch HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json"
                                      b"\r\nContent-Length: %d\r\n\r\n%s" % (host.encode(), port, len(payload),
                                                                           payload))
                    head = await conn.reader.readuntil(b"\r\n\r\n")
            except _BROKEN as exc:
                raise errors.DatastoreUnavailable(f"cannot reach etcd at http://{host}:{port}: "
                                                  f"{_reason(exc)}") from exc
            lines = head.split(b"\r\n")
            status = lines[0].split(None, 2)
            if len(status) < 2 or status[1] != b"200":
                raise errors.DatastoreError(f"etcd watch failed: HTTP {lines[0][:80].decode(errors='replace')}")
            chunked = any(ln.lower().startswith(b"transfer-encoding:") and b"chunked" in ln.lower() for ln in lines)
            decoder = json.JSONDecoder()
            buf = ""
            while True:
                try:
                    if chunked:
                        size = int((await conn.reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                        if size == 0:
                            raise errors.DatastoreUnavailable("etcd closed the watch stream")
                        chunk = (await conn.reader.readexactly(size + 2))[:-2]
                    else:
                        chunk = await conn.reader.read(65536)
                        if not chunk:
                            raise errors.DatastoreUnavailable("etcd closed the watch stream")
                except _BROKEN as exc:
                    raise errors.DatastoreUnavailable(f"etcd watch stream broke: {_reason(exc)}") from exc
                docs, buf = json_documents(buf + chunk.decode(), decoder)
                for doc in docs:
                    batch = watch_batch(doc, prefix, start_revision)
                    if batch:
                        yield batch
        finally:
            conn.close()

    def close(self) -> None:
        """Close the idle connections (calls under way close theirs when done)."""
        self._closed = True
        for conns in self._idle.values():
            for c in conns:
                c.close()
        self._idle.clear()
