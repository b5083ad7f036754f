"""Entry points of the ``calico`` and ``calico-ipam`` executables: a thin client.

Imports only the standard library's json, os, socket and sys, so the process
starts in ~20 ms. It forwards the request (environment + stdin) over the unix
socket of the warm :class:`cni.server.CNIServer` in calico-node and prints the
answer. When no server answers (no agent on this node, or a server in another
network/mount namespace), it does the work in-process with :func:`cni.plugin.run`,
so the executables stay standalone.

Environment: ``CALICO_CNI_SOCKET`` overrides the socket path
(default ``/var/run/calico/cni.sock``); ``none`` disables forwarding.
"""

from __future__ import annotations

import json
import os
import socket
import sys

DEFAULT_SOCKET = "/var/run/calico/cni.sock"
REPLY_TIMEOUT = 300.0


def _ns_ids() -> dict[str, int]:
    out = {}
    for kind in ("net", "mnt"):
        try:
            out[kind] = os.stat(f"/proc/self/ns/{kind}").st_ino
        except OSError:
            out[kind] = 0
    return out


def forward(plugin: str, env: dict[str, str], stdin: bytes, sock_path: str) -> tuple[int, str, str] | None:
    """Send the request to the CNI server; None if no server takes it (caller runs in-process)."""
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            s.connect(sock_path)
        except OSError:
            return None
        request = {"plugin": plugin, "env": env, "stdin": stdin.decode("utf-8", "surrogateescape"), "ns": _ns_ids()}
        try:
            s.sendall(json.dumps(request).encode("utf-8", "surrogatepass"))
            s.shutdown(socket.SHUT_WR)
        except OSError:
            return None  # nothing was processed
        s.settimeout(REPLY_TIMEOUT)
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError as exc:
            err = {"cniVersion": "1.1.0", "code": 11, "msg": f"calico CNI server at {sock_path} did not answer: {exc}"}
            return 1, json.dumps(err), ""
        try:
            reply = json.loads(b"".join(chunks))
        except ValueError:
            reply = None
        if not isinstance(reply, dict) or reply.get("refused"):
            return None  # the server declined before doing anything (e.g. other netns)
        return int(reply.get("code", 1)), str(reply.get("stdout", "")), str(reply.get("stderr", ""))
    finally:
        s.close()


def _main(plugin: str) -> int:
    stdin = sys.stdin.buffer.read() if sys.stdin is not None and not sys.stdin.isatty() else b""
    env = dict(os.environ)
    sock_path = env.get("CALICO_CNI_SOCKET", DEFAULT_SOCKET)
    answer = None
    if sock_path and sock_path != "none":
        answer = forward(plugin, env, stdin, sock_path)
    if answer is None:
        from cni.plugin import run

        answer = run(plugin, env, stdin)
    code, out, err = answer
    if out:
        sys.stdout.write(out if out.endswith("\n") else out + "\n")
    if err:
        sys.stderr.write(err)
    sys.stdout.flush()
    return code


def main_calico() -> int:
    """The ``calico`` executable."""
    return _main("calico")


def main_ipam() -> int:
    """The ``calico-ipam`` executable."""
    return _main("calico-ipam")


if __name__ == "__main__":
    name = os.path.basename(sys.argv[0])
    sys.exit(main_ipam() if name.endswith("ipam") else main_calico())
