"""The datastore client against a real etcd: CRUD, CAS, pool rules, watch, outages."""

import threading
import time

import pytest

from datastore import Client, errors
from datastore.etcd import EtcdClient
from datastore.resources import BlockAffinity, IPPool, Metadata, Node, WorkloadEndpoint
from testbed.poll import wait_for
from tests.support import EtcdServer

pytestmark = pytest.mark.etcd


def mkpool(name="p1", cidr="192.168.0.0/16", **kw) -> IPPool:
    return IPPool(metadata=Metadata(name=name), spec=IPPool.Spec(cidr=cidr, **kw))


def test_crud_uses_calico_keys_and_cas(ds_client: Client):
    created = ds_client.create(mkpool(ipip_mode="Always"))
    assert created.metadata.uid and created.metadata.creation_timestamp
    kv = ds_client.etcd.get("/calico/resources/v3/projectcalico.org/ippools/p1")
    assert kv is not None and b'"ipipMode":"Always"' in kv.value
    got = ds_client.get("IPPool", "p1")
    assert got.spec.block_size == 26 and got.revision == kv.mod_revision

    with pytest.raises(errors.AlreadyExists, match=r"IPPool\(p1\) already exists"):
        ds_client.create(mkpool())

    stale = ds_client.get("IPPool", "p1")
    got.spec.nat_outgoing = True
    ds_client.update(got)
    stale.spec.disabled = True
    with pytest.raises(errors.Conflict, match="modified by someone else"):
        ds_client.update(stale)
    assert ds_client.get("IPPool", "p1").spec.nat_outgoing is True

    wep = WorkloadEndpoint(metadata=Metadata(name="n1-k8s-p-eth0", namespace="ns1"),
                           spec=WorkloadEndpoint.Spec(node="n1", ip_networks=["192.168.0.1/32"]))
    ds_client.create(wep)
    assert ds_client.etcd.get(
        "/calico/resources/v3/projectcalico.org/workloadendpoints/ns1/n1-k8s-p-eth0") is not None
    assert [w.name for w in ds_client.list("WorkloadEndpoint")] == ["n1-k8s-p-eth0"]
    assert ds_client.list("WorkloadEndpoint", namespace="other") == []

    deleted = ds_client.delete("IPPool", "p1")
    assert deleted.name == "p1"
    with pytest.raises(errors.NotFound, match="IPPool 'p1' does not exist"):
        ds_client.get("IPPool", "p1")
    with pytest.raises(errors.NotFound):
        ds_client.delete("IPPool", "p1")


def test_workload_endpoint_cas_delete_at_the_revision_read_writes_once(ds_client: Client):
    """The CNI DEL's delete: the revision it read is the CAS, no second read (issue 18); a WEP
    rewritten since (a new sandbox's ADD) is kept with a Conflict, a gone one is NotFound."""
    wep = WorkloadEndpoint(metadata=Metadata(name="n1-k8s-q-eth0", namespace="ns1"),
                           spec=WorkloadEndpoint.Spec(node="n1", ip_networks=["192.168.0.2/32"], container_id="a"))
    first = ds_client.get("WorkloadEndpoint", ds_client.create(wep).metadata.name, "ns1")
    rewritten = ds_client.get("WorkloadEndpoint", "n1-k8s-q-eth0", "ns1")
    rewritten.spec.container_id = "b"
    ds_client.update(rewritten)
    with pytest.raises(errors.Conflict, match="changed since revision"):
        ds_client.delete("WorkloadEndpoint", "n1-k8s-q-eth0", "ns1", resource_version=first.metadata.resource_version,
                         uid=first.metadata.uid)
    current = ds_client.get("WorkloadEndpoint", "n1-k8s-q-eth0", "ns1")
    assert current.spec.container_id == "b"
    calls: list[str] = []
    real = ds_client.etcd.call
    ds_client.etcd.call = lambda path, body: calls.append(path) or real(path, body)  # type: ignore[method-assign]
    try:
        ds_client.delete("WorkloadEndpoint", "n1-k8s-q-eth0", "ns1", resource_version=current.metadata.resource_version,
                         uid=current.metadata.uid)
        assert calls == ["/v3/kv/txn"]
        with pytest.raises(errors.NotFound):
            ds_client.delete("WorkloadEndpoint", "n1-k8s-q-eth0", "ns1",
                             resource_version=current.metadata.resource_version)
    finally:
        del ds_client.etcd.call
    assert ds_client.list("WorkloadEndpoint", namespace="ns1") == []


def test_pool_overlap_and_immutable_fields_are_rejected_and_nothing_written(ds_client: Client):
    ds_client.create(mkpool("a", "192.168.0.0/16", block_size=24))
    rev = ds_client.etcd.revision()
    with pytest.raises(errors.ValidationError) as exc:
        ds_client.create(mkpool("b", "192.168.128.0/17"))
    assert exc.value.field == "IPPool(b).spec.cidr" and "overlaps with IPPool 'a'" in str(exc.value)
    with pytest.raises(errors.ValidationError, match=r"spec\.blockSize"):
        ds_client.create(mkpool("c", "10.10.0.0/16", block_size=19))
    changed = ds_client.get("IPPool", "a")
    changed.spec.block_size = 26
    with pytest.raises(errors.ValidationError, match="cannot be changed"):
        ds_client.update(changed)
    assert ds_client.etcd.revision() == rev, "a rejected write must not touch etcd"


def test_apply_creates_then_replaces(ds_client: Client):
    ds_client.apply(mkpool())
    p = mkpool(nat_outgoing=True)
    ds_client.apply(p)
    assert ds_client.get("IPPool", "p1").spec.nat_outgoing is True


def collect(stream, into: list, stop_after=None):
    for ev in stream:
        into.append(ev)
        if stop_after and stop_after(ev):
            return


def test_watch_gives_state_then_changes(ds_client: Client):
    ds_client.create(mkpool("a", "192.168.0.0/16"))
    seen: list = []
    stop = threading.Event()
    from datastore.client import WatchStream

    stream = WatchStream(ds_client, ["IPPool", "Node"], stop=stop)
    t = threading.Thread(target=collect, args=(stream, seen), daemon=True)
    t.start()
    wait_for(lambda: [e.type for e in seen], lambda ts: "SYNCED" in ts, timeout=5, what="initial SYNCED")
    assert [(e.type, e.kind, e.name) for e in seen] == [("ADDED", "IPPool", "a"), ("SYNCED", "", "")]
    ds_client.create(Node(metadata=Metadata(name="n1")))
    ds_client.delete("IPPool", "a")
    ds_client.etcd.put("/calico/felix/v2/no-region/host/n1/status", "{}")  # not a watched kind
    wait_for(lambda: [(e.type, e.kind, e.name) for e in seen[2:]],
             lambda got: got == [("ADDED", "Node", "n1"), ("DELETED", "IPPool", "a")],
             timeout=5, what="node add and pool delete events")
    stream.close()
    t.join(5)
    assert not t.is_alive()


def test_watch_resumes_after_outage_and_resyncs_after_compaction(tmp_path):
    server = EtcdServer(str(tmp_path / "etcd"))
    server.start()
    try:
        client = Client([server.endpoint], timeout=1.0)
        client.create(Node(metadata=Metadata(name="n1")))
        seen: list = []
        from datastore.client import WatchStream

        stream = WatchStream(client, ["Node"], retry_delay=0.1)
        t = threading.Thread(target=collect, args=(stream, seen), daemon=True)
        t.start()
        wait_for(lambda: len(seen), lambda n: n == 2, timeout=5, what="initial state")

        # Outage: restart etcd on the same port and data; the stream resumes without loss.
        server.stop()
        server.start()
        client.create(Node(metadata=Metadata(name="n2")))
        wait_for(lambda: [e.name for e in seen if e.type == "ADDED"], lambda n: "n2" in n,
                 timeout=10, what="n2 after etcd restart")

        # Compaction: stop etcd's stream from under us, change and compact, then resume.
        server.stop()
        server.start()
        raw = EtcdClient(server.endpoint)
        client.delete("Node", "n1")
        client.create(Node(metadata=Metadata(name="n3")))
        rev = raw.revision()
        raw.call("/v3/kv/compaction", {"revision": str(rev), "physical": True})
        wait_for(lambda: [(e.type, e.name) for e in seen[3:]],
                 lambda evs: ("ADDED", "n3") in evs and ("DELETED", "n1") in evs,
                 timeout=10, what="n1 deleted and n3 added across compaction")
        stream.close()
        t.join(5)
    finally:
        server.stop()


def test_unreachable_etcd_fails_fast_with_a_clear_message():
    client = Client(["http://127.0.0.1:9"], timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(errors.DatastoreUnavailable, match=r"cannot reach etcd at http://127.0.0.1:9"):
        client.list("IPPool")
    assert time.monotonic() - t0 < 3


def test_bad_endpoint_and_datastore_type_are_explained():
    with pytest.raises(errors.DatastoreError, match="invalid etcd endpoint 'https://x:1'"):
        Client(["https://x:1"])
    with pytest.raises(errors.DatastoreError, match="DATASTORE_TYPE='consul' is not a Calico datastore type"):
        Client.from_env({"DATASTORE_TYPE": "consul"})
    # the Kubernetes datastore without a way to reach the API is explained, not guessed
    with pytest.raises(errors.DatastoreError, match="needs the Kubernetes API: set KUBECONFIG"):
        Client.from_env({"DATASTORE_TYPE": "kubernetes", "HOME": "/nonexistent"})


def test_ipam_kinds_through_the_client(ds_client: Client):
    aff = BlockAffinity(spec=BlockAffinity.Spec(state="pending", node="n1", cidr="192.168.5.0/26"))
    ds_client.create(aff)
    got = ds_client.list("BlockAffinity")
    assert [(a.spec.node, a.spec.cidr, a.spec.state) for a in got] == [("n1", "192.168.5.0/26", "pending")]
    got[0].spec.state = "confirmed"
    ds_client.update(got[0])
    assert ds_client.get("BlockAffinity", "n1-192-168-5-0-26").spec.state == "confirmed"


def test_watch_started_while_etcd_is_down_waits_for_it(tmp_path):
    server = EtcdServer(str(tmp_path / "etcd"))
    server.start()
    server.stop()
    try:
        client = Client([server.endpoint], timeout=0.5)
        seen: list = []
        from datastore.client import WatchStream

        stream = WatchStream(client, ["Node"], retry_delay=0.05)
        t = threading.Thread(target=collect, args=(stream, seen), daemon=True)
        t.start()
        server.start()  # the stream's first list failed (refused); it must retry, not die
        client.create(Node(metadata=Metadata(name="late")))
        wait_for(lambda: [(e.type, e.name) for e in seen],
                 lambda evs: ("SYNCED", "") in evs and ("ADDED", "late") in evs,
                 timeout=15, what="state once etcd came up")
        stream.close()
        t.join(5)
        assert not t.is_alive()
    finally:
        server.stop()
