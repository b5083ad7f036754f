"""kernel.schedpolicy: the batch policy a lab's processes run under (sched(7))."""

from __future__ import annotations

import os
import subprocess
import sys

from kernel import schedpolicy


def test_a_process_that_asks_for_batch_runs_as_batch_and_what_it_execs_too():
    # in a child (which starts with this process' policy), so this one keeps it
    code = ("import os, subprocess, sys\n"
            "from kernel import schedpolicy\n"
            "before = schedpolicy.policy_of()\n"
            "assert schedpolicy.set_batch()\n"
            "child = subprocess.run([sys.executable, '-c', 'import os; print(os.sched_getscheduler(0))'],\n"
            "                       capture_output=True, text=True, check=True).stdout.strip()\n"
            "print(before, schedpolicy.policy_of(), schedpolicy.NAMES[int(child)])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.stdout.split() == [schedpolicy.policy_of(), "SCHED_BATCH", "SCHED_BATCH"], out


def test_a_process_that_is_gone_has_no_policy_and_cannot_be_set():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert schedpolicy.policy_of(p.pid) is None
    assert schedpolicy.set_batch(p.pid) is False
