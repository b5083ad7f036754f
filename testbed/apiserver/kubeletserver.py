"""The kubelet's HTTPS endpoint (``:10250``) for the API server: container logs, exec and
port-forward, with the protocol side done here and the node side plugged in as a
:class:`Backend` (the lab's kubelet supplies one that reaches its pods; the tests use
one that runs local processes). The contract is described in :mod:`testbed.apiserver.kubelet`.

    server = KubeletServer(backend, cert_file, key_file, client_ca_file)
    runner = await server.start("0.0.0.0", 10250)
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web

log = logging.getLogger("kubeletserver")

EXEC_PROTOCOLS = ["v5.channel.k8s.io", "v4.channel.k8s.io"]
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255


@dataclass
class LogOptions:
    """The query of a containerLogs request."""

    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    tail_lines: int | None = None
    since_seconds: int | None = None
    limit_bytes: int | None = None


class NotFoundError(Exception):
    """The pod or container is not on this node (answered 404 with the message)."""


class Backend:
    """What a kubelet plugs in: how to reach its pods' containers."""

    async def logs(self, ns: str, pod: str, container: str, opts: LogOptions) -> AsyncIterator[bytes]:
        """The container's log (lines, newline-terminated); with ``follow``, keep yielding."""
        raise NotImplementedError
        yield b""  # pragma: no cover

    async def exec_argv(self, ns: str, pod: str, container: str, command: list[str], tty: bool) -> list[str]:
        """The argv that runs ``command`` inside the container (e.g. wrapped in nsenter)."""
        raise NotImplementedError

    async def open_port(self, ns: str, pod: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection to ``port`` inside the pod's network namespace."""
        raise NotImplementedError

    async def attach(self, ns: str, pod: str, container: str) -> tuple[asyncio.StreamReader,
                                                                       asyncio.StreamWriter | None]:
        """The container's main process output (and its stdin, if open): optional; a backend
        without it makes attach (and ``kubectl run -i``) answer 400 saying so."""
        raise NotImplementedError


def _status_ok() -> bytes:
    return json.dumps({"metadata": {}, "status": "Success"}).encode()


def _status_exit(code: int) -> bytes:
    return json.dumps({"metadata": {}, "status": "Failure",
                       "message": f"command terminated with non-zero exit code: exit status {code}",
                       "reason": "NonZeroExitCode",
                       "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}).encode()


def _status_error(message: str) -> bytes:
    return json.dumps({"metadata": {}, "status": "Failure", "message": message,
                       "reason": "InternalError", "code": 500}).encode()


class KubeletServer:
    """The kubelet API endpoint (TLS; client certificates verified against ``client_ca_file``)."""

    def __init__(self, backend: Backend, cert_file: str, key_file: str, client_ca_file: str | None = None):
        self.backend = backend
        self.cert_file, self.key_file, self.client_ca_file = cert_file, key_file, client_ca_file
        self.app = web.Application()
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/containerLogs/{ns}/{pod}/{container}", self.logs)
        self.app.router.add_route("*", "/exec/{ns}/{pod}/{container}", self.exec)
        self.app.router.add_route("*", "/attach/{ns}/{pod}/{container}", self.attach)
        self.app.router.add_route("*", "/portForward/{ns}/{pod}", self.portforward)

    async def healthz(self, req: web.Request) -> web.Response:
        return web.Response(text="ok")

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file:
            ctx.load_verify_locations(self.client_ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    async def start(self, host: str, port: int, sock: socket.socket | None = None) -> web.AppRunner:
        """Serve on ``host:port``, or on the listening socket ``sock`` (bound by the caller)."""
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        if sock is not None:
            await web.SockSite(runner, sock, ssl_context=self.ssl_context()).start()
        else:
            await web.TCPSite(runner, host, port, ssl_context=self.ssl_context()).start()
        return runner

    # --- logs -------------------------------------------------------------------------------
    async def logs(self, req: web.Request) -> web.StreamResponse:
        q = req.query

        def num(k: str) -> int | None:
            v = q.get(k)
            return int(v) if v and v.lstrip("-").isdigit() else None

        opts = LogOptions(follow=q.get("follow") == "true", previous=q.get("previous") == "true",
                          timestamps=q.get("timestamps") == "true", tail_lines=num("tailLines"),
                          since_seconds=num("sinceSeconds"), limit_bytes=num("limitBytes"))
        m = req.match_info
        it = self.backend.logs(m["ns"], m["pod"], m["container"], opts)
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            first = b""
        except NotFoundError as exc:
            return web.Response(status=404, text=str(exc))
        except ValueError as exc:
            return web.Response(status=400, text=str(exc))
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(req)
        sent = 0
        try:
            chunk = first
            while True:
                if chunk:
                    if opts.limit_bytes is not None:
                        chunk = chunk[:max(0, opts.limit_bytes - sent)]
                    await resp.write(chunk)
                    sent += len(chunk)
                    if opts.limit_bytes is not None and sent >= opts.limit_bytes:
                        break
                try:
                    chunk = await it.__anext__()
                except StopAsyncIteration:
                    break
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            await it.aclose()
        try:
            await resp.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass
        return resp

    # --- exec -------------------------------------------------------------------------------
    async def exec(self, req: web.Request) -> web.StreamResponse:
        m, q = req.match_info, req.query
        command = q.getall("command", [])
        if not command:
            return web.Response(status=400, text="you must specify at least 1 command")
        stdin, tty = q.get("stdin") in ("1", "true"), q.get("tty") in ("1", "true")
        ws = web.WebSocketResponse(protocols=EXEC_PROTOCOLS, max_msg_size=0)
        await ws.prepare(req)
        v5 = ws.ws_protocol == "v5.channel.k8s.io"
        try:
            argv = await self.backend.exec_argv(m["ns"], m["pod"], m["container"], command, tty)
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except NotFoundError as exc:
            await ws.send_bytes(bytes([ERROR]) + _status_error(str(exc)))
            await ws.close()
            return ws
        except (FileNotFoundError, PermissionError) as exc:
            await ws.send_bytes(bytes([ERROR]) + _status_error(
                f'exec: "{command[0]}": executable file not found in $PATH: {exc.strerror}'))
            await ws.close()
            return ws

        async def pump(stream: asyncio.StreamReader, ch: int) -> None:
            while True:
                data = await stream.read(65536)
                if not data:
                    return
                await ws.send_bytes(bytes([ch]) + data)

        async def feed() -> None:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY or not msg.data:
                    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR):
                        break
                    continue
                ch = msg.data[0]
                if ch == STDIN and proc.stdin is not None:
                    proc.stdin.write(msg.data[1:])
                    await proc.stdin.drain()
                elif ch == CLOSE and v5 and msg.data[1:2] == bytes([STDIN]) and proc.stdin is not None:
                    proc.stdin.close()
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()

        feeder = asyncio.ensure_future(feed())
        assert proc.stdout is not None and proc.stderr is not None
        await asyncio.gather(pump(proc.stdout, STDOUT), pump(proc.stderr, STDERR))
        code = await proc.wait()
        await ws.send_bytes(bytes([ERROR]) + (_status_ok() if code == 0 else _status_exit(code)))
        feeder.cancel()
        await ws.close()
        return ws

    async def attach(self, req: web.Request) -> web.StreamResponse:
        m = req.match_info
        try:
            fn = getattr(self.backend, "attach", None)
            if fn is None:
                raise NotImplementedError
            reader, writer = await fn(m["ns"], m["pod"], m["container"])
        except NotImplementedError:
            return web.Response(status=400, text="attach is not served by this kubelet (exec, logs and "
                                                 "port-forward are)")
        except NotFoundError as exc:
            return web.Response(status=404, text=str(exc))
        ws = web.WebSocketResponse(protocols=EXEC_PROTOCOLS, max_msg_size=0)
        await ws.prepare(req)

        async def feed() -> None:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY and msg.data[:1] == bytes([STDIN]) and writer is not None:
                    writer.write(msg.data[1:])
                    await writer.drain()
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR):
                    break

        feeder = asyncio.ensure_future(feed())
        while True:
            data = await reader.read(65536)
            if not data:
                break
            await ws.send_bytes(bytes([STDOUT]) + data)
        await ws.send_bytes(bytes([ERROR]) + _status_ok())
        feeder.cancel()
        await ws.close()
        return ws

    # --- port-forward -----------------------------------------------------------------------
    async def portforward(self, req: web.Request) -> web.StreamResponse:
        m = req.match_info
        try:
            port = int(req.query.get("port", ""))
        except ValueError:
            return web.Response(status=400, text=f"invalid port {req.query.get('port')!r}")
        ws = web.WebSocketResponse(protocols=["v4.channel.k8s.io"], max_msg_size=0)
        await ws.prepare(req)
        pb = struct.pack("<H", port)
        await ws.send_bytes(b"\x00" + pb)
        await ws.send_bytes(b"\x01" + pb)
        try:
            reader, writer = await self.backend.open_port(m["ns"], m["pod"], port)
        except (OSError, NotFoundError) as exc:
            await ws.send_bytes(b"\x01" + f"error forwarding port {port} to pod {m['pod']}: {exc}".encode())
            await ws.close()
            return ws

        async def down() -> None:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await ws.send_bytes(b"\x00" + data)
            await ws.close()

        t = asyncio.ensure_future(down())
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY and msg.data[:1] == b"\x00" and len(msg.data) > 1:
                writer.write(msg.data[1:])
                await writer.drain()
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR):
                break
        try:
            writer.write_eof()
        except OSError:
            pass
        await asyncio.wait({t}, timeout=5)
        writer.close()
        return ws
