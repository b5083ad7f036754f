"""Pure logic of the kernel tier: cpio writer, module ordering, junit reading, kernel command line."""

from __future__ import annotations

import base64
import stat
import subprocess
from pathlib import Path

import pytest

from testbed.kerneltier import cpio, fetch, initramfs, qemu, results
from tests.support import require_tool

pytestmark = pytest.mark.unit


def test_cpio_roundtrip_and_alignment():
    entries = [
        cpio.Entry.dir("bin"),
        cpio.Entry.file("bin/busybox", b"\x7fELF" + b"x" * 13, 0o755),
        cpio.Entry.symlink("bin/sh", "busybox"),
        cpio.Entry.dir("dev"),
        cpio.Entry.chardev("dev/console", 5, 1),
        cpio.Entry.file("init", b"#!/bin/sh\n", 0o755),
    ]
    data = cpio.archive(entries)
    assert len(data) % 4 == 0
    assert cpio.parse(data) == entries
    assert cpio.archive(entries) == data  # deterministic


def test_cpio_is_readable_by_gnu_cpio(tmp_path):
    tool = require_tool("cpio")
    data = cpio.archive([cpio.Entry.dir("etc"), cpio.Entry.file("etc/hello", b"hi\n"),
                         cpio.Entry.symlink("etc/link", "hello")])  # fmt: skip
    res = subprocess.run([tool, "-t", "-v"], input=data, capture_output=True, check=True)
    listing = res.stdout.decode()
    assert "etc/hello" in listing and "etc/link -> hello" in listing, listing
    assert "1 block" in res.stderr.decode()


@pytest.mark.parametrize(
    "bad, why",
    [
        ([cpio.Entry.file("/abs", b"")], "relative"),
        ([cpio.Entry.file("a", b""), cpio.Entry.file("a", b"")], "unique"),
        ([cpio.Entry.file("d/f", b"")], "before its directory"),
    ],
)
def test_cpio_rejects_bad_names(bad, why):
    with pytest.raises(ValueError, match=why):
        cpio.archive(bad)


def test_chardev_mode():
    e = cpio.Entry.chardev("dev/null", 1, 3, 0o666)
    assert stat.S_ISCHR(e.mode) and e.rdev == (1, 3)


DEP = """kernel/net/ipv4/ipip.ko: kernel/net/ipv4/tunnel4.ko kernel/net/ipv4/ip_tunnel.ko
kernel/net/ipv4/tunnel4.ko:
kernel/net/ipv4/ip_tunnel.ko:
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko
kernel/net/9p/9pnet.ko:
kernel/fs/netfs/netfs.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/x/a-b.ko: kernel/x/c.ko
kernel/x/c.ko: kernel/x/a-b.ko
"""


def test_load_order_puts_dependencies_first_once():
    deps = initramfs.module_deps(DEP)
    order = initramfs.load_order(["ipip", "9p", "9pnet_virtio"], deps)
    assert order == ["tunnel4", "ip_tunnel", "ipip", "9pnet", "netfs", "9p", "virtio_ring",
                     "9pnet_virtio"]  # fmt: skip
    assert initramfs.module_paths(DEP)["a_b"] == "kernel/x/a-b.ko"


def test_load_order_errors_name_the_module():
    deps = initramfs.module_deps(DEP)
    with pytest.raises(initramfs.InitramfsError, match="'nosuch' is not in"):
        initramfs.load_order(["nosuch"], deps)
    with pytest.raises(initramfs.InitramfsError, match="cycle: a_b -> c -> a_b"):
        initramfs.load_order(["a-b"], deps)


def test_init_script_has_the_paths_filled_in():
    text = initramfs.init_script()
    assert "@" not in text
    assert f"/host{initramfs.RESULTS_IN_GUEST}" in text and "poweroff -f" in text


def test_xz_offset():
    assert fetch.xz_offset(b"MZ....." + fetch.XZ_MAGIC + b"rest") == 7
    with pytest.raises(fetch.FetchError, match="no XZ stream"):
        fetch.xz_offset(b"MZ no stream here")


def test_release_from_env_is_validated(monkeypatch):
    monkeypatch.setenv("CALICOLAB_GUEST_KERNEL", "6.1.0-56-amd64")
    assert fetch.resolve_release() == "6.1.0-56-amd64"
    monkeypatch.setenv("CALICOLAB_GUEST_KERNEL", "latest; rm -rf /")
    with pytest.raises(fetch.FetchError, match="not a release like"):
        fetch.resolve_release()


def test_kernel_cmdline_carries_the_script():
    line = qemu.kernel_cmdline("sh /tmp/results/run.sh")
    arg = next(a for a in line.split() if a.startswith("calicolab.cmd="))
    assert base64.b64decode(arg.split("=", 1)[1]).decode() == "sh /tmp/results/run.sh"
    assert "panic=-1" in line and "console=ttyS0" in line
    with pytest.raises(ValueError, match="too long"):
        qemu.kernel_cmdline("x" * 2000)


def test_accel_override(monkeypatch):
    monkeypatch.setenv("CALICOLAB_QEMU_ACCEL", "tcg")
    assert qemu.accel() == "tcg"


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.kernel.guest.m" name="test_ok" time="1.5"/>
<testcase classname="tests.kernel.guest.m" name="test_bad" time="0.2">
  <failure message="AssertionError: mtu 1380">trace</failure></testcase>
<testcase classname="tests.kernel.guest.m" name="test_setup" time="0.1">
  <error message="failed on setup with Nexthop has invalid gateway">tb</error></testcase>
<testcase classname="tests.kernel.guest.m" name="test_skip"><skipped message="no ipip"/></testcase>
<testcase classname="tests.kernel.guest.m" name="test_p[a]"/>
<testcase classname="tests.kernel.guest.m" name="test_p[b]"><failure message="b broke"/></testcase>
<testcase classname="tests.kernel.guest.m" name="test_bad"><error message="teardown"/></testcase>
</testsuite></testsuites>"""


def test_parse_junit_outcomes():
    v = results.parse_junit(JUNIT)
    assert v["test_ok"].passed and v["test_ok"].seconds == 1.5
    assert v["test_bad"].outcome == "failed" and "1380" in v["test_bad"].message
    assert v["test_setup"].outcome == "error" and "invalid gateway" in v["test_setup"].message
    assert v["test_skip"].outcome == "skipped" and not v["test_skip"].passed
    assert results.verdict_for(v, "test_p").outcome == "failed"
    assert results.verdict_for(v, "test_missing") is None


def test_read_junit_errors_name_the_file(tmp_path):
    with pytest.raises(results.JunitError, match="no junit file"):
        results.read_junit(tmp_path / "nope.xml")
    bad = tmp_path / "bad.xml"
    bad.write_text("<testsuite")
    with pytest.raises(results.JunitError, match="bad.xml: not junit XML"):
        results.read_junit(bad)


def test_guest_test_names():
    src = "import x\ndef test_a(): pass\ndef helper(): pass\nasync def test_b(): pass\n"
    assert results.guest_test_names(src) == ["test_a", "test_b"]


def test_flow_signature_keeps_the_pod_flow_only():
    from testbed.capture.pcapassert import Frame, IpHeader
    from testbed.kerneltier.flow import signature

    def frame(*ips, icmp=None):
        return Frame(index=1, time=0.0, source="x", size=100, ips=tuple(ips), icmp_type=icmp,
                     icmp_code=0 if icmp is not None else None)  # fmt: skip

    outer = IpHeader("172.30.0.11", "172.30.0.12", 4, 64, 104, df=True)
    inner = IpHeader("192.168.1.1", "192.168.2.1", 1, 63, 84, df=True)
    bgp = IpHeader("172.30.0.11", "172.30.0.12", 6, 64, 71)
    igmp = IpHeader("0.0.0.0", "224.0.0.22", 2, 1, 40)
    v6 = IpHeader("fe80::1", "ff02::16", 0, 1, 76, version=6)
    frames = [frame(outer, inner, icmp=8), frame(outer, inner, icmp=8), frame(bgp), frame(igmp),
              frame(v6)]  # fmt: skip
    sig = signature(frames)
    key = ((("172.30.0.11", "172.30.0.12", 4, 104), ("192.168.1.1", "192.168.2.1", 1, 84)), 8, 0)
    assert sig == {key: 2}
    # TTL and DF are not part of the contract
    other_ttl = IpHeader("172.30.0.11", "172.30.0.12", 4, 63, 104, df=False)
    assert signature([frame(other_ttl, inner, icmp=8)]) == {key: 1}


def test_guestrun_run_specs():
    from testbed.kerneltier.guestrun import parse_run, pytest_args

    assert parse_run("junit::") == ("junit", "", "")
    assert parse_run("junit-break-mtu:tunnel-mtu:mtu or x") == (
        "junit-break-mtu", "tunnel-mtu", "mtu or x")  # fmt: skip
    with pytest.raises(ValueError, match="not name:break:kexpr"):
        parse_run("bad name::")
    args = pytest_args("tests/kernel/guest", Path("/r/j.xml"), "mtu")
    assert args[-2:] == ["-k", "mtu"] and "--junitxml=/r/j.xml" in args
    assert "no:cacheprovider" in args


def test_modules_tree_keeps_only_the_shipped_modules():
    paths = initramfs.module_paths(DEP)
    alias = "alias rtnl-link-ipip ipip\nalias netdev-tunl0 ipip\nalias fs-9p 9p\n# comment\n"
    dirs, dep, al = initramfs.modules_tree("6.1.0-1-amd64", ["tunnel4", "ip_tunnel", "ipip"],
                                           paths, DEP, alias)  # fmt: skip
    assert dirs == ["lib", "lib/modules", "lib/modules/6.1.0-1-amd64",
                    "lib/modules/6.1.0-1-amd64/kernel", "lib/modules/6.1.0-1-amd64/kernel/net",
                    "lib/modules/6.1.0-1-amd64/kernel/net/ipv4"]  # fmt: skip
    assert dep.splitlines() == [
        "kernel/net/ipv4/ipip.ko: kernel/net/ipv4/tunnel4.ko kernel/net/ipv4/ip_tunnel.ko",
        "kernel/net/ipv4/tunnel4.ko:", "kernel/net/ipv4/ip_tunnel.ko:"]  # fmt: skip
    assert al == "alias rtnl-link-ipip ipip\nalias netdev-tunl0 ipip\n"
