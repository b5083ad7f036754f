"""Traffic control over rtnetlink: the clsact qdisc and cls_bpf filters (direct action).

What ``tc qdisc add dev X clsact`` and ``tc filter replace dev X ingress prio P handle H
bpf direct-action object-pinned F`` do, without the ``tc`` binary: the request bodies are
pure functions laid out as iproute2 lays them out (golden bytes in
tests/unit/test_kernel_tc.py), and :class:`Tc` sends them on its own NETLINK_ROUTE socket
opened in a network namespace. Replacing a filter at the same (parent, prio, handle) swaps
its program atomically: packets see the old program or the new one, never none.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from dataclasses import dataclass

from kernel import netns as _netns
from kernel import rtnl
from kernel.model import KernelError

RTM_NEWQDISC, RTM_DELQDISC, RTM_GETQDISC = 36, 37, 38
RTM_NEWTFILTER, RTM_DELTFILTER, RTM_GETTFILTER = 44, 45, 46
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_BPF_FD, TCA_BPF_NAME, TCA_BPF_FLAGS, TCA_BPF_TAG, TCA_BPF_ID = 6, 7, 8, 10, 11
TCA_BPF_FLAG_ACT_DIRECT = 1
TC_H_CLSACT = 0xFFFFFFF1
TC_H_MIN_INGRESS, TC_H_MIN_EGRESS = 0xFFF2, 0xFFF3
CLSACT_HANDLE = 0xFFFF0000
ETH_P_ALL = 0x0003
INGRESS, EGRESS = "ingress", "egress"
TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info


def hook_parent(hook: str) -> int:
    """The parent handle of the clsact hook (``ingress`` ffff:fff2, ``egress`` ffff:fff3)."""
    if hook == INGRESS:
        return 0xFFFF0000 | TC_H_MIN_INGRESS
    if hook == EGRESS:
        return 0xFFFF0000 | TC_H_MIN_EGRESS
    raise ValueError(f"clsact hook {hook!r} is not ingress or egress")


@dataclass(frozen=True)
class BpfFilter:
    """A cls_bpf filter as the kernel reports it."""

    ifindex: int
    hook: str
    prio: int
    handle: int
    prog_id: int
    name: str
    tag: bytes
    direct_action: bool


# -- request bodies (pure) ----------------------------------------------------------------------
def clsact_body(ifindex: int) -> bytes:
    """RTM_NEWQDISC / RTM_DELQDISC body of the clsact qdisc of ``ifindex``."""
    return TCMSG.pack(0, ifindex, CLSACT_HANDLE, TC_H_CLSACT, 0) + rtnl.attr_str(TCA_KIND, "clsact")


def filter_info(prio: int) -> int:
    """tcm_info of a filter: priority in the upper 16 bits, protocol (ETH_P_ALL, network order) below."""
    if not 1 <= prio <= 0xFFFF:
        raise ValueError(f"filter priority {prio} out of range 1..65535")
    return (prio << 16) | socket.htons(ETH_P_ALL)


def bpf_filter_body(ifindex: int, hook: str, prio: int, handle: int, prog_fd: int, name: str) -> bytes:
    """RTM_NEWTFILTER body: a direct-action cls_bpf filter running program ``prog_fd``."""
    opts = (rtnl.attr_u32(TCA_BPF_FD, prog_fd) + rtnl.attr_str(TCA_BPF_NAME, name)
            + rtnl.attr_u32(TCA_BPF_FLAGS, TCA_BPF_FLAG_ACT_DIRECT))
    return (TCMSG.pack(0, ifindex, handle, hook_parent(hook), filter_info(prio))
            + rtnl.attr_str(TCA_KIND, "bpf") + rtnl.attr(TCA_OPTIONS, opts))


def filter_del_body(ifindex: int, hook: str, prio: int, handle: int) -> bytes:
    """RTM_DELTFILTER body of one cls_bpf filter (any protocol, as ``tc filter del`` sends it)."""
    return (TCMSG.pack(0, ifindex, handle, hook_parent(hook), filter_info(prio) & 0xFFFF0000)
            + rtnl.attr_str(TCA_KIND, "bpf"))


def filter_dump_body(ifindex: int, hook: str) -> bytes:
    """RTM_GETTFILTER dump body: every filter of one clsact hook."""
    return TCMSG.pack(0, ifindex, 0, hook_parent(hook), 0)


def parse_filter(buf: bytes | bytearray | memoryview, off: int, end: int) -> BpfFilter | None:
    """A filter message: the cls_bpf filter it describes (None for another kind or a chain head)."""
    _fam, ifindex, handle, parent, info = TCMSG.unpack_from(buf, off)
    a = rtnl.attrs(buf, off + TCMSG.size, end)
    if a.get(TCA_KIND, b"").rstrip(b"\0") != b"bpf" or TCA_OPTIONS not in a:
        return None
    o = rtnl.attrs(a[TCA_OPTIONS])
    hook = INGRESS if parent & 0xFFFF == TC_H_MIN_INGRESS else EGRESS
    flags = struct.unpack("=I", o[TCA_BPF_FLAGS])[0] if TCA_BPF_FLAGS in o else 0
    return BpfFilter(ifindex, hook, info >> 16, handle,
                     struct.unpack("=I", o[TCA_BPF_ID])[0] if TCA_BPF_ID in o else 0,
                     o.get(TCA_BPF_NAME, b"").rstrip(b"\0").decode(errors="replace"),
                     o.get(TCA_BPF_TAG, b""), bool(flags & TCA_BPF_FLAG_ACT_DIRECT))


def parse_qdisc_kind(buf: bytes | bytearray | memoryview, off: int, end: int) -> tuple[int, int, str]:
    """(ifindex, parent, kind) of a qdisc message."""
    _fam, ifindex, _handle, parent, _info = TCMSG.unpack_from(buf, off)
    kind = rtnl.attrs(buf, off + TCMSG.size, end).get(TCA_KIND, b"").rstrip(b"\0").decode()
    return ifindex, parent, kind


# -- the handle ------------------------------------------------------------------------------------
class Tc:
    """clsact qdiscs and cls_bpf filters in one network namespace (a name, a path, or None
    for the calling thread's)."""

    def __init__(self, netns: str | os.PathLike[str] | None = None) -> None:
        self.netns_path = _netns.path(netns) if netns is not None else None
        try:
            with _netns.entered(self.netns_path):
                self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                          socket.NETLINK_ROUTE)
        except OSError as exc:
            raise KernelError(exc.errno or errno.EINVAL, f"network namespace {self.netns_path}") from None
        self.sock.setsockopt(270, 11, 1)  # NETLINK_EXT_ACK: the kernel's reason with errors
        self.sock.settimeout(30)
        self.sock.bind((0, 0))
        self._seq = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def __enter__(self) -> Tc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, mtype: int, flags: int, body: bytes, what: str) -> list[tuple[bytes, int, int]]:
        """Send one request; the bodies of what it answers (a dump's messages), raising its error."""
        with self._lock:
            self._seq += 1
            seq = self._seq
            self.sock.send(rtnl.message(mtype, rtnl.NLM_F_REQUEST | rtnl.NLM_F_ACK | flags, seq, body))
            out: list[tuple[bytes, int, int]] = []
            while True:
                data = self.sock.recv(1 << 16)
                for rtype, rflags, rseq, off, end in rtnl.messages(data):
                    if rseq != seq:
                        continue
                    if rtype == rtnl.NLMSG_ERROR:
                        code, detail = rtnl.parse_error(data, off, end, rflags)
                        if code:
                            raise KernelError(code, what, detail)
                        return out
                    if rtype == rtnl.NLMSG_DONE:
                        return out
                    out.append((data, off, end))

    def clsact_add(self, ifindex: int) -> bool:
        """Add the clsact qdisc to ``ifindex``; False if it was there already."""
        try:
            self._call(RTM_NEWQDISC, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL, clsact_body(ifindex),
                       f"clsact qdisc on ifindex {ifindex}")
        except KernelError as exc:
            if exc.errno == errno.EEXIST:
                return False
            raise
        return True

    def clsact_del(self, ifindex: int) -> bool:
        """Remove the clsact qdisc (and every filter on it) from ``ifindex``; False if absent."""
        try:
            self._call(RTM_DELQDISC, 0, clsact_body(ifindex), f"clsact qdisc on ifindex {ifindex}")
        except KernelError as exc:
            if exc.errno in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                return False
            raise
        return True

    def has_clsact(self, ifindex: int) -> bool:
        """Whether ``ifindex`` has a clsact qdisc."""
        for data, off, end in self._call(RTM_GETQDISC, rtnl.NLM_F_DUMP, TCMSG.pack(0, ifindex, 0, 0, 0),
                                         "qdisc dump"):
            idx, parent, kind = parse_qdisc_kind(data, off, end)
            if idx == ifindex and kind == "clsact":
                return True
        return False

    def filter_replace(self, ifindex: int, hook: str, prio: int, handle: int, prog_fd: int, name: str) -> None:
        """Create, or atomically replace, the cls_bpf filter (hook, prio, handle) of ``ifindex``."""
        self._call(RTM_NEWTFILTER, rtnl.NLM_F_CREATE,  # what `tc filter replace` sends
                   bpf_filter_body(ifindex, hook, prio, handle, prog_fd, name),
                   f"bpf filter {hook} prio {prio} handle {handle} on ifindex {ifindex}")

    def filter_del(self, ifindex: int, hook: str, prio: int, handle: int) -> bool:
        """Remove one filter; False if it was not there."""
        try:
            self._call(RTM_DELTFILTER, 0, filter_del_body(ifindex, hook, prio, handle),
                       f"bpf filter {hook} prio {prio} handle {handle} on ifindex {ifindex}")
        except KernelError as exc:
            if exc.errno in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                return False
            raise
        return True

    def filters(self, ifindex: int, hook: str) -> list[BpfFilter]:
        """The cls_bpf filters of one clsact hook ([] without a clsact qdisc)."""
        try:
            msgs = self._call(RTM_GETTFILTER, rtnl.NLM_F_DUMP, filter_dump_body(ifindex, hook),
                              f"filter dump of ifindex {ifindex} {hook}")
        except KernelError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT, errno.ENODEV):
                return []
            raise
        out = []
        for data, off, end in msgs:
            f = parse_filter(data, off, end)
            if f is not None:
                out.append(f)
        return out
