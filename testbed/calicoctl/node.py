"""``calicoctl node status``: the BGP speaker's sessions, as calicoctl renders BIRD's.

Asks the node's BGP control socket (``/var/run/calico/bird.ctl``) for
``show protocols`` and renders it through the BGP engineer's
``agent.bgp.status.render_node_status``. Without a running speaker it prints
calicoctl's "Calico process is not running." and exits 1.
"""

from __future__ import annotations

import os
from typing import TextIO

NOT_RUNNING = "Calico process is not running.\n"


def status(ctl_socket: str, out: TextIO, err: TextIO) -> int:
    """Print the node status; 0 when the speaker answered, 1 otherwise."""
    if not os.path.exists(ctl_socket):
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
