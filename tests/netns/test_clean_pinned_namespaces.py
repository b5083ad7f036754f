"""clean's namespace matching (testbed.lab.clean): a lab namespace is held open while its
members are killed, so the inode number it is matched by cannot pass to a namespace made
meanwhile by anyone else on the machine (the kernel reuses the lowest free number at once:
`ip netns exec` of an unrelated test got a dead node's number in a CI run, and clean killed it)."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from testbed.lab.clean import PinnedNamespaces, _ns_id, _ns_member_pids
from testbed.poll import wait_for

pytestmark = pytest.mark.netns


def _in_new_mount_ns() -> subprocess.Popen:
    """A sleeping process in a mount namespace of its own (as a node's shell, or each
    `ip netns exec` command, has)."""
    p = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "60"])
    mine = _ns_id("/proc/self/ns/mnt")

    def made() -> bool:  # unshare made the namespace and exec'd sleep
        return _ns_id(f"/proc/{p.pid}/ns/mnt") not in (None, mine) and \
            os.readlink(f"/proc/{p.pid}/exe").endswith("sleep")

    try:
        wait_for(made, timeout=5, interval=0.002, what=f"unshare (pid {p.pid}) in a mount namespace of its own",
                 ignore=(OSError,))
    except BaseException:
        _stop(p)
        raise
    return p


def _stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait()


def test_a_pinned_namespace_keeps_its_number_after_its_last_process_died():
    lab_shell = _in_new_mount_ns()
    others: list[subprocess.Popen] = []
    try:
        with PinnedNamespaces() as pins:
            ident = pins.pin("mnt", f"/proc/{lab_shell.pid}/ns/mnt")
            assert ident is not None and pins.ids == {("mnt", ident)}
            _stop(lab_shell)  # the node's shell is gone; its namespace stays, held by the pin
            # namespaces made meanwhile elsewhere (a few: the kernel hands out the lowest free number)
            others = [_in_new_mount_ns() for _ in range(3)]
            assert all(_ns_id(f"/proc/{p.pid}/ns/mnt") != ident for p in others)
            assert not _ns_member_pids(pins.ids) & {p.pid for p in others}
    finally:
        _stop(lab_shell, *others)


def test_without_the_pin_the_number_passes_on():
    """What clean guards against: a dead namespace's number is given to the next one made."""
    seen = []
    for _ in range(20):  # allocations elsewhere on the machine may take the freed number first
        first = _in_new_mount_ns()
        ident = _ns_id(f"/proc/{first.pid}/ns/mnt")
        _stop(first)
        second = _in_new_mount_ns()
        seen.append(_ns_id(f"/proc/{second.pid}/ns/mnt") == ident)
        _stop(second)
        if seen[-1]:
            break
    assert any(seen), "the kernel did not reuse a freed namespace number in 20 tries"


def test_pin_of_a_gone_namespace_is_none_and_close_is_idempotent(tmp_path):
    pins = PinnedNamespaces()
    assert pins.pin("net", tmp_path / "no-such-netns") is None and pins.ids == set()
    pins.close()
    pins.close()
