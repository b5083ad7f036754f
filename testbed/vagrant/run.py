"""The Vagrantfile for real on this machine: the local box, ``vagrant up``, the demo inside, destroy.

``python -m testbed.vagrant.run [--layout single|multi]`` (root) prints a table of the
timings (box build or cache hit, ``vagrant up`` with provisioning, the demo, ``vagrant
destroy``) and writes JSON (``--json``). Everything it makes in libvirt carries a unique
tag: the domains' prefix, the management network, the storage pool (and with it the box's
volume); :meth:`VagrantRun.destroy` removes all of it, and the libvirt daemons and
firewall chains it started or added (:mod:`testbed.vagrant.libvirt`).

Vagrant's state goes to a directory of the run (``VAGRANT_DOTFILE_PATH``), boxes to
``.cache/vagrant/home`` (``VAGRANT_HOME``; the box is added once per recipe key).
No KVM here: the domain type is qemu (TCG) unless ``/proc/cpuinfo`` shows vmx or svm.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from testbed.vagrant import box as boxmod
from testbed.vagrant import libvirt

REPO = boxmod.REPO
VAGRANT_HOME = boxmod.CACHE / "home"
#: one record per run in progress (its tag, owner, the daemons it started, the firewall before),
#: so a run that was killed is cleaned up by the next one (:func:`reap_stale`)
RUNS = Path("/var/lib/calicolab/vagrant-runs")
MULTI_VMS = ("k8s-m", "k8s-w0", "k8s-w1")
#: Python under TCG runs 10-20x slower (kernel-tier.md): the demo's deadlines scale with it
TCG_DEADLINE_SCALE = 10


class VagrantError(RuntimeError):
    """A vagrant step failed; the message has the command and the tail of its output."""


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    return start is not None and _start_time(pid) == start


def run_names(tag: str) -> tuple[str, tuple[str, ...], str]:
    """What a run of tag ``tag`` names in libvirt: (domain prefix, networks, storage pool)."""
    return f"calicolab-{tag}-", (f"calicolab-{tag}", f"calicolab-lab-{tag}"), f"calicolab-{tag}"


def reap_stale(daemons: libvirt.Daemons, runs: Path = RUNS) -> list[str]:
    """Remove what runs whose process is gone (killed, machine stopped) left in libvirt, by
    their recorded tags only; their libvirt daemons are adopted by ``daemons`` (ended with
    it) and the firewall chains they added are removed. Returns what was removed."""
    removed: list[str] = []
    if not runs.is_dir():
        return removed
    for rec_path in sorted(runs.glob("*.json")):
        try:
            rec = json.loads(rec_path.read_text())
        except (OSError, ValueError):
            rec_path.unlink(missing_ok=True)
            continue
        if _alive(rec["owner"], rec.get("owner_start")):
            continue
        for name, pid, start in rec.get("daemons", []):
            if _alive(pid, start) and (name, pid) not in daemons.started:
                daemons.started.insert(0, (name, pid))
        prefix, networks, pool = run_names(rec["tag"])
        removed += libvirt.remove_run(prefix, networks, pool)
        removed += libvirt.restore_firewall({t: set(c) for t, c in rec.get("firewall", {}).items()})
        rec_path.unlink(missing_ok=True)
    return removed


def prune_boxes(current: str, home: Path = VAGRANT_HOME) -> list[str]:
    """Remove the boxes of earlier recipes from Vagrant's box store (``current``: the box's name)."""
    removed = []
    base = home / "boxes"
    prefix = boxmod.BOX_NAME.replace("/", "-VAGRANTSLASH-") + "-"
    keep = current.replace("/", "-VAGRANTSLASH-")
    if base.is_dir():
        for d in base.iterdir():
            if d.name.startswith(prefix) and d.name != keep:
                shutil.rmtree(d, ignore_errors=True)
                removed.append(f"box {d.name}")
    return removed


def has_kvm() -> bool:
    """True only when the CPU advertises hardware virtualisation (vmx/svm) and /dev/kvm exists
    (this machine's /dev/kvm opens but breaks guests: kernel-tier.md)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return Path("/dev/kvm").exists() and (" vmx" in flags or " svm" in flags)


@dataclass
class VagrantRun:
    """One ``vagrant up`` ... ``vagrant destroy`` of the Vagrantfile with the local box."""

    layout: str = "single"
    memory: int = 3072
    cpus: int = 1
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="calicolab-vagrant-")))
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    timings: dict[str, float] = field(default_factory=dict)
    box: Path | None = None
    daemons: libvirt.Daemons = field(default_factory=libvirt.Daemons)
    firewall_before: dict = field(default_factory=dict)
    log: Path | None = None

    reaped: list[str] = field(default_factory=list)
    left_by_vagrant: list[str] = field(default_factory=list)
    clean: bool = False

    @property
    def pool(self) -> str:
        return run_names(self.tag)[2]

    @property
    def record(self) -> Path:
        return RUNS / f"{self.tag}.json"

    def _write_record(self) -> None:
        RUNS.mkdir(parents=True, exist_ok=True)
        self.record.write_text(json.dumps({
            "tag": self.tag, "owner": os.getpid(), "owner_start": _start_time(os.getpid()),
            "daemons": [[n, p, _start_time(p)] for n, p in self.daemons.started],
            "firewall": {t: sorted(c) for t, c in self.firewall_before.items()}}) + "\n")

    def env(self) -> dict[str, str]:
        """The environment every vagrant command of this run gets."""
        assert self.box is not None
        key = self.box.parent.name
        n = int(self.tag, 16) % 200 + 20
        env = dict(os.environ)
        env.update({
            "VAGRANT_HOME": str(VAGRANT_HOME),
            "VAGRANT_DOTFILE_PATH": str(self.workdir / "vagrant"),
            "VAGRANT_DEFAULT_PROVIDER": "libvirt",
            "VAGRANT_CHECKPOINT_DISABLE": "1",
            "VAGRANT_NO_COLOR": "1",
            "CALICOLAB_BOX": f"{boxmod.BOX_NAME}-{key}",
            "CALICOLAB_BOX_URL": f"file://{self.box}",
            "CALICOLAB_LAYOUT": self.layout,
            "CALICOLAB_VM_MEMORY": str(self.memory),
            "CALICOLAB_VM_CPUS": str(self.cpus),
            "CALICOLAB_LIBVIRT_TCG": "0" if has_kvm() else "1",
            "CALICOLAB_LIBVIRT_POOL": self.pool,
            "CALICOLAB_LIBVIRT_PREFIX": f"calicolab-{self.tag}-",
            "CALICOLAB_MGMT_NETWORK": f"calicolab-{self.tag}",
            "CALICOLAB_MGMT_CIDR": f"172.31.{n}.0/24",
            "CALICOLAB_LAB_NETWORK": f"calicolab-lab-{self.tag}",
            "CALICOLAB_DEMO": "0",  # the demo runs as its own, timed step
            "CALICOLAB_SERIAL_DIR": str(self.workdir),
        })
        return env

    def vagrant(self, *args: str, timeout: float = 3600, check: bool = True) -> subprocess.CompletedProcess:
        """``vagrant ARGS`` in the repo with this run's environment; output appended to the log."""
        assert self.log is not None
        with open(self.log, "a") as log:
            log.write(f"\n$ vagrant {' '.join(args)}\n")
            log.flush()
            res = subprocess.run(["vagrant", *args], cwd=REPO, env=self.env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)
            log.write(res.stdout)
        if check and res.returncode != 0:
            tail = "\n".join(res.stdout.splitlines()[-25:])
            raise VagrantError(f"vagrant {' '.join(args)} exited {res.returncode}:\n{tail}")
        return res

    def _timed(self, name: str, fn, *args, **kwargs):  # noqa: ANN001, ANN202
        t = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            self.timings[name] = round(time.monotonic() - t, 1)

    # -- steps
    def prepare(self) -> libvirt.Inventory:
        """Box (built or cached), libvirt running, the run's pool; the inventory before."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / "vagrant.log"
        t = time.monotonic()
        self.box = boxmod.build()
        self.timings["box"] = round(time.monotonic() - t, 1)
        self.reaped += prune_boxes(self.env()["CALICOLAB_BOX"])
        self._write_record()
        self.daemons.ensure()
        self.reaped += reap_stale(self.daemons)
        self.firewall_before = libvirt.firewall_chains()
        self._write_record()
        before = libvirt.inventory()
        libvirt.ensure_pool(self.pool, Path("/var/lib/libvirt") / self.pool)
        return before

    def up(self) -> None:
        """``vagrant up`` (adds the box, makes the domains, provisions setup.sh --guest)."""
        self._timed("up", self.vagrant, "up", "--provider", "libvirt", timeout=5400)

    def ssh(self, machine: str, command: str, timeout: float = 3600,
            check: bool = True) -> subprocess.CompletedProcess:
        """``vagrant ssh MACHINE -c COMMAND``."""
        return self.vagrant("ssh", machine, "-c", command, timeout=timeout, check=check)

    def demo(self, keep: bool = False) -> subprocess.CompletedProcess:
        """``calicolab demo`` inside the single VM, timed; the completed process (not checked).
        ``keep`` leaves the lab up (``calicolab down`` inside removes it)."""
        scale = "1" if has_kvm() else str(TCG_DEADLINE_SCALE)
        return self._timed("demo", self.ssh, "calicolab",
                           f"cd /vagrant && sudo env CALICOLAB_DEADLINE_SCALE={scale} "
                           ".venv/bin/calicolab demo" + (" --keep" if keep else ""), check=False)

    def demo_multi(self) -> subprocess.CompletedProcess:
        """``calicolab demo --topology topologies/vagrant-multi.yaml`` from here, over SSH to the
        VMs (one Kubernetes node each), timed; the completed process (not checked)."""
        env = dict(os.environ, CALICOLAB_DEADLINE_SCALE="1" if has_kvm() else str(TCG_DEADLINE_SCALE),
                   CALICOLAB_SSH_TIMEOUT="30")
        argv = [sys.executable, "-m", "testbed.cli", "demo", "--name", f"vm{self.tag}",
                "--topology", str(REPO / "topologies" / "vagrant-multi.yaml")]
        return self._timed("demo", subprocess.run, argv, capture_output=True, text=True,
                           timeout=7200, env=env, cwd=REPO)

    def destroy(self) -> list[str]:
        """``vagrant destroy -f``, then the run's pool (box volume), daemons and chains we added.

        Whatever of the run's domains and networks ``vagrant destroy`` left is removed too,
        by name, and listed in :attr:`left_by_vagrant`."""
        removed: list[str] = []
        t = time.monotonic()
        try:
            if self.log is not None and self.box is not None:
                self.vagrant("destroy", "-f", timeout=900, check=False)
        finally:
            self.timings["destroy"] = round(time.monotonic() - t, 1)
            if self.daemons.started or libvirt.SOCKET.exists():
                prefix, networks, pool = run_names(self.tag)
                try:
                    gone = libvirt.remove_run(prefix, networks, pool)
                    self.left_by_vagrant = [g for g in gone if g.startswith(("domain ", "network "))]
                    removed += gone
                except libvirt.LibvirtError as exc:
                    removed.append(f"error: {exc}")
                removed += libvirt.restore_firewall(self.firewall_before)
            self.clean = not any(r.startswith("error: ") for r in removed)
        return removed

    def stop_daemons(self) -> None:
        """End the libvirt daemons this run started (none if libvirt was running before);
        the run's record goes once everything of it is gone."""
        self.daemons.stop()
        if self.clean:
            self.record.unlink(missing_ok=True)

    def cleanup_workdir(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """CLI: one timed run; prints the table (and JSON with --json)."""
    ap = argparse.ArgumentParser(prog="python -m testbed.vagrant.run", description=__doc__.splitlines()[0])
    ap.add_argument("--layout", choices=("single", "multi"), default="single")
    ap.add_argument("--memory", type=int, default=3072)
    ap.add_argument("--json", help="write the timings here")
    ap.add_argument("--keep", action="store_true", help="do not destroy (vagrant state stays in the workdir)")
    args = ap.parse_args(argv)
    run = VagrantRun(args.layout, memory=args.memory)
    load = os.getloadavg()
    ok = False
    demo_out = ""
    before = None
    try:
        before = run.prepare()
        run.up()
        if args.layout == "single":
            res = run.demo()
            demo_out = res.stdout
            ok = res.returncode == 0
        else:
            res = run.demo_multi()
            demo_out = res.stdout + res.stderr
            ok = res.returncode == 0
    finally:
        if not args.keep:
            removed = run.destroy()
            left = libvirt.inventory().minus(before) if before is not None else {}
            run.stop_daemons()
            print(f"removed: {', '.join(removed) or '-'}; left behind: {left or 'nothing'}")
    print(demo_out[-3000:])
    rows = [("STEP", "SECONDS")] + [(k, f"{v:.1f}") for k, v in run.timings.items()]
    print("\n".join(f"{a:<10} {b:>8}" for a, b in rows))
    print(f"layout {args.layout}, load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
          f"TCG {not has_kvm()}, log {run.log}")
    if args.json:
        Path(args.json).write_text(json.dumps({"layout": args.layout, "timings": run.timings,
                                               "ok": ok, "loadavg": load}, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
