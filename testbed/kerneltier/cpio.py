"""A newc ("070701") cpio archive writer, the format the kernel unpacks as initramfs.

Pure logic: entries in, bytes out, deterministic (fixed mtime, uid and gid 0, inode numbers
in order), so an initramfs built from the same inputs is byte-identical.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member: a directory, a regular file or a symlink (``data`` is its target)."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)

    @classmethod
    def dir(cls, name: str, perm: int = 0o755) -> Entry:
        """A directory."""
        return cls(name, stat.S_IFDIR | perm)

    @classmethod
    def file(cls, name: str, data: bytes, perm: int = 0o644) -> Entry:
        """A regular file with ``data``."""
        return cls(name, stat.S_IFREG | perm, data)

    @classmethod
    def symlink(cls, name: str, target: str) -> Entry:
        """A symbolic link pointing at ``target``."""
        return cls(name, stat.S_IFLNK | 0o777, target.encode())

    @classmethod
    def chardev(cls, name: str, major: int, minor: int, perm: int = 0o600) -> Entry:
        """A character device node (e.g. ``dev/console`` 5:1, needed before /init runs)."""
        return cls(name, stat.S_IFCHR | perm, b"", (major, minor))


def _pad4(n: int) -> bytes:
    return b"\0" * ((4 - n % 4) % 4)


def _header(
    ino: int, mode: int, nlink: int, size: int, namesize: int, rdev: tuple[int, int] = (0, 0)
) -> bytes:
    fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], namesize, 0]
    return b"070701" + b"".join(f"{v:08X}".encode() for v in fields)


def archive(entries: list[Entry]) -> bytes:
    """The newc archive of ``entries`` (in the order given) followed by the trailer.

    Names must be relative (no leading ``/``) and unique; parents must come before children.
    """
    seen: set[str] = set()
    out = bytearray()
    for ino, entry in enumerate(entries, start=1):
        name = entry.name
        if not name or name.startswith("/") or name in seen:
            raise ValueError(f"cpio entry name {name!r} must be relative and unique")
        parent = name.rpartition("/")[0]
        if parent and parent not in seen:
            raise ValueError(f"cpio entry {name!r} comes before its directory {parent!r}")
        seen.add(name)
        encoded = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        head = _header(ino, entry.mode, nlink, len(entry.data), len(encoded), entry.rdev)
        out += head + encoded + _pad4(len(head) + len(encoded))
        out += entry.data + _pad4(len(entry.data))
    encoded = TRAILER.encode() + b"\0"
    head = _header(0, 0, 1, 0, len(encoded))
    out += head + encoded + _pad4(len(head) + len(encoded))
    return bytes(out)


def parse(data: bytes) -> list[Entry]:
    """Read a newc archive back into entries (trailer excluded); for tests and debugging."""
    entries: list[Entry] = []
    pos = 0
    while True:
        if data[pos : pos + 6] != b"070701":
            raise ValueError(f"bad cpio magic at offset {pos}")
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev, namesize = fields[1], fields[6], (fields[9], fields[10]), fields[11]
        name_start = pos + 110
        name = data[name_start : name_start + namesize - 1].decode()
        pos = name_start + namesize
        pos += (4 - pos % 4) % 4
        body = data[pos : pos + size]
        pos += size
        pos += (4 - pos % 4) % 4
        if name == TRAILER:
            return entries
        entries.append(Entry(name, mode, bytes(body), rdev))
