"""Fetch Debian's stock kernel package for the guest and cache it, keyed by its version.

``python -m testbed.kerneltier.fetch`` is idempotent: it prints the cache directory
(``.cache/kernel/<release>/``) holding

- ``vmlinuz`` (the package's compressed kernel), ``vmlinux`` (the ELF image decompressed
  from it, which boots twice as fast under TCG),
- ``lib/modules/<release>/`` with a ``modules.dep`` made by ``depmod``,
- ``config`` (the kernel's build config) and ``VERSION`` (package name and version).

Nothing is installed: the package is fetched with ``apt-get download`` and unpacked with
``dpkg -x``; ``/boot`` is untouched.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE_ROOT = REPO / ".cache" / "kernel"
META_PACKAGE = "linux-image-amd64"
XZ_MAGIC = b"\xfd7zXZ\x00"
RELEASE_RE = re.compile(r"^\d+\.\d+\.\d+-\d+-amd64$")


class FetchError(RuntimeError):
    """The guest kernel could not be fetched or prepared."""


@dataclass(frozen=True)
class GuestKernel:
    """A cached guest kernel: where its files are."""

    release: str
    root: Path

    @property
    def vmlinux(self) -> Path:
        """The uncompressed ELF kernel (PVH entry), what qemu boots."""
        return self.root / "vmlinux"

    @property
    def vmlinuz(self) -> Path:
        """The package's compressed bzImage."""
        return self.root / "vmlinuz"

    @property
    def modules(self) -> Path:
        """``lib/modules/<release>`` of the package, with ``modules.dep``."""
        return self.root / "lib" / "modules" / self.release

    @property
    def config(self) -> Path:
        """The kernel's build configuration."""
        return self.root / "config"

    def complete(self) -> bool:
        """True when every file a boot needs is present (the marker is written last)."""
        return (self.root / "COMPLETE").exists() and self.vmlinux.exists() and (
            self.modules / "modules.dep"
        ).exists()


def xz_offset(image: bytes) -> int:
    """Offset of the XZ stream inside a bzImage (the compressed vmlinux payload)."""
    pos = image.find(XZ_MAGIC)
    if pos < 0:
        raise FetchError("no XZ stream in the kernel image: not an XZ-compressed bzImage")
    return pos


def extract_vmlinux(vmlinuz: Path, out: Path) -> None:
    """Write the ELF ``vmlinux`` carried XZ-compressed inside ``vmlinuz`` to ``out``."""
    data = vmlinuz.read_bytes()
    off = xz_offset(data)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        # xz -dc stops with "unexpected end of input"/"trailing garbage" after the
        # stream; -q -q keeps it quiet and the ELF magic check below is the verdict.
        subprocess.run(
            ["xz", "-dc", "-q", "-q"], input=data[off:], stdout=fh, stderr=subprocess.DEVNULL
        )
    with open(tmp, "rb") as fh:
        if fh.read(4) != b"\x7fELF":
            tmp.unlink(missing_ok=True)
            raise FetchError(f"decompressing {vmlinuz} did not give an ELF vmlinux")
    tmp.replace(out)


def resolve_release(meta: str = META_PACKAGE) -> str:
    """The kernel release (e.g. ``6.1.0-56-amd64``) apt's candidate of ``meta`` depends on."""
    env_release = os.environ.get("CALICOLAB_GUEST_KERNEL")
    if env_release:
        if not RELEASE_RE.match(env_release):
            raise FetchError(
                f"CALICOLAB_GUEST_KERNEL={env_release!r} is not a release like 6.1.0-56-amd64"
            )
        return env_release
    res = subprocess.run(
        ["apt-cache", "depends", meta], capture_output=True, text=True, check=False
    )
    for line in res.stdout.splitlines():
        m = re.match(r"\s*Depends:\s*linux-image-(\S+-amd64)\s*$", line)
        if m and RELEASE_RE.match(m.group(1)):
            return m.group(1)
    raise FetchError(
        f"apt-cache depends {meta} names no linux-image-<release>-amd64 "
        f"(exit {res.returncode}: {res.stderr.strip() or res.stdout.strip()!r}); "
        "run apt-get update, or set CALICOLAB_GUEST_KERNEL"
    )


def cached(cache_root: Path = CACHE_ROOT) -> GuestKernel | None:
    """The newest complete cached kernel, if any (used when apt cannot answer)."""
    if not cache_root.is_dir():
        return None
    found = [GuestKernel(p.name, p) for p in sorted(cache_root.iterdir()) if p.is_dir()]
    found = [k for k in found if k.complete()]
    return found[-1] if found else None


def fetch(release: str | None = None, cache_root: Path = CACHE_ROOT) -> GuestKernel:
    """Make sure the guest kernel ``release`` is cached and return it (idempotent)."""
    if release is None:
        try:
            release = resolve_release()
        except FetchError:
            have = cached(cache_root)
            if have is not None:
                return have
            raise
    kernel = GuestKernel(release, cache_root / release)
    if kernel.complete():
        return kernel
    package = f"linux-image-{release}"
    cache_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{release}.", dir=cache_root))
    try:
        res = subprocess.run(
            ["apt-get", "download", "-q", package],
            cwd=work,
            capture_output=True,
            text=True,
            check=False,
        )
        debs = list(work.glob(f"{package}_*.deb"))
        if res.returncode != 0 or len(debs) != 1:
            raise FetchError(
                f"apt-get download {package} failed (exit {res.returncode}): {res.stderr.strip()}"
            )
        tree = work / "tree"
        subprocess.run(["dpkg", "-x", str(debs[0]), str(tree)], check=True)
        boot = tree / "boot"
        stage = work / "stage"
        stage.mkdir()
        shutil.move(str(boot / f"vmlinuz-{release}"), stage / "vmlinuz")
        shutil.move(str(boot / f"config-{release}"), stage / "config")
        (stage / "lib" / "modules").mkdir(parents=True)
        shutil.move(str(tree / "lib" / "modules" / release), stage / "lib" / "modules" / release)
        subprocess.run(["depmod", "-b", str(stage), release], check=True)
        extract_vmlinux(stage / "vmlinuz", stage / "vmlinux")
        (stage / "VERSION").write_text(debs[0].name.removesuffix(".deb") + "\n")
        (stage / "COMPLETE").write_text("ok\n")
        if kernel.root.exists():
            shutil.rmtree(kernel.root)
        stage.rename(kernel.root)
    except subprocess.CalledProcessError as exc:
        raise FetchError(f"preparing {package} failed: {exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return kernel


def main(argv: list[str] | None = None) -> int:
    """CLI: fetch (if needed) and print the cache directory of the guest kernel."""
    ap = argparse.ArgumentParser(prog="python -m testbed.kerneltier.fetch", description=__doc__)
    ap.add_argument("--release", help="kernel release, e.g. 6.1.0-56-amd64 (default: apt's)")
    args = ap.parse_args(argv)
    try:
        kernel = fetch(args.release)
    except FetchError as exc:
        print(f"kerneltier fetch: {exc}", file=sys.stderr)
        return 1
    print(kernel.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
