"""Can this kernel run the tc-BPF tunl0? (probed once per process)."""

from __future__ import annotations

import errno
import os

from agent.felix import ipip_bpf as P
from kernel import KernelError, bpf

_support: dict[str, str | None] = {}


def unsupported_reason() -> str | None:
    """Why this kernel cannot run the tc-BPF tunnel (None: it can). Probed once per process
    by verifying both programs against scratch maps and running bpf_fib_lookup with the
    flags the programs use (BPF_FIB_LOOKUP_SRC needs Linux 6.7+)."""
    if "reason" in _support:
        return _support["reason"]
    fds: list[int] = []
    reason: str | None = None
    try:
        for name, (mtype, ks, vs, n, fl) in P.MAP_SPECS.items():
            fds.append(bpf.map_create(mtype, ks, vs, min(n, 16), name, fl))
        cfg = P.ProgConfig(1, 1, bytes(6), bytes(6), *fds)
        for code, name in ((P.encap_program(cfg), P.PROG_ENCAP), (P.decap_program(cfg), P.PROG_DECAP)):
            fds.append(bpf.prog_load(bpf.PROG_TYPE_SCHED_CLS, code, name))
        probe = bpf.prog_load(bpf.PROG_TYPE_SCHED_CLS, P.fib_flags_probe(), "cali_ipip_prb")
        fds.append(probe)
        ret = bpf.prog_test_run(probe, bytes(14 + 20)).retval
        if ret == (-errno.EINVAL) & 0xFFFFFFFF:
            reason = "bpf_fib_lookup has no BPF_FIB_LOOKUP_SRC (Linux 6.7+ needed)"
    except KernelError as exc:
        reason = f"{exc}"
    except OSError as exc:
        reason = f"bpf(2) unavailable: {exc}"
    finally:
        for fd in fds:
            os.close(fd)
    _support["reason"] = reason
    return reason
