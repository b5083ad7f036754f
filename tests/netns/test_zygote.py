"""The lab's zygote (testbed.lab.zygote) starts a program as a fork in another network
namespace and a private mount namespace with a bind mount, with the caller's cwd, environment
and stdio; its exit code and a signal come back as Popen reports them; nothing is left after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernel import autogroup, schedpolicy, zygote
from testbed.k8s import runtime
from testbed.lab import zygote as zmod
from testbed.poll import wait_for
from tests.support import sh

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]

VIEW = """
import os, subprocess, sys, time
print("addr", subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout.replace("\\n", " | "))
print("bind", sorted(os.listdir(sys.argv[1])))
print("cwd", os.getcwd())
print("env", os.environ.get("ZYGOTE_TEST"), os.environ.get("HOME", "-"))
print("argv", sys.argv[1:])
print("cmdline", open("/proc/self/cmdline", "rb").read().rstrip(b"\\0").split(b"\\0")[1:])
sys.stdout.flush()
if sys.argv[2] == "wait":
    time.sleep(60)
sys.exit(3)
"""


@pytest.fixture
def zygote_server(tmp_path):
    path = str(tmp_path / "zygote.sock")
    log = open(tmp_path / "zygote.log", "ab")
    env = zmod.environ({**os.environ, "PYTHONPATH": str(REPO)})
    proc = subprocess.Popen(zmod.argv(sys.executable, path), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            env=env, cwd="/", start_new_session=True)
    log.close()
    try:
        wait_for(lambda: os.path.exists(path), timeout=30, what=f"the zygote's socket {path}")
        yield path
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0, (tmp_path / "zygote.log").read_text()
    assert not os.path.exists(path)


def test_zygote_child_in_netns_with_private_bind_mount(netns, tmp_path, zygote_server):
    ns = netns("zyg")
    sh("ip", "-n", ns, "addr", "add", "10.123.45.6/32", "dev", "lo")
    src, dst = tmp_path / "src", tmp_path / "pod" / "vol"
    src.mkdir()
    (src / "hello").write_text("hi")
    work = tmp_path / "work"
    work.mkdir()
    script = tmp_path / "view.py"
    script.write_text(VIEW)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "ZYGOTE_TEST": "yes"}
    outs = [tmp_path / "exit.log", tmp_path / "wait.log"]
    procs = []
    mnt = os.open("/proc/self/ns/mnt", os.O_RDONLY)
    net = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        for out, how in zip(outs, ("exit", "wait"), strict=True):
            with open(out, "ab") as f:
                procs.append(zygote.spawn(zygote_server, [sys.executable, str(script), str(dst), how], env=env,
                                          cwd=str(work), stdout=f.fileno(), stderr=f.fileno(), mnt=mnt, net=net,
                                          mounts=[(str(src), str(dst))], propagation="slave"))
    finally:
        os.close(mnt)
        os.close(net)
    proc, waiting = procs
    assert proc.wait(timeout=30) == 3
    lines = outs[0].read_text().splitlines()
    assert len(lines) == 6, lines
    assert "10.123.45.6" in lines[0] and "172." not in lines[0], lines[0]  # the pod netns only
    assert lines[1] == "bind ['hello']"
    assert lines[2] == f"cwd {work}"
    assert lines[3] == "env yes -"  # the request's environment, not the zygote's
    assert lines[4] == f"argv ['{dst}', 'exit']"
    assert lines[5] == f"cmdline [b'{script}', b'{dst}', b'exit']"
    # the "wait" child rewrites its environ area before its program runs: wait for its output
    wait_for(lambda: outs[1].read_text().splitlines(), lambda ls: len(ls) >= 6, timeout=30,
             what="the waiting child's view")
    environ = [e for e in Path(f"/proc/{procs[1].pid}/environ").read_bytes().split(b"\0") if e]
    # /proc/<pid>/environ (kubectl exec reads it) is the request's, plus the child's channel
    assert {e.split(b"=", 1)[0].decode() for e in environ} == {*env, zygote.ENV}, environ
    assert b"ZYGOTE_TEST=yes" in environ
    wait_for(lambda: outs[1].read_text(), lambda t: "cmdline" in t, timeout=30, what="the second child's view")
    # the bind exists in the children's mount namespace only
    assert not dst.exists() or not any(dst.iterdir())
    assert str(dst) not in Path("/proc/self/mountinfo").read_text()
    # the zygote is the parent; a signal comes back as Popen's negative code
    with open(f"/proc/{waiting.pid}/stat") as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    assert ppid != os.getpid()
    assert waiting.poll() is None
    waiting.terminate()
    assert waiting.wait(timeout=30) == -signal.SIGTERM
    assert not runtime.alive(waiting.pid)
    assert runtime.netns_pids(f"/run/netns/{ns}") == []


def test_start_process_uses_the_zygote_and_falls_back_to_exec(netns, tmp_path, zygote_server, monkeypatch, caplog):
    ns = netns("zyg")
    script = tmp_path / "x.py"
    script.write_text("import os, sys\n"
                      "from kernel import zygote\n"
                      "if sys.argv[1] == 'parent':  # a zygote child asks for one through its channel\n"
                      "    target = os.environ[zygote.ENV]\n"
                      "    p = zygote.spawn(target, [sys.executable, __file__, '7'], env={'PYTHONPATH': os.environ['PYTHONPATH']})\n"
                      "    print('grandchild', target.split(':')[0], p.wait(30), flush=True)\n"
                      "    sys.exit(5)\n"
                      "sys.exit(int(sys.argv[1]))\n")
    log = tmp_path / "c" / "log"
    monkeypatch.setenv(zygote.ENV, zygote_server)
    proc = runtime.start_process(f"/run/netns/{ns}", [sys.executable, str(script), "parent"], str(log),
                                 env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}, cwd=str(tmp_path))
    assert isinstance(proc, zygote.ZygoteProcess)
    assert proc.wait(timeout=30) == 5, log.read_text()
    assert "grandchild fd 7" in log.read_text()
    monkeypatch.setenv(zygote.ENV, str(tmp_path / "missing.sock"))
    started = time.monotonic()
    proc = runtime.start_process(f"/run/netns/{ns}", [sys.executable, str(script), "4"], str(log),
                                 env={"PATH": os.environ["PATH"]}, cwd=str(tmp_path))
    assert isinstance(proc, subprocess.Popen) and proc.wait(timeout=30) == 4
    assert time.monotonic() - started < 10
    assert "starting it by exec" in caplog.text and "missing.sock" in caplog.text


EXITING = """
import atexit, sys, threading, time
atexit.register(lambda: print("atexit ran"))
def late():
    time.sleep(0.3)
    print("thread done")
threading.Thread(target=late).start()  # not a daemon: the exit waits for it
print("buffered")  # to a file: block-buffered, written at the exit
how = sys.argv[1]
if how == "raise":
    raise RuntimeError("boom")
if how != "return":
    sys.exit(int(how) if how.isdigit() else how)
"""


@pytest.mark.parametrize("how, code, out", [
    ("return", 0, "buffered\nthread done\natexit ran\n"),
    ("4", 4, "buffered\nthread done\natexit ran\n"),
    ("bye", 1, "bye\nbuffered\nthread done\natexit ran\n"),
    ("raise", 1, "RuntimeError: boom"),
])
def test_a_child_exits_as_the_interpreter_would(tmp_path, zygote_server, how, code, out):
    """A child's end (which skips the interpreter's teardown of the zygote's modules) is a
    normal exit as its program sees it: non-daemon threads joined, atexit handlers run,
    buffered output written, the exit code of ``sys.exit``; an uncaught exception printed."""
    script = tmp_path / "exiting.py"
    script.write_text(EXITING)
    log = tmp_path / "out.log"
    with open(log, "ab") as f:
        proc = zygote.spawn(zygote_server, [sys.executable, str(script), how],
                            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}, cwd=str(tmp_path),
                            stdout=f.fileno(), stderr=f.fileno())
    assert proc.wait(timeout=30) == code, log.read_text()
    text = log.read_text()
    if how == "raise":
        assert out in text and "Traceback" in text, text
        assert "thread done" in text and "atexit ran" in text, text
    else:
        assert sorted(text.splitlines()) == sorted(out.splitlines()), text  # stderr and stdout interleave
        assert text.index("thread done") < text.index("atexit ran"), text


def test_an_exec_probe_runs_as_a_zygote_child_in_the_containers_namespaces(netns, tmp_path, zygote_server,
                                                                            monkeypatch):
    """An exec probe of one of the project's programs in a netns-runtime container starts as
    a fork of the zygote (probehandlers.zygote_exec), in that container's network namespace,
    working directory and environment, with its output and exit code as the kubelet reports
    them; a probe over its timeout is killed."""
    from testbed.k8s.kubeletapi import exec_command
    from testbed.k8s.probehandlers import FAILURE, SUCCESS, exec_probe, zygote_exec

    ns = netns("zygp")
    sh("ip", "-n", ns, "addr", "add", "10.123.45.7/32", "dev", "lo")
    work = tmp_path / "work"
    work.mkdir()
    container = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "60"], cwd=str(work))
    try:
        wait_for(lambda: runtime.netns_pids(f"/run/netns/{ns}"), timeout=10, what="the container's process")
        pid = runtime.netns_pids(f"/run/netns/{ns}")[0]
        script = tmp_path / "check.py"
        script.write_text("import os, subprocess, sys, time\n"
                          "print(os.getcwd(), os.environ.get('PROBE_ENV'), os.getppid() != 1, flush=True)\n"
                          "print(subprocess.run(['ip', '-o', 'addr'], capture_output=True, text=True).stdout)\n"
                          "time.sleep(float(sys.argv[2]))\n"
                          "sys.exit(int(sys.argv[1]))\n")
        env = [f"PATH={os.environ['PATH']}", f"PYTHONPATH={REPO}", "PROBE_ENV=from-the-container"]
        monkeypatch.setenv(zygote.ENV, zygote_server)
        argv = exec_command("netns", pid, env, [sys.executable, str(script), "0", "0"])
        result, out = zygote_exec(argv, ["check"], 10)
        assert result == SUCCESS, out
        assert out.splitlines()[0] == f"{work} from-the-container True", out
        assert "10.123.45.7" in out and "172." not in out, out  # the container's netns only
        result, out = exec_probe(exec_command("netns", pid, env, [sys.executable, str(script), "3", "0"]),
                                 ["check"], 10)
        assert result == FAILURE and "from-the-container" in out
        started = time.monotonic()
        result, out = zygote_exec(exec_command("netns", pid, env, [sys.executable, str(script), "0", "30"]),
                                  ["check", "slow"], 1)
        assert (result, out) == (FAILURE, 'command "check slow" timed out')
        assert time.monotonic() - started < 10
        # not one of the project's programs: exec'd as before
        assert zygote_exec(exec_command("netns", pid, env, ["/bin/true"]), ["true"], 5) is None
    finally:
        container.kill()
        container.wait()


def _peer_pid(path: str) -> int:
    """The PID of the process serving the unix socket ``path`` (SO_PEERCRED)."""
    import socket
    import struct

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
    finally:
        s.close()


def test_the_zygote_serves_above_the_labs_priority_and_its_children_do_not(tmp_path, zygote_server):
    base = os.getpriority(os.PRIO_PROCESS, 0)  # the fixture's zygote was started at ours
    zpid = _peer_pid(zygote_server)
    assert os.getpriority(os.PRIO_PROCESS, zpid) == zmod.serve_priority(base) < base
    if autogroup.nice_of(zpid) is not None:  # and its session's weight (kernel autogroups)
        assert autogroup.nice_of(zpid) == zmod.serve_priority(base)
    env = {"PATH": os.environ["PATH"]}
    script = tmp_path / "sleep.py"
    script.write_text("import time\ntime.sleep(60)\n")
    sleeper = [sys.executable, str(script)]
    plain = zygote.spawn(zygote_server, sleeper, env=env)
    nicer = zygote.spawn(zygote_server, sleeper, env=env, priority=min(19, base + 3))
    try:
        # (a fork starts at the zygote's and takes its own as it enters the caller's namespaces)
        for p, want in ((plain, base), (nicer, min(19, base + 3))):  # plain: the lab's, not the zygote's
            wait_for(lambda p=p: os.getpriority(os.PRIO_PROCESS, p.pid), lambda n, w=want: n == w, timeout=10,
                     what=f"pid {p.pid} at nice {want}")
        if autogroup.nice_of(nicer.pid) is not None:  # its own session weighs as its nice
            assert autogroup.nice_of(nicer.pid) == min(19, base + 3)
        # the children run as batch work; the zygote serves as a real-time task, reset on fork
        for p in (plain, nicer):
            wait_for(lambda p=p: schedpolicy.policy_of(p.pid), lambda pol: pol == "SCHED_BATCH", timeout=10,
                     what=f"pid {p.pid} as SCHED_BATCH")
            assert os.sched_getparam(p.pid).sched_priority == 0
        assert schedpolicy.policy_of(zpid) == "SCHED_FIFO"
        assert os.sched_getscheduler(zpid) & os.SCHED_RESET_ON_FORK
    finally:
        for p in (plain, nicer):
            p.kill()
            p.wait(timeout=10)


def _request(path: str, script: Path) -> tuple[object, int]:
    """Send the zygote a start request by hand; (its connection, the child's pid)."""
    sock = zygote.connect(path)
    sock.settimeout(zygote.CONNECT_TIMEOUT)
    req = {"argv": [sys.executable, str(script)], "env": {"PYTHONPATH": str(REPO)}, "cwd": "/", "fds": [],
           "mounts": None, "propagation": "slave", "priority": None}
    sock.sendall(zygote.encode(req))
    reader = zygote.FrameReader(sock)
    reply = reader.read()
    for fd in reader.fds:
        os.close(fd)
    return sock, int(reply["pid"])


def test_a_request_its_caller_abandoned_ends_the_child_a_hang_up_does_not(tmp_path, zygote_server):
    """A caller that timed out waiting for the pid starts the program by exec and says so
    (``{"abandon": true}``): the zygote ends the child it had started meanwhile, so there is
    never a second copy (a 100-node start had two calico-nodes on one node, the exec'd one
    failing). A caller that only hangs up (a kubelet restarting) leaves its child running."""
    script = tmp_path / "sleeper.py"
    script.write_text("import time\ntime.sleep(60)\n")
    sock, pid = _request(zygote_server, script)
    sock.sendall(zygote.encode({"abandon": True}))
    sock.close()
    wait_for(lambda: runtime.alive(pid), lambda alive: not alive, timeout=10, what=f"abandoned child {pid} ended")
    assert "its caller abandoned the request" in (tmp_path / "zygote.log").read_text()
    sock, pid = _request(zygote_server, script)
    sock.close()
    other, other_pid = _request(zygote_server, script)  # served after the hang-up was seen
    try:
        assert runtime.alive(pid) and runtime.alive(other_pid)
    finally:
        for p in (pid, other_pid):
            os.kill(p, signal.SIGKILL)
        other.close()
    wait_for(lambda: [runtime.alive(p) for p in (pid, other_pid)], lambda v: v == [False, False], timeout=10,
             what="the test's children ended")
