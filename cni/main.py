"""Entry points of the ``calico`` and ``calico-ipam`` executables: a thin client.

Imports only ``posix`` and ``sys`` (both loaded by the interpreter before any code
runs, also under ``python3 -I -S``), the built-in ``_socket`` and :mod:`cni.wire`, so
the process costs little more than the interpreter's start (``json`` and ``socket``
would add ~10 ms per call: see :mod:`cni.wire`; ``os``, which ``-S`` does not load,
~1 ms with its ``_collections_abc``; ``__future__`` 0.1 ms). It forwards the request (environment + stdin) over the unix
socket of the warm :class:`cni.server.CNIServer` in calico-node and prints the
answer. When no server answers (no agent on this node, or a server in another
network/mount namespace), it does the work in-process with :func:`cni.plugin.run`,
so the executables stay standalone; that asks the server once more after its checks
(calico-node's start-up done), before the imports the work needs.

Environment: ``CALICO_CNI_SOCKET`` overrides the socket path
(default ``/var/run/calico/cni.sock``); ``none`` disables forwarding.
"""

import _socket
import posix
import sys

from cni import wire

DEFAULT_SOCKET = "/var/run/calico/cni.sock"
REPLY_TIMEOUT = 300.0


def ns_ids() -> tuple[int, int]:
    """The inodes of this process's network and mount namespaces (0 if unreadable)."""
    out = []
    for kind in ("net", "mnt"):
        try:
            out.append(posix.stat(f"/proc/self/ns/{kind}").st_ino)
        except OSError:
            out.append(0)
    return out[0], out[1]


def _error_json(code: int, msg: str) -> str:
    """A CNI error result (without importing json)."""
    text = "".join(c if c >= " " and c not in '"\\' else f"\\u{ord(c):04x}" for c in msg)
    return f'{{"cniVersion": "1.1.0", "code": {code}, "msg": "{text}"}}'


def forward(plugin: str, env: dict[bytes, bytes], stdin: bytes, sock_path: str) -> tuple[int, bytes, bytes] | None:
    """Send the request to the CNI server; None if no server takes it (caller runs in-process)."""
    try:
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            s.connect(sock_path)
        except OSError:
            return None
        net, mnt = ns_ids()
        request = wire.encode([plugin.encode(), b"%d" % net, b"%d" % mnt, stdin,
                               *(k + b"=" + v for k, v in env.items())])
        try:
            s.sendall(request)
            s.shutdown(_socket.SHUT_WR)
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
            return 1, _error_json(11, f"calico CNI server at {sock_path} did not answer: {exc}").encode(), b""
        try:
            reply = wire.decode(b"".join(chunks))
        except ValueError:
            reply = []
        if len(reply) != 4 or reply[0] != b"ok" or not reply[1].lstrip(b"-").isdigit():
            return None  # the server declined before doing anything (e.g. other netns)
        return int(reply[1]), reply[2], reply[3]
    finally:
        s.close()


def _main(plugin: str) -> int:
    stdin = sys.stdin.buffer.read() if sys.stdin is not None and not sys.stdin.isatty() else b""
    environb = dict(posix.environ)  # bytes -> bytes, as os.environb
    sock = environb.get(b"CALICO_CNI_SOCKET")
    sock_path = DEFAULT_SOCKET if sock is None else sock.decode("utf-8", "surrogateescape")
    answer = None
    if sock_path and sock_path != "none":
        answer = forward(plugin, environb, stdin, sock_path)
    if answer is None:
        import os

        from cni.plugin import run

        def again() -> tuple[int, bytes, bytes] | None:
            return forward(plugin, environb, stdin, sock_path)

        code, text_out, text_err = run(plugin, dict(os.environ), stdin,
                                       server=again if sock_path and sock_path != "none" else None)
        answer = code, text_out.encode("utf-8", "surrogateescape"), text_err.encode("utf-8", "surrogateescape")
    code, out, err = answer
    if out:
        sys.stdout.buffer.write(out if out.endswith(b"\n") else out + b"\n")
    if err:
        sys.stdout.flush()
        sys.stderr.buffer.write(err)
        sys.stderr.flush()
    sys.stdout.flush()
    return code


def main_calico() -> int:
    """The ``calico`` executable."""
    return _main("calico")


def main_ipam() -> int:
    """The ``calico-ipam`` executable."""
    return _main("calico-ipam")


if __name__ == "__main__":
    sys.exit(main_ipam() if sys.argv[0].rsplit("/", 1)[-1].endswith("ipam") else main_calico())
