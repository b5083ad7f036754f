"""The kubelet's container-runtime seam: pods as real containers (containerd or Docker).

The kubelet keeps the Kubernetes side (CNI, statuses, restarts, back-off); a
:class:`ContainerRuntime` does what containerd's CRI (or cri-dockerd) does on a real node:

1. :meth:`~ContainerRuntime.create_sandbox` before CNI ADD: the pod's network namespace
   (containerd: ``/run/netns/cni-<uuid>``, as containerd's CRI makes it; Docker: a pause
   container started with network ``none``, its netns ``/proc/<pid>/ns/net``, as
   cri-dockerd does);
2. :meth:`~ContainerRuntime.start_sandbox` after CNI ADD: the pause container holding the
   pod's IPC and UTS namespaces (hostname = the pod's name);
3. :meth:`~ContainerRuntime.start_container` for each container: its own PID and mount
   namespaces and rootfs from a locally built image (:mod:`testbed.k8s.imagebuild`), the
   sandbox's network/IPC/UTS namespaces, ``/etc/hostname``, ``/etc/hosts`` and
   ``/etc/resolv.conf`` bind-mounted from the pod's directory, stdout/stderr to a log file;
4. :meth:`~ContainerRuntime.reap` of an exited container (its exit code; the container is
   removed, a restart makes a new one), :meth:`~ContainerRuntime.stop_container` and
   :meth:`~ContainerRuntime.remove_sandbox` on delete.

:func:`testbed.k8s.runtimes.make_runtime` picks the implementation by name; ``netns`` (the default) is the
kubelet's own process runtime and has no object here. Containers are placed in the cgroup
``calicolab-<lab>/<node>/<id>`` relative to the runtime's own (inside the lab's cgroup), so
``calicolab clean`` finds them even after ``kill -9`` of every daemon.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass

from testbed.k8s import containerd, imagebuild, runtime
from testbed.k8s.images import ImageNotFound
from testbed.k8s.runtime import PodState

RUNTIMES = ("netns", "containerd", "docker")
LABEL_KIND = "io.cri-containerd.kind"


class ContainerStartError(Exception):
    """A container could not be created or started (the kubelet's RunContainerError)."""


class UnknownRuntime(ValueError):
    """A runtime name calicolab does not build."""

    def __init__(self, name: str):
        super().__init__(f"container runtime {name!r} is not implemented in calicolab "
                         f"(choose one of: {', '.join(RUNTIMES)})")


@dataclass
class Started:
    """A container that runs: its id, init PID, image reference and digest, log file."""

    cid: str
    pid: int
    image: str
    image_id: str
    log: str


def pod_labels(state: PodState, container: str | None = None) -> dict[str, str]:
    """The labels the CRI puts on a pod's containers (pure)."""
    labels = {"io.kubernetes.pod.name": state.name, "io.kubernetes.pod.namespace": state.namespace,
              "io.kubernetes.pod.uid": state.uid}
    if container is None:
        labels[LABEL_KIND] = "sandbox"
    else:
        labels[LABEL_KIND] = "container"
        labels["io.kubernetes.container.name"] = container
    return labels


def container_argv(command: list[str] | None, args: list[str] | None) -> list[str]:
    """The process args to override the image's: ``command`` + ``args``; ``args`` alone
    replace the image's Cmd (our images have no Entrypoint); nothing: the image's (pure)."""
    return list(command or []) + list(args or [])


def etc_files(pod_name: str, ip: str | None, node_resolv: str) -> dict[str, str]:
    """``/etc/hostname``, ``/etc/hosts`` and ``/etc/resolv.conf`` of a pod (pure).

    ``node_resolv`` is the resolv.conf the kubelet chose (cluster DNS for ``ClusterFirst``
    pods, else the node's)."""
    hosts = "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    if ip:
        hosts += f"{ip}\t{pod_name}\n"
    return {"hostname": pod_name + "\n", "hosts": hosts, "resolv.conf": node_resolv}


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not runtime.alive(pid):
            return True
        time.sleep(0.01)
    return not runtime.alive(pid)


class ContainerRuntime:
    """What the kubelet asks of a container runtime (see the module docstring)."""

    name = "?"

    def __init__(self, runtime_dir: str, lab: str, node: str):
        self.dir = runtime_dir
        self.lab, self.node = lab, node
        self.cgroup_parent = f"calicolab-{lab or 'nolab'}/{node}"
        self.pull_lock = threading.Lock()

    # pod files -------------------------------------------------------------------------
    def pod_dir(self, state: PodState) -> str:
        """Where the pod's etc files and logs live (same path in the node and the machine)."""
        return os.path.join(self.dir, "pods", state.uid)

    def log_path(self, state: PodState, container: str) -> str:
        """The container's log file."""
        return os.path.join(self.pod_dir(state), "containers", f"{container}.log")

    def write_etc(self, state: PodState, ip: str | None) -> dict[str, str]:
        """Write the pod's hostname/hosts/resolv.conf (the kubelet's ``state.resolv``, cluster
        DNS; else the node's); returns name -> path."""
        d = os.path.join(self.pod_dir(state), "etc")
        os.makedirs(d, exist_ok=True)
        resolv = state.resolv
        if not resolv:
            try:
                with open("/etc/resolv.conf") as f:
                    resolv = f.read()
            except OSError:
                resolv = ""
        out = {}
        for name, text in etc_files(state.name, ip, resolv).items():
            path = os.path.join(d, name)
            with open(path, "w") as f:
                f.write(text)
            out[name] = path
        return out

    def resolve(self, image: str) -> tuple[str, imagebuild.ImageSpec]:
        """(SPECS key, spec) of the built image a manifest's ``image`` runs; ImageNotFound."""
        spec = imagebuild.spec_for(image)
        if spec is None:
            raise ImageNotFound(image, known=sorted(imagebuild.ALIASES))
        key = next(k for k, s in imagebuild.SPECS.items() if s is spec)
        return key, spec

    # the interface ---------------------------------------------------------------------
    def create_sandbox(self, state: PodState, netns_dir: str) -> None:
        """Make the pod's network namespace (sets ``state.netns``)."""
        raise NotImplementedError

    def start_sandbox(self, state: PodState, ip: str | None) -> None:
        """Start the pause container once the network is set up (sets ``state.sandbox_pid``)."""
        raise NotImplementedError

    def start_container(self, state: PodState, container: dict, env: dict[str, str],
                        mounts: list[tuple[str, str]] | None = None) -> Started:
        """Create and start one container of the pod, with its volumes ``mounts`` ((source,
        mountPath) pairs, bind-mounted read-write; a source must be a path the daemon sees as
        the kubelet does: under the runtime dir, or a hostPath outside the node's private
        directories)."""
        raise NotImplementedError

    def visible(self, path: str) -> str:
        """A path of the kubelet's mount namespace as the runtime's daemon (in the machine's)
        can open it."""
        return f"/proc/{os.getpid()}/root{path}"

    def reap(self, state: PodState, name: str) -> int:
        """An exited container's exit code; the container is removed."""
        raise NotImplementedError

    def stop_container(self, state: PodState, name: str, grace: float = 2.0) -> None:
        """Stop (SIGTERM, then SIGKILL after ``grace``) and remove a container."""
        raise NotImplementedError

    def remove_sandbox(self, state: PodState) -> None:
        """Stop and remove the pause container, the netns and the pod's files."""
        raise NotImplementedError


class ContainerdRuntime(ContainerRuntime):
    """containerd through ``ctr``, namespace ``k8s.io``."""

    name = "containerd"

    def __init__(self, runtime_dir: str, lab: str, node: str):
        super().__init__(runtime_dir, lab, node)
        self.ctr = containerd.Ctr(containerd.socket_path(os.path.join(runtime_dir, "containerd")))
        self.have: dict[str, str] = {}

    def pull(self, image: str) -> tuple[str, str]:
        """Make sure the built image is in this containerd (import it: our "pull");
        returns (reference, digest)."""
        key, spec = self.resolve(image)
        ref = imagebuild.reference(spec)
        with self.pull_lock:
            if ref not in self.have:
                present = self.ctr.images()
                if ref not in present:
                    archive, _ = imagebuild.build(key)
                    self.ctr.import_image(str(archive))
                    present = self.ctr.images()
                self.have.update(present)
        return ref, f"{ref.rsplit(':', 1)[0]}@{self.have.get(ref, '')}"

    def create_sandbox(self, state: PodState, netns_dir: str) -> None:
        state.netns = os.path.join(netns_dir, runtime.new_netns_name())
        runtime.create_netns(state.netns)

    def _pid_of(self, cid: str) -> int:
        """The task's init PID: from the runc shim's bundle (``init.pid``, no ctr round trip),
        else from ``ctr task ls``."""
        bundle = os.path.join(self.dir, "containerd", "state", "io.containerd.runtime.v2.task",
                              containerd.NAMESPACE, cid)
        try:
            with open(os.path.join(bundle, "init.pid")) as f:
                pid = int(f.read().strip())
            if pid > 0:
                return pid
        except (OSError, ValueError):
            pass
        task = self.ctr.tasks().get(cid)
        if task is None or task.pid <= 0:
            raise ContainerStartError(f"container {cid[:12]} has no task after ctr run")
        return task.pid

    def start_sandbox(self, state: PodState, ip: str | None) -> None:
        ref, _ = self.pull("calicolab/pause")
        self.write_etc(state, ip)
        try:
            self.ctr.run(ref, state.sandbox_id, [], netns=self.visible(state.netns),
                         cgroup=f"{self.cgroup_parent}/{state.sandbox_id}", labels=pod_labels(state))
            state.sandbox_pid = self._pid_of(state.sandbox_id)
        except (containerd.CtrError, ContainerStartError) as exc:
            raise ContainerStartError(f"failed to start sandbox container: {exc}") from None
        res = subprocess.run(["nsenter", f"--uts=/proc/{state.sandbox_pid}/ns/uts", "hostname", state.name],
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise ContainerStartError(f"setting the pod's hostname: {res.stderr.strip()}")

    def start_container(self, state: PodState, container: dict, env: dict[str, str],
                        mounts: list[tuple[str, str]] | None = None) -> Started:
        ref, digest = self.pull(container["image"])
        name = container["name"]
        cid = runtime.new_sandbox_id()
        etc = os.path.join(self.pod_dir(state), "etc")
        log = self.log_path(state, name)
        os.makedirs(os.path.dirname(log), exist_ok=True)
        sb = state.sandbox_pid
        try:
            self.ctr.run(ref, cid, container_argv(container.get("command"), container.get("args")),
                         netns=f"/proc/{sb}/ns/net",
                         join={"ipc": f"/proc/{sb}/ns/ipc", "uts": f"/proc/{sb}/ns/uts"},
                         mounts=[*((os.path.join(etc, n), f"/etc/{n}", False) for n in ("hostname", "hosts", "resolv.conf")),
                                 *((src, dst, False) for src, dst in mounts or [])],
                         env=env, labels=pod_labels(state, name), log_file=log,
                         cgroup=f"{self.cgroup_parent}/{cid}", cwd=container.get("workingDir"))
            pid = self._pid_of(cid)
        except (containerd.CtrError, ContainerStartError) as exc:
            self.ctr.delete_task(cid)
            self.ctr.remove(cid)
            raise ContainerStartError(str(exc)) from None
        return Started(cid, pid, ref, digest, log)

    def reap(self, state: PodState, name: str) -> int:
        cid = state.container_ids.get(name, "")
        code = self.ctr.delete_task(cid)
        self.ctr.remove(cid)
        return -1 if code is None else code

    def stop_container(self, state: PodState, name: str, grace: float = 2.0) -> None:
        cid = state.container_ids.get(name)
        if not cid:
            return
        pid = state.pids.get(name, 0)
        ticks = state.ticks.get(name)
        ours = pid and runtime.alive(pid) and (not ticks or runtime.start_ticks(pid) == ticks)
        if ours:
            self.ctr.kill(cid, "SIGTERM")
            if not _wait_gone(pid, grace):
                self.ctr.kill(cid, "SIGKILL")
                _wait_gone(pid, 2.0)
        self.ctr.delete_task(cid)
        self.ctr.remove(cid)

    def remove_sandbox(self, state: PodState) -> None:
        if state.sandbox_pid:
            self.ctr.kill(state.sandbox_id, "SIGKILL")
            _wait_gone(state.sandbox_pid, 2.0)
            self.ctr.delete_task(state.sandbox_id)
        self.ctr.remove(state.sandbox_id)
        if state.netns:
            runtime.remove_netns(state.netns)
        shutil.rmtree(self.pod_dir(state), ignore_errors=True)


__all__ = ["ContainerRuntime", "ContainerdRuntime", "Started", "ContainerStartError", "UnknownRuntime",
           "pod_labels", "container_argv", "etc_files", "RUNTIMES"]
