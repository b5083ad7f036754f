"""Remove everything a lab made, from its state file alone (Mininet's ``mn -c``, scoped).

Works after ``kill -9`` of the supervisor and every lab process, and is safe
at any time: it only touches what the lab's ``state.json`` names (written
before anything was created), never anything matched by a process name.

Order: kill every process of the lab (its cgroup, recorded PIDs checked
against their start time, anything still inside one of its namespaces: its hosts' netns,
the mount namespaces of its nodes and every pod netns of a node, whoever started it,
anything started with the lab's ``CALICOLAB_LAB=<lab>`` environment), then
detach its netns (their veths, bridges and iptables rules go with them), then
unmount anything left under its state directory, remove its cgroup and the
state directory (etcd data, logs, node directories).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from testbed.lab.state import (
    is_multihost,
    is_running,
    list_labs,
    part,
    pid_alive,
    read_state,
    state_dir,
)

__all__ = ["CleanReport", "clean_lab", "clean_all", "kill_processes"]


@dataclass
class CleanReport:
    """What one clean removed."""

    lab: str
    killed: list[int] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    cgroup: str | None = None
    errors: list[str] = field(default_factory=list)
    machines: list[str] | None = None  # a lab on several machines: what each one said

    def summary(self) -> str:
        """One line for the CLI."""
        if self.machines is not None:
            return (f"lab {self.lab}: " + "; ".join(self.machines or ["no machine of it reached"])
                    + "; its record on this machine removed"
                    + (f"; errors: {'; '.join(self.errors)}" if self.errors else ""))
        return (f"lab {self.lab}: killed {len(self.killed)} process(es), removed "
                f"{len(self.netns)} netns, {len(self.mounts)} mount(s)"
                + (f"; errors: {'; '.join(self.errors)}" if self.errors else ""))


def _netns_pids(path: Path) -> set[int]:
    """PIDs whose netns is the namespace bound at ``path``; none when ``path`` is the
    machine's own netns (a lab's name for it would make every process a victim)."""
    try:
        want = os.stat(path)
    except OSError:
        return set()
    if any(_ns_id(f"{p}/ns/net") == (want.st_ino, want.st_dev) for p in ("/proc/1", "/proc/self")):
        return set()
    out: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:
            continue
        if (st.st_ino, st.st_dev) == (want.st_ino, want.st_dev):
            out.add(int(entry.name))
    return out


def _ns_id(path: str | os.PathLike) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_dev)


class PinnedNamespaces:
    """Namespaces held open (one fd each) while their members are looked for and killed.

    A namespace whose last process died is freed, and the kernel hands its inode number to
    the next namespace made anywhere on the machine (``ip netns exec`` makes a mount namespace
    for every command it runs): matched by number after that, an unrelated process of the
    machine would be killed (a CI run's ``ip netns exec ... python -m agent.felix.bpftunnel``
    of another test was, with no word on stderr). Held open, a namespace and its number
    stay the lab's until :meth:`close`."""

    def __init__(self) -> None:
        self.ids: set[tuple[str, tuple[int, int]]] = set()
        self._fds: list[int] = []

    def pin(self, kind: str, path: str | os.PathLike) -> tuple[int, int] | None:
        """Hold the ``kind`` ("net" or "mnt") namespace at ``path`` open; its (inode, device),
        or None if it is gone."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        st = os.fstat(fd)
        self._fds.append(fd)
        self.ids.add((kind, (st.st_ino, st.st_dev)))
        return (st.st_ino, st.st_dev)

    def discard(self, never: set[tuple[str, tuple[int, int]]]) -> None:
        """Forget (and stop matching) the namespaces in ``never``."""
        self.ids -= never

    def close(self) -> None:
        """Let the namespaces go (after the kills)."""
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __enter__(self) -> PinnedNamespaces:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lab_namespaces(hosts: set[int], ns_paths: list[Path], exclude: set[int]) -> PinnedNamespaces:
    """The network and mount namespaces of the lab, pinned (:class:`PinnedNamespaces`): its
    hosts' netns (``ns_paths``), the mount namespaces of its nodes' shells (``hosts``, PIDs)
    and every pod netns bound in a node's own ``/run/netns`` tmpfs (seen through the shell's
    root; never the machine's /run/netns, which holds every lab's). Never the namespaces of
    the machine, of this process or of the processes in ``exclude`` (the supervisor)."""
    never = {(kind, i) for kind in ("net", "mnt") for p in ("/proc/1", "/proc/self", *(f"/proc/{x}" for x in exclude))
             if (i := _ns_id(f"{p}/ns/{kind}")) is not None}
    out = PinnedNamespaces()
    try:
        for path in ns_paths:
            out.pin("net", path)
        machine_netns_dir = _ns_id("/run/netns")
        for pid in hosts:
            out.pin("mnt", f"/proc/{pid}/ns/mnt")
            # a node's own /run/netns (a tmpfs of its mount namespace) holds its pods' netns;
            # one that is the machine's directory holds every lab's: never read that one
            own = _ns_id(f"/proc/{pid}/root/run/netns")
            if own is None or machine_netns_dir is None or own[1] == machine_netns_dir[1]:
                continue
            try:
                pod_ns = os.scandir(f"/proc/{pid}/root/run/netns")
            except OSError:
                continue
            with pod_ns:
                for entry in pod_ns:
                    out.pin("net", entry.path)
    except BaseException:
        out.close()
        raise
    out.discard(never)
    return out


def _ns_member_pids(namespaces: set[tuple[str, tuple[int, int]]]) -> set[int]:
    """Processes inside one of ``namespaces`` (net or mnt), whoever started them."""
    out: set[int] = set()
    if not namespaces:
        return out
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        for kind in ("net", "mnt"):
            i = _ns_id(f"/proc/{entry.name}/ns/{kind}")
            if i is not None and (kind, i) in namespaces:
                out.add(int(entry.name))
                break
    return out


def _cgroup_pids(cg: Path) -> set[int]:
    pids: set[int] = set()
    if not cg.is_dir():
        return pids
    for procs in cg.rglob("cgroup.procs"):
        try:
            pids.update(int(p) for p in procs.read_text().split())
        except OSError:
            pass
    return pids


def _runtime_cgroup_dirs(lab: str, depth: int = 4) -> list[Path]:
    """The ``calicolab-<lab>`` cgroups a lab's container runtimes made in every cgroup
    hierarchy (runc places containers relative to its own cgroup; testbed.k8s.cri)."""
    want = f"calicolab-{lab}"
    roots = []
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            parts = line.split(" - ", 1)
            if len(parts) == 2 and parts[1].split()[0] in ("cgroup", "cgroup2"):
                roots.append(Path(parts[0].split()[4]))
    except OSError:
        return []
    found = []
    for root in roots:
        level = [root]
        for _ in range(depth):
            nxt = []
            for d in level:
                try:
                    for entry in os.scandir(d):
                        if entry.is_dir(follow_symlinks=False):
                            (found if entry.name == want else nxt).append(Path(entry.path))
                except OSError:
                    continue
            level = nxt
    return found


def _environ_pids(lab: str, part: str = "") -> set[int]:
    """Processes started with ``CALICOLAB_LAB=<lab>`` in their environment (lab processes
    that left the cgroup, or every one on a machine without cgroup v2); for one machine's
    part of a multi-host lab, only those with ``CALICOLAB_PART=<part>`` too (two parts of a
    lab may share a machine, as in the tests)."""
    marker = f"CALICOLAB_LAB={lab}".encode()
    mine = f"CALICOLAB_PART={part}".encode()
    out: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        items = env.split(b"\0")
        if marker not in items:
            continue
        theirs = next((i for i in items if i.startswith(b"CALICOLAB_PART=")), b"CALICOLAB_PART=")
        if theirs == mine:
            out.add(int(entry.name))
    return out


def _ancestors() -> set[int]:
    out, pid = set(), os.getpid()
    while pid > 1:
        out.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return out


def _kill(pids: set[int], report: CleanReport) -> None:
    me = os.getpid()
    for pid in sorted(pids):
        if pid in (me, 1):
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            report.killed.append(pid)
        except ProcessLookupError:
            pass
        except OSError as exc:
            report.errors.append(f"kill {pid}: {exc.strerror}")


def _wait_gone(pids: set[int], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(pid_alive(p) for p in pids):
            return
        time.sleep(0.02)


def _mounts_under(prefixes: list[str]) -> list[str]:
    out = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        mp = line.split()[4].replace("\\040", " ")
        if any(mp == p or mp.startswith(p.rstrip("/") + "/") for p in prefixes):
            out.append(mp)
    return sorted(set(out), key=len, reverse=True)


def kill_processes(lab: str, keep: set[int]) -> CleanReport:
    """SIGKILL every process of lab ``lab`` (what :func:`clean_lab` kills: its cgroup, its
    namespaces' members, its environment marker, its runtimes' cgroups) except ``keep``, this
    process and its ancestors; for ``down``, while the lab's links are still up. A process
    killed after its peer's link is gone leaves its TCP connections orphaned, retransmitting a
    FIN for minutes, and each such socket keeps its node's netns (and the tc-BPF tunnel
    programs attached in it) alive that long."""
    report = CleanReport(lab)
    st = read_state(lab) or {}
    ns_paths = [Path("/run/netns") / n for n in (st.get("netns") or [])]
    cg = Path(st["cgroup"]) if st.get("cgroup") else None
    shells = {rec["pid"] for rec in (st.get("hosts") or {}).values()
              if rec.get("kind") == "node" and rec.get("pid") and rec.get("start")
              and pid_alive(rec["pid"], rec["start"])}
    with _lab_namespaces(shells, ns_paths, {os.getpid()}) as namespaces:
        for _ in range(3):
            victims = _cgroup_pids(cg) if cg is not None else set()
            for p in ns_paths:
                victims |= _netns_pids(p)
            victims |= _ns_member_pids(namespaces.ids)
            victims |= _environ_pids(lab, st.get("part") or part())
            for d in _runtime_cgroup_dirs(lab):
                victims |= _cgroup_pids(d)
            victims -= keep | _ancestors()
            if not victims:
                break
            _kill(victims, report)
            _wait_gone(victims)
    return report


def clean_lab(lab: str) -> CleanReport:
    """Remove every process, namespace, mount, cgroup and file of lab ``lab``."""
    report = CleanReport(lab)
    st = read_state(lab) or {}
    if is_multihost(st):  # the record of a lab on several machines: clean each of them
        from testbed.multihost.controller import clean as clean_machines

        done = clean_machines(lab, st)
        report.machines, report.errors = done["machines"], done["errors"]
        return report
    sdir = state_dir(lab)
    # names are "<lab>-<host>": lab "a" host "b-c" and lab "a-b" host "c" share one. Never
    # touch a namespace another *running* lab recorded (a stale state may name it too).
    others: set[str] = set()
    for other in list_labs():
        if other != lab:
            ost = read_state(other)
            if is_running(ost):
                others.update((ost or {}).get("netns") or [])
    netns_names: list[str] = [n for n in (st.get("netns") or []) if n not in others]
    ns_paths = [Path("/run/netns") / n for n in netns_names]
    cg = Path(st["cgroup"]) if st.get("cgroup") else None

    # the lab's namespaces, read before anything is killed (a node's shell shows its pods' netns)
    recorded = [st.get("supervisor") or {}]
    recorded += list((st.get("hosts") or {}).values())
    recorded += list((st.get("services") or {}).values())
    shells = {rec["pid"] for rec in (st.get("hosts") or {}).values()
              if rec.get("kind") == "node" and rec.get("pid") and rec.get("start")
              and pid_alive(rec["pid"], rec["start"])}
    sup = st.get("supervisor") or {}
    # (held open until the kills are done: see PinnedNamespaces)
    namespaces = _lab_namespaces(shells, ns_paths, {sup["pid"]} if pid_alive(sup.get("pid"), sup.get("start"))
                                 else set())
    try:
        # 1. processes: the cgroup first (atomic kill), then recorded PIDs, then namespace members
        for _ in range(3):
            victims: set[int] = set()
            if cg is not None and cg.is_dir():
                members = _cgroup_pids(cg)
                try:
                    (cg / "cgroup.kill").write_text("1")
                    report.killed.extend(sorted(members))
                except OSError:
                    victims |= members  # no cgroup.kill (kernel < 5.14): kill them one by one
                _wait_gone(members)
            for rec in recorded:
                pid, start = rec.get("pid"), rec.get("start")
                if pid and start and pid_alive(pid, start):
                    victims.add(pid)
            for p in ns_paths:
                victims |= _netns_pids(p)
            victims |= _ns_member_pids(namespaces.ids)
            if st:
                victims |= _environ_pids(lab, st.get("part") or part())
                for d in _runtime_cgroup_dirs(lab):
                    victims |= _cgroup_pids(d)
            victims -= _ancestors()
            if not victims:
                break
            _kill(victims, report)
            _wait_gone(victims)
    finally:
        namespaces.close()

    # 2. namespaces: detaching the last reference frees veths, bridges, routes, iptables
    for name, path in zip(netns_names, ns_paths, strict=True):
        if not path.exists():
            continue
        res = subprocess.run(["ip", "netns", "delete", name], capture_output=True, text=True)
        if res.returncode != 0 and path.exists():
            report.errors.append(f"ip netns delete {name}: {res.stderr.strip()}")
        else:
            report.netns.append(name)

    # 3. mounts left under the state directory in this mount namespace
    for mp in _mounts_under([str(sdir)]):
        res = subprocess.run(["umount", "-l", mp], capture_output=True, text=True)
        (report.mounts if res.returncode == 0 else report.errors).append(
            mp if res.returncode == 0 else f"umount {mp}: {res.stderr.strip()}")

    # 4. cgroup and files
    if cg is not None and cg.is_dir():
        for sub in sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            try:
                sub.rmdir()
            except OSError:
                pass
        try:
            cg.rmdir()
            report.cgroup = str(cg)
        except OSError as exc:
            report.errors.append(f"rmdir {cg}: {exc.strerror}")
        try:
            cg.parent.rmdir()  # calicolab/ itself, when this was the last lab
        except OSError:
            pass
    for d in _runtime_cgroup_dirs(lab) if st else []:
        for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            try:
                sub.rmdir()
            except OSError:
                pass
        try:
            d.rmdir()
        except OSError as exc:
            report.errors.append(f"rmdir {d}: {exc.strerror}")
    if sdir.exists():
        shutil.rmtree(sdir, ignore_errors=True)
        if sdir.exists():
            report.errors.append(f"could not remove {sdir}")
    return report


def clean_all() -> list[CleanReport]:
    """Clean every lab that has a state directory (running or not)."""
    return [clean_lab(lab) for lab in list_labs()]
