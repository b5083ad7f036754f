"""Pick the kubelet's container runtime by name (``--container-runtime``; docs/runtimes.md)."""

from __future__ import annotations

from testbed.k8s.cri import RUNTIMES, ContainerdRuntime, ContainerRuntime, UnknownRuntime


def make_runtime(name: str, runtime_dir: str | None, lab: str, node: str) -> ContainerRuntime | None:
    """The runtime called ``name`` (None for ``netns``: the kubelet's own processes);
    :class:`~testbed.k8s.cri.UnknownRuntime` naming it for a runtime calicolab does not build."""
    if name == "netns":
        return None
    if name not in RUNTIMES:
        raise UnknownRuntime(name)
    if not runtime_dir:
        raise ValueError(f"runtime {name} needs --runtime-dir (where its daemon's socket is)")
    if name == "containerd":
        return ContainerdRuntime(runtime_dir, lab, node)
    from testbed.k8s.dockerrt import DockerRuntime

    return DockerRuntime(runtime_dir, lab, node)
