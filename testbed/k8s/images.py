"""The testbed's "container images": what process runs in a pod for an image name.

There is no registry and no filesystem image: an image name maps to a real program
started inside the pod's network namespace. ``nginx`` serves HTTP 200 on :80 (busybox's
httpd with an nginx welcome page), busybox-like images idle so ``kubectl exec`` works,
``calico/node`` runs the project's calico-node (a hostNetwork DaemonSet pod, as calico.yaml
installs it; its command ``calico-node -init -best-effort``, calico.yaml's ``mount-bpffs`` init
container, runs that step of calico-node), ``calico/cni`` runs the program its command names
(``/opt/cni/bin/install``, the image's default: ``agent.installcni``, calico.yaml's
``install-cni`` init container; ``/opt/cni/bin/calico-ipam -upgrade``: ``cni.upgrade``, its
``upgrade-ipam``), ``calico/kube-controllers`` and ``calico/typha`` run ``agent.kubecontrollers``
and ``agent.typha`` (Typha's pod is ready once it listens on 5473), ``tigera/operator`` runs
calicolab's operator (:mod:`testbed.k8s.tigera`), ``calico/csi`` and
``calico/node-driver-registrar`` (csi-node-driver's containers) run ``agent.csi`` and
``agent.csi.registrar``, and an unknown image is an error the kubelet reports as
``ImagePullBackOff``. Images match by repository whatever the registry and tag
(``docker.io/calico/cni:v3.28.1``, ``quay.io/calico/node:v3.27.0``).

The control plane's images run the project's components: ``kube-apiserver``
(:mod:`testbed.apiserver`), ``kube-controller-manager`` (:mod:`testbed.k8s.controllers`),
``kube-scheduler`` (:mod:`testbed.k8s.scheduler`), ``kube-proxy`` (:mod:`testbed.k8s.kubeproxy`),
``coredns/coredns`` (:mod:`testbed.k8s.dns`), and ``etcd`` the real etcd; a container's
``command`` names the component's binary (as kubeadm's manifests do: ``kube-apiserver
--flag ...``), which is replaced by the project's program, its flags kept.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
#: Typha's port (syncproto.DefaultPort)
TYPHA_PORT = 5473

NGINX_INDEX = """<!DOCTYPE html>
<html>
<head><title>Welcome to nginx!</title></head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and working.</p>
<p>Served by calicolab pod {pod}.</p>
</body>
</html>
"""

#: repository name (no registry, no tag; a bare name also matches any org's) -> behaviour
IMAGES: dict[str, str] = {
    "calico/node": "calico-node",
    "calico/cni": "calico-cni",
    "calico/kube-controllers": "kube-controllers",
    "calico/typha": "typha",
    "tigera/operator": "tigera-operator",
    "calico/csi": "csi-driver",
    "calico/node-driver-registrar": "node-driver-registrar",
    "csi-node-driver-registrar": "node-driver-registrar",  # registry.k8s.io/sig-storage's
    "etcd": "etcd",
    "kube-apiserver": "kube-apiserver",
    "kube-controller-manager": "kube-controller-manager",
    "kube-scheduler": "kube-scheduler",
    "kube-proxy": "kube-proxy",
    "coredns/coredns": "coredns",
    "nginx": "http",
    "httpd": "http",
    "busybox": "idle",
    "alpine": "idle",
    "ubuntu": "idle",
    "debian": "idle",
    "netshoot": "idle",
    "curl": "idle",
    "pause": "idle",
    "agnhost": "idle",
}


class ImageNotFound(Exception):
    """The image is not in the table (the kubelet's ErrImagePull / ImagePullBackOff)."""

    def __init__(self, image: str, known: list[str] | None = None):
        self.image = image
        names = ", ".join(sorted(IMAGES) if known is None else known)
        super().__init__(
            f'failed to pull and unpack image "{qualified(image)}": not found '
            f"(calicolab knows these images: {names})"
        )


@dataclass
class Workload:
    """What to start in the pod: argv, files to write first, and the TCP port it listens on."""

    argv: list[str]
    files: dict[str, str] = field(default_factory=dict)
    port: int | None = None


def repository(image: str) -> str:
    """``docker.io/library/nginx:1.25@sha256:..`` -> ``nginx``; ``quay.io/calico/node:v3.26`` ->
    ``calico/node`` when the table knows it by that path."""
    name = image.split("@", 1)[0]
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]  # registry host
    parts[-1] = parts[-1].split(":", 1)[0]
    path = "/".join(parts)
    if path in IMAGES:
        return path
    return parts[-1]


def qualified(image: str) -> str:
    """The fully qualified reference a runtime would pull (``docker.io/library/nginx:latest``)."""
    name = image
    first = name.split("/", 1)[0]
    if "/" not in name:
        name = f"docker.io/library/{name}"
    elif "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    if ":" not in name.rsplit("/", 1)[-1] and "@" not in name:
        name += ":latest"
    return name


def calico_node_argv() -> list[str]:
    """calico-node from the project's venv (the entry point agent.main:main)."""
    exe = os.path.join(os.path.dirname(sys.executable), "calico-node")
    return [exe if os.path.exists(exe) else shutil.which("calico-node") or "calico-node"]


def calico_argv(image: str, behaviour: str, command: list[str], args: list[str]) -> list[str]:
    """The program for a container of Calico's ``calico/node`` or ``calico/cni`` image: the
    binary its command names (any directory: ``/bin/calico-node``, ``/opt/cni/bin/install``),
    its arguments kept; no command runs the image's entrypoint (calico-node; install).
    A binary calicolab does not provide is a ValueError naming it (CreateContainerError)."""
    argv = command + args
    if behaviour == "calico-node":
        if not command:
            return calico_node_argv() + args
        if os.path.basename(command[0]) == "calico-node":
            return calico_node_argv() + argv[1:]
        raise ValueError(f"image {qualified(image)}: command {command[0]!r} is not available in calicolab's "
                         "calico/node (it runs calico-node and its flags: docs/install.md)")
    binary = os.path.basename(argv[0]) if argv else "install"
    rest = argv[1:] if argv else []
    if binary == "install":
        return [sys.executable, "-m", "agent.installcni", *rest]
    if binary == "calico-ipam" and rest[:1] == ["-upgrade"]:
        return [sys.executable, "-m", "cni.upgrade", *rest[1:]]
    raise ValueError(f"image {qualified(image)}: command {' '.join(argv)!r} is not available in calicolab's "
                     "calico/cni (it runs /opt/cni/bin/install and /opt/cni/bin/calico-ipam -upgrade; the "
                     "plugins themselves are run by the kubelet's CNI calls)")


#: control-plane images: behaviour -> (the binary their commands name, the program that runs)
COMPONENTS = {
    "etcd": ("etcd", lambda: [shutil.which("etcd") or "etcd"]),
    "kube-apiserver": ("kube-apiserver", lambda: [sys.executable, "-m", "testbed.apiserver"]),
    "kube-controller-manager": ("kube-controller-manager", lambda: [sys.executable, "-m", "testbed.k8s.controllers"]),
    "kube-scheduler": ("kube-scheduler", lambda: [sys.executable, "-m", "testbed.k8s.scheduler"]),
    "kube-proxy": ("kube-proxy", lambda: [sys.executable, "-m", "testbed.k8s.kubeproxy"]),
    "coredns": ("coredns", lambda: [sys.executable, "-m", "testbed.k8s.dns"]),
    # not the control plane's, but run the same way: its Deployment's command names `operator`
    "tigera-operator": ("operator", lambda: [sys.executable, "-m", "testbed.k8s.tigera"]),
    # csi-node-driver's containers (agent.csi, docs/csi.md): the images' entry points
    "csi-driver": ("csi-driver", lambda: [sys.executable, "-m", "agent.csi"]),
    "node-driver-registrar": ("csi-node-driver-registrar", lambda: [sys.executable, "-m", "agent.csi.registrar"]),
}


def is_component(image: str) -> bool:
    """True for the project's own components (calico/node, kube-controllers, typha, calico/csi,
    node-driver-registrar and the control plane's images: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
    kube-proxy, coredns): their "image" is a program of this machine, run as a process by
    every runtime."""
    return IMAGES.get(repository(image)) in ("calico-node", "calico-cni", "kube-controllers", "typha", *COMPONENTS)


def known(image: str) -> bool:
    """True when the table has the image."""
    return repository(image) in IMAGES


def resolve(image: str, command: list[str] | None, args: list[str] | None, workdir: str,
            pod_name: str = "") -> Workload:
    """The workload for a container: its ``command``/``args`` if given, else the image's
    default. ``workdir`` is a private directory for the container's files.
    Raises :class:`ImageNotFound` for an unknown image."""
    behaviour = IMAGES.get(repository(image))
    if behaviour is None:
        raise ImageNotFound(image)
    if behaviour in COMPONENTS:
        binary, impl = COMPONENTS[behaviour]
        cmd = list(command or [])
        if cmd and os.path.basename(cmd[0]) == binary:
            cmd = cmd[1:]
        elif cmd:
            raise ValueError(f"image {qualified(image)} runs {binary}: command {cmd[0]!r} is not available in it")
        argv = impl() + cmd + list(args or [])
        port = {"coredns": 53, "kube-apiserver": None}.get(behaviour)
        return Workload(argv=argv, port=port)
    if behaviour in ("calico-node", "calico-cni"):
        return Workload(argv=calico_argv(image, behaviour, list(command or []), list(args or [])))
    if command or args:
        argv = list(command or []) + list(args or [])
        if behaviour == "idle" and not command:
            argv = ["sleep", "infinity"] if not argv else argv
        return Workload(argv=argv)
    if behaviour == "kube-controllers":
        # in-cluster config: the ServiceAccount token the kubelet mounts into the pod; its status
        # file (upstream: /status/status.json) is the container's own (see status_file)
        return Workload(argv=[sys.executable, "-m", "agent.kubecontrollers", "--status-file", status_file(workdir)])
    if behaviour == "typha":
        return Workload(argv=[sys.executable, "-m", "agent.typha"], port=TYPHA_PORT)
    if behaviour == "http":
        www = os.path.join(workdir, "www")
        return Workload(
            argv=[BUSYBOX, "httpd", "-f", "-p", "80", "-h", www],
            files={os.path.join(www, "index.html"): NGINX_INDEX.format(pod=pod_name)},
            port=80,
        )
    return Workload(argv=["sleep", "infinity"])


def status_file(workdir: str) -> str:
    """Where calico-kube-controllers writes its status file and ``check-status`` reads it, for
    the container whose private directory is ``workdir``. Upstream's default is
    /status/status.json in the container's own filesystem; calicolab's containers of the
    project's images share the node's filesystem, so the path is the container's directory
    (two kube-controllers on one node, or in two labs, never read each other's)."""
    return os.path.join(workdir, "status", "status.json")


def exec_command(image: str, command: list[str], workdir: str) -> list[str]:
    """The command line that runs ``command`` (a ``kubectl exec`` or an exec probe) in a
    container of ``image`` whose private directory is ``workdir`` (pure). In the project's
    component images the image's binaries are the project's programs, as container start
    resolves them: ``/bin/calico-node -felix-ready -bird-ready`` in calico/node runs the
    project's calico-node with those flags, ``/usr/bin/check-status -r`` in
    calico/kube-controllers reads that container's status file, a control-plane image's
    binary (``kube-apiserver``, ``etcd``...) its program. Anything else runs as given."""
    if not command:
        return command
    behaviour = IMAGES.get(repository(image))
    binary, rest = os.path.basename(command[0]), list(command[1:])
    if behaviour == "calico-node" and binary == "calico-node":
        return calico_node_argv() + rest
    if behaviour == "kube-controllers":
        if binary == "check-status":
            return [sys.executable, "-m", "agent.kubecontrollers.checkstatus", "--file", status_file(workdir), *rest]
        if binary == "kube-controllers":
            return [sys.executable, "-m", "agent.kubecontrollers", *rest]
    if behaviour in COMPONENTS and binary == COMPONENTS[behaviour][0]:
        return COMPONENTS[behaviour][1]() + rest
    return list(command)
