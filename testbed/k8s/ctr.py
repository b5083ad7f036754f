"""``ctr`` inside a lab node: the containerd client's view of the kubelet's pods.

Lab nodes run no containerd: the testbed kubelet starts each pod's workload
process itself. So that the walkthrough's ``ctr -n k8s.io task list`` (container
PIDs) works in a node's shell, this front end answers ``task list`` and
``containers list`` for the containers the kubelet runs on this node, in ctr's
own table format, from the kubelet's runtime state on the node
(``/var/lib/kubelet/pods/*/state.json``), as the real ctr reads containerd's. Anything else, or a real containerd being addressed
(``-a``/``--address``, ``CONTAINERD_ADDRESS``, a live /run/containerd/containerd.sock),
goes to the real ``/usr/bin/ctr``.
"""

from __future__ import annotations

import os
import socket
import sys

REAL_CTR = "/usr/bin/ctr"
DEFAULT_SOCKET = "/run/containerd/containerd.sock"


def _real_containerd(argv: list[str]) -> bool:
    if os.environ.get("CONTAINERD_ADDRESS"):
        return True
    if any(a in ("-a", "--address") or a.startswith("--address=") for a in argv):
        return True
    if os.path.exists(DEFAULT_SOCKET):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(0.2)
            try:
                s.connect(DEFAULT_SOCKET)
                return True
            except OSError:
                return False
    return False


def _parse(argv: list[str]) -> tuple[str, list[str]]:
    ns = os.environ.get("CONTAINERD_NAMESPACE", "default")
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-n", "--namespace") and i + 1 < len(argv):
            ns, i = argv[i + 1], i + 2
            continue
        if a.startswith("--namespace="):
            ns = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return ns, rest


def tasks(states: list, alive=None) -> list[tuple[str, int, str]]:  # noqa: ANN001
    """(task id, pid, STATUS) for every container of the kubelet's pod ``states`` (pure but
    for ``alive(pid, ticks)``, which says whether the process still runs)."""
    from testbed.k8s import runtime

    def running(pid: int, ticks: int | None) -> bool:
        return runtime.alive(pid) and (not ticks or runtime.start_ticks(pid) == ticks)

    alive = alive or running
    out = []
    for st in states:
        for name, cid in sorted(st.container_ids.items()):
            pid = st.pids.get(name, 0)
            out.append((cid, pid, "RUNNING" if pid and alive(pid, st.ticks.get(name)) else "STOPPED"))
    return out


def containers(states: list) -> list[tuple[str, str, str]]:
    """(container id, image, runtime) for every container of the pod ``states`` (pure)."""
    return [(cid, st.images.get(name, ""), "io.containerd.runc.v2")
            for st in states for name, cid in sorted(st.container_ids.items())]


def table(header: tuple[str, ...], rows: list[tuple]) -> str:
    """ctr's tabwriter layout: columns padded to the widest cell plus 4 spaces."""
    cells = [header, *[tuple(str(c) for c in r) for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("".join(f"{c:<{w + 4}}" if i < len(r) - 1 else c for i, (c, w) in
                             enumerate(zip(r, widths, strict=True))).rstrip() for r in cells)


def _node_pods() -> list:
    """The kubelet's pod states on this node (its root dir, /var/lib/kubelet in a lab)."""
    from testbed.k8s.kubelet import default_root_dir
    from testbed.k8s.runtime import PodState

    node = os.environ.get("NODE_NAME", "")
    lab = os.environ.get("CALICOLAB_LAB", "")
    return [st for st in PodState.load_all(default_root_dir(node)) if st.node == node and st.lab == lab]


def main(argv: list[str] | None = None) -> int:
    """Entry point (``ctr`` on a lab node's PATH)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if _real_containerd(argv) or any(a in ("-h", "--help", "--version", "-v") for a in argv):
        os.execv(REAL_CTR, ["ctr", *argv])
    ns, rest = _parse(argv)
    verb = rest[:2]
    if len(verb) == 2 and verb[0] in ("task", "tasks", "t") and verb[1] in ("list", "ls"):
        rows = tasks(_node_pods()) if ns == "k8s.io" else []
        print(table(("TASK", "PID", "STATUS"), rows))
        return 0
    if len(verb) == 2 and verb[0] in ("containers", "container", "c") and verb[1] in ("list", "ls"):
        rows = containers(_node_pods()) if ns == "k8s.io" else []
        print(table(("CONTAINER", "IMAGE", "RUNTIME"), rows))
        return 0
    print("ctr: no containerd runs in a calicolab node (the testbed kubelet starts the pods); "
          "this ctr answers 'ctr -n k8s.io task list' and 'ctr -n k8s.io containers list'",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
