"""The kubelet's CSI volume plugin: registered CSI drivers, the node's CSINode, and the
inline ephemeral volumes (``volumes: [{name, csi: {driver, ...}}]``) of its pods.

A driver registers through the plugin watcher (:mod:`testbed.k8s.pluginwatcher`): the
kubelet asks it ``NodeGetInfo`` and lists it in ``storage.k8s.io/v1`` CSINode ``<node>``
(``spec.drivers[{name, nodeID}]``, owned by the Node). For a pod with a CSI volume the kubelet
calls ``NodePublishVolume`` before the pod's containers start, as the real kubelet's
csi plugin does for an ephemeral volume:

* volume ID ``csi-<sha256(podUID + volume name)>`` (the kubelet's makeVolumeHandle);
* target ``<root-dir>/pods/<uid>/volumes/kubernetes.io~csi/<volume name>/mount``;
* capability ``mount`` (``fsType`` if given), access mode SINGLE_NODE_WRITER; ``readonly``
  from the volume's ``readOnly``;
* volume context: the volume's ``volumeAttributes``, ``csi.storage.k8s.io/ephemeral: "true"``
  and, when the driver's CSIDriver says ``podInfoOnMount: true``, the pod's name, namespace,
  UID and ServiceAccount (``csi.storage.k8s.io/pod.name`` ...).

The driver must have a CSIDriver object whose ``volumeLifecycleModes`` include
``Ephemeral`` and must be registered on the node; otherwise, or when the driver refuses,
the pod does not start (event ``FailedMount``, retried with back-off). The container then
gets the target bind-mounted at its ``mountPath``. ``NodeUnpublishVolume`` is called when
the pod is torn down, after its containers stopped. Not built: persistent CSI volumes
(PersistentVolumes, attach/detach, staging), ``nodePublishSecretRef`` (refused by name).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from agent import rpc
from agent.csi import messages as m
from agent.protowire import EMPTY
from kubeclient import AlreadyExists

log = logging.getLogger("kubelet.csi")

CSI_DIR = "kubernetes.io~csi"
PUBLISH_TIMEOUT = 10.0  # seconds for a NodePublishVolume / NodeUnpublishVolume call


class CsiVolumeError(Exception):
    """A CSI volume cannot be published (the pod waits: FailedMount)."""


def volume_handle(pod_uid: str, volume: str) -> str:
    """The kubelet's ID of an inline ephemeral volume: ``csi-`` + sha256(pod UID + volume name)."""
    return "csi-" + hashlib.sha256((pod_uid + volume).encode()).hexdigest()


def target_path(pod_dir: str, volume: str) -> str:
    """Where the driver publishes the volume: ``<pod dir>/volumes/kubernetes.io~csi/<name>/mount``."""
    return os.path.join(pod_dir, "volumes", CSI_DIR, volume, "mount")


def csi_volumes(pod: dict) -> list[dict]:
    """The pod's inline CSI volumes (``{name, csi: {...}}``)."""
    return [v for v in (pod.get("spec") or {}).get("volumes") or [] if "csi" in v]


def publish_request(pod: dict, vol: dict, driver_obj: dict | None, pod_dir: str) -> dict:
    """The NodePublishVolume request for ``vol`` of ``pod`` (pure). Raises
    :class:`CsiVolumeError` for what the kubelet refuses before calling the driver."""
    src = vol.get("csi") or {}
    driver = src.get("driver", "")
    name = vol.get("name", "")
    if not driver:
        raise CsiVolumeError(f'volume "{name}": csi.driver is required')
    if src.get("nodePublishSecretRef"):
        raise CsiVolumeError(f'volume "{name}": csi.nodePublishSecretRef is not supported by calicolab\'s kubelet')
    if driver_obj is None:
        raise CsiVolumeError(f'volume "{name}": CSIDriver {driver} not found: an inline (ephemeral) CSI volume '
                             f'needs the driver\'s CSIDriver object with volumeLifecycleModes [Ephemeral]')
    spec = driver_obj.get("spec") or {}
    modes = spec.get("volumeLifecycleModes") or ["Persistent"]
    if "Ephemeral" not in modes:
        raise CsiVolumeError(f'volume mode "Ephemeral" not supported by driver {driver} (only supports {modes})')
    meta, pspec = pod["metadata"], pod.get("spec") or {}
    ctx = {str(k): str(v) for k, v in (src.get("volumeAttributes") or {}).items()}
    if spec.get("podInfoOnMount"):
        ctx.update({"csi.storage.k8s.io/pod.name": meta["name"],
                    "csi.storage.k8s.io/pod.namespace": meta["namespace"],
                    "csi.storage.k8s.io/pod.uid": meta["uid"],
                    "csi.storage.k8s.io/serviceAccount.name": pspec.get("serviceAccountName") or "default"})
    ctx["csi.storage.k8s.io/ephemeral"] = "true"
    return {"volume_id": volume_handle(meta["uid"], name), "target_path": target_path(pod_dir, name),
            "volume_capability": {"mount": {"fs_type": src.get("fsType") or ""},
                                  "access_mode": {"mode": m.SINGLE_NODE_WRITER}},
            "readonly": bool(src.get("readOnly")), "volume_context": ctx}


def csinode_spec(drivers: dict[str, str]) -> dict:
    """CSINode ``spec`` for registered drivers ``{name: nodeID}`` (pure)."""
    return {"drivers": [{"name": n, "nodeID": drivers[n], "topologyKeys": None} for n in sorted(drivers)]}


class CsiDrivers:
    """The CSI drivers registered on this node and the node's CSINode. ``cluster`` is the
    kubelet's :class:`testbed.k8s.apiclient.Cluster`."""

    def __init__(self, cluster: Any, node: str):
        self.cluster, self.node = cluster, node
        self.endpoints: dict[str, str] = {}  # driver -> its socket (the kubelet's path)
        self.node_ids: dict[str, str] = {}
        self.lock = threading.Lock()

    # --- the plugin watcher's handler ----------------------------------------------------------
    def validate(self, name: str, endpoint: str, versions: list[str]) -> str | None:
        """Why the registration is refused, or None."""
        if not name:
            return "the CSI plugin's name is empty"
        if not any(v.split(".")[0].lstrip("v") == "1" for v in versions):
            return f"none of the versions {versions} of CSI driver {name} is supported (supported: 1.x)"
        if not endpoint.startswith("/"):
            return f"CSI driver {name}: endpoint {endpoint!r} is not an absolute socket path"
        return None

    def register(self, name: str, endpoint: str) -> None:
        """Ask the driver NodeGetInfo and list it in the CSINode. Raises on failure."""
        ch = rpc.channel(endpoint)
        try:
            info = rpc.call(ch, f"/{m.NODE}/NodeGetInfo", EMPTY, m.NODE_GET_INFO_RESPONSE, timeout=PUBLISH_TIMEOUT)
        finally:
            ch.close()
        node_id = info.get("node_id") or ""
        if not node_id:
            raise CsiVolumeError(f"CSI driver {name}: NodeGetInfo returned an empty node ID")
        with self.lock:
            self.endpoints[name] = endpoint
            self.node_ids[name] = node_id
        self.sync_csinode()
        log.info("registered CSI driver %s at %s (node ID %s)", name, endpoint, node_id)

    def deregister(self, name: str) -> None:
        with self.lock:
            self.endpoints.pop(name, None)
            self.node_ids.pop(name, None)
        self.sync_csinode()
        log.info("deregistered CSI driver %s", name)

    def sync_csinode(self) -> None:
        """Write CSINode ``<node>`` with the registered drivers (created, owned by the Node)."""
        with self.lock:
            spec = csinode_spec(self.node_ids)

        def put(obj: dict) -> bool:
            if obj.get("spec") == spec:
                return False
            obj["spec"] = spec
            return True

        # the kubelet does not watch CSINodes: read the current one from the server
        cur = self.cluster.fetch("CSINode", self.node)
        if cur is not None and self.cluster.mutate("CSINode", self.node, None, put, current=cur) is not None:
            return
        node = self.cluster.get("Node", self.node) or self.cluster.fetch("Node", self.node)
        owner = [{"apiVersion": "v1", "kind": "Node", "name": self.node, "uid": node["metadata"]["uid"]}] \
            if node else []
        obj = {"apiVersion": "storage.k8s.io/v1", "kind": "CSINode",
               "metadata": {"name": self.node, **({"ownerReferences": owner} if owner else {})}, "spec": spec}
        try:
            self.cluster.create(obj)
        except AlreadyExists:  # created meanwhile: write it again
            self.cluster.mutate("CSINode", self.node, None, put, current=self.cluster.fetch("CSINode", self.node))

    # --- publishing ----------------------------------------------------------------------------
    def endpoint(self, driver: str) -> str:
        with self.lock:
            ep = self.endpoints.get(driver)
        if ep is None:
            raise CsiVolumeError(f"kubernetes.io/csi: mounter.SetUpAt failed to get CSI client: driver name "
                                 f"{driver} not found in the list of registered CSI drivers")
        return ep

    def publish(self, pod: dict, pod_dir: str, get_driver: Callable[[str], dict | None]) -> dict[str, dict]:
        """Publish every CSI volume of ``pod``; returns ``{volume name: {driver, volume_id,
        target}}``. On a failure the ones already published are unpublished, then
        :class:`CsiVolumeError` is raised."""
        done: dict[str, dict] = {}
        try:
            for vol in csi_volumes(pod):
                driver = (vol.get("csi") or {}).get("driver", "")
                req = publish_request(pod, vol, get_driver(driver) if driver else None, pod_dir)
                ep = self.endpoint(driver)
                os.makedirs(os.path.dirname(req["target_path"]), exist_ok=True)
                ch = rpc.channel(ep)
                try:
                    rpc.call(ch, f"/{m.NODE}/NodePublishVolume", m.NODE_PUBLISH_VOLUME_REQUEST,
                             m.NODE_PUBLISH_VOLUME_RESPONSE, req, timeout=PUBLISH_TIMEOUT)
                except rpc.RpcError as exc:
                    raise CsiVolumeError(f'MountVolume.SetUp failed for volume "{vol["name"]}" : rpc error: '
                                         f'code = {exc.code} desc = {exc.details}') from None
                finally:
                    ch.close()
                done[vol["name"]] = {"driver": driver, "volume_id": req["volume_id"], "target": req["target_path"]}
        except CsiVolumeError:
            self.unpublish(done)
            raise
        return done

    def unpublish(self, published: dict[str, dict]) -> list[str]:
        """NodeUnpublishVolume for each published volume; returns the errors (empty: all done)."""
        errors = []
        for name, rec in published.items():
            try:
                ch = rpc.channel(self.endpoint(rec["driver"]))
            except CsiVolumeError as exc:
                errors.append(f'volume "{name}": {exc}')
                continue
            try:
                rpc.call(ch, f"/{m.NODE}/NodeUnpublishVolume", m.NODE_UNPUBLISH_VOLUME_REQUEST,
                         m.NODE_UNPUBLISH_VOLUME_RESPONSE,
                         {"volume_id": rec["volume_id"], "target_path": rec["target"]}, timeout=PUBLISH_TIMEOUT)
            except rpc.RpcError as exc:
                errors.append(f'UnmountVolume.TearDown failed for volume "{name}": {exc}')
            finally:
                ch.close()
        return errors
