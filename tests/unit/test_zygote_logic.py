"""The zygote's pure parts (kernel.zygote): the request codec, argv -> run spec, and the
client's Popen-like view of a child (exit codes as Popen's, the zygote's hang-up)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from kernel import zygote

pytestmark = pytest.mark.unit

PY = sys.executable


def test_frames_round_trip_and_wait_for_the_rest():
    a, b = zygote.encode({"argv": ["x", "é"], "n": 1}), zygote.encode({"exit": -15})
    msg, rest = zygote.decode(a + b[:3])
    assert msg == {"argv": ["x", "é"], "n": 1}
    assert zygote.decode(rest) == (None, b[:3])  # incomplete: kept
    assert zygote.decode(b) == ({"exit": -15}, b"")


def test_bad_frames_are_errors():
    with pytest.raises(ValueError, match="not an object"):
        zygote.decode(b"\0\0\0\x02[]")
    with pytest.raises(ValueError, match="at most"):
        zygote.decode(b"\x7f\0\0\0")
    with pytest.raises(ValueError, match="at most"):
        zygote.encode({"x": "y" * (zygote.MAX_FRAME + 1)})


def test_run_spec_module_and_script():
    assert zygote.run_spec([PY, "-m", "agent.csi", "--nodeid=n"], PY) == \
        zygote.RunSpec("module", "agent.csi", ["agent.csi", "--nodeid=n"])
    assert zygote.run_spec([PY, "/x/tool.py", "a"], PY) == zygote.RunSpec("path", "/x/tool.py", ["/x/tool.py", "a"])


def test_run_spec_console_script_by_its_shebang(tmp_path):
    script = tmp_path / "calico-node"
    script.write_text(f"#!{PY}\nimport sys\n")
    assert zygote.run_spec([str(script), "-felix-ready"], PY) == \
        zygote.RunSpec("path", str(script), [str(script), "-felix-ready"])
    other = tmp_path / "other"
    other.write_text("#!/bin/sh\necho\n")
    assert zygote.run_spec([str(other)], PY) is None
    flags = tmp_path / "flags"
    flags.write_text(f"#!{PY} -u\n")
    assert zygote.run_spec([str(flags)], PY) is None  # interpreter flags: exec


def test_run_spec_refuses_what_a_fork_would_not_run_the_same(tmp_path):
    assert zygote.run_spec([PY, "-c", "pass"], PY) is None
    assert zygote.run_spec([PY, "-u", "-m", "x"], PY) is None
    assert zygote.run_spec([PY], PY) is None
    assert zygote.run_spec(["python3", "-m", "x"], PY) is None  # a bare name: PATH decides
    assert zygote.run_spec(["/usr/bin/etcd", "--name=x"], PY) is None
    assert zygote.run_spec([], PY) is None
    other = tmp_path / "python"
    other.write_text("")
    assert zygote.run_spec([str(other), "-m", "x"], PY) is None  # another interpreter


def test_run_spec_resolves_a_relative_interpreter_against_cwd():
    d, name = os.path.split(PY)
    rel = os.path.relpath(PY, "/")
    assert zygote.run_spec([rel, "-m", "x"], PY, cwd="/") == zygote.RunSpec("module", "x", ["x"])
    assert zygote.run_spec([os.path.join(d, name), "-m", "x"], PY).target == "x"


def test_socket_path_from_the_environment():
    assert zygote.socket_path({}) is None
    assert zygote.socket_path({zygote.ENV: "off"}) is None
    assert zygote.socket_path({zygote.ENV: "/run/z.sock"}) == "/run/z.sock"


def _process(pidfd: int | None = None) -> tuple[zygote.ZygoteProcess, socket.socket]:
    mine, theirs = socket.socketpair()
    return zygote.ZygoteProcess(["prog"], 4242, mine, zygote.FrameReader(mine), pidfd), theirs


def test_exit_codes_as_popen_reports_them():
    proc, zyg = _process()
    assert proc.poll() is None
    zyg.sendall(zygote.encode({"exit": -signal.SIGTERM}))
    assert proc.wait(timeout=2) == -15 and proc.returncode == -15
    proc, zyg = _process()
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.1)
    zyg.sendall(zygote.encode({"exit": 3})[:2])
    assert proc.poll() is None  # half a frame
    zyg.sendall(zygote.encode({"exit": 3})[2:])
    assert proc.wait(timeout=2) == 3


def test_a_lost_zygote_leaves_the_exit_code_unknown_once_the_process_ends():
    child = subprocess.Popen(["sleep", "30"])
    try:
        proc, zyg = _process(os.pidfd_open(child.pid))
        zyg.close()  # the zygote died
        assert proc.poll() is None  # the process itself still runs
        proc.kill()  # signalled through the pidfd
        child.wait(timeout=5)
        assert proc.wait(timeout=2) == zygote.UNKNOWN_EXIT
    finally:
        child.kill()
        child.wait()


def test_the_target_is_a_socket_path_or_an_inherited_channel():
    assert zygote.parse_target("/run/calicolab/l/zygote/zygote.sock") == ("path", "/run/calicolab/l/zygote/zygote.sock")
    assert zygote.parse_target("fd:7:1283") == ("fd", 7, 1283)
    for bad in ("fd:7", "fd:x:1", "relative.sock", "fd:7:1:2"):
        with pytest.raises(ValueError, match="CALICOLAB_ZYGOTE"):
            zygote.parse_target(bad)


def test_a_channel_fd_that_is_not_the_zygotes_is_refused():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        with pytest.raises(zygote.ZygoteError, match="not the channel of zygote 1"):
            zygote.connect(f"fd:{a.fileno()}:1")  # its peer is this process, not pid 1
        with open(os.devnull) as f, pytest.raises(zygote.ZygoteError, match="not the zygote's channel"):
            zygote.connect(f"fd:{f.fileno()}:{os.getpid()}")
    finally:
        a.close()
        b.close()


def test_a_caller_that_hung_up_is_seen_at_once_and_a_waiting_one_is_not():
    import socket
    import time

    from testbed.lab.zygote import _hung_up, serve_priority

    a, b = socket.socketpair()
    a.settimeout(5.0)  # as the zygote holds a request's connection: the check must not wait
    t0 = time.monotonic()
    assert not _hung_up(a)
    assert time.monotonic() - t0 < 1.0 and a.gettimeout() == 5.0
    b.close()
    assert _hung_up(a)
    a.close()
    assert serve_priority(0) == -20 and serve_priority(-15) == -20 and serve_priority(10) == -10


def test_an_autogroup_the_kernel_refuses_or_lacks_is_reported_not_raised(tmp_path):
    from kernel.autogroup import write_nice

    assert not write_nice(str(tmp_path / "missing" / "autogroup"), -5)
    f = tmp_path / "autogroup"
    assert write_nice(str(f), -5) and f.read_text() == "-5"
    assert write_nice(str(f), -40) and f.read_text() == "-20"


def test_an_event_for_a_connection_closed_earlier_in_the_same_batch_is_skipped(tmp_path, monkeypatch):
    """One select() batch: handling the first event closes a watched caller connection and its
    fd number goes to a new socket before the second event (the closed one's) is handled. That
    stale event must not be served (it ended the zygote with a KeyError in a 100-node start)."""
    from testbed.lab import zygote as zmod

    server = zmod.Server(str(tmp_path / "z.sock"))
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        for mine, _theirs in pairs:
            server.callers[mine.fileno()] = (mine, -1, 0)
            server.sel.register(mine, zmod.selectors.EVENT_READ, "caller")
        for _mine, theirs in pairs:
            theirs.sendall(b"x")
        served: list[int] = []
        replacement: list[socket.socket] = []

        def caller(fd: int) -> None:
            served.append(fd)
            conn = server.callers.pop(fd)[0]
            server.sel.unregister(conn)
            other = next(m for m, _t in pairs if m.fileno() not in (fd, -1))
            server.callers.pop(other.fileno())
            server.sel.unregister(other)
            number = other.fileno()
            other.close()
            new = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # takes the lowest free fd
            assert new.fileno() == number
            replacement.append(new)
            server.sel.register(new, zmod.selectors.EVENT_READ, "caller")

        monkeypatch.setattr(server, "_caller", caller)
        assert server.step(1.0) is None
        assert len(served) == 1  # the second event was the closed socket's: skipped
    finally:
        for s in [x for p in pairs for x in p] + replacement:
            s.close()
        server.sel.close()
        server.listener.close()


def test_a_signal_that_came_before_the_select_still_wakes_the_server(tmp_path):
    """The zygote's SIGTERM handler runs only when its loop returns from ``select()``. A signal
    that lands just before the ``epoll_wait()`` (after the interpreter's last look at pending
    signals) must still end the wait: with :meth:`Server.wake_on_signals` the interpreter
    writes a byte to a socket the selector watches. Here the signal is taken (its handler
    runs) before ``step()`` is called, which is what that race leaves; ``step()`` then returns
    at once instead of waiting for a request that may never come."""
    import threading
    import time

    from testbed.lab.zygote import Server
    from testbed.poll import wait_for

    server = Server(str(tmp_path / "z.sock"))
    seen: list[int] = []
    old_handler = signal.signal(signal.SIGUSR1, lambda sig, _frame: seen.append(sig))
    old_fd = signal.set_wakeup_fd(-1)
    try:
        server.wake_on_signals()
        os.kill(os.getpid(), signal.SIGUSR1)
        # the handler runs between two bytecodes, as in the zygote's loop
        wait_for(lambda: seen, timeout=5, interval=0.001, what="the SIGUSR1 handler")
        done = threading.Event()

        def knock() -> None:  # if the wait did not end: a connection ends it, the test fails
            if not done.is_set():
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(str(tmp_path / "z.sock"))

        watchdog = threading.Timer(10, knock)
        watchdog.start()
        t0 = time.monotonic()
        assert server.step(None) is None
        done.set()
        watchdog.cancel()
        assert time.monotonic() - t0 < 5 and seen == [signal.SIGUSR1]
        os.kill(os.getpid(), signal.SIGUSR1)  # and again: the wake-up socket was drained, not closed
        wait_for(lambda: len(seen) == 2, timeout=5, interval=0.001, what="the second SIGUSR1")
        t0 = time.monotonic()
        assert server.step(5) is None and seen == [signal.SIGUSR1] * 2
        assert time.monotonic() - t0 < 4
    finally:
        signal.set_wakeup_fd(old_fd)
        signal.signal(signal.SIGUSR1, old_handler)
        server._close_all()
