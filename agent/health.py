"""calico-node's health endpoint: GET /liveness, /readiness (200 or 503) and /status (JSON).

Listens on 127.0.0.1:<FELIX_HEALTHPORT> (9099) inside the node, as Felix does;
``calicolab status`` and the readiness probe read it.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer

log = logging.getLogger(__name__)


#: threads answering requests: the kubelet's probes, the supervisor's readiness sweeps and
#: ``calicolab status`` (each request is short; /status takes ~10 ms)
WORKERS = 4


class PooledHTTPServer(HTTPServer):
    """An HTTP server answering on a few long-lived threads.

    ``ThreadingHTTPServer`` starts a thread per request: at a 50-node lab's start the
    supervisor's readiness sweeps ask every calico-node about twice a second, and each new
    thread costs the node its stack's pages (glibc releases them when a thread ends; the next
    thread faults them in again) and a fresh interpreter thread state."""

    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 workers: int = WORKERS) -> None:
        super().__init__(address, handler)
        self._requests: queue.SimpleQueue[tuple[socket.socket, object] | None] = queue.SimpleQueue()
        self._workers = [threading.Thread(target=self._work, name=f"health-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._workers:
            t.start()

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        self._requests.put((request, client_address))

    def _work(self) -> None:
        while True:
            item = self._requests.get()
            if item is None:
                return
            request, client_address = item
            try:
                self.finish_request(request, client_address)
            except ConnectionError as exc:
                # the prober gave up first (a kubelet probe's timeout on a loaded node): its
                # side of the answer, not ours; a stack trace in calico-node's log said otherwise
                log.debug("health: %s went before its answer: %s", client_address, exc)
            except Exception:  # noqa: BLE001 - as socketserver reports a failed request
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        for _ in self._workers:
            self._requests.put(None)


class HealthServer:
    """Serves the three paths from callables; ``start()`` runs it in a daemon thread.
    ``tunnels`` (optional) serves ``/status/tunnels``: the tunnel addresses alone, cheap enough
    to poll (the whole /status, every BGP peer's state as indented JSON, took ~10 ms of
    calico-node's CPU a request)."""

    def __init__(self, live: Callable[[], bool], ready: Callable[[], bool], status: Callable[[], dict],
                 port: int = 9099, host: str = "127.0.0.1",
                 tunnels: Callable[[], dict] | None = None) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"health port {port} out of range 0..65535")
        checks = {"/liveness": live, "/readiness": ready}

        class Handler(BaseHTTPRequestHandler):
            timeout = 5.0  # a client that connects and says nothing frees its worker

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?")[0]
                if path in checks:
                    try:
                        ok = bool(checks[path]())
                    except Exception:  # noqa: BLE001
                        ok = False
                    self._send(200 if ok else 503, b"ok\n" if ok else b"not " + path[1:].encode() + b"\n",
                               "text/plain")
                elif path == "/status":
                    body = json.dumps(status(), indent=1, default=str).encode() + b"\n"
                    self._send(200, body, "application/json")
                elif path == "/status/tunnels" and tunnels is not None:
                    self._send(200, json.dumps(tunnels(), default=str).encode() + b"\n", "application/json")
                else:
                    self._send(404, b"not found: try /liveness, /readiness or /status\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: object) -> None:
                log.debug("health: " + fmt, *args)

        self.server = PooledHTTPServer((host, port), Handler)
        self.port = self.server.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.server.serve_forever, name="health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.server.shutdown()
        self.server.server_close()
