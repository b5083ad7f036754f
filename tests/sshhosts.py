"""'Remote hosts' on this machine for the multi-host tests: network namespaces running sshd.

Each :class:`SimHost` is a netns on an underlay bridge (a netns of its own) running
Debian's ``/usr/sbin/sshd`` with its own config, host key, authorized key, port and pid
file, listening only on its own address; its lab parts keep their state in a run root of
their own (``runDir``), so nothing collides with this machine's labs. This machine (the
test, as the controller) reaches them through one veth into the underlay, in
198.18.<n>.0/24 (RFC 2544's benchmarking range; never routed beyond it). A netns shares
the filesystem and the PID space: what makes a host distinct is its address, its sshd, its
run root and its ``CALICOLAB_PART`` (see testbed.multihost). sshd starts through ``ip netns
exec``, which gives it a mount namespace of its own: the namespaces a host's lab attaches
under /run/netns are mounted there, so look at them with :meth:`SimHosts.sh`.

:meth:`SimHosts.kill` makes a host die mid-lab (its sshd ended, its link to the underlay
cut); :meth:`SimHosts.reap` then removes what its part left, as if it came back.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.support import unique

REPO = Path(__file__).resolve().parents[1]
SSHD = "/usr/sbin/sshd"
#: the walkthrough's members over two hosts: lan0 spans them, inet is on hb only
SPREAD = {"k8s-m": "ha", "k8s-w0": "ha", "k8s-w1": "hb", "r0": "hb", "internet": "hb"}


def _sh(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(list(argv), capture_output=True, text=True, check=False, **kw)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {res.stderr.strip()}")
    return res


def keygen(path: Path, comment: str) -> Path:
    """An unencrypted ed25519 key pair at ``path`` (and ``path.pub``)."""
    _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path))
    return path


@dataclass
class SimHost:
    """One simulated remote host."""

    name: str
    netns: str
    address: str
    port: int
    dir: Path
    proc: subprocess.Popen | None = None

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    @property
    def host_pub(self) -> Path:
        return self.dir / "ssh_host_ed25519_key.pub"

    def spec(self, key: Path, **extra) -> dict:
        """This host as a topology's ``hosts:`` entry."""
        return {"name": self.name, "address": self.address, "port": self.port, "user": "root",
                "key": str(key), "hostKey": str(self.host_pub), "repo": str(REPO),
                "runDir": str(self.run_dir), **extra}


class SimHosts:
    """Several simulated hosts on one underlay; ``close()`` removes all of it."""

    def __init__(self, base: Path, names: tuple[str, ...] = ("ha", "hb")):
        self.tag = unique("sh")
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.hosts: dict[str, SimHost] = {}
        self.made_netns: list[str] = []
        self.root_if = f"{self.tag}c"
        self.subnet = self._free_subnet()
        self.key = keygen(base / "client_key", "calicolab-test-client")
        self.other_key = keygen(base / "other_key", "not-authorized")
        try:
            self._underlay()
            for i, name in enumerate(names):
                self._host(name, i)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _free_subnet() -> int:
        used = _sh("ip", "-4", "route", "show", "table", "all").stdout
        for _ in range(50):
            n = random.randint(1, 254)
            if f"198.18.{n}." not in used:
                return n
        raise AssertionError("no free 198.18.<n>.0/24 for the test hosts")

    def _netns(self, name: str) -> str:
        _sh("ip", "netns", "add", name)
        self.made_netns.append(name)
        _sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def _underlay(self) -> None:
        self.ul = self._netns(f"{self.tag}-ul")
        _sh("ip", "-n", self.ul, "link", "add", "br0", "type", "bridge")
        _sh("ip", "-n", self.ul, "link", "set", "br0", "up")
        _sh("ip", "link", "add", self.root_if, "type", "veth", "peer", "name", "ctl", "netns", self.ul)
        _sh("ip", "-n", self.ul, "link", "set", "ctl", "master", "br0", "up")
        _sh("ip", "addr", "add", f"198.18.{self.subnet}.1/24", "dev", self.root_if)
        _sh("ip", "link", "set", self.root_if, "up")

    def _host(self, name: str, i: int) -> None:
        ns = self._netns(f"{self.tag}-{name}")
        addr = f"198.18.{self.subnet}.{10 + i}"
        port = 2200 + i
        _sh("ip", "link", "add", "up0", "netns", ns, "type", "veth", "peer", "name", f"p{name}",
            "netns", self.ul)
        _sh("ip", "-n", self.ul, "link", "set", f"p{name}", "master", "br0", "up")
        _sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "up0")
        _sh("ip", "-n", ns, "link", "set", "up0", "up")
        d = self.base / name
        d.mkdir()
        (d / "run").mkdir()
        keygen(d / "ssh_host_ed25519_key", f"{name}-host")
        shutil.copy(self.key.with_suffix(".pub"), d / "authorized_keys")
        cfg = d / "sshd_config"
        cfg.write_text("\n".join([
            f"Port {port}", f"ListenAddress {addr}", f"HostKey {d / 'ssh_host_ed25519_key'}",
            f"PidFile {d / 'sshd.pid'}", f"AuthorizedKeysFile {d / 'authorized_keys'}",
            "PermitRootLogin prohibit-password", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "UseDNS no",
            "PrintMotd no", "Subsystem sftp internal-sftp", "MaxStartups 50:30:100",
            "MaxSessions 50", ""]))
        host = SimHost(name, ns, addr, port, d)
        self.hosts[name] = host
        self._sshd(host)

    @staticmethod
    def _sshd(h: SimHost) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        log = open(h.dir / "sshd.log", "ab")  # noqa: SIM115 - kept by sshd
        h.proc = subprocess.Popen(["ip", "netns", "exec", h.netns, SSHD, "-D", "-e", "-f",
                                   str(h.dir / "sshd_config")], stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((h.address, h.port), timeout=1).close()
                return
            except OSError:
                if h.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"sshd of {h.name} did not start: "
                                         f"{(h.dir / 'sshd.log').read_text()[-500:]}") from None
                time.sleep(0.05)

    def __getitem__(self, name: str) -> SimHost:
        return self.hosts[name]

    def specs(self, **extra) -> list[dict]:
        """Every host as a topology's ``hosts:`` entry."""
        return [h.spec(self.key, **extra) for h in self.hosts.values()]

    def kill(self, name: str) -> None:
        """The host dies: its sshd ends and its link to the underlay is cut (its lab processes,
        on this same machine, are out of reach like a dead machine's)."""
        h = self.hosts[name]
        if h.proc is not None and h.proc.poll() is None:
            os.killpg(h.proc.pid, signal.SIGKILL)
            h.proc.wait()
        _sh("ip", "-n", self.ul, "link", "del", f"p{name}", check=False)

    def revive(self, name: str) -> None:
        """The host comes back: link to the underlay and sshd again (same keys, same address)."""
        h = self.hosts[name]
        _sh("ip", "link", "add", "up0", "netns", h.netns, "type", "veth", "peer", "name",
            f"p{name}", "netns", self.ul)
        _sh("ip", "-n", self.ul, "link", "set", f"p{name}", "master", "br0", "up")
        _sh("ip", "-n", h.netns, "addr", "add", f"{h.address}/24", "dev", "up0")
        _sh("ip", "-n", h.netns, "link", "set", "up0", "up")
        self._sshd(h)

    def sh(self, name: str, *argv: str) -> subprocess.CompletedProcess:
        """Run ``argv`` as on host ``name``: in its sshd's network and mount namespaces (what
        its lab parts attach under /run/netns is mounted there, not in this one's)."""
        h = self.hosts[name]
        assert h.proc is not None and h.proc.poll() is None, f"{name} is down"
        return _sh("nsenter", "-t", str(h.proc.pid), "-n", "-m", "--", *argv, check=False)

    def part_env(self, name: str) -> dict[str, str]:
        """The environment of host ``name``'s lab part (to act for it from here)."""
        h = self.hosts[name]
        return dict(os.environ, CALICOLAB_PART=name, CALICOLAB_RUN=str(h.run_dir),
                    CALICOLAB_PCAPS=str(h.run_dir / "pcaps"))

    def reap(self, name: str, lab: str) -> str:
        """Remove what host ``name``'s part of ``lab`` left (as the host would after coming back)."""
        res = _sh(str(REPO / ".venv" / "bin" / "python"), "-m", "testbed.cli", "clean", lab,
                  check=False, env=self.part_env(name), cwd=str(REPO))
        return res.stdout + res.stderr

    def close(self) -> None:
        for h in self.hosts.values():
            if h.proc is not None and h.proc.poll() is None:
                try:
                    os.killpg(h.proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                h.proc.wait()
        for ns in reversed(self.made_netns):
            for pid in _sh("ip", "netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
            _sh("ip", "netns", "delete", ns, check=False)
        _sh("ip", "link", "del", self.root_if, check=False)


def part_leftovers(hosts: SimHosts | None, name: str, lab: str,
                   run_dir: Path | None = None) -> list[str]:
    """What machine ``name``'s part of ``lab`` still has: its state dir, netns, processes,
    cgroup (``run_dir``: its state root, default the simulated host's)."""
    run_dir = run_dir or hosts[name].run_dir  # type: ignore[index]
    left = []
    if (run_dir / lab).exists():
        left.append(f"state dir {run_dir / lab}")
    try:
        import json

        st = json.loads((run_dir / lab / "state.json").read_text())
        for ns in st.get("netns") or []:
            if Path(f"/run/netns/{ns}").exists():
                left.append(f"netns {ns}")
    except (OSError, ValueError):
        pass
    for ns in Path("/run/netns").iterdir() if Path("/run/netns").exists() else []:
        if ns.name.startswith(f"{lab}-") and ns.name.endswith(f"@{name}"):
            left.append(f"netns {ns.name}")
    marker, mine = f"CALICOLAB_LAB={lab}".encode(), f"CALICOLAB_PART={name}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in env and mine in env:
            left.append(f"process {entry.name}")
    for root in (Path("/sys/fs/cgroup/calicolab"),):
        if (root / f"{lab}@{name}").exists():
            left.append(f"cgroup {root / f'{lab}@{name}'}")
    return left


def spread_walkthrough(tmp_path: Path, hs: SimHosts, lab: str, **host_extra) -> Path:
    """topologies/walkthrough.yaml named ``lab`` with its members over the hosts ``hs`` as
    :data:`SPREAD` places them, in the etcd datastore; the path of the file written under ``tmp_path``."""
    data = yaml.safe_load((REPO / "topologies" / "walkthrough.yaml").read_text())
    data["name"] = lab
    data["hosts"] = hs.specs(**host_extra)
    data["calico"]["datastore"] = "etcdv3"  # a lab over several machines: etcd (docs/multihost.md)
    for section in ("nodes", "routers", "external"):
        for m in data[section]:
            m["host"] = SPREAD[m["name"]]
    path = tmp_path / f"{lab}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
