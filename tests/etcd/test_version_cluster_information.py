"""One Calico version, v3.28.1: calico-node's ClusterInformation and `calicoctl version`
against a real etcd."""

from __future__ import annotations

import re

import pytest

from agent.startup import cluster_type, ensure_cluster_information
from datastore.resources import ClusterInformation, Metadata
from datastore.version import CALICO_VERSION, GIT_REVISION
from tests.etcd.test_calicoctl_cli import ctl

pytestmark = pytest.mark.etcd


def test_the_version_is_v3_28_1():
    assert CALICO_VERSION == "v3.28.1"


def test_calico_node_creates_cluster_information(ds_client):
    ensure_cluster_information(ds_client, {"CLUSTER_TYPE": "k8s,bgp", "DATASTORE_TYPE": "etcdv3"})
    ci = ds_client.get("ClusterInformation", "default")
    assert ci.spec.calico_version == "v3.28.1"
    assert ci.spec.cluster_type == "k8s,bgp"
    assert ci.spec.datastore_ready is True
    assert re.fullmatch(r"[0-9a-f]{32}", ci.spec.cluster_guid)


def test_calico_node_updates_an_existing_one_as_ensure_initialized_does(ds_client):
    old = ClusterInformation(metadata=Metadata(name="default"))
    old.spec.calico_version, old.spec.cluster_type = "v3.26.1", "k8s,typha"
    old.spec.cluster_guid, old.spec.datastore_ready = "ab" * 16, False
    ds_client.create(old)
    ensure_cluster_information(ds_client, {"CLUSTER_TYPE": "k8s,bgp"})
    ci = ds_client.get("ClusterInformation", "default")
    assert ci.spec.calico_version == "v3.28.1"        # the version is always ours
    assert ci.spec.cluster_type == "k8s,typha,bgp"     # our types appended, none dropped
    assert ci.spec.cluster_guid == "ab" * 16           # the GUID is kept
    assert ci.spec.datastore_ready is False            # an explicit false is kept


def test_cluster_type_appends_kdd_last_for_the_kubernetes_datastore():
    assert cluster_type({"CLUSTER_TYPE": "k8s,bgp", "DATASTORE_TYPE": "kubernetes"}) == "k8s,bgp,kdd"
    assert cluster_type({"CLUSTER_TYPE": "k8s,bgp,", "DATASTORE_TYPE": "kubernetes"}) == "k8s,bgp,kdd"
    assert cluster_type({"DATASTORE_TYPE": "kubernetes"}) == "kdd"
    assert cluster_type({"CLUSTER_TYPE": "k8s,bgp", "DATASTORE_TYPE": "etcdv3"}) == "k8s,bgp"
    assert cluster_type({"ETCD_ENDPOINTS": "http://127.0.0.1:2379"}) == ""
    assert cluster_type({}) == "kdd"  # no DATASTORE_TYPE and no etcd: the Kubernetes datastore
    # kube-system/kubeadm-config found: ",kubeadm" before ",kdd" (the walkthrough's cluster)
    assert cluster_type({"CLUSTER_TYPE": "k8s,bgp", "DATASTORE_TYPE": "kubernetes"}, kubeadm=True) == \
        "k8s,bgp,kubeadm,kdd"
    assert cluster_type({"DATASTORE_TYPE": "etcdv3"}, kubeadm=True) == "kubeadm"


def test_calicoctl_version_prints_client_and_cluster(ds_client, etcd_endpoints):
    ensure_cluster_information(ds_client, {"CLUSTER_TYPE": "k8s,bgp"})
    res = ctl(etcd_endpoints, "version", proc=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "Client Version:    v3.28.1",
        f"Git commit:        {GIT_REVISION}",
        "Cluster Version:   v3.28.1",
        "Cluster Type:      k8s,bgp",
    ]


def test_calicoctl_version_says_unknown_for_empty_fields(ds_client, etcd_endpoints):
    ds_client.create(ClusterInformation(metadata=Metadata(name="default")))
    res = ctl(etcd_endpoints, "version")
    assert res.stdout.splitlines()[2:] == ["Cluster Version:   unknown", "Cluster Type:      unknown"]


def test_calicoctl_version_without_cluster_information_fails_after_the_client_lines(etcd_endpoints):
    res = ctl(etcd_endpoints, "version", proc=True)
    assert res.returncode == 1
    assert res.stdout.splitlines() == ["Client Version:    v3.28.1", f"Git commit:        {GIT_REVISION}"]
    assert res.stderr.startswith("Unable to retrieve Cluster Version or Type: ")


def test_calicoctl_version_polls(ds_client, etcd_endpoints):
    """--poll re-reads the cluster lines and prints them again only when they change."""
    import io

    from testbed.calicoctl import version

    ensure_cluster_information(ds_client, {"CLUSTER_TYPE": "k8s,bgp"})
    rounds = []

    def sleep(seconds: float) -> None:
        rounds.append(seconds)
        if len(rounds) == 1:
            ci = ds_client.get("ClusterInformation", "default")
            ci.spec.cluster_type = "k8s,bgp,kubeadm"
            ds_client.update(ci)
        elif len(rounds) == 3:
            raise KeyboardInterrupt

    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        version.run(lambda: ds_client, "1m30s", out, err, sleep=sleep)
    assert rounds == [90.0, 90.0, 90.0]
    assert out.getvalue().splitlines()[2:] == [
        "Cluster Version:   v3.28.1", "Cluster Type:      k8s,bgp", "Cluster Type:      k8s,bgp,kubeadm"]
    assert ctl(etcd_endpoints, "version", "--poll", "soon").stderr == "Invalid poll duration specified: 0s\n"
