"""Captures on several network namespaces into one run directory (``pcaps/<lab>/<run>/``)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.capture.namespace import DEFAULT_IFACES, Capture
from testbed.capture.pcapfile import settle_files
from testbed.capture.tcpdump import IfaceResult, Tcpdump

REPO_ROOT = Path(__file__).resolve().parents[2]


def pcaps_root() -> Path:
    """Where runs land: ``$CALICOLAB_PCAPS`` or ``<repo>/pcaps``."""
    return Path(os.environ.get("CALICOLAB_PCAPS") or REPO_ROOT / "pcaps")


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
        launched: list[tuple[Capture, list[Tcpdump]]] = []
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
        settle_files([d.path for _, dumps in halted for d, _ in dumps], settle)
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
        """The :class:`testbed.capture.pcapassert.Trace` of one interface (after :meth:`stop`)."""
        from testbed.capture.pcapassert import load

        return load(self.file(node, iface))

    def wait_for_iface(self, node: str, glob: str, timeout: float = 5.0) -> list[str]:
        """Wait until ``node`` captures on an interface matching ``glob``."""
        return self.captures[node].wait_for_iface(glob, timeout)

    def __enter__(self) -> CaptureGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.result is None:
            self.stop()
