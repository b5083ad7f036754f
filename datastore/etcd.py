"""A small etcd v3 client over etcd's JSON gateway (``/v3/...``), stdlib only.

Why our own rather than ``etcd3gw``: it imports in ~5 ms (the CNI plugin and
the CLIs start often, and ``requests`` alone costs ~80 ms), it keeps one
keep-alive connection per thread and endpoint (one round trip per read or CAS),
its timeouts are explicit so an unreachable etcd gives a clear error in seconds,
and its watch reports compaction as a typed error so callers can resync.
etcd 3.4's gateway speaks exactly this JSON (keys and values base64-encoded,
int64 fields as strings).
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import urllib.parse
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

from datastore import errors


@dataclass(frozen=True)
class KV:
    """One key-value pair as etcd stores it."""

    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    version: int = 0


@dataclass(frozen=True)
class EtcdEvent:
    """One change seen by a watch: ``type`` is ``PUT`` or ``DELETE``."""

    type: str
    kv: KV


def b64(data: bytes | str) -> str:
    """Base64 text of ``data`` (the gateway's encoding of keys and values)."""
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def prefix_end(prefix: str) -> str:
    """The exclusive range end covering every key that starts with ``prefix``."""
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return raw.decode("latin-1")
        raw.pop()
    return "\0"


def kv_from_json(d: dict[str, Any]) -> KV:
    """A :class:`KV` from the gateway's JSON form of one key-value pair."""
    return KV(
        key=base64.b64decode(d["key"]).decode(),
        value=base64.b64decode(d.get("value", "")),
        mod_revision=int(d.get("mod_revision", 0)),
        create_revision=int(d.get("create_revision", 0)),
        version=int(d.get("version", 0)),
    )


def parse_endpoints(endpoints: str | list[str]) -> list[tuple[str, int]]:
    """Parse ``http://host:port[,http://...]`` into (host, port) pairs, with clear errors."""
    if isinstance(endpoints, str):
        endpoints = [e for e in endpoints.split(",") if e.strip()]
    if not endpoints:
        raise errors.DatastoreError("no etcd endpoints given (set ETCD_ENDPOINTS)")
    out = []
    for ep in endpoints:
        url = urllib.parse.urlsplit(ep.strip())
        if url.scheme != "http" or not url.hostname:
            raise errors.DatastoreError(
                f"invalid etcd endpoint {ep!r}: expected http://HOST:PORT (TLS is not supported)"
            )
        out.append((url.hostname, url.port or 2379))
    return out


def post_request(host: str, port: int, path: str, payload: bytes) -> bytes:
    """The bytes of a JSON POST of ``payload`` to the gateway's ``path``: headers and body in
    one buffer, sent with one write (pure)."""
    return (b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), host.encode(), port, len(payload), payload))


def parse_reply_head(head: bytes) -> tuple[int, int | None, bool, bool]:
    """The gateway's reply head (status line and headers, without the blank line) as
    (status, Content-Length or None, chunked, the server closes the connection) (pure).
    Raises ConnectionError for a status line that is not HTTP/1.x."""
    lines = head.split(b"\r\n")
    status = lines[0].split(None, 2)
    if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or not status[1].isdigit():
        raise ConnectionError(f"malformed HTTP status line from etcd: {lines[0][:80]!r}")
    length, chunked, close = None, False, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            close = b"close" in value.lower()
    return int(status[1]), length, chunked, close


def json_documents(buf: str, decoder: json.JSONDecoder) -> tuple[list[Any], str]:
    """The whole JSON documents at the start of ``buf`` (a watch stream: documents one after
    the other) and what is left of it, an incomplete document (pure)."""
    docs = []
    while True:
        buf = buf.lstrip()
        if not buf:
            return docs, buf
        try:
            doc, end = decoder.raw_decode(buf)
        except ValueError:
            return docs, buf
        docs.append(doc)
        buf = buf[end:]


class GatewayConnection:
    """One keep-alive HTTP/1.1 connection to the gateway, for unary calls.

    A request goes out in one ``send`` (headers and body together, ``TCP_NODELAY``);
    the reply is read by its ``Content-Length`` (or its chunks). http.client parsed
    every reply's headers with the ``email`` package (~0.3 ms per round trip, and a
    CNI ADD makes about nine). Raises OSError (TimeoutError on a timeout,
    ConnectionError if the server closed the socket or answered malformed HTTP).
    """

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.sock: socket.socket | None = None
        self._buf = b""

    def close(self) -> None:
        """Close the socket (the next request opens a new one)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._buf = b""

    def post(self, path: str, payload: bytes) -> tuple[int, bytes]:
        """POST ``payload`` as JSON to ``path``: (HTTP status, body)."""
        if self.sock is None:
            self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(post_request(self.host, self.port, path, payload))
        code, length, chunked, close = parse_reply_head(self._until(b"\r\n\r\n"))
        if chunked:
            parts = []
            while True:
                size = int(self._until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    while self._until(b"\r\n"):  # trailers (the gateway's errors have one)
                        pass
                    break
                parts.append(self._exactly(size))
                self._exactly(2)
            body = b"".join(parts)
        elif length is not None:
            body = self._exactly(length)
        else:  # delimited by the end of the connection
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self._buf += chunk
            body, close = self._buf, True
            self._buf = b""
        if close:
            self.close()
        return code, body

    def _fill(self) -> None:
        assert self.sock is not None
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("etcd closed the connection")
        self._buf += chunk

    def _until(self, sep: bytes) -> bytes:
        while True:
            i = self._buf.find(sep)
            if i >= 0:
                out, self._buf = self._buf[:i], self._buf[i + len(sep):]
                return out
            if len(self._buf) > 1 << 20:
                raise ConnectionError("malformed HTTP reply from etcd (no end of headers)")
            self._fill()

    def _exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._fill()
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


class EtcdClient:
    """Blocking etcd v3 client. Thread-safe: each thread gets its own connections."""

    def __init__(self, endpoints: str | list[str], timeout: float = 3.0):
        self.endpoints = parse_endpoints(endpoints)
        self.timeout = timeout
        self._local = threading.local()
        self._preferred = 0

    # -- transport ---------------------------------------------------------

    def _describe(self) -> str:
        return ", ".join(f"http://{h}:{p}" for h, p in self.endpoints)

    def _conn(self, idx: int) -> GatewayConnection:
        conns = self._local.__dict__.setdefault("conns", {})
        conn = conns.get(idx)
        if conn is None:
            host, port = self.endpoints[idx]
            conn = GatewayConnection(host, port, self.timeout)
            conns[idx] = conn
        return conn

    def _drop(self, idx: int) -> None:
        conns = self._local.__dict__.get("conns", {})
        conn = conns.pop(idx, None)
        if conn is not None:
            conn.close()

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to the gateway ``path``; fail over across endpoints."""
        payload = json.dumps(body).encode()
        last: BaseException | None = None
        n = len(self.endpoints)
        for k in range(n):
            idx = (self._preferred + k) % n
            for attempt in range(2):  # a reused keep-alive socket may have gone stale
                conn = self._conn(idx)
                reused = conn.sock is not None
                try:
                    status, data = conn.post(path, payload)
                except (OSError, ValueError) as exc:
                    self._drop(idx)
                    last = exc
                    # Resend only when a stale keep-alive socket failed; after a timeout the
                    # request may have been applied, and a resent create/CAS would then
                    # report AlreadyExists/Conflict for our own write.
                    if reused and attempt == 0 and not isinstance(exc, TimeoutError):
                        continue
                    break
                self._preferred = idx
                return self._decode(status, data, idx)
        raise errors.DatastoreUnavailable(
            f"cannot reach etcd at {self._describe()}: {_reason(last)}"
        )

    def _decode(self, status: int, data: bytes, idx: int) -> dict[str, Any]:
        return decode_reply(status, data, *self.endpoints[idx])

    def close(self) -> None:
        """Close this thread's connections."""
        for idx in list(self._local.__dict__.get("conns", {})):
            self._drop(idx)

    # -- key/value ---------------------------------------------------------
    # Each operation is a plan (below, shared with datastore.etcd_aio's asyncio client):
    # this client runs it with blocking calls.

    def run(self, plan: Plan) -> Any:
        """Run ``plan``: each request it yields goes to :meth:`call`, the answer back in."""
        try:
            req = next(plan)
            while True:
                req = plan.send(self.call(*req))
        except StopIteration as done:
            return done.value

    def get(self, key: str) -> KV | None:
        """The pair at ``key``, or None."""
        return self.run(plan_get(key))

    def get_many(self, keys: list[str]) -> list[KV | None]:
        """The pair at each of ``keys`` (None where absent), read in one transaction."""
        return self.run(plan_get_many(keys))

    def list(self, prefix: str) -> tuple[list[KV], int]:
        """Every pair under ``prefix`` (sorted by key) and the store revision."""
        return self.run(plan_list(prefix))

    def revision(self) -> int:
        """The current store revision."""
        return self.run(plan_revision())

    def put(self, key: str, value: bytes | str, lease: int | None = None) -> int:
        """Unconditional write; returns the new revision."""
        return self.run(plan_put(key, value, lease))

    def _txn(self, compare: list[dict], success: list[dict], failure: list[dict]) -> dict[str, Any]:
        return self.call("/v3/kv/txn", {"compare": compare, "success": success, "failure": failure})

    def create(self, key: str, value: bytes | str, lease: int | None = None) -> int:
        """Write only if ``key`` does not exist; raises AlreadyExists otherwise."""
        return self.run(plan_create(key, value, lease))

    def update(self, key: str, value: bytes | str, mod_revision: int) -> int:
        """Compare-and-swap: write only if ``key`` is still at ``mod_revision``."""
        return self.run(plan_update(key, value, mod_revision))

    def delete(self, key: str, mod_revision: int | None = None) -> bool:
        """Delete ``key`` (only at ``mod_revision`` if given). True if something was deleted."""
        return self.run(plan_delete(key, mod_revision)) > 0

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; returns how many."""
        return self.run(plan_delete_prefix(prefix))

    @staticmethod
    def _raise_cas_failure(key: str, doc: dict[str, Any], expected: int) -> None:
        raise_cas_failure(key, doc, expected)

    # -- watch -------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int) -> Watch:
        """Watch every key under ``prefix`` from ``start_revision`` (inclusive).

        Iterate the returned :class:`Watch` for batches of events; ``close()``
        it from any thread to stop. Raises Compacted if the revision is gone,
        DatastoreUnavailable when the stream breaks.
        """
        return Watch(self, prefix, start_revision)


class Watch:
    """One streaming watch request. Iterating yields lists of :class:`EtcdEvent`."""

    def __init__(self, client: EtcdClient, prefix: str, start_revision: int):
        self.client = client
        self.prefix = prefix
        self.start_revision = start_revision
        self._sock: socket.socket | None = None
        self._closed = False

    def close(self) -> None:
        """Stop the watch (safe from another thread)."""
        self._closed = True
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __iter__(self) -> Iterator[list[EtcdEvent]]:
        import http.client  # only watchers need it (it costs ~10 ms to import)

        host, port = self.client.endpoints[self.client._preferred]
        conn = http.client.HTTPConnection(host, port, timeout=self.client.timeout)
        body = {
            "create_request": {
                "key": b64(self.prefix),
                "range_end": b64(prefix_end(self.prefix)),
                "start_revision": str(self.start_revision),
                "progress_notify": True,
            }
        }
        try:
            conn.request("POST", "/v3/watch", json.dumps(body).encode(),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
        except OSError as exc:
            conn.close()
            raise errors.DatastoreUnavailable(
                f"cannot reach etcd at http://{host}:{port}: {_reason(exc)}") from exc
        if resp.status != 200:
            conn.close()
            raise errors.DatastoreError(f"etcd watch failed: HTTP {resp.status}")
        self._sock = conn.sock
        if conn.sock is not None:
            conn.sock.settimeout(None)  # progress notifications keep it alive; close() unblocks
        decoder = json.JSONDecoder()
        buf = ""
        try:
            while not self._closed:
                try:
                    chunk = resp.read1(65536)
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    if self._closed:
                        return
                    raise errors.DatastoreUnavailable(f"etcd watch stream broke: {_reason(exc)}") from exc
                if not chunk:
                    if self._closed:
                        return
                    raise errors.DatastoreUnavailable("etcd closed the watch stream")
                docs, buf = json_documents(buf + chunk.decode(), decoder)
                for doc in docs:
                    batch = self._handle(doc)
                    if batch:
                        yield batch
        finally:
            conn.close()

    def _handle(self, doc: dict[str, Any]) -> list[EtcdEvent]:
        return watch_batch(doc, self.prefix, self.start_revision)

def watch_batch(doc: dict[str, Any], prefix: str, start_revision: int) -> list[EtcdEvent]:
    """The events of one watch stream message; its errors as typed exceptions."""
    if "error" in doc:
        err = doc["error"]
        msg = err.get("message", str(err)) if isinstance(err, dict) else str(err)
        if "compacted" in msg:
            raise errors.Compacted(f"etcd: {msg}")
        raise errors.DatastoreUnavailable(f"etcd watch error: {msg}")
    result = doc.get("result", {})
    compact = int(result.get("compact_revision", 0) or 0)
    if compact:
        raise errors.Compacted(
            f"revision {start_revision} of {prefix} was compacted (now {compact})",
            compact,
        )
    if result.get("canceled"):
        raise errors.DatastoreUnavailable(
            f"etcd cancelled the watch: {result.get('cancel_reason', 'no reason given')}")
    out = []
    for ev in result.get("events") or []:
        out.append(EtcdEvent(type=ev.get("type", "PUT"), kv=kv_from_json(ev["kv"])))
    return out


def decode_reply(status: int, data: bytes, host: str, port: int) -> dict[str, Any]:
    """The JSON document of a gateway reply; etcd's refusals as typed errors."""
    try:
        doc = json.loads(data) if data else {}
    except ValueError:
        if status == 200:  # cut short (etcd stopping mid-answer): never an empty result
            raise errors.DatastoreUnavailable(f"etcd at http://{host}:{port} sent an unreadable answer "
                                              f"({len(data)} bytes)") from None
        doc = {"message": data[:200].decode(errors="replace")}
    if status != 200:
        msg = doc.get("message") or doc.get("error") or f"HTTP {status}"
        if "compacted" in msg:
            raise errors.Compacted(f"etcd: {msg}")
        raise errors.DatastoreError(f"etcd at http://{host}:{port} refused the request: {msg}")
    return doc


# -- plans: what each operation asks etcd and how it reads the answers ------------------
# A plan is a generator yielding (gateway path, JSON body) requests, sent each answer's
# document, returning the operation's result; EtcdClient.run drives it with blocking
# calls, datastore.etcd_aio.AsyncEtcdClient.run on an event loop.

Plan = Generator[tuple[str, dict[str, Any]], dict[str, Any], Any]


def _revision_of(doc: dict[str, Any]) -> int:
    return int(doc.get("header", {}).get("revision", 0))


def plan_get(key: str) -> Plan:
    """The pair at ``key``, or None."""
    doc = yield "/v3/kv/range", {"key": b64(key)}
    kvs = doc.get("kvs") or []
    return kv_from_json(kvs[0]) if kvs else None


def plan_get_many(keys: list[str]) -> Plan:
    """The pair at each of ``keys`` (None where absent), read in one transaction."""
    doc = yield "/v3/kv/txn", {"compare": [], "failure": [],
                               "success": [{"request_range": {"key": b64(k)}} for k in keys]}
    out: list[KV | None] = []
    for resp in doc.get("responses") or []:
        kvs = (resp.get("response_range") or {}).get("kvs") or []
        out.append(kv_from_json(kvs[0]) if kvs else None)
    if len(out) != len(keys):
        raise errors.DatastoreError(f"etcd answered {len(out)} of {len(keys)} reads of one transaction")
    return out


def plan_list(prefix: str) -> Plan:
    """Every pair under ``prefix`` (sorted by key) and the store revision."""
    doc = yield "/v3/kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}
    kvs = [kv_from_json(d) for d in doc.get("kvs") or []]
    kvs.sort(key=lambda kv: kv.key)
    return kvs, _revision_of(doc)


def plan_revision() -> Plan:
    """The current store revision."""
    doc = yield "/v3/kv/range", {"key": b64("\0"), "count_only": True}
    return _revision_of(doc)


def plan_put(key: str, value: bytes | str, lease: int | None = None) -> Plan:
    """Unconditional write; the new revision."""
    body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        body["lease"] = str(lease)
    doc = yield "/v3/kv/put", body
    return _revision_of(doc)


def plan_create(key: str, value: bytes | str, lease: int | None = None) -> Plan:
    """Write only if ``key`` does not exist (else AlreadyExists); the new revision."""
    put: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        put["lease"] = str(lease)
    doc = yield "/v3/kv/txn", {
        "compare": [{"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
        "success": [{"request_put": put}], "failure": []}
    if not doc.get("succeeded"):
        raise errors.AlreadyExists(f"{key} already exists")
    return _revision_of(doc)


def plan_update(key: str, value: bytes | str, mod_revision: int) -> Plan:
    """Compare-and-swap: write only if ``key`` is still at ``mod_revision``; the new revision."""
    doc = yield "/v3/kv/txn", {
        "compare": [{"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}],
        "success": [{"request_put": {"key": b64(key), "value": b64(value)}}],
        "failure": [{"request_range": {"key": b64(key)}}]}
    if not doc.get("succeeded"):
        raise_cas_failure(key, doc, mod_revision)
    return _revision_of(doc)


def plan_delete(key: str, mod_revision: int | None = None) -> Plan:
    """Delete ``key`` (only at ``mod_revision`` if given: else NotFound/Conflict). Returns
    0 when nothing was deleted, else the deletion's revision."""
    if mod_revision is None:
        doc = yield "/v3/kv/deleterange", {"key": b64(key)}
        return (_revision_of(doc) or 1) if int(doc.get("deleted", 0)) > 0 else 0
    doc = yield "/v3/kv/txn", {
        "compare": [{"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}],
        "success": [{"request_delete_range": {"key": b64(key)}}],
        "failure": [{"request_range": {"key": b64(key)}}]}
    if not doc.get("succeeded"):
        raise_cas_failure(key, doc, mod_revision)
    return _revision_of(doc) or 1


def plan_delete_prefix(prefix: str) -> Plan:
    """Delete every key under ``prefix``; how many."""
    doc = yield "/v3/kv/deleterange", {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}
    return int(doc.get("deleted", 0))


def raise_cas_failure(key: str, doc: dict[str, Any], expected: int) -> None:
    """NotFound or Conflict from a failed compare-and-swap's failure read."""
    responses = doc.get("responses") or [{}]
    kvs = (responses[0].get("response_range") or {}).get("kvs") or []
    if not kvs:
        raise errors.NotFound(f"{key} does not exist")
    now = kv_from_json(kvs[0]).mod_revision
    raise errors.Conflict(f"{key} changed: expected revision {expected}, found {now}")


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "no endpoint answered"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
