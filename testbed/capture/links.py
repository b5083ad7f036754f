"""Link events of one network namespace: the capture's interface watcher, on the kernel layer.

:func:`link_watcher` opens a kernel handle inside a netns subscribed to link events
(:meth:`kernel.netlink.Netlink.subscribe`); :func:`link_changes` turns what its
:meth:`~kernel.netlink.Netlink.events` brings into ``(event, ifindex, name, up)``.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Iterator
from typing import Any

from kernel import KernelError, rtnl
from kernel.netlink import Netlink
from testbed.capture.errors import CaptureError


def netns_path(netns: str | None) -> str | None:
    """``/run/netns/<name>`` for a bare name, a path as is, None for this process's netns."""
    if netns is None:
        return None
    if "/" in netns:
        return netns
    return f"/run/netns/{netns}"


def link_watcher(netns: str | None) -> Netlink:
    """A kernel handle in ``netns`` subscribed to link events (select() on it, then ``events()``)."""
    try:
        return Netlink(netns_path(netns), groups=rtnl.RTMGRP_LINK)
    except KernelError as exc:
        if exc.errno == errno.ENOENT:
            raise CaptureError(f"network namespace {netns!r} does not exist ({netns_path(netns)})") from None
        raise CaptureError(f"cannot enter network namespace {netns!r}: {exc.strerror}") from None


def link_changes(events: Iterable[tuple[int, Any]]) -> Iterator[tuple[str, int, str | None, bool]]:
    """``(event, ifindex, name, up)`` from kernel events: event "new", "del" or "done" (a dump's end)."""
    for mtype, obj in events:
        if mtype == rtnl.NLMSG_DONE:
            yield ("done", 0, None, False)
        elif mtype in (rtnl.RTM_NEWLINK, rtnl.RTM_DELLINK):
            yield ("new" if mtype == rtnl.RTM_NEWLINK else "del", obj.index, obj.name or None, obj.up)
