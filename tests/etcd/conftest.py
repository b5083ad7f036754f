"""Fixtures of the etcd tier that run calicolab's API server."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def apiserver(etcd_server, tmp_path_factory):
    """The API server (fresh PKI) on the session etcd, emptied first; one per test module."""
    from datastore.etcd import EtcdClient
    from tests.apiserver_support import APIServerProcess

    if etcd_server.proc is None or etcd_server.proc.poll() is not None:
        etcd_server.start()
    EtcdClient(etcd_server.endpoint).delete_prefix("/")
    server = APIServerProcess(tmp_path_factory.mktemp("apiserver"), etcd_server.endpoint)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fresh_apiserver(etcd_endpoints, tmp_path_factory):
    """An API server on the session etcd emptied for this test (the PKI is made once per
    session): the Kubernetes objects a test writes go through it, as every component's do."""
    from tests.apiserver_support import APIServerProcess

    base = tmp_path_factory.getbasetemp() / "fresh-apiserver"
    base.mkdir(exist_ok=True)
    server = APIServerProcess(base, etcd_endpoints[0])
    server.start()
    yield server
    server.stop()
