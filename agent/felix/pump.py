"""The userspace IP-in-IP packet pump behind a TUN ``tunl0``.

Kernels built without ``CONFIG_NET_IPIP`` cannot create the ipip ``tunl0``.
calicolab then uses a TUN device named ``tunl0`` and this pump:

* **transmit**: an inner IPv4 packet read from the TUN gets an outer
  protocol-4 header and is sent through a raw ``IPPROTO_IPIP`` socket with
  ``IP_HDRINCL``. The outer header is the one the kernel's fallback tunl0
  (``ipip any remote any local any ttl inherit nopmtudisc``, tos 0) builds in
  ``ip_tunnel_xmit``: TTL copied from the inner packet (as forwarded), DF
  copied from the inner packet and nothing else in frag_off, TOS = the inner
  ECN bits only (CE becomes ECT(0), DSCP not copied; RFC 6040 / the kernel's
  ``INET_ECN_encapsulate``). The kernel fills in the source address (from the
  route to the remote node, as for ``local any``), total length, IP ID and
  checksum. The outer destination is the gateway of the kernel route for the
  inner destination on tunl0 (``<block> via <node IP> dev tunl0 onlink``,
  installed by the BGP speaker). Those routes are kept in an LPM table that
  is reloaded whenever the kernel announces a route change. The packet is
  read from the TUN 20 bytes into a buffer and the outer header written in
  front of it, so one ``send`` carries both without a copy in Python.
* **receive**: a protocol-4 packet delivered to the raw socket (after the
  netfilter INPUT chain, so cali-INPUT's IPIP rules apply) is accepted only
  from a known Calico node address, stripped of its outer header and written
  to the TUN, where the kernel routes the inner packet as if it came out of
  a kernel tunnel. An outer CE mark is carried into the inner packet (a
  not-ECN-capable inner packet under an outer CE is dropped), as the kernel's
  ``ip_tunnel_rcv`` does.

One thread per direction; the socket calls release the GIL, so both
directions progress in parallel.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable

from agent.felix.gro import VNET_HDR_LEN, Coalescer, ip_checksum
from agent.felix.ipip_bpf import outer_tos
from agent.felix.lpm import LpmTable
from kernel import RT_TABLE_MAIN, Kernel, rtnl
from kernel.netlink import Netlink

log = logging.getLogger(__name__)

IPPROTO_IPIP = 4
SOCK_BUF = 8 * 1024 * 1024
SO_ATTACH_FILTER = 26
OUTER_LEN = 20
IP_DF = 0x40  # in the first byte of frag_off
ECN_MASK, ECN_ECT0, ECN_CE = 0x03, 0x02, 0x03
# Outer TOS for each inner TOS (tos 0, not inherit): the inner ECN bits, CE as ECT(0) (RFC 6040),
# the rule the tc-BPF tunnel's programs follow too (agent.felix.ipip_bpf.outer_tos).
OUTER_TOS = bytes(outer_tos(tos) for tos in range(256))
_DROP_ALL = ctypes.create_string_buffer(struct.pack("=HBBI", 0x06, 0, 0, 0))  # BPF "ret #0"


def _set_bufs(sock: socket.socket) -> None:
    for opt, force in ((socket.SO_SNDBUF, 32), (socket.SO_RCVBUF, 33)):  # SO_*BUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCK_BUF)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCK_BUF)


def outer_template(gateway: str) -> bytes:
    """The fixed part of the outer header toward ``gateway``: version 4, IHL 5, protocol 4.

    TOS, frag_off and TTL are set per packet by :func:`encapsulate_into`;
    total length, IP ID, checksum and source (all zero here) are filled in
    by the kernel on send (raw ``IP_HDRINCL`` semantics).
    """
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0, 0, IPPROTO_IPIP, 0, bytes(4),
                       socket.inet_aton(gateway))


def encapsulate_into(buf: bytearray, template: bytes) -> None:
    """Write the outer header into ``buf[0:20]`` for the inner IPv4 packet at ``buf[20:]``.

    As Linux ``ip_tunnel_xmit`` for tunl0 with ``ttl inherit``, ``nopmtudisc``
    and tos 0: outer TTL = inner TTL, outer DF = inner DF (no MF, offset 0),
    outer TOS = inner ECN bits with CE mapped to ECT(0) (RFC 6040 normal
    mode); the DSCP is not copied.
    """
    buf[0:20] = template
    buf[1] = OUTER_TOS[buf[21]]
    buf[6] = buf[26] & IP_DF
    buf[8] = buf[28]


def outer_header_for(inner: bytes, gateway: str) -> bytes:
    """The 20-byte outer header (kernel-filled fields zero) the pump puts before ``inner`` (pure)."""
    if len(inner) < 20 or inner[0] >> 4 != 4:
        raise ValueError("inner packet is not an IPv4 packet")
    buf = bytearray(OUTER_LEN) + bytearray(inner[:20])
    encapsulate_into(buf, outer_template(gateway))
    return bytes(buf[:OUTER_LEN])


def ecn_decapsulate(buf: bytearray, ihl: int) -> bool:
    """Carry an outer CE mark into the inner IPv4 packet at ``buf[ihl:]``; False: drop the packet.

    As Linux ``ip_tunnel_rcv`` (``INET_ECN_decapsulate``), for a packet whose outer TOS is CE
    (call only then): an ECN-capable inner packet gets CE (its header checksum recomputed);
    a not-ECT inner packet is dropped (congestion cannot be signalled to it).
    """
    inner_tos = buf[ihl + 1]
    if not inner_tos & ECN_MASK:
        return False
    if inner_tos & ECN_MASK != ECN_CE:
        buf[ihl + 1] = inner_tos | ECN_CE
        inner_ihl = (buf[ihl] & 0x0F) * 4
        buf[ihl + 10:ihl + 12] = ip_checksum(buf[ihl:ihl + inner_ihl]).to_bytes(2, "big")
    return True


def connected_sender(gateway: str) -> socket.socket:
    """A raw IPIP socket with ``IP_HDRINCL`` connected to ``gateway`` that never receives.

    The caller writes the outer header (:func:`encapsulate_into`); the kernel
    routes by the connected address and fills source, length, ID, checksum.
    Every raw IPIP socket gets a copy of each incoming protocol-4 packet; a
    drop-all socket filter keeps these transmit-only sockets from queueing them.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_IPIP)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    prog = struct.pack("=HxxxxxxQ", 1, ctypes.addressof(_DROP_ALL))
    s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)
    try:
        s.setsockopt(socket.SOL_SOCKET, 32, SOCK_BUF)  # SO_SNDBUFFORCE
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCK_BUF)
    s.connect((gateway, 0))
    return s


def tunnel_routes(kernel: Kernel, ifname: str = "tunl0") -> list[tuple[str, str]]:
    """(prefix, gateway) of every main-table IPv4 route with a gateway on ``ifname``."""
    link = kernel.link(ifname)
    if link is None:
        return []
    return [(r.dst, r.gateway) for r in kernel.routes(RT_TABLE_MAIN) if r.oif == link.index and r.gateway]


class IpipPump:
    """Moves packets between a TUN file descriptor and a raw IPIP socket.

    ``allowed_sources`` are the outer source addresses accepted on receive
    (every Calico node's address); update them with :meth:`set_allowed_sources`.
    """

    def __init__(self, tun_fd: int, ifname: str = "tunl0", allowed_sources: Iterable[str] = (),
                 vnet_hdr: bool = True, kernel: Kernel | None = None) -> None:
        """``kernel``: the handle its routes are read from (default: one on this thread's netns)."""
        self.tun_fd = tun_fd
        self.vnet_hdr = vnet_hdr  # the TUN was opened with IFF_VNET_HDR: merge received TCP segments
        self.ifname = ifname
        self._allowed = frozenset(socket.inet_aton(a) for a in allowed_sources)
        self._table = LpmTable()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.stats = {"tx": 0, "rx": 0, "tx_noroute": 0, "rx_denied": 0, "tx_error": 0, "rx_error": 0,
                      "rx_merged": 0, "rx_ecn_drop": 0}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_IPIP)
        _set_bufs(self.sock)
        self._senders: dict[str, socket.socket] = {}  # gateway -> connected transmit socket (tx thread only)
        self._own_kernel = kernel is None
        self.kernel: Kernel = kernel if kernel is not None else Netlink()
        self._nl = self.kernel.subscribe(rtnl.RTMGRP_IPV4_ROUTE | rtnl.RTMGRP_LINK)
        self._wake_r, self._wake_w = os.pipe()

    # -- configuration -------------------------------------------------------------
    def set_allowed_sources(self, addresses: Iterable[str]) -> None:
        """Replace the set of node addresses whose IPIP packets are accepted."""
        self._allowed = frozenset(socket.inet_aton(a) for a in addresses)

    def reload_routes(self) -> None:
        """Re-read the tunl0 routes from the kernel into the LPM table."""
        try:
            self._table = LpmTable(tunnel_routes(self.kernel, self.ifname))
        except Exception:  # noqa: BLE001 - keep the old table, retry on next notification
            log.exception("reading tunl0 routes failed")

    @property
    def routes(self) -> int:
        """Number of tunl0 routes currently known to the pump."""
        return len(self._table)

    # -- threads -------------------------------------------------------------------
    def start(self) -> None:
        """Start the transmit, receive and route-watch threads."""
        self.reload_routes()
        for name, target in (("tx", self._tx_loop), ("rx", self._rx_loop), ("routes", self._route_loop)):
            t = threading.Thread(target=target, name=f"ipip-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """Stop the threads and close the sockets (the TUN fd stays open; the caller owns it)."""
        self._stop.set()
        os.write(self._wake_w, b"x")
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        for t in self._threads:
            t.join(timeout=2)
        self.sock.close()
        self._nl.close()
        if self._own_kernel:
            self.kernel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _tx_loop(self) -> None:
        fd = self.tun_fd
        off = VNET_HDR_LEN if self.vnet_hdr else 0
        # The inner packet is read to byte 20 of rbuf (a virtio-net header, if any, into its own
        # buffer); the outer header is written in front of it, so one send() of bytes 0..end
        # carries outer + inner without a copy. Bytes 0..20 only change when the next hop does,
        # except the three per-packet fields (TOS, DF, TTL), patched as encapsulate_into does.
        rbuf = bytearray(OUTER_LEN + 65536)
        rmv = memoryview(rbuf)
        vnet = bytearray(off)
        rview = (vnet, rmv[OUTER_LEN:]) if off else (rmv[OUTER_LEN:],)
        outer_tos = OUTER_TOS
        readv = os.readv
        stats = self.stats
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        os.set_blocking(fd, False)
        table = None
        send_for: dict[bytes, tuple] = {}  # inner destination -> (bound send() of its node's socket, template)
        n = 0
        templates: dict[str, bytes] = {}  # gateway -> outer header template
        current = None  # the template now in rbuf[0:20]
        while not self._stop.is_set():
            try:
                size = readv(fd, rview)
            except BlockingIOError:
                stats["tx"] += n
                n = 0
                poller.poll()
                continue
            except OSError as exc:
                if self._stop.is_set():
                    break
                stats["tx_error"] += 1
                log.warning("tun read failed: %s", exc)
                time.sleep(0.05)
                continue
            if table is not self._table:  # routes changed: rebuild the per-destination memo
                table = self._table
                send_for = {}
                self._prune_senders(table.gateways())
            if off and vnet[1]:  # a GSO frame: never offered, as the TUN announces no offloads
                stats["tx_error"] += 1
                continue
            end = OUTER_LEN - off + size
            dst = bytes(rbuf[36:40])
            entry = send_for.get(dst)
            if entry is None:
                if end - OUTER_LEN < 20 or rbuf[OUTER_LEN] >> 4 != 4:
                    continue
                gw = table.lookup(dst)
                if gw is None:
                    stats["tx_noroute"] += 1
                    continue
                sock = self._senders.get(gw)
                if sock is None:
                    sock = self._senders[gw] = connected_sender(gw)
                tmpl = templates.get(gw)
                if tmpl is None:  # one template object per node, so pods of one node share it
                    tmpl = templates[gw] = outer_template(gw)
                entry = send_for[dst] = (sock.send, tmpl)
            if entry[1] is not current:
                current = rbuf[0:20] = entry[1]
            rbuf[1] = outer_tos[rbuf[21]]  # = encapsulate_into(rbuf, current), inlined (hot path)
            rbuf[6] = rbuf[26] & 0x40
            rbuf[8] = rbuf[28]
            try:
                entry[0](rmv[:end])
                n += 1
            except OSError as exc:
                if exc.errno not in (errno.ENOBUFS, errno.EAGAIN):
                    stats["tx_error"] += 1
        stats["tx"] += n
        for sock in self._senders.values():
            sock.close()
        self._senders.clear()

    def _prune_senders(self, gateways: set[str]) -> None:
        for gw in list(self._senders):
            if gw not in gateways:
                self._senders.pop(gw).close()

    def _rx_loop(self) -> None:
        fd = self.tun_fd
        buf = bytearray(65536)
        mv = memoryview(buf)
        recv_into = self.sock.recv_into
        write = os.write
        stats = self.stats
        co = Coalescer() if self.vnet_hdr else None
        n = 0
        while not self._stop.is_set():
            try:
                size = recv_into(buf)
            except OSError:
                if self._stop.is_set():
                    break
                stats["rx_error"] += 1
                continue
            # Take what is queued (up to 64 packets), merging TCP segments, then write the rest out.
            for i in range(64):
                if i:
                    try:
                        size = recv_into(buf, 0, socket.MSG_DONTWAIT)
                    except OSError:  # BlockingIOError: queue empty
                        break
                if size >= 20:
                    if bytes(buf[12:16]) not in self._allowed:
                        stats["rx_denied"] += 1
                    else:
                        ihl = (buf[0] & 0x0F) * 4
                        if buf[1] & ECN_MASK == ECN_CE and not ecn_decapsulate(buf, ihl):
                            stats["rx_ecn_drop"] += 1
                            continue
                        n += 1
                        try:
                            if co is None:
                                write(fd, mv[ihl:size])
                            else:
                                for frame in co.add(bytes(mv[ihl:size])):
                                    write(fd, frame)
                        except OSError:
                            stats["rx_error"] += 1
                elif size == 0 and self._stop.is_set():
                    break
            if co is not None:
                for frame in co.flush():
                    try:
                        write(fd, frame)
                    except OSError:
                        stats["rx_error"] += 1
            if n >= 1024:
                stats["rx"] += n
                n = 0
                if co is not None:
                    stats["rx_merged"] = co.merged
        stats["rx"] += n
        if co is not None:
            stats["rx_merged"] = co.merged

    def _route_loop(self) -> None:
        poller = select.poll()
        poller.register(self._nl.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(30_000):
                self.reload_routes()  # belt and braces: periodic reload
                continue
            if self._stop.is_set():
                break
            # Drain a burst of notifications, then reload once (lost events: the reload covers them).
            while True:
                try:
                    if not self._nl.events():
                        break
                except OSError:
                    break
            self.reload_routes()


def parse_header(pkt: bytes) -> tuple[str, str, int]:
    """(src, dst, protocol) of an IPv4 header (small helper for tests and logs)."""
    ver_ihl, _tos, _len, _id, _frag, _ttl, proto, _csum, src, dst = struct.unpack("!BBHHHBBH4s4s", pkt[:20])
    return socket.inet_ntoa(src), socket.inet_ntoa(dst), proto
