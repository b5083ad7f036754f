"""Dataclass <-> JSON conversion with Calico's (Go's) field names and omitempty rules.

A field's JSON name is the camelCase of its Python name unless the field sets
``metadata={"json": "ipv4IPIPTunnelAddr"}``. On output, ``None``, empty strings,
lists and dicts are omitted, as are ``False`` and ``0`` of plain ``bool``/``int``
fields (Go's omitempty); fields typed ``bool | None`` or ``int | None`` are Go
pointers and keep their ``False``/``0``. On input, unknown fields and wrong types
raise :class:`~datastore.errors.ValidationError` naming the field path.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Union

from datastore.errors import ValidationError


def camel(name: str) -> str:
    """snake_case -> camelCase (``block_size`` -> ``blockSize``)."""
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def jfield(json_name: str, default: Any = None, **kw: Any) -> Any:
    """A dataclass field with an explicit JSON name."""
    if "default_factory" in kw:
        return dataclasses.field(metadata={"json": json_name}, **kw)
    return dataclasses.field(default=default, metadata={"json": json_name}, **kw)


def struct_field(cls: type, json_name: str | None = None) -> Any:
    """A nested struct that Go encodes even when empty (a non-pointer struct: ``source: {}``)."""
    meta: dict[str, Any] = {"keep_empty": True}
    if json_name:
        meta["json"] = json_name
    return dataclasses.field(default_factory=cls, metadata=meta)


@functools.cache
def _fields(cls: type) -> list[tuple[str, str, Any]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        out.append((f.name, f.metadata.get("json") or camel(f.name), hints[f.name]))
    return out


@functools.cache
def _keep_empty(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get("keep_empty"))


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


@functools.cache
def _encode_plan(cls: type) -> tuple[tuple[str, str, bool, bool], ...]:
    """Per field of ``cls``, once: (name, JSON name, keep empty, Go pointer)."""
    keep = _keep_empty(cls)
    return tuple((name, jname, name in keep, _is_optional(tp)[0]) for name, jname, tp in _fields(cls))


def to_json(obj: Any) -> Any:
    """Encode a dataclass (recursively) into plain JSON data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for name, jname, keep, optional in _encode_plan(type(obj)):
            value = getattr(obj, name)
            if keep:
                out[jname] = to_json(value)
                continue
            if value is None:
                continue
            if not optional:
                if value is False or (isinstance(value, int) and not isinstance(value, bool) and value == 0):
                    continue
            if isinstance(value, str | list | dict) and len(value) == 0:
                continue
            encoded = to_json(value)
            if isinstance(encoded, dict) and not encoded and dataclasses.is_dataclass(value):
                continue
            out[jname] = encoded
        return out
    if isinstance(obj, list):
        return [to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    return obj


def _type_name(tp: Any) -> str:
    if tp is str:
        return "a string"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is float:
        return "a number"
    origin = typing.get_origin(tp)
    if origin is list:
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return str(tp)


Decoder = typing.Callable[[Any, str], Any]


def from_json(tp: Any, data: Any, path: str) -> Any:
    """Decode ``data`` into type ``tp``; errors name ``path`` (e.g. ``IPPool(p).spec.blockSize``)."""
    return _decoder(tp)(data, path)


@functools.cache
def _decoder(tp: Any) -> Decoder:
    """The decoder of ``tp``, worked out once per type: what the type asks for (optional,
    dataclass fields, list items...) is looked up here, not on every value decoded."""
    optional, inner = _is_optional(tp)
    nullable = optional or tp is Any
    body = _body(inner)

    def decode(data: Any, path: str) -> Any:
        if data is None:
            if nullable:
                return None
            raise ValidationError(path, "must not be null")
        return body(data, path)

    return decode


def _body(tp: Any) -> Decoder:  # noqa: C901 - one branch per kind of type, as from_json had
    if tp is Any:
        return lambda data, path: data
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        plan: dict[str, tuple[str, Decoder]] = {}  # filled on first use: types may be recursive

        def dataclass_body(data: Any, path: str) -> Any:
            if not isinstance(data, dict):
                raise ValidationError(path, f"must be a mapping, got {type(data).__name__}")
            if not plan:
                plan.update({jname: (name, _decoder(ftp)) for name, jname, ftp in _fields(tp)})
            kwargs: dict[str, Any] = {}
            for key, value in data.items():
                entry = plan.get(key)
                if entry is None:
                    known = ", ".join(sorted(plan))
                    raise ValidationError(f"{path}.{key}", f"unknown field (known fields: {known})")
                name, dec = entry
                kwargs[name] = dec(value, f"{path}.{key}")
            return tp(**kwargs)

        return dataclass_body
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        item = _decoder(item_tp)

        def list_body(data: Any, path: str) -> Any:
            if not isinstance(data, list):
                raise ValidationError(path, f"must be a list, got {type(data).__name__}")
            return [item(v, f"{path}[{i}]") for i, v in enumerate(data)]

        return list_body
    if origin is dict:
        _, vt = typing.get_args(tp) or (str, Any)
        val = _decoder(vt)

        def dict_body(data: Any, path: str) -> Any:
            if not isinstance(data, dict):
                raise ValidationError(path, f"must be a mapping, got {type(data).__name__}")
            return {str(k): val(v, f"{path}.{k}") for k, v in data.items()}

        return dict_body
    if origin in (Union, types.UnionType):
        alts = [_decoder(alt) for alt in typing.get_args(tp)]

        def union_body(data: Any, path: str) -> Any:
            for alt in alts:
                try:
                    return alt(data, path)
                except ValidationError:
                    continue
            raise ValidationError(path, f"has an unexpected value {data!r}")

        return union_body
    if tp is bool:
        def bool_body(data: Any, path: str) -> Any:
            if isinstance(data, bool):
                return data
            raise ValidationError(path, f"must be true or false, got {data!r}")

        return bool_body
    if tp is int:
        def int_body(data: Any, path: str) -> Any:
            if isinstance(data, int) and not isinstance(data, bool):
                return data
            if isinstance(data, str) and data.strip().lstrip("-").isdigit():
                return int(data)
            raise ValidationError(path, f"must be an integer, got {data!r}")

        return int_body
    if tp is float:
        def float_body(data: Any, path: str) -> Any:
            if isinstance(data, int | float) and not isinstance(data, bool):
                return float(data)
            raise ValidationError(path, f"must be a number, got {data!r}")

        return float_body
    if tp is str:
        def str_body(data: Any, path: str) -> Any:
            if isinstance(data, str):
                return data
            if isinstance(data, int | float) and not isinstance(data, bool):
                return str(data)
            raise ValidationError(path, f"must be a string, got {data!r}")

        return str_body

    def unknown_body(data: Any, path: str) -> Any:
        raise ValidationError(path, f"cannot decode into {_type_name(tp)}")

    return unknown_body
