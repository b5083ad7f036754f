"""Felix's interface monitor on a real kernel: an address added with `ip addr` in the
node's namespace reaches Felix's host addresses (cali40this-host) within moments, and
one removed leaves them, without a routes refresh."""

from __future__ import annotations

import subprocess

import pytest

from agent.clock import FakeClock
from agent.felix.daemon import Felix
from kernel.netlink import Netlink
from testbed.poll import wait_for

pytestmark = pytest.mark.netns


def test_ip_addr_add_and_del_reach_felix_host_addresses(netns, tmp_path):
    ns = netns("ifm")
    path = f"/run/netns/{ns}"
    subprocess.run(["ip", "-n", ns, "link", "add", "eth1", "type", "veth", "peer", "name", "cali0abc"], check=True)
    k = Netlink(path)
    f = Felix(object(), "n1", env={}, var_lib=str(tmp_path), kernel=k, clock=FakeClock(start=0.0))
    try:
        f._host_ips = f.host_ips_fn("cali")
        assert f._host_ips == {"127.0.0.1"}
        f.ifacemonitor.start()
        subprocess.run(["ip", "-n", ns, "addr", "add", "198.51.100.7/24", "dev", "eth1"], check=True)
        wait_for(lambda: f._host_ips, lambda ips: "198.51.100.7" in ips, timeout=5,
                 what="198.51.100.7 in Felix's host addresses")
        assert f._dirty.is_set()
        subprocess.run(["ip", "-n", ns, "addr", "add", "10.65.0.1/32", "dev", "cali0abc"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "del", "198.51.100.7/24", "dev", "eth1"], check=True)
        wait_for(lambda: f._host_ips, lambda ips: ips == {"127.0.0.1"}, timeout=5,
                 what="only lo's address (eth1's removed, the workload interface's not counted)")
    finally:
        f.ifacemonitor.stop()
        k.close()
