"""The kubelet's plugin watcher: plugins register by putting a gRPC socket in the kubelet's
plugin-registration directory (``<root-dir>/plugins_registry``), as node-driver-registrar
does (:mod:`agent.csi.registrar`).

For each new socket the watcher calls ``pluginregistration.Registration/GetInfo``; a
``CSIPlugin`` of a supported version is handed to :class:`testbed.k8s.csivolumes.CsiDrivers`
(which asks the driver ``NodeGetInfo`` and lists it in the node's CSINode), then the plugin
is told the outcome (``NotifyRegistrationStatus``: registered, or the error). A socket that
disappears deregisters its plugin. Other plugin types (``DevicePlugin``, ``DRAPlugin``) are
refused by name. The directory is scanned every :data:`SCAN_INTERVAL` seconds (the real
kubelet uses inotify); a socket that does not answer is asked again on the next scan.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time

from agent import rpc
from agent.csi import messages as m
from agent.protowire import EMPTY

log = logging.getLogger("kubelet.pluginwatcher")

SCAN_INTERVAL = 0.5
CALL_TIMEOUT = 2.0
RETRY_MAX = 10.0  # seconds: the longest wait before a silent socket is asked again


def sockets(directory: str) -> dict[str, int]:
    """``{path: inode}`` of the unix sockets in ``directory`` and its subdirectories."""
    out: dict[str, int] = {}
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            path = os.path.join(root, f)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISSOCK(st.st_mode) and not f.startswith("."):
                out[path] = st.st_ino
    return out


class PluginWatcher:
    """Registers the plugins of ``directory`` with ``csi`` (a CsiDrivers)."""

    def __init__(self, directory: str, csi, interval: float = SCAN_INTERVAL):
        self.directory, self.csi, self.interval = directory, csi, interval
        self.registered: dict[str, tuple[int, str]] = {}  # socket -> (inode, CSI driver name)
        self.refused: dict[str, int] = {}  # socket -> inode: told "not registered"
        self.retry: dict[str, tuple[float, float]] = {}  # socket -> (when to ask again, back-off)

    def run(self, stop: threading.Event) -> None:
        """Scan until ``stop`` (call on a thread)."""
        os.makedirs(self.directory, exist_ok=True)
        while not stop.is_set():
            try:
                self.scan()
            except Exception:  # noqa: BLE001 - keep watching
                log.exception("plugin watcher scan failed")
            stop.wait(self.interval)

    def scan(self) -> None:
        """One pass: register new sockets, deregister vanished ones."""
        now = sockets(self.directory)
        for path, (ino, name) in list(self.registered.items()):
            if now.get(path) != ino:
                self.registered.pop(path)
                self.csi.deregister(name)
        for path in list(self.refused):
            if now.get(path) != self.refused[path]:
                self.refused.pop(path)
        for path in list(self.retry):
            if path not in now:
                self.retry.pop(path)
        mono = time.monotonic()
        for path, ino in now.items():
            if path in self.registered or path in self.refused or self.retry.get(path, (0.0, 0.0))[0] > mono:
                continue
            self.register(path, ino)

    def register(self, path: str, ino: int) -> None:
        ch = rpc.channel(path)
        try:
            try:
                info = rpc.call(ch, f"/{m.REGISTRATION}/GetInfo", EMPTY, m.PLUGIN_INFO, timeout=CALL_TIMEOUT)
            except rpc.RpcError as exc:
                backoff = min(RETRY_MAX, 2 * self.retry.get(path, (0.0, SCAN_INTERVAL / 2))[1])
                self.retry[path] = (time.monotonic() + backoff, backoff)
                log.info("plugin socket %s does not answer GetInfo (asking again in %.1fs): %s", path, backoff, exc)
                return
            self.retry.pop(path, None)
            error = None
            if info.get("type") != m.CSI_PLUGIN:
                error = f"plugin type {info.get('type')!r} is not supported by calicolab's kubelet (only CSIPlugin)"
            else:
                error = self.csi.validate(info.get("name", ""), info.get("endpoint", ""),
                                          info.get("supported_versions") or [])
            if error is None:
                try:
                    self.csi.register(info["name"], info["endpoint"])
                except Exception as exc:  # noqa: BLE001 - reported to the plugin
                    error = f"RegisterPlugin error -- plugin registration failed with err: {exc}"
            status = {"plugin_registered": error is None, "error": error or ""}
            try:
                rpc.call(ch, f"/{m.REGISTRATION}/NotifyRegistrationStatus", m.REGISTRATION_STATUS, EMPTY, status,
                         timeout=CALL_TIMEOUT)
            except rpc.RpcError as exc:
                log.warning("plugin %s: NotifyRegistrationStatus failed: %s", path, exc)
            if error is None:
                self.registered[path] = (ino, info["name"])
            else:
                log.warning("plugin %s not registered: %s", path, error)
                self.refused[path] = ino
        finally:
            ch.close()
