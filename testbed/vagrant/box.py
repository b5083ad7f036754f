"""Build calicolab's Vagrant box for libvirt from Debian packages (debootstrap; no box download).

``python -m testbed.vagrant.box`` builds (or finds in the cache) and prints the path of
``.cache/vagrant/box/<key>/calicolab-debian12.box``: a libvirt box (``box.img`` qcow2,
``metadata.json``, ``Vagrantfile``) holding Debian 12 with

- Debian's stock kernel (it has ``ipip``), GRUB on the disk, systemd, sshd, sudo, ifupdown
  with DHCP on ``eth0``, and a ``vagrant`` user with Vagrant's insecure key (Vagrant
  replaces it with a key of its own on the first ``vagrant up``);
- every Debian package ``scripts/setup.sh --guest`` installs (the list is read from it), with
  their daemons (etcd, BIRD, nginx, containerd, Docker, Open vSwitch) disabled: labs start their own;
- a wheelhouse at ``/opt/calicolab/wheels`` with the project's Python dependencies
  (pyproject.toml), which setup.sh installs from without an index;

so ``vagrant up`` provisions it (``scripts/setup.sh --guest``) without a network.

The cache key is a hash of the inputs (:class:`Recipe`: suite, mirror, packages, Python
requirements, recipe version): a rebuild happens only when one changes. Downloaded
``.deb`` files and wheels are kept under ``.cache/vagrant/`` so a rebuild after a change
fetches only what is new. Needs root (loop device, mount, chroot).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "vagrant"
BOX_NAME = "calicolab/debian12-local"
BOX_FILE = "calicolab-debian12.box"
#: bump when the steps below change in a way the other inputs do not show
RECIPE_VERSION = 3
SUITE = "bookworm"
DISK_GB = 8
ROOT_LABEL = "calicolab-root"
#: what a Vagrant VM needs besides the lab's packages
BASE_PACKAGES = (
    "systemd-sysv", "udev", "dbus", "linux-image-amd64", "grub-pc", "initramfs-tools",
    "openssh-server", "sudo", "ifupdown", "isc-dhcp-client", "ca-certificates", "rsync",
    "less", "procps", "iproute2", "kmod", "python3-pip",
)
#: daemons the lab packages enable that a lab runs itself (inside its nodes)
DISABLED_UNITS = (
    "etcd.service", "bird.service", "bird6.service", "nginx.service", "containerd.service",
    "docker.service", "docker.socket",
    "openvswitch-switch.service", "ovsdb-server.service", "ovs-vswitchd.service",
    "iperf3.service", "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
    "fstrim.timer", "man-db.timer", "logrotate.timer",
)
KERNEL_CMDLINE = "console=ttyS0,115200 net.ifnames=0 biosdevname=0 quiet"
VAGRANT_PUBKEY_GLOB = "/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub"

Progress = Callable[[str], None]


class BoxError(RuntimeError):
    """The box could not be built; the message names the step and the log."""


@dataclass(frozen=True)
class Recipe:
    """Everything the box is built from; its hash is the cache key."""

    suite: str
    mirror: str
    packages: tuple[str, ...]
    requirements: tuple[str, ...]
    requirement_files: tuple[tuple[str, str], ...] = ()  # (path in the repo, its text)
    recipe_version: int = RECIPE_VERSION
    disk_gb: int = DISK_GB
    cmdline: str = KERNEL_CMDLINE

    def key(self) -> str:
        """A short hash of the recipe."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def guest_packages(repo: Path = REPO) -> list[str]:
    """The Debian packages ``scripts/setup.sh --guest`` installs (its list, read from it)."""
    res = subprocess.run(["bash", str(repo / "scripts" / "setup.sh"), "--guest", "--print-packages"],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0 or not res.stdout.split():
        raise BoxError(f"scripts/setup.sh --print-packages failed: {res.stderr.strip()}")
    return res.stdout.split()


def python_requirements(repo: Path = REPO) -> list[str]:
    """The project's Python requirements: build system, dependencies and the dev extra."""
    data = tomllib.loads((repo / "pyproject.toml").read_text())
    reqs = list(data.get("build-system", {}).get("requires", []))
    project = data.get("project", {})
    reqs += project.get("dependencies", [])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    return sorted(set(reqs + ["pip", "setuptools", "wheel"]))


def requirement_files(repo: Path = REPO) -> list[tuple[str, str]]:
    """``scripts/requirements/*.txt`` (pinned with hashes; setup.sh installs them): path, text."""
    return [(str(p.relative_to(repo)), p.read_text())
            for p in sorted((repo / "scripts" / "requirements").glob("*.txt"))]


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (default deb.debian.org)."""
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            parts = line.split()
            for p in parts:
                if p.startswith("http") and p.rstrip("/").endswith("/debian"):
                    return p.rstrip("/")
    return "http://deb.debian.org/debian"


def recipe(repo: Path = REPO) -> Recipe:
    """The recipe of the box this checkout would build."""
    pkgs = sorted(set(BASE_PACKAGES) | set(guest_packages(repo)))
    return Recipe(SUITE, debian_mirror(), tuple(pkgs), tuple(python_requirements(repo)),
                  tuple(requirement_files(repo)))


def box_path(r: Recipe, cache: Path = CACHE) -> Path:
    """Where the box of recipe ``r`` is (or will be) cached."""
    return cache / "box" / r.key() / BOX_FILE


# --------------------------------------------------------------------------- the build


class _Builder:
    def __init__(self, r: Recipe, work: Path, cache: Path, progress: Progress):
        self.r, self.work, self.cache, self.progress = r, work, cache, progress
        self.log = work / "build.log"
        self.mnt = work / "root"
        self.mounts: list[Path] = []
        self.loop: str | None = None

    def sh(self, argv: list[str], what: str, input: str | None = None,  # noqa: A002
           chroot: bool = False, env: dict[str, str] | None = None) -> str:
        if chroot:
            argv = ["chroot", str(self.mnt), *argv]
        full_env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C.UTF-8",
                        **(env or {}))
        if chroot:
            full_env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
        with open(self.log, "a") as log:
            log.write(f"\n$ {' '.join(argv)}\n")
            log.flush()
            res = subprocess.run(argv, input=input, stdout=subprocess.PIPE, stderr=log, text=True,
                                 env=full_env, check=False)
            log.write(res.stdout[-4000:])
        if res.returncode != 0:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
            raise BoxError(f"box build: {what} failed (exit {res.returncode}); log {self.log}:\n{tail}")
        return res.stdout

    def mount(self, argv: list[str], target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        self.sh(["mount", *argv, str(target)], f"mount {target}")
        self.mounts.append(target)

    def teardown(self) -> None:
        for target in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)
        self.mounts.clear()
        if self.loop:
            subprocess.run(["losetup", "-d", self.loop], capture_output=True, check=False)
            self.loop = None

    # -- steps
    def disk(self) -> str:
        raw = self.work / "disk.raw"
        with open(raw, "wb") as f:
            f.truncate(self.r.disk_gb << 30)
        self.sh(["sfdisk", "-q", str(raw)], "partitioning the disk",
                input="label: dos\nstart=2048, type=83, bootable\n")
        self.loop = self.sh(["losetup", "--find", "--show", "--partscan", str(raw)],
                            "attaching the disk to a loop device").strip()
        part = f"{self.loop}p1"
        deadline = time.monotonic() + 10
        while not Path(part).exists() and time.monotonic() < deadline:
            subprocess.run(["partx", "-a", self.loop], capture_output=True, check=False)
            time.sleep(0.2)
        if not Path(part).exists():
            raise BoxError(f"box build: partition {part} of {self.loop} did not appear")
        self.sh(["mkfs.ext4", "-q", "-L", ROOT_LABEL, part], "making the root filesystem")
        self.mount([part], self.mnt)
        return part

    def bootstrap(self) -> None:
        debs = self.cache / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        self.progress(f"debootstrap {self.r.suite} (minbase) from {self.r.mirror}")
        self.sh(["debootstrap", "--variant=minbase", f"--cache-dir={debs}", self.r.suite,
                 str(self.mnt), self.r.mirror], "debootstrap")
        for src, dst, kind in (("proc", "proc", ["-t", "proc", "proc"]),
                               ("sys", "sys", ["-t", "sysfs", "sysfs"]),
                               ("/dev", "dev", ["--bind", "/dev"]),
                               ("devpts", "dev/pts", ["-t", "devpts", "devpts"])):
            del src
            self.mount(kind, self.mnt / dst)
        # the package cache outlives the build: a rebuild downloads only what changed
        self.mount(["--bind", str(debs)], self.mnt / "var/cache/apt/archives")
        (self.mnt / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
        os.chmod(self.mnt / "usr/sbin/policy-rc.d", 0o755)
        m = self.r.mirror
        sec = m.rsplit("/debian", 1)[0] + "/debian-security"
        (self.mnt / "etc/apt/sources.list").write_text(
            f"deb {m} {self.r.suite} main\ndeb {m} {self.r.suite}-updates main\n"
            f"deb {sec} {self.r.suite}-security main\n")
        (self.mnt / "etc/apt/apt.conf.d/90calicolab").write_text(
            'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n'
            'Binary::apt::APT::Keep-Downloaded-Packages "true";\n')
        self.sh(["apt-get", "update", "-qq"], "apt-get update in the box", chroot=True)
        self.progress(f"installing {len(self.r.packages)} Debian packages")
        self.sh(["apt-get", "install", "-y", "-qq", *self.r.packages],
                "apt-get install in the box", chroot=True)

    def configure(self, part: str) -> None:
        m = self.mnt
        (m / "etc/hostname").write_text("calicolab\n")
        (m / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tcalicolab\n")
        (m / "etc/fstab").write_text(f"LABEL={ROOT_LABEL}\t/\text4\terrors=remount-ro\t0\t1\n")
        (m / "etc/network/interfaces").write_text(
            "source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n\n"
            "auto eth0\niface eth0 inet dhcp\n")
        self.sh(["useradd", "-m", "-s", "/bin/bash", "-G", "sudo", "vagrant"], "adding user vagrant",
                chroot=True)
        self.sh(["chpasswd"], "setting vagrant's password", chroot=True, input="vagrant:vagrant\n")
        (m / "etc/sudoers.d/vagrant").write_text("vagrant ALL=(ALL) NOPASSWD: ALL\n")
        os.chmod(m / "etc/sudoers.d/vagrant", 0o440)
        keys = sorted(Path("/").glob(VAGRANT_PUBKEY_GLOB.lstrip("/")))
        if not keys:
            raise BoxError(f"box build: Vagrant's insecure public key not found ({VAGRANT_PUBKEY_GLOB})")
        ssh = m / "home/vagrant/.ssh"
        ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
        (ssh / "authorized_keys").write_text(keys[-1].read_text())
        os.chmod(ssh / "authorized_keys", 0o600)
        self.sh(["chown", "-R", "vagrant:vagrant", "/home/vagrant/.ssh"], "chown .ssh", chroot=True)
        (m / "etc/ssh/sshd_config.d/calicolab.conf").write_text("UseDNS no\nPermitRootLogin prohibit-password\n")
        # the host keys made by openssh-server's postinst would be shared by every VM
        for key in (m / "etc/ssh").glob("ssh_host_*"):
            key.unlink()
        unit = m / "etc/systemd/system/calicolab-ssh-hostkeys.service"
        unit.write_text("[Unit]\nDescription=SSH host keys of this VM\nBefore=ssh.service\n"
                        "ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n\n"
                        "[Service]\nType=oneshot\nExecStart=/usr/bin/ssh-keygen -A\n\n"
                        "[Install]\nWantedBy=multi-user.target\n")
        self.sh(["systemctl", "enable", "calicolab-ssh-hostkeys.service"], "enable host keys unit",
                chroot=True)
        present = self.sh(["systemctl", "list-unit-files", "--no-legend", "--no-pager"],
                          "listing units", chroot=True)
        have = {line.split()[0] for line in present.splitlines() if line.split()}
        off = [u for u in DISABLED_UNITS if u in have]
        if off:
            self.sh(["systemctl", "disable", *off], "disabling lab daemons", chroot=True)
            self.sh(["systemctl", "mask", *off], "masking lab daemons", chroot=True)
        marker = m / "etc/calicolab"
        marker.mkdir(exist_ok=True)
        (marker / "box.json").write_text(json.dumps(
            {"box": BOX_NAME, "key": self.r.key(), "built": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                          time.gmtime()),
             **asdict(self.r)}, indent=1, default=list) + "\n")
        # GRUB on the disk; the serial console shows the boot in libvirt's log
        (m / "etc/default/grub").write_text(
            'GRUB_DEFAULT=0\nGRUB_TIMEOUT=0\nGRUB_DISTRIBUTOR="calicolab"\n'
            f'GRUB_CMDLINE_LINUX_DEFAULT=""\nGRUB_CMDLINE_LINUX="{self.r.cmdline}"\n'
            'GRUB_TERMINAL="serial console"\n'
            'GRUB_SERIAL_COMMAND="serial --speed=115200"\nGRUB_DISABLE_OS_PROBER=true\n')
        assert self.loop is not None
        self.sh(["grub-install", "--target=i386-pc", "--modules=part_msdos ext2", self.loop],
                "grub-install", chroot=True)
        self.sh(["update-grub"], "update-grub", chroot=True)
        # without udev in the chroot grub-mkconfig names the build's loop partition as root:
        # the VM's disk is found by its filesystem label instead
        grub_cfg = m / "boot/grub/grub.cfg"
        cfg = grub_cfg.read_text().replace(f"root={part} ", f"root=LABEL={ROOT_LABEL} ")
        if "vmlinuz" not in cfg or f"root=LABEL={ROOT_LABEL} " not in cfg or part in cfg:
            raise BoxError(f"box build: unexpected kernel entries in grub.cfg:\n{cfg[-800:]}")
        grub_cfg.write_text(cfg)

    def wheels(self) -> None:
        pip_cache = self.cache / "pip"
        dest = self.mnt / "opt/calicolab/wheels"
        dest.mkdir(parents=True, exist_ok=True)
        self.progress(f"downloading {len(self.r.requirements)} Python requirements into the wheelhouse")
        self.sh([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                 "--only-binary=:all:", "-d", str(dest), *self.r.requirements],
                "pip download (wheelhouse)", env={"PIP_CACHE_DIR": str(pip_cache)})
        for rel, text in self.r.requirement_files:
            req = self.work / Path(rel).name
            req.write_text(text)
            self.sh([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                     "--only-binary=:all:", "--no-deps", "--require-hashes", "-d", str(dest),
                     "-r", str(req)], f"pip download -r {rel}", env={"PIP_CACHE_DIR": str(pip_cache)})

    def finish(self) -> Path:
        self.sh(["apt-get", "clean"], "apt-get clean", chroot=True)  # only the bind-mounted cache
        (self.mnt / "usr/sbin/policy-rc.d").unlink()
        for p in ("etc/machine-id", "var/lib/dbus/machine-id"):
            f = self.mnt / p
            if f.exists():
                f.write_text("")  # systemd makes one per VM at first boot
        self.teardown()
        img = self.work / "box.img"
        self.progress("converting the disk to qcow2")
        self.sh(["qemu-img", "convert", "-O", "qcow2", str(self.work / "disk.raw"), str(img)],
                "qemu-img convert")
        (self.work / "disk.raw").unlink()
        (self.work / "metadata.json").write_text(json.dumps(
            {"provider": "libvirt", "format": "qcow2", "virtual_size": self.r.disk_gb}) + "\n")
        (self.work / "Vagrantfile").write_text(
            "# calicolab's local box (testbed/vagrant/box.py): Debian 12 for libvirt\n"
            "Vagrant.configure(\"2\") do |config|\n"
            "  config.vm.provider :libvirt do |lv|\n"
            "    lv.disk_bus = \"virtio\"\n"
            "  end\n"
            "end\n")
        box = self.work / BOX_FILE
        self.sh(["tar", "-cSf", str(box), "-C", str(self.work), "metadata.json", "Vagrantfile",
                 "box.img"], "tar (the .box)")
        img.unlink()
        return box


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def build(r: Recipe | None = None, cache: Path = CACHE, progress: Progress | None = None,
          force: bool = False) -> Path:
    """The cached box of recipe ``r`` (this checkout's by default); builds it if missing."""
    progress = progress or (lambda msg: print(f"box: {msg}", file=sys.stderr, flush=True))
    r = r or recipe()
    out = box_path(r, cache)
    with _lock(cache / "box.lock"):
        if out.exists() and not force:
            return out
        if os.geteuid() != 0:
            raise BoxError("building the box needs root (loop device, mount, chroot)")
        for tool in ("debootstrap", "sfdisk", "losetup", "mkfs.ext4", "qemu-img", "partx"):
            if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
                raise BoxError(f"building the box needs '{tool}': run scripts/setup.sh")
        work = out.parent.with_name(out.parent.name + ".build")
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        t0 = time.monotonic()
        b = _Builder(r, work, cache, progress)
        try:
            part = b.disk()
            b.bootstrap()
            b.configure(part)
            b.wheels()
            box = b.finish()
            (work / "recipe.json").write_text(json.dumps(asdict(r), indent=1) + "\n")
            (work / "build-seconds").write_text(f"{time.monotonic() - t0:.1f}\n")
        except BaseException:
            b.teardown()
            raise
        if out.parent.exists():
            shutil.rmtree(out.parent)
        work.rename(out.parent)
        del box
        progress(f"built {out} in {time.monotonic() - t0:.0f}s")
        # older boxes of this cache are superseded
        for old in (cache / "box").iterdir():
            if old.is_dir() and old != out.parent and not old.name.endswith(".build"):
                shutil.rmtree(old, ignore_errors=True)
        return out


def main(argv: list[str] | None = None) -> int:
    """CLI: build the box if needed and print its path."""
    ap = argparse.ArgumentParser(prog="python -m testbed.vagrant.box", description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    ap.add_argument("--print-key", action="store_true", help="print the recipe's cache key and exit")
    args = ap.parse_args(argv)
    try:
        r = recipe()
        if args.print_key:
            print(r.key())
            return 0
        print(build(r, force=args.force))
    except BoxError as exc:
        print(f"calicolab box: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
