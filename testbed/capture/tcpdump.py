"""One tcpdump process on one interface of one netns, and BPF filter checks."""

from __future__ import annotations

import re
import shutil
import signal
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from testbed.capture.errors import CaptureError
from testbed.capture.links import netns_path
from testbed.capture.pcapfile import check_pcap


def check_filter(bpf: str, netns: str | None = None) -> None:
    """Compile a BPF filter with tcpdump against an empty Ethernet savefile (no interface
    is opened); raise :class:`CaptureError` if it is invalid. ``netns`` is unused (kept
    for callers that name where the filter will run)."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".pcap") as empty:
        empty.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        empty.flush()
        cmd = [shutil.which("tcpdump") or "/usr/bin/tcpdump", "-d", "-r", empty.name, bpf]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    if res.returncode != 0:
        lines = [x for x in res.stderr.strip().splitlines()
                 if x.strip() and "reading from file" not in x]
        raise CaptureError(f"bad capture filter {bpf!r}: {' '.join(lines)}")


@dataclass
class IfaceResult:
    """What one interface's tcpdump produced."""

    node: str
    iface: str
    path: str
    packets: int = 0
    dropped: int | None = None  # "packets dropped by kernel"
    error: str | None = None  # set if the file is incomplete or tcpdump failed
    exited_early: bool = False  # tcpdump ended before stop (e.g. the interface was deleted)


class Tcpdump:
    """One tcpdump process on one interface of one netns."""

    def __init__(self, netns: str | None, node: str, iface: str, path: Path,
                 bpf: str | None, snaplen: int):
        self.netns, self.node, self.iface, self.path = netns, node, iface, path
        tcpdump = shutil.which("tcpdump") or "/usr/bin/tcpdump"
        cmd = [tcpdump, "-i", iface, "-nn", "-U", "--immediate-mode", "-Z", "root",
               "-s", str(snaplen), "-w", str(path)]
        if bpf:
            cmd.append(bpf)
        if netns is not None:
            cmd = ["nsenter", f"--net={netns_path(netns)}", "--", *cmd]  # nsenter execs: same PID
        self.cmd = cmd
        self.listening = threading.Event()
        self.stderr_lines: list[str] = []
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read_stderr, daemon=True,
                                        name=f"tcpdump-{node}-{iface}")
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip("\n"))
            if "listening on" in line:
                self.listening.set()
        self.listening.set()  # exited: wake up waiters; they look at returncode

    def wait_listening(self, timeout: float) -> None:
        if not self.listening.wait(timeout):
            self.kill()
            raise CaptureError(f"tcpdump on {self.node}/{self.iface} did not start listening "
                               f"within {timeout:.1f}s: {self.stderr_text()}")
        time.sleep(0)  # let the reader record the exit state
        if self.proc.poll() is not None and not any("listening on" in x for x in self.stderr_lines):
            self._reader.join(1)
            raise CaptureError(f"tcpdump on {self.node}/{self.iface} failed (exit "
                               f"{self.proc.returncode}): {self.stderr_text()}")

    def stderr_text(self) -> str:
        lines = [x for x in self.stderr_lines if x.strip() and not x.startswith("Running as")]
        return " | ".join(lines) or "(no output)"

    def interrupt(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass

    def finish(self, timeout: float, early: bool) -> IfaceResult:
        res = IfaceResult(self.node, self.iface, str(self.path), exited_early=early)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            res.error = f"tcpdump did not exit within {timeout:.1f}s of SIGINT; killed"
        self._reader.join(2)
        for line in self.stderr_lines:
            m = re.match(r"(\d+) packets? dropped by kernel", line)
            if m:
                res.dropped = int(m.group(1))
        try:
            res.packets = check_pcap(self.path)
        except CaptureError as exc:
            res.error = (res.error + "; " if res.error else "") + str(exc)
        if res.error is None and self.proc.returncode not in (0, None) and not early:
            res.error = f"tcpdump exited {self.proc.returncode}: {self.stderr_text()}"
        return res
