"""Helpers shared by calicolab's tests (not part of the product).

``require`` is the only sanctioned way to skip: under CI (``CI=true``) a missing
prerequisite fails loudly, because setup is supposed to provide it; elsewhere it
skips with the reason printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest


def in_ci() -> bool:
    """True when running under CI (CI=true), where nothing may be skipped for lack of setup."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip (locally) or fail (under CI) unless ``condition`` holds."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"prerequisite missing under CI (setup should provide it): {reason}")
    pytest.skip(reason)


def require_root() -> None:
    """The test needs root (namespaces, iptables, Mininet)."""
    require(os.geteuid() == 0, "needs root: run with sudo")


def require_tool(name: str) -> str:
    """The test needs the executable ``name``; returns its path."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    require(path is not None, f"needs the '{name}' command (installed by scripts/setup.sh)")
    return path or name


def unique(prefix: str) -> str:
    """A short unique name (fits interface and netns names)."""
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def sh(*args: str, check: bool = True, netns: str | None = None, timeout: float = 30) -> str:
    """Run a command (optionally inside a named netns) and return its stdout."""
    cmd = list(args)
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr.strip()}")
    return res.stdout


def terminate(proc: subprocess.Popen, timeout: float = 15) -> None:
    """End a process this test started: SIGTERM, then SIGKILL after ``timeout`` s; reaped."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for etcd and other test servers)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EtcdServer:
    """A real etcd on loopback with a temporary data dir; stopped by PID."""

    def __init__(self, data_dir: str, port: int | None = None):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start etcd and wait until it answers."""
        import time

        from datastore.errors import DatastoreUnavailable
        from datastore.etcd import EtcdClient

        binary = require_tool("etcd")
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.proc = subprocess.Popen(
            [binary, "--name", "test", "--data-dir", self.data_dir,
             "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"test={peer}", "--log-level", "error",
             "--logger", "zap", "--auto-compaction-retention", "0"],
            stdout=subprocess.DEVNULL, stderr=open(f"{self.data_dir}.log", "ab"),
        )
        client = EtcdClient(self.endpoint, timeout=1.0)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.revision()
                return
            except DatastoreUnavailable as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"etcd did not start on {self.endpoint}: {exc}") from exc
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop etcd (by PID) and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def upstream_manifest(name: str) -> str:
    """The path of Calico v3.28.1's ``manifests/<name>`` (testbed.k8s.upstream), or a skip
    that prints why no source had it (no cache, no clone, no route to GitHub): a file this
    machine may truly lack, so not a CI failure. A file with the wrong hash fails."""
    from testbed.k8s import upstream

    try:
        return str(upstream.path(name))
    except upstream.Unavailable as exc:
        pytest.skip(str(exc))
