"""Build the guest's initramfs (cached next to the kernel, keyed by a hash of its inputs).

The archive holds busybox-static, the kernel modules the tier needs (with their dependencies
from ``modules.dep``) and an ``/init`` that

1. mounts proc, sysfs and devtmpfs, loads the modules in dependency order,
2. mounts the host root read-only over 9p (tag ``host0``) on ``/host``, fresh proc, sysfs,
   devtmpfs, devpts and tmpfs on ``/host/tmp``, ``/host/run`` and ``/host/dev/shm``,
3. mounts the writable results share (tag ``results``) on ``/host/tmp/results``,
4. chroots into ``/host`` and runs the shell command carried base64-encoded in
   ``calicolab.cmd=`` on the kernel command line, with a clean environment,
5. writes ``guest-exit`` and uptimes to the results share and powers off.

Anything that goes wrong in /init prints ``calicolab-init: FAIL: ...`` on the console and
powers off, so the host sees no ``guest-exit`` file and reports the console.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

from testbed.kerneltier.cpio import Entry, archive
from testbed.kerneltier.fetch import GuestKernel

BUSYBOX = Path("/bin/busybox")
# Modules the tier needs; dependencies are added from modules.dep.
MODULES = (
    "virtio_pci",  # the PCI transport of the virtio-9p devices
    "9pnet_virtio",
    "9p",
    "veth",
    "bridge",  # stp, llc: the nodes' shared segment
)
# Shipped but NOT loaded at boot: the kernel loads them on demand through /sbin/modprobe
# (busybox, in the initramfs root where the kernel's usermode helper runs), as on an ordinary
# VM where ipip.ko is installed but not loaded until the first ipip device is asked for.
AUTOLOAD_MODULES = ("ipip",)  # tunnel4, ip_tunnel
APPLETS = (
    "sh", "mount", "umount", "mkdir", "insmod", "chroot", "cat", "cut", "echo",
    "poweroff", "sync", "base64", "sleep", "modprobe",
)  # fmt: skip
GUEST_PATH = "/work/main/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RESULTS_IN_GUEST = "/tmp/results"

INIT = r"""#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "calicolab-init: FAIL: $*"; sync; poweroff -f; sleep 5; exit 1; }
for m in $(cat /modules.load); do insmod "/modules/$m.ko" || fail "insmod $m"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose host0 /host \
    || fail "mount of the host root over 9p (tag host0)"
mount -t proc proc /host/proc || fail "proc in /host"
mount -t sysfs sysfs /host/sys || fail "sysfs in /host"
mount -t devtmpfs devtmpfs /host/dev || fail "devtmpfs in /host"
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/dev/shm
mount -t tmpfs -o mode=1777 tmpfs /host/tmp || fail "tmpfs on /host/tmp"
mount -t tmpfs -o mode=755 tmpfs /host/run || fail "tmpfs on /host/run"
R=/host@RESULTS@
mkdir -p "$R"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 results "$R" \
    || fail "mount of the results share (tag results)"
cmd=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in calicolab.cmd=*) cmd="${arg#calicolab.cmd=}" ;; esac
done
[ -n "$cmd" ] || fail "no calicolab.cmd= on the kernel command line"
script="$(echo "$cmd" | base64 -d)" || fail "calicolab.cmd= is not base64"
cut -d' ' -f1 /proc/uptime > "$R/uptime-start"
echo "calicolab-init: running the command"
chroot /host /usr/bin/env -i HOME=/tmp TMPDIR=/tmp LANG=C.UTF-8 PATH=@PATH@ \
    CALICOLAB_GUEST=1 CALICOLAB_RESULTS=@RESULTS@ /bin/sh -c "$script"
rc=$?
cut -d' ' -f1 /proc/uptime > "$R/uptime-end"
echo "$rc" > "$R/guest-exit"
sync
umount "$R"
echo "calicolab-init: done rc=$rc"
poweroff -f
sleep 5
"""


class InitramfsError(RuntimeError):
    """The initramfs could not be built from the cached kernel."""


def module_deps(modules_dep: str) -> dict[str, list[str]]:
    """Parse ``modules.dep`` text into {module name: [dependency names]}."""
    deps: dict[str, list[str]] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        path, _, rest = line.partition(":")
        name = _modname(path)
        deps[name] = [_modname(p) for p in rest.split()]
    return deps


def module_paths(modules_dep: str) -> dict[str, str]:
    """{module name: path relative to lib/modules/<release>} from ``modules.dep``."""
    out: dict[str, str] = {}
    for line in modules_dep.splitlines():
        if ":" in line:
            path = line.partition(":")[0]
            out[_modname(path)] = path
    return out


def _modname(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            return base[: -len(suffix)].replace("-", "_")
    return base.replace("-", "_")


def load_order(wanted: tuple[str, ...] | list[str], deps: dict[str, list[str]]) -> list[str]:
    """Modules to insmod, dependencies first, each once."""
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in chain:
            raise InitramfsError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        if name not in deps:
            raise InitramfsError(f"module {name!r} is not in the guest kernel's modules.dep")
        for dep in deps[name]:
            visit(dep, (*chain, name))
        order.append(name)

    for name in wanted:
        visit(name.replace("-", "_"), ())
    return order


def init_script() -> str:
    """The /init text with the guest paths filled in."""
    return INIT.replace("@RESULTS@", RESULTS_IN_GUEST).replace("@PATH@", GUEST_PATH)


def modules_tree(release: str, names: list[str], paths: dict[str, str], dep_text: str,
                 alias_text: str) -> tuple[list[str], str, str]:  # fmt: skip
    """Directories, ``modules.dep`` and ``modules.alias`` of a ``lib/modules/<release>`` that
    holds only ``names`` (their lines kept verbatim from the full files)."""
    keep = {paths[n] for n in names}
    dep = "".join(line + "\n" for line in dep_text.splitlines()
                  if line.partition(":")[0] in keep)  # fmt: skip
    wanted = set(names)
    alias = "".join(line + "\n" for line in alias_text.splitlines()
                    if line.startswith("alias ") and line.split()[-1] in wanted)  # fmt: skip
    dirs: list[str] = []
    for path in sorted(keep):
        parts = f"lib/modules/{release}/{path}".split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.append(d)
    return dirs, dep, alias


def entries(kernel: GuestKernel, busybox: bytes) -> list[Entry]:
    """All archive members for ``kernel``."""
    dep_text = (kernel.modules / "modules.dep").read_text()
    deps = module_deps(dep_text)
    paths = module_paths(dep_text)
    order = load_order(MODULES, deps)
    lazy = [m for m in load_order(AUTOLOAD_MODULES, deps) if m not in order]
    out = [Entry.dir(d) for d in ("bin", "sbin", "dev", "proc", "sys", "host", "modules", "tmp")]
    out.append(Entry.symlink("sbin/modprobe", "/bin/busybox"))
    out.append(Entry.chardev("dev/console", 5, 1))
    out.append(Entry.chardev("dev/null", 1, 3, 0o666))
    out.append(Entry.file("bin/busybox", busybox, 0o755))
    out += [Entry.symlink(f"bin/{a}", "busybox") for a in APPLETS]
    for name in order:
        path = kernel.modules / paths[name]
        if path.suffix != ".ko":
            raise InitramfsError(f"{path} is compressed; busybox insmod needs plain .ko files")
        out.append(Entry.file(f"modules/{name}.ko", path.read_bytes()))
    out.append(Entry.file("modules.load", ("\n".join(order) + "\n").encode()))
    alias_path = kernel.modules / "modules.alias"
    dirs, dep, alias = modules_tree(kernel.release, lazy, paths, dep_text,
                                    alias_path.read_text() if alias_path.exists() else "")  # fmt: skip
    out += [Entry.dir(d) for d in dirs]
    root = f"lib/modules/{kernel.release}"
    for name in lazy:
        out.append(Entry.file(f"{root}/{paths[name]}", (kernel.modules / paths[name]).read_bytes()))
    out.append(Entry.file(f"{root}/modules.dep", dep.encode()))
    out.append(Entry.file(f"{root}/modules.alias", alias.encode()))
    out.append(Entry.file("init", init_script().encode(), 0o755))
    return out


def build(kernel: GuestKernel, busybox: Path = BUSYBOX) -> Path:
    """Return the cached initramfs for ``kernel``, building it if its inputs changed."""
    if not busybox.exists():
        raise InitramfsError(f"{busybox} is missing: install busybox-static (scripts/setup.sh)")
    members = entries(kernel, busybox.read_bytes())
    digest = hashlib.sha256()
    for e in members:
        digest.update(f"{e.name}\0{e.mode}\0{e.rdev}\0{len(e.data)}\0".encode())
        digest.update(e.data)
    out = kernel.root / f"initrd-{digest.hexdigest()[:16]}.gz"
    if out.exists():
        return out
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    with open(tmp, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(archive(members))
    tmp.replace(out)
    return out
