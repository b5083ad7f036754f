"""Must-hold: 4 OS processes acting as 8 nodes allocate concurrently from one etcd.

Checked on what etcd holds afterwards: every IP distinct, each block affine to
exactly one node (block affinity field and the host's affinity key agree),
a node only claims a new block once its others are full, borrowing only
happens after every block of the pool is claimed, and after releasing
everything no allocation or handle is left and ``calicoctl ipam check``
reports 0 problems.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from collections import Counter, defaultdict
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from datastore import Client
from datastore.resources import IPPool, Metadata
from ipam import IPAM
from ipam.store import BLOCK_PREFIX, Store

pytestmark = pytest.mark.etcd

PROCS = 4
NODES_PER_PROC = 2


def _worker(args: tuple[list[str], int, int]) -> list[tuple[str, str, str, int]]:
    """One OS process acting as two nodes: ``count`` single-IP allocations, alternating nodes."""
    endpoints, proc, count = args
    ipam = IPAM(Client(endpoints))
    nodes = [f"node{proc * NODES_PER_PROC + k}" for k in range(NODES_PER_PROC)]
    out = []
    for i in range(count):
        node = nodes[i % NODES_PER_PROC]
        handle = f"k8s-pod-network.p{proc}-{i}"
        ip = ipam.auto_assign(1, handle, {"node": node, "pod": f"pod-{proc}-{i}",
                                          "namespace": "default", "timestamp": "2026-01-01 00:00:00"},
                              node)[0]
        out.append((str(ip), node, handle, ipam.last_revision))
    return out


def _releaser(args: tuple[list[str], list[str]]) -> int:
    endpoints, handles = args
    ipam = IPAM(Client(endpoints))
    return sum(len(ipam.release_by_handle(h)) for h in handles)


def _run_parallel(fn, jobs):  # noqa: ANN001, ANN202
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(len(jobs)) as pool:
        return pool.map(fn, jobs)


def _calicoctl(endpoints: list[str], *args: str) -> str:
    script = Path(sys.executable).parent / "calicoctl"
    cmd = [str(script)] if script.exists() else [
        sys.executable, "-c", "import sys; from testbed.calicoctl import main; sys.exit(main())"]
    res = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=30,
                         env=dict(os.environ, ETCD_ENDPOINTS=",".join(endpoints)))
    assert res.returncode == 0, res.stderr
    return res.stdout


def _allocate_and_verify(endpoints: list[str], pool_cidr: str, block_size: int, total: int,
                         expect_borrowing: bool) -> list[tuple[str, str, str, int]]:
    client = Client(endpoints)
    client.create(IPPool(metadata=Metadata(name="p"),
                         spec=IPPool.Spec(cidr=pool_cidr, block_size=block_size, ipip_mode="Always")))
    per_proc = [total // PROCS + (1 if k < total % PROCS else 0) for k in range(PROCS)]
    results = [r for rs in _run_parallel(_worker, [(endpoints, k, n) for k, n in enumerate(per_proc)])
               for r in rs]
    assert len(results) == total

    # every IP distinct, and inside the pool
    ips = [IPv4Address(ip) for ip, *_ in results]
    assert len(set(ips)) == total, [ip for ip, n in Counter(ips).items() if n > 1]
    pool = IPv4Network(pool_cidr)
    assert all(ip in pool for ip in ips)

    store = Store(client.etcd)
    blocks = {b.cidr: (b, kv) for b, kv in store.list_blocks()}
    # what etcd holds matches what the workers were given
    held = {ip: attr.handle_id for b, _ in blocks.values() for ip, attr in b.allocated()}
    assert held == {IPv4Address(ip): handle for ip, _, handle, _ in results}

    # each block affine to exactly one node, and that node's affinity key says confirmed
    affinities = defaultdict(list)
    for aff in store.list_affinities():
        affinities[aff.cidr].append(aff)
    assert set(affinities) == set(blocks)
    for cidr, (b, _) in blocks.items():
        assert b.host is not None, f"block {cidr} has no affinity"
        assert [(a.host, a.state) for a in affinities[cidr]] == [(b.host, "confirmed")], cidr

    # affine blocks first: a node has at most one block that is not full
    by_node = defaultdict(list)
    for b, _ in blocks.values():
        by_node[b.host].append(b)
    for node, owned in by_node.items():
        assert sum(1 for b in owned if b.unallocated) <= 1, f"{node} claimed a block before filling its others"
        assert len(owned) <= 20

    # borrowing only after the pool had no free block
    all_claimed_at = max(kv.create_revision for _, kv in blocks.values())
    every_block_claimed = len(blocks) == 1 << (block_size - pool.prefixlen)
    borrowed = []
    for ip, node, _handle, rev in results:
        owner = next(b.host for c, (b, _) in blocks.items() if IPv4Address(ip) in c)
        if owner != node:
            borrowed.append((ip, node, owner))
            assert every_block_claimed, f"{node} borrowed {ip} from {owner} while the pool had free blocks"
            assert rev > all_claimed_at, f"{node} borrowed {ip} (rev {rev}) before the last block " \
                                         f"was claimed (rev {all_claimed_at})"
    assert bool(borrowed) == expect_borrowing, borrowed
    return results


def _release_all_and_check(endpoints: list[str], results: list[tuple[str, str, str, int]]) -> None:
    handles: list[list[str]] = [[] for _ in range(PROCS)]
    for i, (_, _, handle, _) in enumerate(results):
        handles[i % PROCS].append(handle)
    freed = sum(_run_parallel(_releaser, [(endpoints, h) for h in handles]))
    assert freed == len(results)
    client = Client(endpoints)
    store = Store(client.etcd)
    assert all(b.is_empty() for b, _ in store.list_blocks())
    assert store.list_handles() == []
    assert client.etcd.list(BLOCK_PREFIX)[0]  # blocks stay claimed (Calico keeps empty affine blocks)
    out = _calicoctl(endpoints, "ipam", "check")
    assert "IPAM blocks record 0 allocations." in out
    assert out.endswith("Check complete; found 0 problems.\n"), out


def test_500_allocations_4_procs_8_nodes_slash22_block28(etcd_endpoints):
    results = _allocate_and_verify(etcd_endpoints, "10.128.0.0/22", 28, 500, expect_borrowing=False)
    assert len({node for _, node, _, _ in results}) == 8
    _release_all_and_check(etcd_endpoints, results)


def test_borrowing_under_contention_once_pool_has_no_free_block(etcd_endpoints):
    # 4 blocks of 16 for 8 nodes: four nodes claim a block each, the other four must borrow
    results = _allocate_and_verify(etcd_endpoints, "10.129.0.0/26", 28, 56, expect_borrowing=True)
    _release_all_and_check(etcd_endpoints, results)
