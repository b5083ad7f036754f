"""The thin ``calico`` executable forwards to a warm CNIServer running in the node (joining
the caller's mount namespace for a caller in another one), and falls back to in-process
work when the server is absent or in another network namespace."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

import pytest

from testbed.poll import wait_for
from tests.netns import cni_support
from tests.netns.cni_support import REPO, CniNode
from tests.support import terminate

pytestmark = pytest.mark.netns
cni_node = cni_support.cni_node  # fixture
node = cni_support.node  # fixture

def _pids_in_log(stderr: str) -> set[int]:
    return {int(p) for p in re.findall(r"\]\[(\d+)\] ", stderr)}


@pytest.fixture
def server(node: CniNode):
    sock = str(node.tmp / f"{cni_support.unique('cni')}.sock")
    proc = subprocess.Popen(["nsenter", f"--net={node.nspath}", sys.executable, "-m", "cni.server", "--socket", sock],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]  # "listening", then "ready" once imported
        assert [ln.strip() for ln in lines] == ["listening", "ready"], (
            lines, proc.stderr.read() if proc.poll() is not None else "")
        yield proc, sock
    finally:
        terminate(proc, timeout=10)


def test_requests_are_served_by_the_warm_server(node, netns, server):
    proc, sock = server
    pod = netns("cnip")
    pp = f"/run/netns/{pod}"
    add = node.run("ADD", node.conf("1.1.0"), cid="srv01", netns=pp, socket=sock)
    assert add.rc == 0, add.stdout + add.stderr
    assert _pids_in_log(add.stderr) == {proc.pid}, add.stderr  # the work happened in the server process
    # the log says how long the request waited for one of the server's workers
    assert re.search(r"done in [\d.]+ ms \(ms: .*\), after \d+ ms queued for a CNI server worker", add.stderr), add.stderr
    ip = add.json["ips"][0]["address"]
    assert f"inet {ip}" in node.ip("addr", "show", "eth0", pod=pod)
    assert "calic440f455693" in node.ip("link")
    chk = node.run("CHECK", {**node.conf("1.1.0"), "prevResult": add.json}, cid="srv01", netns=pp, socket=sock)
    assert chk.rc == 0, chk.stdout
    bad = node.run("ADD", b"{broken", cid="srv02", netns=pp, socket=sock)
    assert bad.json["code"] == 6
    dele = node.run("DEL", node.conf("1.1.0"), cid="srv01", netns=pp, socket=sock)
    assert dele.rc == 0 and _pids_in_log(dele.stderr) == {proc.pid}
    assert "calic440f455693" not in node.ip("link")
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=10)[0]
    assert "served=4 refused=0" in out
    assert not os.path.exists(sock)


def test_caller_in_another_mount_namespace_is_served_in_it(node, netns, server):
    """calico-node runs as a pod with mounts of its own: the kubelet's plugin exec is in
    another mount namespace. The server serves it with paths resolved in the caller's
    mount namespace: here CNI_NETNS exists only there (a tmpfs of the caller's)."""
    proc, sock = server
    pod = netns("cnip")
    pp = f"/run/netns/{pod}"
    private = node.tmp / cni_support.unique("mnt")
    private.mkdir()
    wrapper = ("nsenter", f"--net={node.nspath}", "unshare", "--mount", "--propagation", "private", "sh", "-c",
               f'mount -t tmpfs cnimnt {private} && touch {private}/pod && mount --bind {pp} {private}/pod'
               ' && exec "$0"')
    add = node.run("ADD", node.conf(), cid="mnt01", netns=f"{private}/pod", socket=sock, wrapper=wrapper)
    assert add.rc == 0, add.stdout + add.stderr
    assert _pids_in_log(add.stderr) == {proc.pid}, add.stderr  # served by the server, not in-process
    assert not os.path.exists(f"{private}/pod")  # the path exists in the caller's mount namespace only
    ip = add.json["ips"][0]["address"]
    assert f"inet {ip}" in node.ip("addr", "show", "eth0", pod=pod)
    dele = node.run("DEL", node.conf(), cid="mnt01", netns=pp, socket=sock)  # its own namespace again
    assert dele.rc == 0 and _pids_in_log(dele.stderr) == {proc.pid}, dele.stdout + dele.stderr
    proc.send_signal(signal.SIGTERM)
    assert "served=2 refused=0" in proc.communicate(timeout=10)[0]


def test_an_add_while_calico_node_starts_waits_for_its_start_up(node, netns, server):
    """calico-node writes the CNI config first (as Calico's install-cni init container) and its
    nodename file at the end of start-up: an ADD in between is held by the server until the
    file is there (and, with an auto MTU, Felix's MTU file too), then served; in-process (no
    server) it fails at once with Calico's error, and the runtime retries."""
    proc, sock = server
    pod = netns("cnip")
    pp = f"/run/netns/{pod}"
    starting = node.tmp / cni_support.unique("nodename")
    missing = f"stat {starting}: no such file or directory: check that the calico/node container is running"
    alone = node.run("ADD", node.conf(nodename_file=str(starting)), cid="start01", netns=pp)
    assert alone.rc == 1 and alone.json["code"] == 999 and missing in alone.json["msg"], alone.stdout
    assert "cali" not in node.ip("link")
    writer = threading.Timer(0.5, starting.write_text, args=("k8s-w0",))
    writer.start()
    try:
        add = node.run("ADD", node.conf(nodename_file=str(starting), mtu=1440), cid="start01", netns=pp, socket=sock)
    finally:
        writer.cancel()
    assert add.rc == 0, add.stdout + add.stderr
    assert add.seconds >= 0.5 and _pids_in_log(add.stderr) == {proc.pid}, (add.seconds, add.stderr)
    assert "waited" in add.stderr and "for calico-node's start-up" in add.stderr, add.stderr
    assert "mtu 1440" in node.ip("link", "show", "eth0", pod=pod)
    assert node.run("DEL", node.conf(nodename_file=str(starting)), cid="start01", netns=pp, socket=sock).rc == 0
    assert "cali" not in node.ip("link")


def test_a_refused_request_is_said_in_the_servers_output(server):
    """The caller of a refused request does the work in-process (slower): the server says why."""
    import select

    from cni.main import forward

    proc, sock = server
    # this test process is in the host's network namespace, the server in the node's
    assert forward("calico", {b"CNI_COMMAND": b"VERSION"}, b"", sock) is None
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 10)
    line = proc.stdout.readline() if ready else "(nothing in 10 s)"
    assert line.strip() == "refused a request: caller is in another network namespace than the CNI server", line


def test_no_server_means_in_process(node, netns):
    pod = netns("cnip")
    add = node.run("ADD", node.conf(), cid="nosrv", netns=f"/run/netns/{pod}",
                   socket=str(node.tmp / "absent.sock"))
    assert add.rc == 0, add.stdout
    assert "done in" in add.stderr and "queued" not in add.stderr, add.stderr  # no server, no queue
    wait_for(lambda: node.ip("link"), lambda out: "calic440f455693" in out, timeout=2, what="host veth")
    assert node.run("DEL", node.conf(), cid="nosrv", netns=f"/run/netns/{pod}").rc == 0


def test_fast_launcher_serves_both_plugins(node, netns, server):
    proc, sock = server
    pod = netns("cnip")
    pp = f"/run/netns/{pod}"
    launcher = REPO / "cni" / "bin"
    ver = node.run("VERSION", b"", exe=str(launcher / "calico-ipam"))
    assert ver.json["supportedVersions"] == ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
    add = node.run("ADD", node.conf(), cid="fast01", netns=pp, socket=sock, exe=str(launcher / "calico"))
    assert add.rc == 0 and _pids_in_log(add.stderr) == {proc.pid}, add.stdout + add.stderr
    ipam = node.run("ADD", node.conf(), cid="fast02", plugin="calico-ipam", exe=str(launcher / "calico-ipam"),
                    netns=pp)  # standalone (socket none): in-process under python3 -IS
    assert ipam.rc == 0 and "interfaces" not in ipam.json, ipam.stdout + ipam.stderr
    assert node.run("DEL", node.conf(), cid="fast02", plugin="calico-ipam", exe=str(launcher / "calico-ipam")).rc == 0
    assert node.run("DEL", node.conf(), cid="fast01", netns=pp, socket=sock, exe=str(launcher / "calico")).rc == 0
    assert "cali" not in node.ip("link")


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_server_ends_with_the_calico_node_that_started_it(tmp_path):
    """calico-node runs the server as ``python -m cni.server --parent <its pid>``: when
    calico-node dies (even by SIGKILL) the server stops and removes its socket."""
    sock = tmp_path / "cni.sock"
    # the shell starts the server with --parent $$, then becomes `sleep` (same PID)
    starter = subprocess.Popen(
        ["sh", "-c", f'"$0" -m cni.server --socket {sock} --parent $$ & echo $!; exec sleep 60',
         sys.executable], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert starter.stdout is not None
    server_pid = int(starter.stdout.readline())
    try:
        assert [starter.stdout.readline().strip() for _ in range(2)] == ["listening", "ready"]
        assert sock.exists()
        starter.kill()
        starter.wait()
        wait_for(lambda: _running(server_pid), lambda alive: not alive, timeout=10,
                 what=f"CNI server {server_pid} to end after its parent was killed")
        assert not sock.exists()
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait()
        if _running(server_pid):
            os.kill(server_pid, signal.SIGKILL)


def test_a_worker_leaves_a_callers_mount_namespace_after_ipam_reads_at_once(tmp_path):
    """IPAM's concurrent reads run on reader threads; started by a CNI server worker while it
    was in a caller's mount namespace, they shared its filesystem attributes, its way back
    failed (setns: EINVAL) and it refused every request after ("server worker is not in the
    node's network or the server's mount namespace": each one then ran in-process, paying
    the imports). The server starts them from its main thread."""
    other = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "60"])
    code = f"""
import os, threading
from cni import server
from ipam import kddstore
from kernel import netns

{{started}}
home = os.stat("/proc/thread-self/ns/mnt").st_ino
out = []

def worker():
    server._private_fs()
    fd = os.open("/proc/{other.pid}/ns/mnt", os.O_RDONLY)
    try:
        with netns.entered(fd, netns.CLONE_NEWNS):
            inside = os.stat("/proc/thread-self/ns/mnt").st_ino
            got = kddstore._concurrently([lambda: 1, lambda: 2, lambda: 3])
        out.append((inside != home, got, os.stat("/proc/thread-self/ns/mnt").st_ino == home))
    except OSError as exc:
        out.append(("error", exc.errno))

t = threading.Thread(target=worker)
t.start()
t.join()
print(out)
"""
    try:
        wait_for(lambda: os.stat(f"/proc/{other.pid}/ns/mnt").st_ino != os.stat("/proc/self/ns/mnt").st_ino,
                 lambda moved: moved, timeout=10, what="a process in a mount namespace of its own")
        # as the server does: the readers started by the main thread, then the worker in and out
        fixed = subprocess.run([sys.executable, "-c", code.format(started="kddstore.readers()")],
                               capture_output=True, text=True, cwd=REPO, timeout=60)
        assert fixed.stdout.strip() == "[(True, [1, 2, 3], True)]", fixed.stdout + fixed.stderr
        # what a worker that started them met: it could not leave (EINVAL)
        broken = subprocess.run([sys.executable, "-c", code.format(started="")],
                                capture_output=True, text=True, cwd=REPO, timeout=60)
        assert broken.stdout.strip() == "[('error', 22)]", broken.stdout + broken.stderr
    finally:
        terminate(other, timeout=10)
