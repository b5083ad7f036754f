"""Decoding Kubernetes protobuf request bodies (``application/vnd.kubernetes.protobuf``)
into the JSON form the server works on.

The envelope is the 4-byte magic ``k8s\\0`` and a ``runtime.Unknown`` (typeMeta,
raw, contentEncoding, contentType); ``raw`` is the object's message, decoded with the
field tables of :mod:`protofields`. Empty (zero) values are dropped as the JSON
encoding's ``omitempty`` drops them. A field the tables do not know, carrying a value,
is an error naming it: nothing is silently lost.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from functools import cache
from typing import Any

from agent.protowire import WireError, raw_fields, read_varint
from testbed.apiserver.protofields import FIELDS

MAGIC = b"k8s\x00"
CONTENT_TYPE = "application/vnd.kubernetes.protobuf"

_GROUP_PKG = {"": "core", "apps": "apps", "batch": "batch", "rbac.authorization.k8s.io": "rbac", "policy": "policy",
              "scheduling.k8s.io": "scheduling", "authentication.k8s.io": "authentication",
              "authorization.k8s.io": "authorization", "coordination.k8s.io": "coordination",
              "networking.k8s.io": "networking", "discovery.k8s.io": "discovery", "events.k8s.io": "events",
              "storage.k8s.io": "storage", "meta.k8s.io": "meta"}
KEEP_ZERO = {"replicas", "port", "containerPort"}


class ProtobufError(ValueError):
    """A protobuf body that cannot be decoded (answered 400 / 415 by the caller)."""


@cache
def _table(message: str) -> dict[int, tuple[str, str]]:
    spec = FIELDS.get(message)
    if spec is None:
        raise ProtobufError(f"protobuf message {message} is not decoded by calicolab (send JSON)")
    out = {}
    for ent in spec.split(" "):
        name, _, rest = ent.partition("=")
        num, _, typ = rest.partition(":")
        out[int(num)] = (name, typ)
    return out


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    try:
        return read_varint(buf, pos)
    except WireError as exc:
        raise ProtobufError(str(exc)) from None


def _fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """(number, wire type, raw value) of every field of a message (agent.protowire's walker)."""
    try:
        return list(raw_fields(bytes(buf), "protobuf message"))
    except WireError as exc:
        raise ProtobufError(str(exc)) from None


def _scalar(typ: str, wt: int, v: Any) -> Any:
    if typ == "s":
        return bytes(v).decode()
    if typ == "y":
        return base64.b64encode(bytes(v)).decode()
    if typ == "b":
        return bool(v)
    if typ == "i":
        return v - (1 << 64) if isinstance(v, int) and v >= 1 << 63 else v
    if typ == "d":
        return struct.unpack("<d", v)[0] if wt == 1 else struct.unpack("<f", v)[0]
    raise ProtobufError(f"unknown scalar type {typ}")


def _special(message: str, buf: bytes) -> tuple[bool, Any]:
    if message in ("meta.Time", "meta.MicroTime"):
        secs, nanos = 0, 0
        for num, _, v in _fields(buf):
            if num == 1:
                secs = _scalar("i", 0, v)
            elif num == 2:
                nanos = v
        if secs == 0 and nanos == 0:  # Go's zero time: the field is unset
            return True, None
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
        return True, text + (f".{nanos // 1000:06d}Z" if message == "meta.MicroTime" else "Z")
    if message == "intstr.IntOrString":
        typ, iv, sv = 0, 0, ""
        for num, _, v in _fields(buf):
            if num == 1:
                typ = v
            elif num == 2:
                iv = _scalar("i", 0, v)
            elif num == 3:
                sv = bytes(v).decode()
        return True, sv if typ == 1 else iv
    if message == "resource.Quantity":
        return True, next((bytes(v).decode() for num, _, v in _fields(buf) if num == 1), "")
    if message in ("runtime.RawExtension", "meta.FieldsV1"):
        raw = next((bytes(v) for num, _, v in _fields(buf) if num == 1), b"")
        return True, json.loads(raw) if raw else None
    if message == "meta.Duration":
        ns = next((_scalar("i", 0, v) for num, _, v in _fields(buf) if num == 1), 0)
        return True, f"{ns / 1e9:g}s"
    return False, None


def _zero(v: Any) -> bool:
    return v is None or v == "" or v == 0 and not isinstance(v, bool) or v is False or v == {} or v == []


def decode_message(buf: bytes, message: str, path: str = "") -> Any:
    """One message as a JSON value."""
    special, value = _special(message, buf)
    if special:
        return value
    table = _table(message)
    out: dict[str, Any] = {}
    for num, wt, v in _fields(buf):
        ent = table.get(num)
        if ent is None:
            if (wt == 0 and v == 0) or (wt == 2 and not v):
                continue
            raise ProtobufError(f"field {num} of {message} ({path or '<root>'}) is not decoded by calicolab; "
                                "send the object as JSON")
        name, typ = ent
        repeated = typ.startswith("*")
        base = typ[1:] if repeated else typ
        if base.startswith("{"):
            vt = base[1:-1]
            k, val = "", None
            for n2, w2, v2 in _fields(v):
                if n2 == 1:
                    k = bytes(v2).decode()
                elif n2 == 2:
                    val = _scalar(vt, w2, v2) if len(vt) == 1 else decode_message(v2, vt, f"{path}.{name}")
            out.setdefault(name, {})[k] = val if val is not None else ("" if vt == "s" else val)
            continue
        if len(base) == 1:
            if repeated and wt == 2 and base in ("i", "b", "d"):  # packed
                vals, pos = [], 0
                while pos < len(v):
                    x, pos = _varint(v, pos)
                    vals.append(_scalar(base, 0, x))
                out.setdefault(name, []).extend(vals)
                continue
            item = _scalar(base, wt, v)
        else:
            item = decode_message(v, base, f"{path}.{name}" if path else name)
        if repeated:
            out.setdefault(name, []).append(item)
        else:
            out[name] = item
    return {k: v for k, v in out.items() if not _zero(v) or k in KEEP_ZERO and v == 0}


def decode(body: bytes) -> dict[str, Any]:
    """A protobuf-encoded object (with its envelope) as a JSON object."""
    if not body.startswith(MAGIC):
        raise ProtobufError("the body is not a Kubernetes protobuf object (no k8s\\0 magic)")
    api_version, kind, raw = "", "", b""
    for num, _, v in _fields(body[4:]):
        if num == 1:
            for n2, _, v2 in _fields(v):
                if n2 == 1:
                    api_version = bytes(v2).decode()
                elif n2 == 2:
                    kind = bytes(v2).decode()
        elif num == 2:
            raw = bytes(v)
        elif num == 3 and v:
            raise ProtobufError(f"protobuf content encoding {bytes(v).decode()!r} is not decoded")
    group = api_version.rpartition("/")[0] if "/" in api_version else ""
    pkg = _GROUP_PKG.get(group)
    if pkg is None or not kind:
        raise ProtobufError(f"protobuf objects of {api_version} {kind} are not decoded by calicolab; send JSON")
    obj = decode_message(raw, f"{pkg}.{kind}")
    return {"apiVersion": api_version, "kind": kind, **obj}
