"""A component's loop blocked in Cluster.wait() wakes at once on SIGTERM (pure logic: no
server is contacted; the signal is sent to this process)."""

from __future__ import annotations

import os
import signal
import threading

import pytest

pytestmark = pytest.mark.unit


def test_sigterm_sets_stop_and_wakes_wait():
    from kubeclient import Client
    from kubeclient.config import Config
    from testbed.k8s.apiclient import Cluster

    cluster = Cluster(Client(Config("https://127.0.0.1:9")))
    stop = threading.Event()
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        cluster.wake_on_signals(stop)
        cluster.wait(stop, 0)  # consume the initial "*": the next wait blocks
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
        kinds = cluster.wait(stop, 10)  # without the handler's mark(): {} after 10 s
        assert stop.is_set(), "SIGTERM did not set the stop event"
        assert kinds == {"*"}, kinds  # woken by the handler's mark(), not by the timeout
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
