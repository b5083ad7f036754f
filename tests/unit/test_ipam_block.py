"""Unit tests of ipam.block: block FIFO, attributes, sequence numbers, pools, config rules."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from ipam.block import (
    BadSequenceNumber,
    Block,
    Handle,
    InvalidConfig,
    InvalidPool,
    IPAMConfigRules,
    IPAMError,
    block_at,
    block_count,
    block_of,
    block_walk,
    fnv1_32,
    host_affinity,
    validate_pool,
    walk_start,
)

pytestmark = pytest.mark.unit

IP = IPv4Address


def test_new_block_fifo_starts_at_zero():
    b = Block.new("10.0.0.0/29", host_affinity("n1"))
    assert b.unallocated == list(range(8))
    assert b.allocations == [None] * 8
    assert b.host == "n1"
    got = b.auto_assign(3, "h1", {"node": "n1"})
    assert got == [IP("10.0.0.0"), IP("10.0.0.1"), IP("10.0.0.2")]
    assert b.unallocated == [3, 4, 5, 6, 7]
    assert b.num_allocated() == 3 and b.num_free() == 5


def test_freed_ordinal_goes_to_tail_least_recently_freed_reused():
    b = Block.new("10.0.0.0/30")
    b.auto_assign(4, "h", {})
    b.release([IP("10.0.0.1")])
    b.release([IP("10.0.0.0")])
    assert b.unallocated == [1, 0]
    assert b.auto_assign(1, "h2", {}) == [IP("10.0.0.1")]


def test_attributes_shared_by_handle_and_compacted_on_release():
    b = Block.new("10.0.0.0/29")
    b.auto_assign(2, "a", {"pod": "p1"})
    b.auto_assign(1, "b", {"pod": "p2"})
    assert b.allocations[:3] == [0, 0, 1]
    assert [a.handle_id for a in b.attributes] == ["a", "b"]
    _, counts = b.release([IP("10.0.0.0"), IP("10.0.0.1")])
    assert counts == {"a": 2}
    assert [a.handle_id for a in b.attributes] == ["b"]
    assert b.allocations[2] == 0
    assert b.attribute_of(IP("10.0.0.2")).secondary == {"pod": "p2"}
    assert b.check() == []


def test_sequence_number_bumped_per_write_and_stamped():
    b = Block.new("10.0.0.0/29")
    assert b.sequence_number == 0
    b.auto_assign(1, "a", {})
    assert b.sequence_number == 1
    assert b.sequence_number_of(IP("10.0.0.0")) == 0
    b.auto_assign(1, "b", {})
    assert b.sequence_number_of(IP("10.0.0.1")) == 1
    assert b.sequence_number == 2


def test_stale_sequence_number_release_refused_and_nothing_changed():
    b = Block.new("10.0.0.0/29")
    b.auto_assign(1, "a", {})
    stamp = b.sequence_number_of(IP("10.0.0.0"))
    b.release([IP("10.0.0.0")])
    # ABA: the address is handed out again, someone replays the old release
    b.auto_assign(8, "b", {})
    before = b.to_dict()
    with pytest.raises(BadSequenceNumber, match="sequence number"):
        b.release([IP("10.0.0.0")], {IP("10.0.0.0"): stamp})
    assert b.to_dict() == before
    # the right stamp releases
    ok = b.sequence_number_of(IP("10.0.0.0"))
    b.release([IP("10.0.0.0")], {IP("10.0.0.0"): ok})
    assert b.attribute_of(IP("10.0.0.0")) is None


def test_release_free_address_reported_not_an_error():
    b = Block.new("10.0.0.0/30")
    unalloc, counts = b.release([IP("10.0.0.2")])
    assert unalloc == [IP("10.0.0.2")] and counts == {}
    assert b.sequence_number == 0


def test_release_by_handle_and_assign_specific():
    b = Block.new("10.0.0.0/29")
    b.assign(IP("10.0.0.5"), "x", {"node": "n"})
    assert 5 not in b.unallocated
    with pytest.raises(IPAMError, match="in use"):
        b.assign(IP("10.0.0.5"), "y", {})
    b.auto_assign(2, "x", {"node": "n"})
    assert b.ips_of_handle("x") == [IP("10.0.0.0"), IP("10.0.0.1"), IP("10.0.0.5")]
    freed, counts = b.release_by_handle("x")
    assert counts == {"x": 3} and len(freed) == 3
    assert b.is_empty() and b.attributes == []


def test_block_json_round_trip():
    created_ns = 1_722_297_600_000_000_000  # newBlock: creation time in Unix ns
    b = Block.new("10.1.0.0/28", host_affinity("w0"), sequence_number=created_ns)
    b.auto_assign(2, "ipip-tunnel-addr-w0", {"node": "w0", "type": "ipipTunnelAddress"})
    d = b.to_dict()
    assert d["affinity"] == "host:w0"
    assert d["allocations"][:3] == [0, 0, None]
    assert d["attributes"][0] == {"handle_id": "ipip-tunnel-addr-w0",
                                  "secondary": {"node": "w0", "type": "ipipTunnelAddress"}}
    assert d["sequenceNumberForAllocation"] == {"0": created_ns, "1": created_ns}
    assert d["sequenceNumber"] == created_ns + 1
    assert Block.from_dict(d) == b
    # v3.28.1's model.AllocationBlock JSON: strictAffinity always; no affinityClaimTime (v3.32+)
    assert list(d) == ["cidr", "affinity", "strictAffinity", "allocations", "unallocated",
                       "attributes", "deleted", "sequenceNumber", "sequenceNumberForAllocation"]
    assert d["strictAffinity"] is False
    # a block written by a v3.32 node still reads (the field is ignored, as Go's decoder does)
    assert "affinityClaimTime" not in Block.from_dict({**d, "affinityClaimTime": "2026-01-01T00:00:00Z"}).to_dict()
    written_by_other = {**d, "strictAffinity": True}
    assert Block.from_dict(written_by_other).to_dict()["strictAffinity"] is True  # kept on rewrite


def test_check_finds_corruption():
    b = Block.new("10.0.0.0/30")
    b.auto_assign(1, "a", {})
    b.unallocated.append(0)
    assert any("unallocated" in p for p in b.check())


def test_handle_counts():
    h = Handle("k8s-pod-network.abc")
    h.increment("10.0.0.0/26", 2)
    h.decrement("10.0.0.0/26")
    assert h.block == {"10.0.0.0/26": 1} and h.total() == 1
    h.decrement("10.0.0.0/26")
    assert h.is_empty()
    with pytest.raises(IPAMError):
        h.decrement("10.0.0.0/26")
    assert Handle.from_dict(Handle("x", {"a": 1}).to_dict()) == Handle("x", {"a": 1})


@pytest.mark.parametrize("cidr,size,field,text", [
    ("10.0.0.0/33", 26, "spec.cidr", "invalid CIDR"),
    ("banana", 26, "spec.cidr", "invalid CIDR"),
    ("10.0.0.0", 26, "spec.cidr", "prefix"),
    ("fd00::/64", 122, "spec.cidr", "IPv4"),
    ("10.0.0.0/16", 19, "spec.blockSize", "between 20 and 32"),
    ("10.0.0.0/16", 33, "spec.blockSize", "between 20 and 32"),
    ("10.0.0.0/28", 26, "spec.cidr", "smaller than its block size"),
])
def test_pool_validation_names_field(cidr, size, field, text):
    with pytest.raises(InvalidPool) as exc:
        validate_pool(cidr, size)
    assert exc.value.field == field
    assert field in str(exc.value) and text in str(exc.value)


def test_pool_overlap_names_other_pool():
    with pytest.raises(InvalidPool, match=r"spec.cidr: IPPool\(p1\) CIDR 10.0.0.0/16 overlaps"):
        validate_pool("10.0.128.0/17", 26, [("p1", "10.0.0.0/16")])
    assert validate_pool("10.1.0.0/16", None, [("p1", "10.0.0.0/16")]) == IPv4Network("10.1.0.0/16")
    # host bits are normalised as calicoctl does
    assert validate_pool("10.2.3.4/16", 26) == IPv4Network("10.2.0.0/16")


def test_block_math():
    pool = IPv4Network("192.168.0.0/22")
    assert block_count(pool, 28) == 64
    assert block_at(pool, 28, 0) == IPv4Network("192.168.0.0/28")
    assert block_at(pool, 28, 63) == IPv4Network("192.168.3.240/28")
    assert block_of(IP("192.168.1.77"), 26) == IPv4Network("192.168.1.64/26")


def test_fnv1_vectors():
    # FNV-1 32-bit reference vectors (offset basis for empty input)
    assert fnv1_32(b"") == 0x811C9DC5
    assert fnv1_32(b"a") == 0x050C5D7E
    assert fnv1_32(b"foobar") == 0x31F0B262


def test_block_walk_deterministic_covers_all_and_differs_per_host():
    pool = IPv4Network("10.0.0.0/22")
    walk = list(block_walk(pool, 28, "k8s-w0"))
    assert len(walk) == 64 and len(set(walk)) == 64
    assert walk == list(block_walk(pool, 28, "k8s-w0"))
    assert walk[0] == block_at(pool, 28, walk_start("k8s-w0", 64))
    starts = {walk_start(f"node{i}", 64) for i in range(8)}
    assert len(starts) > 1


def test_ipam_config_rules():
    IPAMConfigRules().validate()
    assert IPAMConfigRules().block_limit == 20
    with pytest.raises(InvalidConfig) as err:  # SetIPAMConfig's wording
        IPAMConfigRules(strict_affinity=False, auto_allocate_blocks=False).validate()
    assert str(err.value) == "Cannot disable 'StrictAffinity' and 'AutoAllocateBlocks' at the same time"
    with pytest.raises(InvalidConfig) as err:
        IPAMConfigRules(max_blocks_per_host=3).validate()
    assert str(err.value) == "MaxBlocksPerHost requires StrictAffinity to be enabled"
    cfg = IPAMConfigRules(strict_affinity=True, max_blocks_per_host=3)
    cfg.validate()
    assert cfg.block_limit == 3


def test_slash32_blocks_walk_from_a_random_start_but_cover_the_pool():
    pool = IPv4Network("10.0.0.0/24")
    walks = [list(block_walk(pool, 32, "n1")) for _ in range(8)]
    assert all(sorted(w) == sorted(walks[0]) and len(w) == 256 for w in walks)
    assert len({w[0] for w in walks}) > 1
