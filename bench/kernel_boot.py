"""Kernel tier timings: fetch (cached), initramfs build, guest boot, guest Python.

Cases, each repeated ``--repeat`` times:

* ``boot-vmlinux``: boot the uncompressed kernel and run ``true`` (what the tier does).
* ``boot-vmlinuz``: the same with the package's compressed bzImage (for comparison).
* ``guest-python``: ``python -c 'import pyroute2'`` in the guest (TCG makes Python slow).
* ``guest-cluster``: build and remove the 3-node kernel-tunl0 cluster the guest tests use.

Also times ``fetch`` (cache hit) and the initramfs build (uncached: archive + gzip).
Prints a table and writes JSON (default reports/bench/kernel_boot.json). The load average is
recorded: TCG wants a whole host core, so a busy machine makes every number worse.
Run as root: ``.venv/bin/python bench/kernel_boot.py [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from testbed.kerneltier import cpio, fetch, initramfs, qemu  # noqa: E402

PY = f"{REPO}/.venv/bin/python"
CASES = {
    "boot-vmlinux": ("true", "vmlinux"),
    "boot-vmlinuz": ("true", "vmlinuz"),
    "guest-python": (f"cd {REPO} && {PY} -c 'import pyroute2'", "vmlinux"),
    "guest-cluster": (
        f"cd {REPO} && PYTHONDONTWRITEBYTECODE=1 {PY} -c "
        "'from testbed.kerneltier import cluster as c; c.build(3).close()'",
        "vmlinux",
    ),
}


def timed(fn) -> tuple[float, object]:
    """(seconds, result) of one call."""
    t = time.monotonic()
    out = fn()
    return time.monotonic() - t, out


def boot_case(kernel: fetch.GuestKernel, script: str, image: str) -> dict:
    """One boot; wall time, guest uptime at script start (boot) and script time."""
    k = kernel
    if image == "vmlinuz":
        # GuestKernel.vmlinux is what qemu.boot passes; point it at the bzImage for this case.
        k = _VmlinuzKernel(kernel.release, kernel.root)
    with tempfile.TemporaryDirectory(prefix="kbench") as tmp:
        run = qemu.boot(script, Path(tmp), timeout=240, kernel=k)
    if run.exit_code != 0:
        raise SystemExit(f"guest failed ({run.exit_code}):\n{run.console_tail()}")
    return {"wall_s": run.elapsed, "boot_s": run.boot_seconds, "script_s": run.script_seconds}


class _VmlinuzKernel(fetch.GuestKernel):
    @property
    def vmlinux(self) -> Path:  # type: ignore[override]
        return self.root / "vmlinuz"


def main() -> int:
    """Run the cases, print the table, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES), help="comma list of " + ",".join(CASES))
    ap.add_argument("--json", default=str(REPO / "reports" / "bench" / "kernel_boot.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (9p passthrough of the host root needs it)")
    fetch_s, kernel = timed(fetch.fetch)
    busybox = initramfs.BUSYBOX.read_bytes()
    build_s, size = timed(lambda: len(gzip.compress(cpio.archive(initramfs.entries(kernel, busybox)),
                                                    mtime=0)))  # fmt: skip
    initramfs.build(kernel)
    rows = [
        {"case": "fetch (cached)", "n": 1, "median_s": round(fetch_s, 3)},
        {"case": "initramfs build", "n": 1, "median_s": round(build_s, 3), "bytes": size},
    ]
    for name in args.cases.split(","):
        script, image = CASES[name]
        runs = [boot_case(kernel, script, image) for _ in range(args.repeat)]
        row = {"case": name, "n": len(runs)}
        for key in ("wall_s", "boot_s", "script_s"):
            vals = [r[key] for r in runs if r[key] is not None]
            row[f"median_{key}"] = round(statistics.median(vals), 2) if vals else None
        rows.append(row)
    load = os.getloadavg()
    print(f"kernel {kernel.release}, accel {qemu.accel()}, load average {load[0]:.2f}")
    print(f"{'case':<18} {'n':>2} {'wall s':>8} {'boot s':>8} {'script s':>9}")
    for r in rows:
        wall = r.get("median_wall_s", r.get("median_s"))
        print(f"{r['case']:<18} {r['n']:>2} {wall!s:>8} {r.get('median_boot_s', '')!s:>8} "
              f"{r.get('median_script_s', '')!s:>9}")  # fmt: skip
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "kernel_boot", "kernel": kernel.release,
                               "accel": qemu.accel(), "cpus": os.cpu_count(),
                               "loadavg": load, "results": rows}, indent=2) + "\n")  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
