"""``calicoctl node status``: the BGP speaker's sessions, as calicoctl renders BIRD's.

Asks the node's BGP control socket (``/var/run/calico/bird.ctl``) for
``show protocols`` and renders it through the BGP engineer's
``agent.bgp.status.render_node_status``. Without a speaker, as calicoctl it looks at
the processes: a calico-node of this network namespace without BGP (``calico_backend:
vxlan``) gives "Calico process is running." and "The BGP backend process (BIRD) is not
running."; no calico-node gives "Calico process is not running." and exit 1.
"""

from __future__ import annotations

import os
from typing import TextIO

NOT_RUNNING = "Calico process is not running.\n"
NO_BIRD = "Calico process is running.\n\nThe BGP backend process (BIRD) is not running.\n\n"


def calico_node_running(proc: str = "/proc") -> bool:
    """Whether a calico-node process runs in this network namespace (calicoctl's process
    check; ours is the ``calico-node`` entry point or ``python -m agent.main``)."""
    try:
        mine = os.stat(f"{proc}/self/ns/net").st_ino
    except OSError:
        return False
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        try:
            with open(f"{proc}/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if os.stat(f"{proc}/{pid}/ns/net").st_ino != mine:
                continue
        except OSError:
            continue
        if any(a.endswith(b"/calico-node") or a == b"calico-node" for a in argv[:2]) or b"agent.main" in argv[:3]:
            return True
    return False


def status(ctl_socket: str, out: TextIO, err: TextIO) -> int:
    """Print the node status; 0 when the speaker answered (or calico-node runs without BGP),
    1 otherwise."""
    if not os.path.exists(ctl_socket):
        if calico_node_running():
            out.write(NO_BIRD)
            return 0
        out.write(NOT_RUNNING)
        return 1
    try:
        from agent.bgp.ctl import query
        from agent.bgp.status import render_node_status
    except ImportError:
        out.write(NOT_RUNNING)
        return 1
    try:
        protocols = query(ctl_socket, "show protocols")
    except Exception as exc:  # CtlError / OSError: no speaker answering
        out.write(NOT_RUNNING)
        err.write(f"Error querying BIRD: unable to connect to BIRDv4 socket: {exc}\n")
        return 1
    out.write(render_node_status(protocols))
    return 0
