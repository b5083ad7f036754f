"""The csi.tigera.io node service (agent.csi.node) with a recording mounter, the kubelet's
CSI request building (testbed.k8s.csivolumes) and Felix's policy-sync pieces
(agent.felix.policysync), as pure logic."""

from __future__ import annotations

import json
import os

import pytest

from agent.csi.node import Config, CsiError, NodeService
from agent.felix.model import Endpoint
from agent.felix.policysync import PolicySync, endpoint_update, read_creds
from testbed.k8s.csivolumes import (
    CsiVolumeError,
    csinode_spec,
    publish_request,
    target_path,
    volume_handle,
)

pytestmark = pytest.mark.unit

POD_INFO = {"csi.storage.k8s.io/pod.name": "web", "csi.storage.k8s.io/pod.namespace": "default",
            "csi.storage.k8s.io/pod.uid": "u-1", "csi.storage.k8s.io/serviceAccount.name": "sa"}


class FakeMounter:
    """Records mount operations; ``fail`` names an operation that raises."""

    def __init__(self, fail: str = ""):
        self.mounts: dict[str, str] = {}
        self.ops: list[tuple] = []
        self.fail = fail

    def mount_tmpfs(self, target, size):
        self.ops.append(("tmpfs", target, size))
        if self.fail == "tmpfs":
            raise OSError(1, "mount tmpfs: denied")
        self.mounts[target] = "tmpfs"

    def bind(self, source, target):
        self.ops.append(("bind", source, target))
        if self.fail == "bind":
            raise OSError(1, "bind: denied")
        self.mounts[target] = source

    def unmount(self, target):
        self.ops.append(("umount", target))
        if target not in self.mounts:
            raise OSError(22, f"umount {target}: not mounted")
        del self.mounts[target]

    def is_mount(self, path):
        return path in self.mounts


@pytest.fixture
def svc(tmp_path):
    return NodeService(Config(home=str(tmp_path / "na"), node_id="k8s-w0"), FakeMounter())


def test_identity_and_node_info(svc):
    assert svc.get_plugin_info({}) == {"name": "csi.tigera.io", "vendor_version": "0.1"}
    assert svc.get_plugin_capabilities({}) == {} and svc.probe({}) == {}
    assert svc.node_get_info({}) == {"node_id": "k8s-w0"}
    assert svc.node_get_capabilities({}) == {}


def test_publish_makes_the_workload_dir_tmpfs_bind_and_creds(svc, tmp_path):
    target = str(tmp_path / "pods/u-1/volumes/kubernetes.io~csi/felix/mount")
    assert svc.node_publish_volume({"volume_id": "csi-abc", "target_path": target, "volume_context": POD_INFO}) == {}
    work = str(tmp_path / "na/mount/csi-abc")
    assert os.path.isdir(work) and os.path.isdir(os.path.join(target, "nodeagent"))
    assert svc.mounter.ops == [("tmpfs", target, "8K"), ("bind", work, os.path.join(target, "nodeagent"))]
    creds = json.loads((tmp_path / "na/creds/csi-abc.json").read_text())
    assert creds == {"UID": "u-1", "Workload": "web", "Namespace": "default", "ServiceAccount": "sa"}
    assert not (tmp_path / "na/csi-abc.json").exists()  # written beside, renamed in
    # again at the same target: nothing stacked (idempotent)
    svc.node_publish_volume({"volume_id": "csi-abc", "target_path": target, "volume_context": POD_INFO})
    assert len(svc.mounter.ops) == 2
    # unpublish undoes all of it
    assert svc.node_unpublish_volume({"volume_id": "csi-abc", "target_path": target}) == {}
    assert svc.mounter.mounts == {} and not os.path.exists(work)
    assert not (tmp_path / "na/creds/csi-abc.json").exists()


def test_bad_requests_name_what_is_wrong(svc, tmp_path):
    with pytest.raises(CsiError, match="Volume ID not provided") as e:
        svc.node_publish_volume({"target_path": "/t"})
    assert e.value.code == "INVALID_ARGUMENT"
    with pytest.raises(CsiError, match="Target path not provided"):
        svc.node_publish_volume({"volume_id": "v"})
    with pytest.raises(CsiError, match="not a valid file name"):
        svc.node_publish_volume({"volume_id": "../x", "target_path": "/t", "volume_context": POD_INFO})
    with pytest.raises(CsiError, match="pod.uid.*podInfoOnMount") as e:
        svc.node_publish_volume({"volume_id": "v", "target_path": str(tmp_path / "t"),
                                 "volume_context": {k: v for k, v in POD_INFO.items() if "uid" not in k}})
    assert e.value.code == "INTERNAL" and svc.mounter.ops == []
    with pytest.raises(CsiError, match="Unable to retrieve pod info"):  # never published: as Calico's
        svc.node_unpublish_volume({"volume_id": "v", "target_path": "/t"})


def test_a_failed_bind_leaves_nothing(tmp_path):
    svc = NodeService(Config(home=str(tmp_path / "na")), FakeMounter(fail="bind"))
    target = str(tmp_path / "t")
    with pytest.raises(CsiError, match="Could not bind mount"):
        svc.node_publish_volume({"volume_id": "v", "target_path": target, "volume_context": POD_INFO})
    assert svc.mounter.mounts == {} and not os.path.exists(tmp_path / "na/mount/v")
    assert not os.path.exists(tmp_path / "na/creds/v.json")


POD = {"metadata": {"name": "web", "namespace": "default", "uid": "u-1"},
       "spec": {"serviceAccountName": "sa", "volumes": [
           {"name": "felix", "csi": {"driver": "csi.tigera.io", "volumeAttributes": {"x": "y"}}}]}}
DRIVER = {"spec": {"podInfoOnMount": True, "volumeLifecycleModes": ["Ephemeral"]}}


def test_kubelet_publish_request():
    vol = POD["spec"]["volumes"][0]
    req = publish_request(POD, vol, DRIVER, "/var/lib/kubelet/pods/u-1")
    assert req["volume_id"] == volume_handle("u-1", "felix") and req["volume_id"].startswith("csi-")
    assert len(req["volume_id"]) == 4 + 64
    assert req["target_path"] == "/var/lib/kubelet/pods/u-1/volumes/kubernetes.io~csi/felix/mount" == \
        target_path("/var/lib/kubelet/pods/u-1", "felix")
    assert req["volume_context"] == {"x": "y", **POD_INFO, "csi.storage.k8s.io/ephemeral": "true"}
    assert req["volume_capability"] == {"mount": {"fs_type": ""}, "access_mode": {"mode": 1}}
    assert req["readonly"] is False
    # no podInfoOnMount: no pod info
    req = publish_request(POD, vol, {"spec": {"volumeLifecycleModes": ["Ephemeral"]}}, "/p")
    assert "csi.storage.k8s.io/pod.uid" not in req["volume_context"]


def test_kubelet_refuses_what_it_cannot_publish():
    vol = POD["spec"]["volumes"][0]
    with pytest.raises(CsiVolumeError, match="CSIDriver csi.tigera.io not found"):
        publish_request(POD, vol, None, "/p")
    with pytest.raises(CsiVolumeError, match=r'"Ephemeral" not supported by driver csi.tigera.io.*Persistent'):
        publish_request(POD, vol, {"spec": {}}, "/p")
    with pytest.raises(CsiVolumeError, match="nodePublishSecretRef is not supported"):
        publish_request(POD, {"name": "v", "csi": {"driver": "d", "nodePublishSecretRef": {"name": "s"}}}, DRIVER, "/p")
    with pytest.raises(CsiVolumeError, match="csi.driver is required"):
        publish_request(POD, {"name": "v", "csi": {}}, DRIVER, "/p")


def test_csinode_spec_lists_drivers_in_order():
    assert csinode_spec({"b": "n2", "a": "n1"}) == {"drivers": [
        {"name": "a", "nodeID": "n1", "topologyKeys": None}, {"name": "b", "nodeID": "n2", "topologyKeys": None}]}
    assert csinode_spec({}) == {"drivers": []}


def test_policysync_endpoint_update_and_creds(tmp_path):
    ep = Endpoint(key="default/k8s-web-eth0", iface="cali123", ips=("192.168.1.5/32",), profiles=("kns.default",),
                  workload="default/web", mac="ee:ee:ee:ee:ee:ee")
    upd = endpoint_update(ep, ["default/default.allow-web"], [])
    assert upd == {"id": {"orchestrator_id": "k8s", "workload_id": "default/web", "endpoint_id": "eth0"},
                   "endpoint": {"state": "active", "name": "cali123", "mac": "ee:ee:ee:ee:ee:ee",
                                "profile_ids": ["kns.default"], "ipv4_nets": ["192.168.1.5/32"], "ipv6_nets": [],
                                "tiers": [{"name": "default", "ingress_policies": ["default/default.allow-web"],
                                           "egress_policies": []}],
                                "allow_spoofed_source_prefixes": []}}
    assert endpoint_update(ep, [], [])["endpoint"]["tiers"] == []
    f = tmp_path / "c.json"
    f.write_text('{"uid": "u", "workload": "web", "NAMESPACE": "default", "ServiceAccount": "sa"}')
    assert read_creds(str(f)) == {"UID": "u", "Workload": "web", "Namespace": "default", "ServiceAccount": "sa"}
    f.write_text('{"UID": "u"}')
    with pytest.raises(ValueError, match="no Workload"):
        read_creds(str(f))


def test_policysync_stream_sends_the_endpoint_then_in_sync_then_changes():
    ps = PolicySync(serve=lambda sock, handler: None)
    ps.prefix = "/x"  # as configure() sets it, without the binder thread
    ep = Endpoint(key="k", iface="cali1", ips=("10.0.0.1/32",), workload="default/web")
    ps.update({"default/web": endpoint_update(ep, [], [])})
    stream = ps.sync("default/web")
    assert next(stream)["workload_endpoint_update"]["endpoint"]["name"] == "cali1"
    assert next(stream) == {"in_sync": {}}
    ep2 = Endpoint(key="k", iface="cali1", ips=("10.0.0.2/32",), workload="default/web")
    ps.update({"default/web": endpoint_update(ep2, [], [])})
    assert next(stream)["workload_endpoint_update"]["endpoint"]["ipv4_nets"] == ["10.0.0.2/32"]
    ps.update({})
    assert next(stream) == {"workload_endpoint_remove": {"id": {"orchestrator_id": "k8s", "workload_id": "default/web",
                                                                "endpoint_id": "eth0"}}}
    # a workload with no endpoint (yet): in-sync alone
    other = ps.sync("default/none")
    assert next(other) == {"in_sync": {}}
    stream.close()
    other.close()
    assert ps.streams == 0


def test_felix_settings_policy_sync_path_prefix():
    """FelixConfiguration ``policySyncPathPrefix`` (default "" : off), overridden by
    FELIX_POLICYSYNCPATHPREFIX, reaches Felix's settings; Felix's policy-sync API follows it
    (started, moved, stopped)."""
    from agent.felix.convert import settings
    from datastore.resources import FelixConfiguration

    cfg = FelixConfiguration.from_dict({"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
                                        "metadata": {"name": "default"},
                                        "spec": {"policySyncPathPrefix": "/var/run/nodeagent"}})
    assert settings("w0", {}, {}).policy_sync_path_prefix == ""
    assert settings("w0", {"default": cfg}, {}).policy_sync_path_prefix == "/var/run/nodeagent"
    assert settings("w0", {"default": cfg}, {"FELIX_POLICYSYNCPATHPREFIX": "/x"}).policy_sync_path_prefix == "/x"
    started = []
    ps = PolicySync(serve=lambda sock, handler: started.append(sock))
    ps.configure("")
    assert not ps.active and ps._thread is None
    ps.configure("/nonexistent-prefix")
    assert ps.active and ps._thread is not None and ps._thread.is_alive()
    ps.configure("")
    assert not ps.active and ps._thread is None
