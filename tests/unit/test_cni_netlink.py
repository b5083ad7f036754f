"""Unit tests of the stdlib rtnetlink encoder/decoder (no sockets opened)."""

from __future__ import annotations

import struct

import pytest

from cni import netlink

pytestmark = pytest.mark.unit


def test_attributes_are_padded_and_parsed_back():
    raw = netlink._attr_str(netlink.IFLA_IFNAME, "eth0") + netlink._attr_u32(netlink.IFLA_MTU, 1480)
    assert len(raw) % 4 == 0
    # "eth0\0" is 5 bytes + 4 header = 9 -> padded to 12
    assert struct.unpack_from("=HH", raw) == (9, netlink.IFLA_IFNAME) and len(raw) == 12 + 8
    attrs = netlink._parse_attrs(raw)
    assert attrs[netlink.IFLA_IFNAME] == b"eth0\0"
    assert struct.unpack("=I", attrs[netlink.IFLA_MTU])[0] == 1480


def test_nested_flag_is_ignored_when_parsing():
    inner = netlink._attr_str(netlink.IFLA_INFO_KIND, "veth")
    raw = netlink._attr(netlink.IFLA_LINKINFO | netlink.NLA_F_NESTED, inner)
    attrs = netlink._parse_attrs(raw)
    assert netlink._parse_attrs(attrs[netlink.IFLA_LINKINFO])[netlink.IFLA_INFO_KIND] == b"veth\0"


def test_mac_conversions():
    assert netlink.mac_to_bytes("ee:ee:ee:ee:ee:ee") == b"\xee" * 6
    assert netlink.mac_to_str(b"\x02\x42\xac\x11\x00\x02") == "02:42:ac:11:00:02"


def test_link_message_decoding():
    body = netlink._IFINFO.pack(0, 1, 7, netlink.IFF_UP, 0)
    body += netlink._attr_str(netlink.IFLA_IFNAME, "calic440f455693")
    body += netlink._attr(netlink.IFLA_ADDRESS, b"\xee" * 6)
    body += netlink._attr_u32(netlink.IFLA_MTU, 1480)
    body += netlink._attr(netlink.IFLA_LINKINFO, netlink._attr_str(netlink.IFLA_INFO_KIND, "veth"))
    link = netlink.Netlink._parse_link(body)
    assert (link.index, link.name, link.mac, link.mtu, link.kind, link.up) == (
        7, "calic440f455693", "ee:ee:ee:ee:ee:ee", 1480, "veth", True)
