"""calico-kube-controllers' status file and its health checks (``kube-controllers/pkg/status``
and ``runHealthChecks`` of Calico's kube-controllers), read by ``check-status``
(:mod:`agent.kubecontrollers.checkstatus`), the readiness and liveness probes' command of
Calico's calico.yaml.

The file is JSON ``{"Readiness": {"<key>": {"Ready": bool, "Reason": str}}}``, written whenever
a key changes: ``Startup`` (false until the datastore answered at start), then
``CalicoDatastore`` (the datastore answers a read of ClusterInformation ``default``) and
``KubeAPIServer`` (the API server's ``/healthz`` answers 200), checked every 10 s (every 2 s
while one is not ready). Ready when there is at least one key and every key is ready;
otherwise the not-ready keys' reasons joined by ``; ``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

#: upstream's default (status.DefaultStatusFile), check-status's default; calicolab's kubelet passes
#: a per-container path to both (kube-controllers without --status-file writes no file)
DEFAULT_STATUS_FILE = "/status/status.json"
HEALTH_PERIOD = 10.0  # seconds between checks when all is ready
RETRY_PERIOD = 2.0  # seconds between checks while something is not ready


class Status:
    """The readiness keys and the file they are written to."""

    def __init__(self, path: str):
        self.path = path
        self.readiness: dict[str, tuple[bool, str]] = {}
        self.lock = threading.Lock()

    def set_ready(self, key: str, ready: bool, reason: str = "") -> None:
        """Set one key; the file (if any: an empty path writes none) is rewritten when it changed."""
        with self.lock:
            if self.readiness.get(key) == (ready, reason):
                return
            self.readiness[key] = (ready, reason)
            if not self.path:
                return
            doc = {"Readiness": {k: {"Ready": r, "Reason": why} for k, (r, why) in self.readiness.items()}}
            try:
                os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
                tmp = self.path + ".tmp"
                with open(tmp, "w") as f:
                    json.dump(doc, f)
                os.replace(tmp, self.path)
            except OSError as exc:
                log.warning("status file %s not written: %s", self.path, exc)

    def ready(self) -> bool:
        """Every key is ready (and there is one)."""
        with self.lock:
            return bool(self.readiness) and all(r for r, _ in self.readiness.values())


def read_status(path: str) -> dict[str, tuple[bool, str]]:
    """The keys of a status file (OSError, ValueError when it cannot be read)."""
    with open(path) as f:
        doc = json.load(f)
    keys = doc.get("Readiness") if isinstance(doc, dict) else None
    if not isinstance(keys, dict):
        raise ValueError("no Readiness in the status file")
    return {str(k): (bool((v or {}).get("Ready")), str((v or {}).get("Reason") or "")) for k, v in keys.items()}


def check(keys: dict[str, tuple[bool, str]]) -> tuple[bool, str]:
    """(ready, what check-status prints): ``Ready``, else the not-ready reasons joined by ``; ``."""
    if keys and all(r for r, _ in keys.values()):
        return True, "Ready"
    return False, "; ".join(why for r, why in keys.values() if not r)


def run_health_checks(status: Status, datastore_ok: Callable[[], str | None], apiserver_ok: Callable[[], str | None],
                      stop: threading.Event) -> None:
    """The health loop until ``stop``: each check returns None when healthy, else the reason."""
    status.set_ready("CalicoDatastore", False, "initialized to false")
    status.set_ready("KubeAPIServer", False, "initialized to false")
    while not stop.is_set():
        err = datastore_ok()
        status.set_ready("CalicoDatastore", err is None, "" if err is None else f"Error verifying datastore: {err}")
        err = apiserver_ok()
        status.set_ready("KubeAPIServer", err is None, "" if err is None else f"Error reaching apiserver: {err}")
        stop.wait(HEALTH_PERIOD if status.ready() else RETRY_PERIOD)
