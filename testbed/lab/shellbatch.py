"""Run a list of commands in a Mininet node's shell without overflowing its tty line.

Mininet talks to each host's ``bash --noediting`` through a pty in canonical mode. The
kernel's line discipline holds at most 4095 bytes of one input line (N_TTY_BUF_SIZE);
a longer line is cut, its newline never reaches bash, and ``Node.cmd`` waits forever
for a prompt that never comes. A lab builds some commands from its topology (a
segment bridge enslaves one port per host on it: 101 hosts on one segment make an
8 KiB line), so a 100-node lab hung at "linking 101 host(s)" (issue 18).

:func:`chunks` splits ``c1 && c2 && ...`` into lines under the limit, each ending in
``&& echo <marker>``; :func:`run` sends them one after the other and stops at the
first line whose marker is missing, so the commands still run in order and stop at
the first failure, as one ``&&`` chain would. Pure logic apart from the injected
``cmd`` callable (a Mininet node's ``cmd``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["LINE_LIMIT", "chunks", "run"]

#: bytes of one shell line we send, newline included (the tty keeps 4095)
LINE_LIMIT = 4000


def chunks(cmds: Sequence[str], marker: str, limit: int = LINE_LIMIT) -> list[str]:
    """``cmds`` as ``&&`` chains ending in ``&& echo <marker>``, each line (with its newline)
    at most ``limit`` bytes. ValueError names a single command too long for one line."""
    tail = f" && echo {marker}"
    room = limit - len(tail.encode()) - 1
    lines: list[str] = []
    cur: list[str] = []
    size = 0
    for c in cmds:
        n = len(c.encode())
        if n > room:
            raise ValueError(f"shell command of {n} bytes is longer than a tty line allows "
                             f"({room} with the marker): {c[:80]}...")
        add = n + (len(b" && ") if cur else 0)
        if cur and size + add > room:
            lines.append(" && ".join(cur) + tail)
            cur, size, add = [], 0, n
        cur.append(c)
        size += add
    if cur or not lines:
        lines.append(" && ".join(cur) + tail if cur else f"echo {marker}")
    return lines


def run(cmd: Callable[[str], str], cmds: Sequence[str], marker: str, what: str,
        limit: int = LINE_LIMIT) -> str:
    """Run ``cmds`` in order through ``cmd`` (a node shell), line by line as :func:`chunks`
    splits them; RuntimeError naming ``what`` and the shell's output at the first line
    that did not finish. Returns the output of all lines."""
    out = []
    for line in chunks(cmds, marker, limit):
        text = cmd(line)
        out.append(text)
        if marker not in text:
            raise RuntimeError(f"{what}: {text.strip()}")
    return "".join(out)
