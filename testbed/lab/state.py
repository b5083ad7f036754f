"""A calicolab lab's recorded state on the machine, and the names it owns.

A lab named ``L`` writes, *before* it makes anything, ``/run/calicolab/L/state.json``
(:func:`plan` is its first version): the netns it is going to make, its cgroup, and
later the PIDs (with start times) of its supervisor and services. This module reads
and writes that state, tells whether a lab runs, resolves which lab a command means,
and builds the environment every process of a node gets. It starts nothing:
:mod:`testbed.lab.lifecycle` brings labs up and down, :mod:`testbed.lab.clean` removes
what they left behind.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testbed.lab.topology import Topology

RUN_ROOT = Path(os.environ.get("CALICOLAB_RUN", "/run/calicolab"))
REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
STATE_FILE = "state.json"
PYCACHE = RUN_ROOT / ".pycache"  # lab processes' bytecode cache (a dot dir: not a lab)
HEALTH_PORT = 9099

Progress = Callable[[str], None]


#: exit codes of the CLI, carried by LabError
EXIT_FAIL, EXIT_INPUT, EXIT_NOLAB, EXIT_EXISTS = 1, 2, 3, 4


class LabError(Exception):
    """A user-facing failure of a lab operation (the CLI prints it and exits with ``exit_code``)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


# --------------------------------------------------------------------------- state


def state_dir(lab: str) -> Path:
    """``/run/calicolab/<lab>``."""
    return RUN_ROOT / lab


def read_state(lab: str) -> dict | None:
    """The lab's recorded state, or None if it has none (or it is unreadable)."""
    try:
        return json.loads((state_dir(lab) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def write_state(lab: str, state: dict) -> None:
    """Atomically replace the lab's state file."""
    path = state_dir(lab) / STATE_FILE
    tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, path)


def list_labs() -> list[str]:
    """Every lab with a state directory (running or not)."""
    if not RUN_ROOT.is_dir():
        return []
    return sorted(p.name for p in RUN_ROOT.iterdir() if p.is_dir() and not p.name.startswith("."))


def proc_starttime(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None if it does not exist)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def pid_alive(pid: int | None, start: int | None = None) -> bool:
    """True if ``pid`` runs (and, if ``start`` is given, is the same process as recorded)."""
    if not pid:
        return False
    st = proc_starttime(pid)
    if st is None:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    if state == "Z":
        return False
    return start is None or st == start


def is_running(state: dict | None) -> bool:
    """True if the lab's supervisor is alive and the lab is not being torn down (for a lab
    spanning several machines: its record says it is up; `status` asks each machine)."""
    if not state:
        return False
    if is_multihost(state):
        return state.get("phase") in ("starting", "ready")
    sup = state.get("supervisor") or {}
    return pid_alive(sup.get("pid"), sup.get("start")) and state.get("phase") in ("starting", "ready")


def running_labs() -> list[str]:
    """Labs whose supervisor is alive."""
    return [lab for lab in list_labs() if is_running(read_state(lab))]


def resolve(name: str | None) -> dict:
    """The state of lab ``name``, or of the only running lab when ``name`` is None."""
    if name:
        st = read_state(name)
        if st is None:
            raise LabError(f"no lab named {name!r} (running: {', '.join(running_labs()) or 'none'})",
                           EXIT_NOLAB)
        if not is_running(st):
            raise LabError(f"lab {name!r} is not running (phase {st.get('phase')}); "
                           "`calicolab clean` removes what is left of it", EXIT_NOLAB)
        return st
    labs = running_labs()
    if not labs:
        raise LabError("no lab is running: start one with `calicolab up TOPOLOGY`", EXIT_NOLAB)
    if len(labs) > 1:
        raise LabError(f"several labs are running ({', '.join(labs)}): say which with --lab NAME",
                       EXIT_NOLAB)
    st = read_state(labs[0])
    assert st is not None
    return st


def netns_name(lab: str, host: str) -> str:
    """The name on the machine of host ``host``'s netns (``ip netns exec <this>``)."""
    return f"{lab}-{host}"


def part() -> str:
    """The machine this process acts for in a lab spanning several (``CALICOLAB_PART``, set by
    :mod:`testbed.multihost` on every command it runs on a host); "" in a one-machine lab."""
    return os.environ.get("CALICOLAB_PART", "")


def segment_netns(lab: str, segment: str, machine: str = "") -> str:
    """The netns holding ``segment``'s bridge: ``<lab>-<segment>``, and ``<lab>-<segment>@<machine>``
    in a multi-host lab (each machine has a bridge of its own for a segment it shares)."""
    return f"{lab}-{segment}" + (f"@{machine}" if machine else "")


def is_multihost(state: dict | None) -> bool:
    """True for the record of a lab spanning several machines (kept by the machine that made it)."""
    return bool(state and state.get("multihost"))


# --------------------------------------------------------------------------- cgroup


def cgroup_mount() -> Path | None:
    """Where cgroup v2 is mounted (``/sys/fs/cgroup`` or ``/sys/fs/cgroup/unified``), if anywhere."""
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return Path(parts[1])
    except OSError:
        pass
    return None


def cgroup_path(lab: str) -> Path | None:
    """The lab's cgroup directory (not necessarily existing); ``<lab>@<machine>`` for one part
    of a multi-host lab."""
    root = cgroup_mount()
    return root / "calicolab" / (f"{lab}@{part()}" if part() else lab) if root else None


def join_cgroup(cgroup: str | os.PathLike | None, pid: int = 0) -> None:
    """Move ``pid`` (0: the caller) into ``cgroup`` if it exists; never fails the caller."""
    if not cgroup:
        return
    try:
        (Path(cgroup) / "cgroup.procs").write_text(f"{pid or os.getpid()}\n")
    except OSError:
        pass


# --------------------------------------------------------------------------- environment


def node_env(state: dict, node: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every process in ``node`` gets (NODE_NAME, ETCD_ENDPOINTS, ...)."""
    env = dict(os.environ if base is None else base)
    role = ((state.get("hosts") or {}).get(node) or {}).get("role", "")
    env.update({
        "NODE_ROLE": role,
        "NODE_NAME": node,
        "NODENAME": node,
        "ETCD_ENDPOINTS": ",".join(state["etcd_endpoints"]),
        "CALICOLAB_LAB": state["lab"],
        # calicoctl in a node shell reads the lab's datastore (with the shell's KUBECONFIG in
        # the Kubernetes datastore)
        "DATASTORE_TYPE": state.get("datastore", "etcdv3"),
        "PATH": f"{REPO / 'testbed' / 'lab' / 'nodebin'}:{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "PYTHONPATH": str(REPO),
        # compiled modules go to a cache outside the work tree, shared by every lab:
        # without it each kubelet / calico-node / kubectl compiled the project anew
        # (~30 ms CPU per process start, measured; the cost scales with the nodes)
        "PYTHONPYCACHEPREFIX": str(PYCACHE),
    })
    if state.get("part"):  # one machine's part of a multi-host lab: its processes say which
        env.update(CALICOLAB_PART=state["part"], CALICOLAB_RUN=str(RUN_ROOT))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("VIRTUAL_ENV", None)
    # `ctr` and `docker` in a node talk to that node's own daemon (testbed.k8s.cri)
    if state.get("runtime") in ("containerd", "docker") and role:
        rdir = runtime_dir(state["lab"], node)
        env["CONTAINERD_ADDRESS"] = str(rdir / "containerd" / "containerd.sock")
        if state["runtime"] == "docker":
            env["DOCKER_HOST"] = f"unix://{rdir / 'docker' / 'docker.sock'}"
    return env


def runtime_dir(lab: str, node: str) -> Path:
    """A node's container-runtime directory: its daemons' root, state and sockets, and the
    pods' files (the same path in the node's and the machine's mount namespaces)."""
    return state_dir(lab) / "rt" / node



# --------------------------------------------------------------------------- plan


def members(topo: Topology, machine: str | None = None) -> dict[str, dict]:
    """Every node, router and external host (on ``machine``; all for None) as the state records it."""
    hosts: dict[str, dict] = {}
    mine = set(topo.names_on(machine))
    for n in topo.nodes:
        hosts[n.name] = {"kind": "node", "role": n.role, "address": str(n.address),
                         "segment": n.segment, "netns": netns_name(topo.name, n.name)}
    for r in topo.routers:
        hosts[r.name] = {"kind": "router", "address": ",".join(str(i.address) for i in r.interfaces),
                         "segment": ",".join(i.segment for i in r.interfaces),
                         "netns": netns_name(topo.name, r.name)}
    for e in topo.external:
        hosts[e.name] = {"kind": "external", "address": str(e.address), "segment": e.segment,
                         "netns": netns_name(topo.name, e.name)}
    for name, rec in hosts.items():
        if topo.multihost:
            rec["host"] = topo.host_of(name)
    return {k: v for k, v in hosts.items() if k in mine}


def plan(topo: Topology) -> dict[str, Any]:
    """The initial state of a lab (of this machine's part of it: :func:`part`): every name it
    is going to make, before it makes any."""
    me = part()
    if topo.multihost and not me:
        raise LabError(f"lab {topo.name!r} spans several machines: only a part of it is "
                       "planned on one (CALICOLAB_PART)")
    if me and me not in topo.machines():
        raise LabError(f"this machine's part {me!r} holds nothing of lab {topo.name!r} "
                       f"(machines: {', '.join(topo.machines())})")
    hosts = members(topo, me or None)
    for s in topo.segments_on(me or None):
        hosts[s.name] = {"kind": "segment", "address": str(s.cidr), "bridge": s.name,
                         "netns": segment_netns(topo.name, s.name, me)}
    cg = cgroup_path(topo.name)
    return {
        "lab": topo.name, "topology": str(Path(topo.path).resolve()), "phase": "starting",
        "error": None, "created": time.time(), "supervisor": {}, "hosts": hosts,
        "netns": [h["netns"] for h in hosts.values()], "cgroup": str(cg) if cg else None,
        "control_plane": topo.control_plane.name, "etcd_endpoints": topo.etcd_endpoints,
        "datastore": topo.calico.datastore,
        "services": {}, "no_cni": False, "cni_installed": False, "skipped": [],
        "runtime": topo.runtime,
        "part": me, "tunnels": {},
    }


