"""Lab-tier hook: when a test fails while its lab is up, the failure report carries what a user
would look at next (``calicolab status``, ``kubectl get pods -A -o wide`` and the tails of the
lab's most recently written logs), so a failure seen only in CI can be read from CI's output."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from testbed.lab import state as labstate

LOG_FILES = 12  # the most recently written logs shown
LOG_LINES = 10  # lines of each
LINE_CHARS = 300


def _labs_of(item: pytest.Item) -> list[str]:
    """The names of the labs a test's fixtures hold (a ``Lab`` with ``name``, a ``Walkthrough``
    with ``lab``, a state dict with ``lab``) that are still up: a plain name whose state dir
    holds a ``state.json``."""
    names: list[str] = []
    for value in getattr(item, "funcargs", {}).values():
        for cand in (getattr(value, "lab", None), getattr(value, "name", None),
                     value.get("lab") if isinstance(value, dict) else None):
            if (isinstance(cand, str) and cand.strip(".") and "/" not in cand and cand not in names
                    and (labstate.state_dir(cand) / "state.json").is_file()):
                names.append(cand)
    return names


def _run(args: list[str]) -> str:
    try:
        r = subprocess.run([sys.executable, "-m", "testbed.cli", *args], capture_output=True, text=True,
                           timeout=30, cwd=str(labstate.REPO))
    except subprocess.TimeoutExpired:
        return f"$ calicolab {' '.join(args)}\n(no answer in 30 s)\n"
    return f"$ calicolab {' '.join(args)}  (exit {r.returncode})\n{r.stdout}{r.stderr}"


def _log_tails(lab: str) -> str:
    root = labstate.state_dir(lab)
    logs = [p for p in root.rglob("*") if p.is_file() and (p.name == "log" or p.suffix == ".log")]
    logs.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    out = []
    for path in logs[:LOG_FILES]:
        lines = path.read_text(errors="replace").splitlines()[-LOG_LINES:]
        age = time.time() - path.stat().st_mtime
        out.append(f"--- {path.relative_to(root)} (written {age:.0f} s ago)")
        out += [line[:LINE_CHARS] for line in lines]
    return "\n".join(out) + "\n"


def lab_diagnostics(lab: str) -> str:
    """What a user would look at in lab ``lab`` after a failure: status, pods, log tails."""
    return (_run(["--lab", lab, "status"]) + _run(["--lab", lab, "kubectl", "get", "pods", "-A", "-o", "wide"])
            + _log_tails(lab))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed:
        return
    for lab in _labs_of(item):
        try:
            text = lab_diagnostics(lab)
        except (OSError, ValueError) as exc:  # the lab went away meanwhile
            text = f"no diagnostics: {exc}\n"
        rep.sections.append((f"lab {lab} at the failure", text))
