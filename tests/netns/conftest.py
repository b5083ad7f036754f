"""Fixtures of the netns tier's Kubernetes-side tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def node_cluster(netns, etcd_endpoints, tmp_path, tmp_path_factory) -> Iterator:
    """``node_cluster(prefix, node_ip, controllers=False, proxy=False)`` -> a
    :class:`tests.netns.kubelet_support.NodeCluster` in a new netns (API server on the
    session etcd); stopped at teardown."""
    from tests.netns.kubelet_support import NodeCluster

    made: list = []

    def make(prefix: str, node_ip: str, **kwargs) -> NodeCluster:
        ns = netns(prefix)
        c = NodeCluster(ns, node_ip, etcd_endpoints[0], str(tmp_path), str(tmp_path_factory.getbasetemp()),
                        **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()
