"""confd's watcher: events received together are applied first, the configuration computed
once from the state after the last (a stand-in stream and client)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import agent.confd.watcher as watcher_mod
from datastore.client import WatchEvent, WatchStream

pytestmark = pytest.mark.unit


class StandInStream:
    """Yields batches of events as WatchStream does: ``more`` is True while others follow."""

    def __init__(self, batches):
        self.batches = batches
        self.more = False
        self.stop = SimpleNamespace(is_set=lambda: False)

    def __iter__(self):
        for batch in self.batches:
            yield from WatchStream._batch(self, batch)

    def close(self) -> None:
        pass


def ev(kind: str, name: str, etype: str = "ADDED") -> WatchEvent:
    return WatchEvent(etype, kind, name, None, SimpleNamespace(name=name), 1)


def test_the_configuration_is_computed_once_per_batch_from_the_state_after_it(monkeypatch):
    seen: list[list[str]] = []

    def compute(node_name, st, timers=None):
        seen.append(sorted(st.nodes))
        return tuple(sorted(st.nodes))

    monkeypatch.setattr(watcher_mod, "compute", compute)
    stream = StandInStream([
        [ev("Node", "k8s-m"), ev("Node", "k8s-w0"), WatchEvent("SYNCED", "", "", None, None, 1)],
        [ev("Node", "k8s-w1")],
        [ev("Node", "k8s-w2"), ev("Node", "k8s-w3"), ev("Node", "k8s-w0", "DELETED")],
    ])
    configs = []
    w = watcher_mod.ConfdWatcher(SimpleNamespace(watch_stream=lambda kinds: stream), "k8s-m", configs.append)
    w._run()
    assert seen == [["k8s-m", "k8s-w0"], ["k8s-m", "k8s-w0", "k8s-w1"], ["k8s-m", "k8s-w1", "k8s-w2", "k8s-w3"]]
    assert configs == [tuple(s) for s in seen] and w.synced.is_set()


def test_without_batch_information_every_event_is_computed_as_before(monkeypatch):
    """A stream that says nothing about batches (Typha's) gets a computation per event."""
    calls = []
    monkeypatch.setattr(watcher_mod, "compute", lambda n, st, timers=None: calls.append(len(st.nodes)))
    events = [WatchEvent("SYNCED", "", "", None, None, 1), ev("Node", "a"), ev("Node", "b")]
    w = watcher_mod.ConfdWatcher(SimpleNamespace(watch_stream=lambda kinds: iter(events)), "a", lambda c: None)
    w._stream = None
    w._run()
    assert calls == [0, 1, 2]
