"""Captures on a lab spanning machines: tcpdump where each node is, pcaps pulled back here.

:class:`MachineCaptures` has the surface of :class:`testbed.capture.group.CaptureGroup`
(``start``, ``stop`` -> :class:`RunResult`, ``file``, ``run_dir``, ``result``): on each
machine it runs that machine's ``calicolab capture start --nodes ... --run RUN`` (its
files land in the part's state root), and on ``stop`` its ``capture stop --json``, copies
every file back over SFTP into ``pcaps/<lab>/<run>/`` here and removes the machine's copy.
:func:`lab_captures` picks it or a plain CaptureGroup; :func:`capture_command` is
``calicolab capture`` for such labs (its state in ``/run/calicolab/<lab>/capture.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from testbed.capture.group import CaptureGroup, RunResult, new_run_name, pcaps_root
from testbed.capture.namespace import DEFAULT_IFACES, parse_globs
from testbed.capture.tcpdump import IfaceResult
from testbed.lab.state import LabError, is_multihost, read_state, resolve, state_dir
from testbed.multihost import controller
from testbed.multihost.hosts import HostError

__all__ = ["MachineCaptures", "lab_captures", "capture_command"]


class MachineCaptures:
    """Captures on nodes of a lab spread over machines, into one run directory here."""

    def __init__(self, st: dict, nodes: Iterable[str], run: str | None = None, *,
                 ifaces: str = DEFAULT_IFACES, bpf: str | None = None,
                 root: str | os.PathLike[str] | None = None):
        parse_globs(ifaces)
        self.st = st
        self.lab = st["lab"]
        self.run = run or new_run_name()
        self.ifaces, self.bpf = ifaces, bpf
        self.by_machine: dict[str, list[str]] = {}
        for node in nodes:
            m = controller.machine_of(self.st, node)
            self.by_machine.setdefault(m.name, []).append(node)
        if not self.by_machine:
            raise ValueError(f"no nodes given for lab {self.lab!r}")
        self.run_dir = Path(root or pcaps_root()) / self.lab / self.run
        self.result: RunResult | None = None
        self.started: list[str] = []

    def _cli(self, machine: str, *args: str, timeout: float = 120) -> Any:
        ms = controller.machines(self.st)
        host = controller.connect(self.st, ms[machine])
        try:
            return host, host.run(host.calicolab("--lab", self.lab, "capture", *args), timeout=timeout)
        except BaseException:
            host.close()
            raise

    def start(self) -> MachineCaptures:
        """Start every machine's captures; returns once every tcpdump listens (else stops them)."""
        def one(machine: str) -> None:
            args = ["start", "--nodes", ",".join(self.by_machine[machine]), "--ifaces", self.ifaces,
                    "--run", self.run] + (["--filter", self.bpf] if self.bpf else [])
            host, res = self._cli(machine, *args)
            host.close()
            if res.rc != 0:
                raise HostError(host.machine, f"capture start failed: {(res.err or res.out).strip()}")
            self.started.append(machine)

        failed = [r for r in controller._parallel(one, list(self.by_machine)).values()  # noqa: SLF001
                  if isinstance(r, BaseException)]
        if failed:
            self.stop()
            raise LabError("\n".join(str(e) for e in failed))
        return self

    def stop(self, timeout: float = 60.0) -> RunResult:
        """Stop every machine's captures, copy the pcaps back, remove them there."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        res = RunResult(str(self.run_dir))
        extra: list[str] = []

        def one(machine: str) -> list[IfaceResult]:
            host, out = self._cli(machine, "stop", "--json", timeout=timeout)
            try:
                if out.rc != 0:
                    raise HostError(host.machine, f"capture stop failed: {(out.err or out.out).strip()}")
                final = json.loads(out.out)
                files = []
                for f in final.get("files", []):
                    r = IfaceResult(**f)
                    if r.path:
                        local = self.run_dir / Path(r.path).name
                        host.fetch(r.path, local)
                        r.path = str(local)
                    files.append(r)
                extra.extend(f"{machine}: {e}" for e in final.get("errors") or [])
                if final.get("run_dir"):
                    host.run(["rm", "-rf", final["run_dir"]], timeout=30)
                return files
            finally:
                host.close()

        for machine, got in controller._parallel(one, list(self.started)).items():  # noqa: SLF001
            if isinstance(got, BaseException):
                res.files.append(IfaceResult(machine, "?", "", error=str(got)))
            else:
                res.files += got
        for e in extra:
            node, _, msg = e.partition(": ")
            if not any(msg.endswith(x) for x in res.errors):
                res.files.append(IfaceResult(node, "?", "", error=msg))
        self.started.clear()
        self.result = res
        return res

    def file(self, node: str, iface: str) -> Path:
        """Path of ``<node>-<iface>.pcap`` here (whether or not it was captured)."""
        return self.run_dir / f"{node}-{iface}.pcap"

    def trace(self, node: str, iface: str) -> Any:
        """The :class:`testbed.capture.pcapassert.Trace` of one interface (after :meth:`stop`)."""
        from testbed.capture.pcapassert import load

        return load(self.file(node, iface))

    def __enter__(self) -> MachineCaptures:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.result is None:
            self.stop()


def lab_captures(lab: str, nodes: Iterable[str], *, run: str | None = None,
                 ifaces: str = DEFAULT_IFACES, bpf: str | None = None) -> Any:
    """Captures on ``nodes`` of lab ``lab``: a CaptureGroup, or MachineCaptures when the lab
    spans machines."""
    st = read_state(lab)
    if is_multihost(st):
        assert st is not None
        return MachineCaptures(st, nodes, run, ifaces=ifaces, bpf=bpf)
    return CaptureGroup.for_lab(lab, nodes, run=run, ifaces=ifaces, bpf=bpf)


def capture_command(argv: Sequence[str], st: dict) -> int:
    """``calicolab capture start|stop|status`` for a lab spanning machines."""
    ap = argparse.ArgumentParser(prog="calicolab capture",
                                 description="tcpdump on the lab's nodes, wherever they run; the "
                                 "pcaps come back to pcaps/<lab>/<run>/<node>-<iface>.pcap here")
    sub = ap.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    sp = sub.add_parser("start", help="start capturing (returns once every tcpdump listens)")
    sp.add_argument("--nodes", help="comma-separated node names (default: every node)")
    sp.add_argument("--ifaces", default=DEFAULT_IFACES)
    sp.add_argument("--filter", dest="bpf")
    sp.add_argument("--run")
    sub.add_parser("stop", help="stop capturing, copy the pcaps back, list the files")
    sub.add_parser("status", help="is a capture running, and where does it write")
    a = ap.parse_args(list(argv))
    lab = st["lab"]
    path = state_dir(lab) / "capture.json"
    try:
        if a.action == "start":
            if path.exists():
                raise LabError(f"a capture is already running for lab {lab!r} "
                               "(run 'calicolab capture stop' first)")
            nodes = [n.strip() for n in a.nodes.split(",") if n.strip()] if a.nodes else \
                [n for n, h in st["hosts"].items() if h.get("kind") == "node"]
            caps = MachineCaptures(st, nodes, a.run, ifaces=a.ifaces, bpf=a.bpf).start()
            path.write_text(json.dumps({"run": caps.run, "nodes": nodes, "ifaces": a.ifaces,
                                        "bpf": a.bpf, "started": caps.started}))
            print(f"capturing in {caps.run_dir} (on {', '.join(sorted(caps.by_machine))})")
            return 0
        if a.action == "stop":
            if not path.exists():
                raise LabError(f"no capture is running for lab {lab!r}")
            info = json.loads(path.read_text())
            caps = MachineCaptures(resolve(lab), info["nodes"], info["run"], ifaces=info["ifaces"],
                                   bpf=info["bpf"])
            caps.started = list(info["started"])
            result = caps.stop()
            path.unlink(missing_ok=True)
            print(result.table())
            print(f"files in {result.run_dir}")
            for e in result.errors:
                print(f"calicolab capture: error: {e}", file=sys.stderr)
            return 1 if result.errors else 0
        if path.exists():
            info = json.loads(path.read_text())
            print(f"capturing in {pcaps_root() / lab / info['run']} on {', '.join(info['started'])}")
        else:
            print(f"no capture running for lab {lab}")
        return 0
    except (LabError, ValueError) as exc:
        print(f"calicolab capture: error: {exc}", file=sys.stderr)
        return 1
