"""Host side of the kernel tier: each guest test's verdict, the guest's pcaps, the deliberate breaks.

The guest (one boot per session, fixture ``guest`` in tests/kernel/conftest.py) ran
tests/kernel/guest under Debian's stock kernel with the real ipip.ko.  Verdicts come from the
junit.xml it wrote through the results share, never from qemu's exit code.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from testbed.capture import pcapassert as pa
from testbed.kerneltier import cpio, fetch, initramfs, qemu
from testbed.kerneltier.results import guest_test_names, read_junit, verdict_for
from tests.support import require, require_root

pytestmark = pytest.mark.kernel

GUEST_MODULE = Path(__file__).parent / "guest" / "test_kernel_ipip.py"
GUEST_TESTS = guest_test_names(GUEST_MODULE.read_text())
POOL = "192.168.0.0/16"


def _verdict(guest, run: str, name: str):
    verdicts = read_junit(guest.junit(run))
    v = verdict_for(verdicts, name)
    assert v is not None, (
        f"{name} has no result in the guest's {run}.xml (ran: {sorted(verdicts)})\n"
        f"{guest.log_tail(run)}"
    )
    return v


@pytest.mark.parametrize("name", GUEST_TESTS)
def test_in_guest(guest, name):
    """The guest test ``name`` passed under the stock kernel (verdict from junit.xml)."""
    v = _verdict(guest, "junit", name)
    assert v.passed, f"guest {name}: {v.outcome}: {v.message}\n{v.details[-3000:]}"


def _flow(guest) -> dict:
    path = guest.results / "flow-kernel.json"
    assert path.exists(), f"the guest's cross-node flow left no record\n{guest.log_tail()}"
    return json.loads(path.read_text())


def test_guest_uplink_carries_ipip_between_node_addresses(guest):
    """On node 1's and node 2's eth0: IPIP (proto 4), node addresses outside, pod addresses inside."""
    rec = _flow(guest)
    pcaps = guest.results / "pcaps"
    n1, n2 = rec["nodes"]["1"], rec["nodes"]["2"]
    p1, p2 = rec["pods"]["1"], rec["pods"]["2"]
    for cap in (pcaps / rec["pcaps"]["n1-eth0"], pcaps / rec["pcaps"]["n2-eth0"]):
        trace = pa.load(cap)
        pa.assert_ipip(trace, outer_src=n1, outer_dst=n2, inner_src=p1, inner_dst=p2,
                       no_plain=[POOL], at_least=3)  # fmt: skip
        pa.assert_ipip(trace, outer_src=n2, outer_dst=n1, inner_src=p2, inner_dst=p1,
                       at_least=3)  # fmt: skip
        trace.expect(pa.ipip(n1, n2, p1, p2) & pa.icmp(type=8), at_least=3)
        trace.expect(pa.ipip(n2, n1, p2, p1) & pa.icmp(type=0), at_least=3)


def test_guest_tunl0_carries_inner_packets(guest):
    """On node 1's tunl0: the pods' own packets, decapsulated, to both remote pods and back."""
    rec = _flow(guest)
    trace = pa.load(guest.results / "pcaps" / rec["pcaps"]["n1-tunl0"])
    p1 = rec["pods"]["1"]
    for remote in (rec["pods"]["2"], rec["pods"]["3"]):
        pa.assert_on_tunnel(trace, p1, remote, proto=1, at_least=3)
        pa.assert_on_tunnel(trace, remote, p1, proto=1, at_least=3)
    trace.expect_none(pa.outer(proto=4), what="IPIP frames on tunl0 (it must show inner packets)")


def test_guest_tunnel_answers_frag_needed(guest):
    """The node's tunnel sent ICMP frag-needed (MTU host-20) to a pod whose packet did not fit."""
    path = guest.results / "mtu-kernel.json"
    assert path.exists(), f"the guest's MTU test left no record\n{guest.log_tail()}"
    rec = json.loads(path.read_text())
    cap = guest.results / "pcaps" / rec["pcaps"]["n1-bigpod"]
    pa.assert_frag_needed(cap, mtu=rec["uplink_mtu"] - 20, to=rec["big_pod"],
                          about_dst=rec["dst"])  # fmt: skip


def test_break_route_without_onlink_fails_the_tier(guest):
    """With the BGP part's tunl0 next hops stripped of onlink, the kernel refuses the routes
    and the pod-to-pod guest test does not pass."""
    v = _verdict(guest, "junit-break-no-onlink", "test_pod_to_pod_across_kernel_tunnel")
    assert v.outcome in ("failed", "error"), f"broken path still {v.outcome}"
    msg = v.message.lower()
    assert "unreachable" in msg or "invalid gateway" in msg, v.message


def test_break_wrong_tunnel_mtu_fails_the_tier(guest):
    """With tunl0's MTU 100 bytes too small, the MTU guest tests fail and say why."""
    for name, needle in (
        ("test_mtu_largest_df_ping_fits_and_one_more_fails", "frag-needed"),
        ("test_tunl0_is_kernel_ipip_with_tunnel_address_and_mtu", "1380"),
    ):
        v = _verdict(guest, "junit-break-tunnel-mtu", name)
        assert v.outcome == "failed", f"{name} with a wrong tunnel MTU: {v.outcome}"
        assert needle in v.message, v.message


def test_initramfs_holds_init_busybox_and_the_tier_modules():
    """The initramfs built at test time: /init, busybox, dev/console, the boot modules in order,
    and ipip with its dependencies for on-demand loading through /sbin/modprobe."""
    kernel = fetch.cached()
    require(kernel is not None, "no cached guest kernel: run python -m testbed.kerneltier.fetch")
    path = initramfs.build(kernel)
    assert initramfs.build(kernel) == path, "same inputs must give the same cached initramfs"
    names = {e.name: e for e in cpio.parse(gzip.decompress(path.read_bytes()))}
    lazy = f"lib/modules/{kernel.release}"
    for must in ("init", "bin/busybox", "dev/console", "sbin/modprobe", "modules/veth.ko",
                 "modules/9p.ko", "modules/9pnet_virtio.ko", "modules/bridge.ko",
                 f"{lazy}/kernel/net/ipv4/ipip.ko", f"{lazy}/kernel/net/ipv4/tunnel4.ko",
                 f"{lazy}/kernel/net/ipv4/ip_tunnel.ko"):  # fmt: skip
        assert must in names, f"{must} missing from {path}"
    order = names["modules.load"].data.decode().split()
    assert "ipip" not in order, "ipip must be left to on-demand loading"
    assert order.index("9pnet") < min(order.index("9pnet_virtio"), order.index("9p"))
    assert "alias rtnl-link-ipip ipip" in names[f"{lazy}/modules.alias"].data.decode()


def test_boot_past_its_wall_clock_limit_is_killed_and_reported(tmp_path):
    """qemu still running at the limit is killed (by its PID) and the run says timed_out, with
    no verdict: the tier never takes qemu's exit status for a result."""
    require_root()
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64 is not installed")
    kernel = fetch.cached()
    require(kernel is not None, "no cached guest kernel: run python -m testbed.kerneltier.fetch")
    run = qemu.boot("sleep 60", tmp_path, timeout=1.0, kernel=kernel)
    assert run.timed_out and run.exit_code is None and run.qemu_returncode is None, run
    with pytest.raises(qemu.GuestError, match="wall-clock limit"):
        run.check()
