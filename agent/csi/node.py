"""The ``csi.tigera.io`` node service: what Calico's pod2daemon/csidriver does for an inline
ephemeral volume, with the mounts injected (:class:`Mounter` is the kernel side).

NodePublishVolume(volume_id, target_path, volume_context with the pod's info):
  1. ``<home>/mount/<volume_id>`` is made (0777): the per-workload directory Felix binds its
     policy-sync socket in (``<home>/mount/<volume_id>/socket``, :mod:`agent.felix.policysync`);
  2. a tmpfs (size=8K) is mounted at the target path, ``<target>/nodeagent`` made in it and
     the workload directory bind-mounted there, so the pod sees
     ``<mountPath>/nodeagent/socket``;
  3. the pod's identity is written to ``<home>/creds/<volume_id>.json`` (``{"UID",
     "Workload", "Namespace", "ServiceAccount"}``, written beside and renamed in): the file
     Felix watches to learn which workload a socket belongs to.
NodeUnpublishVolume reads that file (an error if it is missing, as Calico's), unmounts
``<target>/nodeagent`` and the tmpfs, removes the workload directory and the creds file.
The pod's info comes from ``volume_context`` (``csi.storage.k8s.io/pod.name``,
``pod.namespace``, ``pod.uid``, ``serviceAccount.name``: the CSIDriver's
``podInfoOnMount: true``); a request without it fails with INTERNAL.

One difference from Calico's driver: publishing a volume again at a target where it is
already published answers OK without mounting a second tmpfs (the CSI spec asks
NodePublishVolume to be idempotent; Calico's would stack another).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("csi-driver")

DRIVER_NAME = "csi.tigera.io"
DRIVER_VERSION = "0.1"
NODEAGENT_HOME = "/var/run/nodeagent"
POD_INFO_KEYS = ("csi.storage.k8s.io/pod.name", "csi.storage.k8s.io/pod.namespace",
                 "csi.storage.k8s.io/pod.uid", "csi.storage.k8s.io/serviceAccount.name")


class CsiError(Exception):
    """A request the driver refuses: ``code`` is the gRPC status (INVALID_ARGUMENT, INTERNAL)."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


class Mounter(Protocol):
    """The kernel side of publishing (a fake in unit tests)."""

    def mount_tmpfs(self, target: str, size: str) -> None: ...

    def bind(self, source: str, target: str) -> None: ...

    def unmount(self, target: str) -> None: ...

    def is_mount(self, path: str) -> bool: ...


class KernelMounter:
    """mount(2)/umount2(2) through libc."""

    MS_BIND = 0x1000
    MS_RELATIME = 1 << 21

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)

    def _mount(self, source: str, target: str, fstype: str, flags: int, data: str) -> None:
        if self.libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                           ctypes.c_ulong(flags), data.encode() if data else None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")

    def mount_tmpfs(self, target: str, size: str) -> None:
        self._mount("tmpfs", target, "tmpfs", self.MS_RELATIME, f"size={size}")

    def bind(self, source: str, target: str) -> None:
        self._mount(source, target, "", self.MS_BIND, "")

    def unmount(self, target: str) -> None:
        if self.libc.umount2(target.encode(), 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"umount {target}: {os.strerror(err)}")

    def is_mount(self, path: str) -> bool:
        real = os.path.realpath(path)
        try:
            with open("/proc/self/mountinfo") as f:
                return any(line.split()[4] == real for line in f)
        except OSError:
            return False


@dataclass
class Config:
    """Where the per-workload directories and creds files go (Calico's defaults)."""

    home: str = NODEAGENT_HOME
    node_id: str = ""

    @property
    def mount_dir(self) -> str:
        return os.path.join(self.home, "mount")

    @property
    def creds_dir(self) -> str:
        return os.path.join(self.home, "creds")


class NodeService:
    """The CSI Identity and Node methods of the driver (requests and answers are dicts)."""

    def __init__(self, config: Config, mounter: Mounter):
        self.config, self.mounter = config, mounter

    # --- Identity ----------------------------------------------------------------------------
    def get_plugin_info(self, _req: dict) -> dict:
        return {"name": DRIVER_NAME, "vendor_version": DRIVER_VERSION}

    def get_plugin_capabilities(self, _req: dict) -> dict:
        return {}  # no controller service, no topology: the node service is all there is

    def probe(self, _req: dict) -> dict:
        return {}

    # --- Node --------------------------------------------------------------------------------
    def node_get_info(self, _req: dict) -> dict:
        return {"node_id": self.config.node_id}

    def node_get_capabilities(self, _req: dict) -> dict:
        return {}  # no STAGE_UNSTAGE_VOLUME: the kubelet publishes directly

    def node_publish_volume(self, req: dict) -> dict:
        vol, target = _volume_and_target(req)
        ctx = req.get("volume_context") or {}
        missing = [k for k in POD_INFO_KEYS if k not in ctx]
        if missing:
            raise CsiError("INTERNAL", f"Could not extractPodInfo: missing the required pod info "
                                       f"{', '.join(missing)} (the CSIDriver needs podInfoOnMount: true)")
        creds = {"UID": ctx[POD_INFO_KEYS[2]], "Workload": ctx[POD_INFO_KEYS[0]],
                 "Namespace": ctx[POD_INFO_KEYS[1]], "ServiceAccount": ctx[POD_INFO_KEYS[3]]}
        workdir = os.path.join(self.config.mount_dir, vol)
        if self.mounter.is_mount(os.path.join(target, "nodeagent")) and os.path.isdir(workdir):
            log.info("volume %s already published at %s", vol, target)
            return {}
        try:
            self._mount(target, workdir)
        except OSError as exc:
            raise CsiError("INTERNAL", f"Could not bind mount {target} to {workdir}: {exc}") from None
        try:
            self._write_creds(vol, creds)
        except OSError as exc:
            raise CsiError("INTERNAL", f"Could not write pod/volume information: {exc}") from None
        log.info("Mounted nodeagent UDS for pod name: %s, pod UID: %s, volume ID: %s",
                 creds["Workload"], creds["UID"], vol)
        return {}

    def node_unpublish_volume(self, req: dict) -> dict:
        vol, target = _volume_and_target(req)
        creds_file = os.path.join(self.config.creds_dir, vol + ".json")
        try:
            with open(creds_file) as f:
                creds = json.load(f)
        except (OSError, ValueError):
            raise CsiError("INTERNAL", "Unable to retrieve pod info") from None
        for path in (os.path.join(target, "nodeagent"), target):
            try:
                self.mounter.unmount(path)
            except OSError as exc:
                log.error("Unmount error: %s", exc)
        workdir = os.path.join(self.config.mount_dir, vol)
        try:
            shutil.rmtree(workdir)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CsiError("INTERNAL", f"Could not unmount volumes stored at {target}: {exc}") from None
        try:
            os.remove(creds_file)
        except OSError:
            raise CsiError("INTERNAL", f"Could not remove pod info file at {creds_file}") from None
        log.info("Unmounted nodeagent UDS for pod name: %s, pod UID: %s, volume ID: %s",
                 creds.get("Workload"), creds.get("UID"), vol)
        return {}

    def node_stage_volume(self, _req: dict) -> dict:
        return {}  # not needed (as Calico's driver: an empty answer)

    node_unstage_volume = node_stage_volume
    node_get_volume_stats = node_stage_volume
    node_expand_volume = node_stage_volume

    # --- kernel side -------------------------------------------------------------------------
    def _mount(self, target: str, workdir: str) -> None:
        os.makedirs(workdir, mode=0o777, exist_ok=True)
        os.makedirs(target, mode=0o777, exist_ok=True)
        try:
            self.mounter.mount_tmpfs(target, "8K")
        except OSError:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        inner = os.path.join(target, "nodeagent")
        try:
            os.makedirs(inner, mode=0o777, exist_ok=True)
            self.mounter.bind(workdir, inner)
        except OSError:
            try:
                self.mounter.unmount(target)
            except OSError as exc:
                log.error("Mount error: failed to unmount %s: %s", target, exc)
            shutil.rmtree(workdir, ignore_errors=True)
            raise

    def _write_creds(self, vol: str, creds: dict) -> None:
        os.makedirs(self.config.creds_dir, mode=0o755, exist_ok=True)
        tmp = os.path.join(self.config.home, vol + ".json")
        with open(tmp, "w") as f:
            json.dump(creds, f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(self.config.creds_dir, vol + ".json"))


def _check_id(vol: str) -> None:
    """A volume ID becomes a file name: no path separators, no dot names."""
    if "/" in vol or vol in (".", "..") or "\x00" in vol:
        raise CsiError("INVALID_ARGUMENT", f"Volume ID {vol!r} is not a valid file name")


def _volume_and_target(req: dict) -> tuple[str, str]:
    """A publish/unpublish request's volume ID (checked) and target path; INVALID_ARGUMENT
    naming what is missing, as Calico's driver answers."""
    vol, target = req.get("volume_id", ""), req.get("target_path", "")
    if not vol:
        raise CsiError("INVALID_ARGUMENT", "Volume ID not provided")
    if not target:
        raise CsiError("INVALID_ARGUMENT", "Target path not provided")
    _check_id(vol)
    return vol, target
