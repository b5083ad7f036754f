"""IPAM against a real etcd: claim protocol, FIFO, handles, cap, borrow, reclaim, release, check."""

from __future__ import annotations

import json
import time
from ipaddress import IPv4Address, IPv4Network

import pytest

from datastore import Client, errors
from datastore.resources import IPPool, Metadata, Node, WorkloadEndpoint
from ipam import IPAM
from ipam.block import BadSequenceNumber, InvalidConfig, IPAMConfigRules, IPAMError
from ipam.ipam import BlockLimitError, NoPools, PoolsExhausted
from ipam.store import affinity_key, block_key

pytestmark = pytest.mark.etcd

IP = IPv4Address


def add_pool(client: Client, name: str, cidr: str, block_size: int = 26, **spec) -> IPPool:
    return client.create(IPPool(metadata=Metadata(name=name),
                                spec=IPPool.Spec(cidr=cidr, block_size=block_size, **spec)))


@pytest.fixture
def ipam(ds_client) -> IPAM:
    return IPAM(ds_client)


def test_first_node_tunnel_then_pod_claim_protocol(ds_client, ipam):
    add_pool(ds_client, "default-ipv4-ippool", "192.168.0.0/16", 26, ipip_mode="Always")
    tun = ipam.allocate_tunnel_address("k8s-w0")
    pod = ipam.auto_assign(1, "k8s-pod-network.c1", {"node": "k8s-w0", "pod": "nginx",
                                                     "namespace": "default"}, "k8s-w0")[0]
    block = IPv4Network((int(tun), 26), strict=False)
    # tunnel IP is ordinal 0 of the node's first block, the first pod gets ordinal 1
    assert tun == block.network_address
    assert pod == block.network_address + 1
    blocks = ipam.blocks()
    assert [b.cidr for b in blocks] == [block]
    assert blocks[0].affinity == "host:k8s-w0"
    # the affinity went pending -> confirmed and is stored in Calico's layout
    aff = ds_client.etcd.get(affinity_key("k8s-w0", block))
    assert aff is not None and b'"state":"confirmed"' in aff.value
    assert ds_client.etcd.get(block_key(block)) is not None
    attrs, handle = ipam.get_assignment_attributes(tun)
    assert handle == "ipip-tunnel-addr-k8s-w0" and attrs == {"node": "k8s-w0", "type": "ipipTunnelAddress"}
    attrs, handle = ipam.get_assignment_attributes(pod)
    assert handle == "k8s-pod-network.c1" and attrs["pod"] == "nginx"
    # tunnel allocation is idempotent
    assert ipam.allocate_tunnel_address("k8s-w0") == tun
    # the datastore sees the same objects through its typed kinds
    h = ds_client.get("IPAMHandle", "k8s-pod-network.c1")
    assert h.spec.block == {str(block): 1}
    assert ds_client.list("BlockAffinity")[0].spec.state == "confirmed"


def test_release_by_handle_and_ip_and_fifo_reuse(ds_client, ipam):
    add_pool(ds_client, "p", "10.10.0.0/24", 28)
    a = ipam.auto_assign(2, "h-a", {"node": "n1"}, "n1")
    b = ipam.auto_assign(1, "h-b", {"node": "n1"}, "n1")
    assert a[1] == a[0] + 1 and int(a[0]) % 16 == 0  # ordinals 0 and 1 of a fresh block
    assert b[0] == a[1] + 1
    assert ipam.release_by_handle("h-a") == a
    with pytest.raises(errors.NotFound):
        ds_client.get("IPAMHandle", "h-a")
    assert ipam.release_ips([b[0], b[0] + 5]) == [b[0] + 5]  # the second one was never allocated
    with pytest.raises(errors.NotFound):
        ds_client.get("IPAMHandle", "h-b")
    # freed ordinals went to the tail of the FIFO: next allocation is a fresh ordinal
    c = ipam.auto_assign(1, "h-c", {}, "n1")[0]
    assert c == b[0] + 1
    assert ipam.release_by_handle("unknown-handle") == []
    assert ipam.check().problems == 1  # h-c is allocated but no endpoint uses it
    ipam.release_by_handle("h-c")
    assert ipam.check().problems == 0


def test_stale_sequence_number_release_is_refused(ds_client, ipam):
    add_pool(ds_client, "p", "10.11.0.0/24", 28)
    ip = ipam.auto_assign(1, "h1", {}, "n1")[0]
    stale = ipam.ip_info(ip)["sequence_number"]
    ipam.release_ips([ip])
    # the block hands out every other address, then this one again (ABA)
    ipam.auto_assign(16, "h2", {}, "n1")
    assert ipam.ip_info(ip)["handle_id"] == "h2"
    with pytest.raises(BadSequenceNumber):
        ipam.release_ips([ip], sequence_numbers={ip: stale})
    assert ipam.ip_info(ip)["in_use"]
    fresh = ipam.ip_info(ip)["sequence_number"]
    assert ipam.release_ips([ip], sequence_numbers={ip: fresh}) == []
    assert not ipam.ip_info(ip)["in_use"]


def test_per_host_block_limit(ds_client, ipam):
    add_pool(ds_client, "p", "10.12.0.0/24", 32)
    got = [ipam.auto_assign(1, f"h{i}", {}, "n1")[0] for i in range(20)]
    assert len(set(got)) == 20
    with pytest.raises(BlockLimitError) as err:
        ipam.auto_assign(1, "h20", {}, "n1")
    assert str(err.value) == "cannot allocate new block due to per host block limit"  # ErrBlockLimit
    # another node is not affected
    ipam.auto_assign(1, "other", {}, "n2")
    # a configured cap (needs strictAffinity)
    with pytest.raises(InvalidConfig):
        ipam.set_config(IPAMConfigRules(max_blocks_per_host=2))
    ipam.set_config(IPAMConfigRules(strict_affinity=True, max_blocks_per_host=2))
    ipam.auto_assign(2, "n3a", {}, "n3")
    with pytest.raises(BlockLimitError):
        ipam.auto_assign(1, "n3b", {}, "n3")
    assert ds_client.get("IPAMConfig", "default").spec.max_blocks_per_host == 2


def test_borrow_only_when_no_free_block_and_not_strict(ds_client, ipam):
    add_pool(ds_client, "p", "10.13.0.0/27", 28)  # two blocks
    a = ipam.auto_assign(16, "fill-a", {}, "a")
    b = ipam.auto_assign(1, "b1", {}, "b")
    block_a = IPv4Network((int(a[0]), 28), strict=False)
    block_b = IPv4Network((int(b[0]), 28), strict=False)
    assert block_a != block_b
    # a's block is full and the pool has no free block: a borrows from b's block
    borrowed = ipam.auto_assign(2, "a-more", {"node": "a"}, "a")
    assert all(ip in block_b for ip in borrowed)
    affinities = {b.cidr: b.affinity for b in ipam.blocks()}
    assert affinities == {block_a: "host:a", block_b: "host:b"}
    # strict affinity forbids it
    ipam.set_config(IPAMConfigRules(strict_affinity=True))
    with pytest.raises(PoolsExhausted, match=r"No IPs available in pools: \[10.13.0.0/27\]"):
        ipam.auto_assign(1, "a-strict", {}, "a")
    assert ipam.release_by_handle("a-strict") == []


def test_no_reclaim_of_other_hosts_empty_blocks_in_v3_28_1(ds_client):
    """v3.28.1 never takes another host's block, however long it has been empty (reclaim
    and affinityClaimTime are v3.32+): a borrows from b's empty block, which stays b's."""
    add_pool(ds_client, "p", "10.14.0.0/28", 28)  # one block
    now = [1000.0]
    ipam = IPAM(ds_client, clock=lambda: now[0])
    ip = ipam.auto_assign(1, "b1", {}, "b")[0]
    ipam.release_ips([ip])
    assert ipam.blocks()[0].is_empty()
    for handle in ("a1", "a2"):
        got = ipam.auto_assign(1, handle, {}, "a")[0]
        assert ipam.blocks()[0].affinity == "host:b" and got in IPv4Network("10.14.0.0/28")
        assert ds_client.etcd.get(affinity_key("a", "10.14.0.0/28")) is None
        ipam.release_ips([got])
        now[0] += 24 * 3600  # a day later: still not reclaimed
    assert ds_client.etcd.get(affinity_key("b", "10.14.0.0/28")) is not None
    block = json.loads(ds_client.etcd.get(block_key(IPv4Network("10.14.0.0/28"))).value)
    assert "affinityClaimTime" not in block
    assert block["sequenceNumber"] >= 1000 * 10**9  # newBlock: created at t=1000 s, in ns


def test_exhaustion_is_all_or_nothing_and_names_pools(ds_client, ipam):
    add_pool(ds_client, "p", "10.15.0.0/28", 28)
    with pytest.raises(PoolsExhausted) as err:
        ipam.auto_assign(17, "big", {}, "n1")
    # libcalico-go's PartialFulfillmentError with autoAssign's message
    assert str(err.value) == ("Assigned 16 out of 17 requested IPv4 addresses; "
                              "No IPs available in pools: [10.15.0.0/28]")
    assert all(b.is_empty() for b in ipam.blocks())
    with pytest.raises(errors.NotFound):
        ds_client.get("IPAMHandle", "big")


def test_pool_selection_rules(ds_client, ipam):
    add_pool(ds_client, "tun-only", "10.16.0.0/24", 28, allowed_uses=["Tunnel"], ipip_mode="Always")
    add_pool(ds_client, "rack1", "10.17.0.0/24", 28, node_selector="rack == 'r1'")
    add_pool(ds_client, "off", "10.18.0.0/24", 28, disabled=True)
    ds_client.create(Node(metadata=Metadata(name="n1", labels={"rack": "r1"})))
    ds_client.create(Node(metadata=Metadata(name="n2", labels={"rack": "r2"})))
    ip = ipam.auto_assign(1, "w1", {}, "n1")[0]
    assert ip in IPv4Network("10.17.0.0/24")
    with pytest.raises(NoPools, match="n2"):
        ipam.auto_assign(1, "w2", {}, "n2")
    assert ipam.allocate_tunnel_address("n2") in IPv4Network("10.16.0.0/24")
    with pytest.raises(NoPools, match="disabled"):
        ipam.auto_assign(1, "w3", {}, "n1", pools=["off"])
    with pytest.raises(NoPools, match="does not exist"):
        ipam.auto_assign(1, "w3", {}, "n1", pools=["10.99.0.0/16"])
    assert ipam.auto_assign(1, "w4", {}, "n1", pools=["10.17.0.0/24"])[0] in IPv4Network("10.17.0.0/24")


def test_assign_specific_ip(ds_client, ipam):
    add_pool(ds_client, "p", "10.19.0.0/24", 26)
    ipam.assign_ip("10.19.0.70", "fixed", {"pod": "x"}, "n1")
    info = ipam.ip_info("10.19.0.70")
    assert info["in_use"] and info["handle_id"] == "fixed" and info["affinity"] == "host:n1"
    with pytest.raises(IPAMError, match="in use"):
        ipam.assign_ip("10.19.0.70", "again", {}, "n1")
    with pytest.raises(IPAMError, match="not in any configured IP pool"):
        ipam.assign_ip("10.20.0.1", "x", {}, "n1")
    for bad in (lambda: ipam.assign_ip("10.19.0.300", "x", {}, "n1"),
                lambda: ipam.release_ips(["nonsense"]), lambda: ipam.ip_info("")):
        with pytest.raises(IPAMError, match="invalid IPv4 address"):
            bad()
    for num in (0, -1, "1"):
        with pytest.raises(IPAMError, match="num must be a positive integer"):
            ipam.auto_assign(num, "h", {}, "n1")
    with pytest.raises(IPAMError, match="handle_id"):
        ipam.auto_assign(1, "", {}, "n1")


def test_check_reports_leaks_and_missing_allocations(ds_client, ipam):
    add_pool(ds_client, "p", "10.21.0.0/24", 28, ipip_mode="Always")
    tun = ipam.allocate_tunnel_address("n1")
    pod = ipam.auto_assign(1, "k8s-pod-network.c1", {"node": "n1"}, "n1")[0]
    rep = ipam.check()
    assert len(rep.blocks) == 1 and len(rep.active_pools) == 1 and rep.num_allocations == 2
    assert rep.problems == 2 and rep.leaked_ips == sorted([tun, pod])
    from datastore.resources import NodeBGPSpec
    ds_client.create(Node(metadata=Metadata(name="n1"),
                          spec=Node.Spec(bgp=NodeBGPSpec(ipv4_address="172.30.0.11/24",
                                                         ipv4_ipip_tunnel_addr=str(tun)))))
    ds_client.create(WorkloadEndpoint(
        metadata=Metadata(name="n1-k8s-a-eth0", namespace="default"),
        spec=WorkloadEndpoint.Spec(node="n1", pod="a", endpoint="eth0",
                                   ip_networks=[f"{pod}/32", "10.21.0.200/32"])))
    rep = ipam.check()
    assert rep.tunnel_ips == 1 and rep.workload_ips == 2
    assert rep.leaked_ips == [] and rep.not_allocated == [IP("10.21.0.200")]
    assert rep.problem_lines() == ["10.21.0.200 in use by Workload(default/n1-k8s-a-eth0) and in active "
                                   "IPAM pool but has no IPAM allocation."]
    assert rep.allocations[pod][0].owners == ["Workload(default/n1-k8s-a-eth0)"]
    assert rep.allocations[tun][0].owners == ["Node(n1)"]


def test_unreachable_etcd_fails_fast_with_endpoint():
    ipam = IPAM(Client(["http://127.0.0.1:9"], timeout=1.0))
    t0 = time.monotonic()
    with pytest.raises(errors.DatastoreUnavailable, match="127.0.0.1:9"):
        ipam.auto_assign(1, "h", {}, "n1")
    assert time.monotonic() - t0 < 5


def test_same_node_racing_threads_block_and_handle_stay_consistent(ds_client):
    import threading

    add_pool(ds_client, "p", "10.22.0.0/24", 28)
    results: list[IPv4Address] = []
    failures: list[BaseException] = []

    def worker(k: int) -> None:
        ipam = IPAM(Client([f"http://{h}:{p}" for h, p in ds_client.etcd.endpoints]))
        try:
            for i in range(25):
                # a shared handle for half of them: its counts must add up despite the races
                handle = "shared" if i % 2 else f"t{k}-{i}"
                results.extend(ipam.auto_assign(1, handle, {"node": "n1"}, "n1"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures
    assert len(results) == 100 and len(set(results)) == 100
    rep = IPAM(ds_client).check()
    assert rep.handle_mismatches == [] and rep.missing_handles == [] and rep.other == []
    assert len(rep.leaked_ips) == 100
    assert sum(ds_client.get("IPAMHandle", "shared").spec.block.values()) == 48
    assert len(IPAM(ds_client).release_by_handle("shared")) == 48


def test_release_host_affinities_when_node_goes_away(ds_client, ipam):
    add_pool(ds_client, "p", "10.23.0.0/24", 28)
    kept = ipam.auto_assign(17, "busy", {"node": "gone"}, "gone")  # fills one block, one IP in a second
    ipam.release_ips(kept[:16])  # empty the first block, one address stays in the second
    left = [ip for ip in kept if ipam.ip_info(ip)["in_use"]]
    assert len(left) == 1 and len(ipam.blocks()) == 2
    assert ipam.release_host_affinities("gone") == 2
    assert ds_client.list("BlockAffinity") == []
    blocks = ipam.blocks()
    assert len(blocks) == 1 and blocks[0].affinity is None and left[0] in blocks[0].cidr
    assert ipam.check().other == []
    ipam.release_by_handle("busy")
    assert ipam.blocks() == []  # an empty block without affinity is deleted


def test_release_and_info_after_the_pool_is_deleted(ds_client, ipam):
    add_pool(ds_client, "p", "10.24.0.0/24", 28)
    ips = ipam.auto_assign(2, "h", {"node": "n1"}, "n1")
    ds_client.delete("IPPool", "p")
    info = ipam.ip_info(ips[0])
    assert info["in_use"] and info["pool"] is None and info["block"] == IPv4Network((int(ips[0]), 28), strict=False)
    assert ipam.release_ips([ips[0], IP("10.99.0.1")]) == [IP("10.99.0.1")]
    assert ipam.release_by_handle("h") == [ips[1]]
    assert ipam.check().problems == 0


def test_tunnel_address_released_when_ipip_is_turned_off(ds_client, ipam):
    add_pool(ds_client, "p", "10.25.0.0/24", 28, ipip_mode="Always")
    tun = ipam.allocate_tunnel_address("n1")
    assert ipam.ip_info(tun)["handle_id"] == "ipip-tunnel-addr-n1"
    pool = ds_client.get("IPPool", "p")
    pool.spec.ipip_mode = "Never"
    ds_client.update(pool)
    assert ipam.allocate_tunnel_address("n1") is None
    assert not ipam.ip_info(tun)["in_use"]
    with pytest.raises(errors.NotFound):
        ds_client.get("IPAMHandle", "ipip-tunnel-addr-n1")
    # CrossSubnet counts as IPIP again
    pool = ds_client.get("IPPool", "p")
    pool.spec.ipip_mode = "CrossSubnet"
    ds_client.update(pool)
    assert ipam.allocate_tunnel_address("n1") in IPv4Network("10.25.0.0/24")


def test_allocation_in_an_affine_block_reads_once_then_writes_once(ds_client):
    """The blocks of a host's affinities are read in the snapshot's own transaction (issue 18):
    an allocation in its affine block is one read and one CAS; a block claimed meanwhile by
    another client (a stale hint) still allocates correctly, with one read more."""
    add_pool(ds_client, "p", "10.23.0.0/24", 28)
    ipam = IPAM(Client([f"http://{h}:{p}" for h, p in ds_client.etcd.endpoints]))
    calls: list[str] = []
    real = ipam.etcd.call

    def counted(path, body):
        calls.append(path)
        return real(path, body)

    ipam.etcd.call = counted
    first = ipam.auto_assign(1, "h0", {}, "n-rt")  # claims the block
    ipam.auto_assign(1, "h1", {}, "n-rt")  # learns the host's affinity
    calls.clear()
    third = ipam.auto_assign(1, "h2", {}, "n-rt")
    assert calls == ["/v3/kv/txn", "/v3/kv/txn"]  # the snapshot with the block, the CAS
    assert third[0] == first[0] + 2
    # another client fills the block: this one's snapshot sees it full and claims the next
    other = IPAM(ds_client)
    other.auto_assign(13, "filler", {}, "n-rt")
    got = ipam.auto_assign(1, "h3", {}, "n-rt")
    blocks = {b.cidr: b for b in ipam.blocks()}
    assert len(blocks) == 2 and all(b.affinity == "host:n-rt" for b in blocks.values())
    assert got[0] not in IPv4Network((int(first[0]), 28), strict=False)
    rep = ipam.check()
    assert rep.handle_mismatches == [] and rep.missing_handles == [] and rep.other == []
