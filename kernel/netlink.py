"""The real kernel handle: one NETLINK_ROUTE socket bound to a network namespace.

Why not pyroute2 on the hot paths: measured in bench/netlink_bench.py (docs/kernel.md):
importing it costs more than the CNI plugin's whole budget, each of its requests
costs far more than a packed ``struct``, and its netns sockets fork a helper
process per namespace. This handle:

* opens its socket inside the namespace (``Netlink("/run/netns/x")`` or a name), so
  it can be used from any thread afterwards;
* sends many requests in one ``send`` (:meth:`Netlink.submit`), reads the acks back
  matched by sequence number and maps each error to a :class:`KernelError` naming
  the object (with the kernel's extended-ack text);
* dumps and parses only what callers read (:mod:`kernel.rtnl`);
* reaches the namespace's ``/proc/sys`` and makes TUN devices by entering it on the
  calling thread for the duration of the call (:mod:`kernel.netns`).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any

from kernel import netns as _netns
from kernel import rtnl
from kernel.base import Kernel
from kernel.model import (
    AF_INET,
    RT_TABLE_MAIN,
    Addr,
    KernelError,
    Link,
    LinkAdd,
    Neigh,
    Route,
    Tun,
)

SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK = 10, 11
SO_RCVBUFFORCE = 33
BATCH = 256  # requests per send
TIMEOUT_S = 30  # a kernel that stops answering is an error, not a hang
TUNSETIFF, TUNSETPERSIST = 0x400454CA, 0x400454CB
SIOCETHTOOL, ETHTOOL_GTXCSUM, ETHTOOL_STXCSUM = 0x8946, 0x16, 0x17
IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x0001, 0x1000, 0x4000


class Netlink(Kernel):
    """A kernel handle for the namespace ``netns`` (a name, a path, or None for the
    calling thread's). ``groups`` subscribes to multicast groups (rtnl.RTMGRP_*) for
    :meth:`events`."""

    def __init__(self, netns: str | os.PathLike[str] | None = None, *, groups: int = 0) -> None:
        self.netns_path = _netns.path(netns) if netns is not None else None
        try:
            with _netns.entered(self.netns_path):
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        except OSError as exc:
            raise KernelError(exc.errno or errno.EINVAL, f"network namespace {self.netns_path}") from None
        self.sock = sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
            try:
                sock.setsockopt(SOL_NETLINK, opt, 1)
            except OSError:
                pass
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("=qq", TIMEOUT_S, 0))
        sock.bind((0, groups))
        self.groups = groups
        self._lock = threading.Lock()
        self._seq = int.from_bytes(os.urandom(3), "little")
        self._buf = bytearray(1 << 20)
        self._view = memoryview(self._buf)
        self._ns_fd: int | None = None
        self._events: list[tuple[int, Any]] = []

    def __repr__(self) -> str:
        return f"Netlink({self.netns_path or 'own netns'})"

    def close(self) -> None:
        """Close the socket (and the namespace fd, if one was opened)."""
        self.sock.close()
        if self._ns_fd is not None:
            os.close(self._ns_fd)
            self._ns_fd = None

    def fileno(self) -> int:
        """The socket's fd (for select/poll on :meth:`events`)."""
        return self.sock.fileno()

    def netns_fd(self) -> int:
        """An fd of this handle's namespace (kept open until :meth:`close`); used to
        place a veth peer here."""
        if self._ns_fd is None:
            self._ns_fd = _netns.open_ns(self.netns_path or "/proc/thread-self/ns/net")
        return self._ns_fd

    # -- transport --------------------------------------------------------------------------
    def _next(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFF or 1
        return self._seq

    def _recv(self) -> bytes:
        try:
            n = self.sock.recv_into(self._buf)
        except BlockingIOError:
            raise KernelError(errno.ETIMEDOUT, f"netlink socket ({self})", f"no answer within {TIMEOUT_S} s") from None
        return bytes(self._view[:n])

    def _dump(self, mtype: int, body: bytes, what: str, keep: Callable[[Any], bool] | None = None,
              parse: Callable[..., Any] | None = None) -> list[Any]:
        parse = parse or rtnl.PARSERS[mtype - 2]  # RTM_GETX answers with RTM_NEWX
        for _attempt in range(3):
            with self._lock:
                seq = self._next()
                self.sock.send(rtnl.message(mtype, rtnl.NLM_F_REQUEST | rtnl.NLM_F_DUMP, seq, body))
                out, interrupted = self._read_dump(seq, parse, what, keep)
            if not interrupted:
                return out
        raise KernelError(errno.EINTR, what, "dump kept being interrupted by concurrent changes")

    def _read_dump(self, seq: int, parse: Callable[..., Any], what: str,
                   keep: Callable[[Any], bool] | None) -> tuple[list[Any], bool]:
        out: list[Any] = []
        interrupted = False
        while True:
            data = self._recv()
            for mtype, flags, mseq, off, end in rtnl.messages(data):
                if mseq != seq:
                    self._stash(mtype, data, off, end)
                    continue
                if flags & rtnl.NLM_F_DUMP_INTR:
                    interrupted = True
                if mtype == rtnl.NLMSG_DONE:
                    return out, interrupted
                if mtype == rtnl.NLMSG_ERROR:
                    code, detail = rtnl.parse_error(data, off, end, flags)
                    if code:
                        raise KernelError(code, what, detail)
                    return out, interrupted
                obj = parse(data, off, end)
                if keep is None or keep(obj):
                    out.append(obj)

    def _stash(self, mtype: int, data: bytes, off: int, end: int) -> None:
        """A multicast event read while waiting for an answer: kept for :meth:`events`."""
        if self.groups and mtype in rtnl.PARSERS:
            self._events.append((mtype, rtnl.PARSERS[mtype](data, off, end)))

    def _request(self, mtype: int, body: bytes, what: str) -> list[Any]:
        """One non-dump request that answers with objects (RTM_GETLINK by name, RTM_GETROUTE)."""
        with self._lock:
            seq = self._next()
            self.sock.send(rtnl.message(mtype, rtnl.NLM_F_REQUEST, seq, body))
            out: list[Any] = []
            while True:
                data = self._recv()
                for rtype, flags, mseq, off, end in rtnl.messages(data):
                    if mseq != seq:
                        self._stash(rtype, data, off, end)
                        continue
                    if rtype == rtnl.NLMSG_ERROR:
                        code, detail = rtnl.parse_error(data, off, end, flags)
                        if code:
                            raise KernelError(code, what, detail)
                        return out
                    if rtype in rtnl.PARSERS:
                        out.append(rtnl.PARSERS[rtype](data, off, end))
                    if not flags & rtnl.NLM_F_MULTI or rtype == rtnl.NLMSG_DONE:
                        return out

    def submit(self, ops: Sequence[Any]) -> list[KernelError | None]:
        """Apply ``ops`` in order, up to BATCH per send; one result per op (see Kernel.submit)."""
        results: list[KernelError | None] = [None] * len(ops)
        failed: list[tuple[int, int, str | None]] = []
        i = 0
        while i < len(ops):
            if isinstance(ops[i], LinkAdd) and isinstance(ops[i].spec, Tun):
                try:
                    self._tun_add(ops[i].spec)
                except KernelError as exc:
                    results[i] = exc
                i += 1
                continue
            j = i
            while j < len(ops) and j - i < BATCH and not (isinstance(ops[j], LinkAdd) and isinstance(ops[j].spec, Tun)):
                j += 1
            failed += self._send_batch(ops, i, j)
            i = j
        if failed:
            names = self._names()
            for k, code, detail in failed:
                results[k] = KernelError(code, ops[k].describe(names), detail)
        return results

    def _send_batch(self, ops: Sequence[Any], start: int, stop: int) -> list[tuple[int, int, str | None]]:
        encoded: list[bytes] = []
        with self._lock:
            seqs: dict[int, int] = {}
            for k in range(start, stop):
                seq = self._next()
                seqs[seq] = k
                try:
                    encoded.append(rtnl.encode(ops[k], seq))
                except (ValueError, TypeError) as exc:
                    raise KernelError(errno.EINVAL, ops[k].describe({}), str(exc)) from None
            self.sock.sendall(b"".join(encoded))
            failed: list[tuple[int, int, str | None]] = []
            pending = len(seqs)
            while pending:
                data = self._recv()
                for mtype, flags, mseq, off, end in rtnl.messages(data):
                    k = seqs.pop(mseq, None) if mtype == rtnl.NLMSG_ERROR else None
                    if k is None:
                        self._stash(mtype, data, off, end)
                        continue
                    pending -= 1
                    code, detail = rtnl.parse_error(data, off, end, flags)
                    if code:
                        failed.append((k, code, detail))
        return failed

    def _names(self) -> dict[int, str]:
        try:
            return {ln.index: ln.name for ln in self.links()}
        except KernelError:
            return {}

    # -- dumps ------------------------------------------------------------------------------
    def links(self, brief: bool = False) -> list[Link]:
        """Every link of the namespace (``brief``: index, flags, name and MTU only, faster)."""
        return self._dump(rtnl.RTM_GETLINK, rtnl.dump_request(rtnl.RTM_GETLINK), "link dump",
                          parse=rtnl.parse_link_brief if brief else None)

    def link(self, name: str) -> Link | None:
        """The link called ``name``, or None."""
        try:
            found = self._request(rtnl.RTM_GETLINK, rtnl.link_get_request(name), f"link {name}")
        except KernelError as exc:
            if exc.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return found[0] if found else None

    def addrs(self, family: int = AF_INET) -> list[Addr]:
        """Every address of ``family``."""
        return self._dump(rtnl.RTM_GETADDR, rtnl.dump_request(rtnl.RTM_GETADDR, family), "address dump")

    def routes(self, table: int = RT_TABLE_MAIN, family: int = AF_INET, protocol: int | None = None) -> list[Route]:
        """Routes of ``table`` (0: all), optionally of ``protocol`` only."""
        def keep(r: Route) -> bool:
            return (not table or r.table == table) and (protocol is None or r.protocol == protocol)

        return self._dump(rtnl.RTM_GETROUTE, rtnl.dump_request(rtnl.RTM_GETROUTE, family), "route dump", keep)

    def neighs(self, family: int = AF_INET) -> list[Neigh]:
        """Neighbour entries of ``family`` (AF_BRIDGE: the FDB)."""
        return self._dump(rtnl.RTM_GETNEIGH, rtnl.dump_request(rtnl.RTM_GETNEIGH, family), "neighbour dump")

    def route_get(self, dst: str) -> Route | None:
        """``ip route get dst``: the route the kernel would use, None if unreachable."""
        try:
            found = self._request(rtnl.RTM_GETROUTE, rtnl.route_get_request(dst), f"route to {dst}")
        except KernelError as exc:
            if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                return None
            raise
        except ValueError:
            raise KernelError(errno.EINVAL, f"route to {dst!r}", "not an IP address") from None
        return found[0] if found else None

    def dump_raw(self, mtype: int, family: int = 0) -> list[bytes]:
        """The raw messages (header included) of a dump: for golden-byte recordings."""
        with self._lock:
            seq = self._next()
            self.sock.send(rtnl.message(mtype, rtnl.NLM_F_REQUEST | rtnl.NLM_F_DUMP, seq,
                                        rtnl.dump_request(mtype, family)))
            out: list[bytes] = []
            while True:
                data = self._recv()
                for rtype, _flags, mseq, off, end in rtnl.messages(data):
                    if mseq != seq:
                        continue
                    if rtype in (rtnl.NLMSG_DONE, rtnl.NLMSG_ERROR):
                        return out
                    out.append(data[off - 16:end])

    # -- events -----------------------------------------------------------------------------
    def subscribe(self, groups: int) -> Netlink:
        """A new handle on the same namespace subscribed to ``groups`` (rtnl.RTMGRP_*), for :meth:`events`."""
        return Netlink(self.netns_path, groups=groups)

    def request_dump(self, mtype: int = rtnl.RTM_GETLINK, family: int = 0) -> None:
        """Ask for a dump without waiting: its objects arrive through :meth:`events`
        (followed by (NLMSG_DONE, None)). For a subscribed socket's resync."""
        with self._lock:
            self.sock.send(rtnl.message(mtype, rtnl.NLM_F_REQUEST | rtnl.NLM_F_DUMP, self._next(),
                                        rtnl.dump_request(mtype, family)))

    def events(self) -> list[tuple[int, Any]]:
        """What one read of the socket brings (call when :meth:`fileno` is readable):
        [(message type, object)], NLMSG_DONE as (NLMSG_DONE, None). Raises KernelError
        ENOBUFS when the kernel dropped events (the caller should re-dump)."""
        with self._lock:
            out, self._events = self._events, []
            try:
                n = self.sock.recv_into(self._buf, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return out
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    raise KernelError(errno.ENOBUFS, f"netlink events ({self})", "events were lost") from None
                raise
            out.extend(rtnl.parse(self._view, n))
        return out

    # -- namespace-local files and devices ---------------------------------------------------
    def sysctl_get(self, key: str) -> str | None:
        """Value of /proc/sys/<key> in this namespace (None if absent)."""
        path = _key(key)
        try:
            if self.netns_path is None:  # this thread's own netns: no setns round trip
                with open(path) as f:
                    return f.read().strip()
            with _netns.entered(self.netns_path), open(path) as f:
                return f.read().strip()
        except FileNotFoundError:
            return None

    def sysctl_set(self, key: str, value: str) -> None:
        """Write /proc/sys/<key> in this namespace."""
        path = _key(key)
        try:
            if self.netns_path is None:
                with open(path, "w") as f:
                    f.write(value)
                return
            with _netns.entered(self.netns_path), open(path, "w") as f:
                f.write(value)
        except OSError as exc:
            raise KernelError(exc.errno or errno.EIO, f"sysctl {key}={value}") from None

    def tun_open(self, name: str, vnet_hdr: bool = True, persist: bool = True) -> int:
        """Attach to the TUN ``name`` in this namespace, creating it if absent; the fd.

        With ``vnet_hdr`` every read and write carries a 10-byte virtio-net header; with
        ``persist`` the device outlives the fd (else it goes when the fd is closed). EBUSY:
        another process holds it; EINVAL: ``name`` exists and is not a TUN.
        """
        import fcntl

        what = f"tun link {name}"
        with _netns.entered(self.netns_path):  # a TUN belongs to the netns its fd was opened in
            try:
                fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                raise KernelError(exc.errno or errno.ENODEV, what, "cannot open /dev/net/tun") from None
        try:
            flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
            if persist:
                fcntl.ioctl(fd, TUNSETPERSIST, 1)
        except OSError as exc:
            os.close(fd)
            hint = "attached to another process" if exc.errno == errno.EBUSY else "exists and is not a TUN device"
            raise KernelError(exc.errno or errno.EINVAL, what, hint) from None
        return fd

    def _ethtool_value(self, name: str, cmd: int, data: int = 0) -> int:
        """One SIOCETHTOOL request carrying a ``struct ethtool_value`` for link ``name``,
        made on a socket of this namespace; returns the value's data."""
        import array
        import fcntl

        what = f"link {name} (ethtool)"
        if len(name.encode()) >= 16:
            raise KernelError(errno.EINVAL, what, "interface name too long")
        value = array.array("I", [cmd, data])  # struct ethtool_value {u32 cmd; u32 data;}
        ifreq = struct.pack("16sP", name.encode(), value.buffer_info()[0]).ljust(40, b"\0")
        with _netns.entered(self.netns_path):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
        except OSError as exc:
            raise KernelError(exc.errno or errno.EIO, what) from None
        finally:
            sock.close()
        return value[1]

    def tx_checksum(self, name: str) -> bool:
        """Whether transmit checksum offload is on for ``name`` (ETHTOOL_GTXCSUM)."""
        return bool(self._ethtool_value(name, ETHTOOL_GTXCSUM))

    def set_tx_checksum(self, name: str, on: bool) -> None:
        """``ethtool -K NAME tx on|off`` (ETHTOOL_STXCSUM, as Felix's EthtoolTXOff)."""
        self._ethtool_value(name, ETHTOOL_STXCSUM, 1 if on else 0)

    def _tun_add(self, spec: Tun) -> None:
        """Create a persistent TUN device (what ``ip tuntap add mode tun`` does)."""
        os.close(self.tun_open(spec.name))


def _key(key: str) -> str:
    """The /proc/sys path of a slashed sysctl key (refusing absolute or '..' keys)."""
    if key.startswith("/") or "/../" in f"/{key}/":
        raise KernelError(errno.EINVAL, f"sysctl {key}", "not a relative /proc/sys path")
    return "/proc/sys/" + key
