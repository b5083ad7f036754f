"""calico-node's supervision of confd's watcher (pure logic: a stand-in service)."""

from __future__ import annotations

import threading

import pytest

import agent.confd.watcher as watcher_mod
from agent.main import ConfdSupervisor

pytestmark = pytest.mark.unit


class StandInWatcher:
    """What ConfdSupervisor looks at: a thread, synced, last, last_error; start()."""

    made: list[StandInWatcher] = []

    def __init__(self, client, node_name, on_config, timers=None):
        self.client, self.node_name, self.on_config, self.timers = client, node_name, on_config, timers
        self.synced = threading.Event()
        self.last = None
        self.last_error = ""
        self._thread = threading.Thread(target=lambda: None)
        StandInWatcher.made.append(self)

    def start(self) -> None:
        self._thread.start()
        self._thread.join()  # it "dies" at once


class StandInService:
    def __init__(self):
        self.timers = None
        self.watcher = StandInWatcher("client", "k8s-w0", self._apply)
        self.watcher.last = "config-1"
        self.watcher.last_error = "watch failed: timed out"

    def _apply(self, cfg) -> None:
        pass


def test_a_dead_watcher_is_restarted_with_back_off(monkeypatch):
    monkeypatch.setattr(watcher_mod, "ConfdWatcher", StandInWatcher)
    StandInWatcher.made.clear()
    svc = StandInService()
    sup = ConfdSupervisor("client", "k8s-w0", first_delay=1.0, max_delay=4.0)
    assert not sup.check(svc, now=0.0)  # alive? never started: nothing to do
    svc.watcher.start()  # ... it ran and died
    assert not sup.check(svc, now=10.0)  # noticed; restart due at 11
    assert not sup.check(svc, now=10.5)
    assert sup.check(svc, now=11.0)
    fresh = svc.watcher
    assert fresh is StandInWatcher.made[-1] and fresh.last == "config-1"  # the speaker's config kept
    assert fresh.node_name == "k8s-w0" and fresh.on_config == svc._apply
    # it died again: the next restart waits 2 s, then 4 s, and no more than max_delay
    assert not sup.check(svc, now=12.0) and not sup.check(svc, now=13.9) and sup.check(svc, now=14.0)
    assert not sup.check(svc, now=14.0) and sup.check(svc, now=18.0)
    assert not sup.check(svc, now=18.0) and not sup.check(svc, now=21.9) and sup.check(svc, now=22.0)
    assert sup.restarts == 4


def test_a_live_watcher_is_left_alone_and_a_synced_one_resets_the_back_off():
    sup = ConfdSupervisor("client", "k8s-w0", first_delay=1.0)
    sup.delay = 8.0
    svc = StandInService()
    gate = threading.Event()
    svc.watcher._thread = threading.Thread(target=gate.wait)
    svc.watcher._thread.start()
    try:
        svc.watcher.synced.set()
        assert not sup.check(svc, now=100.0)
        assert sup.delay == 1.0
    finally:
        gate.set()
        svc.watcher._thread.join()
    assert not sup.check(None, now=0.0)  # no BGP service (CALICO_NETWORKING_BACKEND=none)
