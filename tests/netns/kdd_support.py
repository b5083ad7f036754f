"""The Kubernetes datastore in node namespaces: calicolab's API server running inside a node
netns (on that node's etcd), Calico's CRDs installed, and a kubeconfig for the components."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


class NetnsAPIServer:
    """``python -m testbed.apiserver`` inside netns ``ns`` on ``address``:6443, with its own PKI
    and an admin kubeconfig; :meth:`call` runs code (with :attr:`kube`) inside the netns."""

    def __init__(self, ns: str, workdir: Path, etcd: str, address: str, port: int = 6443):
        from testbed.apiserver import pki

        self.ns, self.dir, self.etcd, self.address, self.port = ns, workdir, etcd, address, port
        workdir.mkdir(parents=True, exist_ok=True)
        self.pki = pki.write_pki(str(workdir / "pki"), "control-plane", [address, "127.0.0.1"])
        self.url = f"https://{address}:{port}"
        self.kubeconfig = str(workdir / "admin.conf")
        pki.write_kubeconfig(self.kubeconfig, self.pki, self.url)
        self.log = workdir / "apiserver.log"
        self.proc: subprocess.Popen | None = None
        from tests.netns.felix_support import InNetns

        self.ns_thread = InNetns(ns)
        self.kube: Any = None

    def start(self, timeout: float = 30.0) -> None:
        from kubeclient import Client, from_kubeconfig

        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, PY, "-m", "testbed.apiserver", "--etcd-servers", self.etcd,
             "--bind-address", self.address, "--secure-port", str(self.port), "--cert-dir", self.pki.dir,
             "--advertise-address", self.address],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"), cwd=str(REPO))
        self.kube = self.call(lambda: Client(from_kubeconfig(self.kubeconfig)))
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"apiserver exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if self.call(lambda: self.kube.request("GET", "/readyz", raw=True)) == b"ok":
                    return
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
            time.sleep(0.1)
        raise AssertionError(f"apiserver not ready after {timeout}s: {last}; log: {self.log.read_text()[-2000:]}")

    def call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        """Run ``fn`` on the thread that lives in the netns."""
        return self.ns_thread.call(fn, *args, **kw)

    def install_crds(self) -> None:
        from datastore.kdd import install_crds

        self.call(install_crds, self.kube)

    def datastore(self) -> Any:
        """A KubeClient (use it through :meth:`call`)."""
        from datastore.kdd import KubeClient

        return KubeClient(self.kube)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.ns_thread.close()
