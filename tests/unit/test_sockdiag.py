"""kernel.sockdiag's netlink codec (golden bytes; no root)."""

from __future__ import annotations

import socket
import struct

import pytest

from kernel import sockdiag

pytestmark = pytest.mark.unit


def test_the_request_asks_for_tcp_listeners_of_one_family():
    # nlmsghdr: len 72, type 20 (SOCK_DIAG_BY_FAMILY), flags REQUEST|DUMP (0x301), seq 1, pid 0;
    # inet_diag_req_v2: AF_INET, IPPROTO_TCP, no extensions, states 1 << TCP_LISTEN; a zero sockid
    golden = bytes.fromhex("48000000" "1400" "0103" "01000000" "00000000"
                           "02" "06" "00" "00" "00040000") + bytes(48)
    assert sockdiag.request(socket.AF_INET, 1) == golden
    assert sockdiag.request(socket.AF_INET6, 2)[16] == socket.AF_INET6


def _msg(mtype: int, body: bytes) -> bytes:
    pad = bytes(-len(body) % 4)
    return struct.pack("=IHHII", 16 + len(body), mtype, 2, 1, 0) + body + pad


def _sock(state: int, sport: int) -> bytes:
    # inet_diag_msg: family, state, timer, retrans; sockid (sport, dport big-endian, addresses...)
    return struct.pack("=BBBB", socket.AF_INET, state, 0, 0) + struct.pack("!HH", sport, 0) + bytes(64)


def test_listening_ports_are_parsed_until_done_and_errors_are_raised():
    data = _msg(20, _sock(10, 80)) + _msg(20, _sock(1, 5473)) + _msg(20, _sock(10, 9099))
    assert sockdiag.parse(data) == ({80, 9099}, False)  # an established socket is not listed
    assert sockdiag.parse(data + _msg(3, bytes(4))) == ({80, 9099}, True)
    with pytest.raises(OSError, match="sock_diag"):
        sockdiag.parse(_msg(2, struct.pack("=i", -2) + bytes(16)))
    assert sockdiag.parse(_msg(2, struct.pack("=i", 0) + bytes(16))) == (set(), False)  # an ack
    with pytest.raises(OSError, match="malformed"):
        sockdiag.parse(struct.pack("=IHHII", 4, 20, 0, 0, 0))
