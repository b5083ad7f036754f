"""Typha against a real etcd: one watch fanned out over real TCP to many clients."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from agent.typha.server import TyphaServer
from datastore import Client
from datastore.resources import IPPool, Metadata, Node, NodeBGPSpec
from datastore.typha import TyphaClient, encode, read_msg, typha_from_env
from testbed.poll import wait_for

pytestmark = pytest.mark.etcd


def add_node(client: Client, name: str, ip: str) -> None:
    client.create(Node(metadata=Metadata(name=name), spec=Node.Spec(bgp=NodeBGPSpec(ipv4_address=ip))))


class Collector:
    """A TyphaWatchStream consumed in a thread; keeps every event and the live state."""

    def __init__(self, tc: TyphaClient, kinds: list[str]):
        self.stream = tc.stream(kinds)
        self.events: list = []
        self.state: dict[str, object] = {}
        self.synced = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for ev in self.stream:
            self.events.append(ev)
            if ev.type == "SYNCED":
                self.synced += 1
            elif ev.type == "DELETED":
                self.state.pop(f"{ev.kind}/{ev.name}", None)
            else:
                self.state[f"{ev.kind}/{ev.name}"] = ev.obj

    def close(self) -> None:
        self.stream.close()
        self.thread.join(5)


def cached(server: TyphaServer, n: int) -> None:
    """Wait until Typha's cache holds ``n`` keys (its watch is asynchronous)."""
    wait_for(lambda: server.status()["cache"], lambda c: c == n, what=f"{n} keys in Typha's cache")


@pytest.fixture
def server(ds_client: Client):
    srv = TyphaServer(ds_client, "127.0.0.1", 0, ping_interval=0.2, pong_timeout=1.0)
    srv.start()
    yield srv
    srv.stop()


def test_many_clients_get_the_same_snapshot_and_deltas(ds_client, server):
    ds_client.create(IPPool(metadata=Metadata(name="p"), spec=IPPool.Spec(cidr="192.168.0.0/16", block_size=24)))
    add_node(ds_client, "n1", "172.30.0.11/24")
    cached(server, 2)
    addr = f"127.0.0.1:{server.port}"
    felix = [Collector(TyphaClient(addr, hostname=f"h{i}"), ["WorkloadEndpoint", "Node", "IPPool",
                                                             "FelixConfiguration"]) for i in range(6)]
    bgp = Collector(TyphaClient(addr, hostname="bgp"), ["Node", "BGPPeer", "IPPool", "IPAMBlock"])
    cols = felix + [bgp]
    try:
        wait_for(lambda: [c.synced for c in cols], lambda v: all(v), what="every client in sync")
        for c in cols:
            assert sorted(c.state) == ["IPPool/p", "Node/n1"]
            assert [e.type for e in c.events] == ["ADDED", "ADDED", "SYNCED"]
        add_node(ds_client, "n2", "172.30.0.12/24")
        ds_client.delete("Node", "n1")
        wait_for(lambda: [sorted(c.state) for c in cols],
                 lambda v: all(s == ["IPPool/p", "Node/n2"] for s in v), what="deltas everywhere")
        tails = {tuple((e.type, e.name) for e in c.events[3:]) for c in cols}
        assert tails == {(("ADDED", "n2"), ("DELETED", "n1"))}
        assert felix[0].state["Node/n2"].spec.bgp.ipv4_address == "172.30.0.12/24"
        assert sorted(server.status()["clients"]) == sorted([f"h{i}/felix" for i in range(6)] + ["bgp/bgp"])
    finally:
        for c in cols:
            c.close()


def test_a_burst_of_clients_is_served_by_one_loop_not_a_thread_each(ds_client, server):
    """Every calico-node of a cluster connects when Typha turns ready. 300 clients that connect
    at once all get the hello, the snapshot and in-sync, and the server's threads stay the
    same few (its watch and its event loop) however many clients it serves: a thread per
    client made each new connection wait for its thread's first turn on the GIL."""
    add_node(ds_client, "n1", "172.30.0.11/24")
    cached(server, 1)

    def typha_threads() -> list[str]:
        return sorted(t.name for t in threading.enumerate() if t.name.startswith("typha"))

    before = typha_threads()
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(300)]
    try:
        for i, s in enumerate(socks):
            s.sendall(encode({"type": "MsgClientHello", "Hostname": f"h{i}", "SyncerType": "bgp"}))
        for s in socks:
            types = [read_msg(s)["type"] for _ in range(3)]
            assert types == ["MsgServerHello", "MsgKVs", "MsgSyncStatus"], types
        assert server.status()["connections"] == 300
        assert typha_threads() == before == ["typha-serve", "typha-watch"]
    finally:
        for s in socks:
            s.close()
    wait_for(lambda: server.status()["clients"], lambda c: c == [], what="every client gone")


def test_client_that_returns_resyncs_only_the_difference(ds_client, server):
    add_node(ds_client, "keep", "172.30.0.11/24")
    add_node(ds_client, "drop", "172.30.0.12/24")
    cached(server, 2)
    tc = TyphaClient(f"127.0.0.1:{server.port}", hostname="w0", retry_delay=0.1)
    col = Collector(tc, ["Node"])
    try:
        wait_for(lambda: col.synced, what="first sync")
        port = server.port
        server.stop()  # Typha goes away ...
        ds_client.delete("Node", "drop")
        add_node(ds_client, "new", "172.30.0.13/24")
        srv2 = TyphaServer(ds_client, "127.0.0.1", port, ping_interval=0.2)
        srv2.start()  # ... and comes back with a new cache
        try:
            wait_for(lambda: col.synced, lambda n: n == 2, what="resync after reconnect", timeout=10)
            assert tc.connects == 2
            after = [(e.type, e.name) for e in col.events[3:]]
            assert sorted(after[:-1]) == [("ADDED", "new"), ("DELETED", "drop")]  # no re-ADD of "keep"
            assert after[-1][0] == "SYNCED"
            assert sorted(col.state) == ["Node/keep", "Node/new"]
        finally:
            col.close()
            srv2.stop()
    finally:
        col.close()


def _raw(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    return s


def _closed(s: socket.socket) -> bool:
    try:
        while True:
            if s.recv(65536) == b"":
                return True
    except (ConnectionResetError, TimeoutError):
        return True


def test_server_survives_garbage_and_drops_silent_clients(ds_client, server):
    add_node(ds_client, "n1", "172.30.0.11/24")
    cached(server, 1)
    junk = _raw(server.port)
    junk.sendall(struct.pack(">I", 5) + b"hello")
    huge = _raw(server.port)
    huge.sendall(struct.pack(">I", 1 << 31))
    bad_syncer = _raw(server.port)
    bad_syncer.sendall(encode({"type": "MsgClientHello", "Hostname": "x", "SyncerType": "evil"}))
    silent = _raw(server.port)  # says hello, never answers pings
    silent.sendall(encode({"type": "MsgClientHello", "Hostname": "silent", "SyncerType": "felix"}))
    assert read_msg(silent)["type"] == "MsgServerHello"
    with junk, huge, bad_syncer, silent:
        for s in (junk, huge, bad_syncer):
            assert _closed(s)
        silent.settimeout(5)
        types = []
        try:
            while True:
                types.append(read_msg(silent)["type"])
        except (EOFError, ConnectionResetError):
            pass
        assert types[:2] == ["MsgKVs", "MsgSyncStatus"] and "MsgPing" in types
    assert server.status()["rejected"] == 3 and server.status()["dropped"] == 1
    # a good client still works, and stays connected across many pings because it pongs
    col = Collector(TyphaClient(f"127.0.0.1:{server.port}"), ["Node"])
    try:
        wait_for(lambda: col.synced, what="sync after garbage")
        add_node(ds_client, "n2", "172.30.0.12/24")
        wait_for(lambda: sorted(col.state), lambda v: v == ["Node/n1", "Node/n2"], what="delta")
        pings = server.status()["messages"]
        wait_for(lambda: server.status()["messages"], lambda m: m >= pings + 8, what="pings", timeout=5)
        assert col.stream.client.connects == 1
    finally:
        col.close()


def test_client_watch_goes_through_typha_found_by_service(ds_client, server, etcd_endpoints, fresh_apiserver):
    """FELIX_TYPHAK8SSERVICENAME: Typha found through the Service's Endpoints, read through
    the API server (never from its etcd keys)."""
    add_node(ds_client, "n1", "172.30.0.11/24")
    cached(server, 1)
    env = {"FELIX_TYPHAK8SSERVICENAME": "calico-typha"}
    kube = fresh_apiserver.client()
    with pytest.raises(ValueError, match="needs the Kubernetes API"):
        typha_from_env(env, None, hostname="w0")
    via = Client(etcd_endpoints)
    via.typha = typha_from_env(env, kube, hostname="w0")
    stream = iter(via.watch(["Node"]))
    got: list = []
    t = threading.Thread(target=lambda: got.extend([next(stream), next(stream)]), daemon=True)
    t.start()
    wait_for(lambda: via.typha.connects, lambda n: n == 0, what="no Typha before its Endpoints")
    kube.create({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "calico-typha", "namespace": "kube-system"},
        "subsets": [{"addresses": [{"ip": "127.0.0.1"}],
                     "ports": [{"name": "calico-typha", "port": server.port, "protocol": "TCP"}]}]}, "kube-system")
    t.join(10)
    assert [(e.type, e.name) for e in got] == [("ADDED", "n1"), ("SYNCED", "")]
    assert via.typha.connects == 1 and "w0/felix" in server.status()["clients"]
    via.typha.close()  # discovery's Endpoints watch ends


def test_client_counts_are_exported_as_calicos_typha_metrics(ds_client, server):
    """How many Felix and confd clients a Typha serves is read from its Prometheus endpoint
    under Calico's metric names; a client in the handshake is active, not streaming."""
    import urllib.request

    from agent.typha.server import MetricsServer

    add_node(ds_client, "n1", "172.30.0.11/24")
    cached(server, 1)
    metrics = MetricsServer(server, "127.0.0.1", 0)
    metrics.start()

    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics", timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/plain")
            text = r.read().decode()
        return {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1])
                for ln in text.splitlines() if ln and not ln.startswith("#")}

    addr = f"127.0.0.1:{server.port}"
    cols = [Collector(TyphaClient(addr, hostname=f"h{i}"), ["Node", "IPPool"]) for i in range(3)]
    cols.append(Collector(TyphaClient(addr, hostname="bgp"), ["Node", "BGPPeer", "BlockAffinity"]))
    silent = socket.create_connection(("127.0.0.1", server.port))  # no hello yet
    try:
        m = wait_for(scrape, lambda m: m['typha_connections_streaming{syncer="felix"}'] == 3
                     and m['typha_connections_streaming{syncer="bgp"}'] == 1 and m["typha_connections_active"] == 5,
                     what="3 felix + 1 bgp streaming, 5 open")
        assert m["typha_connections_accepted"] == 5 and m['typha_cache_size{syncer="felix"}'] == 1, m
        silent.close()
        cols.pop().close()
        m = wait_for(scrape, lambda m: m["typha_connections_active"] == 3, what="3 open after two closed")
        assert m['typha_connections_streaming{syncer="bgp"}'] == 0, m
    finally:
        silent.close()
        for c in cols:
            c.close()
        metrics.stop()
