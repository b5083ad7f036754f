"""testbed.lab.forkcall: a function run in a forked child, its failure reported to the parent."""

from __future__ import annotations

import os
import threading

import pytest

from testbed.lab.forkcall import ForkCall, ForkCallError

pytestmark = pytest.mark.unit


def _only_thread() -> bool:
    return threading.active_count() == 1


def test_child_runs_the_function_and_the_parent_reaps_it(tmp_path):
    if not _only_thread():
        pytest.skip("a fork is refused while threads run (this test process has some)")
    out = tmp_path / "made"
    call = ForkCall(lambda: out.write_text(str(os.getpid())), "writing")
    pid = call.start()
    call.wait()
    assert out.read_text() == str(pid) != str(os.getpid())
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped


def test_a_failure_is_raised_with_the_childs_error_on_every_wait():
    if not _only_thread():
        pytest.skip("a fork is refused while threads run (this test process has some)")

    def fail() -> None:
        raise ValueError("no key")

    call = ForkCall(fail, "making the PKI")
    call.start()
    for _ in range(2):
        with pytest.raises(ForkCallError, match=r"^making the PKI: ValueError: no key$"):
            call.wait()


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
