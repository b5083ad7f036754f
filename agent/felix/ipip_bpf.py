"""The in-kernel IPIP datapath for kernels without ``ipip``: two tc-BPF programs (pure part).

Nothing here touches the kernel: this module builds the programs' bytecode with
:mod:`kernel.bpfasm` from a :class:`ProgConfig`, packs and unpacks the maps' keys and
values, and states the outer-header rule as a plain function. The driver that loads,
pins and attaches them is :mod:`agent.felix.bpftunnel`.

tunl0 is one end of a veth pair; its peer (:data:`PEER_NAME`) only carries tunl0's
packets into the programs:

* **encap** (tc ingress of the peer, i.e. everything tunl0 transmits, after
  ``tcpdump -i tunl0`` saw it): the inner IPv4 packet's route is looked up
  (``bpf_fib_lookup``, output, oif tunl0) for its gateway, the node the route
  ``<block> via <node> dev tunl0 onlink`` names; the route to that node gives
  the uplink and the source address (``BPF_FIB_LOOKUP_SRC``: the address
  ``local any`` would pick). A 20-byte outer header is put in front as Linux
  ``ip_tunnel_xmit`` builds it for the fallback tunl0 (``ttl inherit``,
  ``nopmtudisc``, tos 0): see :func:`outer_header`. The IP ID comes from a
  per-remote-node counter (:data:`REMOTES` map, keyed by the gateway) that
  advances by the number of segments, as ``__ip_select_ident`` reserves one per
  segment. The packet goes out of the uplink through ``bpf_redirect_neigh``
  (the neighbour resolved by the kernel, ARP included). GSO packets stay GSO
  (``BPF_F_ADJ_ROOM_ENCAP_L3_IPV4``: segmented as IPIP later, with the inner MSS
  unchanged, ``FIXED_GSO``).
* **decap** (tc ingress of every uplink): an IPv4 packet of protocol 4 without
  options or fragmentation, sent to this host (``PACKET_HOST``, a local address by
  ``bpf_fib_lookup``), from an address in the allowed-hosts LPM map
  (:data:`HOSTS`, kept equal to ``cali40all-hosts-net``) loses its outer header
  (an outer CE mark carried into an ECN-capable inner packet, a not-ECT inner
  packet under CE dropped, as ``ip_tunnel_rcv``) and is sent to the peer's
  egress with tunl0's MAC as destination, so it is received on tunl0 (tcpdump,
  counters, netfilter ``-i tunl0``). Everything else continues up the stack
  unchanged (``TC_ACT_UNSPEC``): protocol 4 from other hosts meets cali-INPUT's
  ``-p 4 -j DROP`` as before.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from kernel import bpfasm as A
from kernel.bpfasm import DW, FP, R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, Asm, H, W
from kernel.bpfasm import B as U8

PEER_NAME = "tunl0-bpf"
PROG_ENCAP = "cali_ipip_enc"
PROG_DECAP = "cali_ipip_dec"
HOSTS = "cali_ipip_hosts"
REMOTES = "cali_ipip_nodes"
COUNTERS = "cali_ipip_stats"

# helpers (include/uapi/linux/bpf.h, __BPF_FUNC_MAPPER order)
MAP_LOOKUP, MAP_UPDATE = 1, 2
GET_PRANDOM_U32, SKB_STORE_BYTES, L3_CSUM_REPLACE = 7, 9, 10
REDIRECT, SKB_LOAD_BYTES, CSUM_DIFF, SKB_ADJUST_ROOM, FIB_LOOKUP, REDIRECT_NEIGH = 23, 26, 28, 50, 69, 152

# __sk_buff offsets
SKB_LEN, SKB_PKT_TYPE, SKB_PROTOCOL, SKB_INGRESS_IFINDEX, SKB_GSO_SEGS = 0, 4, 16, 36, 164

TC_ACT_UNSPEC, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = -1, 0, 2, 7
ETH_P_IP_BE = 0x0008  # htons(0x0800) as the u32 ctx->protocol reads on a little-endian machine
ETH_HLEN, IP_HLEN = 14, 20
PACKET_HOST = 0
AF_INET = 2
BPF_ADJ_ROOM_MAC = 1
ADJ_FIXED_GSO, ADJ_ENCAP_L3_IPV4 = 1, 2
F_RECOMPUTE_CSUM = 1
FIB_OUTPUT, FIB_SKIP_NEIGH, FIB_SRC = 2, 4, 16
FIB_SUCCESS, FIB_NOT_FWDED = 0, 4
NOEXIST = 1
IPPROTO_IPIP = 4
IP_DF = 0x40  # in frag_off's first byte
ECN_MASK, ECN_ECT0, ECN_CE = 0x03, 0x02, 0x03

# struct bpf_fib_lookup (64 bytes) field offsets
FIB_LEN = 64
FIB_FAMILY, FIB_IFINDEX, FIB_SRC4, FIB_DST4 = 0, 8, 16, 32

# map layouts
HOSTS_KEY = struct.Struct("=I4s")          # LPM key: prefix length, IPv4 address (network order)
HOSTS_VALUE = struct.Struct("=QQ")         # rx packets, rx bytes
REMOTES_KEY = struct.Struct("=4s")         # gateway (remote node) address
REMOTES_VALUE = struct.Struct("=IIQQ")     # next IP ID, pad, tx packets, tx bytes
COUNTER_NAMES = ("tx_not_ipv4", "tx_no_route", "tx_no_source", "tx_encap_failed",
                 "rx_bad_inner", "rx_ecn_drop", "rx_decap_failed")
COUNTERS_VALUE = struct.Struct("=" + "Q" * len(COUNTER_NAMES))
HOSTS_MAX, REMOTES_MAX = 16384, 4096
MAP_TYPE_ARRAY, MAP_TYPE_LRU_HASH, MAP_TYPE_LPM_TRIE, NO_PREALLOC = 2, 9, 11, 1
MAP_SPECS = {  # name: (type, key size, value size, max entries, flags)
    HOSTS: (MAP_TYPE_LPM_TRIE, HOSTS_KEY.size, HOSTS_VALUE.size, HOSTS_MAX, NO_PREALLOC),
    REMOTES: (MAP_TYPE_LRU_HASH, REMOTES_KEY.size, REMOTES_VALUE.size, REMOTES_MAX, 0),
    COUNTERS: (MAP_TYPE_ARRAY, 4, COUNTERS_VALUE.size, 1, 0),
}

# stack layout of both programs (offsets from the frame pointer)
S_FIB = -64        # struct bpf_fib_lookup, 64 bytes
S_HDR = -88        # 20-byte IPv4 header (inner, then the outer built over it)
S_KEY = -96        # map key (8 bytes: LPM prefix length + address, or a 4-byte address)
S_VAL = -120       # 24-byte map value / inner header of decap / MACs


@dataclass(frozen=True)
class ProgConfig:
    """What a node's programs are built for (baked in as immediates; a change means new programs)."""

    tunl0_ifindex: int
    peer_ifindex: int
    tunl0_mac: bytes
    peer_mac: bytes
    hosts_fd: int
    remotes_fd: int
    counters_fd: int


# -- pure rules ------------------------------------------------------------------------------
def outer_tos(inner_tos: int) -> int:
    """Outer TOS of the fallback tunl0 (tos 0, not inherit): the inner ECN bits, CE sent as
    ECT(0) (``INET_ECN_encapsulate``, RFC 6040); the DSCP is not copied."""
    ecn = inner_tos & ECN_MASK
    return ECN_ECT0 if ecn == ECN_CE else ecn


def outer_header(inner: bytes, src: str, dst: str, ident: int) -> bytes:
    """The 20-byte outer header ``ip_tunnel_xmit`` + ``iptunnel_xmit`` put before ``inner``
    on the fallback tunl0 (``ipip any remote any local any ttl inherit nopmtudisc``):
    version 4, IHL 5, TOS :func:`outer_tos`, total length inner + 20, ID ``ident``, DF
    copied from the inner packet (nothing else in frag_off), TTL copied from the inner
    packet, protocol 4, a valid checksum, ``src`` (the route's source toward ``dst``) and
    ``dst`` (the route's gateway)."""
    if len(inner) < IP_HLEN or inner[0] >> 4 != 4:
        raise ValueError("inner packet is not an IPv4 packet")
    total = struct.unpack_from("!H", inner, 2)[0] + IP_HLEN
    hdr = bytearray(struct.pack("!BBHHBBBBH4s4s", 0x45, outer_tos(inner[1]), total & 0xFFFF, ident & 0xFFFF,
                                inner[6] & IP_DF, 0, inner[8], IPPROTO_IPIP, 0,
                                socket.inet_aton(src), socket.inet_aton(dst)))
    hdr[10:12] = struct.pack("!H", ip_checksum(bytes(hdr)))
    return bytes(hdr)


def ip_checksum(header: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``header`` (checksum field zero)."""
    s = sum(struct.unpack(f"!{len(header) // 2}H", header[:len(header) // 2 * 2]))
    if len(header) % 2:
        s += header[-1] << 8
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def hosts_key(member: str) -> bytes:
    """LPM key of an allowed-hosts entry (``a.b.c.d`` or ``a.b.c.d/n``, as in cali40all-hosts-net)."""
    net = ipaddress.IPv4Network(member, strict=False)
    return HOSTS_KEY.pack(net.prefixlen, net.network_address.packed)


def hosts_member(key: bytes) -> str:
    """The ipset-style member of an LPM key (inverse of :func:`hosts_key`; /32 shown bare)."""
    plen, addr = HOSTS_KEY.unpack(key)
    ip = socket.inet_ntoa(addr)
    return ip if plen == 32 else f"{ip}/{plen}"


def remotes_key(gateway: str) -> bytes:
    """Key of the per-remote-node map: the node address the tunl0 route names."""
    return REMOTES_KEY.pack(socket.inet_aton(gateway))


def remotes_value(raw: bytes) -> dict[str, int]:
    """A per-remote-node value: next IP ID, packets and bytes sent to it."""
    ident, _pad, packets, nbytes = REMOTES_VALUE.unpack(raw)
    return {"next_id": ident & 0xFFFF, "tx_packets": packets, "tx_bytes": nbytes}


def hosts_value(raw: bytes) -> dict[str, int]:
    """An allowed-host value: packets and bytes decapsulated from it."""
    packets, nbytes = HOSTS_VALUE.unpack(raw)
    return {"rx_packets": packets, "rx_bytes": nbytes}


def counters_value(raw: bytes) -> dict[str, int]:
    """The drop counters (one u64 per reason in :data:`COUNTER_NAMES`)."""
    return dict(zip(COUNTER_NAMES, COUNTERS_VALUE.unpack(raw), strict=True))


# -- programs --------------------------------------------------------------------------------
def _zero(a: Asm, start: int, length: int) -> None:
    for off in range(start, start + length, 8):
        a.store_imm(DW, FP, off, 0)


def _count_and_return(a: Asm, cfg: ProgConfig, reason: str, verdict: int) -> None:
    """Emit: counters[0].<reason> += 1; return verdict."""
    a.store_imm(W, FP, S_KEY, 0)
    a.ld_map_fd(R1, cfg.counters_fd)
    a.mov(R2, FP).alu_imm(A.ADD, R2, S_KEY)
    a.call(MAP_LOOKUP)
    a.jmp_imm(A.JEQ, R0, 0, f"ret_{reason}")
    a.mov_imm(R1, 1)
    a.atomic_add(DW, R0, 8 * COUNTER_NAMES.index(reason), R1)
    a.label(f"ret_{reason}")
    a.ret(verdict)


def _load_bytes(a: Asm, off: int, stack: int, length: int) -> None:
    """r0 = bpf_skb_load_bytes(ctx, off, fp + stack, length)."""
    a.mov(R1, R6).mov_imm(R2, off).mov(R3, FP).alu_imm(A.ADD, R3, stack).mov_imm(R4, length)
    a.call(SKB_LOAD_BYTES)


def _fib_lookup(a: Asm, flags: int) -> None:
    """r0 = bpf_fib_lookup(ctx, fp + S_FIB, 64, flags)."""
    a.mov(R1, R6).mov(R2, FP).alu_imm(A.ADD, R2, S_FIB).mov_imm(R3, FIB_LEN).mov_imm(R4, flags)
    a.call(FIB_LOOKUP)


def fib_flags_probe() -> bytes:
    """A program returning what bpf_fib_lookup answers to the flags the encap program uses
    on 127.0.0.1 via lo (-EINVAL: a kernel without BPF_FIB_LOOKUP_SRC or SKIP_NEIGH)."""
    a = Asm()
    a.mov(R6, R1)
    _zero(a, S_FIB, FIB_LEN)
    a.store_imm(U8, FP, S_FIB + FIB_FAMILY, AF_INET)
    a.store_imm(W, FP, S_FIB + FIB_IFINDEX, 1)
    a.mov32_imm(R1, 0x0100007F).store(W, FP, S_FIB + FIB_DST4, R1)
    _fib_lookup(a, FIB_SRC | FIB_SKIP_NEIGH)
    a.exit()
    return a.assemble()


def encap_program(cfg: ProgConfig) -> bytes:
    """The encapsulating program (tc ingress of tunl0's peer): see the module docstring."""
    a = Asm()
    a.mov(R6, R1)
    a.load(W, R0, R6, SKB_PROTOCOL)
    a.jmp_imm(A.JNE, R0, ETH_P_IP_BE, "not_ipv4")
    _load_bytes(a, ETH_HLEN, S_HDR, IP_HLEN)
    a.jmp_imm(A.JNE, R0, 0, "not_ipv4")
    a.load(U8, R0, FP, S_HDR)
    a.alu_imm(A.RSH, R0, 4)
    a.jmp_imm(A.JNE, R0, 4, "not_ipv4")
    # the route of the inner destination on tunl0: its gateway is the remote node
    _zero(a, S_FIB, FIB_LEN)
    a.store_imm(U8, FP, S_FIB + FIB_FAMILY, AF_INET)
    a.store_imm(W, FP, S_FIB + FIB_IFINDEX, cfg.tunl0_ifindex)
    a.load(W, R1, FP, S_HDR + 12).store(W, FP, S_FIB + FIB_SRC4, R1)
    a.load(W, R1, FP, S_HDR + 16).store(W, FP, S_FIB + FIB_DST4, R1)
    _fib_lookup(a, FIB_OUTPUT | FIB_SKIP_NEIGH)
    a.jmp_imm(A.JNE, R0, FIB_SUCCESS, "no_route")
    a.load(W, R7, FP, S_FIB + FIB_DST4)  # r7 = gateway (network order)
    # the route to the remote node: uplink and the source address `local any` picks
    _zero(a, S_FIB, FIB_LEN)
    a.store_imm(U8, FP, S_FIB + FIB_FAMILY, AF_INET)
    a.store_imm(W, FP, S_FIB + FIB_IFINDEX, cfg.tunl0_ifindex)
    a.store(W, FP, S_FIB + FIB_DST4, R7)
    _fib_lookup(a, FIB_SRC | FIB_SKIP_NEIGH)
    a.jmp_imm(A.JNE, R0, FIB_SUCCESS, "no_route")
    a.load(W, R1, FP, S_FIB + FIB_SRC4)
    a.jmp_imm(A.JEQ, R1, 0, "no_source")
    # per-remote-node state, made on first use with a random first IP ID
    a.store(W, FP, S_KEY, R7)
    a.ld_map_fd(R1, cfg.remotes_fd).mov(R2, FP).alu_imm(A.ADD, R2, S_KEY).call(MAP_LOOKUP)
    a.mov(R8, R0)
    a.jmp_imm(A.JNE, R8, 0, "have_remote")
    a.call(GET_PRANDOM_U32)
    _zero(a, S_VAL, 24)
    a.store(W, FP, S_VAL, R0)
    a.ld_map_fd(R1, cfg.remotes_fd).mov(R2, FP).alu_imm(A.ADD, R2, S_KEY)
    a.mov(R3, FP).alu_imm(A.ADD, R3, S_VAL).mov_imm(R4, NOEXIST).call(MAP_UPDATE)
    a.ld_map_fd(R1, cfg.remotes_fd).mov(R2, FP).alu_imm(A.ADD, R2, S_KEY).call(MAP_LOOKUP)
    a.mov(R8, R0)
    a.jmp_imm(A.JEQ, R8, 0, "encap_failed")
    a.label("have_remote")
    # IDs for every segment this packet becomes; tx counters
    a.load(W, R9, R6, SKB_GSO_SEGS)
    a.jmp_imm(A.JNE, R9, 0, "segs_known")
    a.mov_imm(R9, 1)
    a.label("segs_known")
    a.atomic_add(DW, R8, 8, R9)
    a.load(W, R1, R6, SKB_LEN)
    a.alu_imm(A.ADD, R1, IP_HLEN - ETH_HLEN)
    a.atomic_add(DW, R8, 16, R1)
    a.atomic_add(W, R8, 0, R9, fetch=True)  # r9 = the first ID of this packet
    # the outer header, built over the inner copy at S_HDR (TTL already at byte 8)
    a.load(U8, R1, FP, S_HDR + 1)          # TOS: inner ECN, CE -> ECT(0)
    a.alu_imm(A.AND, R1, ECN_MASK)
    a.jmp_imm(A.JNE, R1, ECN_CE, "tos_done")
    a.mov_imm(R1, ECN_ECT0)
    a.label("tos_done")
    a.load(U8, R2, FP, S_HDR + 6)          # DF from the inner packet, nothing else
    a.alu_imm(A.AND, R2, IP_DF)
    a.load(H, R3, FP, S_HDR + 2)           # total length + 20
    a.be(R3, 16)
    a.alu_imm(A.ADD, R3, IP_HLEN)
    a.be(R3, 16)
    a.be(R9, 16)
    a.store_imm(U8, FP, S_HDR, 0x45)
    a.store(U8, FP, S_HDR + 1, R1)
    a.store(H, FP, S_HDR + 2, R3)
    a.store(H, FP, S_HDR + 4, R9)
    a.store(U8, FP, S_HDR + 6, R2)
    a.store_imm(U8, FP, S_HDR + 7, 0)
    a.store_imm(U8, FP, S_HDR + 9, IPPROTO_IPIP)
    a.store_imm(H, FP, S_HDR + 10, 0)
    a.load(W, R1, FP, S_FIB + FIB_SRC4).store(W, FP, S_HDR + 12, R1)
    a.store(W, FP, S_HDR + 16, R7)
    # checksum: csum_diff(NULL, 0, hdr, 20, 0), folded
    a.mov_imm(R1, 0).mov_imm(R2, 0).mov(R3, FP).alu_imm(A.ADD, R3, S_HDR).mov_imm(R4, IP_HLEN).mov_imm(R5, 0)
    a.call(CSUM_DIFF)
    for _ in range(2):
        a.mov(R1, R0).alu_imm(A.RSH, R1, 16).alu32_imm(A.AND, R0, 0xFFFF).alu(A.ADD, R0, R1)
    a.alu_imm(A.XOR, R0, 0xFFFF)
    a.store(H, FP, S_HDR + 10, R0)
    # room for the outer header after the Ethernet header, then write it
    a.mov(R1, R6).mov_imm(R2, IP_HLEN).mov_imm(R3, BPF_ADJ_ROOM_MAC).mov_imm(R4, ADJ_ENCAP_L3_IPV4 | ADJ_FIXED_GSO)
    a.call(SKB_ADJUST_ROOM)
    a.jmp_imm(A.JNE, R0, 0, "encap_failed")
    a.mov(R1, R6).mov_imm(R2, ETH_HLEN).mov(R3, FP).alu_imm(A.ADD, R3, S_HDR).mov_imm(R4, IP_HLEN)
    a.mov_imm(R5, F_RECOMPUTE_CSUM)
    a.call(SKB_STORE_BYTES)
    a.jmp_imm(A.JNE, R0, 0, "encap_failed")
    # out of the uplink, neighbour resolved by the kernel
    a.load(W, R1, FP, S_FIB + FIB_IFINDEX)
    a.mov_imm(R2, 0).mov_imm(R3, 0).mov_imm(R4, 0)
    a.call(REDIRECT_NEIGH)
    a.exit()
    a.label("not_ipv4")
    _count_and_return(a, cfg, "tx_not_ipv4", TC_ACT_SHOT)
    a.label("no_route")
    _count_and_return(a, cfg, "tx_no_route", TC_ACT_SHOT)
    a.label("no_source")
    _count_and_return(a, cfg, "tx_no_source", TC_ACT_SHOT)
    a.label("encap_failed")
    _count_and_return(a, cfg, "tx_encap_failed", TC_ACT_SHOT)
    return a.assemble()


def decap_program(cfg: ProgConfig) -> bytes:
    """The decapsulating program (tc ingress of every uplink): see the module docstring."""
    a = Asm()
    a.mov(R6, R1)
    a.load(W, R0, R6, SKB_PROTOCOL)
    a.jmp_imm(A.JNE, R0, ETH_P_IP_BE, "pass")
    a.load(W, R0, R6, SKB_PKT_TYPE)
    a.jmp_imm(A.JNE, R0, PACKET_HOST, "pass")
    _load_bytes(a, ETH_HLEN, S_HDR, IP_HLEN)
    a.jmp_imm(A.JNE, R0, 0, "pass")
    a.load(U8, R0, FP, S_HDR)
    a.jmp_imm(A.JNE, R0, 0x45, "pass")             # IPv4 without options
    a.load(U8, R0, FP, S_HDR + 9)
    a.jmp_imm(A.JNE, R0, IPPROTO_IPIP, "pass")
    a.load(H, R0, FP, S_HDR + 6)
    a.alu_imm(A.AND, R0, 0xFF3F)                    # MF and the offset (network order, LE load)
    a.jmp_imm(A.JNE, R0, 0, "pass")
    a.load(U8, R0, FP, S_HDR + 16)
    a.jmp_imm(A.JGE, R0, 224, "pass")              # multicast, limited broadcast
    # from a Calico host (cali40all-hosts-net, an LPM map)?
    a.store_imm(W, FP, S_KEY, 32)
    a.load(W, R1, FP, S_HDR + 12).store(W, FP, S_KEY + 4, R1)
    a.ld_map_fd(R1, cfg.hosts_fd).mov(R2, FP).alu_imm(A.ADD, R2, S_KEY).call(MAP_LOOKUP)
    a.mov(R8, R0)
    a.jmp_imm(A.JEQ, R8, 0, "pass")
    # to one of this host's addresses? (not forwarded: local)
    _zero(a, S_FIB, FIB_LEN)
    a.store_imm(U8, FP, S_FIB + FIB_FAMILY, AF_INET)
    a.load(W, R1, R6, SKB_INGRESS_IFINDEX).store(W, FP, S_FIB + FIB_IFINDEX, R1)
    a.load(W, R1, FP, S_HDR + 12).store(W, FP, S_FIB + FIB_SRC4, R1)
    a.load(W, R1, FP, S_HDR + 16).store(W, FP, S_FIB + FIB_DST4, R1)
    _fib_lookup(a, 0)
    a.jmp_imm(A.JNE, R0, FIB_NOT_FWDED, "pass")
    # the inner packet: IPv4, ECN as ip_tunnel_rcv
    _load_bytes(a, ETH_HLEN + IP_HLEN, S_VAL, IP_HLEN)
    a.jmp_imm(A.JNE, R0, 0, "bad_inner")
    a.load(U8, R0, FP, S_VAL)
    a.alu_imm(A.RSH, R0, 4)
    a.jmp_imm(A.JNE, R0, 4, "bad_inner")
    a.load(U8, R1, FP, S_HDR + 1)
    a.alu_imm(A.AND, R1, ECN_MASK)
    a.jmp_imm(A.JNE, R1, ECN_CE, "ecn_done")
    a.load(U8, R7, FP, S_VAL + 1)                  # outer CE
    a.mov(R1, R7).alu_imm(A.AND, R1, ECN_MASK)
    a.jmp_imm(A.JEQ, R1, 0, "ecn_drop")            # ... over a not-ECT inner packet: drop
    a.jmp_imm(A.JEQ, R1, ECN_CE, "ecn_done")
    a.load(H, R3, FP, S_VAL)                       # old first 16-bit word (version/IHL, TOS)
    a.alu_imm(A.OR, R7, ECN_CE)
    a.store(U8, FP, S_VAL + 1, R7)
    a.load(H, R4, FP, S_VAL)                       # new word
    a.mov(R1, R6).mov_imm(R2, ETH_HLEN + IP_HLEN + 10).mov_imm(R5, 2)
    a.call(L3_CSUM_REPLACE)
    a.jmp_imm(A.JNE, R0, 0, "decap_failed")
    a.mov(R1, R6).mov_imm(R2, ETH_HLEN + IP_HLEN + 1).mov(R3, FP).alu_imm(A.ADD, R3, S_VAL + 1)
    a.mov_imm(R4, 1).mov_imm(R5, 0)
    a.call(SKB_STORE_BYTES)
    a.jmp_imm(A.JNE, R0, 0, "decap_failed")
    a.label("ecn_done")
    # rx counters of this host
    a.load(W, R9, R6, SKB_GSO_SEGS)
    a.jmp_imm(A.JNE, R9, 0, "segs_known")
    a.mov_imm(R9, 1)
    a.label("segs_known")
    a.atomic_add(DW, R8, 0, R9)
    a.load(W, R1, R6, SKB_LEN)
    a.alu_imm(A.ADD, R1, -(ETH_HLEN + IP_HLEN))
    a.atomic_add(DW, R8, 8, R1)
    # drop the outer header; the frame becomes tunl0's: dst MAC tunl0, src MAC its peer
    a.mov(R1, R6).mov_imm(R2, -IP_HLEN).mov_imm(R3, BPF_ADJ_ROOM_MAC).mov_imm(R4, ADJ_FIXED_GSO)
    a.call(SKB_ADJUST_ROOM)
    a.jmp_imm(A.JNE, R0, 0, "decap_failed")
    macs = cfg.tunl0_mac + cfg.peer_mac
    for i in range(0, 12, 4):
        a.mov32_imm(R1, struct.unpack_from("<I", macs, i)[0]).store(W, FP, S_VAL + i, R1)
    a.mov(R1, R6).mov_imm(R2, 0).mov(R3, FP).alu_imm(A.ADD, R3, S_VAL).mov_imm(R4, 12).mov_imm(R5, 0)
    a.call(SKB_STORE_BYTES)
    a.jmp_imm(A.JNE, R0, 0, "decap_failed")
    a.mov_imm(R1, cfg.peer_ifindex).mov_imm(R2, 0)
    a.call(REDIRECT)
    a.exit()
    a.label("pass")
    a.ret(TC_ACT_UNSPEC)
    a.label("bad_inner")
    _count_and_return(a, cfg, "rx_bad_inner", TC_ACT_SHOT)
    a.label("ecn_drop")
    _count_and_return(a, cfg, "rx_ecn_drop", TC_ACT_SHOT)
    a.label("decap_failed")
    _count_and_return(a, cfg, "rx_decap_failed", TC_ACT_SHOT)
    return a.assemble()


__all__ = [
    "COUNTERS", "COUNTER_NAMES", "HOSTS", "MAP_SPECS", "PEER_NAME", "PROG_DECAP", "PROG_ENCAP", "REMOTES", "ProgConfig",
    "counters_value", "decap_program", "encap_program", "hosts_key", "hosts_member", "hosts_value",
    "fib_flags_probe", "ip_checksum", "outer_header", "outer_tos", "remotes_key", "remotes_value",
]
_ = (R5,)
