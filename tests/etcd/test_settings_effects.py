"""The effect of settings the inventory lists as implemented, against the session etcd:
ClusterInformation and the default pool from calico-node's environment, IPAMConfig
autoAllocateBlocks, and resource metadata as calicoctl stores and shows it."""

from __future__ import annotations

import pytest
import yaml

from agent.startup import CALICO_VERSION, ensure_cluster_information, ensure_default_pool
from datastore.resources import IPPool, Metadata
from ipam import IPAM
from ipam.block import IPAMConfigRules
from tests.etcd.test_calicoctl_cli import ctl

pytestmark = pytest.mark.etcd


def test_cluster_information_written_at_start_up(ds_client):
    ensure_cluster_information(ds_client, {"CLUSTER_TYPE": "k8s,bgp,kubeadm"})
    ci = ds_client.get("ClusterInformation", "default")
    assert ci.spec.cluster_type == "k8s,bgp,kubeadm" and ci.spec.calico_version == CALICO_VERSION
    assert ci.spec.datastore_ready is True and len(ci.spec.cluster_guid) == 32


def test_no_default_pools(ds_client):
    assert ensure_default_pool(ds_client, {"NO_DEFAULT_POOLS": "true"}) is False
    assert ds_client.list("IPPool") == []
    assert ensure_default_pool(ds_client, {"CALICO_IPV4POOL_CIDR": "10.230.0.0/16"}) is True
    assert [p.spec.cidr for p in ds_client.list("IPPool")] == ["10.230.0.0/16"]


def test_bad_block_size_stops_start_up_with_calicos_line_and_writes_nothing(ds_client, tmp_path):
    """CALICO_IPV4POOL_BLOCK_SIZE=99 (issue 15's bad manifest): calico-node stops with Calico's
    log line (startup.go validateBlockSize) before it writes anything: no Node, no IPPool."""
    from agent.startup import StartupError, run_startup

    env = {"NODENAME": "bs-node", "IP": "172.30.9.9/24", "CALICO_IPV4POOL_BLOCK_SIZE": "99"}
    with pytest.raises(StartupError, match="Invalid blocksize 99 for version 4"):
        run_startup(ds_client, env, var_lib=str(tmp_path), interfaces=[("eth0", ["172.30.9.9/24"])])
    assert ds_client.list("IPPool") == [] and ds_client.list("Node") == []
    assert not (tmp_path / "nodename").exists()


def test_auto_allocate_blocks_false_claims_no_block(ds_client):
    from ipam.ipam import PoolsExhausted

    ds_client.create(IPPool(metadata=Metadata(name="p"), spec=IPPool.Spec(cidr="10.231.0.0/24", block_size=28)))
    ipam = IPAM(ds_client)
    ipam.set_config(IPAMConfigRules(strict_affinity=True, auto_allocate_blocks=False))
    with pytest.raises(PoolsExhausted):
        ipam.auto_assign(1, "h1", {}, "n1")
    assert ds_client.list("IPAMBlock") == [] and ds_client.list("BlockAffinity") == []
    ipam.set_config(IPAMConfigRules(strict_affinity=True, auto_allocate_blocks=True))
    assert ipam.auto_assign(1, "h1", {}, "n1")
    assert len(ds_client.list("IPAMBlock")) == 1


def test_metadata_is_stored_and_shown(etcd_endpoints):
    doc = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
           "metadata": {"name": "meta", "labels": {"team": "net"}, "annotations": {"owner": "alice"}},
           "spec": {"cidr": "10.232.0.0/16"}}
    assert ctl(etcd_endpoints, "apply", "-f", "-", stdin=yaml.safe_dump(doc)).returncode == 0
    got = yaml.safe_load(ctl(etcd_endpoints, "get", "ippool", "meta", "-o", "yaml").stdout)
    assert got["metadata"]["labels"] == {"team": "net"} and got["metadata"]["annotations"] == {"owner": "alice"}
    assert got["metadata"]["uid"] and got["metadata"]["creationTimestamp"] and got["metadata"]["resourceVersion"]
