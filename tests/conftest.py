"""Fixtures shared by every tier of calicolab's tests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.support import require_root, unique


@pytest.fixture
def netns() -> Iterator:
    """Factory for named network namespaces, all removed at teardown (on failure too).

    ``name = netns("pfx")`` creates ``pfx<6 hex>`` with lo up and returns its name.
    """
    require_root()
    made: list[str] = []

    def make(prefix: str = "tns") -> str:
        name = unique(prefix)
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    yield make
    for name in reversed(made):
        subprocess.run(["ip", "netns", "pids", name], capture_output=True)
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            subprocess.run(["kill", "-9", pid], capture_output=True)
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory):
    """One real etcd for the whole session, on a free loopback port."""
    from tests.support import EtcdServer

    server = EtcdServer(str(tmp_path_factory.mktemp("etcd") / "data"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def etcd_endpoints(etcd_server) -> list[str]:
    """Endpoints of the session etcd, with the keyspace emptied before the test."""
    from datastore.etcd import EtcdClient

    if etcd_server.proc is None or etcd_server.proc.poll() is not None:
        etcd_server.start()
    EtcdClient(etcd_server.endpoint).delete_prefix("/")
    return [etcd_server.endpoint]


@pytest.fixture
def ds_client(etcd_endpoints):
    """A datastore Client on the (emptied) session etcd."""
    from datastore import Client

    return Client(etcd_endpoints)
