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
import logging
import os
import queue
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
    read_msg,
)

log = logging.getLogger("typha")
ALL_KINDS = sorted({k for kinds in SYNCER_KINDS.values() for k in kinds})


class _Conn:
    """One connected client."""

    def __init__(self, sock: socket.socket, peer: str):
        self.sock = sock
        self.peer = peer
        self.syncer = ""
        self.hostname = ""
        self.queue: queue.Queue[str | None] = queue.Queue()  # updates, each encoded once (encode_kv)
        self.last_pong = time.monotonic()
        self.closed = threading.Event()
        self.send_lock = threading.Lock()

    def send(self, msg: dict[str, Any]) -> None:
        self.send_frame(encode(msg))

    def send_frame(self, frame: bytes) -> None:
        with self.send_lock:
            self.sock.sendall(frame)

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self.queue.put(None)
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()


class TyphaServer:
    """Fan-out cache over ``client`` (a :class:`datastore.Client`)."""

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
        self.lock = threading.Lock()
        self.stats = {"accepted": 0, "connections": 0, "rejected": 0, "updates": 0, "messages": 0,
                      "dropped": 0, "skipped": 0}
        self._listener: socket.socket | None = None
        self._stream: Any = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Listen, start the datastore watch and the accept loop."""
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((self.host, self.port))
        ls.listen(128)
        self.port = ls.getsockname()[1]
        self._listener = ls
        for name, target in (("watch", self._watch_loop), ("accept", self._accept_loop)):
            t = threading.Thread(target=target, name=f"typha-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        log.info("Typha listening on %s:%d", self.host, self.port)

    def stop(self) -> None:
        """Close the listener, every client and the watch."""
        self.stopping.set()
        if self._stream is not None:
            self._stream.close()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            c.close()
        for t in self._threads:
            t.join(5)

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
                        if not self.synced.is_set():
                            log.info("datastore in sync: %d keys cached", len(self.cache))
                        self.synced.set()
                        continue
                    utype = {"ADDED": "new", "MODIFIED": "updated", "DELETED": "deleted"}[ev.type]
                    self._publish(ev.kind, kv_of(ev.kind, ev.name, ev.namespace, ev.obj, ev.revision, utype))
            except errors.DatastoreError as exc:
                log.warning("datastore watch failed: %s; retrying", exc)
            except Exception:  # noqa: BLE001 - the cache must keep being fed
                log.exception("watch loop error")
            self.stopping.wait(1.0)

    def _publish(self, kind: str, kv: dict[str, Any]) -> None:
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
                return
            text = encode_kv(kv)
            if kv["UpdateType"] != "deleted":
                self.cache[key] = text
                self.kinds_of[key] = kind
                self.values[key] = kv["Value"]
            for c in self.conns:
                if c.syncer and kind in SYNCER_KINDS[c.syncer]:
                    c.queue.put(text)

    # -- clients -----------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self.stopping.is_set():
            try:
                sock, addr = self._listener.accept()
            except OSError:
                return
            conn = _Conn(sock, f"{addr[0]}:{addr[1]}")
            with self.lock:
                self.stats["accepted"] += 1
                self.open.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name=f"typha-{conn.peer}", daemon=True).start()

    def _serve(self, conn: _Conn) -> None:
        try:
            self._handshake(conn)
            self._stream_to(conn)
        except (ProtocolError, EOFError, OSError, ValueError) as exc:
            if not conn.closed.is_set() and not self.stopping.is_set():
                log.info("client %s (%s) disconnected: %s", conn.peer, conn.hostname or "no hello", exc)
        finally:
            with self.lock:
                self.conns.discard(conn)
                self.open.discard(conn)
            conn.close()

    def _handshake(self, conn: _Conn) -> None:
        conn.sock.settimeout(self.handshake_timeout)
        try:
            hello = read_msg(conn.sock)
        except ProtocolError:
            self.stats["rejected"] += 1
            raise
        syncer = hello.get("SyncerType")
        if hello["type"] != "MsgClientHello" or syncer not in SYNCER_KINDS:
            self.stats["rejected"] += 1
            raise ProtocolError(f"expected MsgClientHello with a SyncerType of "
                                f"{', '.join(SYNCER_KINDS)}; got {str(hello)[:120]}")
        conn.hostname = str(hello.get("Hostname") or "")
        conn.sock.settimeout(self.write_timeout)
        conn.send({"type": "MsgServerHello", "Version": PROTOCOL_VERSION, "SyncerType": syncer})
        while not self.synced.wait(0.2):
            if self.stopping.is_set() or conn.closed.is_set():
                raise EOFError("server stopping")
        with self.lock:  # snapshot and subscription in one step: no update is lost or doubled
            snapshot = [kv for key, kv in self.cache.items() if self.kinds_of[key] in SYNCER_KINDS[syncer]]
            conn.syncer = syncer
            self.conns.add(conn)
            self.stats["connections"] += 1
        for i in range(0, len(snapshot), self.batch):
            self._send_kvs(conn, snapshot[i:i + self.batch])
        self._send(conn, {"type": "MsgSyncStatus", "SyncStatus": IN_SYNC})
        log.info("client %s (%s, syncer %s): snapshot of %d keys sent", conn.peer, conn.hostname, syncer,
                 len(snapshot))

    def _send(self, conn: _Conn, msg: dict[str, Any]) -> None:
        conn.send(msg)
        self.stats["messages"] += 1

    def _send_kvs(self, conn: _Conn, encoded: list[str]) -> None:
        conn.send_frame(encode_kvs(encoded))
        self.stats["messages"] += 1

    def _read_pongs(self, conn: _Conn) -> None:
        """Everything a client may send after the hello is a pong; anything else ends it."""
        try:
            while not conn.closed.is_set():
                msg = read_msg(conn.sock)
                if msg["type"] != "MsgPong":
                    raise ProtocolError(f"unexpected {msg['type']} from client")
                conn.last_pong = time.monotonic()
        except (ProtocolError, EOFError, OSError, ValueError) as exc:
            if not conn.closed.is_set():
                log.info("client %s (%s): %s; closing", conn.peer, conn.hostname, exc)
            conn.close()

    def _stream_to(self, conn: _Conn) -> None:
        conn.sock.settimeout(None)
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                             _timeval(self.write_timeout))
        threading.Thread(target=self._read_pongs, args=(conn,), daemon=True).start()
        conn.last_pong = time.monotonic()
        next_ping = time.monotonic() + self.ping_interval
        while not conn.closed.is_set() and not self.stopping.is_set():
            try:
                item = conn.queue.get(timeout=max(0.01, next_ping - time.monotonic()))
            except queue.Empty:
                item = ...
            if item is None:
                return
            if item is not ...:
                kvs = [item]
                while len(kvs) < self.batch:
                    try:
                        more = conn.queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        return
                    kvs.append(more)
                self._send_kvs(conn, kvs)
            now = time.monotonic()
            if now - conn.last_pong > self.pong_timeout:
                self.stats["dropped"] += 1
                raise ProtocolError(f"no pong for {now - conn.last_pong:.1f}s")
            if now >= next_ping:
                self._send(conn, {"type": "MsgPing", "Timestamp": time.time()})
                next_ping = now + self.ping_interval


def _timeval(seconds: float) -> bytes:
    import struct

    return struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))


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
