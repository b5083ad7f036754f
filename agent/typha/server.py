"""The Typha server: a cache fed by one datastore watch, served to many clients.

Each client says hello with its syncer type (``felix`` or ``bgp``), gets the
server hello, the current snapshot of that syncer's kinds in MsgKVs batches of at
most ``batch`` updates, ``in-sync``, then every later change (batched as they come).
The server pings every ``ping_interval`` seconds and drops a client whose pong is
more than ``pong_timeout`` late; a client that sends anything that is not a valid
message (or a bad hello, or nothing within ``handshake_timeout``) is disconnected
and the server carries on. Framing: :mod:`datastore.typha`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from datastore.typha import (
    DEFAULT_PORT,
    IN_SYNC,
    PROTOCOL_VERSION,
    SYNCER_KINDS,
    ProtocolError,
    encode,
    encode_kv,
    encode_kvs,
    kv_of,
    read_msg_async,
)

log = logging.getLogger("typha")
ALL_KINDS = sorted({k for kinds in SYNCER_KINDS.values() for k in kinds})


#: the accept backlog asked for; the kernel caps it at ``net.core.somaxconn`` (4096 here), as
#: it does for Go's listeners, which ask for somaxconn: every calico-node of a big cluster
#: connects when Typha turns ready, and a short queue drops their SYNs (each then waits for
#: its retransmission, 1 s, 3 s, ...)
LISTEN_BACKLOG = 65535


class _Conn:
    """One connected client; used only on the server's event loop."""

    def __init__(self, writer: asyncio.StreamWriter, peer: str):
        self.writer = writer
        self.peer = peer
        self.syncer = ""
        self.hostname = ""
        self.pending: list[str] = []  # updates not yet sent, each encoded once (encode_kv)
        self.wake = asyncio.Event()   # set when pending grows or the connection closes
        self.last_pong = time.monotonic()
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.wake.set()
            self.writer.transport.abort()


class TyphaServer:
    """Fan-out cache over ``client`` (a :class:`datastore.Client`).

    Two threads: the datastore watch (blocking, as the datastore client is) and one asyncio
    event loop serving every client, as Typha's goroutines do. The watch hands its updates to
    the loop in batches; the cache and the per-client queues change only on the loop, so a
    client's snapshot and its subscription are taken in one step. A thread per client (as
    before) made the accept loop wait for each new thread's first turn on the GIL behind
    hundreds of others: at 100 nodes handshakes took 16-28 s and the backlog overflowed."""

    def __init__(self, client: Any, host: str = "0.0.0.0", port: int = DEFAULT_PORT, *,
                 ping_interval: float = 10.0, pong_timeout: float = 60.0, handshake_timeout: float = 10.0,
                 write_timeout: float = 120.0, batch: int = 100):
        self.client = client
        self.host, self.port = host, port
        self.ping_interval, self.pong_timeout = ping_interval, pong_timeout
        self.handshake_timeout, self.write_timeout = handshake_timeout, write_timeout
        self.batch = batch
        self.cache: dict[str, str] = {}  # key -> SerializedUpdate, encoded once (encode_kv)
        self.kinds_of: dict[str, str] = {}          # key -> kind
        self.values: dict[str, str | None] = {}     # key -> its Value, to skip no-op updates
        self.kind_counts: dict[str, list[int]] = {}  # kind -> [updates, skipped as no-ops]
        self.synced = threading.Event()
        self.stopping = threading.Event()
        self.conns: set[_Conn] = set()     # streaming: handshake done, snapshot sent or being sent
        self.open: set[_Conn] = set()      # every open connection, including those in the handshake
        #: held by the loop while it changes the cache or the sets, and by readers in other
        #: threads (status, metrics)
        self.lock = threading.Lock()
        self.stats = {"accepted": 0, "connections": 0, "rejected": 0, "updates": 0, "messages": 0,
                      "dropped": 0, "skipped": 0}
        self._listener: socket.socket | None = None
        self._stream: Any = None
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._synced_async: asyncio.Event | None = None
        self._inbox: list[tuple[str, dict[str, Any]] | None] = []  # from the watch; None: in sync
        self._inbox_lock = threading.Lock()
        self._serve_error: Exception | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Listen, start the datastore watch and the event loop that serves clients."""
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((self.host, self.port))
        ls.listen(LISTEN_BACKLOG)
        self.port = ls.getsockname()[1]
        self._listener = ls
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready = threading.Event()
        serve = threading.Thread(target=self._run_loop, args=(ready,), name="typha-serve", daemon=True)
        serve.start()
        if not ready.wait(10) or self._server is None:
            self.stopping.set()
            raise OSError(f"Typha could not serve on {self.host}:{self.port}: {self._serve_error or 'timed out'}")
        watch = threading.Thread(target=self._watch_loop, name="typha-watch", daemon=True)
        watch.start()
        self._threads += [serve, watch]
        log.info("Typha listening on %s:%d", self.host, self.port)

    def _run_loop(self, ready: threading.Event) -> None:
        loop = self._loop
        assert loop is not None and self._listener is not None
        asyncio.set_event_loop(loop)

        async def serve() -> None:
            self._synced_async = asyncio.Event()
            self._server = await asyncio.start_server(self._serve, sock=self._listener, backlog=LISTEN_BACKLOG)

        try:
            loop.run_until_complete(serve())
        except Exception as exc:  # noqa: BLE001 - reported by start()
            self._serve_error = exc
            loop.close()
            return
        finally:
            ready.set()
        try:
            loop.run_forever()
        finally:  # the clients' tasks end (each closes its connection) before the loop does
            tasks = asyncio.all_tasks(loop)
            for t in tasks:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

    def stop(self) -> None:
        """Close the listener, every client and the watch."""
        self.stopping.set()
        if self._stream is not None:
            self._stream.close()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._shut)
            except RuntimeError:  # the loop closed meanwhile
                pass
        for t in self._threads:
            t.join(5)

    def _shut(self) -> None:
        if self._server is not None:
            self._server.close()
        with self.lock:
            conns = list(self.open)
        for c in conns:
            c.close()
        assert self._loop is not None
        self._loop.stop()

    def status(self) -> dict[str, Any]:
        """Counters, cache size and the connected clients."""
        with self.lock:
            clients = sorted(f"{c.hostname}/{c.syncer}" for c in self.conns if c.syncer)
        return {"synced": self.synced.is_set(), "cache": len(self.cache), "clients": clients, **self.stats}

    def metrics_text(self) -> str:
        """The connection and cache counts in Prometheus' text format, under the names
        Calico's Typha exports them (``typha/pkg/syncserver/sync_server.go``): how many
        clients are connected, and how many of each syncer type (felix, bgp) stream."""
        with self.lock:
            streaming = {st: 0 for st in SYNCER_KINDS}
            for c in self.conns:
                streaming[c.syncer] = streaming.get(c.syncer, 0) + 1
            cache = {st: sum(1 for k in self.kinds_of.values() if k in kinds)
                     for st, kinds in SYNCER_KINDS.items()}
            active, accepted = len(self.open), self.stats["accepted"]
            totals = {st: [sum(n[i] for k, n in self.kind_counts.items() if k in kinds) for i in (0, 1)]
                      for st, kinds in SYNCER_KINDS.items()}
        lines = [
            "# HELP typha_connections_accepted Total number of connections accepted over time.",
            "# TYPE typha_connections_accepted counter",
            f"typha_connections_accepted {accepted}",
            "# HELP typha_connections_active Number of open client connections, including "
            "connections that are still in the handshake.",
            "# TYPE typha_connections_active gauge",
            f"typha_connections_active {active}",
            "# HELP typha_connections_streaming Number of client connections that completed the "
            "handshake and are streaming data.",
            "# TYPE typha_connections_streaming gauge",
            *(f'typha_connections_streaming{{syncer="{st}"}} {n}' for st, n in sorted(streaming.items())),
            "# HELP typha_cache_size The total number of key/value pairs in Typha's in-memory cache.",
            "# TYPE typha_cache_size gauge",
            *(f'typha_cache_size{{syncer="{st}"}} {n}' for st, n in sorted(cache.items())),
            "# HELP typha_updates_total Total number of updates received from the Syncer.",
            "# TYPE typha_updates_total counter",
            *(f'typha_updates_total{{syncer="{st}"}} {n[0]}' for st, n in sorted(totals.items())),
            "# HELP typha_updates_skipped Total number of updates skipped as duplicates.",
            "# TYPE typha_updates_skipped counter",
            *(f'typha_updates_skipped{{syncer="{st}"}} {n[1]}' for st, n in sorted(totals.items())),
        ]
        return "\n".join(lines) + "\n"

    # -- the one datastore watch -------------------------------------------------------
    def _watch_loop(self) -> None:
        from datastore import errors

        while not self.stopping.is_set():
            try:
                self._stream = self.client.watch_stream(ALL_KINDS, stop=self.stopping)
                for ev in self._stream:
                    if ev.type == "SYNCED":
                        self._submit(None)
                        continue
                    utype = {"ADDED": "new", "MODIFIED": "updated", "DELETED": "deleted"}[ev.type]
                    self._submit((ev.kind, kv_of(ev.kind, ev.name, ev.namespace, ev.obj, ev.revision, utype)))
            except errors.DatastoreError as exc:
                log.warning("datastore watch failed: %s; retrying", exc)
            except Exception:  # noqa: BLE001 - the cache must keep being fed
                log.exception("watch loop error")
            self.stopping.wait(1.0)

    def _submit(self, item: tuple[str, dict[str, Any]] | None) -> None:
        """Hand one update (None: in sync) from the watch thread to the loop; the loop is woken
        once for however many updates come before it runs."""
        with self._inbox_lock:
            self._inbox.append(item)
            if len(self._inbox) > 1:
                return
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._take_inbox)
        except RuntimeError:  # stopping: the loop is closed
            pass

    def _take_inbox(self) -> None:
        with self._inbox_lock:
            items, self._inbox = self._inbox, []
        woken: set[_Conn] = set()
        for item in items:
            if item is None:
                if not self.synced.is_set():
                    log.info("datastore in sync: %d keys cached", len(self.cache))
                self.synced.set()
                assert self._synced_async is not None
                self._synced_async.set()
            else:
                woken |= self._publish(*item)
        for c in woken:
            c.wake.set()

    def _publish(self, kind: str, kv: dict[str, Any]) -> set[_Conn]:
        """Cache one update and queue it for the clients whose syncer carries ``kind``;
        returns those clients (on the loop)."""
        with self.lock:
            key = kv["Key"]
            counts = self.kind_counts.setdefault(kind, [0, 0])
            counts[0] += 1
            self.stats["updates"] += 1
            if kv["UpdateType"] == "deleted":
                # a deletion always passes, as in Typha, even of a key not cached
                self.cache.pop(key, None)
                self.kinds_of.pop(key, None)
                self.values.pop(key, None)
            elif key in self.cache and self.values.get(key) == kv["Value"]:
                # Typha's snapcache skips an update whose value did not change, only its
                # revision (SerializedUpdate.WouldBeNoOp): a kubelet's heartbeat on its Node,
                # a controller's status write that changes nothing Calico reads
                counts[1] += 1
                self.stats["skipped"] += 1
                return set()
            text = encode_kv(kv)
            if kv["UpdateType"] != "deleted":
                self.cache[key] = text
                self.kinds_of[key] = kind
                self.values[key] = kv["Value"]
            woken = {c for c in self.conns if kind in SYNCER_KINDS[c.syncer]}
        for c in woken:
            c.pending.append(text)
        return woken

    # -- clients (on the loop) ---------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        conn = _Conn(writer, f"{peer[0]}:{peer[1]}")
        with self.lock:
            self.stats["accepted"] += 1
            self.open.add(conn)
        try:
            await self._handshake(conn, reader)
            await self._stream_to(conn, reader)
        except (TimeoutError, ProtocolError, EOFError, OSError, ValueError) as exc:
            if not conn.closed and not self.stopping.is_set():
                log.info("client %s (%s) disconnected: %s", conn.peer, conn.hostname or "no hello",
                         exc or type(exc).__name__)
        finally:
            with self.lock:
                self.conns.discard(conn)
                self.open.discard(conn)
            conn.close()

    async def _handshake(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        try:
            hello = await asyncio.wait_for(read_msg_async(reader), self.handshake_timeout)
        except ProtocolError:
            self.stats["rejected"] += 1
            raise
        syncer = hello.get("SyncerType")
        if hello["type"] != "MsgClientHello" or syncer not in SYNCER_KINDS:
            self.stats["rejected"] += 1
            raise ProtocolError(f"expected MsgClientHello with a SyncerType of "
                                f"{', '.join(SYNCER_KINDS)}; got {str(hello)[:120]}")
        conn.hostname = str(hello.get("Hostname") or "")
        await self._write(conn, encode({"type": "MsgServerHello", "Version": PROTOCOL_VERSION,
                                        "SyncerType": syncer}))
        assert self._synced_async is not None
        await self._synced_async.wait()
        if conn.closed:
            raise EOFError("closed before the snapshot")
        with self.lock:  # snapshot and subscription in one step: no update is lost or doubled
            snapshot = [kv for key, kv in self.cache.items() if self.kinds_of[key] in SYNCER_KINDS[syncer]]
            conn.syncer = syncer
            self.conns.add(conn)
            self.stats["connections"] += 1
        for i in range(0, len(snapshot), self.batch):
            await self._write(conn, encode_kvs(snapshot[i:i + self.batch]), drain=False)
        await self._write(conn, encode({"type": "MsgSyncStatus", "SyncStatus": IN_SYNC}))
        log.info("client %s (%s, syncer %s): snapshot of %d keys sent", conn.peer, conn.hostname, syncer,
                 len(snapshot))

    async def _write(self, conn: _Conn, frame: bytes, drain: bool = True) -> None:
        """Send one frame; waiting for a full send buffer to drain is bounded by the write
        timeout (a client that stops reading is dropped, as Typha's write deadline does)."""
        if conn.closed:
            raise EOFError("connection closed")
        conn.writer.write(frame)
        self.stats["messages"] += 1
        if drain:
            await asyncio.wait_for(conn.writer.drain(), self.write_timeout)

    async def _read_pongs(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        """Everything a client may send after the hello is a pong; anything else ends it."""
        try:
            while not conn.closed:
                msg = await read_msg_async(reader)
                if msg["type"] != "MsgPong":
                    raise ProtocolError(f"unexpected {msg['type']} from client")
                conn.last_pong = time.monotonic()
        except (ProtocolError, EOFError, OSError, ValueError) as exc:
            if not conn.closed:
                log.info("client %s (%s): %s; closing", conn.peer, conn.hostname, exc)
            conn.close()

    async def _stream_to(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        pongs = asyncio.ensure_future(self._read_pongs(conn, reader))
        conn.last_pong = time.monotonic()
        next_ping = time.monotonic() + self.ping_interval
        try:
            while not conn.closed and not self.stopping.is_set():
                if not conn.pending:
                    try:
                        await asyncio.wait_for(conn.wake.wait(), max(0.01, next_ping - time.monotonic()))
                    except TimeoutError:
                        pass
                conn.wake.clear()
                if conn.closed:
                    return
                while conn.pending:
                    kvs = conn.pending[:self.batch]
                    del conn.pending[:self.batch]
                    await self._write(conn, encode_kvs(kvs))
                now = time.monotonic()
                if now - conn.last_pong > self.pong_timeout:
                    self.stats["dropped"] += 1
                    raise ProtocolError(f"no pong for {now - conn.last_pong:.1f}s")
                if now >= next_ping:
                    await self._write(conn, encode({"type": "MsgPing", "Timestamp": time.time()}))
                    next_ping = now + self.ping_interval
        finally:
            pongs.cancel()


class MetricsServer:
    """``GET /metrics``: :meth:`TyphaServer.metrics_text` over http (Typha's Prometheus port)."""

    def __init__(self, server: TyphaServer, host: str = "", port: int = 9093) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.split("?")[0] != "/metrics":
                    body, code = b"not found: try /metrics\n", 404
                else:
                    body, code = server.metrics_text().encode(), 200
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host or "0.0.0.0", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]

    def start(self) -> None:
        """Serve in a daemon thread."""
        threading.Thread(target=self.httpd.serve_forever, name="typha-metrics", daemon=True).start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()


def main(argv: list[str] | None = None) -> int:
    """``python -m agent.typha``: serve until SIGTERM. Configured as Calico's Typha, from
    ``TYPHA_<PARAM>`` (:mod:`agent.typha.config`; a parameter calicolab does not implement
    is refused by name), plus DATASTORE_TYPE/KUBECONFIG/ETCD_ENDPOINTS for the datastore."""
    from kernel.preload import before_threads

    before_threads()  # before any thread imports lazily (kernel.preload)
    from agent.typha.config import ConfigError, load

    ap = argparse.ArgumentParser(prog="calico-typha", description=__doc__)
    ap.add_argument("--port", type=int, help="the sync port (default TYPHA_SERVERPORT, else 5473)")
    ap.add_argument("--host", help="the address to listen on (default TYPHA_SERVERHOST, else all)")
    args = ap.parse_args(argv)
    try:
        cfg = load(os.environ)
    except ConfigError as exc:
        print(f"calico-typha: {exc}", file=sys.stderr)
        return 1
    level = str(cfg["LogSeverityScreen"]).replace("CRITICAL", "ERROR")
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s typha: %(message)s")
    for name in cfg.unknown:
        log.info("Ignoring unknown config param %s", name)
    from datastore import Client, errors

    env = dict(os.environ)
    if cfg["DatastoreType"]:
        env["DATASTORE_TYPE"] = str(cfg["DatastoreType"])
    if cfg["EtcdEndpoints"]:
        env["ETCD_ENDPOINTS"] = str(cfg["EtcdEndpoints"])
    extra: list = []
    try:
        client = Client.from_env(env)
        server = TyphaServer(client, args.host or str(cfg["ServerHost"]) or "0.0.0.0",
                             args.port if args.port is not None else cfg.port,
                             ping_interval=float(cfg["ServerPingIntervalSecs"]),  # type: ignore[arg-type]
                             pong_timeout=float(cfg["ServerPongTimeoutSecs"]),  # type: ignore[arg-type]
                             handshake_timeout=float(cfg["ServerHandshakeTimeoutSecs"]),  # type: ignore[arg-type]
                             batch=int(cfg["ServerMaxMessageSize"]))  # type: ignore[arg-type]
        server.start()
        if cfg["PrometheusMetricsEnabled"]:
            metrics = MetricsServer(server, str(cfg["PrometheusMetricsHost"]),
                                    int(cfg["PrometheusMetricsPort"]))  # type: ignore[arg-type]
            metrics.start()
            extra.append(metrics)
            log.info("Prometheus metrics on port %d (/metrics)", metrics.port)
        if cfg["HealthEnabled"]:
            from agent.health import HealthServer

            health = HealthServer(live=lambda: True, ready=server.synced.is_set, status=server.status,
                                  port=int(cfg["HealthPort"]),  # type: ignore[arg-type]
                                  host=str(cfg["HealthHost"]))
            health.start()
            extra.append(health)
    except (errors.DatastoreError, OSError, ValueError) as exc:
        print(f"calico-typha: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    for e in extra:
        e.stop()
    server.stop()
    return 0
