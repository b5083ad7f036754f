"""Helpers for the lab engineer's lab-tier tests (topology text, leftovers check)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from testbed.lab import state as labstate

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
