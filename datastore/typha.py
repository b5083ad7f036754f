"""Typha's sync protocol (calicolab framing) and the client side of it.

Typha keeps one datastore watch and fans it out to many calico-nodes over TCP 5473.
The real Typha encodes its messages with Go's ``gob``; calicolab keeps the same
messages and sequence but frames each as a 4-byte big-endian length followed by a
UTF-8 JSON object whose ``"type"`` names the message (docs/install.md):

=================  ==========  ====================================================
message            direction   fields
=================  ==========  ====================================================
MsgClientHello     c -> s      Hostname, Info, Version, SyncerType
MsgServerHello     s -> c      Version, SyncerType
MsgKVs             s -> c      KVs: [{Key, Value (JSON text or null), Revision,
                               UpdateType: new|updated|deleted}]
MsgSyncStatus      s -> c      SyncStatus: wait-for-ready|resync|in-sync
MsgPing            s -> c      Timestamp
MsgPong            c -> s      PingTimestamp, PongTimestamp
=================  ==========  ====================================================

After the hellos the server sends the snapshot (MsgKVs batches), ``in-sync``, then
deltas. :class:`TyphaClient` turns that into the same :class:`~datastore.client.WatchEvent`
stream as :meth:`datastore.Client.watch`: the snapshot as ADDED events and one SYNCED,
then changes; after a lost connection it reconnects (re-discovering Typha) and
resyncs, emitting only the difference from what it had already delivered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from datastore.client import WatchEvent
from datastore.resources import Resource, kind_for_key, resolve_kind

log = logging.getLogger(__name__)

DEFAULT_PORT = 5473
PROTOCOL_VERSION = "calicolab-typha/1"
MAX_FRAME = 16 * 1024 * 1024
#: Felix-side defaults (TyphaReadTimeout 30 s)
READ_TIMEOUT = 30.0

#: what each syncer type carries
SYNCER_KINDS: dict[str, tuple[str, ...]] = {
    "felix": ("WorkloadEndpoint", "Node", "IPPool", "FelixConfiguration", "Profile", "NetworkPolicy",
              "GlobalNetworkPolicy", "NetworkSet", "GlobalNetworkSet", "IPAMBlock"),
    "bgp": ("Node", "BGPConfiguration", "BGPPeer", "IPPool", "BlockAffinity", "IPAMBlock"),
}
MESSAGE_TYPES = ("MsgClientHello", "MsgServerHello", "MsgKVs", "MsgSyncStatus", "MsgPing", "MsgPong")
IN_SYNC = "in-sync"


class ProtocolError(Exception):
    """The peer sent something that is not a valid message."""


# -- framing (pure) --------------------------------------------------------------------


def encode(msg: dict[str, Any]) -> bytes:
    """One frame: length + JSON. ``msg["type"]`` must be a known message type."""
    if msg.get("type") not in MESSAGE_TYPES:
        raise ProtocolError(f"unknown message type {msg.get('type')!r}")
    body = json.dumps(msg, separators=(",", ":")).encode()
    return struct.pack(">I", len(body)) + body


def encode_kv(kv: dict[str, Any]) -> str:
    """One SerializedUpdate as the JSON that :func:`encode_kvs` frames: Typha encodes each
    update once and sends the same text to every client of the syncer."""
    return json.dumps(kv, separators=(",", ":"))


def encode_kvs(encoded: list[str]) -> bytes:
    """A MsgKVs frame of updates already encoded by :func:`encode_kv` (the same bytes as
    ``encode({"type": "MsgKVs", "KVs": [...]})``)."""
    body = ('{"type":"MsgKVs","KVs":[' + ",".join(encoded) + "]}").encode()
    return struct.pack(">I", len(body)) + body


def decode_body(body: bytes) -> dict[str, Any]:
    """Parse one frame's body; ProtocolError if it is not a known message."""
    try:
        msg = json.loads(body.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from None
    if not isinstance(msg, dict) or msg.get("type") not in MESSAGE_TYPES:
        raise ProtocolError(f"not a Typha message: {str(msg)[:80]!r}")
    return msg


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Read exactly ``n`` bytes; EOFError if the peer closed."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return bytes(buf)


def frame_length(head: bytes) -> int:
    """The body length a frame's 4-byte head gives; ProtocolError above MAX_FRAME."""
    (length,) = struct.unpack(">I", head)
    if length > MAX_FRAME:
        raise ProtocolError(f"frame of {length} bytes exceeds the {MAX_FRAME} byte limit")
    return length


def read_msg(sock: socket.socket) -> dict[str, Any]:
    """Read one message (blocking, honouring the socket's timeout)."""
    return decode_body(recv_exact(sock, frame_length(recv_exact(sock, 4))))


async def read_msg_async(reader: asyncio.StreamReader) -> dict[str, Any]:
    """Read one message from an asyncio stream; EOFError if the peer closed."""
    try:
        length = frame_length(await reader.readexactly(4))
        return decode_body(await reader.readexactly(length))
    except asyncio.IncompleteReadError:
        raise EOFError("connection closed") from None


def kv_of(kind: str, name: str, namespace: str | None, obj: Resource | None, revision: int,
          update_type: str) -> dict[str, Any]:
    """A SerializedUpdate for one watch event (Value None for a deletion)."""
    cls = resolve_kind(kind)
    key = obj.key() if obj is not None else cls.key_for(name, namespace)
    value = obj.encode_value().decode() if obj is not None and update_type != "deleted" else None
    return {"Key": key, "Value": value, "Revision": revision, "UpdateType": update_type}


def syncer_for(kinds: Iterable[str | type[Resource]]) -> str:
    """The syncer type that carries every kind in ``kinds`` (felix first, then bgp)."""
    names = {k if isinstance(k, str) else k.KIND for k in kinds}
    names = {resolve_kind(n).KIND for n in names}
    for syncer, carried in SYNCER_KINDS.items():
        if names <= set(carried):
            return syncer
    raise ValueError(f"no Typha syncer carries all of {', '.join(sorted(names))}")


def parse_address(addr: str) -> tuple[str, int]:
    """``host[:port]`` -> (host, port), port defaulting to 5473."""
    host, sep, port = addr.rpartition(":")
    if not sep:
        return addr, DEFAULT_PORT
    try:
        return host, int(port)
    except ValueError:
        raise ValueError(f"Typha address {addr!r}: port {port!r} is not a number") from None


# -- discovery -------------------------------------------------------------------------


class ServiceDiscovery:
    """Felix's TyphaK8sServiceName: the Service's Endpoints through the Kubernetes API
    (``kube``, a :class:`kubeclient.Client`), followed by an informer (list + watch of that one
    Endpoints object) so a client waiting for Typha connects as soon as its endpoint is ready,
    without polling. Called: a ready ``ip:port``, or None while there is none."""

    def __init__(self, kube: Any, service: str, namespace: str = "kube-system",
                 port_name: str = "calico-typha"):
        self.kube, self.service, self.namespace, self.port_name = kube, service, namespace, port_name
        self.changed = threading.Event()  # set by every change of the Endpoints (cleared by a read)
        self._informer: Any = None
        self._lock = threading.Lock()

    def _start(self) -> Any:
        with self._lock:
            if self._informer is None:
                from kubeclient import Informer

                inf = Informer(self.kube, "v1", "endpoints", self.namespace,
                               field_selector=f"metadata.name={self.service}")
                inf.add_handler(lambda *_a: self.changed.set())
                self._informer = inf.start()
            return self._informer

    def __call__(self) -> str | None:
        inf = self._start()
        self.changed.clear()  # (a change from here on wakes wait())
        if not inf.wait_synced(timeout=5.0):
            log.info("reading Endpoints %s/%s: not listed yet", self.namespace, self.service)
            return None
        return endpoint_address(inf.get(self.service, self.namespace), self.port_name)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the Endpoints to change since the last call; True if it did."""
        return self.changed.wait(timeout)

    def close(self) -> None:
        with self._lock:
            inf, self._informer = self._informer, None
        if inf is not None:
            inf.stop(wait=0)


def endpoint_address(doc: dict | None, port_name: str = "calico-typha") -> str | None:
    """The first ready ``ip:port`` of an Endpoints object (the port named ``port_name``, else
    the first; DEFAULT_PORT without ports), or None (pure)."""
    for subset in (doc or {}).get("subsets") or []:
        ports = subset.get("ports") or []
        port = next((p.get("port") for p in ports if p.get("name") == port_name), None)
        if port is None and ports:
            port = ports[0].get("port")
        for a in subset.get("addresses") or []:
            if a.get("ip"):
                return f"{a['ip']}:{port or DEFAULT_PORT}"
    return None


def typha_from_env(env: dict[str, str], kube: Any, hostname: str = "") -> TyphaClient | None:
    """A client when ``FELIX_TYPHAADDR``/``TYPHA_ADDR`` or ``FELIX_TYPHAK8SSERVICENAME`` is
    set (``FELIX_TYPHAK8SNAMESPACE``, default kube-system); None otherwise. The Service is
    found through the Kubernetes API (``kube``) in both datastores; without it the Service
    name is a ValueError saying so."""
    addr = env.get("FELIX_TYPHAADDR") or env.get("TYPHA_ADDR")
    if addr:
        parse_address(addr)
        return TyphaClient(addr, hostname=hostname)
    service = env.get("FELIX_TYPHAK8SSERVICENAME")
    if service and service.lower() != "none":
        ns = env.get("FELIX_TYPHAK8SNAMESPACE") or "kube-system"
        if kube is None:
            raise ValueError(f"FELIX_TYPHAK8SSERVICENAME={service} needs the Kubernetes API (KUBECONFIG or the "
                             "in-cluster config) to find the Service's endpoints")
        return TyphaClient(discover=ServiceDiscovery(kube, service, ns), hostname=hostname,
                           where=f"Service {ns}/{service}")
    return None


# -- client ----------------------------------------------------------------------------


class TyphaClient:
    """Connects to Typha; :meth:`stream` gives a WatchEvent stream like Client.watch."""

    def __init__(self, address: str | None = None, *, discover: Callable[[], str | None] | None = None,
                 hostname: str = "", read_timeout: float = READ_TIMEOUT, retry_delay: float = 0.5,
                 where: str = ""):
        if address is None and discover is None:
            raise ValueError("TyphaClient needs an address or a discovery function")
        self.address = address
        self.discover = discover
        self.hostname = hostname or socket.gethostname()
        self.read_timeout = read_timeout
        self.retry_delay = retry_delay
        self.where = where or (address or "")
        self.connects = 0  # successful handshakes (tests, status)

    def wait_retry(self, stop: threading.Event) -> None:
        """Wait before the next connection attempt: ``retry_delay``, or less when discovery
        sees the Service's Endpoints change (Typha's pod turned ready) or ``stop`` is set."""
        waiter = getattr(self.discover, "wait", None)
        if self.address is None and waiter is not None and not stop.is_set():
            waiter(self.retry_delay)
        else:
            stop.wait(self.retry_delay)

    def close(self) -> None:
        """Stop discovery's watch (if any)."""
        closer = getattr(self.discover, "close", None)
        if closer is not None:
            closer()

    def resolve(self) -> tuple[str, int] | None:
        """Typha's (host, port) now, or None if discovery finds none yet."""
        addr = self.address or (self.discover() if self.discover else None)
        return parse_address(addr) if addr else None

    def stream(self, kinds: Iterable[str | type[Resource]],
               stop: threading.Event | None = None) -> TyphaWatchStream:
        """A cancellable stream of WatchEvents for ``kinds``."""
        return TyphaWatchStream(self, kinds, stop)


class TyphaWatchStream:
    """Iterate for WatchEvents; :meth:`close` ends the iteration from any thread."""

    def __init__(self, client: TyphaClient, kinds: Iterable[str | type[Resource]],
                 stop: threading.Event | None = None):
        self.client = client
        self.classes = [resolve_kind(k) if isinstance(k, str) else k for k in kinds]
        self.syncer = syncer_for(self.classes)
        self.stop = stop or threading.Event()
        self.known: dict[str, int] = {}
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._waiting = False
        self._made = time.monotonic()  # when the stream was made: its first connection says how long it took
        #: True while the event just yielded is followed by others of the same MsgKVs (Typha's
        #: batch): a consumer that recomputes from the whole state waits for the last of them,
        #: as Felix's and confd's syncer callbacks get each batch whole (datastore.client's
        #: etcd stream has the same attribute)
        self.more = False

    def close(self) -> None:
        """Stop the stream (safe from any thread)."""
        self.stop.set()
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _event(self, kv: dict[str, Any]) -> WatchEvent | None:
        key = kv.get("Key") or ""
        ident = kind_for_key(key)
        if ident is None or ident[0] not in self.classes:
            return None
        cls, ns, name = ident
        rev = int(kv.get("Revision") or 0)
        if kv.get("UpdateType") == "deleted" or kv.get("Value") is None:
            if self.known.pop(key, None) is None:
                return None
            return WatchEvent("DELETED", cls.KIND, name, ns, None, rev)
        try:
            obj = cls.decode_value(key, str(kv["Value"]).encode(), rev)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring undecodable %s from Typha at %s: %s", cls.KIND, key, exc)
            return None
        etype = "MODIFIED" if key in self.known else "ADDED"
        self.known[key] = rev
        return WatchEvent(etype, cls.KIND, name, ns, obj, rev)

    def _send(self, sock: socket.socket, msg: dict[str, Any]) -> None:
        with self._send_lock:
            sock.sendall(encode(msg))

    def _connect(self) -> socket.socket | None:
        t0 = time.monotonic()
        addr = self.client.resolve()
        t1 = time.monotonic()
        if addr is None:
            if not self._waiting:  # once per wait, not every retry
                log.info("waiting for Typha (%s has no ready address)", self.client.where)
            self._waiting = True
            return None
        self._waiting = False
        sock = socket.create_connection(addr, timeout=5.0)
        sock.settimeout(self.client.read_timeout)
        self._send(sock, {"type": "MsgClientHello", "Hostname": self.client.hostname,
                          "Info": "calicolab calico-node", "Version": PROTOCOL_VERSION,
                          "SyncerType": self.syncer})
        hello = read_msg(sock)
        if hello["type"] != "MsgServerHello" or hello.get("SyncerType") != self.syncer:
            sock.close()
            raise ProtocolError(f"unexpected handshake reply {hello}")
        self.client.connects += 1
        first = f" {time.monotonic() - self._made:.1f} s after the stream was made" if self._made else ""
        log.info("connected to Typha at %s:%d (syncer %s)%s: address %.0f ms, handshake %.0f ms", addr[0], addr[1],
                 self.syncer, first, (t1 - t0) * 1000, (time.monotonic() - t1) * 1000)
        self._made = 0.0
        return sock

    def _session(self, sock: socket.socket) -> Iterator[WatchEvent]:
        snapshot: dict[str, dict[str, Any]] | None = {}
        while not self.stop.is_set():
            msg = read_msg(sock)
            mtype = msg["type"]
            if mtype == "MsgPing":
                self._send(sock, {"type": "MsgPong", "PingTimestamp": msg.get("Timestamp"),
                                  "PongTimestamp": time.time()})
            elif mtype == "MsgKVs":
                kvs = msg.get("KVs") or []
                if snapshot is not None:
                    for kv in kvs:
                        snapshot[kv.get("Key") or ""] = kv
                    continue
                events = [ev for ev in map(self._event, kvs) if ev is not None]
                last = len(events) - 1
                for i, ev in enumerate(events):
                    self.more = i < last
                    yield ev
                self.more = False
            elif mtype == "MsgSyncStatus" and msg.get("SyncStatus") == IN_SYNC and snapshot is not None:
                yield from self._resync(snapshot)
                snapshot = None

    def _resync(self, snapshot: dict[str, dict[str, Any]]) -> Iterator[WatchEvent]:
        """Deliver the difference between what we delivered before and ``snapshot``."""
        rev = 0
        wanted = {}
        for key, kv in snapshot.items():
            ident = kind_for_key(key)
            if ident is not None and ident[0] in self.classes and kv.get("Value") is not None:
                wanted[key] = kv
                rev = max(rev, int(kv.get("Revision") or 0))
        for key in [k for k in self.known if k not in wanted]:
            ev = self._event({"Key": key, "Value": None, "Revision": rev, "UpdateType": "deleted"})
            if ev is not None:
                yield ev
        for key, kv in wanted.items():
            if self.known.get(key) == int(kv.get("Revision") or 0):
                continue
            ev = self._event(kv)
            if ev is not None:
                yield ev
        yield WatchEvent("SYNCED", "", "", None, None, rev)

    def __iter__(self) -> Iterator[WatchEvent]:
        while not self.stop.is_set():
            sock = None
            try:
                sock = self._connect()
                if sock is not None:
                    self._sock = sock
                    if self.stop.is_set():
                        return
                    yield from self._session(sock)
            except (OSError, EOFError, ProtocolError, ValueError) as exc:
                if self.stop.is_set():
                    return
                log.warning("Typha connection lost (%s); reconnecting", exc)
            finally:
                self._sock = None
                if sock is not None:
                    sock.close()
            self.client.wait_retry(self.stop)
