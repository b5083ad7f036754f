"""The CNI plugin's plumbing (cni.dataplane) on two in-memory kernels: the node and the pod."""

from __future__ import annotations

import errno

import pytest

from cni import dataplane
from kernel import RT_SCOPE_LINK, Route, RouteAdd, Veth
from kernel.fake import FakeKernel

pytestmark = pytest.mark.unit
NS = "/run/netns/pod1"


def kernels() -> tuple[FakeKernel, FakeKernel]:
    return FakeKernel("node"), FakeKernel("pod")


def test_setup_builds_what_calico_builds():
    node, pod = kernels()
    p = dataplane.setup("cali1234", "eth0", NS, "192.168.1.5", 1480, pod_mac="0a:58:c0:a8:01:05",
                        host=node, pod=pod)
    h, e = node.link("cali1234"), pod.link("eth0")
    assert (p.host, p.pod) == (h, e)
    assert (h.mac, h.mtu, h.up, e.mac, e.mtu, e.up) == ("ee:ee:ee:ee:ee:ee", 1480, True, "0a:58:c0:a8:01:05",
                                                        1480, True)
    assert [a.cidr for a in pod.addrs() if a.index == e.index] == ["192.168.1.5/32"]
    assert Route("169.254.1.1/32", oif=e.index, scope=RT_SCOPE_LINK) in pod.routes()
    assert Route("0.0.0.0/0", oif=e.index, gateway="169.254.1.1") in pod.routes()
    assert Route("192.168.1.5/32", oif=h.index, scope=RT_SCOPE_LINK) in node.routes()
    for key in ("conf/cali1234/proxy_arp", "conf/cali1234/forwarding", "conf/cali1234/route_localnet"):
        assert node.sysctl_get(f"net/ipv4/{key}") == "1", key
    assert node.sysctl_get("net/ipv4/neigh/cali1234/proxy_delay") == "0"
    assert node.sysctl_get("net/ipv6/conf/cali1234/accept_ra") == "0"
    assert pod.sysctl_get("net/ipv4/ip_forward") == "0"
    assert dataplane.check("cali1234", "eth0", NS, "192.168.1.5", "0a:58:c0:a8:01:05", host=node, pod=pod) == []


def test_stale_host_veth_is_replaced_and_felix_route_first_is_fine():
    node, pod = kernels()
    old_pod = FakeKernel("old-sandbox")
    node.link_add(Veth("cali1234", "eth0", peer_netns=old_pod))  # an earlier sandbox of the pod
    dataplane.setup("cali1234", "eth0", NS, "192.168.1.5", 1480, host=node, pod=pod)
    assert old_pod.link("eth0") is None and pod.link("eth0") is not None
    # Felix can add the same /32 before the plugin does (the interface exists, the WEP is written)
    node2, pod2 = kernels()
    real_do = node2.submit

    def felix_first(ops):
        for op in ops:
            if isinstance(op, RouteAdd) and op.route.dst == "192.168.1.6/32":
                real_do([RouteAdd(op.route)])
        return real_do(ops)

    node2.submit = felix_first
    dataplane.setup("cali5678", "eth0", NS, "192.168.1.6", 1480, host=node2, pod=pod2)
    assert [r.dst for r in node2.routes() if r.dst == "192.168.1.6/32"] == ["192.168.1.6/32"]


def test_route_on_another_interface_is_a_conflict_and_nothing_is_left():
    node, pod = kernels()
    other = node.add_link("cali9999")
    node.route_add(Route("192.168.1.5/32", oif=other.index, scope=RT_SCOPE_LINK))
    with pytest.raises(dataplane.DataplaneError, match="192.168.1.5/32 already exists on another interface"):
        dataplane.setup("cali1234", "eth0", NS, "192.168.1.5", 1480, host=node, pod=pod)
    assert node.link("cali1234") is None and pod.link("eth0") is None  # the veth pair went


def test_failures_name_what_failed_and_clean_up():
    node, pod = kernels()
    pod.add_link("eth0")
    with pytest.raises(dataplane.DataplaneError, match=f"interface eth0 already exists in {NS}"):
        dataplane.setup("cali1234", "eth0", NS, "192.168.1.5", 1480, host=node, pod=pod)
    node, pod = kernels()
    pod.fault = lambda op: errno.ENOMEM if isinstance(op, RouteAdd) else None
    with pytest.raises(dataplane.DataplaneError, match="configuring cali1234/eth0 for 192.168.1.5: route 169.254"):
        dataplane.setup("cali1234", "eth0", NS, "192.168.1.5", 1480, host=node, pod=pod)
    assert node.link("cali1234") is None and pod.link("eth0") is None
    with pytest.raises(dataplane.DataplaneError, match="invalid pod MAC address 'zz'"):
        dataplane.setup("cali1234", "eth0", NS, "192.168.1.5", 1480, pod_mac="zz", host=node, pod=pod)
    node.fault = lambda op: errno.EEXIST
    with pytest.raises(dataplane.DataplaneError, match="cannot create veth cali1234/eth0: File exists"):
        dataplane.setup("cali1234", "eth0", NS, "192.168.1.5", 1480, host=node, pod=pod)


def test_teardown_is_idempotent_and_check_reports_damage():
    node, pod = kernels()
    dataplane.setup("cali1234", "eth0", NS, "192.168.1.5", 1480, allow_ip_forwarding=True, host=node, pod=pod)
    assert pod.sysctl_get("net/ipv4/ip_forward") == "1"
    node.sysctl_set("net/ipv4/conf/cali1234/proxy_arp", "0")
    pod.route_del(Route("0.0.0.0/0", protocol=0))
    assert dataplane.check("cali1234", "eth0", NS, "192.168.1.5", host=node, pod=pod) == [
        "proxy_arp is off on cali1234", f"default via 169.254.1.1 dev eth0 is missing in {NS}"]
    assert dataplane.teardown("eth0", NS, pod=pod) is True
    assert node.link("cali1234") is None  # the host end goes with it
    assert dataplane.teardown("eth0", NS, pod=pod) is False
    assert dataplane.check("cali1234", "eth0", NS, "192.168.1.5", host=node, pod=pod) == [
        "host interface cali1234 is missing", f"interface eth0 is missing in {NS}"]
    assert dataplane.teardown("eth0", "/run/netns/does-not-exist-x") is False
