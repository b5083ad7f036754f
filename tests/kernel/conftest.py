"""The kernel tier: boot the stock Debian kernel ONCE per session and run tests/kernel/guest in it.

On the host, tests/kernel/guest is not collected (its tests need the kernel's ipip); the
``guest`` session fixture boots qemu, runs pytest on it inside the guest with junit.xml written
to the results share, plus two deliberately broken runs (``CALICOLAB_KTIER_BREAK``), and the
host tests read the verdicts and pcaps from there.  Inside the guest (``CALICOLAB_GUEST=1``)
the guest tests are collected normally.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import require, require_root, unique

collect_ignore = [] if os.environ.get("CALICOLAB_GUEST") else ["guest"]

REPO = Path(__file__).resolve().parents[2]
GUEST_DIR = "tests/kernel/guest"
BOOT_LIMIT_S = float(os.environ.get("CALICOLAB_KTIER_TIMEOUT", "240"))
# Results (junit, logs, pcaps) stay where the project's captures go, one directory per session;
# directories of sessions older than KEEP_S are pruned.
RESULTS_ROOT = REPO / "pcaps" / "kernel-tier"
KEEP_S = 6 * 3600
# (results name, CALICOLAB_KTIER_BREAK value, pytest -k expression) for each guest pytest run
GUEST_RUNS = (
    ("junit", "", ""),
    ("junit-break-no-onlink", "no-onlink", "pod_to_pod"),
    ("junit-break-tunnel-mtu", "tunnel-mtu", "mtu"),
)


_SUMMARY: dict = {}


def pytest_terminal_summary(terminalreporter) -> None:
    """One line with the guest's boot and test times, when this session booted it."""
    if _SUMMARY:
        s = _SUMMARY
        terminalreporter.write_line(
            f"kernel tier: {s['kernel']} ({s['accel']}) boot {s['boot_seconds']}s, guest tests "
            f"{s['guest_script_seconds']}s, wall {s['wall_seconds']}s, results {s['results']}"
        )


@dataclass
class GuestSession:
    """What the one boot of this session left behind."""

    results: Path
    run: object  # testbed.kerneltier.qemu.GuestRun

    def junit(self, name: str = "junit") -> Path:
        """Path of one guest run's junit file."""
        return self.results / f"{name}.xml"

    def log_tail(self, name: str = "junit", lines: int = 60) -> str:
        """The end of one guest pytest run's output."""
        path = self.results / f"{name}.log"
        if not path.exists():
            return f"(no {path.name}; console tail)\n{self.run.console_tail()}"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def guest_script() -> str:
    """The shell script the guest runs: the guest tests, intact and broken, in one Python."""
    runs = " ".join(shlex.quote(f"{n}:{b}:{k}") for n, b, k in GUEST_RUNS)
    return "\n".join([
        f"cd {shlex.quote(str(REPO))}",
        "export PYTHONDONTWRITEBYTECODE=1 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1",
        f"export CI={shlex.quote(os.environ.get('CI', ''))}",
        f"{REPO}/.venv/bin/python -m testbed.kerneltier.guestrun "
        f'--results "$CALICOLAB_RESULTS" --tests {GUEST_DIR} {runs} '
        '> "$CALICOLAB_RESULTS/guestrun.log" 2>&1',
    ]) + "\n"


def _qemu_missing_reason() -> str | None:
    if not shutil.which("qemu-system-x86_64"):
        return "qemu-system-x86_64 is not installed (scripts/setup.sh installs qemu-system-x86)"
    if not os.path.exists("/bin/busybox"):
        return "busybox-static is not installed (scripts/setup.sh)"
    return None


def _results_dir() -> Path:
    RESULTS_ROOT.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in RESULTS_ROOT.iterdir():
        if old.is_dir() and now - old.stat().st_mtime > KEEP_S:
            shutil.rmtree(old, ignore_errors=True)
    path = RESULTS_ROOT / (time.strftime("%Y%m%d-%H%M%S-") + unique("s"))
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def guest() -> GuestSession:
    """Boot the guest once, run the guest tests inside, return where the results are."""
    require_root()
    reason = _qemu_missing_reason()
    require(reason is None, reason or "")
    from testbed.kerneltier import fetch, qemu

    try:
        kernel = fetch.fetch()
    except fetch.FetchError as exc:
        require(False, f"cannot fetch the guest kernel: {exc}")
        raise  # unreachable: require skipped or failed
    results = _results_dir()
    run = qemu.boot(guest_script(), results, timeout=BOOT_LIMIT_S, kernel=kernel)
    summary = {
        "kernel": kernel.release,
        "accel": qemu.accel(),
        "wall_seconds": round(run.elapsed, 2),
        "boot_seconds": run.boot_seconds,
        "guest_script_seconds": None if run.script_seconds is None else round(run.script_seconds, 2),
        "timed_out": run.timed_out,
        "guest_exit": run.exit_code,
        "results": str(results),
    }
    (results / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _SUMMARY.update(summary)
    if run.timed_out or run.exit_code is None:
        pytest.fail(f"the guest did not finish: {summary}\n{run.console_tail()}")
    return GuestSession(results, run)
