"""The kubelet API (``https://<node IP>:10250``) that the API server proxies ``kubectl logs``,
``kubectl exec`` and ``kubectl port-forward`` to: the protocol side is
:class:`testbed.apiserver.kubeletserver.KubeletServer` (contract in docs/apiserver.md); this
module is the node side, a :class:`PodBackend` that reaches the kubelet's own pods.

* logs: the container's output file (``<root-dir>/pods/<uid>/containers/<c>/log``; the one of
  the previous instance is kept as ``log.previous`` when a container restarts; a containerd or
  Docker container's log file, Docker's json-file lines decoded), ``tailLines``,
  ``follow`` until the container exits or the pod goes, ``limitBytes``. The runtime records no
  per-line times, so ``timestamps`` and ``sinceSeconds`` are refused (400, saying so);
* exec: ``nsenter`` into the container process' network and mount namespaces and working
  directory, with the container's environment (read from ``/proc/<pid>/environ``); into every
  namespace of a containerd or Docker container (PID, mount = its rootfs, UTS, IPC, network)
  with the environment of its OCI spec, as ``runc exec`` does;
* port-forward: a TCP connection to ``127.0.0.1:<port>`` made inside the pod's netns.

TLS: a self-signed ECDSA serving certificate made at start (the kubelet's default,
``<root-dir>/pki/kubelet.crt``); clients must present a certificate of the cluster CA (the
API server's ``apiserver-kubelet-client``). Authorization beyond that is not checked (the
real kubelet asks the API server with a SubjectAccessReview).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any

from testbed.apiserver.kubeletserver import Backend, LogOptions, NotFoundError

log = logging.getLogger("kubelet.api")

#: runtimes whose containers have their own root filesystem and namespaces (docs/runtimes.md)
CONTAINER_RUNTIMES = ("containerd", "docker")
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def decode_docker_log(data: bytes) -> tuple[bytes, bytes]:
    """Docker's json-file log lines (``{"log": ..., "stream": ..., "time": ...}``) as the
    container wrote them (pure): (decoded output, an unfinished last line to keep)."""
    import json

    lines = data.split(b"\n")
    out = []
    for line in lines[:-1]:
        try:
            out.append(json.loads(line)["log"].encode())
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return b"".join(out), lines[-1]


def exec_command(runtime: str, pid: int, env: list[str], command: list[str]) -> list[str]:
    """The command line running ``command`` in the container whose process is ``pid`` (pure):
    its network and mount namespaces and working directory for a process of the kubelet
    (``netns`` runtime: its mount namespace is the node's); every namespace of a containerd
    or Docker container. The environment is the container's."""
    if runtime in CONTAINER_RUNTIMES:
        return ["nsenter", "-t", str(pid), "-a", "--", "env", "-i", *env, *command]
    return ["nsenter", "-t", str(pid), "-n", "-m", "-w", "--", "env", "-i", *env, *command]


def container_environ(pid: int) -> list[str]:
    """A containerd or Docker container's environment from its OCI spec: the runc shim (the
    init process' parent, for both) runs in the bundle directory holding ``config.json``
    (``/proc/<pid>/environ`` is no use there: nginx overwrites it with its title)."""
    import json

    try:
        with open(f"/proc/{pid}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{ppid}/cwd/config.json") as f:
            return list(json.load(f)["process"]["env"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return [DEFAULT_PATH]


def _connect_in_netns(netns_path: str, port: int, timeout: float = 5.0) -> socket.socket:
    """A TCP socket connected to 127.0.0.1:``port`` inside the netns at ``netns_path`` (the
    calling thread enters it for the connect and comes back; the socket stays there)."""
    from kernel.netns import entered

    with entered(netns_path):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


def exec_argv(kubelet: Any, st: Any, container: str, command: list[str]) -> list[str]:
    """The command line running ``command`` in ``container`` of the pod ``st`` (a PodState)
    of ``kubelet``: what ``kubectl exec`` and an exec probe run. In a container of one of the
    project's component images the image's binary is the project's program
    (:func:`testbed.k8s.images.exec_command`: ``/bin/calico-node -felix-ready``,
    ``/usr/bin/check-status -r``). Raises NotFoundError when the container is not running,
    FileNotFoundError when the command is not found in its PATH."""
    from testbed.k8s import images

    pid = st.pids.get(container)
    if pid is None:
        raise NotFoundError(f'container "{container}" not found in pod {st.namespace}/{st.name}')
    if not kubelet._alive(st.uid, container, pid):
        raise NotFoundError(f'container "{container}" in pod {st.namespace}/{st.name} is not running')
    runtime = st.container_runtimes.get(container, "netns")
    if runtime in CONTAINER_RUNTIMES:
        env = container_environ(pid)
        root = f"/proc/{pid}/root"  # the container's own filesystem
    else:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = [e.decode(errors="replace") for e in f.read().split(b"\0") if e]
        except OSError:
            env = []
        root = ""
        image = st.images.get(container)
        if isinstance(image, str) and command:
            workdir = os.path.join(st.pod_dir(kubelet.root_dir), "containers", container)
            command = images.exec_command(image, command, workdir)
    if "/" not in command[0]:
        path = next((e[5:] for e in env if e.startswith("PATH=")), os.defpath)
        if shutil.which(command[0], path=os.pathsep.join(root + d for d in path.split(os.pathsep))) is None:
            raise FileNotFoundError(2, "No such file or directory")
    return exec_command(runtime, pid, env, command)


class PodBackend(Backend):
    """The kubelet's pods, for the kubelet API."""

    def __init__(self, kubelet: Any):
        self.kubelet = kubelet

    def _state(self, ns: str, pod: str) -> Any:
        for st in list(self.kubelet.states.values()):
            if st.namespace == ns and st.name == pod:
                return st
        raise NotFoundError(f'pod "{pod}" in namespace "{ns}" is not running on node {self.kubelet.node}')

    async def logs(self, ns: str, pod: str, container: str, opts: LogOptions) -> AsyncIterator[bytes]:
        st = self._state(ns, pod)
        if container not in st.pids and container not in st.container_ids:
            raise NotFoundError(f'container "{container}" in pod "{pod}" is not valid')
        if opts.timestamps or opts.since_seconds is not None:
            raise ValueError("calicolab's container runtime keeps no per-line times: --timestamps and "
                             "--since are not available")
        runtime = st.container_runtimes.get(container, "netns")
        if runtime in CONTAINER_RUNTIMES:
            if opts.previous:
                raise ValueError(f"--previous is not available for {runtime} containers (docs/runtimes.md)")
            path = st.logs.get(container, "")
        else:
            path = os.path.join(st.pod_dir(self.kubelet.root_dir), "containers", container, "log")
        docker = runtime == "docker"
        if opts.previous:
            path += ".previous"
            if not os.path.exists(path):
                raise ValueError(f'previous terminated container "{container}" in pod "{pod}" not found')
        try:
            f = open(path, "rb")  # noqa: SIM115 - kept open while following
        except FileNotFoundError:
            return
        with f:
            data = f.read()
            rest = b""
            if docker:
                data, rest = decode_docker_log(data)
            if opts.tail_lines is not None:
                lines = data.splitlines(keepends=True)
                data = b"".join(lines[-opts.tail_lines:]) if opts.tail_lines > 0 else b""
            if data:
                yield data
            if not opts.follow or opts.previous:
                return
            while True:
                chunk = f.read(65536)
                if chunk and docker:
                    chunk, rest = decode_docker_log(rest + chunk)
                if chunk:
                    yield chunk
                    continue
                alive = st.uid in self.kubelet.states and self.kubelet._alive(st.uid, container,
                                                                             st.pids.get(container, 0))
                if not alive:
                    tail = f.read()
                    if docker:
                        tail, _ = decode_docker_log(rest + tail + b"\n")
                    if tail:
                        yield tail
                    return
                await asyncio.sleep(0.1)

    async def exec_argv(self, ns: str, pod: str, container: str, command: list[str], tty: bool) -> list[str]:
        st = self._state(ns, pod)
        return exec_argv(self.kubelet, st, container, command)

    async def open_port(self, ns: str, pod: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        st = self._state(ns, pod)
        if not st.netns:  # a hostNetwork pod: the node's own netns
            return await asyncio.open_connection("127.0.0.1", port)
        sock = await asyncio.get_running_loop().run_in_executor(None, _connect_in_netns, st.netns, port)
        return await asyncio.open_connection(sock=sock)


def serving_cert(root_dir: str, node: str, node_ip: str) -> tuple[str, str]:
    """The kubelet's self-signed serving cert and key (made once, kept in ``<root-dir>/pki``)."""
    from testbed.apiserver import pki

    d = os.path.join(root_dir, "pki")
    crt, key = os.path.join(d, "kubelet.crt"), os.path.join(d, "kubelet.key")
    if not (os.path.exists(crt) and os.path.exists(key)):
        os.makedirs(d, exist_ok=True)
        cert_pem, key_pem = pki.self_signed_serving(node, (node,), (node_ip,))
        for path, data in ((crt, cert_pem), (key, key_pem)):
            fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(path + ".tmp", path)
    return crt, key


def client_ca_file(kubelet: Any) -> str | None:
    """The cluster CA (from the kubelet's kubeconfig) as a file, to verify the API server's
    client certificate."""
    cfg = kubelet.api.config
    if cfg.ca_file:
        return cfg.ca_file
    if not cfg.ca_data:
        return None
    path = os.path.join(kubelet.root_dir, "pki", "ca.crt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(cfg.ca_data)
    return path


def run(kubelet: Any, sock: socket.socket, stop: threading.Event) -> None:
    """Serve the kubelet API on the listening ``sock`` until ``stop`` (runs its own event
    loop; call on a thread). :func:`testbed.k8s.kubelet.serve_api` binds the socket and
    calls this once a first client connects."""
    from testbed.apiserver.kubeletserver import KubeletServer

    host, port = sock.getsockname()[:2]
    try:
        crt, key = serving_cert(kubelet.root_dir, kubelet.node, kubelet.node_ip)
        server = KubeletServer(PodBackend(kubelet), crt, key, client_ca_file(kubelet))
    except Exception:  # noqa: BLE001 - logs/exec unavailable, the node still runs pods
        log.exception("kubelet API not started")
        return

    async def main() -> None:
        runner = await server.start(host, port, sock=sock)
        log.info("kubelet API on https://%s:%d", host, port)
        while not stop.is_set():
            await asyncio.sleep(0.2)
        await runner.cleanup()

    asyncio.run(main())
