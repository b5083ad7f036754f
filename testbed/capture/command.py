"""``calicolab capture start|stop|status`` and the detached capture process behind it.

``start`` launches ``python -m testbed.capture.command`` detached (its state in
``/run/calicolab/<lab>/capture.json``); it captures on the lab's nodes until ``stop``
sends SIGINT, then records every file's state.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from testbed.capture.errors import CaptureError
from testbed.capture.group import REPO_ROOT, CaptureGroup, RunResult, new_run_name, pcaps_root
from testbed.capture.namespace import DEFAULT_IFACES, parse_globs
from testbed.capture.tcpdump import IfaceResult
from testbed.lab.state import RUN_ROOT, read_state
from testbed.poll import WaitTimeout, wait_for

#: the labs' state root (``CALICOLAB_RUN``; each machine's part of a multi-host lab has its own)
STATE_ROOT = RUN_ROOT


def _state_file(lab: str) -> Path:
    return STATE_ROOT / lab / "capture.json"


def lab_nodes(lab: str) -> list[str]:
    """Nodes of a running lab: its members on this machine (state file), else the netns
    named ``<lab>-<node>``."""
    hosts = (read_state(lab) or {}).get("hosts")
    if hosts:
        return sorted(n for n, h in hosts.items() if h.get("kind") != "segment")
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
    cmd = [sys.executable, "-m", "testbed.capture.command", "--state", str(state), "--run-dir",
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

    ``start [--nodes a,b] [--ifaces 'cali*,tunl0,vxlan.calico,eth0'] [--filter BPF] [--run NAME]``,
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
    sp = sub.add_parser("stop", help="stop capturing and list the files")
    sp.add_argument("--json", action="store_true", help="print the final state as JSON")
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
            if a.json:
                print(json.dumps(final))
                return 0
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
    ap = argparse.ArgumentParser(prog="python -m testbed.capture.command")
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
