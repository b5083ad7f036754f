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


def test_updates_that_cannot_change_the_configuration_compute_nothing(monkeypatch):
    """A Node whose resourceVersion alone moved, or a block that gained an address of its own
    node, is stored but computes nothing; a batch holding one real change computes once."""
    from datastore.resources import AllocationAttribute, IPAMBlock, Metadata, Node, NodeBGPSpec

    def node(rv: str, ip: str = "172.30.0.11/24") -> Node:
        return Node(metadata=Metadata(name="w0", resource_version=rv),
                    spec=Node.Spec(bgp=NodeBGPSpec(ipv4_address=ip)))

    def block(rv: str, *owners: str) -> IPAMBlock:
        return IPAMBlock(metadata=Metadata(name="192.168.1.0-26", resource_version=rv), spec=IPAMBlock.Spec(
            cidr="192.168.1.0/26", affinity="host:w0", allocations=list(range(len(owners))),
            attributes=[AllocationAttribute(f"h{i}", {"node": o}) for i, o in enumerate(owners)]))

    def change(kind, obj):
        return WatchEvent("MODIFIED", kind, obj.metadata.name, None, obj, int(obj.metadata.resource_version))

    calls = []
    monkeypatch.setattr(watcher_mod, "compute", lambda n, st, timers=None: calls.append(n) or len(calls))
    stream = StandInStream([
        [change("Node", node("1")), change("IPAMBlock", block("2", "w0")), WatchEvent("SYNCED", "", "", None, None, 2)],
        [change("Node", node("3"))],                                   # resourceVersion only
        [change("IPAMBlock", block("4", "w0", "w0"))],                 # its own node's pod
        [change("Node", node("5")), change("IPAMBlock", block("6", "w0", "w0", "w0"))],
        [change("IPAMBlock", block("7", "w0", "w0", "w0", "w1"))],     # borrowed by w1
        [change("Node", node("8", "172.30.0.12/24"))],                 # a new address
        [WatchEvent("DELETED", "IPAMBlock", "192.168.1.0-26", None, None, 9)],
    ])
    w = watcher_mod.ConfdWatcher(SimpleNamespace(watch_stream=lambda kinds: stream), "w0", lambda c: None)
    w._run()
    assert len(calls) == 4  # the sync, the borrowed address, the new address, the deletion
    assert (w.updates_changed, w.updates_unchanged) == (5, 4)
