"""Must-hold in the Kubernetes datastore: 4 OS processes acting as 8 nodes make 500 single-IP
allocations from a pool of /28 blocks through the API server (IPAM on the
crd.projectcalico.org custom resources, CAS through resourceVersion). Afterwards every IP is
distinct, each block is affine to exactly one node whose BlockAffinity says confirmed, a node
has at most one block that is not full; after everything is released no allocation or handle
is left and ``calicoctl ipam check`` (DATASTORE_TYPE=kubernetes) reports 0 problems."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from collections import Counter, defaultdict
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

pytestmark = pytest.mark.etcd

PROCS = 4
NODES_PER_PROC = 2


def _client(kubeconfig: str):
    from datastore.kdd import KubeClient

    return KubeClient.from_env({"KUBECONFIG": kubeconfig}, timeout=30)


def _worker(args: tuple[str, int, int]) -> list[tuple[str, str, str]]:
    from ipam import IPAM

    kubeconfig, proc, count = args
    ipam = IPAM(_client(kubeconfig))
    nodes = [f"node{proc * NODES_PER_PROC + k}" for k in range(NODES_PER_PROC)]
    out = []
    for i in range(count):
        node = nodes[i % NODES_PER_PROC]
        handle = f"k8s-pod-network.p{proc}-{i}"
        ip = ipam.auto_assign(1, handle, {"node": node, "pod": f"pod-{proc}-{i}", "namespace": "default"}, node)[0]
        out.append((str(ip), node, handle))
    return out


def _releaser(args: tuple[str, list[str]]) -> int:
    from ipam import IPAM

    kubeconfig, handles = args
    ipam = IPAM(_client(kubeconfig))
    return sum(len(ipam.release_by_handle(h)) for h in handles)


def _run_parallel(fn, jobs):  # noqa: ANN001, ANN202
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(len(jobs)) as pool:
        return pool.map(fn, jobs)


def _calicoctl(kubeconfig: str, *args: str) -> str:
    script = Path(sys.executable).parent / "calicoctl"
    cmd = [str(script)] if script.exists() else [
        sys.executable, "-c", "import sys; from testbed.calicoctl import main; sys.exit(main())"]
    env = {k: v for k, v in os.environ.items() if k != "ETCD_ENDPOINTS"}
    env.update(DATASTORE_TYPE="kubernetes", KUBECONFIG=kubeconfig)
    res = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_500_allocations_4_procs_8_nodes_block28_in_the_kubernetes_datastore(apiserver):
    from datastore.kdd import install_crds
    from datastore.resources import IPPool, Metadata
    from ipam.kddstore import KubeStore

    kube = apiserver.client()
    install_crds(kube)
    kc = _client(apiserver.kubeconfig)
    kc.create(IPPool(metadata=Metadata(name="p"),
                     spec=IPPool.Spec(cidr="10.128.0.0/22", block_size=28, ipip_mode="Always")))
    total = 500
    per_proc = [total // PROCS + (1 if k < total % PROCS else 0) for k in range(PROCS)]
    results = [r for rs in _run_parallel(_worker, [(apiserver.kubeconfig, k, n) for k, n in enumerate(per_proc)])
               for r in rs]
    assert len(results) == total and len({node for _, node, _ in results}) == 8
    ips = [IPv4Address(ip) for ip, *_ in results]
    assert len(set(ips)) == total, [ip for ip, n in Counter(ips).items() if n > 1]
    assert all(ip in IPv4Network("10.128.0.0/22") for ip in ips)

    store = KubeStore(kube)
    blocks = {b.cidr: b for b, _ in store.list_blocks()}
    held = {ip: attr.handle_id for b in blocks.values() for ip, attr in b.allocated()}
    assert held == {IPv4Address(ip): handle for ip, _, handle in results}
    affinities = defaultdict(list)
    for aff in store.list_affinities():
        affinities[aff.cidr].append(aff)
    assert set(affinities) == set(blocks)
    for cidr, b in blocks.items():
        assert b.host is not None, f"block {cidr} has no affinity"
        assert [(a.host, a.state) for a in affinities[cidr]] == [(b.host, "confirmed")], cidr
    by_node = defaultdict(list)
    for b in blocks.values():
        by_node[b.host].append(b)
    for node, owned in by_node.items():
        assert sum(1 for b in owned if b.unallocated) <= 1, f"{node} claimed a block before filling its others"
    # the handles count exactly what the blocks hold
    counts = Counter(handle for _, _, handle in results)
    assert {h.handle_id: sum(h.block.values()) for h in store.list_handles()} == dict(counts)

    handles: list[list[str]] = [[] for _ in range(PROCS)]
    for i, (_, _, handle) in enumerate(results):
        handles[i % PROCS].append(handle)
    freed = sum(_run_parallel(_releaser, [(apiserver.kubeconfig, h) for h in handles]))
    assert freed == total
    assert all(b.is_empty() for b, _ in store.list_blocks())
    assert store.list_handles() == []
    assert kube.list("crd.projectcalico.org/v1", "ipamhandles")["items"] == []
    out = _calicoctl(apiserver.kubeconfig, "ipam", "check")
    assert "IPAM blocks record 0 allocations." in out
    assert out.endswith("Check complete; found 0 problems.\n"), out
