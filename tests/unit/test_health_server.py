"""calico-node's health endpoint against real sockets on 127.0.0.1 (no root)."""

from __future__ import annotations

import socket
import struct
import threading
import urllib.request

import pytest

from agent.health import HealthServer

pytestmark = pytest.mark.unit


def test_a_prober_that_leaves_before_its_answer_leaves_no_traceback(capsys):
    """A kubelet probe that times out on a loaded node closes its connection before calico-node
    answers; that is the prober's business: no stack trace in calico-node's log, and the next
    probe is answered."""
    answering = threading.Event()
    release = threading.Event()

    def slow_ready() -> bool:
        answering.set()
        release.wait(5)
        return True

    health = HealthServer(lambda: True, slow_ready, dict, port=0)
    health.start()
    try:
        s = socket.create_connection(("127.0.0.1", health.port), timeout=5)
        s.sendall(b"GET /readiness HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answering.wait(5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # a reset: the answer's write fails
        release.set()
        with urllib.request.urlopen(f"http://127.0.0.1:{health.port}/liveness", timeout=5) as r:
            assert r.status == 200 and r.read() == b"ok\n"
    finally:
        release.set()
        health.stop()
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
