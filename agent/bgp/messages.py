"""BGP-4 message codecs: pure functions between bytes and typed dataclasses.

Covers RFC 4271 (OPEN, UPDATE, KEEPALIVE, NOTIFICATION), RFC 2918/7313 (ROUTE-REFRESH),
RFC 5492 capabilities (multiprotocol 1, route refresh 2, graceful restart 64, 4-octet AS 65,
ADD-PATH 69, enhanced route refresh 70, long-lived graceful restart 71), 4-octet AS_PATH
(RFC 6793), route reflection attributes (RFC 4456) and RFC 7606 treat-as-withdraw.
Nothing here touches a socket.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from agent.bgp import errors as E
from agent.bgp import prefix as P

MARKER = b"\xff" * 16
HEADER_LEN = 19
MAX_MESSAGE_LEN = 4096

OPEN, UPDATE, NOTIFICATION, KEEPALIVE, ROUTE_REFRESH = 1, 2, 3, 4, 5
TYPE_NAMES = {OPEN: "OPEN", UPDATE: "UPDATE", NOTIFICATION: "NOTIFICATION",
              KEEPALIVE: "KEEPALIVE", ROUTE_REFRESH: "ROUTE-REFRESH"}

AFI_IPV4, SAFI_UNICAST = 1, 1
AS_TRANS = 23456

# capability codes
CAP_MULTIPROTOCOL = 1
CAP_ROUTE_REFRESH = 2
CAP_GRACEFUL_RESTART = 64
CAP_FOUR_OCTET_AS = 65
CAP_ADD_PATH = 69
CAP_ENHANCED_ROUTE_REFRESH = 70
CAP_LONG_LIVED_GR = 71

# path attribute type codes
ORIGIN, AS_PATH, NEXT_HOP, MED, LOCAL_PREF = 1, 2, 3, 4, 5
ATOMIC_AGGREGATE, AGGREGATOR = 6, 7
ORIGINATOR_ID, CLUSTER_LIST = 9, 10
MP_REACH, MP_UNREACH = 14, 15

FLAG_OPTIONAL, FLAG_TRANSITIVE, FLAG_PARTIAL, FLAG_EXTENDED = 0x80, 0x40, 0x20, 0x10

ORIGIN_IGP, ORIGIN_EGP, ORIGIN_INCOMPLETE = 0, 1, 2
AS_SET, AS_SEQUENCE = 1, 2

# ADD-PATH send/receive values
ADDPATH_RECEIVE, ADDPATH_SEND, ADDPATH_BOTH = 1, 2, 3


# ---------------------------------------------------------------------------- capabilities


@dataclass(frozen=True)
class Capability:
    """A capability we do not model: its code and raw value."""

    code: int
    data: bytes = b""


@dataclass(frozen=True)
class MultiProtocol:
    """Capability 1: AFI/SAFI (RFC 4760)."""

    afi: int = AFI_IPV4
    safi: int = SAFI_UNICAST
    code = CAP_MULTIPROTOCOL


@dataclass(frozen=True)
class RouteRefreshCap:
    """Capability 2 (RFC 2918)."""

    code = CAP_ROUTE_REFRESH


@dataclass(frozen=True)
class EnhancedRouteRefreshCap:
    """Capability 70 (RFC 7313)."""

    code = CAP_ENHANCED_ROUTE_REFRESH


@dataclass(frozen=True)
class GracefulRestart:
    """Capability 64 (RFC 4724): restart flags/time and per-AFI forwarding state."""

    restart_time: int = 120
    restarting: bool = False
    notification: bool = False
    families: tuple[tuple[int, int, int], ...] = ((AFI_IPV4, SAFI_UNICAST, 0),)
    code = CAP_GRACEFUL_RESTART


@dataclass(frozen=True)
class FourOctetAS:
    """Capability 65 (RFC 6793): the speaker's real AS number."""

    asn: int
    code = CAP_FOUR_OCTET_AS


@dataclass(frozen=True)
class AddPath:
    """Capability 69 (RFC 7911): (afi, safi, send/receive) tuples."""

    families: tuple[tuple[int, int, int], ...] = ((AFI_IPV4, SAFI_UNICAST, ADDPATH_RECEIVE),)
    code = CAP_ADD_PATH


@dataclass(frozen=True)
class LongLivedGR:
    """Capability 71 (RFC 9494): (afi, safi, flags, stale time) tuples; parsed, not acted on."""

    families: tuple[tuple[int, int, int, int], ...] = ()
    code = CAP_LONG_LIVED_GR


AnyCapability = (Capability | MultiProtocol | RouteRefreshCap | EnhancedRouteRefreshCap
                 | GracefulRestart | FourOctetAS | AddPath | LongLivedGR)


def encode_capability(cap: AnyCapability) -> bytes:
    """One capability TLV (code, length, value)."""
    if isinstance(cap, MultiProtocol):
        value = struct.pack("!HBB", cap.afi, 0, cap.safi)
    elif isinstance(cap, RouteRefreshCap | EnhancedRouteRefreshCap):
        value = b""
    elif isinstance(cap, GracefulRestart):
        flags = (0x8 if cap.restarting else 0) | (0x4 if cap.notification else 0)
        value = struct.pack("!H", (flags << 12) | (cap.restart_time & 0xFFF))
        value += b"".join(struct.pack("!HBB", a, s, f) for a, s, f in cap.families)
    elif isinstance(cap, FourOctetAS):
        value = struct.pack("!I", cap.asn)
    elif isinstance(cap, AddPath):
        value = b"".join(struct.pack("!HBB", a, s, sr) for a, s, sr in cap.families)
    elif isinstance(cap, LongLivedGR):
        value = b"".join(struct.pack("!HBB", a, s, f) + (t & 0xFFFFFF).to_bytes(3, "big")
                         for a, s, f, t in cap.families)
    else:
        value = cap.data
    return struct.pack("!BB", cap.code, len(value)) + value


def decode_capability(code: int, value: bytes) -> AnyCapability:
    """Decode one capability value; a malformed known capability raises OpenMessageError."""

    def bad(what: str) -> E.OpenMessageError:
        return E.OpenMessageError(0, f"malformed {what} capability (length {len(value)})")

    if code == CAP_MULTIPROTOCOL:
        if len(value) != 4:
            return Capability(code, value)  # BIRD (IPv4 build) does not parse it: no error
        afi, _, safi = struct.unpack("!HBB", value)
        return MultiProtocol(afi, safi)
    if code == CAP_ROUTE_REFRESH:
        if value:
            raise bad("route refresh")
        return RouteRefreshCap()
    if code == CAP_ENHANCED_ROUTE_REFRESH:
        if value:
            raise bad("enhanced route refresh")
        return EnhancedRouteRefreshCap()
    if code == CAP_GRACEFUL_RESTART:
        if len(value) < 2 or (len(value) - 2) % 4:
            raise bad("graceful restart")
        (word,) = struct.unpack("!H", value[:2])
        fams = tuple(struct.unpack("!HBB", value[i:i + 4]) for i in range(2, len(value), 4))
        return GracefulRestart(word & 0xFFF, bool(word & 0x8000), bool(word & 0x4000), fams)
    if code == CAP_FOUR_OCTET_AS:
        if len(value) != 4:
            raise bad("4-octet AS")
        return FourOctetAS(struct.unpack("!I", value)[0])
    if code == CAP_ADD_PATH:
        if len(value) % 4:
            raise bad("ADD-PATH")
        fams = tuple(struct.unpack("!HBB", value[i:i + 4]) for i in range(0, len(value), 4))
        for fam in fams:
            if fam[2] > ADDPATH_BOTH:  # BIRD: more than send+receive is an error, 0 is not
                raise bad("ADD-PATH")
        return AddPath(fams)
    if code == CAP_LONG_LIVED_GR:
        if len(value) % 7:
            raise bad("long-lived graceful restart")
        fams = []
        for i in range(0, len(value), 7):
            a, s, f = struct.unpack("!HBB", value[i:i + 4])
            fams.append((a, s, f, int.from_bytes(value[i + 4:i + 7], "big")))
        return LongLivedGR(tuple(fams))
    return Capability(code, value)


# ---------------------------------------------------------------------------- messages


@dataclass
class Open:
    """OPEN: version 4, the real (4-octet) AS, hold time, BGP identifier, capabilities."""

    asn: int
    hold_time: int
    router_id: IPv4Address
    capabilities: list = field(default_factory=list)
    version: int = 4

    def cap(self, kind: type) -> AnyCapability | None:
        """The first capability of the given class, or None."""
        return next((c for c in self.capabilities if isinstance(c, kind)), None)


@dataclass
class Keepalive:
    """KEEPALIVE (header only)."""


@dataclass
class Notification:
    """NOTIFICATION: error code, subcode, data."""

    code: int
    subcode: int
    data: bytes = b""

    def describe(self) -> str:
        """Human text, e.g. 'Cease (subcode 2)'."""
        return f"{E.CODE_NAMES.get(self.code, f'code {self.code}')} (subcode {self.subcode})"


@dataclass
class RouteRefresh:
    """ROUTE-REFRESH: AFI, subtype (0 normal, 1 BoRR, 2 EoRR; RFC 7313), SAFI."""

    afi: int = AFI_IPV4
    safi: int = SAFI_UNICAST
    subtype: int = 0


@dataclass
class Attributes:
    """Path attributes of an UPDATE (IPv4 unicast)."""

    origin: int | None = ORIGIN_IGP
    as_path: tuple[tuple[int, tuple[int, ...]], ...] = ()
    next_hop: IPv4Address | None = None
    med: int | None = None
    local_pref: int | None = None
    originator_id: IPv4Address | None = None
    cluster_list: tuple[IPv4Address, ...] = ()
    atomic_aggregate: bool = False
    # attributes we do not interpret, kept verbatim: (flags, type, value)
    other: tuple[tuple[int, int, bytes], ...] = ()

    def as_path_length(self) -> int:
        """Path length for best-path selection (an AS_SET counts as 1)."""
        return sum(len(asns) if t == AS_SEQUENCE else 1 for t, asns in self.as_path)

    def first_as(self) -> int | None:
        """Leftmost AS of the path (the neighbour AS), or None for an empty path."""
        for _t, asns in self.as_path:
            if asns:
                return asns[0]
        return None


@dataclass
class Update:
    """UPDATE: withdrawn prefixes, attributes, announced prefixes.

    Prefixes are :mod:`agent.bgp.prefix` keys (ints): one UPDATE carries hundreds of them
    and no per-prefix object is made. The encoder also accepts IPv4Network.

    ``path_ids`` hold ADD-PATH identifiers by prefix when ADD-PATH is in use.
    ``treat_as_withdraw`` is set by the decoder when RFC 7606 turned a malformed
    announcement into a withdrawal (its NLRI are then in ``withdrawn``); ``errors``
    says why.
    """

    withdrawn: list[int] = field(default_factory=list)
    attributes: Attributes | None = None
    nlri: list[int] = field(default_factory=list)
    withdrawn_ids: list[int] | None = None
    nlri_ids: list[int] | None = None
    treat_as_withdraw: bool = False
    errors: list[str] = field(default_factory=list)

    def is_end_of_rib(self) -> bool:
        """An empty UPDATE is the IPv4 unicast End-of-RIB marker (RFC 4724)."""
        return not self.withdrawn and not self.nlri and self.attributes is None


Message = Open | Update | Keepalive | Notification | RouteRefresh


# ---------------------------------------------------------------------------- header


def frame(msg_type: int, body: bytes) -> bytes:
    """Prefix a body with the 19-byte header."""
    return MARKER + struct.pack("!HB", HEADER_LEN + len(body), msg_type) + body


def parse_header(data: bytes) -> tuple[int, int]:
    """Check a 19-byte header; return (total length, type). Raises MessageHeaderError with
    the code, subcode and data BIRD 1.6 sends (proto/bgp/packets.c bgp_rx, bgp_rx_packet and
    the per-type handlers): marker 1/1; length outside 19..4096 1/2 (the length); unknown
    type 1/3 (the type); below the type's minimum 1/2 (the length). A KEEPALIVE's length is
    not checked further and a long ROUTE-REFRESH is 7/1 (see :func:`decode`), as in BIRD."""
    if len(data) < HEADER_LEN:
        raise E.MessageHeaderError(E.BAD_MESSAGE_LENGTH, "short header")
    if data[:16] != MARKER:
        raise E.MessageHeaderError(E.CONNECTION_NOT_SYNCHRONIZED, "marker is not all ones")
    length, mtype = struct.unpack("!HB", data[16:19])
    if length < HEADER_LEN or length > MAX_MESSAGE_LEN:
        raise E.MessageHeaderError(E.BAD_MESSAGE_LENGTH, f"bad message length {length}",
                                   struct.pack("!H", length))
    minimum = _MINIMUM.get(mtype)
    if minimum is None:
        raise E.MessageHeaderError(E.BAD_MESSAGE_TYPE, f"unknown message type {mtype}",
                                   bytes([mtype]))
    if length < minimum:
        raise E.MessageHeaderError(E.BAD_MESSAGE_LENGTH,
                                   f"bad length {length} for {TYPE_NAMES[mtype]}",
                                   struct.pack("!H", length))
    return length, mtype


_MINIMUM = {OPEN: 29, UPDATE: 23, NOTIFICATION: 21, KEEPALIVE: 19, ROUTE_REFRESH: 23}


def encode(msg: Message, *, addpath: bool = False) -> bytes:
    """Encode any message to wire bytes (``addpath``: NLRI carry path identifiers)."""
    if isinstance(msg, Keepalive):
        return frame(KEEPALIVE, b"")
    if isinstance(msg, Open):
        return frame(OPEN, encode_open_body(msg))
    if isinstance(msg, Update):
        return frame(UPDATE, encode_update_body(msg, addpath=addpath))
    if isinstance(msg, Notification):
        return frame(NOTIFICATION, struct.pack("!BB", msg.code, msg.subcode) + msg.data)
    if isinstance(msg, RouteRefresh):
        return frame(ROUTE_REFRESH, struct.pack("!HBB", msg.afi, msg.subtype, msg.safi))
    raise TypeError(f"not a BGP message: {msg!r}")


def decode(data: bytes, *, addpath: bool = False) -> Message:
    """Decode one complete message (header included). Raises a BGPError subclass."""
    length, mtype = parse_header(data)
    if len(data) != length:
        raise E.MessageHeaderError(E.BAD_MESSAGE_LENGTH,
                                   f"header says {length} bytes, got {len(data)}",
                                   struct.pack("!H", length))
    body = data[HEADER_LEN:]
    if mtype == KEEPALIVE:
        return Keepalive()  # trailing bytes ignored, as BIRD does
    if mtype == OPEN:
        return decode_open_body(body)
    if mtype == UPDATE:
        return decode_update_body(body, addpath=addpath)
    if mtype == NOTIFICATION:
        return Notification(body[0], body[1], bytes(body[2:]))
    if len(body) != 4:  # RFC 7313 / BIRD: Invalid Message Length, data = the message
        raise E.RouteRefreshError(1, f"ROUTE-REFRESH length {length} is not 23",
                                  bytes(data[:2048]))
    afi, subtype, safi = struct.unpack("!HBB", body[:4])
    # an unknown subtype is not an error (BIRD logs and ignores it): the speaker decides
    return RouteRefresh(afi, safi, subtype)


# ---------------------------------------------------------------------------- OPEN


def encode_open_body(msg: Open) -> bytes:
    """OPEN body with every capability in ONE optional parameter (type 2), in the order
    given, as BIRD 1.6 sends them (``bgp_create_open``); no parameter without capabilities.
    My Autonomous System is AS_TRANS from 65535 up (BIRD: ``local_as < 0xFFFF``)."""
    caps = b"".join(encode_capability(c) for c in msg.capabilities)
    if len(caps) > 253:
        raise ValueError(f"capabilities take {len(caps)} bytes; one optional parameter "
                         "holds at most 253")
    params = struct.pack("!BB", 2, len(caps)) + caps if caps else b""
    my_as = msg.asn if msg.asn < 0xFFFF else AS_TRANS
    return struct.pack("!BHH4sB", msg.version, my_as, msg.hold_time, msg.router_id.packed,
                       len(params)) + params


def decode_open_body(body: bytes) -> Open:
    """Decode an OPEN body; the real AS comes from capability 65 when present. Checks in
    BIRD 1.6's order and with its codes (``bgp_rx_open``, ``bgp_parse_options``,
    ``bgp_parse_capabilities``): length vs optional parameters 1/2 (the length); version
    2/1 (the version received, one byte); a truncated parameter or malformed known
    capability 2/0; a parameter other than capabilities 2/4 (BIRD's bytes: the parameter,
    as long as its length says); hold time 1-2 2/6 (the hold time); BGP identifier 0 2/3
    (the identifier). A 4-octet AS that disagrees with My AS is taken (BIRD only warns)."""
    length = HEADER_LEN + len(body)
    if len(body) < 10 or len(body) != 10 + body[9]:
        raise E.MessageHeaderError(E.BAD_MESSAGE_LENGTH,
                                   f"OPEN length {length} does not match its optional "
                                   f"parameters length", struct.pack("!H", length))
    version, my_as, hold, rid, plen = struct.unpack("!BHH4sB", body[:10])
    if version != 4:
        raise E.OpenMessageError(E.UNSUPPORTED_VERSION_NUMBER, f"version {version}",
                                 bytes([version]))
    caps: list = []
    params = body[10:]
    i = 0
    while i < len(params):
        if i + 2 > len(params) or i + 2 + params[i + 1] > len(params):
            raise E.OpenMessageError(0, "truncated optional parameter")
        ptype, pl = params[i], params[i + 1]
        if ptype != 2:
            raise E.OpenMessageError(E.UNSUPPORTED_OPTIONAL_PARAMETER,
                                     f"optional parameter type {ptype}", bytes(params[i:i + pl]))
        pval = params[i + 2:i + 2 + pl]
        i += 2 + pl
        j = 0
        while j < len(pval):
            if j + 2 > len(pval) or j + 2 + pval[j + 1] > len(pval):
                raise E.OpenMessageError(0, "truncated capability")
            code, cl = pval[j], pval[j + 1]
            caps.append(decode_capability(code, bytes(pval[j + 2:j + 2 + cl])))
            j += 2 + cl
    if hold in (1, 2):
        raise E.OpenMessageError(E.UNACCEPTABLE_HOLD_TIME, f"hold time {hold}",
                                 struct.pack("!H", hold))
    if rid == b"\0\0\0\0":
        raise E.OpenMessageError(E.BAD_BGP_IDENTIFIER, "BGP identifier 0.0.0.0", rid)
    four = next((c for c in caps if isinstance(c, FourOctetAS)), None)
    asn = four.asn if four is not None else my_as
    return Open(asn=asn, hold_time=hold, router_id=IPv4Address(rid), capabilities=caps,
                version=version)


# ---------------------------------------------------------------------------- UPDATE


def encode_prefixes(prefixes: list[int | IPv4Network], ids: list[int] | None,
                    addpath: bool) -> bytes:
    """NLRI encoding: [path id] length, minimal prefix bytes (prefix keys or IPv4Network)."""
    out = bytearray()
    for n, key in enumerate(prefixes):
        if not isinstance(key, int):
            key = P.of(key)
        if addpath:
            out += (ids[n] if ids else 0).to_bytes(4, "big")
        plen = key & 0xFF
        nbytes = (plen + 7) >> 3
        out.append(plen)
        out += (key >> 8).to_bytes(4, "big")[:nbytes]
    return bytes(out)


def pack_nlri(keys: list[int], room: int, path_id: int | None = None) -> list[tuple[bytes, int]]:
    """Encode ``keys`` into chunks of at most ``room`` bytes each (BIRD fills every UPDATE up
    to the 4096-byte limit): [(encoded NLRI, how many prefixes)]. With ``path_id`` (ADD-PATH
    negotiated for sending) every prefix carries that path identifier."""
    chunks: list[tuple[bytes, int]] = []
    out = bytearray()
    count = 0
    pid = b"" if path_id is None else path_id.to_bytes(4, "big")
    extra = len(pid)
    for key in keys:
        plen = key & 0xFF
        nbytes = (plen + 7) >> 3
        if len(out) + 1 + nbytes + extra > room:
            chunks.append((bytes(out), count))
            out = bytearray()
            count = 0
        out += pid
        out.append(plen)
        out += (key >> 8).to_bytes(4, "big")[:nbytes]
        count += 1
    if count:
        chunks.append((bytes(out), count))
    return chunks


_HOST_MASK = tuple((1 << (32 - n)) - 1 for n in range(33))
_BI = struct.Struct("!BI")


def decode_prefixes(data: bytes, addpath: bool, what: str) -> tuple[list[int], list[int]]:
    """Decode an NLRI / withdrawn field into prefix keys (and path ids with ADD-PATH).
    Malformed prefixes reset the session (RFC 7606 5.3); host bits are cleared."""
    end = len(data)
    if not addpath and end and end % 5 == 0 and 25 <= data[0] <= 32:
        # the common case (Calico's /26 blocks): every prefix 25-32 bits, 5 bytes a record
        lens = data[0::5]
        if lens.count(data[0]) == len(lens):
            plen = data[0]
            mask = ~_HOST_MASK[plen] & 0xFFFFFFFF
            return [(a & mask) << 8 | plen for _l, a in _BI.iter_unpack(data)], []
    keys: list[int] = []
    ids: list[int] = []
    i = 0
    frombytes = int.from_bytes
    while i < end:
        if addpath:
            if i + 5 > end:  # BIRD: path id and length byte must fit, else 3/1
                raise E.UpdateMessageError(E.MALFORMED_ATTRIBUTE_LIST, f"truncated {what}")
            ids.append(frombytes(data[i:i + 4], "big"))
            i += 4
        plen = data[i]
        nbytes = (plen + 7) >> 3
        if plen > 32:  # BIRD: 3/10
            raise E.UpdateMessageError(E.INVALID_NETWORK_FIELD,
                                       f"invalid prefix length {plen} in {what}")
        if i + 1 + nbytes > end:  # BIRD: 3/1
            raise E.UpdateMessageError(E.MALFORMED_ATTRIBUTE_LIST,
                                       f"prefix /{plen} truncated in {what}")
        net = frombytes(data[i + 1:i + 1 + nbytes], "big") << (32 - 8 * nbytes)
        keys.append((net & ~_HOST_MASK[plen]) << 8 | plen)
        i += 1 + nbytes
    return keys, ids


def _attr(flags: int, atype: int, value: bytes) -> bytes:
    if len(value) > 255:
        return struct.pack("!BBH", flags | FLAG_EXTENDED, atype, len(value)) + value
    return struct.pack("!BBB", flags & ~FLAG_EXTENDED, atype, len(value)) + value


def encode_attributes(a: Attributes) -> bytes:
    """Path attributes in type order (4-octet AS numbers in AS_PATH)."""
    out = bytearray()
    wk = FLAG_TRANSITIVE
    if a.origin is not None:
        out += _attr(wk, ORIGIN, bytes([a.origin]))
    path = b"".join(struct.pack("!BB", t, len(asns)) + b"".join(struct.pack("!I", x) for x in asns)
                    for t, asns in a.as_path)
    out += _attr(wk, AS_PATH, path)
    if a.next_hop is not None:
        out += _attr(wk, NEXT_HOP, a.next_hop.packed)
    if a.med is not None:
        out += _attr(FLAG_OPTIONAL, MED, struct.pack("!I", a.med))
    if a.local_pref is not None:
        out += _attr(wk, LOCAL_PREF, struct.pack("!I", a.local_pref))
    if a.atomic_aggregate:
        out += _attr(wk, ATOMIC_AGGREGATE, b"")
    if a.originator_id is not None:
        out += _attr(FLAG_OPTIONAL, ORIGINATOR_ID, a.originator_id.packed)
    if a.cluster_list:
        out += _attr(FLAG_OPTIONAL, CLUSTER_LIST, b"".join(c.packed for c in a.cluster_list))
    for flags, atype, value in a.other:
        out += _attr(flags, atype, value)
    return bytes(out)


def encode_update_body(msg: Update, *, addpath: bool = False) -> bytes:
    """UPDATE body: withdrawn routes, path attributes, NLRI."""
    wd = encode_prefixes(msg.withdrawn, msg.withdrawn_ids, addpath)
    attrs = encode_attributes(msg.attributes) if msg.attributes is not None else b""
    nlri = encode_prefixes(msg.nlri, msg.nlri_ids, addpath)
    return struct.pack("!H", len(wd)) + wd + struct.pack("!H", len(attrs)) + attrs + nlri


# expected flag bits (optional, transitive) per well-known / known attribute
_EXPECTED_FLAGS = {ORIGIN: FLAG_TRANSITIVE, AS_PATH: FLAG_TRANSITIVE, NEXT_HOP: FLAG_TRANSITIVE,
                   MED: FLAG_OPTIONAL, LOCAL_PREF: FLAG_TRANSITIVE,
                   ATOMIC_AGGREGATE: FLAG_TRANSITIVE, ORIGINATOR_ID: FLAG_OPTIONAL,
                   CLUSTER_LIST: FLAG_OPTIONAL}


# attribute types BIRD 1.6 knows (proto/bgp/attrs.c bgp_attr_table): any other one without
# the optional bit is an unrecognized well-known attribute
_BIRD_KNOWN = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 14, 15, 16, 17, 18, 32})


class _Withdraw(Exception):
    """Internal: an attribute error that RFC 7606 handles as treat-as-withdraw."""


def _decode_as_path(value: bytes) -> tuple[tuple[int, tuple[int, ...]], ...]:
    segs = []
    i = 0
    while i < len(value):
        if i + 2 > len(value):
            raise _Withdraw("AS_PATH segment header truncated")
        stype, count = value[i], value[i + 1]
        if stype not in (AS_SET, AS_SEQUENCE, 3, 4) or count == 0:
            raise _Withdraw(f"AS_PATH bad segment type {stype} / count {count}")
        end = i + 2 + 4 * count
        if end > len(value):
            raise _Withdraw("AS_PATH segment overruns the attribute")
        segs.append((stype, struct.unpack(f"!{count}I", value[i + 2:end])))
        i = end
    return tuple(segs)


def decode_update_body(body: bytes, *, addpath: bool = False) -> Update:
    """Decode an UPDATE body.

    Framing errors (lengths that do not add up, malformed prefixes, attributes overrunning
    the attribute field) raise UpdateMessageError. Errors inside a single attribute follow
    RFC 7606: the announced prefixes become withdrawals (``treat_as_withdraw``); broken
    optional non-transitive attributes we do not need are discarded.
    """
    if len(body) < 4:
        raise E.UpdateMessageError(E.MALFORMED_ATTRIBUTE_LIST, "UPDATE too short")
    # framing first, as BIRD's bgp_rx_update: every violation is 3/1
    (wlen,) = struct.unpack("!H", body[:2])
    if 2 + wlen + 2 > len(body):
        raise E.UpdateMessageError(E.MALFORMED_ATTRIBUTE_LIST,
                                   f"withdrawn routes length {wlen} overruns the message")
    (alen,) = struct.unpack("!H", body[2 + wlen:4 + wlen])
    astart = 4 + wlen
    if astart + alen > len(body):
        raise E.UpdateMessageError(E.MALFORMED_ATTRIBUTE_LIST,
                                   f"path attribute length {alen} overruns the message")
    if alen == 0 and astart < len(body):
        raise E.UpdateMessageError(E.MALFORMED_ATTRIBUTE_LIST, "NLRI without path attributes")
    withdrawn, wids = decode_prefixes(body[2:2 + wlen], addpath, "withdrawn routes")
    nlri, nids = decode_prefixes(body[astart + alen:], addpath, "NLRI")
    upd = Update(withdrawn=withdrawn, nlri=nlri,
                 withdrawn_ids=wids if addpath else None, nlri_ids=nids if addpath else None)
    if alen == 0:
        return upd
    attrs = Attributes(origin=None)
    seen: set[int] = set()
    other = []
    data = body[astart:astart + alen]
    i = 0
    while i < len(data):
        if i + 3 > len(data):
            raise E.UpdateMessageError(E.MALFORMED_ATTRIBUTE_LIST, "truncated attribute header")
        flags, atype = data[i], data[i + 1]
        if flags & FLAG_EXTENDED:
            if i + 4 > len(data):
                raise E.UpdateMessageError(E.MALFORMED_ATTRIBUTE_LIST,
                                           "truncated attribute header")
            (length,) = struct.unpack("!H", data[i + 2:i + 4])
            vstart = i + 4
        else:
            length = data[i + 2]
            vstart = i + 3
        if vstart + length > len(data):
            raise E.UpdateMessageError(E.MALFORMED_ATTRIBUTE_LIST,
                                       f"attribute {atype} length {length} overruns the list")
        value = bytes(data[vstart:vstart + length])
        if atype not in _BIRD_KNOWN and not flags & FLAG_OPTIONAL:
            # RFC 4271 6.3 and BIRD: 3/2 with the attribute as data (no treat-as-withdraw)
            raise E.UpdateMessageError(E.UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE,
                                       f"unrecognized well-known attribute {atype}",
                                       bytes(data[i:vstart + length]))
        i = vstart + length
        if atype in seen:
            if atype in (MP_REACH, MP_UNREACH):
                raise E.UpdateMessageError(E.MALFORMED_ATTRIBUTE_LIST, f"repeated attribute {atype}")
            continue  # RFC 7606 3(g): keep the first
        seen.add(atype)
        try:
            _decode_one(attrs, flags, atype, value, other)
        except _Withdraw as exc:
            upd.errors.append(str(exc))
            upd.treat_as_withdraw = True
    attrs.other = tuple(other)
    upd.attributes = attrs
    if nlri and not upd.treat_as_withdraw:
        missing = [n for t, n in ((ORIGIN, "ORIGIN"), (AS_PATH, "AS_PATH"), (NEXT_HOP, "NEXT_HOP"))
                   if t not in seen]
        if missing:
            upd.errors.append(f"missing well-known attribute(s) {', '.join(missing)}")
            upd.treat_as_withdraw = True
    return _finish(upd)


def _finish(upd: Update) -> Update:
    if upd.treat_as_withdraw:
        upd.withdrawn = upd.withdrawn + upd.nlri
        if upd.withdrawn_ids is not None:
            upd.withdrawn_ids = upd.withdrawn_ids + (upd.nlri_ids or [])
            upd.nlri_ids = []
        upd.nlri = []
    return upd


def _decode_one(a: Attributes, flags: int, atype: int, value: bytes, other: list) -> None:
    expected = _EXPECTED_FLAGS.get(atype)
    if expected is not None and (flags & (FLAG_OPTIONAL | FLAG_TRANSITIVE)) != expected:
        raise _Withdraw(f"attribute {atype} has flags {flags:#04x}")

    def need(n: int, name: str) -> None:
        if len(value) != n:
            raise _Withdraw(f"{name} length {len(value)}, expected {n}")

    if atype == ORIGIN:
        need(1, "ORIGIN")
        if value[0] > 2:
            raise _Withdraw(f"invalid ORIGIN {value[0]}")
        a.origin = value[0]
    elif atype == AS_PATH:
        a.as_path = _decode_as_path(value)
    elif atype == NEXT_HOP:
        need(4, "NEXT_HOP")
        nh = IPv4Address(value)
        if nh.is_multicast or nh.is_unspecified or nh.is_loopback:
            raise _Withdraw(f"invalid NEXT_HOP {nh}")
        a.next_hop = nh
    elif atype == MED:
        need(4, "MULTI_EXIT_DISC")
        a.med = struct.unpack("!I", value)[0]
    elif atype == LOCAL_PREF:
        need(4, "LOCAL_PREF")
        a.local_pref = struct.unpack("!I", value)[0]
    elif atype == ATOMIC_AGGREGATE:
        if value:
            return  # RFC 7606: attribute discard
        a.atomic_aggregate = True
    elif atype == ORIGINATOR_ID:
        need(4, "ORIGINATOR_ID")
        a.originator_id = IPv4Address(value)
    elif atype == CLUSTER_LIST:
        if len(value) % 4 or not value:
            raise _Withdraw(f"CLUSTER_LIST length {len(value)}")
        a.cluster_list = tuple(IPv4Address(value[k:k + 4]) for k in range(0, len(value), 4))
    elif atype in (MP_REACH, MP_UNREACH):
        return  # other address families: not negotiated, ignored
    elif flags & FLAG_OPTIONAL:
        if flags & FLAG_TRANSITIVE:
            other.append((flags | FLAG_PARTIAL, atype, value))
        # optional non-transitive we do not know: dropped (RFC 4271 9)
    else:
        raise _Withdraw(f"unrecognized well-known attribute {atype}")
