"""Property-based fuzzing of the BGP decoder (hypothesis).

* Any byte string, framed or not, ADD-PATH or not, either decodes to a message or raises
  our typed error (a BGPError carrying a NOTIFICATION code 1-7, a subcode and bytes of
  data): never another exception, never a hang.
* Valid messages of every type round-trip: decode(encode(m)) == m and the bytes are
  stable (encode(decode(b)) == b for b = encode(m)).
* Mutations of valid messages (bytes flipped, cut or inserted, the length field kept
  consistent so the body parsers are reached) obey the first property.
* The NLRI fast path (uniform 25-32 bit prefixes) and the general path agree.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.bgp import errors as E
from agent.bgp import messages as M
from agent.bgp import prefix as PF

pytestmark = pytest.mark.unit

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decodes_or_typed_error(data: bytes, addpath: bool) -> object:
    try:
        return M.decode(data, addpath=addpath)
    except E.BGPError as err:
        assert 1 <= err.code <= 7, err
        assert isinstance(err.subcode, int) and 0 <= err.subcode <= 255, err
        assert isinstance(err.data, bytes), err
        M.encode(M.Notification(err.code, err.subcode, err.data))  # it can be sent
        return err


def framed(mtype: int, body: bytes) -> bytes:
    return M.MARKER + struct.pack("!HB", M.HEADER_LEN + len(body), mtype) + body


# ---------------------------------------------------------------- strategies of valid messages

addr = st.integers(1, 0xDFFFFFFF).filter(lambda a: a >> 24 not in (0, 127)).map(IPv4Address)
prefix_key = st.integers(0, 32).flatmap(
    lambda n: st.integers(0, 0xFFFFFFFF).map(lambda a: PF.make(a & ((0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF), n)))
fam3 = st.tuples(st.integers(0, 0xFFFF), st.integers(0, 255), st.integers(0, 255))

capability = st.one_of(
    st.builds(M.MultiProtocol, st.integers(0, 0xFFFF), st.integers(0, 255)),
    st.just(M.RouteRefreshCap()), st.just(M.EnhancedRouteRefreshCap()),
    st.builds(M.GracefulRestart, st.integers(0, 0xFFF), st.booleans(), st.booleans(),
              st.lists(fam3, max_size=3).map(tuple)),
    st.builds(M.AddPath, st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 255),
                                            st.integers(0, 3)), max_size=3).map(tuple)),
    st.builds(M.LongLivedGR, st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 255),
                                                st.integers(0, 255), st.integers(0, 0xFFFFFF)),
                                      max_size=2).map(tuple)),
    st.builds(M.Capability, st.integers(0, 255).filter(
        lambda c: c not in (1, 2, 64, 65, 69, 70, 71)), st.binary(max_size=12)),
)


@st.composite
def open_msg(draw) -> M.Open:
    asn = draw(st.integers(1, 0xFFFFFFFF))
    caps = draw(st.lists(capability, max_size=6))
    if asn >= 0xFFFF or draw(st.booleans()):  # My AS is AS_TRANS from 65535 up (as BIRD)
        caps.insert(draw(st.integers(0, len(caps))), M.FourOctetAS(asn))
    hold = draw(st.one_of(st.just(0), st.integers(3, 0xFFFF)))
    return M.Open(asn=asn, hold_time=hold, router_id=draw(addr), capabilities=caps)


segment = st.tuples(st.sampled_from([M.AS_SET, M.AS_SEQUENCE]),
                    st.lists(st.integers(0, 0xFFFFFFFF), min_size=1, max_size=6).map(tuple))
attributes = st.builds(
    M.Attributes, origin=st.integers(0, 2), as_path=st.lists(segment, max_size=3).map(tuple),
    next_hop=addr, med=st.none() | st.integers(0, 0xFFFFFFFF),
    local_pref=st.none() | st.integers(0, 0xFFFFFFFF), originator_id=st.none() | addr,
    cluster_list=st.lists(addr, max_size=3).map(tuple), atomic_aggregate=st.booleans(),
    other=st.lists(st.tuples(st.just(M.FLAG_OPTIONAL | M.FLAG_TRANSITIVE | M.FLAG_PARTIAL),
                             st.integers(20, 255).filter(lambda t: t != 32),
                             st.binary(max_size=300)), max_size=2, unique_by=lambda o: o[1])
    .map(lambda xs: tuple(sorted(xs, key=lambda o: o[1]))),
)


@st.composite
def update_msg(draw, addpath: bool) -> M.Update:
    withdrawn = draw(st.lists(prefix_key, max_size=20))
    nlri = draw(st.lists(prefix_key, max_size=40))
    attrs = draw(attributes) if nlri or draw(st.booleans()) else None
    ids = st.lists(st.integers(0, 0xFFFFFFFF), min_size=1, max_size=1)
    return M.Update(withdrawn=withdrawn, attributes=attrs, nlri=nlri if attrs else [],
                    withdrawn_ids=[draw(ids)[0] for _ in withdrawn] if addpath else None,
                    nlri_ids=[draw(ids)[0] for _ in (nlri if attrs else [])] if addpath else None)


def message(addpath: bool):
    return st.one_of(
        open_msg(), update_msg(addpath), st.just(M.Keepalive()),
        st.builds(M.Notification, st.integers(0, 255), st.integers(0, 255), st.binary(max_size=40)),
        st.builds(M.RouteRefresh, st.integers(0, 0xFFFF), st.integers(0, 255), st.integers(0, 255)),
    )


# ---------------------------------------------------------------- properties


@FUZZ
@given(st.binary(max_size=600), st.booleans())
def test_any_bytes_decode_or_raise_a_typed_error(data, addpath):
    decodes_or_typed_error(data, addpath)


@FUZZ
@given(st.sampled_from([M.OPEN, M.UPDATE, M.NOTIFICATION, M.KEEPALIVE, M.ROUTE_REFRESH, 0, 6, 255]),
       st.binary(max_size=600), st.booleans())
def test_any_framed_body_decodes_or_raises_a_typed_error(mtype, body, addpath):
    decodes_or_typed_error(framed(mtype, body), addpath)


@FUZZ
@given(st.data(), st.booleans())
def test_valid_messages_round_trip(data, addpath):
    msg = data.draw(message(addpath))
    raw = M.encode(msg, addpath=addpath)
    back = M.decode(raw, addpath=addpath)
    assert back == msg
    assert M.encode(back, addpath=addpath) == raw


@FUZZ
@given(st.data(), st.booleans())
def test_mutated_valid_messages_decode_or_raise_a_typed_error(data, addpath):
    raw = bytearray(M.encode(data.draw(message(addpath)), addpath=addpath))
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(M.HEADER_LEN, max(M.HEADER_LEN, len(raw))))
        if kind == "flip" and pos < len(raw):
            raw[pos] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del raw[pos:pos + data.draw(st.integers(1, 8))]
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    if data.draw(st.booleans()):  # keep the length field true so the body parsers run
        raw[16:18] = struct.pack("!H", min(len(raw), 0xFFFF))
    decodes_or_typed_error(bytes(raw), addpath)


@FUZZ
@given(st.lists(prefix_key, min_size=1, max_size=200), st.booleans())
def test_nlri_fast_path_agrees_with_the_general_path(keys, uniform):
    if uniform:  # every prefix the first one's length (25-32): the iter_unpack path
        n = 25 + keys[0] % 8
        keys = [PF.make((k >> 8) & ((0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF), n) for k in keys]
    data = M.encode_prefixes(keys, None, False)
    assert M.decode_prefixes(data, False, "NLRI")[0] == keys
    ids = list(range(len(keys)))
    assert M.decode_prefixes(M.encode_prefixes(keys, ids, True), True, "NLRI") == (keys, ids)
