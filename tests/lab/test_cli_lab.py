"""The calicolab CLI end to end: exit codes, bad input creates nothing, exec, status, tools."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.lab import state as labstate
from testbed.lab.clean import clean_lab
from tests.lab.lab_helpers import SMALL, leftovers, write_topology
from tests.support import require_root, require_tool, unique

pytestmark = pytest.mark.lab

CLI = [sys.executable, "-m", "testbed.cli"]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=str(labstate.REPO))


def shell_session(lab: str, node: str, line: str, timeout: float = 20) -> str:
    """Type ``line`` into `calicolab shell NODE` on a pty; return everything it printed."""
    import pty
    import select
    import time

    master, slave = pty.openpty()
    def controlling_tty() -> None:  # as a terminal emulator does
        import fcntl
        import termios

        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([*CLI, "--lab", lab, "shell", node], stdin=slave, stdout=slave,
                            stderr=slave, cwd=str(labstate.REPO), start_new_session=True,
                            preexec_fn=controlling_tty)
    os.close(slave)
    os.write(master, (line + "\n").encode())
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=5) == 3, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return out.decode(errors="replace")


@pytest.fixture
def names():
    """Unique lab names, each cleaned at teardown."""
    require_root()
    require_tool("mnexec")
    require_tool("etcd")
    made: list[str] = []

    def make() -> str:
        made.append(unique("ct"))
        return made[-1]

    yield make
    for n in made:
        clean_lab(n)


def test_bad_input_exits_2_and_creates_nothing(names, tmp_path):
    name = names()
    before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsegments: [\n")
    res = cli("up", str(bad), "--name", name)
    assert res.returncode == 2 and "bad.yaml:3: malformed YAML" in res.stderr, res.stderr
    bad.write_text(SMALL.format(name=name) + "colour: red\n")
    res = cli("up", str(bad))
    assert res.returncode == 2 and "colour: unknown field" in res.stderr, res.stderr
    bad.write_text(SMALL.format(name=name).replace("172.30.60.11", "172.30.99.11"))
    res = cli("up", str(bad))
    assert res.returncode == 2 and "nodes[1].address" in res.stderr and "outside" in res.stderr
    assert not labstate.state_dir(name).exists()
    after = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    assert {n for n in after - before if n.startswith(name)} == set()
    assert cli("up", str(tmp_path / "missing.yaml")).returncode == 2


def test_up_status_exec_tools_down(names, tmp_path):
    name = names()
    path = write_topology(tmp_path, name)
    res = cli("up", str(path), "--no-cni", "--ready-timeout", "5")
    assert res.returncode == 0, res.stderr
    assert "the control plane as static pods on m" in res.stderr and f"lab {name} is up" in res.stdout
    # the lab outlives the command; a second up of the same name is refused
    again = cli("up", str(path), "--no-cni")
    assert again.returncode == 4 and "already running" in again.stderr
    st = labstate.read_state(name)
    assert st is not None and labstate.is_running(st)

    res = cli("status", "--lab", name, "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert [(n["name"], n["address"], n["role"]) for n in info["nodes"]] == [
        ("m", "172.30.60.10", "control-plane"), ("w0", "172.30.60.11", "worker")]
    assert info["nodes"][0]["services"]["kubelet"]["running"] is True
    human = cli("--lab", name, "status")
    assert human.returncode == 0 and "172.30.60.11" in human.stdout

    res = cli("--lab", name, "exec", "w0", "--", "ip", "-o", "-4", "addr", "show", "eth0")
    assert res.returncode == 0 and "172.30.60.11/24" in res.stdout, res.stderr
    res = cli("--lab", name, "exec", "w0", "--", "sh", "-c", "echo $NODE_NAME $ETCD_ENDPOINTS; exit 7")
    assert res.returncode == 7 and res.stdout.split() == ["w0", "http://172.30.60.10:2379"]
    res = cli("--lab", name, "exec", "nosuch", "--", "true")
    assert res.returncode == 2 and "no node 'nosuch'" in res.stderr
    res = cli("exec", "--lab", name, "w0", "--", "sh", "-c", "command -v kubectl calicoctl")
    # kubectl in a node shell: the real one, with the lab's admin kubeconfig
    assert res.returncode == 0 and "/.venv/bin/kubectl" in res.stdout
    res = cli("kubectl", "--lab", name, "get", "pods", "-n", "kube-system", "-o", "name")
    assert res.returncode == 0, res.stderr
    assert {"pod/etcd-m", "pod/kube-apiserver-m", "pod/kube-controller-manager-m",
            "pod/kube-scheduler-m"} <= set(res.stdout.split()), res.stdout

    # calicoctl from the machine reaches the lab's etcd (inside the control-plane netns)
    res = cli("calicoctl", "--lab", name, "get", "ippools", "-o", "json")
    assert "DatastoreUnavailable" not in res.stderr and "unavailable" not in res.stderr.lower(), \
        res.stderr
    assert res.returncode == 0, res.stderr

    # an interactive shell in the node: its hostname, prompt, tools and environment
    out = shell_session(name, "w0", "hostname; echo NN=$NODE_NAME; command -v calicoctl; exit 3")
    assert "root@w0" in out and "w0\r\nNN=w0\r\n" in out, out
    assert "no job control" not in out, out
    assert "/.venv/bin/calicoctl" in out

    res = cli("down", name)
    assert res.returncode == 0, res.stderr
    assert leftovers(st) == []
    assert cli("down", name).returncode == 3


def test_no_lab_running_is_exit_3(names):
    name = names()
    res = cli("--lab", name, "status")
    assert res.returncode == 3 and f"no lab named '{name}'" in res.stderr


def test_help_everywhere(capsys):
    from testbed.cli import main

    for args in ([], ["up"], ["down"], ["status"], ["clean"], ["shell"], ["exec"], ["install-cni"],
                 ["list"]):
        with pytest.raises(SystemExit) as info:
            main([*args, "--help"])
        out = capsys.readouterr().out
        assert info.value.code == 0 and "usage: calicolab" in out, args
    assert cli("clean", "no-such-lab-xyz").returncode == 3


def test_clean_command_removes_a_crashed_lab(names, tmp_path):
    name = names()
    path = write_topology(tmp_path, name)
    assert cli("up", str(path), "--no-cni", "--ready-timeout", "5").returncode == 0
    st = labstate.read_state(name)
    assert st is not None
    os.kill(st["supervisor"]["pid"], 9)
    res = cli("clean", name)  # only ours: other labs on this machine may be in use
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"lab {name}:" in res.stdout
    assert leftovers(st) == []
    assert not Path("/run/netns", f"{name}-m").exists()
