"""The framing between the thin CNI executable and the warm CNI server (no imports).

The executable runs once per CNI call under ``python3 -I -S``; importing ``json``
(which pulls in ``re`` and ``enum``) and ``socket`` (``enum``, ``selectors``) cost it
~10 ms per call, more than the whole interpreter start. So the request and the reply
are lists of byte strings, each framed as a netstring (``<decimal length>:<bytes>,``),
and the executable talks through the built-in ``_socket`` module.

Request: ``[b"calico" | b"calico-ipam", net-ns inode, mnt-ns inode, stdin, b"K=V", ...]``.
Reply: ``[b"ok", exit code, stdout, stderr]`` or ``[b"refused", reason]``.

No ``from __future__ import annotations`` here or in :mod:`cni.main`: importing
``__future__`` costs the executable 0.1 ms, and their annotations evaluate as they are.
"""


def encode(fields: list[bytes]) -> bytes:
    """The netstrings of ``fields``, concatenated."""
    return b"".join(b"%d:%s," % (len(f), f) for f in fields)


def decode(data: bytes) -> list[bytes]:
    """The fields of :func:`encode`'s output; ValueError naming the offset if it is malformed."""
    out, pos, end = [], 0, len(data)
    while pos < end:
        colon = data.find(b":", pos, pos + 12)
        if colon < 0 or not data[pos:colon].isdigit():
            raise ValueError(f"malformed field length at byte {pos}")
        start = colon + 1
        stop = start + int(data[pos:colon])
        if stop >= end or data[stop:stop + 1] != b",":
            raise ValueError(f"field at byte {pos} is truncated or not terminated")
        out.append(data[start:stop])
        pos = stop + 1
    return out
