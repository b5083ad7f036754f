"""Captures on every matching interface of one network namespace (:class:`Capture`).

Interfaces are chosen by globs (``"cali*,tunl0,eth0"``); those that appear or come up
while capturing are picked up from the netns's link events (:mod:`testbed.capture.links`),
with a periodic re-dump as a back-up.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import select
import shutil
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from testbed.capture.errors import CaptureError
from testbed.capture.links import link_changes, link_watcher
from testbed.capture.pcapfile import settle_files
from testbed.capture.tcpdump import IfaceResult, Tcpdump, check_filter
from testbed.poll import wait_for

DEFAULT_IFACES = "cali*,tunl0,vxlan.calico,eth0"
_RESYNC_S = 1.0  # periodic re-dump of the links, in case a netlink event was lost


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
        self._dumps: dict[str, Tcpdump] = {}  # iface -> running tcpdump
        self._done: list[tuple[Tcpdump, bool]] = []  # finished/replaced tcpdumps
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

    def _launch(self) -> list[Tcpdump]:
        """Phase 1 of start: check input, list links, spawn tcpdumps (not yet listening)."""
        if self._started:
            raise CaptureError(f"capture on {self.node} already started")
        if not (shutil.which("tcpdump") or os.path.exists("/usr/bin/tcpdump")):
            raise CaptureError("tcpdump is not installed")
        self._sock = link_watcher(self.netns)  # also checks the netns exists
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

    def _await_listening(self, pending: list[Tcpdump]) -> Capture:
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
        settle_files([d.path for d, _ in dumps], settle)
        return self._finish(dumps, timeout)

    def _halt(self, timeout: float) -> list[tuple[Tcpdump, bool]]:
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

    def _finish(self, dumps: list[tuple[Tcpdump, bool]], timeout: float) -> list[IfaceResult]:
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
        self._sock.request_dump()
        if not wait:
            return
        deadline = time.monotonic() + 5
        fresh: dict[int, tuple[str, bool]] = {}
        while time.monotonic() < deadline:
            r, _, _ = select.select([self._sock], [], [], 0.5)
            if not r:
                continue
            done = False
            for ev, idx, name, up in link_changes(self._sock.events()):
                if ev == "done":
                    done = True
                elif ev == "new" and name:
                    fresh[idx] = (name, up)
            if done:
                self._links = fresh
                return
        raise CaptureError(f"no answer to the link dump in {self.node}")

    def _launch_matching(self) -> list[Tcpdump]:
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
                    d = Tcpdump(self.netns, self.node, name, path, self.bpf, self.snaplen)
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
                    for ev, idx, name, up in link_changes(self._sock.events()):
                        if ev == "new" and name:
                            self._links[idx] = (name, up)
                        elif ev == "del":
                            self._links.pop(idx, None)
                if time.monotonic() - last_resync > _RESYNC_S:
                    last_resync = time.monotonic()
                    self._sock.request_dump()
                if self._stop.is_set():
                    break
                for d in self._launch_matching():
                    try:
                        d.wait_listening(self.listen_timeout)
                    except CaptureError as exc:
                        self._errors.append(str(exc))
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # events lost: re-dump
                    self._sock.request_dump()
                    continue
                if self._stop.is_set():
                    break
                self._errors.append(f"link watcher in {self.node} failed: {exc}")
                return
            except CaptureError as exc:
                self._errors.append(str(exc))
