"""Helpers for the lab-tier tests: topology text, the leftovers check, and the one way a test
module starts a walkthrough lab (:func:`walkthrough_lab`) and keeps its pcaps only on failure
(:func:`pcaps_kept_on_failure`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from testbed.capture.group import pcaps_root
from testbed.lab import state as labstate
from testbed.walkthrough import Flow, Walkthrough
from tests.support import require_root, unique

SMALL = """\
name: {name}
segments:
  - {{name: lan0, cidr: 172.30.60.0/24}}
nodes:
  - {{name: m, role: control-plane, address: 172.30.60.10, segment: lan0}}
  - {{name: w0, role: worker, address: 172.30.60.11, segment: lan0}}
"""

ROUTED = """\
name: {name}
segments:
  - {{name: lan0, cidr: 172.30.61.0/24}}
  - {{name: inet, cidr: 203.0.113.0/24}}
routers:
  - name: r0
    interfaces:
      - {{segment: lan0, address: 172.30.61.1}}
      - {{segment: inet, address: 203.0.113.1}}
nodes:
  - {{name: m, role: control-plane, address: 172.30.61.10, segment: lan0}}
  - {{name: w0, role: worker, address: 172.30.61.11, segment: lan0}}
  - {{name: w1, role: worker, address: 172.30.61.12, segment: lan0}}
external:
  - {{name: internet, address: 203.0.113.10, segment: inet}}
workloads:
  - manifest: {{apiVersion: v1, kind: Namespace, metadata: {{name: lab-probe}}}}
"""


def write_topology(tmp_path: Path, name: str, template: str = SMALL) -> Path:
    """A topology file for lab ``name`` under ``tmp_path``."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(template.format(name=name))
    return path


def leftovers(state: dict) -> list[str]:
    """Everything of the lab recorded in ``state`` that still exists on the machine."""
    lab = state["lab"]
    left: list[str] = []
    for ns in state["netns"]:
        if Path("/run/netns", ns).exists():
            left.append(f"netns {ns}")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    left += [f"ip netns list: {line}" for line in listed.splitlines()
             if line.split()[0] in state["netns"]]
    recs = [state.get("supervisor") or {}, *state["hosts"].values(), *state["services"].values()]
    for rec in recs:
        if labstate.pid_alive(rec.get("pid"), rec.get("start")):
            left.append(f"process {rec.get('pid')}")
    mounts = Path("/proc/self/mountinfo").read_text()
    for ns in state["netns"]:
        if f"/run/netns/{ns} " in mounts:
            left.append(f"mount /run/netns/{ns}")
    if str(labstate.state_dir(lab)) in mounts:
        left.append("mount under the state dir")
    if state.get("cgroup") and os.path.isdir(state["cgroup"]):
        left.append(f"cgroup {state['cgroup']}")
    if labstate.state_dir(lab).exists():
        left.append(f"state dir {labstate.state_dir(lab)}")
    # the machine's own namespace never sees a lab interface
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for host in state["hosts"]:
        for line in links.splitlines():
            if line.split(": ")[1].split("@")[0] == host:
                left.append(f"root link {host}")
    return left


def template_of(path: Path) -> str:
    """A shipped topology file as a template whose lab name is ``{name}``."""
    text = path.read_text().replace("{", "{{").replace("}", "}}")
    lines = [("name: {name}" if line.startswith("name: ") else line) for line in text.splitlines()]
    return "\n".join(lines) + "\n"


@contextmanager
def pcaps_kept_on_failure(request, lab: str, what: str = "lab") -> Iterator[Path]:
    """Lab ``lab``'s pcaps dir, removed at exit when none of the session's tests failed meanwhile
    (and CALICOLAB_KEEP_PCAPS is unset); otherwise kept, and its path printed."""
    lab_pcaps = pcaps_root() / lab
    failed_before = request.session.testsfailed
    try:
        yield lab_pcaps
    finally:
        if request.session.testsfailed == failed_before and not os.environ.get("CALICOLAB_KEEP_PCAPS"):
            shutil.rmtree(lab_pcaps, ignore_errors=True)
        elif lab_pcaps.exists():
            print(f"\n{what} pcaps kept in {lab_pcaps}")


@contextmanager
def walkthrough_lab(request, prefix: str, *, flows: bool = False, what: str = "lab",
                    **walkthrough: Any) -> Iterator[Walkthrough]:
    """A lab (named ``prefix`` + a unique suffix) taken through the walkthrough as a user does:
    up without a CNI (every node NotReady), Calico installed by manifest, inspected, BGP/Felix
    routes in place, the workloads Running; with ``flows`` also the walkthrough's flows run under
    tcpdump. ``walkthrough`` goes to :class:`Walkthrough` (topology, runtime, ...). At exit:
    captures stopped, the lab down (if a test has not already ended it), pcaps kept only when a
    test failed."""
    require_root()
    w = Walkthrough(unique(prefix), progress=lambda m: None, **walkthrough)
    with pcaps_kept_on_failure(request, w.lab, what):
        try:
            w.up()
            w.install()
            w.inspect()
            w.wait_routes()
            w.deploy()
            if flows:
                w.start_captures()
                w.run_flows()
            yield w
        finally:
            if w.captures is not None and w.captures.result is None:
                w.captures.stop()
            if labstate.read_state(w.lab) is not None:
                w.down()


def flow(w: Walkthrough, name: str) -> Flow:
    """The walkthrough's flow ``name``, which must have answered 200."""
    f = next(f for f in w.flows if f.name == name)
    assert f.error is None, f"{name}: {f.error}"
    assert f.result == "200", f"{name}: curl printed {f.result!r}"
    return f
