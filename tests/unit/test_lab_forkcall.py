"""testbed.lab.forkcall: a function run in a forked child, its failure reported to the parent."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from testbed.lab.forkcall import ForkCall

pytestmark = pytest.mark.unit


REPO = Path(__file__).resolve().parents[2]


def in_fresh_process(code: str) -> str:
    """Run ``code`` in a new interpreter (a fork needs a process without threads, which this
    test process may not be after other tests ran); its stdout. Fails with its stderr."""
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True,
                         text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_child_runs_the_function_and_the_parent_reaps_it(tmp_path):
    out = tmp_path / "made"
    got = in_fresh_process(f"""
        import os
        from pathlib import Path
        from testbed.lab.forkcall import ForkCall, ForkCallError
        call = ForkCall(lambda: Path({str(out)!r}).write_text(str(os.getpid())), "writing")
        pid = call.start()
        call.wait()
        try:
            os.waitpid(pid, os.WNOHANG)
            print("not reaped")
        except ChildProcessError:
            print(pid, os.getpid())
        """).split()
    assert len(got) == 2, got
    assert out.read_text() == got[0] != got[1]


def test_a_failure_is_raised_with_the_childs_error_on_every_wait():
    got = in_fresh_process("""
        from testbed.lab.forkcall import ForkCall, ForkCallError
        def fail():
            raise ValueError("no key")
        call = ForkCall(fail, "making the PKI")
        call.start()
        for _ in range(2):
            try:
                call.wait()
                print("no error")
            except ForkCallError as exc:
                print(exc)
        """)
    assert got.splitlines() == ["making the PKI: ValueError: no key"] * 2


def test_fork_is_refused_once_a_thread_runs():
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        with pytest.raises(RuntimeError, match="before any thread starts"):
            ForkCall(lambda: None, "x").start()
    finally:
        stop.set()
        t.join()
