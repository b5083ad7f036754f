"""A small protocol-buffers (proto3) wire codec for the gRPC APIs calicolab serves and calls.

The CSI driver (:mod:`agent.csi`), the node-driver-registrar, the kubelet's plugin watcher
(:mod:`testbed.k8s.pluginwatcher`) and Felix's policy-sync API (:mod:`agent.felix.policysync`)
exchange protobuf messages over gRPC (grpcio carries the bytes; it needs no generated
code when each method names its own serializer). The messages are declared here-abouts by
calicolab as :class:`Message` schemas, with the field numbers of the upstream ``.proto``
files (CSI spec ``csi.proto``, kubelet ``pluginregistration/v1/api.proto``, Felix
``proto/felixbackend.proto``); only the fields calicolab reads or writes are declared.

Values are plain dicts. Encoding follows proto3: a scalar equal to its default ("" / 0 /
False) is not written, a message-typed field is written whenever its key is present and
not None (an empty dict gives a zero-length field: how a ``oneof`` member such as
``InSync {}`` is told apart from no member), a map is a repeated entry message (key 1,
value 2, both always written) in key order so encodings are stable. Decoding fills scalars, repeated
fields and maps with their defaults, leaves an absent message-typed field out of the dict,
and skips unknown fields as protobuf does (wire types 0, 1, 2 and 5). Golden-byte tests:
tests/unit/test_protowire.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: scalar kinds and their wire types (0: varint, 2: length-delimited)
SCALARS = {"string": 2, "bytes": 2, "bool": 0, "int32": 0, "int64": 0, "uint32": 0, "uint64": 0, "enum": 0}


class WireError(ValueError):
    """Bytes that are not a valid encoding of the message (truncated, bad wire type, bad UTF-8)."""


@dataclass(frozen=True)
class Field:
    """One field: ``kind`` a scalar kind, ``"map"`` (map<string,string>) or ``"message"``
    (then ``message`` is its schema); ``repeated`` for repeated fields."""

    name: str
    number: int
    kind: str
    repeated: bool = False
    message: Message | None = None


class Message:
    """A message schema: ``Message("csi.v1.GetPluginInfoResponse", [Field(...), ...])``."""

    def __init__(self, name: str, fields: list[Field] | tuple[Field, ...] = ()) -> None:
        self.name = name
        self.fields = tuple(fields)
        self.by_number = {f.number: f for f in self.fields}
        for f in self.fields:
            if f.kind == "message" and f.message is None:
                raise ValueError(f"{name}.{f.name}: a message field needs its schema")
            if f.kind not in SCALARS and f.kind not in ("map", "message"):
                raise ValueError(f"{name}.{f.name}: unknown kind {f.kind!r}")

    def __repr__(self) -> str:
        return f"Message({self.name})"

    # -- encoding ---------------------------------------------------------------------------
    def encode(self, value: dict[str, Any] | None) -> bytes:
        """The wire bytes of ``value`` (a dict keyed by field name; unknown keys are an error)."""
        value = value or {}
        unknown = set(value) - {f.name for f in self.fields}
        if unknown:
            raise WireError(f"{self.name}: no field(s) {', '.join(sorted(unknown))}")
        out = bytearray()
        for f in self.fields:
            v = value.get(f.name)
            if v is None:
                continue
            if f.kind == "map":
                for k in sorted(v):
                    entry = _len_field(1, str(k).encode()) + _len_field(2, str(v[k]).encode())
                    out += _len_field(f.number, entry)
            elif f.repeated:
                for item in v:
                    out += _encode_one(f, item, always=True)
            else:
                out += _encode_one(f, v, always=False)
        return bytes(out)

    # -- decoding ---------------------------------------------------------------------------
    def decode(self, data: bytes) -> dict[str, Any]:
        """The dict of ``data`` (defaults filled in for absent scalars, lists and maps)."""
        out: dict[str, Any] = {}
        for f in self.fields:
            if f.kind == "map":
                out[f.name] = {}
            elif f.repeated:
                out[f.name] = []
            elif f.kind != "message":
                out[f.name] = _default(f.kind)
        for number, wtype, raw in raw_fields(data, self.name):
            f = self.by_number.get(number)
            if f is None:
                continue  # unknown field: skipped, as protobuf does
            want = 2 if f.kind in ("map", "message") else SCALARS[f.kind]
            if f.repeated and want == 0 and wtype == 2:  # a packed repeated varint field
                items, p = [], 0
                while p < len(raw):
                    x, p = read_varint(raw, p)
                    items.append(_scalar(f, x))
                out[f.name].extend(items)
                continue
            if wtype != want:
                raise WireError(f"{self.name}.{f.name}: wire type {wtype}, expected {want}")
            if f.kind == "map":
                entry = _MAP_ENTRY.decode(raw)
                out[f.name][entry["key"]] = entry["value"]
            elif f.kind == "message":
                assert f.message is not None
                item = f.message.decode(raw)
                if f.repeated:
                    out[f.name].append(item)
                else:
                    out[f.name] = item
            elif f.repeated:
                out[f.name].append(_scalar(f, raw))
            else:
                out[f.name] = _scalar(f, raw)
        return out


def _default(kind: str) -> Any:
    return {"string": "", "bytes": b"", "bool": False}.get(kind, 0)


def _scalar(f: Field, raw: Any) -> Any:
    if f.kind == "string":
        try:
            return bytes(raw).decode()
        except UnicodeDecodeError:
            raise WireError(f"{f.name}: invalid UTF-8 in a string field") from None
    if f.kind == "bytes":
        return bytes(raw)
    if f.kind == "bool":
        return bool(raw)
    if f.kind in ("int32", "int64", "enum") and raw >= 1 << 63:
        return raw - (1 << 64)
    if f.kind == "int32" and raw >= 1 << 31:
        return raw - (1 << 32)
    return raw


def _encode_one(f: Field, v: Any, always: bool) -> bytes:
    if f.kind == "message":
        assert f.message is not None
        return _len_field(f.number, f.message.encode(v))
    if f.kind == "string":
        b = str(v).encode()
        return _len_field(f.number, b) if (b or always) else b""
    if f.kind == "bytes":
        return _len_field(f.number, bytes(v)) if (v or always) else b""
    n = int(v)
    if not n and not always:
        return b""
    if n < 0:
        n += 1 << 64  # two's complement in ten bytes, as protobuf writes a negative int
    return write_varint(f.number << 3) + write_varint(n)


def _len_field(number: int, payload: bytes) -> bytes:
    return write_varint(number << 3 | 2) + write_varint(len(payload)) + payload


def write_varint(n: int) -> bytes:
    """Base-128 varint of ``n`` (>= 0)."""
    if n < 0:
        raise WireError(f"varint of negative {n}")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def raw_fields(data: bytes, what: str = "message") -> Iterator[tuple[int, int, Any]]:
    """``(field number, wire type, raw value)`` of every field of a message, in wire order
    (varints as ints, the others as bytes); ``what`` names the message in errors."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = read_varint(data, pos)
        number, wtype = key >> 3, key & 7
        if number == 0:
            raise WireError(f"{what}: field number 0")
        if wtype == 0:
            raw, pos = read_varint(data, pos)
        elif wtype == 2:
            n, pos = read_varint(data, pos)
            if pos + n > end:
                raise WireError(f"{what}: truncated length-delimited field {number}")
            raw, pos = data[pos:pos + n], pos + n
        elif wtype == 1:
            raw, pos = data[pos:pos + 8], pos + 8
        elif wtype == 5:
            raw, pos = data[pos:pos + 4], pos + 4
        else:
            raise WireError(f"{what}: field {number} has unsupported wire type {wtype}")
        if pos > end:
            raise WireError(f"{what}: truncated field {number}")
        yield number, wtype, raw


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """``(value, next position)`` of the varint at ``pos``."""
    shift = result = 0
    while True:
        if pos >= len(buf):
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint longer than 10 bytes")


_MAP_ENTRY = Message("MapEntry", [Field("key", 1, "string"), Field("value", 2, "string")])
EMPTY = Message("Empty")

__all__ = ["EMPTY", "Field", "Message", "WireError", "read_varint", "write_varint"]
