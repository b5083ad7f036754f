"""Felix's watch side: which datastore updates wake the dataplane (a stand-in stream, no root).

An update whose value, converted to Felix's model, equals what Felix already holds (a Node
whose resourceVersion alone moved, a block that gained an address of its own node) changes
nothing Felix calculates, so it must not cost a dataplane apply; any real change must."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from agent.clock import FakeClock
from agent.felix.daemon import Felix
from datastore.client import WatchEvent, WatchStream
from datastore.resources import (
    AllocationAttribute,
    IPAMBlock,
    Metadata,
    Node,
    NodeBGPSpec,
    WorkloadEndpoint,
)
from kernel.fake import FakeKernel

pytestmark = pytest.mark.unit


def node(rv: int, ip: str = "172.30.0.11/24") -> Node:
    return Node(metadata=Metadata(name="w1", resource_version=str(rv)),
                spec=Node.Spec(bgp=NodeBGPSpec(ipv4_address=ip, ipv4_ipip_tunnel_addr="192.168.1.1")))


def block(rv: int, *owners: str) -> IPAMBlock:
    return IPAMBlock(metadata=Metadata(name="192.168.1.0-26", resource_version=str(rv)), spec=IPAMBlock.Spec(
        cidr="192.168.1.0/26", affinity="host:w1", allocations=list(range(len(owners))),
        attributes=[AllocationAttribute(f"h{i}", {"node": o}) for i, o in enumerate(owners)]))


def wep(rv: int, labels: dict[str, str]) -> WorkloadEndpoint:
    return WorkloadEndpoint(
        metadata=Metadata(name="w1-k8s-p-eth0", namespace="default", resource_version=str(rv), labels=labels),
        spec=WorkloadEndpoint.Spec(node="w1", pod="p", endpoint="eth0", interface_name="cali0123456789a",
                                   ip_networks=["192.168.1.2/32"], profiles=["kns.default"]))


def mod(obj) -> WatchEvent:
    return WatchEvent("MODIFIED", obj.KIND, obj.metadata.name, obj.metadata.namespace, obj,
                      int(obj.metadata.resource_version))


class Stream:
    """Yields batches as WatchStream does and records, before each batch after the first,
    whether the previous one woke the dataplane (then clears the flag)."""

    def __init__(self, felix: Felix, batches):
        self.felix, self.batches = felix, batches
        self.more = False
        self.woke: list[bool] = []

    def __iter__(self):
        for i, batch in enumerate(self.batches):
            if i:
                self.woke.append(self.felix._dirty.is_set())
                self.felix._dirty.clear()
            yield from WatchStream._batch(self, batch)
        self.woke.append(self.felix._dirty.is_set())
        self.felix._stop.set()

    def close(self) -> None:
        pass


def test_only_updates_that_change_felixs_model_wake_the_dataplane(tmp_path):
    batches = [
        [mod(node(1)), mod(block(2, "w1")), mod(wep(3, {"app": "a"})), WatchEvent("SYNCED", "", "", None, None, 3)],
        [mod(node(4))],                                    # resourceVersion only
        [mod(block(5, "w1", "w1"))],                       # a pod of the block's own node
        [mod(wep(6, {"app": "a"})), mod(node(7))],         # nothing Felix uses, in one batch
        [mod(block(8, "w1", "w1", "w2"))],                 # borrowed by w2: a route to resolve
        [mod(node(9)), mod(wep(10, {"app": "b"}))],        # one real change in the batch
        [mod(node(11, "172.30.0.12/24"))],                 # a new node address
        [WatchEvent("DELETED", "Node", "w1", None, None, 12)],
        [WatchEvent("DELETED", "Node", "w1", None, None, 13)],  # already gone
    ]
    f = Felix(None, "w0", env={}, var_lib=str(tmp_path), kernel=FakeKernel("w0"), clock=FakeClock())
    stream = Stream(f, batches)
    f.client = SimpleNamespace(watch_stream=lambda kinds, stop=None: stream)
    f._watch_loop()
    assert stream.woke == [True, False, False, False, True, True, True, True, False]
    assert f.status()["updates"] == {"changed": 4, "unchanged": 6}
    assert "w1" not in f._nodes and f._blocks["192.168.1.0-26"].borrowed == (("192.168.1.2", "w2"),)
