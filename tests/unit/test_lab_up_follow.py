"""``calicolab up`` follows the supervisor's progress pipe: a supervisor that dies is reported
at once with its exit status, also while another process still holds the pipe's write end
(before, `up` waited for the whole deadline: "not ready after 120s")."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from testbed.lab import lifecycle
from testbed.lab.state import LabError

pytestmark = pytest.mark.unit


def test_a_dead_supervisor_is_reported_at_once_even_if_the_pipe_is_held(monkeypatch):
    aborted: list[str] = []
    monkeypatch.setattr(lifecycle, "_abort", lambda proc, lab: aborted.append(lab))
    rfd, wfd = os.pipe()
    # the "supervisor": one progress line, then exit 3; a "node shell" keeps the write end open
    sup = subprocess.Popen([sys.executable, "-c", f"import os; os.write({wfd}, b'progress: linking\\n'); "
                            "raise SystemExit(3)"], pass_fds=(wfd,))
    holder = subprocess.Popen(["sleep", "30"], pass_fds=(wfd,))
    os.close(wfd)
    seen: list[str] = []
    t0 = time.monotonic()
    try:
        with pytest.raises(LabError) as err:
            lifecycle._follow(rfd, sup, "lf-test", 20.0, seen.append)
    finally:
        holder.kill()
        holder.wait()
        os.close(rfd)
    assert time.monotonic() - t0 < 5
    assert "failed to start: supervisor exited with status 3 (last progress: linking)" in str(err.value)
    assert seen == ["linking"] and aborted == ["lf-test"]
