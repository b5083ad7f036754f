"""containerd of one lab node: its daemon (config, argv) and the ``ctr`` client the kubelet uses.

Each node runs its own containerd 1.6 (Debian's) with root, state and sockets in the node's
runtime directory (``/run/calicolab/<lab>/runtime/<node>/containerd``), started with
``nsenter --net`` into the node's network namespace, so its shims and the containers' PIDs
are the machine's while every socket it opens lives in the node.

containerd has no Python API client (its API is gRPC; the project ships no generated stubs),
so the kubelet drives it through ``ctr`` (containerd's own client) as a subprocess: image
import, ``run -d`` of the sandbox and the containers, ``task ls``/``kill``/``rm`` and
``containers rm``. The CRI plugin is disabled: the kubelet calls our CNI plugin itself
(docs/runtimes.md says why).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

NAMESPACE = "k8s.io"
CTR = "ctr"


def config_toml(base: str | os.PathLike) -> str:
    """containerd's config for a node whose runtime directory is ``base`` (pure)."""
    b = Path(base)
    return (
        "version = 2\n"
        f'root = "{b}/root"\n'
        f'state = "{b}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{b}/containerd.sock"\n'
        f'[ttrpc]\n  address = "{b}/containerd.sock.ttrpc"\n'
        f'[debug]\n  address = "{b}/debug.sock"\n'
        '[plugins]\n'
        f'  [plugins."io.containerd.internal.v1.opt"]\n    path = "{b}/opt"\n'
    )


def socket_path(base: str | os.PathLike) -> str:
    """The containerd socket of a node runtime directory."""
    return str(Path(base) / "containerd.sock")


def daemon_argv(netns_path: str, base: str | os.PathLike) -> list[str]:
    """Write the config under ``base`` and return the argv that starts containerd in the
    node's network namespace (the machine's mount namespace and cgroup view)."""
    b = Path(base)
    b.mkdir(parents=True, exist_ok=True)
    cfg = b / "config.toml"
    cfg.write_text(config_toml(b))
    return ["nsenter", f"--net={netns_path}", "containerd", "--config", str(cfg)]


class CtrError(Exception):
    """``ctr`` failed; the message has its stderr."""


@dataclass
class Task:
    """A row of ``ctr task ls``."""

    id: str
    pid: int
    status: str


def parse_tasks(out: str) -> dict[str, Task]:
    """``ctr task ls`` output -> tasks by id (pure)."""
    tasks = {}
    for line in out.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 3 and parts[1].isdigit():
            tasks[parts[0]] = Task(parts[0], int(parts[1]), parts[2])
    return tasks


EXIT_RE = re.compile(r"task (\S+) exit with non-zero exit code (\d+)")


def parse_exit(stderr: str) -> int:
    """The exit code ``ctr task rm`` reports (it warns only on a non-zero one) (pure)."""
    m = EXIT_RE.search(stderr)
    return int(m.group(2)) if m else 0


class Ctr:
    """``ctr -a SOCKET -n k8s.io`` as a client."""

    def __init__(self, address: str, namespace: str = NAMESPACE, timeout: float = 60.0):
        self.address, self.namespace, self.timeout = address, namespace, timeout

    def argv(self, *args: str) -> list[str]:
        """The full ctr command line."""
        return [CTR, "-a", self.address, "-n", self.namespace, *args]

    def run_ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run one ctr command; :class:`CtrError` naming it if it fails and ``check``."""
        res = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=self.timeout)
        if check and res.returncode != 0:
            raise CtrError(f"ctr {' '.join(args[:2])}: {(res.stderr or res.stdout).strip()}")
        return res

    def ready(self) -> bool:
        """True when containerd answers on its socket."""
        try:
            return "Server:" in self.run_ctr("version", check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            return False

    def images(self) -> dict[str, str]:
        """Image references -> digests present in the namespace."""
        out = self.run_ctr("images", "ls").stdout
        refs = {}
        for line in out.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3:
                refs[parts[0]] = parts[2]
        return refs

    def import_image(self, archive: str) -> None:
        """``ctr images import`` of a docker-archive tarball."""
        self.run_ctr("images", "import", archive)

    def tasks(self) -> dict[str, Task]:
        """The running and stopped tasks."""
        return parse_tasks(self.run_ctr("tasks", "ls").stdout)

    def run(self, image: str, cid: str, argv: list[str], *, netns: str, cgroup: str,
            join: dict[str, str] | None = None, mounts: list[tuple[str, str, bool]] | None = None,
            env: dict[str, str] | None = None, labels: dict[str, str] | None = None,
            log_file: str | None = None, cwd: str | None = None) -> None:
        """``ctr run -d``: a new container ``cid`` from ``image`` in the network namespace
        ``netns``, joining the other namespaces in ``join`` (type -> path), with bind
        ``mounts`` (src, dst, read-only), its output appended to ``log_file``."""
        args = ["run", "-d", "--cgroup", cgroup, "--with-ns", f"network:{netns}"]
        for ns_type, path in (join or {}).items():
            args += ["--with-ns", f"{ns_type}:{path}"]
        for src, dst, ro in mounts or []:
            args += ["--mount", f"type=bind,src={src},dst={dst},options=rbind:{'ro' if ro else 'rw'}"]
        for k, v in (env or {}).items():
            args += ["--env", f"{k}={v}"]
        for k, v in (labels or {}).items():
            args += ["--label", f"{k}={v}"]
        if log_file:
            args += ["--log-uri", f"file://{log_file}"]
        else:
            args.append("--null-io")
        if cwd:
            args += ["--cwd", cwd]
        self.run_ctr(*args, image, cid, *argv)

    def kill(self, cid: str, signal: str = "SIGTERM") -> None:
        """Signal the task (no error if it is gone)."""
        self.run_ctr("tasks", "kill", "-s", signal, cid, check=False)

    def delete_task(self, cid: str) -> int | None:
        """Remove a stopped task; its exit code (None if there was no task)."""
        res = self.run_ctr("tasks", "rm", cid, check=False)
        if res.returncode != 0:
            return None
        return parse_exit(res.stderr)

    def remove(self, cid: str) -> None:
        """Remove the container and its snapshot (no error if it is gone)."""
        self.run_ctr("containers", "rm", cid, check=False)

    def containers(self) -> list[str]:
        """Container ids in the namespace."""
        return self.run_ctr("containers", "ls", "-q").stdout.split()
