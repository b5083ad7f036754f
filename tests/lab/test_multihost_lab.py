"""Labs spread over machines reached over SSH (issue 19).

The "remote hosts" are network namespaces on this machine, each running Debian's sshd with
its own host key, authorized key, port, pid file and lab state root (tests/sshhosts.py);
everything goes through paramiko (commands, file transfer, pcaps pulled back) and the
segment spanning them through kernel VXLAN between their addresses.

- the walkthrough with its nodes spread over two hosts: its flows (the four of the
  walkthrough, and the policy ones), asserted on pcaps pulled back from the hosts; status,
  exec, shell, capture across hosts; nothing left;
- bad input refused before anything is made: an unreachable host, a key it does not
  accept, a host key that is not the one given (each error names the host);
- a host that dies mid-lab: status, exec and down name it; everything on the other host
  is removed; once it is back, `calicolab clean` removes its part too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testbed.lab import state as labstate
from testbed.walkthrough import Walkthrough
from tests.sshhosts import REPO, SimHosts, part_leftovers, spread_walkthrough
from tests.support import require_root, require_tool, unique

pytestmark = pytest.mark.lab

TWO = """\
name: {name}
segments:
  - {{name: lan0, cidr: 172.30.62.0/24}}
nodes:
  - {{name: m, role: control-plane, address: 172.30.62.10, segment: lan0, host: {cp}}}
  - {{name: w0, role: worker, address: 172.30.62.11, segment: lan0, host: hb}}
calico: {{datastore: etcdv3}}
"""


@pytest.fixture
def hosts(tmp_path):
    require_root()
    require_tool("ssh-keygen")
    require(Path("/usr/sbin/sshd").exists(), "needs Debian's openssh-server (scripts/setup.sh)")
    hs = SimHosts(tmp_path / "hosts")
    yield hs
    hs.close()


def require(cond: bool, reason: str) -> None:
    from tests.support import require as _require

    _require(cond, reason)


def cli(*args: str, timeout: float = 300, env: dict | None = None,
        input: str | None = None) -> subprocess.CompletedProcess:  # noqa: A002
    return subprocess.run([sys.executable, "-m", "testbed.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=str(REPO), input=input,
                          env=dict(os.environ, CALICOLAB_SSH_TIMEOUT="3", **(env or {})))


def on_terminal(argv: list[str], keys: bytes, prompt: bytes = b"# ",
                timeout: float = 60) -> tuple[int, bytes]:
    """Run ``argv`` on a new pty (as a user at a terminal), type ``keys`` once ``prompt`` shows;
    (exit status, everything the terminal showed)."""
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.execv(argv[0], argv)
    out = b""
    typed = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.5)
        if r:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            out += data
            if not typed and prompt in out:
                os.write(fd, keys)
                typed = True
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), out


def clean_everywhere(hs: SimHosts, lab: str) -> None:
    cli("clean", lab)
    for name in hs.hosts:
        hs.reap(name, lab)


def test_walkthrough_over_two_ssh_hosts(hosts, tmp_path, monkeypatch):
    """The must-hold: the four flows pass, asserted on pcaps pulled back from both hosts."""
    lab = unique("mh")
    topo = spread_walkthrough(tmp_path, hosts, lab)
    monkeypatch.setenv("CALICOLAB_PCAPS", str(tmp_path / "pcaps"))
    wt = Walkthrough(lab, topo, progress=lambda m: print(m, flush=True))
    try:
        wt.up()
        wt.install()
        wt.inspect()
        wt.wait_routes()
        wt.deploy()
        assert wt.pods["k8s-w0"].node == "k8s-w0" and wt.pods["k8s-w1"].node == "k8s-w1"
        wt.start_captures()
        wt.run_flows()
        wt.check_flows()
        bad = {f.name: f.error or f.result for f in wt.flows if not f.ok}
        names = {f.name for f in wt.flows}
        assert {"same-node", "cross-node", "internet", "service"} <= names and not bad, (names, bad)
        run_dir = Path(wt.captures.run_dir)
        assert run_dir.parent.parent == tmp_path / "pcaps"
        # the pcaps came back here from the machine of each node
        for node, iface in (("k8s-w0", "eth0"), ("k8s-w0", "tunl0"), ("k8s-w1", "eth0"),
                            ("k8s-w1", "tunl0"), ("internet", "eth0")):
            assert (run_dir / f"{node}-{iface}.pcap").stat().st_size > 24, (node, iface)
        for name in ("ha", "hb"):  # and nothing of them stays there
            assert not list((hosts[name].run_dir / "pcaps").rglob("*.pcap")), name
        report = wt.write_report()
        assert report.exists()

        # status across the hosts: every node, the machine it is on, calico-node ready
        st = cli("status", "--lab", lab, "--json")
        assert st.returncode == 0, st.stderr
        info = json.loads(st.stdout)
        where = {n["name"]: (n["host"], n["agent"]) for n in info["nodes"]}
        assert where == {"k8s-m": ("ha", "ready"), "k8s-w0": ("ha", "ready"),
                         "k8s-w1": ("hb", "ready")}, where
        assert all(m["ok"] for m in info["machines"].values())
        text = cli("status", "--lab", lab)
        assert text.returncode == 0 and f"host hb (root@{hosts['hb'].address}:" in text.stdout

        # exec on a node of the other host: lan0 there carries VXLAN, eth0 its MTU
        ex = cli("--lab", lab, "exec", "k8s-w1", "--", "ip", "-o", "link", "show", "eth0")
        assert ex.returncode == 0 and " mtu 1450 " in ex.stdout, ex.stdout + ex.stderr
        ex = cli("--lab", lab, "exec", "k8s-w1", "--", "sh", "-c", "exit 7")
        assert ex.returncode == 7
        seg = hosts.sh("hb", "ip", "-n", f"{lab}-lan0@hb", "-d", "link", "show", "vx.hosts")
        assert "vxlan id" in seg.stdout and "master lan0" in seg.stdout, seg.stdout + seg.stderr
        fdb = hosts.sh("hb", "bridge", "-n", f"{lab}-lan0@hb", "fdb", "show", "dev", "vx.hosts")
        assert f"dst {hosts['ha'].address}" in fdb.stdout, fdb.stdout
        # a pod on hb, from here: kubectl exec on the control plane's machine, via hb's kubelet API
        ex = cli("--lab", lab, "exec", "default/k8s-w1", "--", "hostname")
        assert ex.returncode == 0, ex.stderr
        # a shell in a node of the other host: piped, then on a terminal (a pty over SSH)
        sh = cli("--lab", lab, "shell", "k8s-w1", input="ip -o link show tunl0; exit 3\n")
        assert sh.returncode == 3 and "tunl0" in sh.stdout, sh.stdout + sh.stderr
        rc, out = on_terminal([sys.executable, "-m", "testbed.cli", "--lab", lab, "shell", "k8s-w1"],
                              b"echo MARK-$((40+2)) $(hostname); exit\n")
        assert rc == 0 and b"MARK-42 k8s-w1" in out, out[-800:]

        # `calicolab capture` across hosts: files pulled back into pcaps/<lab>/<run>/
        assert cli("--lab", lab, "capture", "start", "--nodes", "k8s-w0,k8s-w1", "--ifaces",
                   "eth0", "--run", "cli").returncode == 0
        w1 = wt.nodes["k8s-w1"]["address"]
        assert cli("--lab", lab, "exec", "k8s-w0", "--", "ping", "-c", "2", "-W", "2",
                   w1).returncode == 0
        stop = cli("--lab", lab, "capture", "stop")
        assert stop.returncode == 0, stop.stdout + stop.stderr
        from testbed.capture import pcapassert as pa

        got = tmp_path / "pcaps" / lab / "cli"
        pa.load(got / "k8s-w1-eth0.pcap").expect(pa.icmp(8), at_least=2)
        pa.load(got / "k8s-w0-eth0.pcap").expect(pa.icmp(0), at_least=2)
    finally:
        if wt.captures is not None and wt.captures.result is None:
            wt.captures.stop()
        down = cli("down", lab)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not labstate.state_dir(lab).exists()
    for name in ("ha", "hb"):
        assert part_leftovers(hosts, name, lab) == [], name


@pytest.mark.parametrize("fault", ["unreachable", "wrong-key", "wrong-host-key"])
def test_bad_host_is_refused_naming_it_before_anything_is_made(hosts, tmp_path, fault):
    lab = unique("mh")
    specs = hosts.specs()
    hb = specs[1]
    if fault == "unreachable":
        hb["address"] = f"198.18.{hosts.subnet}.99"
        want = f"host hb (root@{hb['address']}:{hb['port']}): is unreachable"
    elif fault == "wrong-key":
        hb["key"] = str(hosts.other_key)
        want = f"host hb (root@{hb['address']}:{hb['port']}): authentication as root with key " \
               f"{hosts.other_key} failed"
    else:
        hb["hostKey"] = str(hosts["ha"].host_pub)
        want = f"host hb (root@{hb['address']}:{hb['port']}): its host key ssh-ed25519"
    path = tmp_path / "t.yaml"
    path.write_text(TWO.format(name=lab, cp="ha") + yaml.safe_dump({"hosts": specs}))
    try:
        res = cli("up", str(path), timeout=120)
        assert res.returncode == 1, res.stdout + res.stderr
        assert want in res.stderr, res.stderr
        assert not labstate.state_dir(lab).exists()
        for name in ("ha", "hb"):
            assert part_leftovers(hosts, name, lab) == [], name
    finally:
        clean_everywhere(hosts, lab)


def test_a_host_lost_mid_lab_is_named_and_the_others_are_cleaned(hosts, tmp_path):
    """The control plane on this machine, a worker on hb: hb dies; this machine is cleaned."""
    lab = unique("mh")
    path = tmp_path / "t.yaml"
    path.write_text(TWO.format(name=lab, cp="local")
                    + yaml.safe_dump({"hosts": [hosts["hb"].spec(hosts.key)]}))
    local_run = labstate.state_dir(lab) / "local"
    try:
        up = cli("up", str(path))
        assert up.returncode == 0, up.stdout + up.stderr
        assert cli("--lab", lab, "exec", "w0", "--", "ping", "-c", "1", "-W", "2",
                   "172.30.62.10").returncode == 0
        hosts.kill("hb")
        hb = f"host hb (root@{hosts['hb'].address}:{hosts['hb'].port})"

        st = cli("status", "--lab", lab)
        assert st.returncode == 1 and f"{hb}: UNREACHABLE (w0)" in st.stdout, st.stdout + st.stderr
        assert "this machine: ok" in st.stdout, st.stdout
        ex = cli("--lab", lab, "exec", "w0", "--", "true")
        assert ex.returncode == 1 and f"error: {hb}: is unreachable" in ex.stderr, ex.stderr
        nodes = cli("--lab", lab, "kubectl", "get", "nodes")  # the control plane is here
        assert nodes.returncode == 0 and "w0" in nodes.stdout, nodes.stderr

        down = cli("down", lab)
        assert down.returncode == 1, down.stdout + down.stderr
        assert f"{hb}: is unreachable" in down.stderr and f"calicolab clean {lab}" in down.stderr
        assert part_leftovers(None, "local", lab, run_dir=local_run) == []
        rec = labstate.read_state(lab)
        assert rec is not None and rec["multihost"]["unreached"] == ["hb"]
        assert part_leftovers(hosts, "hb", lab) != []  # it is out of reach, not gone

        hosts.revive("hb")  # back: `calicolab clean` now removes its part too
        again = cli("clean", lab)
        assert again.returncode == 0, again.stdout + again.stderr
        assert not labstate.state_dir(lab).exists()
        assert part_leftovers(hosts, "hb", lab) == []
    finally:
        clean_everywhere(hosts, lab)


def test_clean_when_a_host_and_its_key_are_gone_removes_everything_here_and_names_it(tmp_path):
    """After a failed multi-machine run (its `down` could not reach hb; hb and the key to it are
    gone since): `calicolab clean` removes all the lab left on this machine and says which
    machine it could not reach, why, and what is left there."""
    from testbed.multihost.hosts import Machine

    require_root()
    lab = unique("mh")
    key = tmp_path / "id_ed25519"  # the test's key, deleted with its directory
    hb = Machine("hb", address="198.18.0.99", port=2222, key=str(key), run_dir="/run/calicolab")
    record = {"lab": lab, "topology": str(tmp_path / "t.yaml"), "phase": "failed",
              "error": "host hb: is unreachable", "hosts": {}, "netns": [], "cgroup": None,
              "multihost": {"machines": {"hb": hb.record()}, "placement": {"w0": "hb"},
                            "tunnels": {}, "unreached": ["hb"]}}
    sdir = labstate.state_dir(lab)
    (sdir / "local" / ".pycache").mkdir(parents=True)
    (sdir / "local" / ".pycache" / "x.pyc").write_bytes(b"")
    labstate.write_state(lab, record)
    try:
        res = cli("clean", lab, timeout=60)
        out = res.stdout + res.stderr
        assert res.returncode == 1, out
        assert f"host hb (root@198.18.0.99:2222): cannot read its key {key}" in out, out
        assert f"its part of lab {lab} is left on it (`calicolab clean {lab}` on that machine" \
            in out, out
        assert not sdir.exists(), sorted(map(str, sdir.rglob("*")))
        assert lab not in cli("list").stdout
    finally:
        import shutil

        shutil.rmtree(sdir, ignore_errors=True)
