"""Docker as a node's pod runtime, through the Docker SDK for Python (``docker``).

One dockerd per node (Debian's docker.io 20.10), started with ``nsenter --net`` into the
node's network namespace and using that node's containerd (``--containerd``, namespace
``moby``), with its data root, exec root and socket under the node's runtime directory: a
node's containers are then its own (``docker ps`` in a node lists that node's pods, as on a
real cluster) and a lab's daemons never touch another lab's or the machine's
``/var/lib/docker``. dockerd makes no bridge, no iptables rules and no forwarding change in
the node (``--bridge none --iptables=false --ip-forward=false --ip-masq=false``): pods are
wired by our CNI plugin only.

Pods are made as cri-dockerd makes them: a sandbox container ``k8s_POD_<pod>_<ns>_<uid>_0``
from the pause image with network ``none`` and hostname = the pod's name, whose netns
(``/proc/<pid>/ns/net``) the kubelet hands to CNI ADD; then each container
``k8s_<container>_<pod>_<ns>_<uid>_<attempt>`` joining the sandbox's network (and so its
UTS namespace) and IPC namespaces, with its own PID and mount namespaces and rootfs.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

from testbed.k8s import imagebuild
from testbed.k8s.cri import (
    ContainerRuntime,
    ContainerStartError,
    Started,
    _wait_gone,
    container_argv,
    pod_labels,
)
from testbed.k8s.runtime import PodState

API_VERSION = "1.41"  # docker.io 20.10


def socket_path(runtime_dir: str | os.PathLike) -> str:
    """dockerd's socket in a node's runtime directory."""
    return str(Path(runtime_dir) / "docker" / "docker.sock")


def daemon_argv(netns_path: str, runtime_dir: str | os.PathLike, lab: str, node: str) -> list[str]:
    """Write dockerd's (empty) config file and return the argv starting dockerd in the node's
    network namespace on the node's containerd."""
    base = Path(runtime_dir) / "docker"
    base.mkdir(parents=True, exist_ok=True)
    cfg = base / "daemon.json"
    # not /etc/docker/daemon.json, and the daemon's key not in /etc/docker: nothing of the machine's
    cfg.write_text(json.dumps({"deprecated-key-path": str(base / "key.json")}) + "\n")
    return ["nsenter", f"--net={netns_path}", "dockerd",
            "--config-file", str(cfg),
            "--data-root", str(base / "root"), "--exec-root", str(base / "exec"),
            "--pidfile", str(base / "docker.pid"), "-H", f"unix://{base / 'docker.sock'}",
            "--containerd", str(Path(runtime_dir) / "containerd" / "containerd.sock"),
            "--containerd-namespace", "moby", "--containerd-plugins-namespace", "moby-plugins",
            "--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-forward=false",
            "--ip-masq=false", "--userland-proxy=false",
            "--exec-opt", "native.cgroupdriver=cgroupfs", "--cgroup-parent", f"calicolab-{lab}/{node}",
            "--storage-driver", "overlay2", "--log-driver", "json-file"]


def ready(sock: str) -> bool:
    """True when dockerd answers ``GET /_ping`` on ``sock``."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1.0)
            s.connect(sock)
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in s.recv(256)
    except OSError:
        return False


def container_name(container: str, pod: str, namespace: str, uid: str, attempt: int) -> str:
    """cri-dockerd's name: ``k8s_<container>_<pod>_<namespace>_<uid>_<attempt>`` (``POD`` for the
    sandbox) (pure)."""
    return f"k8s_{container}_{pod}_{namespace}_{uid}_{attempt}"


class DockerRuntime(ContainerRuntime):
    """Pods as Docker containers (Docker SDK client of the node's dockerd)."""

    name = "docker"

    def __init__(self, runtime_dir: str, lab: str, node: str):
        super().__init__(runtime_dir, lab, node)
        import docker

        self.sdk = docker
        self.client = docker.DockerClient(base_url=f"unix://{socket_path(runtime_dir)}", version=API_VERSION,
                                          timeout=60)
        self.have: dict[str, str] = {}

    def version(self) -> str:
        """``docker://<server version>`` as the Node's containerRuntimeVersion."""
        try:
            return "docker://" + self.client.version().get("Version", "")
        except self.sdk.errors.DockerException:
            return "docker://"

    def pull(self, image: str) -> tuple[str, str]:
        """Load the built image into dockerd if it lacks it (our "pull"); (reference, id)."""
        key, spec = self.resolve(image)
        ref = imagebuild.reference(spec)
        with self.pull_lock:
            if ref not in self.have:
                try:
                    img = self.client.images.get(ref)
                except self.sdk.errors.ImageNotFound:
                    archive, _ = imagebuild.build(key)
                    with open(archive, "rb") as f:
                        self.client.images.load(f.read())
                    img = self.client.images.get(ref)
                self.have[ref] = img.id
        return ref, f"{ref.rsplit(':', 1)[0]}@{self.have[ref]}"

    def _pid(self, c) -> int:  # noqa: ANN001 - an SDK Container
        c.reload()
        st = c.attrs.get("State", {})
        pid = int(st.get("Pid") or 0)
        if pid <= 0 and (st.get("Error") or st.get("Status") not in ("exited", "dead")):
            raise ContainerStartError(f"container {c.name} is not running: {st.get('Error') or st.get('Status')}")
        return pid  # 0: it started and has already exited (the kubelet reaps it)

    def create_sandbox(self, state: PodState, netns_dir: str) -> None:
        ref, _ = self.pull("calicolab/pause")
        name = container_name("POD", state.name, state.namespace, state.uid, 0)
        try:
            c = self.client.containers.run(ref, name=name, detach=True, network_mode="none", hostname=state.name,
                                           ipc_mode="shareable", labels=pod_labels(state))
            state.sandbox_id = c.id
            state.sandbox_pid = self._pid(c)
        except self.sdk.errors.DockerException as exc:
            raise ContainerStartError(f"failed to start sandbox container {name}: {exc}") from None
        state.netns = f"/proc/{state.sandbox_pid}/ns/net"

    def start_sandbox(self, state: PodState, ip: str | None) -> None:
        self.write_etc(state, ip)

    def start_container(self, state: PodState, container: dict, env: dict[str, str],
                        mounts: list[tuple[str, str]] | None = None) -> Started:
        ref, image_id = self.pull(container["image"])
        cname = container["name"]
        name = container_name(cname, state.name, state.namespace, state.uid, state.restarts.get(cname, 0))
        etc = os.path.join(self.pod_dir(state), "etc")
        argv = container_argv(container.get("command"), container.get("args"))
        try:
            c = self.client.containers.run(
                ref, command=argv or None, name=name, detach=True,
                network_mode=f"container:{state.sandbox_id}", ipc_mode=f"container:{state.sandbox_id}",
                environment=env, labels=pod_labels(state, cname), working_dir=container.get("workingDir"),
                volumes={os.path.join(etc, "hosts"): {"bind": "/etc/hosts", "mode": "rw"},
                         os.path.join(etc, "resolv.conf"): {"bind": "/etc/resolv.conf", "mode": "rw"},
                         **{src: {"bind": dst, "mode": "rw"} for src, dst in mounts or []}})
            pid = self._pid(c)
        except self.sdk.errors.DockerException as exc:
            self._remove(name)
            raise ContainerStartError(str(exc)) from None
        c.reload()
        return Started(c.id, pid, ref, image_id, c.attrs.get("LogPath", ""))

    def _remove(self, name_or_id: str) -> None:
        try:
            self.client.containers.get(name_or_id).remove(force=True)
        except self.sdk.errors.DockerException:
            pass

    def reap(self, state: PodState, name: str) -> int:
        """The exit code; the dead container is kept (its log is what ``kubectl logs`` shows
        until the restart) and removed with the pod."""
        try:
            return int(self.client.containers.get(state.container_ids.get(name, "")).wait(timeout=10)["StatusCode"])
        except self.sdk.errors.DockerException:
            return -1

    def stop_container(self, state: PodState, name: str, grace: float = 2.0) -> None:
        cid = state.container_ids.get(name)
        if not cid:
            return
        try:
            self.client.containers.get(cid).stop(timeout=max(1, int(grace)))
        except self.sdk.errors.DockerException:
            pass
        pid = state.pids.get(name, 0)
        if pid:
            _wait_gone(pid, 2.0)

    def remove_sandbox(self, state: PodState) -> None:
        """Every container of the pod (dead attempts included), then the sandbox and files."""
        try:
            for c in self.client.containers.list(all=True, filters={"label": f"io.kubernetes.pod.uid={state.uid}"}):
                try:
                    c.remove(force=True)
                except self.sdk.errors.DockerException:
                    pass
        except self.sdk.errors.DockerException:
            pass
        if state.sandbox_pid:
            _wait_gone(state.sandbox_pid, 2.0)
        shutil.rmtree(self.pod_dir(state), ignore_errors=True)


__all__ = ["DockerRuntime", "daemon_argv", "socket_path", "ready", "container_name", "API_VERSION"]
