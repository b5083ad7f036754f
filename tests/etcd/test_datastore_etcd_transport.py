"""The etcd client's transport retry: a stale keep-alive socket is retried, a timed-out
request is not re-sent (it may have been applied; a resent create/CAS would then fail
against our own write). A loopback HTTP server stands in for etcd's gateway so the
server side can be made to hang on purpose."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from datastore import errors
from datastore.etcd import EtcdClient
from datastore.etcd_aio import AsyncEtcdClient

pytestmark = pytest.mark.etcd

OK = b'{"header":{"revision":"7"}}'


class Gateway:
    """Answers each request on a connection per ``script``: "ok", "hang" or "close"."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.requests = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while not self.done.is_set():
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, rest = buf.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                while len(rest) < length:
                    rest += conn.recv(65536)
                buf = rest[length:]
                self.requests += 1
                action = self.script.pop(0) if self.script else "ok"
                if action == "hang":
                    self.done.wait(5)
                    return
                if action == "close":
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(OK), OK))

    def close(self) -> None:
        self.done.set()
        self.sock.close()


@pytest.fixture
def gateway():
    made: list[Gateway] = []

    def make(script: list[str]) -> Gateway:
        gw = Gateway(script)
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.close()


def test_stale_keepalive_socket_is_retried_once(gateway):
    gw = gateway(["ok", "close", "ok"])
    client = EtcdClient(f"http://127.0.0.1:{gw.port}", timeout=2)
    assert client.put("/k", "v") == 7
    assert client.put("/k", "v") == 7  # the kept-alive socket was closed: resent on a new one
    assert gw.requests == 3


def test_timed_out_request_is_not_resent(gateway):
    gw = gateway(["ok", "hang"])
    client = EtcdClient(f"http://127.0.0.1:{gw.port}", timeout=0.5)
    assert client.put("/k", "v") == 7
    with pytest.raises(errors.DatastoreUnavailable, match="cannot reach etcd"):
        client.create("/k2", "v")
    assert gw.requests == 2, "the timed-out create was sent again"


def test_error_reply_with_chunks_and_trailer_leaves_the_connection_usable(etcd_server):
    """etcd's gateway sends errors chunked with a trailer: the kept-alive socket must be
    left at the next reply (a misread would make the next create look stale and be resent)."""
    client = EtcdClient(etcd_server.endpoint, timeout=2)
    key = f"/transport-test/{threading.get_ident()}"
    client.delete_prefix("/transport-test/")
    first = client.put(key, "a")
    client.put(key, "b")
    client.call("/v3/kv/compaction", {"revision": str(first)})
    with pytest.raises(errors.Compacted):
        client.call("/v3/kv/range", {"key": "eA==", "revision": str(first - 1)})
    client.create(key + "/new", "c")  # on the same socket: applied once, no AlreadyExists
    assert client.get(key + "/new").value == b"c"
    client.delete_prefix("/transport-test/")


def test_get_many_reads_several_keys_in_order_with_none_where_absent(etcd_server):
    client = EtcdClient(etcd_server.endpoint, timeout=2)
    client.delete_prefix("/get-many/")
    client.put("/get-many/a", "1")
    client.put("/get-many/c", "3")
    got = client.get_many(["/get-many/c", "/get-many/b", "/get-many/a"])
    assert [kv.value if kv else None for kv in got] == [b"3", None, b"1"]
    client.delete_prefix("/get-many/")


# --- the asyncio client (datastore.etcd_aio: the API server's) -----------------------------------

def test_aio_stale_keepalive_socket_is_retried_once_and_a_timeout_is_not_resent(gateway):
    gw = gateway(["ok", "close", "ok", "hang"])

    async def run() -> None:
        client = AsyncEtcdClient(f"http://127.0.0.1:{gw.port}", timeout=0.5)
        assert await client.put("/k", "v") == 7
        assert await client.put("/k", "v") == 7  # the kept-alive socket was closed: resent on a new one
        assert gw.requests == 3
        with pytest.raises(errors.DatastoreUnavailable, match="cannot reach etcd"):
            await client.create("/k2", "v")
        assert gw.requests == 4, "the timed-out create was sent again"
        client.close()

    asyncio.run(run())


def test_aio_operations_errors_and_watch_against_etcd(etcd_server):
    """The operations the API server uses, their typed errors (a chunked error reply with a
    trailer leaves the kept-alive connection at the next reply), and the watch stream."""
    sync = EtcdClient(etcd_server.endpoint, timeout=2)
    sync.delete_prefix("/aio-test/")

    async def run() -> None:
        client = AsyncEtcdClient(etcd_server.endpoint, timeout=2, max_connections=2)
        events: list = []

        async def follow(start: int) -> None:
            async for batch in client.watch("/aio-test/", start):
                events.extend((e.type, e.kv.key, e.kv.value) for e in batch)

        start = await client.revision()
        watcher = asyncio.create_task(follow(start + 1))
        r1 = await client.create("/aio-test/a", b"1")
        with pytest.raises(errors.AlreadyExists):
            await client.create("/aio-test/a", b"x")
        r2 = await client.update("/aio-test/a", b"2", r1)
        with pytest.raises(errors.Conflict, match=f"expected revision {r1}, found {r2}"):
            await client.update("/aio-test/a", b"3", r1)
        with pytest.raises(errors.NotFound):
            await client.update("/aio-test/none", b"3", r1)
        assert (await client.get("/aio-test/a")).value == b"2"
        assert await client.get("/aio-test/none") is None
        await asyncio.gather(*(client.put(f"/aio-test/p{i}", b"v") for i in range(20)))  # 2 connections
        kvs, rev = await client.list("/aio-test/")
        assert [kv.key for kv in kvs][:3] == ["/aio-test/a", "/aio-test/p0", "/aio-test/p1"] and rev >= r2
        rd = await client.delete("/aio-test/a", r2)
        assert rd > r2 and await client.delete("/aio-test/a") == 0
        await client.call("/v3/kv/compaction", {"revision": str(r1)})
        with pytest.raises(errors.Compacted):
            await client.call("/v3/kv/range", {"key": "eA==", "revision": str(r1 - 1)})
        assert await client.create("/aio-test/b", b"c") > rd  # the same connection, read to the end
        await wait_for_async(lambda: ("DELETE", "/aio-test/a", b"") in events and
                             ("PUT", "/aio-test/b", b"c") in events, lambda: events)
        assert events[:2] == [("PUT", "/aio-test/a", b"1"), ("PUT", "/aio-test/a", b"2")]
        watcher.cancel()
        with pytest.raises(errors.Compacted):
            async for _ in client.watch("/aio-test/", r1 - 1):
                pass
        client.close()

    asyncio.run(run())
    sync.delete_prefix("/aio-test/")


async def wait_for_async(cond, seen, timeout: float = 5.0) -> None:
    """Poll ``cond`` on the loop until ``timeout``; the failure says what was last ``seen()``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, f"not seen within {timeout} s; last seen: {seen()}"
        await asyncio.sleep(0.02)
