"""The ``bpf(2)`` system call through ctypes: maps, programs, pins, object info.

Standard library only. Every call raises :class:`kernel.model.KernelError` naming what
failed (a program load's error carries the verifier's log). File descriptors returned
here are owned by the caller (``os.close``); they are opened O_CLOEXEC by the kernel.

* maps: :func:`map_create`, :func:`map_lookup`, :func:`map_update`, :func:`map_delete`,
  :func:`map_keys`, :func:`map_info`;
* programs: :func:`prog_load`, :func:`prog_info`, :func:`prog_test_run`;
* bpffs: :func:`obj_pin`, :func:`obj_get`, :func:`is_bpffs`, :func:`mount_bpffs`;
* ids: :func:`prog_ids`, :func:`prog_fd_by_id`, :func:`map_fd_by_id`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from dataclasses import dataclass

from kernel.model import KernelError

SYS_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351,
           "riscv64": 280}.get(platform.machine(), 321)

# commands
MAP_CREATE, MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY = 0, 1, 2, 3, 4
PROG_LOAD, OBJ_PIN, OBJ_GET = 5, 6, 7
PROG_TEST_RUN, PROG_GET_NEXT_ID, MAP_GET_NEXT_ID = 10, 11, 12
PROG_GET_FD_BY_ID, MAP_GET_FD_BY_ID, OBJ_GET_INFO_BY_FD = 13, 14, 15

# map types
MAP_TYPE_HASH, MAP_TYPE_ARRAY, MAP_TYPE_LRU_HASH = 1, 2, 9
# program types
PROG_TYPE_SCHED_CLS = 3
# map update flags
ANY, NOEXIST, EXIST = 0, 1, 2

BPF_FS_MAGIC = 0xCAFE4A11
OBJ_NAME_LEN = 16
ATTR_SIZE = 160  # big enough for every command used here (the kernel takes a prefix)
LOG_SIZE = 1 << 20

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _sys(cmd: int, attr: ctypes.Array, what: str, detail: str | None = None) -> int:
    ret = _libc.syscall(ctypes.c_long(SYS_BPF), ctypes.c_int(cmd), attr, ctypes.c_uint(ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise KernelError(err, what, detail)
    return ret


def _attr(*fields: tuple[str, int, int | bytes]) -> ctypes.Array:
    """A zeroed bpf_attr with (struct format, offset, value) fields written in."""
    buf = ctypes.create_string_buffer(ATTR_SIZE)
    for fmt, off, value in fields:
        struct.pack_into(fmt, buf, off, value)
    return buf


def _addr(buf: ctypes.Array | None) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


def _name(name: str) -> bytes:
    raw = name.encode()
    if len(raw) >= OBJ_NAME_LEN or not all(c.isalnum() or c in "_." for c in name):
        raise KernelError(errno.EINVAL, f"bpf object name {name!r}", "at most 15 of [A-Za-z0-9_.]")
    return raw


# -- maps ------------------------------------------------------------------------------------
def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, name: str,
               flags: int = 0) -> int:
    """A new map; its fd."""
    attr = _attr(("16s", 28, _name(name)))
    struct.pack_into("=IIIII", attr, 0, map_type, key_size, value_size, max_entries, flags)
    return _sys(MAP_CREATE, attr, f"bpf map {name}")


def _elem(cmd: int, fd: int, key: bytes, value: ctypes.Array | None, flags: int, what: str) -> int:
    kbuf = ctypes.create_string_buffer(key, len(key))
    attr = _attr(("=I", 0, fd), ("=Q", 8, _addr(kbuf)), ("=Q", 16, _addr(value)), ("=Q", 24, flags))
    return _sys(cmd, attr, what)


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value under ``key``, or None."""
    val = ctypes.create_string_buffer(value_size)
    try:
        _elem(MAP_LOOKUP_ELEM, fd, key, val, 0, f"bpf map fd {fd} lookup")
    except KernelError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return val.raw


def map_update(fd: int, key: bytes, value: bytes, flags: int = ANY) -> None:
    """Set ``key`` to ``value`` (flags: ANY, NOEXIST, EXIST)."""
    val = ctypes.create_string_buffer(value, len(value))
    _elem(MAP_UPDATE_ELEM, fd, key, val, flags, f"bpf map fd {fd} update {key.hex()}")


def map_delete(fd: int, key: bytes) -> bool:
    """Remove ``key``; False if it was not there."""
    try:
        _elem(MAP_DELETE_ELEM, fd, key, None, 0, f"bpf map fd {fd} delete {key.hex()}")
    except KernelError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def map_keys(fd: int, key_size: int) -> list[bytes]:
    """Every key of a hash map (an array map lists every index)."""
    keys: list[bytes] = []
    nxt = ctypes.create_string_buffer(key_size)
    cur: bytes | None = None
    while True:
        kbuf = ctypes.create_string_buffer(cur, key_size) if cur is not None else None
        attr = _attr(("=I", 0, fd), ("=Q", 8, _addr(kbuf)), ("=Q", 16, _addr(nxt)))
        try:
            _sys(MAP_GET_NEXT_KEY, attr, f"bpf map fd {fd} keys")
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                return keys
            raise
        cur = nxt.raw
        keys.append(cur)
        if len(keys) > 1 << 20:
            raise KernelError(errno.E2BIG, f"bpf map fd {fd} keys", "more than 2^20 keys")


@dataclass(frozen=True)
class MapInfo:
    """What the kernel reports for a map (bpf_map_info)."""

    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str


def map_info(fd: int) -> MapInfo:
    """The map behind ``fd``."""
    info = ctypes.create_string_buffer(88)
    attr = _attr(("=I", 0, fd), ("=I", 4, len(info)), ("=Q", 8, _addr(info)))
    _sys(OBJ_GET_INFO_BY_FD, attr, f"bpf map fd {fd} info")
    t, mid, ks, vs, me, fl = struct.unpack_from("=6I", info, 0)
    name = info.raw[24:40].split(b"\0", 1)[0].decode()
    return MapInfo(t, mid, ks, vs, me, fl, name)


# -- programs ----------------------------------------------------------------------------------
def prog_load(prog_type: int, code: bytes, name: str, license: str = "GPL") -> int:
    """Load (verify) a program; its fd. A refusal carries the verifier's log."""
    if len(code) % 8:
        raise KernelError(errno.EINVAL, f"bpf program {name}", "code is not a whole number of instructions")
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(license.encode())
    attr = _attr(("=Q", 8, _addr(insns)), ("=Q", 16, _addr(lic)), ("16s", 48, _name(name)))
    struct.pack_into("=II", attr, 0, prog_type, len(code) // 8)
    try:
        return _sys(PROG_LOAD, attr, f"bpf program {name}")
    except KernelError:
        pass
    log = ctypes.create_string_buffer(LOG_SIZE)  # load again with the verifier's log
    struct.pack_into("=IIQ", attr, 24, 1, LOG_SIZE, _addr(log))
    try:
        return _sys(PROG_LOAD, attr, f"bpf program {name}")
    except KernelError as exc:
        text = log.value.decode(errors="replace").strip()
        tail = "\n".join(text.splitlines()[-25:])
        raise KernelError(exc.errno, f"bpf program {name}", f"verifier: {tail}" if tail else None) from None


@dataclass(frozen=True)
class ProgInfo:
    """What the kernel reports for a program (bpf_prog_info)."""

    type: int
    id: int
    tag: bytes
    name: str
    map_ids: tuple[int, ...]


def prog_info(fd: int) -> ProgInfo:
    """The program behind ``fd`` (type, id, tag, name, the ids of the maps it uses)."""
    ids = (ctypes.c_uint32 * 64)()
    info = ctypes.create_string_buffer(232)
    struct.pack_into("=IQ", info, 52, 64, ctypes.addressof(ids))
    attr = _attr(("=I", 0, fd), ("=I", 4, len(info)), ("=Q", 8, _addr(info)))
    _sys(OBJ_GET_INFO_BY_FD, attr, f"bpf program fd {fd} info")
    ptype, pid = struct.unpack_from("=II", info, 0)
    tag = info.raw[8:16]
    nmaps = struct.unpack_from("=I", info, 52)[0]
    name = info.raw[64:80].split(b"\0", 1)[0].decode()
    return ProgInfo(ptype, pid, tag, name, tuple(ids[:min(nmaps, 64)]))


@dataclass(frozen=True)
class TestRun:
    """The result of running a program once on a packet (BPF_PROG_TEST_RUN)."""

    retval: int
    data: bytes


def skb_ctx(ifindex: int = 0, ingress_ifindex: int = 0, mark: int = 0) -> bytes:
    """A ``struct __sk_buff`` for :func:`prog_test_run`'s context: the device the packet is on
    (``ifindex``: test runs happen on that device, in the caller's netns) and where it came in."""
    ctx = bytearray(192)
    struct.pack_into("=I", ctx, 8, mark)
    struct.pack_into("=II", ctx, 36, ingress_ifindex, ifindex)
    return bytes(ctx)


def prog_test_run(fd: int, data: bytes, out_size: int = 4096, ctx: bytes | None = None) -> TestRun:
    """Run a loaded program once on ``data`` (an Ethernet frame for SCHED_CLS programs), in the
    calling thread's network namespace; ``ctx`` (:func:`skb_ctx`) places it on a device."""
    din = ctypes.create_string_buffer(data, len(data))
    dout = ctypes.create_string_buffer(out_size)
    cin = ctypes.create_string_buffer(ctx, len(ctx)) if ctx else None
    attr = _attr(("=Q", 16, _addr(din)), ("=Q", 24, _addr(dout)), ("=I", 32, 1))
    struct.pack_into("=IIII", attr, 0, fd, 0, len(data), out_size)
    if cin is not None:
        struct.pack_into("=IIQ", attr, 40, len(ctx), 0, _addr(cin))
    _sys(PROG_TEST_RUN, attr, f"bpf program fd {fd} test run")
    retval, _, out_len = struct.unpack_from("=III", attr, 4)
    return TestRun(retval, dout.raw[:out_len])


def prog_ids() -> list[int]:
    """The ids of every program loaded on the machine."""
    out: list[int] = []
    start = 0
    while True:
        attr = _attr(("=I", 0, start))
        try:
            _sys(PROG_GET_NEXT_ID, attr, "bpf program ids")
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                return out
            raise
        start = struct.unpack_from("=I", attr, 4)[0]
        out.append(start)


def prog_fd_by_id(prog_id: int) -> int | None:
    """An fd of program ``prog_id``, None if it no longer exists."""
    try:
        return _sys(PROG_GET_FD_BY_ID, _attr(("=I", 0, prog_id)), f"bpf program id {prog_id}")
    except KernelError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


def map_fd_by_id(map_id: int) -> int | None:
    """An fd of map ``map_id``, None if it no longer exists."""
    try:
        return _sys(MAP_GET_FD_BY_ID, _attr(("=I", 0, map_id)), f"bpf map id {map_id}")
    except KernelError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


# -- bpffs -----------------------------------------------------------------------------------
def obj_pin(fd: int, path: str) -> None:
    """Pin the map or program ``fd`` at ``path`` (on a bpffs)."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    _sys(OBJ_PIN, _attr(("=Q", 0, _addr(p)), ("=I", 8, fd)), f"bpf pin {path}")


def obj_get(path: str) -> int | None:
    """An fd of the object pinned at ``path``; None if nothing is pinned there."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    try:
        return _sys(OBJ_GET, _attr(("=Q", 0, _addr(p))), f"bpf pin {path}")
    except KernelError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


def is_bpffs(path: str) -> bool:
    """Whether ``path`` is (on) a mounted bpf filesystem."""
    buf = ctypes.create_string_buffer(120)  # struct statfs
    _libc.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    if _libc.statfs(os.fsencode(path), buf) != 0:
        return False
    return struct.unpack_from("=q", buf, 0)[0] & 0xFFFFFFFF == BPF_FS_MAGIC


def mount_bpffs(path: str) -> bool:
    """Mount a bpf filesystem at ``path`` (made if absent) unless ``path`` is on one already
    (a directory inside a bpffs is made there); True if mounted now."""
    if is_bpffs(path):
        return False
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.exists(path) and is_bpffs(parent):
        os.makedirs(path)
        return False
    os.makedirs(path, exist_ok=True)
    _libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    if _libc.mount(b"bpf", os.fsencode(path), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise KernelError(err, f"bpffs at {path}", "mount -t bpf failed")
    return True
