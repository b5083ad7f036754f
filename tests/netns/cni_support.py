"""Helpers for the CNI engineer's tests: a "node" netns with its own etcd, and a runner
that executes the real ``calico``/``calico-ipam`` executables as a runtime does.

The node namespace gets a private etcd on its own loopback (127.0.0.1:2379 inside
the node), so nothing crosses into the machine's root namespace. Tests read the
datastore with :meth:`CniNode.client`, which runs the calling thread inside the
node namespace for the duration of the block.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import require_root, require_tool, unique

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
ETCD = "http://127.0.0.1:2379"
REF_PLUGINS = "/usr/lib/cni"
POOL_CIDR = "192.168.0.0/16"


@dataclass
class PluginRun:
    """What one plugin execution printed and returned."""

    rc: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def json(self) -> Any:
        """Stdout decoded as JSON (fails the test with the raw text if it is not)."""
        try:
            return json.loads(self.stdout)
        except ValueError:
            raise AssertionError(f"plugin stdout is not JSON: {self.stdout!r} (stderr: {self.stderr[-2000:]})") from None


@dataclass
class CniNode:
    """A node namespace with etcd, a CNI bin dir and a scratch dir."""

    ns: str
    tmp: Path
    etcd_pid: int
    bin_dir: Path

    @property
    def nspath(self) -> str:
        """/run/netns/<ns>."""
        return f"/run/netns/{self.ns}"

    @property
    def nodename_file(self) -> Path:
        """This node's /var/lib/calico/nodename (calico-node's start-up writes it; the fixture here)."""
        return self.tmp / "nodename"

    def conf(self, version: str = "1.0.0", **over: Any) -> dict[str, Any]:
        """A calico netconf for this node (nodename k8s-w0, its nodename file)."""
        conf: dict[str, Any] = {
            "cniVersion": version, "name": "k8s-pod-network", "type": "calico",
            "datastore_type": "etcdv3", "etcd_endpoints": ETCD, "nodename": "k8s-w0",
            "nodename_file": str(self.nodename_file), "mtu": 0, "log_level": "debug",
            "ipam": {"type": "calico-ipam"}, "ipam_lock_file": str(self.tmp / "ipam.lock"),
        }
        conf.update(over)
        return conf

    def run(self, command: str, conf: dict[str, Any] | str | bytes, *, cid: str = "", netns: str = "",
            ifname: str = "eth0", pod: tuple[str, str] | None = ("default", "nginx"), plugin: str = "calico",
            socket: str = "none", extra_env: dict[str, str] | None = None, drop: tuple[str, ...] = (),
            wrapper: tuple[str, ...] | None = None, exe: str | None = None, timeout: float = 60) -> PluginRun:
        """Execute the plugin in the node netns (``nsenter --net``), as a runtime would.

        ``exe`` replaces the executable (default: ``<bin_dir>/<plugin>``, the venv console script).
        """
        env = {"PATH": f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command,
               "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
               "CNI_PATH": str(self.bin_dir), "CALICO_CNI_SOCKET": socket}
        if pod:
            env["CNI_ARGS"] = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod[0]};K8S_POD_NAME={pod[1]};K8S_POD_INFRA_CONTAINER_ID={cid}"
        env.update(extra_env or {})
        for key in drop:
            env.pop(key, None)
        data = conf if isinstance(conf, bytes) else (conf.encode() if isinstance(conf, str) else json.dumps(conf).encode())
        cmd = list(wrapper) if wrapper else ["nsenter", f"--net={self.nspath}"]
        started = time.monotonic()
        proc = subprocess.run([*cmd, exe or str(self.bin_dir / plugin)], input=data, env=env,
                              capture_output=True, timeout=timeout)
        return PluginRun(proc.returncode, proc.stdout.decode(), proc.stderr.decode(), time.monotonic() - started)

    @contextmanager
    def client(self) -> Iterator[Any]:
        """A datastore Client whose connections live in the node netns (thread inside it meanwhile)."""
        from datastore import Client
        from kernel.netns import entered as in_netns

        with in_netns(self.nspath):
            client = Client([ETCD])
            try:
                yield client
            finally:
                client.etcd.close()

    def reset(self, pool_cidr: str = POOL_CIDR, block_size: int = 26) -> None:
        """Empty etcd and create the default pool."""
        from datastore.resources import IPPool, Metadata

        with self.client() as c:
            c.etcd.delete_prefix("/")
            if pool_cidr:
                c.create(IPPool(metadata=Metadata(name="default-ipv4-ippool"),
                                spec=IPPool.Spec(cidr=pool_cidr, block_size=block_size, ipip_mode="Always",
                                                 nat_outgoing=True)))

    def ip(self, *args: str, pod: str | None = None) -> str:
        """``ip`` output in the node (or in the pod netns ``pod``)."""
        ns = pod or self.ns
        return subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, check=True).stdout


def _wait_etcd(nspath: str, pid_proc: subprocess.Popen, deadline: float) -> None:
    from datastore.errors import DatastoreUnavailable
    from datastore.etcd import EtcdClient
    from kernel.netns import entered as in_netns

    last: Exception | None = None
    while time.monotonic() < deadline:
        if pid_proc.poll() is not None:
            raise AssertionError(f"etcd in {nspath} exited with {pid_proc.returncode}")
        with in_netns(nspath):
            client = EtcdClient(ETCD, timeout=0.5)
            try:
                client.revision()
                return
            except DatastoreUnavailable as exc:
                last = exc
            finally:
                client.close()
        time.sleep(0.05)
    raise AssertionError(f"etcd in {nspath} did not answer: {last}")


@pytest.fixture(scope="module")
def cni_node(tmp_path_factory) -> Iterator[CniNode]:
    """Module-wide node netns with etcd and a CNI bin dir (calico, calico-ipam + reference plugins)."""
    require_root()
    require_tool("nsenter")
    etcd_bin = require_tool("etcd")
    tmp = tmp_path_factory.mktemp("cninode")
    ns = unique("cnin")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    proc = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        for name in ("calico", "calico-ipam"):
            os.symlink(VENV_BIN / name, bin_dir / name)
        for name in os.listdir(REF_PLUGINS):
            os.symlink(f"{REF_PLUGINS}/{name}", bin_dir / name)
        proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{ns}", etcd_bin, "--name", "cni", "--data-dir", str(tmp / "etcd"),
             "--listen-client-urls", ETCD, "--advertise-client-urls", ETCD,
             "--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
             "--initial-cluster", "cni=http://127.0.0.1:2380", "--log-level", "error", "--logger", "zap"],
            stdout=subprocess.DEVNULL, stderr=open(tmp / "etcd.log", "ab"))
        _wait_etcd(f"/run/netns/{ns}", proc, time.monotonic() + 15)
        (tmp / "nodename").write_text("k8s-w0")  # as calico-node's start-up leaves it
        yield CniNode(ns=ns, tmp=tmp, etcd_pid=proc.pid, bin_dir=bin_dir)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)
        for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
            subprocess.run(["kill", "-9", pid], capture_output=True)
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


@pytest.fixture
def node(cni_node: CniNode) -> CniNode:
    """The module's node with etcd emptied and the default pool 192.168.0.0/16 (/26 blocks)."""
    cni_node.reset()
    return cni_node


@pytest.fixture
def node_api(node: CniNode) -> Iterator[Any]:
    """calicolab's API server in the node's netns (127.0.0.1:6443) on the node's etcd, emptied
    with it: the Kubernetes objects the plugin reads through its ``kubernetes.kubeconfig``
    (``node_api.kubeconfig``), created with ``node_api.call(node_api.kube.create, ...)``."""
    from tests.netns.kdd_support import NetnsAPIServer

    server = NetnsAPIServer(node.ns, node.tmp / unique("api"), ETCD, "127.0.0.1")
    server.start()
    try:
        yield server
    finally:
        server.stop()
