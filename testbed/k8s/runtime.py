"""The kubelet's container runtime: pod sandboxes (named netns) and workload processes.

A sandbox is a network namespace kept alive by a bind mount at ``<netns_dir>/cni-<uuid>``
(what ``ip netns add`` does; in a lab ``/run/netns`` is private to the node). Workloads
are real processes started inside that namespace. Each pod's runtime state is written to
``<root_dir>/pods/<uid>/state.json`` so a restarted kubelet can find and clean up what it
started before.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field

from kernel import autogroup, zygote

log = logging.getLogger(__name__)

MNT_DETACH = 2


class SandboxError(Exception):
    """A sandbox or process operation failed."""


def new_sandbox_id() -> str:
    """A containerd-like 64 hex sandbox id."""
    return secrets.token_hex(32)


def new_netns_name() -> str:
    """``cni-<uuid>``, the name containerd gives pod network namespaces."""
    return f"cni-{uuid.uuid4()}"


def create_netns(path: str) -> None:
    """Create a network namespace bound at ``path`` with ``lo`` up (:func:`kernel.netns.create`,
    in-process: no ``unshare`` + ``ip`` execs)."""
    from kernel import netns

    try:
        netns.create(path)
    except OSError as exc:
        raise SandboxError(str(exc.strerror or exc)) from None


def remove_netns(path: str) -> None:
    """Unmount and remove a namespace bound at ``path`` (no error if it is gone;
    :func:`kernel.netns.remove`)."""
    from kernel import netns

    netns.remove(path)


def remove_mount(path: str) -> None:
    """Detach the mount at ``path`` (umount2 MNT_DETACH; no error if nothing is mounted)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.umount2(path.encode(), MNT_DETACH)


def netns_pids(path: str) -> list[int]:
    """PIDs of the processes living in the namespace bound at ``path``."""
    if not path:
        return []
    try:
        target = os.stat(path)
    except FileNotFoundError:
        return []
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{d}/ns/net")
        except OSError:
            continue
        if st.st_ino == target.st_ino and st.st_dev == target.st_dev:
            pids.append(int(d))
    return pids


#: the pod's init, run by ``sh -c``: bind the pod's volumes (and resolv.conf) in the pod's own
#: mount namespace (made by ``unshare --mount``; mounts of the node propagate into it), then
#: enter the sandbox netns and exec the workload, so the workload keeps the PID of ``unshare``.
#: Binds are recursive (``--rbind``, as container runtimes bind volumes): a CSI volume's
#: target holds mounts of its own (agent.csi: a tmpfs and a bind inside it).
_POD_INIT = r"""
ns=$1; n=$2; shift 2
while [ "$n" -gt 0 ]; do
  if [ ! -e "$2" ]; then
    if [ -d "$1" ]; then mkdir -p "$2"; else mkdir -p "$(dirname "$2")" && : > "$2"; fi || exit 127
  fi
  mount --rbind "$1" "$2" || exit 127
  shift 2; n=$((n - 1))
done
if [ -n "$ns" ]; then exec nsenter --net="$ns" -- "$@"; fi
exec "$@"
"""


def process_argv(netns_path: str, argv: list[str], mounts: list[tuple[str, str]] | None = None,
                 nice: int = 0, propagation: str = "slave") -> list[str]:
    """The argv that starts ``argv`` as a pod's container process (pure): in the sandbox netns
    (``nsenter --net``; none for a hostNetwork pod), in a mount namespace of its own when it
    has ``mounts`` (``(source, mount point)`` bind mounts: volumes, /etc/resolv.conf), at
    CPU priority ``nice``. Every step execs, so the PID is the workload's.
    ``propagation``: ``slave`` (the node's mounts reach the pod, none go back: Kubernetes'
    HostToContainer) or ``unchanged`` (mounts under the node's shared mounts go both ways:
    the kubelet's ``mountPropagation: Bidirectional``)."""
    if propagation not in ("slave", "unchanged"):
        raise ValueError(f"mount propagation {propagation!r} (slave or unchanged)")
    prefix = ["nice", "-n", str(nice)] if nice else []
    if mounts:
        flat = [x for m in mounts for x in m]
        return [*prefix, "unshare", "--mount", "--propagation", propagation, "--", "sh", "-c", _POD_INIT, "pod-init",
                netns_path, str(len(mounts)), *flat, *argv]
    if netns_path:
        return [*prefix, "nsenter", f"--net={netns_path}", "--", *argv]
    return [*prefix, *argv]


def start_process(netns_path: str, argv: list[str], log_path: str, env: dict[str, str] | None = None,
                  cwd: str | None = None, mounts: list[tuple[str, str]] | None = None,
                  nice: int = 0, propagation: str = "slave") -> subprocess.Popen | zygote.ZygoteProcess:
    """Start ``argv`` inside the namespace (see :func:`process_argv`); an empty
    ``netns_path`` runs it in the caller's own netns (hostNetwork pods). Output appends to
    ``log_path``. The project's Python programs start as forks of the lab's zygote when
    ``$CALICOLAB_ZYGOTE`` names one (:func:`_zygote_start`; the same namespaces, mounts and
    priority), everything else (and everything without a zygote) by exec."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "ab") as log:
        proc = _zygote_start(netns_path, argv, log.fileno(), env, cwd, mounts, nice, propagation)
        if proc is not None:
            return proc
        proc = subprocess.Popen(
            process_argv(netns_path, argv, mounts, nice, propagation), stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True,
        )
        if nice:  # its session's weight too (it has exec'd, so its session is its own by now)
            autogroup.set_nice(os.getpriority(os.PRIO_PROCESS, 0) + nice, proc.pid)
        return proc


def _zygote_start(netns_path: str, argv: list[str], log_fd: int, env: dict[str, str] | None,
                  cwd: str | None, mounts: list[tuple[str, str]] | None, nice: int,
                  propagation: str) -> zygote.ZygoteProcess | None:
    """Start one of the project's Python programs through the lab's zygote ($CALICOLAB_ZYGOTE,
    :mod:`testbed.lab.zygote`) in the same namespaces, mounts, priority and session as
    :func:`process_argv`'s command line would; None when there is no zygote or ``argv`` is not
    the venv's Python (exec it). A zygote that fails is logged and the caller execs."""
    path = zygote.socket_path()
    if path is None or zygote.run_spec(argv, sys.executable, cwd) is None:
        return None
    if propagation not in ("slave", "unchanged"):
        raise ValueError(f"mount propagation {propagation!r} (slave or unchanged)")
    child_env = dict(os.environ if env is None else env)  # the zygote adds the child's channel
    fds: list[int] = []
    try:
        fds.append(os.open("/proc/thread-self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC))
        fds.append(os.open(netns_path or "/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC))
        prio = os.getpriority(os.PRIO_PROCESS, 0) + nice
        return zygote.spawn(path, argv, env=child_env, cwd=cwd, stdout=log_fd, stderr=log_fd,
                            mnt=fds[0], net=fds[1], mounts=mounts or None, propagation=propagation,
                            priority=prio)
    except (OSError, zygote.ZygoteError, ValueError) as exc:
        log.warning("zygote %s did not start %s (%s): starting it by exec", path, " ".join(argv[:3]), exc)
        return None
    finally:
        for fd in fds:
            os.close(fd)


def make_shared(path: str) -> None:
    """Make ``path`` a shared mount (bind it onto itself first if it is not a mount point), as
    ``ip netns add`` does for /run/netns: sandbox netns bound there later then show up in the
    mount namespaces of running pods (calico-node's CNI server enters them by path)."""
    os.makedirs(path, exist_ok=True)
    mounted = False
    try:
        with open("/proc/self/mountinfo") as f:
            mounted = any(line.split()[4] == path for line in f)
    except OSError:
        pass
    if not mounted:
        subprocess.run(["mount", "--bind", path, path], capture_output=True)
    res = subprocess.run(["mount", "--make-shared", path], capture_output=True, text=True)
    if res.returncode != 0:
        raise SandboxError(f"mount --make-shared {path}: {res.stderr.strip()}")


def alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def start_ticks(pid: int) -> int | None:
    """The process' start time (clock ticks since boot): with the PID, a unique identity."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def kill_process(pid: int, grace: float = 2.0, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; reaps it if it is our child."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                return
            if proc is None and not alive(pid):
                return
            time.sleep(0.01)
    if proc is not None:
        try:
            proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass


def listening(pid: int, port: int) -> bool:
    """True when a TCP socket listens on ``port`` in ``pid``'s network namespace: asked by
    sock_diag (kernel.sockdiag), which walks only the listening sockets, else read from
    ``/proc/<pid>/net/tcp{,6}`` (which walks every connection of the machine)."""
    from kernel import sockdiag

    try:
        return port in sockdiag.listening_ports(f"/proc/{pid}/ns/net")
    except OSError:
        pass  # the process is gone, or the kernel has no inet_diag: /proc answers
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except (FileNotFoundError, StopIteration):
            continue
    return False


@dataclass
class PodState:
    """What the kubelet made for one pod (persisted as JSON)."""

    uid: str
    namespace: str
    name: str
    sandbox_id: str
    netns: str  # full path of the bound namespace
    cni_conf: dict | None = None  # the conflist used for ADD (needed for DEL)
    cni_result: dict | None = None
    pids: dict[str, int] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    started_at: dict[str, str] = field(default_factory=dict)
    container_ids: dict[str, str] = field(default_factory=dict)
    ticks: dict[str, int] = field(default_factory=dict)  # start_ticks of each pid
    images: dict[str, str] = field(default_factory=dict)  # container -> image reference
    node: str = ""  # the kubelet that owns it (root dirs may be shared between nodes)
    lab: str = ""  # $CALICOLAB_LAB of that kubelet
    runtime: str = "netns"  # who holds the sandbox: netns (the kubelet), containerd, docker
    sandbox_pid: int = 0  # the pause container's PID (container runtimes)
    container_runtimes: dict[str, str] = field(default_factory=dict)  # container -> runtime ("netns": a process)
    images: dict[str, list[str]] = field(default_factory=dict)  # container -> [reference, digest ref]
    logs: dict[str, str] = field(default_factory=dict)  # container -> log file (container runtimes)
    resolv: str = ""  # the pod's resolv.conf for container runtimes ("": the node's)
    static: bool = False  # a static pod (its manifest, not the API server, says whether it exists)
    #: CSI volumes published for the pod: volume name -> {driver, volume_id, target}
    csi_volumes: dict[str, dict] = field(default_factory=dict)

    def save(self, root_dir: str) -> None:
        """Write the state file atomically."""
        d = os.path.join(root_dir, "pods", self.uid)
        os.makedirs(d, exist_ok=True)
        tmp = os.path.join(d, "state.json.tmp")
        with open(tmp, "w") as f:
            json.dump(asdict(self), f)
        os.replace(tmp, os.path.join(d, "state.json"))

    @classmethod
    def load_all(cls, root_dir: str) -> list[PodState]:
        """Every pod state left in ``root_dir`` (e.g. by a previous kubelet)."""
        states = []
        base = os.path.join(root_dir, "pods")
        for uid in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            try:
                with open(os.path.join(base, uid, "state.json")) as f:
                    states.append(cls(**json.load(f)))
            except (OSError, ValueError, TypeError):
                continue
        return states

    def pod_dir(self, root_dir: str) -> str:
        """The pod's private directory."""
        return os.path.join(root_dir, "pods", self.uid)
