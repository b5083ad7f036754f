"""agent.protowire: golden bytes worked out by hand from the protobuf encoding rules (key =
field number << 3 | wire type; varints base 128, least significant group first), for the
CSI, plugin-registration and policy-sync messages calicolab exchanges over gRPC."""

from __future__ import annotations

import pytest

from agent.csi import messages as m
from agent.felix import policysync as ps
from agent.protowire import EMPTY, Field, Message, WireError, read_varint, write_varint

pytestmark = pytest.mark.unit


def test_varints():
    assert write_varint(0) == b"\x00"
    assert write_varint(1) == b"\x01"
    assert write_varint(127) == b"\x7f"
    assert write_varint(128) == b"\x80\x01"
    assert write_varint(300) == b"\xac\x02"
    assert read_varint(b"\xac\x02", 0) == (300, 2)
    with pytest.raises(WireError, match="truncated"):
        read_varint(b"\x80", 0)


def test_get_plugin_info_response_golden():
    data = m.GET_PLUGIN_INFO_RESPONSE.encode({"name": "csi.tigera.io", "vendor_version": "0.1"})
    # field 1 (name), wire type 2: key 0x0a, length 13; field 2: key 0x12, length 3
    assert data == b"\x0a\x0dcsi.tigera.io" + b"\x12\x030.1"
    assert m.GET_PLUGIN_INFO_RESPONSE.decode(data) == {"name": "csi.tigera.io", "vendor_version": "0.1",
                                                       "manifest": {}}


def test_empty_message_and_defaults_are_not_written():
    assert EMPTY.encode({}) == b""
    assert m.NODE_GET_INFO_RESPONSE.encode({"node_id": "", "max_volumes_per_node": 0}) == b""
    assert m.NODE_GET_INFO_RESPONSE.decode(b"") == {"node_id": "", "max_volumes_per_node": 0}
    assert m.NODE_GET_INFO_RESPONSE.encode({"node_id": "k8s-w0"}) == b"\x0a\x06k8s-w0"


def test_node_publish_volume_request_golden():
    req = {"volume_id": "v", "target_path": "/t", "readonly": True,
           "volume_capability": {"mount": {}, "access_mode": {"mode": 1}},
           "volume_context": {"b": "2", "a": "1"}}
    data = m.NODE_PUBLISH_VOLUME_REQUEST.encode(req)
    assert data == (
        b"\x0a\x01v"                      # 1 volume_id
        b"\x22\x02/t"                     # 4 target_path
        b"\x2a\x06" b"\x12\x00" b"\x1a\x02\x08\x01"  # 5 volume_capability: mount {} (2), access_mode {mode 1} (3)
        b"\x30\x01"                       # 6 readonly, varint
        b"\x42\x06\x0a\x01a\x12\x011"     # 8 volume_context entry a=1 (key 1, value 2)
        b"\x42\x06\x0a\x01b\x12\x012")    # entries in key order
    back = m.NODE_PUBLISH_VOLUME_REQUEST.decode(data)
    assert back["volume_context"] == {"a": "1", "b": "2"} and back["readonly"] is True
    assert back["volume_capability"]["mount"] == {"fs_type": "", "mount_flags": [], "volume_mount_group": ""}
    assert "block" not in back["volume_capability"]


def test_plugin_info_repeated_strings_golden():
    data = m.PLUGIN_INFO.encode({"type": "CSIPlugin", "name": "x", "endpoint": "/s",
                                 "supported_versions": ["1.0.0", ""]})
    assert data == b"\x0a\x09CSIPlugin\x12\x01x\x1a\x02/s\x22\x051.0.0\x22\x00"
    assert m.PLUGIN_INFO.decode(data)["supported_versions"] == ["1.0.0", ""]
    assert m.REGISTRATION_STATUS.encode({"plugin_registered": True}) == b"\x08\x01"


def test_to_dataplane_oneof_members_golden():
    # InSync {} is field 1 of zero length: present, unlike an absent member
    assert ps.TO_DATAPLANE.encode({"in_sync": {}}) == b"\x0a\x00"
    assert ps.TO_DATAPLANE.decode(b"\x0a\x00") == {"sequence_number": 0, "in_sync": {}}
    assert ps.TO_DATAPLANE.encode({"sequence_number": 300}) == b"\x78\xac\x02"  # field 15: key 0x78
    upd = {"workload_endpoint_remove": {"id": {"orchestrator_id": "k8s", "workload_id": "ns/p", "endpoint_id": "eth0"}}}
    data = ps.TO_DATAPLANE.encode(upd)
    # field 12 -> key 0x62; WorkloadEndpointID fields 2, 3, 4 (1 is reserved upstream)
    assert data == b"\x62\x13\x0a\x11\x12\x03k8s\x1a\x04ns/p\x22\x04eth0"
    assert ps.TO_DATAPLANE.decode(data)["workload_endpoint_remove"] == upd["workload_endpoint_remove"]


def test_negative_int_and_unknown_fields():
    msg = Message("T", [Field("n", 1, "int64"), Field("s", 2, "string")])
    data = msg.encode({"n": -1})
    assert data == b"\x08" + b"\xff" * 9 + b"\x01"
    assert msg.decode(data)["n"] == -1
    # an unknown varint (field 9), fixed64 (10) and fixed32 (11) are skipped
    extra = b"\x48\x05" + b"\x51" + b"\x00" * 8 + b"\x5d" + b"\x00" * 4
    assert msg.decode(extra + b"\x12\x01z") == {"n": 0, "s": "z"}


def test_bad_input_is_an_error_naming_it():
    with pytest.raises(WireError, match="no field"):
        m.PLUGIN_INFO.encode({"nope": 1})
    with pytest.raises(WireError, match="truncated"):
        m.PLUGIN_INFO.decode(b"\x0a\x05ab")
    with pytest.raises(WireError, match="wire type"):
        m.PLUGIN_INFO.decode(b"\x08\x01")  # field 1 as a varint: it is a string
    with pytest.raises(WireError, match="UTF-8"):
        m.PLUGIN_INFO.decode(b"\x0a\x01\xff")
