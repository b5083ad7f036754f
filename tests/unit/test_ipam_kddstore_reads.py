"""ipam.kddstore: an allocation's reads go at once, and the blocks the host had affine last
time are read with them (a fake API client counting requests: pure logic)."""

from __future__ import annotations

import os
import threading
from ipaddress import IPv4Network

from ipam import kddstore
from ipam import store as ipam_store
from ipam.block import Block
from ipam.kddstore import KubeStore, affinity_cr, block_cr


class FakeKube:
    """Answers GET and LIST of IPAM custom resources from dicts; records the calling threads."""

    class config:  # noqa: N801 - the attribute kubeclient.Client has
        server = "https://fake:6443"

    def __init__(self, objs: dict[tuple[str, str], dict]) -> None:
        self.objs = objs
        self.calls: list[tuple[str, str, str]] = []
        self.threads: set[int] = set()
        self.lock = threading.Lock()

    def _note(self, verb: str, plural: str, name: str = "") -> None:
        with self.lock:
            self.calls.append((verb, plural, name))
            self.threads.add(threading.get_ident())

    def get(self, api: str, plural: str, name: str) -> dict:
        import kubeclient

        self._note("get", plural, name)
        if (plural, name) not in self.objs:
            raise kubeclient.NotFound(404, "NotFound", f"{plural} {name!r} not found")
        return self.objs[(plural, name)]

    def list_all(self, api: str, plural: str) -> tuple[list[dict], str]:
        self._note("list", plural)
        return [o for (p, _), o in self.objs.items() if p == plural], "7"


def _objs() -> dict[tuple[str, str], dict]:
    block = Block.new("10.9.0.0/28", "host:node-a")
    out = {("ipamblocks", "10-9-0-0-28"): block_cr(block, rv="5")}
    aff = affinity_cr("node-a", "10.9.0.0/28", "confirmed", rv="6")
    out[("blockaffinities", aff["metadata"]["name"])] = aff
    out[("ippools", "p")] = {"metadata": {"name": "p"}, "spec": {"cidr": "10.9.0.0/16", "blockSize": 28}}
    return out


def test_the_second_allocation_reads_its_block_with_the_snapshot_and_not_again():
    ipam_store._AFFINE_HINT.clear()
    kube = FakeKube(_objs())
    store = KubeStore(kube)
    cfg, pools, affs = store.alloc_snapshot("node-a")
    assert [a.cidr for a in affs] == [IPv4Network("10.9.0.0/28")] and len(pools) == 1
    assert ("get", "ipamblocks", "10-9-0-0-28") not in kube.calls  # nothing hinted yet
    store.get_free_blocks([IPv4Network("10.9.0.0/28")])
    kube.calls.clear()
    store.alloc_snapshot("node-a")
    assert sorted(kube.calls) == sorted([("get", "ipamconfigs", "default"), ("list", "ippools", ""),
                                         ("list", "blockaffinities", ""), ("get", "ipamblocks", "10-9-0-0-28")])
    assert len(kube.threads) > 1, "the reads did not go at once"
    kube.calls.clear()
    free = store.get_free_blocks([IPv4Network("10.9.0.0/28")])
    assert list(free) == [IPv4Network("10.9.0.0/28")] and kube.calls == []
    # a block that was not read with the snapshot is read now (and the snapshot used once only)
    assert store.get_free_blocks([IPv4Network("10.9.0.0/28")]) and kube.calls == [("get", "ipamblocks", "10-9-0-0-28")]


def test_a_forked_child_starts_its_own_readers():
    kddstore._concurrently([lambda: 1, lambda: 2])
    assert kddstore._readers is not None
    pid = os.fork()
    if pid == 0:  # the child: the parent's threads are not here; reads must still complete
        try:
            ok = kddstore._readers is None and kddstore._concurrently([lambda: 1, lambda: 2]) == [1, 2]
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
