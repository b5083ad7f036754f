"""Running calicolab's API server for tests: a fresh PKI, the server as its own process
(``python -m testbed.apiserver``) on the session etcd, the real kubectl pointed at it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.support import free_port, require

REPO = Path(__file__).resolve().parent.parent
KUBECTL = REPO / ".venv" / "bin" / "kubectl"
SKEW_VERSION = "1.36.4"


def skew_kubectl() -> Path:
    """The older kubectl minor installed by scripts/setup.sh for skew tests."""
    return REPO / ".cache" / "kubectl" / SKEW_VERSION / "bin" / "kubectl"


def real_kubectl() -> str:
    """The project's real kubectl (never /usr/bin/kubectl)."""
    require(KUBECTL.exists() and os.access(KUBECTL, os.X_OK),
            f"needs the real kubectl at {KUBECTL} (scripts/setup.sh installs it)")
    return str(KUBECTL)


class APIServerProcess:
    """One API server process with its own PKI, kubeconfig and kubectl HOME."""

    def __init__(self, workdir: Path, etcd_endpoint: str, extra_args: list[str] | None = None):
        from testbed.apiserver import pki

        self.dir = workdir
        self.pki = pki.write_pki(str(workdir / "pki"), "control-plane", ["127.0.0.1"])
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = str(workdir / "admin.conf")
        pki.write_kubeconfig(self.kubeconfig, self.pki, self.url)
        self.home = workdir / "home"
        self.home.mkdir(exist_ok=True)
        self.etcd = etcd_endpoint
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "apiserver.log"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "testbed.apiserver", "--etcd-servers", self.etcd,
                "--bind-address", "127.0.0.1", "--secure-port", str(self.port), "--cert-dir", self.pki.dir,
                "--advertise-address", "127.0.0.1", "--v", "2", *self.extra_args]

    def start(self, timeout: float = 20.0) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"),
                                     env=env, cwd=str(REPO))
        client = self.client()
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"apiserver exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if client.request("GET", "/readyz", raw=True) == b"ok":
                    return
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"apiserver not ready after {timeout}s: {last}; log: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def client(self):
        """A kubeclient Client with the admin credentials."""
        from kubeclient import Client, from_kubeconfig

        return Client(from_kubeconfig(self.kubeconfig))

    def env(self) -> dict[str, str]:
        return dict(os.environ, KUBECONFIG=self.kubeconfig, HOME=str(self.home))

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, binary: str | None = None,
                timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run the real kubectl against this server."""
        cmd = [binary or real_kubectl(), *args]
        res = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                             env=env or self.env())
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
        return res
