"""testbed.capture in real namespaces: tcpdump per interface, late interfaces, clean stop.

Each test builds its own namespaces (the ``netns`` fixture removes them, on
failure too), captures, sends real traffic (ping, curl to busybox httpd, proxy
ARP) and checks the files with testbed.capture.pcapassert and tshark.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from testbed.capture import pcapassert as pa
from testbed.capture.command import (
    STATE_ROOT,
    capture_command,
    lab_nodes,
    start_lab_capture,
    stop_lab_capture,
)
from testbed.capture.errors import CaptureError
from testbed.capture.group import REPO_ROOT, CaptureGroup
from testbed.capture.namespace import Capture
from testbed.capture.pcapfile import check_pcap
from testbed.poll import wait_for
from tests.support import require_root, require_tool, sh, unique

pytestmark = pytest.mark.netns

A_IP, B_IP = "192.0.2.1", "192.0.2.2"


@pytest.fixture
def pair(netns):
    """Two namespaces joined by a veth: a/va (192.0.2.1) <-> b/vb (192.0.2.2)."""
    require_tool("tcpdump")
    a, b = netns("cpa"), netns("cpb")
    sh("ip", "link", "add", "va", "netns", a, "type", "veth", "peer", "vb", "netns", b)
    sh("ip", "-n", a, "addr", "add", f"{A_IP}/24", "dev", "va")
    sh("ip", "-n", b, "addr", "add", f"{B_IP}/24", "dev", "vb")
    sh("ip", "-n", a, "link", "set", "va", "up")
    sh("ip", "-n", b, "link", "set", "vb", "up")
    return a, b


@pytest.fixture
def httpd(pair, tmp_path):
    """busybox httpd on b:80 (killed by PID at teardown)."""
    busybox = require_tool("busybox")
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello from b\n")
    _a, b = pair
    proc = subprocess.Popen(["ip", "netns", "exec", b, busybox, "httpd", "-f", "-p", "80", "-h",
                             str(www)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: sh("ss", "-ltnH", "sport = :80", netns=b), lambda out: ":80" in out,
                 timeout=5, what="busybox httpd listening in b")
        yield proc
    finally:
        proc.kill()
        proc.wait()


def curl(ns: str, url: str) -> str:
    return sh("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", url,
              netns=ns)


def tshark_ok(path: Path) -> str:
    tshark = require_tool("tshark")
    res = subprocess.run([tshark, "-n", "-r", str(path)], capture_output=True, text=True,
                         timeout=30)
    errors = [x for x in res.stderr.splitlines() if x.strip() and not x.startswith("Running as")]
    assert res.returncode == 0 and not errors, f"tshark on {path}: {res.stderr}"
    return res.stdout


def test_capture_http_and_ping_on_both_ends(pair, httpd, tmp_path):
    a, b = pair
    run = tmp_path / "run"
    group = CaptureGroup({"a": a, "b": b}, run, ifaces="v*").start()
    assert group.captures["a"].listening() == ["va"]
    assert curl(a, f"http://{B_IP}/") == "200"
    sh("ping", "-c", "2", "-i", "0.05", B_IP, netns=a)
    res = group.stop()
    assert res.errors == []
    assert sorted(p.name for p in res.paths()) == ["a-va.pcap", "b-vb.pcap"]
    for node, iface in (("a", "va"), ("b", "vb")):
        tr = group.trace(node, iface)
        pa.assert_http_exchange(tr, A_IP, B_IP, port=80, status=200)
        tr.expect(pa.inner(A_IP, B_IP) & pa.icmp(8), exactly=2)
        tr.expect(pa.inner(B_IP, A_IP) & pa.icmp(0), exactly=2)
        out = tshark_ok(group.file(node, iface))
        assert "HTTP/1.1 200 OK" in out or "HTTP/1.0 200 OK" in out
    # every packet sent was written: the FIN exchange and the last echo reply included
    assert res.files[0].packets == check_pcap(group.file("a", "va"))
    print(res.table())


def test_interface_appearing_while_capturing_is_picked_up(pair, tmp_path):
    a, b = pair
    cap = Capture(a, tmp_path, node="node", ifaces="cali*").start()
    assert cap.listening() == []
    host_if, pod_if = f"cali{unique('')}", "eth0"
    sh("ip", "link", "add", host_if, "netns", a, "type", "veth", "peer", pod_if, "netns", b)
    sh("ip", "-n", a, "addr", "add", "198.51.100.1/24", "dev", host_if)
    sh("ip", "-n", b, "addr", "add", "198.51.100.2/24", "dev", pod_if)
    sh("ip", "-n", b, "link", "set", pod_if, "up")
    sh("ip", "-n", a, "link", "set", host_if, "up")
    assert cap.wait_for_iface("cali*", timeout=15) == [host_if]
    sh("ping", "-c", "3", "-i", "0.05", "198.51.100.1", netns=b)
    results = cap.stop()
    assert [(r.iface, r.error) for r in results] == [(host_if, None)]
    tr = pa.load(tmp_path / f"node-{host_if}.pcap")
    tr.expect(pa.inner("198.51.100.2", "198.51.100.1") & pa.icmp(8), exactly=3)
    tshark_ok(tmp_path / f"node-{host_if}.pcap")


def test_proxy_arp_for_gateway_seen_on_cali(netns, tmp_path):
    """Calico's pod wiring in small: the pod ARPs for 169.254.1.1, the host veth answers."""
    require_tool("tcpdump")
    node, pod = netns("cpn"), netns("cpp")
    cali = f"cali{unique('')}"
    sh("ip", "link", "add", cali, "netns", node, "type", "veth", "peer", "eth0", "netns", pod)
    sh("ip", "-n", node, "link", "set", cali, "address", "ee:ee:ee:ee:ee:ee")
    sh("ip", "-n", node, "link", "add", "up0", "type", "veth", "peer", "up1")
    for cmd in (["link", "set", "up0", "up"], ["link", "set", "up1", "up"],
                ["addr", "add", "172.31.0.1/24", "dev", "up0"],
                ["route", "add", "169.254.1.1", "dev", "up0"],
                ["link", "set", cali, "up"], ["route", "add", "192.168.7.5/32", "dev", cali]):
        sh("ip", "-n", node, *cmd)
    for key, val in (("net.ipv4.ip_forward", "1"), (f"net.ipv4.conf.{cali}.proxy_arp", "1"),
                     (f"net.ipv4.neigh.{cali}.proxy_delay", "0")):
        sh("sysctl", "-qw", f"{key}={val}", netns=node)
    sh("ip", "-n", pod, "addr", "add", "192.168.7.5/32", "dev", "eth0")
    sh("ip", "-n", pod, "link", "set", "eth0", "up")
    sh("ip", "-n", pod, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
    sh("ip", "-n", pod, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
    with CaptureGroup({"k8s-w0": node}, tmp_path, ifaces="cali*") as group:
        sh("ping", "-c", "1", "172.31.0.1", netns=pod)
    assert group.result is not None and group.result.errors == []
    tr = group.trace("k8s-w0", cali)
    pa.assert_arp_gateway(tr, asker="192.168.7.5", before_traffic=True)
    tr.expect(pa.inner("192.168.7.5", "172.31.0.1") & pa.icmp(8))


def test_bad_input_is_rejected_clearly(pair, tmp_path):
    a, _b = pair
    with pytest.raises(CaptureError, match="network namespace 'nosuchns.*' does not exist"):
        Capture(unique("nosuchns"), tmp_path, ifaces="v*").start()
    with pytest.raises(CaptureError, match="bad capture filter 'tcp port eighty'"):
        Capture(a, tmp_path, ifaces="v*", bpf="tcp port eighty").start()
    assert list(tmp_path.iterdir()) == []  # nothing half-done
    with pytest.raises(ValueError, match="no interface glob"):
        Capture(a, tmp_path, ifaces=" , ")
    # a valid filter is applied: only ICMP lands in the file
    with CaptureGroup({"a": a}, tmp_path, ifaces="va", bpf="icmp") as g:
        sh("ping", "-c", "1", B_IP, netns=a)
    tr = g.trace("a", "va")
    assert len(tr) == 2 and all(f.icmp_type is not None for f in tr)


def test_check_pcap_detects_truncated_file(tmp_path):
    from scapy.layers.inet import IP, UDP
    from scapy.utils import wrpcap

    good = tmp_path / "good.pcap"
    wrpcap(str(good), [IP(dst=B_IP) / UDP() / (b"x" * 50)] * 3)
    assert check_pcap(good) == 3
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(CaptureError, match="packet 3 cut short"):
        check_pcap(cut)
    with pytest.raises(CaptureError, match="shorter than a pcap header"):
        (tmp_path / "e.pcap").write_bytes(b"")
        check_pcap(tmp_path / "e.pcap")


def test_lab_capture_start_stop_with_detached_process(netns, tmp_path, monkeypatch, capsys):
    """The backend of `calicolab capture start|stop` on namespaces named like a lab's nodes."""
    require_root()
    lab = unique("cpl")
    n1, n2 = f"{lab}-n1", f"{lab}-n2"
    # the netns fixture makes unique names; make lab-style names ourselves and remove them
    made = []
    try:
        for ns in (n1, n2):
            sh("ip", "netns", "add", ns)
            made.append(ns)
        sh("ip", "link", "add", "eth0", "netns", n1, "type", "veth", "peer", "eth0", "netns", n2)
        for i, ns in enumerate((n1, n2), start=1):
            sh("ip", "-n", ns, "addr", "add", f"203.0.113.{i}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        assert lab_nodes(lab) == ["n1", "n2"]
        info = start_lab_capture(lab, root=tmp_path, run="r1")
        try:
            assert info["listening"] == {"n1": ["eth0"], "n2": ["eth0"]}
            with pytest.raises(CaptureError, match="already running"):
                start_lab_capture(lab, root=tmp_path)
            sh("ping", "-c", "2", "-i", "0.05", "203.0.113.2", netns=n1)
        finally:
            final = stop_lab_capture(lab)
        assert final["status"] == "stopped" and final["errors"] == []
        names = sorted(Path(f["path"]).name for f in final["files"])
        assert names == ["n1-eth0.pcap", "n2-eth0.pcap"]
        assert Path(final["run_dir"]) == tmp_path / lab / "r1"
        pa.load(tmp_path / lab / "r1" / "n2-eth0.pcap").expect(pa.icmp(8), exactly=2)
        with pytest.raises(CaptureError, match="no capture is running"):
            stop_lab_capture(lab)
        with pytest.raises(CaptureError, match="has no node 'n9'"):
            start_lab_capture(lab, ["n9"], root=tmp_path)
        # the same through `calicolab capture start|status|stop` (capture_command)
        monkeypatch.setenv("CALICOLAB_PCAPS", str(tmp_path / "cli"))
        capsys.readouterr()
        assert capture_command(["start", "--nodes", "n2", "--filter", "icmp", "--run", "r2"],
                                  lab) == 0
        try:
            out = capsys.readouterr().out
            assert f"capturing in {tmp_path / 'cli' / lab / 'r2'}" in out and "n2: eth0" in out
            assert capture_command(["status"], lab) == 0
            assert "capturing in" in capsys.readouterr().out
            sh("ping", "-c", "1", "203.0.113.2", netns=n1)
        finally:
            rc = capture_command(["stop"], lab)
        out = capsys.readouterr().out
        assert rc == 0 and "n2-eth0.pcap" in out and "ok" in out, out
        assert len(pa.load(tmp_path / "cli" / lab / "r2" / "n2-eth0.pcap")) == 2
        assert capture_command(["stop"], lab) == 1
        assert "no capture is running" in capsys.readouterr().err
        assert capture_command(["start", "--filter", "tcp port eighty"], lab) == 1
        assert "bad capture filter" in capsys.readouterr().err
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        (STATE_ROOT / lab / "capture.log").unlink(missing_ok=True)
        try:
            (STATE_ROOT / lab).rmdir()
        except OSError:
            pass


FIXTURE_USER = textwrap.dedent('''
    import subprocess, uuid
    import pytest
    from testbed.capture.fixture import capture_fixture

    captures = capture_fixture()

    @pytest.fixture
    def ns():
        name = "cpf" + uuid.uuid4().hex[:6]
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
        subprocess.run(["ip", "netns", "delete", name])

    def test_passes(captures, ns):
        g = captures.netns({"x": ns}, ifaces="lo")
        subprocess.run(["ip", "netns", "exec", ns, "ping", "-c1", "127.0.0.1"], check=True)

    def test_fails(captures, ns):
        g = captures.netns({"x": ns}, ifaces="lo")
        subprocess.run(["ip", "netns", "exec", ns, "ping", "-c1", "127.0.0.1"], check=True)
        assert False, "deliberate"
''')


def test_fixture_keeps_pcaps_of_failed_test_only(tmp_path):
    require_root()
    require_tool("tcpdump")
    (tmp_path / "test_user_flow.py").write_text(FIXTURE_USER)
    root = tmp_path / "pcaps"
    env = dict(os.environ, CALICOLAB_PCAPS=str(root), PYTHONPATH=str(REPO_ROOT))
    env.pop("CALICOLAB_KEEP_PCAPS", None)
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-o", "addopts=", "--rootdir", str(tmp_path), str(tmp_path)],
                         capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert "1 failed, 1 passed" in res.stdout, res.stdout + res.stderr
    runs = sorted(p.name for p in (root / "netns").iterdir())
    assert len(runs) == 1 and runs[0].startswith("test_fails-"), runs
    kept = root / "netns" / runs[0] / "x-lo.pcap"
    pa.load(kept).expect(pa.icmp(8), exactly=1)
    assert "pcaps kept in" in res.stdout + res.stderr
    json.dumps(runs)
