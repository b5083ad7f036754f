"""gRPC plumbing over :mod:`agent.protowire`: serve methods on a unix socket, call them.

grpcio carries the bytes; each method names its request and response :class:`Message`
schemas, so no generated code is needed. Method paths are gRPC's ``/<package>.<Service>/<Method>``
with the package of the upstream ``.proto`` (``csi.v1``, ``pluginregistration``, ``felix``),
so a client built from the upstream definitions (e.g. Go's csi-sanity, the real kubelet)
reaches the same methods.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from agent.protowire import Message

#: a unary handler: (request dict, grpc context) -> response dict
Unary = Callable[[dict, Any], dict]
#: a server-streaming handler: (request dict, grpc context) -> iterator of response dicts
Streaming = Callable[[dict, Any], Iterator[dict]]


class RpcError(Exception):
    """A call failed: ``code`` is the gRPC status code's name (e.g. ``UNAVAILABLE``)."""

    def __init__(self, path: str, code: str, details: str):
        self.code, self.details = code, details
        super().__init__(f"{path}: {code}: {details}")


def service(name: str, methods: dict[str, tuple[Message, Message, Unary | Streaming, bool]]) -> Any:
    """A generic handler for service ``name`` (``csi.v1.Identity``): method -> (request schema,
    response schema, handler, server-streaming?)."""
    handlers = {}
    for method, (req, resp, fn, stream) in methods.items():
        make = grpc.unary_stream_rpc_method_handler if stream else grpc.unary_unary_rpc_method_handler
        handlers[method] = make(fn, request_deserializer=req.decode, response_serializer=resp.encode)
    return grpc.method_handlers_generic_handler(name, handlers)


def serve_unix(path: str, handlers: list[Any], workers: int = 4) -> grpc.Server:
    """Start a gRPC server on unix socket ``path`` (a leftover socket file is removed first)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    server = grpc.server(ThreadPoolExecutor(max_workers=workers), handlers=handlers)
    if not server.add_insecure_port(f"unix://{path}"):
        raise OSError(f"cannot listen on unix socket {path}")
    server.start()
    return server


def unix_path(address: str) -> str:
    """The socket file of a unix address as gRPC takes them: a path, ``unix:PATH`` or
    ``unix://PATH`` (``unix:///abs`` is ``/abs``)."""
    for prefix in ("unix://", "unix:"):
        if address.startswith(prefix):
            return address[len(prefix):]
    return address


def channel(path: str) -> grpc.Channel:
    """An insecure channel to unix socket ``path`` (``unix://`` prefix optional)."""
    target = path if path.startswith("unix:") else f"unix://{path}"
    return grpc.insecure_channel(target)


def call(ch: grpc.Channel, path: str, req: Message, resp: Message, value: dict | None = None,
         timeout: float = 5.0) -> dict:
    """Call unary method ``path`` (``/csi.v1.Node/NodeGetInfo``); raises :class:`RpcError`."""
    fn = ch.unary_unary(path, request_serializer=req.encode, response_deserializer=resp.decode)
    try:
        return fn(value or {}, timeout=timeout)
    except grpc.RpcError as exc:
        raise RpcError(path, exc.code().name, exc.details() or "") from None


def stream(ch: grpc.Channel, path: str, req: Message, resp: Message, value: dict | None = None,
           timeout: float | None = None) -> Any:
    """Call server-streaming method ``path``; the result iterates the responses (and has
    ``cancel()``)."""
    fn = ch.unary_stream(path, request_serializer=req.encode, response_deserializer=resp.decode)
    return fn(value or {}, timeout=timeout)
