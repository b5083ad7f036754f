"""``calicoctl version [--poll=<POLL>]``: the client's version and the cluster's.

As calicoctl v3.28.1 (``commands/version.go``) prints it: ``Client Version:`` and
``Git commit:``, then ``Cluster Version:`` and ``Cluster Type:`` from ClusterInformation
``default`` (``unknown`` when a field is empty). If that cannot be read the error goes to
stderr and the exit code is 1. ``--poll`` re-reads at that interval and prints the cluster
lines again only when they change.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TextIO

from datastore.version import CALICO_VERSION, GIT_REVISION

VERSION = CALICO_VERSION


def run(client: Callable[[], Any], poll: str | None, out: TextIO, err: TextIO,
        sleep: Callable[[float], None] = time.sleep) -> int:
    """Print the version lines; ``client`` makes the datastore client (only after the
    client lines are out, as calicoctl connects after printing them)."""
    from datastore.duration import parse_duration

    interval = 0.0
    if poll:
        try:
            interval = parse_duration(poll)
        except ValueError:
            # calicoctl prints the (zero) parsed duration here, not the text given
            err.write("Invalid poll duration specified: 0s\n")
            return 1
    out.write(f"Client Version:    {VERSION}\n")
    out.write(f"Git commit:        {GIT_REVISION}\n")
    out.flush()
    ds = client()
    shown: tuple[str, str] = ("", "")
    while True:
        error = None
        try:
            ci = ds.get("ClusterInformation", "default")
            version = ci.spec.calico_version or "unknown"
            ctype = ci.spec.cluster_type or "unknown"
            if version != shown[0]:
                out.write(f"Cluster Version:   {version}\n")
            if ctype != shown[1]:
                out.write(f"Cluster Type:      {ctype}\n")
            shown = (version, ctype)
        except Exception as exc:  # noqa: BLE001 - not found, unreachable: calicoctl words them alike
            error = f"Unable to retrieve Cluster Version or Type: {exc}"
            shown = ("", "")
        out.flush()
        if interval <= 0:
            if error:
                err.write(error + "\n")
                return 1
            return 0
        if error:
            err.write(error + "\n")
        sleep(interval)
