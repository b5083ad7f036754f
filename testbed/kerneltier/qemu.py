"""Boot the guest kernel under qemu, run one shell script inside it, collect the results share.

The script runs as root in a chroot of the host root (read-only over 9p) with
``CALICOLAB_RESULTS`` (``/tmp/results`` in the guest) mapped to the host directory
``results``.  qemu's exit status says nothing (it exits 0 whatever the guest did): the
verdict is what the guest wrote to the results share (``guest-exit``, junit.xml, pcaps).

Usage::

    from testbed.kerneltier import qemu
    run = qemu.boot("cd /work/main && python -c 'print(1)'", results_dir, timeout=120)
    run.check()            # raises GuestError with the console tail if the guest did not finish
    run.exit_code, run.boot_seconds, run.elapsed
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from testbed.kerneltier import fetch as fetch_mod
from testbed.kerneltier import initramfs
from testbed.kerneltier.fetch import GuestKernel

QEMU = "qemu-system-x86_64"
SCRIPT_NAME = "run.sh"


class GuestError(RuntimeError):
    """The guest did not boot, did not finish, or left no result."""


@dataclass
class GuestRun:
    """What one boot produced."""

    results: Path
    console: str
    elapsed: float
    timed_out: bool
    qemu_returncode: int | None
    exit_code: int | None
    uptime_start: float | None
    uptime_end: float | None
    command: list[str]

    @property
    def boot_seconds(self) -> float | None:
        """Guest uptime when the script started (kernel + /init + mounts)."""
        return self.uptime_start

    @property
    def script_seconds(self) -> float | None:
        """Guest time the script took."""
        if self.uptime_start is None or self.uptime_end is None:
            return None
        return self.uptime_end - self.uptime_start

    def console_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the serial console."""
        return "\n".join(self.console.splitlines()[-lines:])

    def check(self) -> GuestRun:
        """Raise :class:`GuestError` unless the guest ran the script to its end."""
        if self.timed_out:
            raise GuestError(
                f"guest did not finish within the wall-clock limit ({self.elapsed:.0f}s); "
                f"console tail:\n{self.console_tail()}"
            )
        if self.exit_code is None:
            raise GuestError(
                f"guest left no guest-exit in {self.results} (qemu exit {self.qemu_returncode}); "
                f"console tail:\n{self.console_tail()}"
            )
        return self


def accel() -> str:
    """``kvm`` only where the CPU advertises vmx/svm and /dev/kvm exists, else ``tcg``.

    qemu's own fallback is not trusted: on some hosts /dev/kvm opens and the guest then breaks.
    """
    if os.environ.get("CALICOLAB_QEMU_ACCEL"):
        return os.environ["CALICOLAB_QEMU_ACCEL"]
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "tcg"
    has_virt = any(
        line.startswith("flags") and ({"vmx", "svm"} & set(line.split()))
        for line in flags.splitlines()
    )
    return "kvm" if has_virt and os.path.exists("/dev/kvm") else "tcg"


def kernel_cmdline(script: str) -> str:
    """The guest kernel's command line carrying ``script`` (base64) for /init to run."""
    encoded = base64.b64encode(script.encode()).decode()
    line = f"console=ttyS0 panic=-1 quiet loglevel=3 calicolab.cmd={encoded}"
    if len(line) > 2000:
        raise ValueError(f"guest command too long for the kernel command line ({len(line)} chars)")
    return line


def qemu_command(
    kernel_image: Path,
    initrd: Path,
    results: Path,
    script: str,
    *,
    memory_mb: int = 1024,
    console_file: Path | None = None,
) -> list[str]:
    """The qemu argv: TCG (see :func:`accel`), no network, host root read-only over 9p."""
    console = console_file or results / "console.log"
    return [
        QEMU,
        "-accel", accel(),
        "-nodefaults", "-no-user-config", "-display", "none",
        "-monitor", "none",
        "-serial", f"file:{console}",
        "-net", "none",
        "-m", str(memory_mb),
        "-smp", "1",
        "-kernel", str(kernel_image),
        "-initrd", str(initrd),
        "-no-reboot",
        "-virtfs",
        "local,path=/,mount_tag=host0,security_model=passthrough,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={results},mount_tag=results,security_model=passthrough",
        "-append", kernel_cmdline(script),
    ]  # fmt: skip


def _read_float(path: Path) -> float | None:
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        return None


def boot(
    script: str,
    results: Path,
    *,
    timeout: float = 150.0,
    kernel: GuestKernel | None = None,
    memory_mb: int = 1024,
) -> GuestRun:
    """Boot the guest once, run ``script`` (sh) in it, return what it left in ``results``.

    ``timeout`` is the wall-clock limit of the whole boot: past it qemu (started here, ended by
    its PID) is killed and the run is marked ``timed_out``.
    """
    results = Path(results).resolve()
    results.mkdir(parents=True, exist_ok=True)
    for stale in ("guest-exit", "uptime-start", "uptime-end", "console.log"):
        (results / stale).unlink(missing_ok=True)
    kernel = kernel or fetch_mod.fetch()
    initrd = initramfs.build(kernel)
    (results / SCRIPT_NAME).write_text(script if script.endswith("\n") else script + "\n")
    runner = f"sh {initramfs.RESULTS_IN_GUEST}/{SCRIPT_NAME}"
    cmd = qemu_command(kernel.vmlinux, initrd, results, runner, memory_mb=memory_mb)
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        out, _ = proc.communicate()
    elapsed = time.monotonic() - start
    console_path = results / "console.log"
    console = console_path.read_text(errors="replace") if console_path.exists() else ""
    if out:
        console += "\n[qemu] " + out.decode(errors="replace")
    exit_text = (results / "guest-exit").read_text().strip() if (
        results / "guest-exit"
    ).exists() else ""
    return GuestRun(
        results=results,
        console=console,
        elapsed=elapsed,
        timed_out=timed_out,
        qemu_returncode=None if timed_out else proc.returncode,
        exit_code=int(exit_text) if exit_text.lstrip("-").isdigit() else None,
        uptime_start=_read_float(results / "uptime-start"),
        uptime_end=_read_float(results / "uptime-end"),
        command=cmd,
    )
