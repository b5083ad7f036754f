"""kernel.sockdiag against the kernel: the ports a namespace listens on, as ``ss -ltn`` shows
them, and the kubelet's runtime.listening(pid, port) on a real process."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from kernel import netns, sockdiag
from testbed.k8s import runtime
from testbed.poll import wait_for

pytestmark = pytest.mark.netns

LISTENER = """
import socket, sys, time
a = socket.socket(); a.bind(("127.0.0.1", 18080)); a.listen()
b = socket.socket(socket.AF_INET6); b.bind(("::", 18443)); b.listen()
c = socket.socket(); c.bind(("127.0.0.1", 18081))  # bound, not listening
print("up", flush=True); time.sleep(60)
"""


def test_listening_ports_match_ss_and_the_kubelets_check(tmp_path):
    path = str(tmp_path / f"sd-{uuid.uuid4().hex[:8]}")
    netns.create(path)
    proc = None
    try:
        assert sockdiag.listening_ports(path) == set()
        proc = subprocess.Popen(["nsenter", f"--net={path}", sys.executable, "-c", LISTENER],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "up"
        ports = wait_for(lambda: sockdiag.listening_ports(path), lambda p: p == {18080, 18443}, timeout=5,
                         what="the listeners through sock_diag")
        ss = subprocess.run(["nsenter", f"--net={path}", "ss", "-ltnH"], capture_output=True, text=True,
                            check=True).stdout
        assert {int(line.split()[3].rsplit(":", 1)[1]) for line in ss.splitlines()} == ports
        assert sockdiag.listening_ports(f"/proc/{proc.pid}/ns/net") == ports  # by the process's namespace
        assert runtime.listening(proc.pid, 18080) and runtime.listening(proc.pid, 18443)
        assert not runtime.listening(proc.pid, 18081)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        runtime.remove_netns(path)
    assert not runtime.listening(proc.pid, 18080)  # the process is gone
