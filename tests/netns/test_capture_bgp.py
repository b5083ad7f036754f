"""BGP on the wire: two real BIRD daemons peer across a veth while we capture tcp/179,
and testbed.capture.pcapassert decodes BIRD's own OPEN and UPDATE bytes (ADD-PATH included).

This is the ground truth the calicolab BGP speaker is compared with: the
capabilities BIRD puts in its OPEN with Calico's template options (graceful
restart, add paths), and the block routes it announces with the node as next hop.
"""

from __future__ import annotations

import subprocess
import textwrap

import pytest

from testbed.capture import pcapassert as pa
from testbed.capture.group import CaptureGroup
from testbed.poll import wait_for
from tests.support import require_tool, sh

pytestmark = pytest.mark.netns

A, B = "192.0.2.11", "192.0.2.12"
BLOCK_A, BLOCK_B = "192.168.1.0/26", "192.168.2.0/26"


def bird_conf(me: str, peer: str, block: str, passive: bool) -> str:
    return textwrap.dedent(f"""
        router id {me};
        protocol device {{ }}
        protocol static {{ ipv4; route {block} blackhole; }}
        protocol bgp mesh {{
          local {me} as 64512;
          neighbor {peer} as 64512;
          ipv4 {{ import all; export all; add paths on; next hop self; }};
          graceful restart;
          connect delay time 1;
          {"passive on;" if passive else ""}
        }}
    """)


@pytest.fixture
def birds(netns, tmp_path):
    """BIRD in two namespaces joined by a veth; yields (ns_a, ns_b, ctl_a); killed by PID."""
    bird = require_tool("bird")
    require_tool("birdc")
    require_tool("tcpdump")
    a, b = netns("cga"), netns("cgb")
    sh("ip", "link", "add", "eth0", "netns", a, "type", "veth", "peer", "eth0", "netns", b)
    for ns, ip in ((a, A), (b, B)):
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
    yield a, b, bird
    # processes are killed by the netns fixture (ip netns pids), BIRD included


def start_bird(bird: str, ns: str, conf: str, tmp_path, name: str) -> subprocess.Popen:
    cfg = tmp_path / f"{name}.conf"
    cfg.write_text(conf)
    return subprocess.Popen(["ip", "netns", "exec", ns, bird, "-f", "-c", str(cfg), "-s",
                             str(tmp_path / f"{name}.ctl"), "-P", str(tmp_path / f"{name}.pid")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_bird_open_and_update_decoded_from_capture(birds, tmp_path):
    a, b, bird = birds
    group = CaptureGroup({"k8s-w0": a, "k8s-w1": b}, tmp_path / "pcaps", ifaces="eth0",
                            bpf="tcp port 179").start()
    procs = [start_bird(bird, b, bird_conf(B, A, BLOCK_B, passive=True), tmp_path, "b"),
             start_bird(bird, a, bird_conf(A, B, BLOCK_A, passive=False), tmp_path, "a")]
    try:
        def routes() -> str:
            return subprocess.run(["birdc", "-s", str(tmp_path / "a.ctl"), "show", "route",
                                   "protocol", "mesh"], capture_output=True, text=True).stdout

        wait_for(routes, lambda out: BLOCK_B in out, timeout=20,
                 what=f"BIRD on {A} to learn {BLOCK_B} from {B}")
        wait_for(lambda: subprocess.run(["birdc", "-s", str(tmp_path / "b.ctl"), "show", "route",
                                         "protocol", "mesh"], capture_output=True,
                                        text=True).stdout,
                 lambda out: BLOCK_A in out, timeout=20, what=f"BIRD on {B} to learn {BLOCK_A}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        res = group.stop()
    assert res.errors == []
    cap = group.trace("k8s-w0", "eth0")
    bird_caps = ["multiprotocol", "route-refresh", "graceful-restart", "4-octet-as", "add-path",
                 "enhanced-route-refresh", "long-lived-graceful-restart"]
    op = pa.assert_bgp_open(cap, src=A, dst=B, asn=64512, router_id=A, hold_time=240,
                            capabilities=bird_caps)
    assert 6 not in op.capabilities  # extended messages are off
    pa.assert_bgp_open(cap, src=B, dst=A, router_id=B, capabilities=bird_caps)
    (ua,) = pa.assert_bgp_update(cap, src=A, dst=B, nlri=BLOCK_A, next_hop=A)
    pa.assert_bgp_update(cap, src=B, dst=A, nlri=BLOCK_B, next_hop=B)
    assert ua.error is None and ua.as_path == []  # iBGP: empty AS_PATH
    # the same assertions fail where the thing is absent
    with pytest.raises(AssertionError, match=f"{BLOCK_B} via {A}"):
        pa.assert_bgp_update(cap, nlri=BLOCK_B, next_hop=A)
    with pytest.raises(AssertionError, match="BGP OPEN .* AS 65000"):
        pa.assert_bgp_open(cap, src=A, asn=65000)
