"""libvirt on this machine for the Vagrant tier: its daemons, a storage pool, and what is left.

There is no systemd here (nor on CI's machine), so nothing starts libvirt by socket
activation: :class:`Daemons` starts ``virtlogd`` and ``libvirtd`` when they do not answer
and ends exactly those it started, by PID. :func:`inventory` lists what libvirt holds
(domains, networks, pools, volumes), the processes it runs for them (qemu, dnsmasq) and
its firewall chains, so a test can compare before and after ``vagrant destroy``.

libvirt 9 adds ``LIBVIRT_*`` chains to the machine's iptables when it starts its first
network and never removes them; :func:`restore_firewall` removes the ones a run added
(and only when no libvirt network is active), so the machine's firewall is as before.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

URI = "qemu:///system"
SOCKET = Path("/run/libvirt/libvirt-sock")
LOG_SOCKET = Path("/run/libvirt/virtlogd-sock")


class LibvirtError(RuntimeError):
    """libvirt could not be started or did not do what was asked."""


def virsh(*args: str, check: bool = True, timeout: float = 60) -> str:
    """``virsh -c qemu:///system ARGS``; its stdout."""
    res = subprocess.run(["virsh", "-q", "-c", URI, *args], capture_output=True, text=True,
                         timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise LibvirtError(f"virsh {' '.join(args)}: {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout


def _answers() -> bool:
    if not SOCKET.exists():
        return False
    res = subprocess.run(["virsh", "-q", "-c", URI, "version"], capture_output=True, text=True,
                         timeout=20, check=False)
    return res.returncode == 0


@dataclass
class Daemons:
    """virtlogd and libvirtd, started here if they were not running (and only those ended)."""

    started: list[tuple[str, int]] = field(default_factory=list)

    def ensure(self, timeout: float = 30) -> Daemons:
        """Make sure libvirtd answers on qemu:///system; start what is missing."""
        if _answers():
            return self
        if not LOG_SOCKET.exists() or not _pids_of("virtlogd"):
            self._spawn(["virtlogd"])
        if not _pids_of("libvirtd"):
            self._spawn(["libvirtd"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _answers():
                return self
            time.sleep(0.2)
        self.stop()
        raise LibvirtError(f"libvirtd did not answer on {URI} within {timeout:.0f}s")

    def _spawn(self, argv: list[str]) -> None:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        self.started.append((argv[0], proc.pid))

    def stop(self, timeout: float = 20) -> None:
        """End the daemons this object started (SIGTERM, then SIGKILL), newest first."""
        for name, pid in reversed(self.started):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(pid, os.WNOHANG) != (0, 0):
                        break
                except ChildProcessError:
                    if not Path(f"/proc/{pid}").exists():
                        break
                time.sleep(0.1)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
            del name
        self.started.clear()


def _pids_of(comm: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == comm:
                    out.append(int(entry.name))
            except OSError:
                pass
    return out


def _cmdlines(comm_prefix: str) -> dict[int, str]:
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "comm").read_text().strip().startswith(comm_prefix):
                continue
            out[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except OSError:
            pass
    return out


def ensure_pool(name: str, path: Path) -> None:
    """A directory storage pool ``name`` at ``path``, defined and active."""
    if name not in virsh("pool-list", "--all", "--name").split():
        path.mkdir(parents=True, exist_ok=True)
        virsh("pool-define-as", name, "dir", "--target", str(path))
    if name not in virsh("pool-list", "--name").split():
        virsh("pool-start", name)


def remove_pool(name: str) -> list[str]:
    """Delete every volume of pool ``name``, then the pool itself; returns what was removed."""
    removed = []
    if name not in virsh("pool-list", "--all", "--name").split():
        return removed
    virsh("pool-start", name, check=False)
    for vol in virsh("vol-list", name, check=False).splitlines():
        parts = vol.split()
        if parts:
            virsh("vol-delete", parts[0], "--pool", name)
            removed.append(f"volume {name}/{parts[0]}")
    virsh("pool-destroy", name, check=False)
    virsh("pool-delete", name, check=False)
    virsh("pool-undefine", name)
    removed.append(f"pool {name}")
    return removed


def remove_run(prefix: str, networks: tuple[str, ...], pool: str) -> list[str]:
    """Remove what one run made, by its names: domains named ``prefix*`` (stopped, undefined,
    with their storage), the ``networks`` and the storage ``pool``; returns what was removed.

    Only these names are touched: everything a run makes carries its unique tag."""
    removed = []
    for dom in virsh("list", "--all", "--name").split():
        if dom.startswith(prefix):
            virsh("destroy", dom, check=False)
            virsh("undefine", dom, "--remove-all-storage", "--nvram", check=False)
            if dom in virsh("list", "--all", "--name").split():
                virsh("undefine", dom, "--remove-all-storage")
            removed.append(f"domain {dom}")
    have = virsh("net-list", "--all", "--name").split()
    for net in networks:
        if net in have:
            virsh("net-destroy", net, check=False)
            virsh("net-undefine", net)
            removed.append(f"network {net}")
    return removed + remove_pool(pool)


def network_xml(name: str) -> str:
    """``virsh net-dumpxml NAME``."""
    return virsh("net-dumpxml", name)


def firewall_chains() -> dict[str, set[str]]:
    """libvirt's chains per iptables table (``LIBVIRT_*``)."""
    out: dict[str, set[str]] = {}
    res = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False)
    table = ""
    for line in res.stdout.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":LIBVIRT_"):
            out.setdefault(table, set()).add(line[1:].split()[0])
    return out


def restore_firewall(before: dict[str, set[str]]) -> list[str]:
    """Remove the ``LIBVIRT_*`` chains (and the jumps to them) that were not there ``before``.

    Only when libvirt runs no network: an active network still needs them."""
    if virsh("net-list", "--name", check=False).split():
        return []
    removed = []
    now = firewall_chains()
    for table, chains in now.items():
        extra = chains - before.get(table, set())
        if not extra:
            continue
        res = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True,
                             check=False)
        for line in res.stdout.splitlines():
            parts = line.split()
            if line.startswith("-A ") and "-j" in parts and parts[parts.index("-j") + 1] in extra \
                    and parts[1] not in extra:
                subprocess.run(["iptables", "-t", table, "-D", *parts[1:]], capture_output=True,
                               check=False)
        for chain in sorted(extra):
            subprocess.run(["iptables", "-t", table, "-F", chain], capture_output=True, check=False)
        for chain in sorted(extra):
            subprocess.run(["iptables", "-t", table, "-X", chain], capture_output=True, check=False)
            removed.append(f"iptables {table} {chain}")
    return removed


@dataclass(frozen=True)
class Inventory:
    """What libvirt holds, by name."""

    domains: frozenset[str]
    networks: frozenset[str]
    pools: frozenset[str]
    volumes: frozenset[str]
    processes: frozenset[str]  # "qemu <domain>" / "dnsmasq <network>"
    bridges: frozenset[str]  # libvirt's (virbrN)

    def minus(self, other: Inventory) -> dict[str, list[str]]:
        """What this inventory has that ``other`` has not, per kind (empty kinds left out)."""
        out = {}
        for kind in ("domains", "networks", "pools", "volumes", "processes", "bridges"):
            extra = sorted(getattr(self, kind) - getattr(other, kind))
            if extra:
                out[kind] = extra
        return out


def inventory() -> Inventory:
    """Everything libvirt holds now (needs libvirtd running)."""
    pools = frozenset(virsh("pool-list", "--all", "--name").split())
    volumes = set()
    for pool in pools:
        for line in virsh("vol-list", pool, check=False).splitlines():
            if line.split():
                volumes.add(f"{pool}/{line.split()[0]}")
    procs = set()
    for _pid, cmd in _cmdlines("qemu-system").items():
        words = cmd.split()
        if "-name" in words:
            procs.add(f"qemu {words[words.index('-name') + 1]}")
    for _pid, cmd in _cmdlines("dnsmasq").items():
        for w in cmd.split():
            if w.startswith("--conf-file=/var/lib/libvirt/dnsmasq/"):
                procs.add(f"dnsmasq {Path(w.split('=', 1)[1]).stem}")
    # libvirt's bridges (virbrN): other bridges on the machine belong to labs, not to libvirt
    bridges = {p.name for p in Path("/sys/class/net").iterdir()
               if (p / "bridge").exists() and p.name.startswith("virbr")}
    return Inventory(frozenset(virsh("list", "--all", "--name").split()),
                     frozenset(virsh("net-list", "--all", "--name").split()), pools,
                     frozenset(volumes), frozenset(procs), frozenset(bridges))
