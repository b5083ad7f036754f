"""A birdc-like control socket and its client.

Protocol (BIRD's): the server greets with ``0001 <banner>``; each command is one line; a
reply is made of blocks, each starting ``NNNN-text`` with further lines `` text`` (a leading
space), and ends with ``0000`` (success) or ``9001 <error>``. ``show protocols`` answers
with a ``2002-`` heading and ``1002-`` rows exactly like BIRD, so calicoctl's own parser
reads it. :func:`query` hides the codes.

CLI: ``python -m agent.bgp.ctl [-s SOCK] show protocols|show route|show status|show config``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from collections.abc import Callable

DEFAULT_SOCKET = "/var/run/calico/bird.ctl"
BANNER = "calicolab BGP speaker ready."


class CtlError(RuntimeError):
    """The control socket answered with an error or could not be reached."""


def handle_command(cmd: str, status: Callable[[], dict], routes: Callable[[], list[str]],
                   config: Callable[[], str] | None = None) -> list[tuple[int, list[str]]]:
    """Answer one command as BIRD reply blocks [(code, lines)] (CtlError if unknown)."""
    from agent.bgp.status import render_protocols

    words = cmd.split()
    if words[:2] == ["show", "config"] and config is not None:
        return [(1000, config().splitlines() or [""])]
    if words[:2] == ["show", "protocols"] or words == ["show", "protocol"]:
        lines = render_protocols(status()["peers"]).splitlines()
        return [(2002, lines[:1])] + ([(1002, lines[1:])] if lines[1:] else [])
    if words[:2] == ["show", "route"]:
        return [(1007, routes() or ["(no routes)"])]
    if words[:2] == ["show", "status"]:
        st = status()
        return [(1000, ["BIRD-compatible calicolab speaker"]),
                (1011, [f"Router ID is {st['router_id']}", f"Local AS {st['as']}",
                        f"Established sessions: {st['established']} of {len(st['peers'])}",
                        f"Routes: {st['routes']} (kernel: {st['kernel_routes']})"]),
                (13, ["Daemon is up and running"])]
    if words[:2] == ["show", "json"]:
        return [(1000, [json.dumps(status(), default=str)])]
    raise CtlError(f"unknown command {cmd.strip()!r} (try: show protocols, show route, "
                   f"show status, show config)")


def encode_reply(blocks: list[tuple[int, list[str]]]) -> str:
    """BIRD's framing: 'NNNN-first line', ' next lines', then '0000'."""
    out = []
    for code, lines in blocks:
        for k, line in enumerate(lines):
            out.append(f"{code:04d}-{line}" if k == 0 else f" {line}")
    return "".join(x + "\n" for x in out) + "0000 \n"


async def serve(path: str, status: Callable[[], dict], routes: Callable[[], list[str]],
                config: Callable[[], str] | None = None) -> asyncio.AbstractServer:
    """Start the control socket server on the running loop (``config``: the text for
    ``show config``, confd's equivalent bird.cfg)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"0001 {BANNER}\n".encode())
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                cmd = line.decode(errors="replace").strip()
                if not cmd:
                    continue
                try:
                    out = encode_reply(handle_command(cmd, status, routes, config))
                except CtlError as exc:
                    out = f"9001 {exc}\n"
                writer.write(out.encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return await asyncio.start_unix_server(client, path)


def query(sock: str, command: str, timeout: float = 5.0) -> str:
    """Send one command to the control socket at ``sock``; return the reply text.
    Raises CtlError when the socket is missing or the command fails."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(sock)
    except OSError as exc:
        s.close()
        raise CtlError(f"unable to connect to BGP control socket {sock}: {exc}") from exc
    with s, s.makefile("rwb") as f:
        greeting = f.readline().decode()
        if not greeting.startswith("0001"):
            raise CtlError(f"unexpected greeting {greeting!r}")
        f.write(command.encode() + b"\n")
        f.flush()
        lines = []
        while True:
            line = f.readline().decode()
            if not line:
                raise CtlError("control socket closed mid-reply")
            line = line.rstrip("\n")
            if line.startswith("0000"):
                return "\n".join(lines)
            if line[:4].isdigit() and line[4:5] == " ":
                raise CtlError(line[5:])
            lines.append(line[5:] if line[:4].isdigit() and line[4:5] == "-" else line[1:])


def main(argv: list[str] | None = None) -> int:
    """birdc-like CLI."""
    ap = argparse.ArgumentParser(prog="python -m agent.bgp.ctl",
                                 description="Query the calicolab BGP speaker")
    ap.add_argument("-s", "--socket", default=DEFAULT_SOCKET)
    ap.add_argument("command", nargs="+")
    args = ap.parse_args(argv)
    try:
        print(query(args.socket, " ".join(args.command)))
    except CtlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
