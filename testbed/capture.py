"""Packet captures with tcpdump inside network namespaces, one pcap per interface.

A :class:`Capture` watches one network namespace (a lab node ``L-<node>``, or any
netns made by a test) and runs ``tcpdump -i IFACE -nn -U --immediate-mode -w FILE``
for every interface whose name matches the globs (``"cali*,tunl0,eth0"``),
writing ``<node>-<iface>.pcap`` in a run directory. Interfaces that appear
(or come up) while capturing are picked up as well: a netlink socket opened in
the namespace reports every link change, and a periodic re-dump backs it up.

``start()`` returns only when every tcpdump has printed "listening on"
(the capture socket is bound); ``stop()`` lets the files settle, stops each
tcpdump with SIGINT, waits for it, and checks that each file is a complete
pcap, so nothing sent between start and stop is lost.

:class:`CaptureGroup` does the same over several nodes (``pcaps/<lab>/<run>/``),
:func:`capture_fixture` makes a pytest fixture that captures around a test and
keeps the files of a failed test, and :func:`start_lab_capture` /
:func:`stop_lab_capture` back ``calicolab capture start|stop`` with a detached
capture process (``python -m testbed.capture``).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fnmatch
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from testbed.poll import WaitTimeout, wait_for

DEFAULT_IFACES = "cali*,tunl0,eth0"
REPO_ROOT = Path(__file__).resolve().parents[1]
STATE_ROOT = Path("/run/calicolab")

_CLONE_NEWNET = 0x40000000
_RTM_NEWLINK, _RTM_DELLINK, _RTM_GETLINK = 16, 17, 18
_NLMSG_DONE, _NLMSG_ERROR = 3, 2
_IFF_UP = 0x1
_IFLA_IFNAME = 3
_RESYNC_S = 1.0  # periodic re-dump of the links, in case a netlink event was lost
_PCAP_MAGICS = {0xA1B2C3D4: ("<", False), 0xD4C3B2A1: (">", False),
                0xA1B23C4D: ("<", True), 0x4D3CB2A1: (">", True)}


class CaptureError(RuntimeError):
    """A capture could not be started or did not end with complete files."""


def pcaps_root() -> Path:
    """Where runs land: ``$CALICOLAB_PCAPS`` or ``<repo>/pcaps``."""
    return Path(os.environ.get("CALICOLAB_PCAPS") or REPO_ROOT / "pcaps")


def parse_globs(ifaces: str | Iterable[str]) -> list[str]:
    """``"cali*,tunl0, eth0"`` (or a list) -> ``["cali*", "tunl0", "eth0"]``; rejects empty."""
    items = ifaces.split(",") if isinstance(ifaces, str) else list(ifaces)
    globs = [g.strip() for g in items if g and g.strip()]
    if not globs:
        raise ValueError(f"no interface glob given (got {ifaces!r}); example: 'cali*,tunl0,eth0'")
    for g in globs:
        if "/" in g or " " in g:
            raise ValueError(f"bad interface glob {g!r}: names cannot contain '/' or spaces")
    return globs


def matches(name: str, globs: Sequence[str]) -> bool:
    """Whether interface ``name`` matches any glob."""
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


def check_pcap(path: str | os.PathLike[str]) -> int:
    """Check that ``path`` is a complete classic pcap file; return its packet count.

    Raises :class:`CaptureError` naming the problem: missing, empty, bad magic,
    or a last record cut short (tcpdump killed mid-write).
    """
    p = Path(path)
    if not p.exists():
        raise CaptureError(f"{p}: no capture file was written")
    data = p.read_bytes()
    if len(data) < 24:
        raise CaptureError(f"{p}: {len(data)} bytes, shorter than a pcap header (24): incomplete")
    magic = struct.unpack("<I", data[:4])[0]
    if magic not in _PCAP_MAGICS:
        raise CaptureError(f"{p}: not a pcap file (magic {magic:#010x})")
    order, _nano = _PCAP_MAGICS[magic]
    off, count = 24, 0
    while off < len(data):
        if off + 16 > len(data):
            raise CaptureError(f"{p}: truncated record header after {count} packet(s)")
        incl = struct.unpack(order + "I", data[off + 8:off + 12])[0]
        if off + 16 + incl > len(data):
            raise CaptureError(f"{p}: packet {count + 1} cut short ({len(data) - off - 16} of "
                               f"{incl} bytes): incomplete file")
        off += 16 + incl
        count += 1
    return count


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


# ----------------------------------------------------------------------------- netlink


def _libc() -> Any:
    return ctypes.CDLL("libc.so.6", use_errno=True)


def _netns_path(netns: str | None) -> str | None:
    if netns is None:
        return None
    if "/" in netns:
        return netns
    return f"/run/netns/{netns}"


def _link_socket(netns: str | None) -> socket.socket:
    """A NETLINK_ROUTE socket subscribed to link events, created inside ``netns``.

    The network namespace is switched for the calling thread only, and restored.
    """
    path = _netns_path(netns)
    if path is None:
        return _bind_link_socket()
    libc = _libc()
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        os.close(orig)
        raise CaptureError(f"network namespace {netns!r} does not exist ({path})") from None
    try:
        if libc.setns(target, _CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise CaptureError(f"cannot enter network namespace {netns!r}: {os.strerror(e)}")
        try:
            return _bind_link_socket()
        finally:
            if libc.setns(orig, _CLONE_NEWNET) != 0:  # pragma: no cover - would be fatal
                raise CaptureError("cannot return to the original network namespace")
    finally:
        os.close(target)
        os.close(orig)


def _bind_link_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((0, 1))  # RTMGRP_LINK
    return sock


def _request_dump(sock: socket.socket, seq: int) -> None:
    hdr = struct.pack("=IHHII", 16 + 16, _RTM_GETLINK, 0x1 | 0x300, seq, 0)
    sock.send(hdr + struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0))


def parse_link_messages(data: bytes) -> Iterator[tuple[str, int, str | None, bool]]:
    """Decode rtnetlink link messages: yields ``(event, ifindex, name, up)``.

    ``event`` is "new", "del" or "done" (end of a dump). Pure function, unit-testable.
    """
    off = 0
    while off + 16 <= len(data):
        length, mtype, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
        if length < 16:
            break
        if mtype == _NLMSG_DONE:
            yield ("done", 0, None, False)
        elif mtype in (_RTM_NEWLINK, _RTM_DELLINK) and length >= 32:
            _fam, _type, index, flags, _chg = struct.unpack_from("=BxHiII", data, off + 16)
            name = None
            a = off + 32
            end = off + length
            while a + 4 <= end:
                alen, atype = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if atype == _IFLA_IFNAME:
                    name = data[a + 4:a + alen].split(b"\0", 1)[0].decode()
                a += (alen + 3) & ~3
            yield ("new" if mtype == _RTM_NEWLINK else "del", index, name, bool(flags & _IFF_UP))
        off += (length + 3) & ~3


# ----------------------------------------------------------------------------- one tcpdump


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


class _Tcpdump:
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
            cmd = ["nsenter", f"--net={_netns_path(netns)}", "--", *cmd]  # nsenter execs: same PID
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


# ----------------------------------------------------------------------------- one netns


class Capture:
    """Captures on every interface of one netns whose name matches ``ifaces``.

    ``node`` names the files (``<node>-<iface>.pcap``); it defaults to the netns
    name (:meth:`CaptureGroup.for_lab` passes the node name, without the lab
    prefix). Use as a context manager or call start/stop.
    """

    def __init__(self, netns: str | None, run_dir: str | os.PathLike[str], *,
                 node: str | None = None, ifaces: str | Iterable[str] = DEFAULT_IFACES,
                 bpf: str | None = None, snaplen: int = 262144,
                 listen_timeout: float = 10.0):
        if netns is None and node is None:
            raise ValueError("a capture in the root namespace needs node= for its file names")
        self.netns = netns
        self.node = node or str(netns)
        if "/" in self.node or not self.node:
            raise ValueError(f"bad node label {self.node!r} for capture file names")
        self.run_dir = Path(run_dir)
        self.globs = parse_globs(ifaces)
        self.bpf = bpf
        self.snaplen = snaplen
        self.listen_timeout = listen_timeout
        self._lock = threading.Lock()
        self._dumps: dict[str, _Tcpdump] = {}  # iface -> running tcpdump
        self._done: list[tuple[_Tcpdump, bool]] = []  # finished/replaced tcpdumps
        self._errors: list[str] = []
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._links: dict[int, tuple[str, bool]] = {}  # ifindex -> (name, up)
        self._started = False

    # -- public ---------------------------------------------------------------

    def start(self) -> Capture:
        """Start tcpdump on the matching interfaces that are up; return once all listen."""
        return self._await_listening(self._launch())

    def _launch(self) -> list[_Tcpdump]:
        """Phase 1 of start: check input, list links, spawn tcpdumps (not yet listening)."""
        if self._started:
            raise CaptureError(f"capture on {self.node} already started")
        if not (shutil.which("tcpdump") or os.path.exists("/usr/bin/tcpdump")):
            raise CaptureError("tcpdump is not installed")
        self._sock = _link_socket(self.netns)  # also checks the netns exists
        if self.bpf:
            try:
                check_filter(self.bpf, self.netns)
            except CaptureError:
                self._sock.close()
                self._sock = None
                raise
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._started = True
        self._stop.clear()
        self._thread = None
        try:
            self._dump_links(wait=True)
            return self._launch_matching()
        except BaseException:
            self._abort()
            raise

    def _await_listening(self, pending: list[_Tcpdump]) -> Capture:
        """Phase 2 of start: wait until each tcpdump listens, then watch for new links."""
        try:
            for d in pending:
                d.wait_listening(self.listen_timeout)
        except BaseException:
            self._abort()
            raise
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name=f"capture-watch-{self.node}")
        self._thread.start()
        return self

    def listening(self) -> list[str]:
        """Interfaces whose tcpdump is listening now."""
        with self._lock:
            return sorted(i for i, d in self._dumps.items()
                          if d.listening.is_set() and d.proc.poll() is None)

    def wait_for_iface(self, glob: str, timeout: float = 5.0) -> list[str]:
        """Wait until a tcpdump listens on an interface matching ``glob``; return the matches."""
        return wait_for(lambda: [i for i in self.listening() if fnmatch.fnmatchcase(i, glob)],
                        timeout=timeout, what=f"a capture listening on {glob} in {self.node}")

    @property
    def files(self) -> dict[str, Path]:
        """Interface -> pcap path, for every interface captured so far."""
        with self._lock:
            out = {d.iface: d.path for d, _ in self._done}
            out.update({i: d.path for i, d in self._dumps.items()})
        return out

    def stop(self, timeout: float = 5.0, settle: float = 0.05) -> list[IfaceResult]:
        """Stop cleanly: let files settle, SIGINT every tcpdump, wait, check each file."""
        dumps = self._halt(timeout)
        _settle([d.path for d, _ in dumps], settle)
        return self._finish(dumps, timeout)

    def _halt(self, timeout: float) -> list[tuple[_Tcpdump, bool]]:
        """Phase 1 of stop: no new captures; the running tcpdumps, and whether each already
        ended on its own (e.g. its interface was deleted)."""
        if not self._started:
            return []
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            dumps = list(self._dumps.values())
            self._dumps.clear()
        return [(d, d.proc.poll() is not None) for d in dumps]

    def _finish(self, dumps: list[tuple[_Tcpdump, bool]], timeout: float) -> list[IfaceResult]:
        """Phase 2 of stop: SIGINT, wait, check files."""
        if not self._started:
            return []
        for d, _ in dumps:
            d.interrupt()
        results = [d.finish(timeout, e) for d, e in self._done]
        results += [d.finish(timeout, e) for d, e in dumps]
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for msg in self._errors:
            results.append(IfaceResult(self.node, "?", "", error=msg))
        self._done, self._errors = [], []
        self._started = False
        return results

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------

    def _abort(self) -> None:
        """Kill everything this capture started (start failed half-way)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.listen_timeout + 1)
        with self._lock:
            dumps = list(self._dumps.values())
            self._dumps.clear()
        for d in dumps:
            d.kill()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._started = False

    def _dump_links(self, wait: bool) -> None:
        assert self._sock is not None
        seq = int(time.monotonic() * 1000) & 0x7FFFFFFF
        _request_dump(self._sock, seq)
        if not wait:
            return
        deadline = time.monotonic() + 5
        fresh: dict[int, tuple[str, bool]] = {}
        while time.monotonic() < deadline:
            r, _, _ = select.select([self._sock], [], [], 0.5)
            if not r:
                continue
            data = self._sock.recv(1 << 20)
            done = False
            for ev, idx, name, up in parse_link_messages(data):
                if ev == "done":
                    done = True
                elif ev == "new" and name:
                    fresh[idx] = (name, up)
            if done:
                self._links = fresh
                return
        raise CaptureError(f"no answer to the link dump in {self.node}")

    def _launch_matching(self) -> list[_Tcpdump]:
        """Start tcpdump for matching, up links without a running capture."""
        started = []
        for name, up in sorted(self._links.values()):
            if not up or not matches(name, self.globs):
                continue
            with self._lock:
                if self._stop.is_set():
                    break
                cur = self._dumps.get(name)
                if cur is not None and cur.proc.poll() is None:
                    continue
                if cur is not None:  # it ended (link deleted and re-created): new file
                    self._done.append((cur, True))
                    del self._dumps[name]
                path = self._file_for(name)
                try:
                    d = _Tcpdump(self.netns, self.node, name, path, self.bpf, self.snaplen)
                except OSError as exc:
                    raise CaptureError(f"cannot run tcpdump for {self.node}/{name}: {exc}") from exc
                self._dumps[name] = d
            started.append(d)
        return started

    def _file_for(self, iface: str) -> Path:
        used = {str(d.path) for d, _ in self._done} | {str(d.path) for d in self._dumps.values()}
        path = self.run_dir / f"{self.node}-{iface}.pcap"
        n = 2
        while str(path) in used:
            path = self.run_dir / f"{self.node}-{iface}.{n}.pcap"
            n += 1
        return path

    def _watch(self) -> None:
        assert self._sock is not None
        last_resync = time.monotonic()
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([self._sock], [], [], 0.1)
                if r:
                    data = self._sock.recv(1 << 20)
                    for ev, idx, name, up in parse_link_messages(data):
                        if ev == "new" and name:
                            self._links[idx] = (name, up)
                        elif ev == "del":
                            self._links.pop(idx, None)
                if time.monotonic() - last_resync > _RESYNC_S:
                    last_resync = time.monotonic()
                    _request_dump(self._sock, 1)
                if self._stop.is_set():
                    break
                for d in self._launch_matching():
                    try:
                        d.wait_listening(self.listen_timeout)
                    except CaptureError as exc:
                        self._errors.append(str(exc))
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # events lost: re-dump
                    _request_dump(self._sock, 2)
                    continue
                if self._stop.is_set():
                    break
                self._errors.append(f"link watcher in {self.node} failed: {exc}")
                return
            except CaptureError as exc:
                self._errors.append(str(exc))


def _settle(paths: Sequence[Path], quiet: float, limit: float = 0.3) -> None:
    """Wait until no capture file grew for ``quiet`` seconds, at most ``limit`` seconds.

    With --immediate-mode a packet reaches the file within a millisecond or so;
    this gives the last packets of a test time to be written before SIGINT.
    Busy interfaces (etcd, BGP keepalives) never go quiet: hence the limit.
    """
    if not paths or quiet <= 0:
        return

    def sizes() -> tuple[int, ...]:
        return tuple(p.stat().st_size if p.exists() else -1 for p in paths)

    deadline = time.monotonic() + limit
    last, since = sizes(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(quiet / 4)
        now = sizes()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


# ----------------------------------------------------------------------------- several nodes


def new_run_name(prefix: str = "run") -> str:
    """A run directory name: ``<prefix>-YYYYmmdd-HHMMSS-<4 hex>``."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"


@dataclass
class RunResult:
    """The outcome of a capture run: its directory and one entry per interface."""

    run_dir: str
    files: list[IfaceResult] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        """Problems: incomplete files, failed tcpdumps, kernel drops."""
        out = [f"{r.node}/{r.iface}: {r.error}" for r in self.files if r.error]
        out += [f"{r.node}/{r.iface}: {r.dropped} packet(s) dropped by kernel"
                for r in self.files if r.dropped]
        return out

    def paths(self) -> list[Path]:
        """Paths of the files written."""
        return [Path(r.path) for r in self.files if r.path]

    def table(self) -> str:
        """A plain-text table: file, packets, status."""
        rows = [("FILE", "PACKETS", "STATUS")]
        for r in self.files:
            status = r.error or (f"dropped {r.dropped}" if r.dropped else "ok")
            if r.exited_early and not r.error:
                status = "ok (interface went away)"
            rows.append((Path(r.path).name if r.path else "-", str(r.packets), status))
        w = [max(len(row[i]) for row in rows) for i in range(2)]
        return "\n".join(f"{a:<{w[0]}}  {b:>{w[1]}}  {c}" for a, b, c in rows)


class CaptureGroup:
    """Captures on several netns at once, all files in one run directory.

    ``targets`` maps a node label to its netns name (``{"k8s-w0": "L-k8s-w0"}``);
    use :meth:`for_lab` to build it from a lab name.
    """

    def __init__(self, targets: dict[str, str | None], run_dir: str | os.PathLike[str], *,
                 ifaces: str | Iterable[str] = DEFAULT_IFACES, bpf: str | None = None):
        if not targets:
            raise ValueError("no node/netns to capture on")
        self.run_dir = Path(run_dir)
        self.captures = {node: Capture(ns, self.run_dir, node=node, ifaces=ifaces, bpf=bpf)
                         for node, ns in targets.items()}
        self.result: RunResult | None = None

    @classmethod
    def for_lab(cls, lab: str, nodes: Iterable[str], *, run: str | None = None,
                root: str | os.PathLike[str] | None = None,
                ifaces: str | Iterable[str] = DEFAULT_IFACES,
                bpf: str | None = None) -> CaptureGroup:
        """Captures on nodes of lab ``lab`` (netns ``<lab>-<node>``) into ``pcaps/<lab>/<run>/``."""
        nodes = list(nodes)
        if not nodes:
            raise ValueError(f"no nodes given for lab {lab!r}")
        run_dir = Path(root or pcaps_root()) / lab / (run or new_run_name())
        return cls({n: f"{lab}-{n}" for n in nodes}, run_dir, ifaces=ifaces, bpf=bpf)

    def start(self) -> CaptureGroup:
        """Start every node's captures in parallel; on any failure stop those started."""
        launched: list[tuple[Capture, list[_Tcpdump]]] = []
        try:
            for cap in self.captures.values():
                launched.append((cap, cap._launch()))
            for cap, pending in launched:
                cap._await_listening(pending)
        except BaseException:
            for cap, _ in launched:
                cap._abort()
            raise
        return self

    def stop(self, timeout: float = 5.0, settle: float = 0.05) -> RunResult:
        """Stop every capture (settle, SIGINT, wait, check); return the files and their state."""
        halted = [(cap, cap._halt(timeout)) for cap in self.captures.values()]
        _settle([d.path for _, dumps in halted for d, _ in dumps], settle)
        res = RunResult(str(self.run_dir))
        for _cap, dumps in halted:
            for d, _ in dumps:
                d.interrupt()
        for cap, dumps in halted:
            res.files += cap._finish(dumps, timeout)
        self.result = res
        return res

    def file(self, node: str, iface: str) -> Path:
        """Path of ``<node>-<iface>.pcap`` (whether or not it was captured)."""
        return self.run_dir / f"{node}-{iface}.pcap"

    def trace(self, node: str, iface: str) -> Any:
        """The :class:`testbed.pcapassert.Trace` of one interface (after :meth:`stop`)."""
        from testbed.pcapassert import load

        return load(self.file(node, iface))

    def wait_for_iface(self, node: str, glob: str, timeout: float = 5.0) -> list[str]:
        """Wait until ``node`` captures on an interface matching ``glob``."""
        return self.captures[node].wait_for_iface(glob, timeout)

    def __enter__(self) -> CaptureGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.result is None:
            self.stop()


# ----------------------------------------------------------------------------- pytest


def capture_fixture(*, name: str = "captures", ifaces: str = DEFAULT_IFACES,
                    bpf: str | None = None, keep: bool | None = None,
                    root: str | os.PathLike[str] | None = None) -> Any:
    """Make a pytest fixture that captures around a test; assign it at module level::

        captures = capture_fixture()

        def test_flow(captures):
            cap = captures.lab("L", ["k8s-w0", "k8s-w1"])     # started, listening
            ...traffic...
            cap.stop()
            pa.assert_ipip(cap.trace("k8s-w0", "eth0"), ...)

    ``captures.netns({"a": "nsname"})`` captures in namespaces made by the test.
    The files of a failed test are kept (their directory is printed and added to
    the test's report); those of a passing test are deleted, unless ``keep`` or
    ``CALICOLAB_KEEP_PCAPS=1``.
    """
    import pytest

    @pytest.fixture(name=name)
    def _captures(request: Any) -> Iterator[CaptureFactory]:
        factory = CaptureFactory(request.node.name, ifaces=ifaces, bpf=bpf, root=root)
        failed_before = request.session.testsfailed
        yield factory
        factory.stop_all()
        failed = request.session.testsfailed > failed_before
        want_keep = keep if keep is not None else os.environ.get("CALICOLAB_KEEP_PCAPS") == "1"
        kept = factory.finish(keep=failed or want_keep)
        if kept:
            request.node.user_properties.append(("pcaps", [str(p) for p in kept]))
            print(f"\n[captures] pcaps kept in: {', '.join(str(p) for p in kept)}",
                  file=sys.stderr)

    return _captures


class CaptureFactory:
    """What the :func:`capture_fixture` fixture yields: starts capture groups for a test."""

    def __init__(self, test_name: str, *, ifaces: str = DEFAULT_IFACES, bpf: str | None = None,
                 root: str | os.PathLike[str] | None = None):
        self.test_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)[:80]
        self.ifaces, self.bpf = ifaces, bpf
        self.root = Path(root) if root else pcaps_root()
        self.groups: list[CaptureGroup] = []

    def lab(self, lab: str, nodes: Iterable[str], *, ifaces: str | None = None,
            bpf: str | None = None) -> CaptureGroup:
        """Start capturing on ``nodes`` of lab ``lab`` into ``pcaps/<lab>/<test>-<time>/``."""
        g = CaptureGroup.for_lab(lab, nodes, run=new_run_name(self.test_name), root=self.root,
                                 ifaces=ifaces or self.ifaces, bpf=bpf or self.bpf)
        return self._start(g)

    def netns(self, targets: dict[str, str] | Iterable[str], *, ifaces: str | None = None,
              bpf: str | None = None) -> CaptureGroup:
        """Start capturing in plain namespaces (``{label: netns}`` or a list of netns names)."""
        if not isinstance(targets, dict):
            targets = {ns: ns for ns in targets}
        run_dir = self.root / "netns" / new_run_name(self.test_name)
        g = CaptureGroup(dict(targets), run_dir, ifaces=ifaces or self.ifaces,
                         bpf=bpf or self.bpf)
        return self._start(g)

    def _start(self, g: CaptureGroup) -> CaptureGroup:
        g.start()
        self.groups.append(g)
        return g

    def stop_all(self) -> None:
        """Stop every group still running."""
        for g in self.groups:
            if g.result is None:
                g.stop()

    def finish(self, keep: bool) -> list[Path]:
        """Keep (return) or delete the run directories."""
        dirs = [g.run_dir for g in self.groups]
        if keep:
            return dirs
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
            try:
                d.parent.rmdir()  # pcaps/<lab>/ when now empty
            except OSError:
                pass
        return []


# ----------------------------------------------------------------------------- lab CLI backend


def _state_file(lab: str) -> Path:
    return STATE_ROOT / lab / "capture.json"


def lab_nodes(lab: str) -> list[str]:
    """Nodes of a running lab, from its netns names ``<lab>-<node>``."""
    try:
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        return []
    return sorted(n[len(lab) + 1:] for n in names if n.startswith(f"{lab}-"))


def start_lab_capture(lab: str, nodes: Sequence[str] | None = None, *,
                      ifaces: str = DEFAULT_IFACES, bpf: str | None = None,
                      run: str | None = None, root: str | os.PathLike[str] | None = None,
                      timeout: float = 30.0) -> dict[str, Any]:
    """``calicolab capture start``: a detached capture process for lab ``lab``.

    Returns ``{"pid", "run_dir", "nodes", "listening": {node: [iface...]}}`` once
    every tcpdump listens. Raises :class:`CaptureError` if one already runs or it
    fails to start.
    """
    parse_globs(ifaces)
    state = _state_file(lab)
    if state.exists():
        info = json.loads(state.read_text())
        if _alive(info.get("pid")):
            raise CaptureError(f"a capture is already running for lab {lab!r} "
                               f"(pid {info['pid']}, {info.get('run_dir')}); "
                               "run 'calicolab capture stop' first")
        state.unlink()
    nodes = list(nodes) if nodes else lab_nodes(lab)
    if not nodes:
        raise CaptureError(f"lab {lab!r} has no node namespaces ({lab}-<node> in /run/netns): "
                           "is it up?")
    for n in nodes:
        if not os.path.exists(f"/run/netns/{lab}-{n}"):
            raise CaptureError(f"lab {lab!r} has no node {n!r} (no /run/netns/{lab}-{n})")
    run_dir = Path(root or pcaps_root()) / lab / (run or new_run_name())
    state.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "testbed.capture", "--state", str(state), "--run-dir",
           str(run_dir), "--ifaces", ifaces, "--lab", lab]
    if bpf:
        cmd += ["--filter", bpf]
    cmd += nodes
    log = open(state.with_suffix(".log"), "ab")  # noqa: SIM115 (kept by the child)
    # CALICOLAB_LAB marks the process (and its tcpdumps) as the lab's: `calicolab clean` ends it
    env = dict(os.environ, CALICOLAB_LAB=lab)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True, cwd=str(REPO_ROOT), env=env)
    log.close()
    try:
        info = wait_for(lambda: _read_state(state, proc.pid),
                        lambda s: s is not None and s.get("status") in ("listening", "failed")
                        or proc.poll() is not None,
                        timeout=timeout, what=f"the capture process for lab {lab} to listen")
    except WaitTimeout:
        proc.kill()
        proc.wait()
        raise CaptureError(f"capture for lab {lab!r} did not start within {timeout:.0f}s; "
                           f"log: {state.with_suffix('.log')}") from None
    if info is None or info.get("status") != "listening":
        proc.wait(5)
        err = (info or {}).get("error") or _tail(state.with_suffix(".log"))
        state.unlink(missing_ok=True)
        raise CaptureError(f"capture for lab {lab!r} failed to start: {err}")
    return info


def stop_lab_capture(lab: str, timeout: float = 15.0) -> dict[str, Any]:
    """``calicolab capture stop``: stop the lab's capture process; return its final state
    (``run_dir`` and ``files``: one dict per interface with path, packets, error)."""
    state = _state_file(lab)
    if not state.exists():
        raise CaptureError(f"no capture is running for lab {lab!r}")
    info = json.loads(state.read_text())
    pid = info.get("pid")
    if _alive(pid):
        os.kill(pid, signal.SIGINT)
        wait_for(lambda: _read_state(state, pid),
                 lambda s: s is not None and s.get("status") in ("stopped", "failed")
                 or not _alive(pid),
                 timeout=timeout, what=f"the capture process {pid} of lab {lab} to stop")
        wait_for(lambda: _alive(pid), lambda a: not a, timeout=timeout,
                 what=f"capture process {pid} to exit")
    final = json.loads(state.read_text())
    state.unlink(missing_ok=True)
    if final.get("status") != "stopped":
        final.setdefault("error", "the capture process ended without stopping cleanly")
    return final


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _read_state(path: Path, pid: int) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if info.get("pid") == pid else None


def _tail(path: Path, n: int = 5) -> str:
    try:
        return " | ".join(path.read_text().strip().splitlines()[-n:])
    except OSError:
        return "(no log)"


def _write_state(path: Path, info: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=1))
    tmp.replace(path)


def capture_command(argv: Sequence[str], lab: str) -> int:
    """``calicolab capture start|stop|status`` for lab ``lab``: parse ``argv``, print, exit code.

    ``start [--nodes a,b] [--ifaces 'cali*,tunl0,eth0'] [--filter BPF] [--run NAME]``,
    ``stop`` (prints the files table; exit 1 if a file is incomplete), ``status``.
    """
    ap = argparse.ArgumentParser(prog="calicolab capture",
                                 description="tcpdump on the lab's nodes, one pcap per interface "
                                 "in pcaps/<lab>/<run>/<node>-<iface>.pcap")
    sub = ap.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    st = sub.add_parser("start", help="start capturing (returns once every tcpdump listens)")
    st.add_argument("--nodes", help="comma-separated node names (default: every node)")
    st.add_argument("--ifaces", default=DEFAULT_IFACES,
                    help=f"comma-separated interface globs (default {DEFAULT_IFACES!r})")
    st.add_argument("--filter", dest="bpf", help="a tcpdump/BPF filter, e.g. 'not port 2379'")
    st.add_argument("--run", help="run directory name (default: run-<date>-<time>-<hex>)")
    sub.add_parser("stop", help="stop capturing and list the files")
    sub.add_parser("status", help="is a capture running, and where does it write")
    a = ap.parse_args(list(argv))
    try:
        if a.action == "start":
            nodes = [n.strip() for n in a.nodes.split(",") if n.strip()] if a.nodes else None
            info = start_lab_capture(lab, nodes, ifaces=a.ifaces, bpf=a.bpf, run=a.run)
            print(f"capturing in {info['run_dir']} (pid {info['pid']})")
            for node, ifs in sorted(info.get("listening", {}).items()):
                print(f"  {node}: {', '.join(ifs) or '(none yet: picked up when they appear)'}")
            return 0
        if a.action == "stop":
            final = stop_lab_capture(lab)
            res = RunResult(final.get("run_dir", ""),
                            [IfaceResult(**f) for f in final.get("files", [])])
            print(res.table())
            print(f"files in {res.run_dir}")
            errors = final.get("errors") or ([final["error"]] if final.get("error") else [])
            for e in errors:
                print(f"calicolab capture: error: {e}", file=sys.stderr)
            return 1 if errors else 0
        state = _state_file(lab)
        info = json.loads(state.read_text()) if state.exists() else None
        if info is None or not _alive(info.get("pid")):
            print(f"no capture running for lab {lab}")
            return 0
        print(f"capturing in {info['run_dir']} (pid {info['pid']}), interfaces {info['ifaces']}")
        return 0
    except (CaptureError, ValueError, WaitTimeout) as exc:
        print(f"calicolab capture: error: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """The detached capture process: capture until SIGINT/SIGTERM, record state as JSON."""
    ap = argparse.ArgumentParser(prog="python -m testbed.capture")
    ap.add_argument("--state", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--ifaces", default=DEFAULT_IFACES)
    ap.add_argument("--filter", default=None)
    ap.add_argument("--lab", required=True)
    ap.add_argument("nodes", nargs="+")
    a = ap.parse_args(argv)
    state = Path(a.state)
    info: dict[str, Any] = {"pid": os.getpid(), "lab": a.lab, "run_dir": a.run_dir,
                            "nodes": a.nodes, "ifaces": a.ifaces, "filter": a.filter,
                            "status": "starting"}
    _write_state(state, info)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    group = CaptureGroup({n: f"{a.lab}-{n}" for n in a.nodes}, a.run_dir, ifaces=a.ifaces,
                         bpf=a.filter)
    try:
        group.start()
    except (CaptureError, ValueError, OSError) as exc:
        info.update(status="failed", error=str(exc))
        _write_state(state, info)
        return 1
    info.update(status="listening",
                listening={n: c.listening() for n, c in group.captures.items()})
    _write_state(state, info)
    while not stop.wait(0.5):
        pass
    res = group.stop()
    info.update(status="stopped", files=[asdict(r) for r in res.files], errors=res.errors)
    _write_state(state, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
