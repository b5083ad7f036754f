"""Assertions on packet captures: read a pcap, say what was seen, fail with what was not.

Usable in any pytest test::

    from testbed.capture import pcapassert as pa

    eth0 = pa.load("pcaps/lab/run1/k8s-w0-eth0.pcap")
    pa.assert_ipip(eth0, outer_src="172.30.0.11", outer_dst="172.30.0.12",
                   inner_src="192.168.1.2", inner_dst="192.168.2.3")

Every helper accepts a :class:`Trace` or a path, returns the frames that proved
the point (handy for reports), and raises :class:`CaptureAssertionError` (an
``AssertionError``) naming what was expected, in which file/interface, and a
short summary of what the capture holds instead.

Lower level, in the style of Felix FV's tcpdump matchers, :class:`Match`
objects combine with ``&``, ``|`` and ``~``::

    eth0.expect(pa.ipip(outer_src=n1, outer_dst=n2) & pa.tcp(dport=80, flags="S"))
    eth0.expect_none(pa.plain(net="192.168.0.0/16"), what="un-encapsulated pod traffic")

Captures from Ethernet interfaces (linktype 1), TUN/ipip devices such as
``tunl0`` (raw IP, linktype 101/228/12) and ``any`` (Linux cooked, 113/276)
are all understood. Encapsulation is decoded: IP-in-IP (protocol 4) and VXLAN
(UDP to port 4789: the VNI, then the inner Ethernet frame with its MACs and the
pod's packet), so matchers see the outer (node) and inner (pod) headers. Classic pcap files (what tcpdump writes) are read and
decoded by a small struct-based dissector of our own (~100k packets/s, where
scapy's dissection manages ~2k); ``Frame.packet`` gives scapy's full view of a
frame on demand, and pcapng files are read through scapy.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CaptureAssertionError", "Frame", "IpHeader", "Trace", "Match", "BgpMessage", "load",
    "outer", "inner", "plain", "ipip", "vxlan", "between", "tcp", "udp", "icmp", "frag_needed",
    "http_request", "http_response", "arp_request", "arp_reply", "any_frame",
    "assert_seen", "assert_none", "assert_sequence", "assert_http_exchange", "assert_ipip", "assert_vxlan",
    "assert_routed", "VXLAN_PORTS",
    "assert_no_plain", "assert_on_tunnel", "assert_arp_gateway", "assert_masqueraded",
    "assert_dnat", "assert_frag_needed", "bgp_messages", "assert_bgp_open",
    "assert_bgp_update", "CAPABILITY_NAMES",
]

SUMMARY_LIMIT = 25  # packets listed in a failure message

# Linktypes whose frames start directly with an IP header.
_RAW_IP_LINKTYPES = {12, 14, 101, 228, 229}
#: UDP destination ports decoded as VXLAN (IANA's, Felix's ``vxlanPort`` default).
VXLAN_PORTS = {4789}


class CaptureAssertionError(AssertionError):
    """A capture did not hold what a test expected; the message says what it held instead."""


# ----------------------------------------------------------------------------- frames


@dataclass(frozen=True)
class IpHeader:
    """One IPv4/IPv6 header of a frame (outermost first in :attr:`Frame.ips`)."""

    src: str
    dst: str
    proto: int
    ttl: int
    length: int
    df: bool = False
    version: int = 4
    tos: int = 0  # IPv4 TOS byte (DSCP and ECN); IPv6: 0
    ident: int = 0  # IPv4 identification; IPv6: 0


@dataclass
class Frame:
    """One captured packet, decoded into the fields the matchers look at."""

    index: int  # 1-based, as Wireshark numbers frames
    time: float  # capture timestamp (seconds since the epoch)
    source: str  # label of the capture: file stem, e.g. "k8s-w0-eth0"
    size: int
    eth_src: str | None = None
    eth_dst: str | None = None
    arp_op: int | None = None  # 1 who-has, 2 is-at
    arp_hwsrc: str | None = None
    arp_psrc: str | None = None
    arp_hwdst: str | None = None
    arp_pdst: str | None = None
    ips: tuple[IpHeader, ...] = ()
    sport: int | None = None
    dport: int | None = None
    tcp_flags: str | None = None  # scapy letters: "S", "SA", "PA", "FA", "R" ...
    seq: int | None = None
    ack: int | None = None
    payload: bytes = b""
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_mtu: int | None = None
    icmp_id: int | None = None  # echo request/reply identifier
    icmp_seq: int | None = None
    quoted: IpHeader | None = None  # original header inside an ICMP error
    other: str = ""  # what a frame that is neither ARP nor IP is (ethertype)
    vni: int | None = None  # VXLAN: the network identifier (the outer header is ips[0])
    vxlan_sport: int | None = None  # VXLAN: the outer UDP ports
    vxlan_dport: int | None = None
    inner_eth_src: str | None = None  # VXLAN: the inner Ethernet frame's MACs
    inner_eth_dst: str | None = None
    raw: bytes = field(default=b"", repr=False)  # the frame as captured
    linktype: int = 1
    _pkt: Any = field(default=None, repr=False, compare=False)

    @property
    def packet(self) -> Any:
        """The frame dissected by scapy (on first use: scapy is slow, the matchers are not)."""
        if self._pkt is None:
            self._pkt = _scapy_dissect(self.raw, self.linktype)
            self._pkt.time = self.time
        return self._pkt

    @property
    def outer(self) -> IpHeader | None:
        """The outermost IP header (None for non-IP frames)."""
        return self.ips[0] if self.ips else None

    @property
    def inner(self) -> IpHeader | None:
        """The innermost IP header: the pod's packet inside an IPIP frame, else the only one."""
        return self.ips[-1] if self.ips else None

    @property
    def encapsulated(self) -> bool:
        """True for IP-in-IP (protocol 4) and VXLAN frames."""
        return len(self.ips) > 1

    @property
    def encap(self) -> str | None:
        """"ipip", "vxlan" or None (not encapsulated)."""
        if len(self.ips) < 2:
            return None
        return "vxlan" if self.vni is not None else "ipip"

    @property
    def l4_name(self) -> str:
        """Name of the innermost transport protocol."""
        if not self.ips:
            return ""
        return _PROTO_NAMES.get(self.ips[-1].proto, str(self.ips[-1].proto))

    def summary(self, t0: float | None = None) -> str:
        """A one-line, tcpdump-like description: ``#index time description``."""
        ts = self.time - (t0 if t0 is not None else self.time)
        return f"#{self.index} {ts:9.6f} {self.describe()}"

    def describe(self) -> str:
        """The packet alone, tcpdump-like (no frame number or time)."""
        if self.arp_op is not None:
            if self.arp_op == 1:
                return f"ARP who-has {self.arp_pdst} tell {self.arp_psrc} ({self.arp_hwsrc})"
            if self.arp_op == 2:
                return f"ARP reply {self.arp_psrc} is-at {self.arp_hwsrc} (to {self.arp_pdst})"
            return f"ARP op {self.arp_op} {self.arp_psrc} > {self.arp_pdst}"
        if not self.ips:
            return f"{self.other or 'non-IP frame'} ({self.size} bytes)"
        if self.vni is not None:
            outer = self.ips[0]
            parts = [f"IP {outer.src}.{self.vxlan_sport} > {outer.dst}.{self.vxlan_dport} VXLAN vni {self.vni} "
                     f"{self.inner_eth_src} > {self.inner_eth_dst}:"]
            parts += [f"IP {hdr.src} > {hdr.dst} ipip:" for hdr in self.ips[1:-1]]
        else:
            parts = [f"IP {hdr.src} > {hdr.dst} ipip:" for hdr in self.ips[:-1]]
        parts.append(self._l4_summary())
        return " ".join(parts)

    def _l4_summary(self) -> str:
        hdr = self.ips[-1]
        ipv = "IP" if hdr.version == 4 else "IP6"
        if self.sport is not None:
            txt = f"{ipv} {hdr.src}.{self.sport} > {hdr.dst}.{self.dport} {self.l4_name}"
            if self.tcp_flags is not None:
                txt += f" [{self.tcp_flags}] seq {self.seq}"
            if self.payload:
                txt += f" len {len(self.payload)}"
                first = _http_first_line(self.payload)
                if first:
                    txt += f' "{first}"'
            return txt
        if self.icmp_type is not None:
            txt = f"{ipv} {hdr.src} > {hdr.dst} ICMP type {self.icmp_type} code {self.icmp_code}"
            if self.icmp_type == 3 and self.icmp_code == 4:
                txt = f"{ipv} {hdr.src} > {hdr.dst} ICMP frag-needed mtu {self.icmp_mtu}"
            elif self.icmp_type == 8:
                txt = f"{ipv} {hdr.src} > {hdr.dst} ICMP echo request"
            elif self.icmp_type == 0:
                txt = f"{ipv} {hdr.src} > {hdr.dst} ICMP echo reply"
            if self.quoted is not None:
                txt += f" (about {self.quoted.src} > {self.quoted.dst})"
            return txt + f" length {hdr.length}" + (" DF" if hdr.df else "")
        return f"{ipv} {hdr.src} > {hdr.dst} proto {self.l4_name} length {hdr.length}"


_PROTO_NAMES = {1: "ICMP", 4: "IPIP", 6: "TCP", 17: "UDP", 47: "GRE", 58: "ICMP6"}


def _http_first_line(payload: bytes) -> str | None:
    """The request/status line when ``payload`` starts an HTTP message."""
    if payload.startswith(b"HTTP/1.") or payload.split(b" ", 1)[0] in _HTTP_METHODS:
        return payload.split(b"\r\n", 1)[0].decode("latin-1")[:80]
    return None


_HTTP_METHODS = {b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH"}


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def _ip4(b: bytes) -> str:
    return f"{b[0]}.{b[1]}.{b[2]}.{b[3]}"


_TCP_LETTERS = "FSRPAUECN"  # scapy's order: bit 0 (FIN) first


def _tcp_flags(bits: int) -> str:
    return "".join(c for i, c in enumerate(_TCP_LETTERS) if bits & (1 << i))


def _decode_bytes(index: int, time: float, source: str, data: bytes, linktype: int) -> Frame:
    """Decode one captured frame (Ethernet, raw IP, Linux cooked) into a :class:`Frame`.

    A small struct-based dissector for what the matchers need (ARP, IPv4 with
    IPIP nesting, IPv6 headers, TCP, UDP, ICMP); scapy dissects on demand
    (:attr:`Frame.packet`). Truncated or odd frames decode as far as they can.
    """
    fr = Frame(index=index, time=time, source=source, size=len(data), raw=data,
               linktype=linktype)
    off, etype = 0, None
    if linktype == 1:
        if len(data) < 14:
            fr.other = "truncated Ethernet frame"
            return fr
        fr.eth_dst, fr.eth_src = _mac(data[0:6]), _mac(data[6:12])
        etype, off = struct.unpack_from("!H", data, 12)[0], 14
        while etype in (0x8100, 0x88A8) and len(data) >= off + 4:  # VLAN tags
            etype, off = struct.unpack_from("!H", data, off + 2)[0], off + 4
    elif linktype == 113 and len(data) >= 16:  # Linux cooked v1
        etype, off = struct.unpack_from("!H", data, 14)[0], 16
    elif linktype == 276 and len(data) >= 20:  # Linux cooked v2
        etype, off = struct.unpack_from("!H", data, 0)[0], 20
    elif linktype in _RAW_IP_LINKTYPES and data:
        etype = {4: 0x0800, 6: 0x86DD}.get(data[0] >> 4)
    if etype == 0x0806 and len(data) >= off + 28:
        op = struct.unpack_from("!H", data, off + 6)[0]
        fr.arp_op = op
        fr.arp_hwsrc, fr.arp_psrc = _mac(data[off + 8:off + 14]), _ip4(data[off + 14:off + 18])
        fr.arp_hwdst, fr.arp_pdst = _mac(data[off + 18:off + 24]), _ip4(data[off + 24:off + 28])
        return fr
    if etype not in (0x0800, 0x86DD):
        fr.other = f"ethertype {etype:#06x}" if etype is not None else f"linktype {linktype} frame"
        return fr
    ips: list[IpHeader] = []
    proto, l4, end = None, off, len(data)
    version = 4 if etype == 0x0800 else 6
    while True:
        if version == 4:
            if len(data) < l4 + 20:
                break
            vihl, tos, tot, ident, frag, ttl, proto = struct.unpack_from("!BBHHHBB", data, l4)
            ihl = (vihl & 0x0F) * 4
            ips.append(IpHeader(_ip4(data[l4 + 12:l4 + 16]), _ip4(data[l4 + 16:l4 + 20]), proto,
                                ttl, tot, bool(frag & 0x4000), 4, tos, ident))
            end = min(len(data), l4 + tot) if tot else len(data)
            first_fragment = (frag & 0x1FFF) == 0
            l4 += ihl
            if proto == 4 and first_fragment and len(data) >= l4 + 1 and data[l4] >> 4 == 4:
                continue  # IP-in-IP: decode the inner header too
            if not first_fragment:
                proto = None  # a later fragment carries no transport header
            break
        if len(data) < l4 + 40:
            break
        plen, proto, hlim = struct.unpack_from("!HBB", data, l4 + 4)
        ips.append(IpHeader(socket.inet_ntop(socket.AF_INET6, data[l4 + 8:l4 + 24]),
                            socket.inet_ntop(socket.AF_INET6, data[l4 + 24:l4 + 40]), proto, hlim,
                            plen + 40, False, 6))
        end = min(len(data), l4 + 40 + plen)
        l4 += 40
        break
    fr.ips = tuple(ips)
    if not ips:
        fr.other = "truncated IP packet"
        return fr
    if proto == 6 and end >= l4 + 20:
        sport, dport, seq, ack, doff, flags = struct.unpack_from("!HHIIBB", data, l4)
        fr.sport, fr.dport, fr.seq, fr.ack = sport, dport, seq, ack
        fr.tcp_flags = _tcp_flags(flags | ((doff & 0x01) << 8))
        fr.payload = data[l4 + (doff >> 4) * 4:end]
    elif proto == 17 and end >= l4 + 8:
        fr.sport, fr.dport = struct.unpack_from("!HH", data, l4)
        fr.payload = data[l4 + 8:end]
        if (fr.dport in VXLAN_PORTS and len(ips) == 1 and end >= l4 + 8 + 8 + 14
                and data[l4 + 8] & 0x08):  # the VXLAN header's I flag: a valid VNI follows
            _vxlan(fr, data[l4 + 16:end], index, time, source)
    elif proto == 1 and version == 4 and end >= l4 + 4:
        fr.icmp_type, fr.icmp_code = data[l4], data[l4 + 1]
        if fr.icmp_type in (0, 8) and end >= l4 + 8:
            fr.icmp_id, fr.icmp_seq = struct.unpack_from("!HH", data, l4 + 4)
            fr.payload = data[l4 + 8:end]
        elif fr.icmp_type in (3, 4, 5, 11, 12) and end >= l4 + 28:
            if fr.icmp_type == 3 and fr.icmp_code == 4:
                fr.icmp_mtu = struct.unpack_from("!H", data, l4 + 6)[0]
            q = l4 + 8
            _v, _t, qtot, _i, qfrag, qttl, qproto = struct.unpack_from("!BBHHHBB", data, q)
            fr.quoted = IpHeader(_ip4(data[q + 12:q + 16]), _ip4(data[q + 16:q + 20]), qproto,
                                 qttl, qtot, bool(qfrag & 0x4000), 4)
    return fr


def _vxlan(fr: Frame, inner: bytes, index: int, time: float, source: str) -> None:
    """Fill ``fr`` (a UDP/4789 frame) from its VXLAN payload: VNI, inner MACs, inner packet."""
    vni = int.from_bytes(fr.payload[4:7], "big")
    sub = _decode_bytes(index, time, source, inner, 1)
    fr.vni, fr.vxlan_sport, fr.vxlan_dport = vni, fr.sport, fr.dport
    fr.inner_eth_src, fr.inner_eth_dst = sub.eth_src, sub.eth_dst
    fr.ips = fr.ips + sub.ips
    fr.sport, fr.dport, fr.tcp_flags, fr.seq, fr.ack = sub.sport, sub.dport, sub.tcp_flags, sub.seq, sub.ack
    fr.payload = sub.payload
    fr.icmp_type, fr.icmp_code, fr.icmp_mtu = sub.icmp_type, sub.icmp_code, sub.icmp_mtu
    fr.icmp_id, fr.icmp_seq, fr.quoted = sub.icmp_id, sub.icmp_seq, sub.quoted
    if not sub.ips:
        fr.other = f"VXLAN vni {vni} carrying {sub.describe()}"


def _scapy_dissect(data: bytes, linktype: int) -> Any:
    """scapy's dissection of a frame (for users who want every field)."""
    import scapy.layers.inet  # noqa: F401  (registers IP/IPIP bindings)
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Ether
    from scapy.packet import Raw

    if linktype == 1:
        return Ether(data)
    if linktype == 113:
        return CookedLinux(data)
    if linktype == 276:
        return CookedLinuxV2(data)
    if data and data[0] >> 4 == 4:
        from scapy.layers.inet import IP

        return IP(data)
    if data and data[0] >> 4 == 6:
        return IPv6(data)
    return Raw(data)


# ----------------------------------------------------------------------------- traces


class Trace:
    """The decoded content of one capture file (one interface of one node)."""

    def __init__(self, path: str | os.PathLike[str] | None, frames: list[Frame],
                 linktype: int | None = None, label: str | None = None):
        self.path = Path(path) if path is not None else None
        self.frames = frames
        self.linktype = linktype
        self.label = label or (self.path.stem if self.path else "capture")

    @property
    def node(self) -> str | None:
        """Node part of a ``<node>-<iface>.pcap`` name."""
        return self.label.rsplit("-", 1)[0] if "-" in self.label else None

    @property
    def iface(self) -> str:
        """Interface part of a ``<node>-<iface>.pcap`` name (the whole stem otherwise)."""
        return self.label.rsplit("-", 1)[-1]

    @property
    def where(self) -> str:
        """How failure messages name this capture."""
        if self.path is None:
            return self.label
        return f"{self.path.name} (interface {self.iface}, {self.path})"

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self):
        return iter(self.frames)

    def select(self, match: Match | Callable[[Frame], bool]) -> list[Frame]:
        """The frames for which ``match`` holds, in capture order."""
        return [f for f in self.frames if match(f)]

    def count(self, match: Match | Callable[[Frame], bool]) -> int:
        """How many frames ``match``."""
        return sum(1 for f in self.frames if match(f))

    def summary(self, limit: int = SUMMARY_LIMIT, frames: Sequence[Frame] | None = None) -> str:
        """Short listing of the frames (all, or ``frames``), for failure messages."""
        frames = self.frames if frames is None else frames
        if not self.frames:
            return "    (the capture is empty: no packets at all)"
        t0 = self.frames[0].time
        lines = [f"    {f.summary(t0)}" for f in frames[:limit]]
        if len(frames) > limit:
            lines.append(f"    ... and {len(frames) - limit} more")
        return "\n".join(lines)

    def fail(self, expected: str, found: str | None = None,
             frames: Sequence[Frame] | None = None) -> CaptureAssertionError:
        """Build the standard failure: expected X / on <where> / found instead ..."""
        head = f"expected {expected}\n  on {self.where}"
        found = found or f"found instead {len(self.frames)} packet(s)"
        return CaptureAssertionError(f"{head}\n  {found}:\n{self.summary(frames=frames)}")

    def expect(self, match: Match, *, at_least: int = 1, exactly: int | None = None,
               what: str | None = None) -> list[Frame]:
        """Assert that ``match`` holds for enough frames; return them."""
        got = self.select(match)
        ok = len(got) == exactly if exactly is not None else len(got) >= at_least
        if not ok:
            want = f"exactly {exactly}" if exactly is not None else f"at least {at_least}"
            label = what or str(match)
            raise self.fail(f"{want} packet(s) of {label}",
                            f"found {len(got)} matching among {len(self.frames)} packet(s)")
        return got

    def expect_none(self, match: Match, *, what: str | None = None) -> None:
        """Assert that no frame matches."""
        got = self.select(match)
        if got:
            raise self.fail(f"no {what or match}",
                            f"found {len(got)} such packet(s) among {len(self.frames)}",
                            frames=got)

    def expect_sequence(self, *matches: Match, what: str | None = None) -> list[Frame]:
        """Assert that frames matching each of ``matches`` appear in this order."""
        out: list[Frame] = []
        pos = 0
        for i, m in enumerate(matches):
            found = next(((k, f) for k, f in enumerate(self.frames[pos:], start=pos) if m(f)),
                         None)
            if found is None:
                lines = [f"step {j + 1}: {matches[j]} -> seen at #{f.index}"
                         for j, f in enumerate(out)]
                note = f"step {i + 1}: {m} -> NOT SEEN"
                if pos:
                    note += f" after #{self.frames[pos - 1].index}"
                    earlier = self.count(m)
                    if earlier:
                        note += f" (matches {earlier} earlier frame(s): out of order)"
                lines.append(note)
                lines += [f"step {j + 1}: {x} -> not reached"
                          for j, x in enumerate(matches[i + 1:], start=i + 1)]
                steps = "".join(f"\n    {line}" for line in lines)
                raise self.fail(f"{what or 'a sequence of packets'} in order:{steps}",
                                f"found instead {len(self.frames)} packet(s)")
            out.append(found[1])
            pos = found[0] + 1
        return out


_PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
                b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_LINKTYPE_OF = {"Ether": 1, "CookedLinux": 113, "CookedLinuxV2": 276}


def load(path: str | os.PathLike[str] | Trace, label: str | None = None) -> Trace:
    """Read a pcap (or pcapng, through scapy) file into a :class:`Trace`.

    Classic pcap files (what tcpdump -w writes) are read by a small reader of our
    own; a last record cut short (a file still being written) is ignored.
    """
    if isinstance(path, Trace):
        return path
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"capture file {p} does not exist")
    lbl = label or p.stem
    data = p.read_bytes()
    if not data:
        raise CaptureAssertionError(f"capture file {p} is empty (0 bytes): not a pcap "
                                    "(was tcpdump stopped before it wrote its header?)")
    if data[:4] == _PCAPNG_MAGIC:
        return _load_pcapng(p, lbl)
    if data[:4] not in _PCAP_MAGICS or len(data) < 24:
        raise CaptureAssertionError(f"capture file {p} is not a pcap/pcapng file "
                                    f"(starts with {data[:4].hex()})")
    order, unit = _PCAP_MAGICS[data[:4]]
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0x0FFFFFFF
    rec = struct.Struct(order + "IIII")
    frames: list[Frame] = []
    off, n = 24, 0
    while off + 16 <= len(data):
        sec, frac, incl, _orig = rec.unpack_from(data, off)
        if off + 16 + incl > len(data):
            break
        n += 1
        frames.append(_decode_bytes(n, sec + frac * unit, lbl, data[off + 16:off + 16 + incl],
                                    linktype))
        off += 16 + incl
    return Trace(p, frames, linktype, lbl)


def _load_pcapng(p: Path, lbl: str) -> Trace:
    import scapy.layers.inet  # noqa: F401
    import scapy.layers.inet6  # noqa: F401
    import scapy.layers.l2  # noqa: F401
    from scapy.error import Scapy_Exception
    from scapy.utils import PcapNgReader

    frames: list[Frame] = []
    linktype = None
    try:
        with PcapNgReader(str(p)) as reader:
            for i, pkt in enumerate(reader, start=1):
                lt = _LINKTYPE_OF.get(type(pkt).__name__, 101)
                linktype = linktype or lt
                frames.append(_decode_bytes(i, float(pkt.time), lbl, bytes(pkt), lt))
    except Scapy_Exception as exc:
        raise CaptureAssertionError(f"capture file {p} is not a readable pcapng file: {exc}") from exc
    return Trace(p, frames, linktype, lbl)


def _trace(cap: Trace | str | os.PathLike[str]) -> Trace:
    return cap if isinstance(cap, Trace) else load(cap)


# ----------------------------------------------------------------------------- matchers


class Match:
    """A named predicate on :class:`Frame`; combine with ``&``, ``|``, ``~``."""

    def __init__(self, description: str, predicate: Callable[[Frame], bool]):
        self.description = description
        self.predicate = predicate

    def __call__(self, frame: Frame) -> bool:
        return bool(self.predicate(frame))

    def __and__(self, other: Match) -> Match:
        return Match(f"{self} and {other}", lambda f: self(f) and other(f))

    def __or__(self, other: Match) -> Match:
        return Match(f"({self} or {other})", lambda f: self(f) or other(f))

    def __invert__(self) -> Match:
        return Match(f"not ({self})", lambda f: not self(f))

    def __str__(self) -> str:
        return self.description

    __repr__ = __str__


def _addr_test(spec: str | None) -> Callable[[str], bool]:
    """Predicate for an address or CIDR (None matches anything)."""
    if spec is None:
        return lambda a: True
    try:
        net = ipaddress.ip_network(spec, strict=False)
    except ValueError as exc:
        raise ValueError(f"not an IP address or CIDR: {spec!r}") from exc

    def test(addr: str) -> bool:
        try:
            return ipaddress.ip_address(addr) in net
        except ValueError:
            return False

    return test


def _hdr_desc(src: str | None, dst: str | None) -> str:
    return f"{src or '*'} > {dst or '*'}"


def _hdr_match(hdr: IpHeader | None, src_t, dst_t, proto: int | None) -> bool:
    return (hdr is not None and src_t(hdr.src) and dst_t(hdr.dst)
            and (proto is None or hdr.proto == proto))


def any_frame() -> Match:
    """Every frame."""
    return Match("any packet", lambda f: True)


def outer(src: str | None = None, dst: str | None = None, proto: int | None = None) -> Match:
    """The outermost IP header has these addresses (address or CIDR) and protocol."""
    s, d = _addr_test(src), _addr_test(dst)
    pdesc = f" proto {_PROTO_NAMES.get(proto, proto)}" if proto is not None else ""
    return Match(f"IP {_hdr_desc(src, dst)}{pdesc}", lambda f: _hdr_match(f.outer, s, d, proto))


def inner(src: str | None = None, dst: str | None = None, proto: int | None = None) -> Match:
    """The innermost IP header (the pod packet, encapsulated or not) has these fields."""
    s, d = _addr_test(src), _addr_test(dst)
    pdesc = f" proto {_PROTO_NAMES.get(proto, proto)}" if proto is not None else ""
    return Match(f"packet {_hdr_desc(src, dst)}{pdesc}",
                 lambda f: _hdr_match(f.inner, s, d, proto))


def plain(src: str | None = None, dst: str | None = None, *, net: str | None = None) -> Match:
    """An un-encapsulated IP packet from ``src`` to ``dst``, or with either address in ``net``."""
    s, d, n = _addr_test(src), _addr_test(dst), _addr_test(net)
    desc = f"un-encapsulated IP {_hdr_desc(src, dst)}"
    if net:
        desc = f"un-encapsulated IP to or from {net}"
    return Match(desc, lambda f: bool(f.ips) and not f.encapsulated
                 and _hdr_match(f.outer, s, d, None)
                 and (net is None or n(f.outer.src) or n(f.outer.dst)))


def ipip(outer_src: str | None = None, outer_dst: str | None = None,
         inner_src: str | None = None, inner_dst: str | None = None) -> Match:
    """An IP-in-IP (protocol 4) packet with these outer and inner addresses."""
    os_, od = _addr_test(outer_src), _addr_test(outer_dst)
    is_, id_ = _addr_test(inner_src), _addr_test(inner_dst)
    return Match(f"IPIP {_hdr_desc(outer_src, outer_dst)} carrying {_hdr_desc(inner_src, inner_dst)}",
                 lambda f: f.encapsulated and f.outer.proto == 4
                 and _hdr_match(f.outer, os_, od, None) and _hdr_match(f.inner, is_, id_, None))


def vxlan(outer_src: str | None = None, outer_dst: str | None = None,
          inner_src: str | None = None, inner_dst: str | None = None, *, vni: int | None = None,
          inner_mac_src: str | None = None, inner_mac_dst: str | None = None,
          port: int | None = None) -> Match:
    """A VXLAN packet (UDP to ``port``, default any of :data:`VXLAN_PORTS`) with these outer
    (node) addresses, VNI, inner Ethernet MACs and inner (pod) addresses."""
    os_, od = _addr_test(outer_src), _addr_test(outer_dst)
    is_, id_ = _addr_test(inner_src), _addr_test(inner_dst)
    parts = [f"VXLAN {_hdr_desc(outer_src, outer_dst)}"]
    if port is not None:
        parts.append(f"port {port}")
    if vni is not None:
        parts.append(f"vni {vni}")
    if inner_mac_src or inner_mac_dst:
        parts.append(f"ether {inner_mac_src or '*'} > {inner_mac_dst or '*'}")
    parts.append(f"carrying {_hdr_desc(inner_src, inner_dst)}")

    def pred(f: Frame) -> bool:
        return (f.vni is not None and len(f.ips) > 1 and (port is None or f.vxlan_dport == port)
                and (vni is None or f.vni == vni)
                and (inner_mac_src is None or (f.inner_eth_src or "").lower() == inner_mac_src.lower())
                and (inner_mac_dst is None or (f.inner_eth_dst or "").lower() == inner_mac_dst.lower())
                and _hdr_match(f.outer, os_, od, 17) and _hdr_match(f.inner, is_, id_, None))

    return Match(" ".join(parts), pred)


def between(a: str, b: str) -> Match:
    """Innermost IP header between ``a`` and ``b``, either direction."""
    ta, tb = _addr_test(a), _addr_test(b)
    return Match(f"packet between {a} and {b}",
                 lambda f: f.inner is not None and ((ta(f.inner.src) and tb(f.inner.dst))
                                                    or (tb(f.inner.src) and ta(f.inner.dst))))


def _flags_ok(have: str | None, want: str | None) -> bool:
    if want is None:
        return True
    return have is not None and set(have) == set(want)


def tcp(sport: int | None = None, dport: int | None = None, flags: str | None = None) -> Match:
    """A TCP segment (innermost) with these ports and exactly these flags (e.g. "S", "SA")."""
    desc = "TCP" + (f" sport {sport}" if sport else "") + (f" dport {dport}" if dport else "")
    desc += f" [{flags}]" if flags else ""
    return Match(desc, lambda f: f.tcp_flags is not None
                 and (sport is None or f.sport == sport) and (dport is None or f.dport == dport)
                 and _flags_ok(f.tcp_flags, flags))


def udp(sport: int | None = None, dport: int | None = None) -> Match:
    """A UDP datagram (innermost) with these ports."""
    desc = "UDP" + (f" sport {sport}" if sport else "") + (f" dport {dport}" if dport else "")
    return Match(desc, lambda f: f.inner is not None and f.inner.proto == 17
                 and f.sport is not None
                 and (sport is None or f.sport == sport) and (dport is None or f.dport == dport))


def icmp(type: int | None = None, code: int | None = None) -> Match:  # noqa: A002
    """An ICMP message (innermost) of this type/code."""
    desc = "ICMP" + (f" type {type}" if type is not None else "") + (
        f" code {code}" if code is not None else "")
    return Match(desc, lambda f: f.icmp_type is not None
                 and (type is None or f.icmp_type == type) and (code is None or f.icmp_code == code))


def frag_needed(mtu: int | None = None) -> Match:
    """ICMP destination unreachable, fragmentation needed (3/4), with this next-hop MTU."""
    desc = "ICMP fragmentation-needed" + (f" mtu {mtu}" if mtu is not None else "")
    return Match(desc, lambda f: f.icmp_type == 3 and f.icmp_code == 4
                 and (mtu is None or f.icmp_mtu == mtu))


def http_request(method: str | None = None, path: str | None = None) -> Match:
    """A TCP payload starting an HTTP request (optionally this method and path)."""
    desc = "HTTP request" + (f" {method}" if method else "") + (f" {path}" if path else "")

    def pred(f: Frame) -> bool:
        first = _http_first_line(f.payload) if f.tcp_flags is not None else None
        if not first or first.startswith("HTTP/"):
            return False
        parts = first.split(" ")
        return ((method is None or parts[0] == method)
                and (path is None or (len(parts) > 1 and parts[1] == path)))

    return Match(desc, pred)


def http_response(status: int | None = None) -> Match:
    """A TCP payload starting an HTTP response (optionally with this status code)."""
    desc = "HTTP response" + (f" status {status}" if status is not None else "")

    def pred(f: Frame) -> bool:
        first = _http_first_line(f.payload) if f.tcp_flags is not None else None
        if not first or not first.startswith("HTTP/"):
            return False
        parts = first.split(" ")
        return status is None or (len(parts) > 1 and parts[1] == str(status))

    return Match(desc, pred)


def arp_request(target: str | None = None, sender: str | None = None) -> Match:
    """ARP who-has ``target`` (asked by ``sender``)."""
    desc = f"ARP who-has {target or '*'}" + (f" tell {sender}" if sender else "")
    return Match(desc, lambda f: f.arp_op == 1 and (target is None or f.arp_pdst == target)
                 and (sender is None or f.arp_psrc == sender))


def arp_reply(ip: str | None = None, mac: str | None = None, to: str | None = None) -> Match:
    """ARP reply ``ip`` is-at ``mac`` (to ``to``)."""
    desc = f"ARP reply {ip or '*'} is-at {mac or '*'}" + (f" to {to}" if to else "")
    return Match(desc, lambda f: f.arp_op == 2 and (ip is None or f.arp_psrc == ip)
                 and (mac is None or (f.arp_hwsrc or "").lower() == mac.lower())
                 and (to is None or f.arp_pdst == to))


# ----------------------------------------------------------------------------- generic helpers


def assert_seen(cap: Trace | str | os.PathLike[str], match: Match, *, at_least: int = 1,
                what: str | None = None) -> list[Frame]:
    """At least ``at_least`` frames match; return them."""
    return _trace(cap).expect(match, at_least=at_least, what=what)


def assert_none(cap: Trace | str | os.PathLike[str], match: Match | None = None, *,
                what: str | None = None) -> None:
    """No frame matches (``match`` None: the capture holds no IP or ARP packet at all)."""
    tr = _trace(cap)
    if match is None:
        match = Match("traffic (any IP or ARP packet)",
                      lambda f: bool(f.ips) or f.arp_op is not None)
    tr.expect_none(match, what=what)


def assert_sequence(cap: Trace | str | os.PathLike[str], *matches: Match,
                    what: str | None = None) -> list[Frame]:
    """Frames matching each of ``matches`` appear in this order; return them."""
    return _trace(cap).expect_sequence(*matches, what=what)


# ----------------------------------------------------------------------------- flow helpers


def assert_http_exchange(cap: Trace | str | os.PathLike[str], client: str, server: str, *,
                         port: int = 80, status: int | None = 200,
                         method: str | None = "GET") -> list[Frame]:
    """A TCP/HTTP exchange: SYN, SYN-ACK, request, response (``status``) in that order.

    Addresses are matched on the innermost header, so this also holds on an
    interface where the exchange is IPIP-encapsulated. Returns the four frames.
    """
    tr = _trace(cap)
    c2s, s2c = inner(client, server, 6), inner(server, client, 6)
    return tr.expect_sequence(
        c2s & tcp(dport=port, flags="S"),
        s2c & tcp(sport=port, flags="SA"),
        c2s & tcp(dport=port) & http_request(method),
        s2c & tcp(sport=port) & http_response(status),
        what=f"an HTTP exchange {client} -> {server}:{port}",
    )


def assert_ipip(cap: Trace | str | os.PathLike[str], *, outer_src: str, outer_dst: str,
                inner_src: str | None = None, inner_dst: str | None = None,
                no_plain: Iterable[str] | None = None, at_least: int = 1) -> list[Frame]:
    """IPIP packets with these outer (node) and inner (pod) addresses on this interface.

    Also asserts that no un-encapsulated packet travels between the inner
    addresses, and none to/from any network in ``no_plain`` (e.g. the pool CIDR).
    """
    tr = _trace(cap)
    got = tr.expect(ipip(outer_src, outer_dst, inner_src, inner_dst), at_least=at_least)
    if inner_src and inner_dst:
        tr.expect_none(plain(inner_src, inner_dst) | plain(inner_dst, inner_src),
                       what=f"un-encapsulated pod traffic between {inner_src} and {inner_dst}")
    for net in [no_plain] if isinstance(no_plain, str) else (no_plain or ()):
        tr.expect_none(plain(net=net), what=f"un-encapsulated traffic to or from {net}")
    return got


def assert_dropped(client_side: Trace | str | os.PathLike[str], server_side: Trace | str | os.PathLike[str], *,
                   client: str, server: str, port: int, tunnel: Trace | str | os.PathLike[str] | None = None,
                   since: float | None = None, until: float | None = None) -> list[Frame]:
    """A connection policy dropped: the client's SYN leaves its pod (``client_side``, the client's
    cali interface), crosses the server node's ``tunnel`` (tunl0, when it crosses nodes) and
    never reaches the server's interface (``server_side``); no SYN-ACK comes back anywhere.

    ``since`` and ``until`` (epoch seconds) ignore packets between the same pods before and
    after the flow (earlier flows, a later one once a policy allows it). Returns the SYNs
    seen on the client's interface.
    """
    def recent(tr: Trace) -> Trace:
        if since is None and until is None:
            return tr
        lo, hi = since if since is not None else float("-inf"), until if until is not None else float("inf")
        return Trace(tr.path, [f for f in tr.frames if lo <= f.time < hi], tr.linktype, tr.label)

    syn = inner(client, server, 6) & tcp(dport=port, flags="S")
    synack = inner(server, client, 6) & tcp(sport=port, flags="SA")
    c = recent(_trace(client_side))
    got = c.expect(syn, what=f"the SYN {client} -> {server}:{port} leaving the client")
    c.expect_none(synack, what=f"a SYN-ACK from {server}:{port} (the connection was meant to be dropped)")
    if tunnel is not None:
        recent(_trace(tunnel)).expect(syn, what=f"the SYN {client} -> {server}:{port} decapsulated on the "
                                                "server node's tunnel")
    recent(_trace(server_side)).expect_none(syn, what=f"a SYN {client} -> {server}:{port} reaching the server "
                                                      "(policy should have dropped it)")
    return got


def assert_vxlan(cap: Trace | str | os.PathLike[str], *, outer_src: str, outer_dst: str,
                 inner_src: str | None = None, inner_dst: str | None = None, vni: int | None = 4096,
                 inner_mac_src: str | None = None, inner_mac_dst: str | None = None,
                 port: int | None = 4789, no_plain: Iterable[str] | None = None,
                 at_least: int = 1) -> list[Frame]:
    """VXLAN packets on this interface: UDP to ``port`` between the nodes ``outer_src`` and
    ``outer_dst``, VNI ``vni``, an inner Ethernet frame between the tunnel MACs, and the pod
    packet ``inner_src`` > ``inner_dst`` inside.

    Also asserts that no un-encapsulated packet travels between the inner addresses, none
    to/from any network in ``no_plain``, and no IPIP.
    """
    tr = _trace(cap)
    got = tr.expect(vxlan(outer_src, outer_dst, inner_src, inner_dst, vni=vni, inner_mac_src=inner_mac_src,
                          inner_mac_dst=inner_mac_dst, port=port), at_least=at_least)
    if inner_src and inner_dst:
        tr.expect_none(plain(inner_src, inner_dst) | plain(inner_dst, inner_src),
                       what=f"un-encapsulated pod traffic between {inner_src} and {inner_dst}")
        tr.expect_none(ipip(inner_src=inner_src, inner_dst=inner_dst), what="IPIP instead of VXLAN")
    for net in [no_plain] if isinstance(no_plain, str) else (no_plain or ()):
        tr.expect_none(plain(net=net), what=f"un-encapsulated traffic to or from {net}")
    return got


def assert_routed(cap: Trace | str | os.PathLike[str], src: str, dst: str, *, eth_dst: str | None = None,
                  at_least: int = 1) -> list[Frame]:
    """Plain routing, no encapsulation: the pod packets ``src`` > ``dst`` cross this
    interface as they are (pod addresses in the only IP header; to the MAC ``eth_dst``,
    e.g. the next node's, if given), and nothing carries them in IPIP or VXLAN."""
    tr = _trace(cap)
    m = plain(src, dst)
    if eth_dst is not None:
        m = m & Match(f"to ether {eth_dst}", lambda f: (f.eth_dst or "").lower() == eth_dst.lower())
    got = tr.expect(m, at_least=at_least, what=f"routed (un-encapsulated) packets {src} > {dst}"
                    + (f" to {eth_dst}" if eth_dst else ""))
    tr.expect_none(Match(f"encapsulated packets between {src} and {dst}",
                         lambda f: f.encapsulated and between(src, dst)(f)),
                   what=f"IPIP or VXLAN carrying {src} <-> {dst} (expected plain routing)")
    return got


def assert_no_plain(cap: Trace | str | os.PathLike[str], *nets: str) -> None:
    """No un-encapsulated IP packet to or from any of ``nets`` (pod addresses or pool CIDRs)."""
    tr = _trace(cap)
    for net in nets:
        tr.expect_none(plain(net=net), what=f"un-encapsulated traffic to or from {net}")


def assert_on_tunnel(cap: Trace | str | os.PathLike[str], src: str, dst: str, *,
                     proto: int | None = None, at_least: int = 1) -> list[Frame]:
    """Decapsulated (inner) packets ``src`` -> ``dst`` on a tunnel interface such as tunl0.

    The frames must be plain IP (a TUN/ipip capture is raw IP), not IPIP.
    """
    tr = _trace(cap)
    return tr.expect(plain(src, dst) & Match(
        f"proto {proto}" if proto is not None else "any protocol",
        lambda f: proto is None or f.outer.proto == proto),
        at_least=at_least, what=f"decapsulated packets {src} > {dst}"
        + (f" proto {_PROTO_NAMES.get(proto, proto)}" if proto is not None else ""))


def assert_arp_gateway(cap: Trace | str | os.PathLike[str], *, gateway: str = "169.254.1.1",
                       mac: str = "ee:ee:ee:ee:ee:ee", asker: str | None = None,
                       before_traffic: bool = False) -> list[Frame]:
    """The pod asks who-has ``gateway`` and is answered with ``mac`` (proxy ARP), in order.

    With ``before_traffic`` the pod's traffic waits for the answer: no IPv4 packet from
    ``asker`` between the request and the reply, and at least one after it.
    Returns ``[request, reply]``.
    """
    tr = _trace(cap)
    frames = tr.expect_sequence(arp_request(gateway, asker),
                                arp_reply(gateway, mac, to=asker),
                                what=f"ARP for {gateway} answered with {mac}")
    if before_traffic:
        if asker is None:
            raise ValueError("before_traffic needs asker= (the pod's address)")
        req, rep = frames
        from_asker = [f for f in tr.frames if f.outer is not None and f.outer.src == asker]
        early = [f for f in from_asker if req.index < f.index < rep.index]
        if early:
            raise tr.fail(f"the ARP reply for {gateway} before {asker}'s next IP packet",
                          f"IP packet #{early[0].index} came before the reply #{rep.index}")
        if not any(f.index > rep.index for f in from_asker):
            raise tr.fail(f"an IP packet from {asker} after the ARP reply #{rep.index}",
                          "none came")
    return frames


def assert_masqueraded(cap: Trace | str | os.PathLike[str], *, node_ip: str, pod_ip: str,
                       dst: str, port: int | None = None) -> list[Frame]:
    """On the external segment, ``pod_ip``'s traffic to ``dst`` appears with source ``node_ip``.

    Asserts packets node_ip -> dst (and dst -> node_ip replies), and that
    ``pod_ip`` never appears in a header there. Returns the outgoing frames.
    """
    tr = _trace(cap)
    to_dst = outer(node_ip, dst)
    if port is not None:
        to_dst = to_dst & Match(f"dport {port}", lambda f: f.dport == port)
    got = tr.expect(to_dst, what=f"masqueraded packets {node_ip} > {dst}"
                    + (f" port {port}" if port else "") + f" (pod {pod_ip} hidden behind the node)")
    tr.expect(outer(dst, node_ip), what=f"replies {dst} > {node_ip}")
    tr.expect_none(Match(f"packets carrying the pod address {pod_ip}",
                         lambda f: any(pod_ip in (h.src, h.dst) for h in f.ips)),
                   what=f"packets carrying the pod address {pod_ip} (not masqueraded)")
    return got


def assert_dnat(pod_side: Trace | str | os.PathLike[str], *, cluster_ip: str, pod_ip: str,
                port: int = 80, pod_port: int | None = None, client: str | None = None,
                client_side: Trace | str | os.PathLike[str] | None = None) -> list[Frame]:
    """A connection to ``cluster_ip:port`` arrives at the pod as ``pod_ip:pod_port`` (DNAT).

    On the pod side: a SYN to pod_ip:pod_port (from ``client``) and no packet to
    the ClusterIP. With ``client_side`` (a capture before the NAT, e.g. the
    client pod's cali interface): the SYN is sent to the ClusterIP there, and the
    same SYN (same source port and sequence number) reaches the pod side with the
    destination rewritten. Returns ``[pod-side SYN]`` or ``[client-side SYN, pod-side SYN]``.
    """
    pod_port = pod_port or port
    pod_tr = _trace(pod_side)
    pod_syns = pod_tr.expect(inner(client, pod_ip, 6) & tcp(dport=pod_port, flags="S"),
                             what=f"SYN {client or '*'} > {pod_ip}:{pod_port} (after DNAT)")
    pod_tr.expect_none(inner(dst=cluster_ip), what=f"packets still addressed to the ClusterIP "
                       f"{cluster_ip} (not DNATed)")
    if client_side is None:
        return [pod_syns[0]]
    cl_tr = _trace(client_side)
    cl_syns = cl_tr.expect(inner(client, cluster_ip, 6) & tcp(dport=port, flags="S"),
                           what=f"SYN {client or '*'} > {cluster_ip}:{port} (before DNAT)")
    for c in cl_syns:
        for p in pod_syns:
            if c.sport == p.sport and c.seq == p.seq:
                return [c, p]
    found = ", ".join(f"sport {c.sport} seq {c.seq}" for c in cl_syns)
    raise pod_tr.fail(
        f"the client's SYN ({found}) to {cluster_ip}:{port} arriving DNATed to {pod_ip}:{pod_port}",
        f"no SYN with the same source port and sequence; {len(pod_tr)} packet(s)")


def assert_frag_needed(cap: Trace | str | os.PathLike[str], *, mtu: int, to: str | None = None,
                       about_dst: str | None = None) -> list[Frame]:
    """ICMP fragmentation-needed with next-hop MTU ``mtu`` (sent to ``to``, about a packet to
    ``about_dst``)."""
    tr = _trace(cap)
    m = frag_needed(mtu) & inner(dst=to)
    if about_dst is not None:
        m = m & Match(f"quoting a packet to {about_dst}",
                      lambda f: f.quoted is not None and f.quoted.dst == about_dst)
    return tr.expect(m)


# ----------------------------------------------------------------------------- BGP

CAPABILITY_NAMES = {
    1: "multiprotocol", 2: "route-refresh", 5: "extended-nexthop", 6: "extended-message",
    64: "graceful-restart", 65: "4-octet-as", 69: "add-path", 70: "enhanced-route-refresh",
    71: "long-lived-graceful-restart", 73: "fqdn", 128: "route-refresh-old",
}
_CAP_CODES = {v: k for k, v in CAPABILITY_NAMES.items()}
BGP_TYPES = {1: "OPEN", 2: "UPDATE", 3: "NOTIFICATION", 4: "KEEPALIVE", 5: "ROUTE-REFRESH"}


@dataclass
class BgpMessage:
    """One BGP message reassembled from a TCP stream in a capture."""

    frame: Frame  # the frame that completed the message
    src: str
    dst: str
    type: int
    raw: bytes
    asn: int | None = None  # OPEN: My AS (4-octet AS capability value if present)
    hold_time: int | None = None
    router_id: str | None = None
    capabilities: dict[int, bytes] = field(default_factory=dict)
    nlri: list[str] = field(default_factory=list)
    withdrawn: list[str] = field(default_factory=list)
    next_hop: str | None = None
    as_path: list[int] = field(default_factory=list)
    error: str | None = None  # decoding problem, if any

    @property
    def type_name(self) -> str:
        """OPEN, UPDATE, KEEPALIVE, ..."""
        return BGP_TYPES.get(self.type, str(self.type))

    def summary(self) -> str:
        """One line describing the message."""
        txt = f"{self.src} > {self.dst} BGP {self.type_name}"
        if self.type == 1:
            caps = ",".join(CAPABILITY_NAMES.get(c, str(c)) for c in self.capabilities)
            txt += f" AS {self.asn} hold {self.hold_time} id {self.router_id} caps [{caps}]"
        elif self.type == 2:
            if self.nlri:
                txt += f" nlri {','.join(self.nlri)} next-hop {self.next_hop}"
            if self.withdrawn:
                txt += f" withdrawn {','.join(self.withdrawn)}"
            if not self.nlri and not self.withdrawn:
                txt += " (end-of-RIB)"
        if self.error:
            txt += f" [decode error: {self.error}]"
        return txt


def _prefixes(data: bytes, add_path: bool) -> list[str]:
    """Decode a run of (path id,) length, prefix entries."""
    out, i = [], 0
    while i < len(data):
        if add_path:
            i += 4
        if i >= len(data):
            raise ValueError("truncated prefix")
        plen = data[i]
        nbytes = (plen + 7) // 8
        if plen > 32 or i + 1 + nbytes > len(data):
            raise ValueError(f"bad prefix length {plen}")
        addr = data[i + 1:i + 1 + nbytes] + b"\0" * (4 - nbytes)
        out.append(f"{ipaddress.IPv4Address(addr)}/{plen}")
        i += 1 + nbytes
    return out


def _decode_open(msg: BgpMessage, body: bytes) -> None:
    _ver, asn, hold, rid, optlen = struct.unpack("!BHH4sB", body[:10])
    msg.asn, msg.hold_time = asn, hold
    msg.router_id = str(ipaddress.IPv4Address(rid))
    opts, i = body[10:10 + optlen], 0
    while i + 2 <= len(opts):
        ptype, plen = opts[i], opts[i + 1]
        val = opts[i + 2:i + 2 + plen]
        i += 2 + plen
        if ptype != 2:
            continue
        j = 0
        while j + 2 <= len(val):
            code, clen = val[j], val[j + 1]
            msg.capabilities[code] = bytes(val[j + 2:j + 2 + clen])
            j += 2 + clen
    if 65 in msg.capabilities and len(msg.capabilities[65]) == 4:
        msg.asn = struct.unpack("!I", msg.capabilities[65])[0]


def _decode_update(msg: BgpMessage, body: bytes, add_path: bool, as4: bool) -> None:
    wlen = struct.unpack("!H", body[:2])[0]
    msg.withdrawn = _prefixes(body[2:2 + wlen], add_path)
    alen = struct.unpack("!H", body[2 + wlen:4 + wlen])[0]
    attrs = body[4 + wlen:4 + wlen + alen]
    msg.nlri = _prefixes(body[4 + wlen + alen:], add_path)
    i = 0
    while i + 3 <= len(attrs):
        flags, code = attrs[i], attrs[i + 1]
        if flags & 0x10:
            length = struct.unpack("!H", attrs[i + 2:i + 4])[0]
            i += 4
        else:
            length = attrs[i + 2]
            i += 3
        val = attrs[i:i + length]
        i += length
        if code == 3 and len(val) == 4:
            msg.next_hop = str(ipaddress.IPv4Address(val))
        elif code == 2:
            size = 4 if as4 else 2
            j = 0
            while j + 2 <= len(val):
                n = val[j + 1]
                seg = val[j + 2:j + 2 + n * size]
                msg.as_path += [int.from_bytes(seg[k:k + size], "big")
                                for k in range(0, len(seg), size)]
                j += 2 + n * size
        elif code == 14 and len(val) >= 5:  # MP_REACH_NLRI
            afi, safi, nhlen = struct.unpack("!HBB", val[:4])
            if afi == 1 and safi == 1:
                if nhlen >= 4:
                    msg.next_hop = str(ipaddress.IPv4Address(val[4:8]))
                msg.nlri += _prefixes(val[5 + nhlen:], add_path)
        elif code == 15 and len(val) >= 3:  # MP_UNREACH_NLRI
            afi, safi = struct.unpack("!HB", val[:3])
            if afi == 1 and safi == 1:
                msg.withdrawn += _prefixes(val[3:], add_path)


def _addpath_sends(cap: bytes | None) -> bool:
    """Whether an ADD-PATH capability says 'send' for IPv4 unicast."""
    if not cap:
        return False
    for k in range(0, len(cap) - 3, 4):
        afi, safi, mode = struct.unpack("!HBB", cap[k:k + 4])
        if afi == 1 and safi == 1 and mode in (2, 3):
            return True
    return False


def _addpath_receives(cap: bytes | None) -> bool:
    if not cap:
        return False
    for k in range(0, len(cap) - 3, 4):
        afi, safi, mode = struct.unpack("!HBB", cap[k:k + 4])
        if afi == 1 and safi == 1 and mode in (1, 3):
            return True
    return False


def bgp_messages(cap: Trace | str | os.PathLike[str], port: int = 179) -> list[BgpMessage]:
    """All BGP messages in a capture, reassembled per TCP direction, in completion order.

    ADD-PATH and 4-octet AS are honoured when both OPENs of a session are in the
    capture (the negotiated result decides how UPDATEs are decoded).
    """
    tr = _trace(cap)
    streams: dict[tuple, dict[str, Any]] = {}
    out: list[BgpMessage] = []
    opens: dict[tuple, BgpMessage] = {}  # (src, sport, dst, dport) -> OPEN sent that way
    for fr in tr.frames:
        if fr.tcp_flags is None or port not in (fr.sport, fr.dport) or fr.inner is None:
            continue
        key = (fr.inner.src, fr.sport, fr.inner.dst, fr.dport)
        st = streams.setdefault(key, {"next": None, "buf": b""})
        if "S" in fr.tcp_flags:
            st["next"], st["buf"] = (fr.seq + 1) % 2**32, b""
            continue
        if not fr.payload:
            continue
        if st["next"] is None:
            st["next"] = fr.seq
        delta = (fr.seq - st["next"]) % 2**32
        if delta >= 2**31:  # retransmission or overlap
            overlap = (st["next"] - fr.seq) % 2**32
            data = fr.payload[overlap:]
        elif delta > 0:  # gap: packets missing from the capture; resynchronise
            st["buf"], data = b"", fr.payload
        else:
            data = fr.payload
        if not data:
            continue
        st["next"] = (fr.seq + len(fr.payload)) % 2**32
        st["buf"] += data
        buf = st["buf"]
        while True:
            mark = buf.find(b"\xff" * 16)
            if mark < 0:
                buf = buf[-15:]
                break
            buf = buf[mark:]
            if len(buf) < 19:
                break
            length = struct.unpack("!H", buf[16:18])[0]
            if length < 19 or length > 65535:
                buf = buf[1:]
                continue
            if len(buf) < length:
                break
            raw, buf = buf[:length], buf[length:]
            msg = BgpMessage(frame=fr, src=key[0], dst=key[2], type=raw[18], raw=raw)
            body = raw[19:]
            rev = (key[2], key[3], key[0], key[1])
            try:
                if msg.type == 1:
                    _decode_open(msg, body)
                    opens[key] = msg
                elif msg.type == 2:
                    mine, theirs = opens.get(key), opens.get(rev)
                    add_path = as4 = False
                    if mine and theirs:
                        add_path = (_addpath_sends(mine.capabilities.get(69))
                                    and _addpath_receives(theirs.capabilities.get(69)))
                        as4 = 65 in mine.capabilities and 65 in theirs.capabilities
                    try:
                        _decode_update(msg, body, add_path, as4)
                    except (ValueError, struct.error):
                        if mine and theirs:
                            raise
                        msg.nlri, msg.withdrawn, msg.as_path = [], [], []
                        _decode_update(msg, body, not add_path, as4)
            except (ValueError, struct.error, IndexError) as exc:
                msg.error = str(exc)
            out.append(msg)
        st["buf"] = buf
    return out


def _bgp_listing(msgs: list[BgpMessage], limit: int = SUMMARY_LIMIT) -> str:
    if not msgs:
        return "    (no BGP message at all)"
    lines = [f"    #{m.frame.index} {m.summary()}" for m in msgs[:limit]]
    if len(msgs) > limit:
        lines.append(f"    ... and {len(msgs) - limit} more")
    return "\n".join(lines)


def _cap_code(c: int | str) -> int:
    if isinstance(c, int):
        return c
    if c not in _CAP_CODES:
        raise ValueError(f"unknown BGP capability name {c!r}; known: {sorted(_CAP_CODES)}")
    return _CAP_CODES[c]


def assert_bgp_open(cap: Trace | str | os.PathLike[str], *, src: str | None = None,
                    dst: str | None = None, asn: int | None = None,
                    router_id: str | None = None, hold_time: int | None = None,
                    capabilities: Iterable[int | str] = (), port: int = 179) -> BgpMessage:
    """A BGP OPEN from ``src`` to ``dst`` with these fields and at least these capabilities
    (codes or names from :data:`CAPABILITY_NAMES`). Returns the first such OPEN."""
    tr = _trace(cap)
    if isinstance(capabilities, (str, int)):
        capabilities = [capabilities]
    want_caps = [_cap_code(c) for c in capabilities]
    msgs = bgp_messages(tr, port)
    for m in msgs:
        if (m.type == 1 and (src is None or m.src == src) and (dst is None or m.dst == dst)
                and (asn is None or m.asn == asn) and (router_id is None or m.router_id == router_id)
                and (hold_time is None or m.hold_time == hold_time)
                and all(c in m.capabilities for c in want_caps)):
            return m
    want = f"a BGP OPEN {src or '*'} > {dst or '*'}"
    for k, v in (("AS", asn), ("router id", router_id), ("hold time", hold_time)):
        if v is not None:
            want += f" {k} {v}"
    if want_caps:
        want += " with capabilities " + ", ".join(CAPABILITY_NAMES.get(c, str(c)) for c in want_caps)
    raise CaptureAssertionError(f"expected {want}\n  on {tr.where}\n  found instead "
                                f"{len(msgs)} BGP message(s) in {len(tr)} packet(s):\n"
                                + _bgp_listing(msgs))


def assert_bgp_update(cap: Trace | str | os.PathLike[str], *, src: str | None = None,
                      dst: str | None = None, nlri: str | Iterable[str] | None = None,
                      next_hop: str | None = None, withdrawn: str | Iterable[str] | None = None,
                      port: int = 179) -> list[BgpMessage]:
    """BGP UPDATEs ``src`` -> ``dst`` announcing every prefix of ``nlri`` with ``next_hop``
    and/or withdrawing every prefix of ``withdrawn``. Returns the UPDATEs that did."""
    tr = _trace(cap)
    want_n = [nlri] if isinstance(nlri, str) else list(nlri or [])
    want_w = [withdrawn] if isinstance(withdrawn, str) else list(withdrawn or [])
    for p in want_n + want_w:
        ipaddress.ip_network(p)  # a clear ValueError for a malformed prefix
    msgs = bgp_messages(tr, port)
    ups = [m for m in msgs if m.type == 2 and (src is None or m.src == src)
           and (dst is None or m.dst == dst)]
    used: list[BgpMessage] = []
    missing: list[str] = []
    for p in want_n:
        hit = next((m for m in ups if p in m.nlri
                    and (next_hop is None or m.next_hop == next_hop)), None)
        (used.append(hit) if hit else missing.append(
            f"{p} via {next_hop}" if next_hop else p))
    for p in want_w:
        hit = next((m for m in ups if p in m.withdrawn), None)
        (used.append(hit) if hit else missing.append(f"withdrawal of {p}"))
    if not want_n and not want_w and ups:
        return ups
    if missing or not ups:
        want = f"a BGP UPDATE {src or '*'} > {dst or '*'} with " + (
            ", ".join(missing) if missing else "any content")
        raise CaptureAssertionError(f"expected {want}\n  on {tr.where}\n  found instead "
                                    f"{len(msgs)} BGP message(s) in {len(tr)} packet(s):\n"
                                    + _bgp_listing(msgs))
    unique: list[BgpMessage] = []
    for m in used:
        if not any(m is u for u in unique):
            unique.append(m)
    return unique
