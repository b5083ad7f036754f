"""mount(2) called directly (no ``mount`` process): the lab's node private directories
(testbed.lab.privatedirs) and the zygote's pod mount namespaces (testbed.lab.zygote)."""

from __future__ import annotations

import ctypes
import os

MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 1 << 19

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _enc(s: str | None) -> bytes | None:
    return s.encode() if s else None


def mount(source: str | None, target: str, fstype: str | None = None, flags: int = 0, data: str | None = None,
          what: str = "") -> None:
    """mount(2) in the calling process' mount namespace; OSError (errno, ``what``: reason) on failure."""
    if _libc.mount(_enc(source), target.encode(), _enc(fstype), flags, _enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}" if what else os.strerror(err))
