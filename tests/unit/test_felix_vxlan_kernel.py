"""Felix's VXLAN manager on the in-memory kernel (no root): vxlan.calico, its ARP and FDB
entries, its routes, and Felix switching between VXLAN, IPIP and no encapsulation."""

from __future__ import annotations

import pytest

from agent.clock import FakeClock
from agent.felix import encap
from agent.felix.daemon import Felix
from agent.felix.encap import VxlanDevice
from agent.felix.model import HostNode
from agent.felix.vxlan import VxlanError, ensure_vxlan_device, remove_vxlan_device
from agent.felix.vxlanfdb import VxlanFdb
from agent.felix.vxlanroutes import VxlanRouteDriver
from kernel import AF_BRIDGE, NTF_SELF, NUD_PERMANENT, RTN_BLACKHOLE, Neigh, Route
from kernel.fake import FakeKernel
from tests.unit.test_felix_encap import BLOCKS, NODES, inp

pytestmark = pytest.mark.unit

WANT = VxlanDevice(vni=4096, port=4789, local="172.30.8.11", mac="66:aa:bb:cc:dd:ee", mtu=1450,
                   address="192.168.0.0")


def host(kinds=frozenset({"veth", "vxlan", "tun"})) -> FakeKernel:
    k = FakeKernel("w0", kinds=kinds)
    k.add_link("eth0", cidr="172.30.8.11/24")
    return k


def routes(k: FakeKernel) -> set[str]:
    names = {ln.index: ln.name for ln in k.links()}
    out = set()
    for r in k.routes():
        if r.protocol == 2:  # connected routes
            continue
        if r.type == RTN_BLACKHOLE:
            out.add(f"blackhole {r.dst} proto {r.protocol}")
        else:
            out.add(f"{r.dst} via {r.gateway} dev {names[r.oif]} proto {r.protocol}" + (" onlink" if r.onlink else ""))
    return out


def test_device_is_made_as_felix_makes_it_and_left_alone_when_right():
    k = host()
    dev, parent = ensure_vxlan_device(k, WANT)
    assert parent.name == "eth0"
    assert dev.kind == "vxlan" and dev.info == {"vni": 4096, "port": 4789, "learning": False,
                                                 "local": "172.30.8.11", "dev": parent.index}
    assert (dev.mtu, dev.mac, dev.up) == (1450, "66:aa:bb:cc:dd:ee", True)
    assert [a.cidr for a in k.addrs() if a.index == dev.index] == ["192.168.0.0/32"]
    assert k.tx_checksum("vxlan.calico") is False  # ChecksumOffloadBroken: tx off
    n = len(k.log)
    assert ensure_vxlan_device(k, WANT)[0].index == dev.index and len(k.log) == n  # nothing to do
    # drift: another address, MTU and MAC changed by hand -> put back, device kept
    k.addr_add(dev.index, "10.99.0.1/24")
    k.link_set(dev.index, mtu=1400, mac="02:00:00:00:00:99")
    again, _ = ensure_vxlan_device(k, WANT)
    assert again.index == dev.index and (again.mtu, again.mac) == (1450, "66:aa:bb:cc:dd:ee")
    assert [a.cidr for a in k.addrs() if a.index == dev.index] == ["192.168.0.0/32"]


def test_device_with_another_vni_is_made_again_and_a_missing_parent_is_named():
    k = host()
    dev, _ = ensure_vxlan_device(k, WANT)
    other = VxlanDevice(vni=7, port=4789, local="172.30.8.11", mac=WANT.mac, mtu=1450, address="192.168.0.0")
    new, _ = ensure_vxlan_device(k, other)
    assert new.index != dev.index and new.info["vni"] == 7
    with pytest.raises(VxlanError, match="Unable to find parent interface with address 172.30.9.99"):
        ensure_vxlan_device(k, VxlanDevice(4096, 4789, "172.30.9.99", WANT.mac, 1450, "192.168.0.0"))
    assert remove_vxlan_device(k) and k.link("vxlan.calico") is None and not remove_vxlan_device(k)


def test_fdb_driver_keeps_one_arp_and_one_fdb_entry_per_vtep():
    k = host()
    dev, _ = ensure_vxlan_device(k, WANT)
    fdb = VxlanFdb(k)
    stale = Neigh(dev.index, "172.30.8.99", "66:00:00:00:00:99", AF_BRIDGE, NUD_PERMANENT, NTF_SELF)
    k.neigh_add(stale)  # a VTEP that left
    plan = encap.plan(inp("Always"))
    assert fdb.apply(dev.index, plan.neighbours(), plan.fdb()) == 5
    arp = {(n.dst, n.lladdr, n.state) for n in k.neighs() if n.index == dev.index}
    assert arp == {("192.168.1.0", encap.vtep_mac("w1"), NUD_PERMANENT),
                   ("192.168.2.0", "ee:00:00:00:00:02", NUD_PERMANENT)}
    bridge = {(n.lladdr, n.dst, n.flags) for n in k.fdb() if n.index == dev.index}
    assert bridge == {(encap.vtep_mac("w1"), "172.30.8.12", NTF_SELF), ("ee:00:00:00:00:02", "172.30.9.11", NTF_SELF)}
    assert fdb.apply(dev.index, plan.neighbours(), plan.fdb()) == 0
    # an entry deleted by hand comes back on resync
    k.neigh_del(Neigh(dev.index, "172.30.9.11", "ee:00:00:00:00:02", AF_BRIDGE))
    assert fdb.apply(dev.index, plan.neighbours(), plan.fdb(), resync=True) == 1
    # a VTEP's node moves: the FDB entry follows (keyed by MAC)
    moved = {**plan.fdb(), "ee:00:00:00:00:02": "172.30.9.12"}
    fdb.apply(dev.index, plan.neighbours(), moved)
    assert {(n.lladdr, n.dst) for n in k.fdb()} == {(encap.vtep_mac("w1"), "172.30.8.12"),
                                                     ("ee:00:00:00:00:02", "172.30.9.12")}


def test_route_driver_owns_the_device_and_proto_80_only():
    k = host()
    dev, parent = ensure_vxlan_device(k, WANT)
    k.route_add(Route("10.99.0.0/24", oif=dev.index, gateway="192.168.9.9", onlink=True))  # foreign, on our device
    k.route_add(Route("192.0.2.0/24", oif=parent.index, gateway="172.30.8.1"))  # not ours: stays
    rd = VxlanRouteDriver(k)
    plan = encap.plan(inp("CrossSubnet"))
    changes, waiting = rd.apply(plan, dev.index, parent.index)
    assert waiting == [] and changes == 5  # 4 adds, the foreign route removed
    assert routes(k) == {
        "blackhole 192.168.0.0/26 proto 80",
        "192.168.1.0/26 via 172.30.8.12 dev eth0 proto 80 onlink",
        "192.168.2.0/26 via 192.168.2.0 dev vxlan.calico proto 3 onlink",
        "192.168.2.9/32 via 172.30.8.12 dev eth0 proto 80 onlink",
        "192.0.2.0/24 via 172.30.8.1 dev eth0 proto 3",
    }
    assert rd.apply(plan, dev.index, parent.index) == (0, [])
    # VXLAN off: every route of ours goes, the foreign gateway route stays
    rd.apply(encap.VxlanPlan(), None, None)
    assert routes(k) == {"192.0.2.0/24 via 172.30.8.1 dev eth0 proto 3"}
    # no device yet: the VXLAN routes wait, the rest is programmed
    _, waiting = rd.apply(encap.plan(inp("Always")), None, parent.index)
    assert waiting == ["192.168.1.0/26", "192.168.2.0/26", "192.168.2.9/32"]


class _Null:
    def apply(self, *a, **kw):
        return 0

    def apply_updates(self, *a, **kw):
        return 0

    def remove_stale(self, *a, **kw):
        return []


def felix_on(k: FakeKernel, tmp_path, pool_modes: tuple[str, str]) -> Felix:
    from datastore.resources import IPPool, Metadata

    f = Felix(object(), "w0", env={}, var_lib=str(tmp_path), kernel=k, clock=FakeClock())
    f.tables = {"filter": _Null(), "nat": _Null()}
    f._apply_tables = lambda desired, resync: None  # one iptables-restore of all tables (netns tier)
    f.ipsets = _Null()
    nodes = [HostNode(n.name, n.ipv4_address, f"192.168.{i}.1", n.vxlan_tunnel_addr, n.vxlan_mac)
             for i, n in enumerate(NODES)]
    f._nodes = {n.name: n for n in nodes}
    f._blocks = {b.cidr: b for b in BLOCKS}
    f._pools = {"p": IPPool(metadata=Metadata(name="p"), spec=IPPool.Spec(
        cidr="192.168.0.0/16", ipip_mode=pool_modes[0], vxlan_mode=pool_modes[1], nat_outgoing=True))}
    f._synced.set()
    return f


def set_modes(f: Felix, ipip: str, vxlan: str) -> None:
    f._pools["p"].spec.ipip_mode, f._pools["p"].spec.vxlan_mode = ipip, vxlan


def test_felix_switches_vxlan_ipip_and_no_encapsulation_live(tmp_path):
    k = host(kinds=frozenset({"veth", "vxlan", "ipip"}))  # the kernel tunl0, as the stock kernel has
    f = felix_on(k, tmp_path, ("Never", "Always"))
    assert f.apply(f.snapshot()) is False
    assert k.link("vxlan.calico") is not None and (tmp_path / "mtu").read_text() == "1450\n"
    assert "192.168.2.0/26 via 192.168.2.0 dev vxlan.calico proto 3 onlink" in routes(k)
    assert [a.cidr for a in k.addrs() if a.index == k.index("tunl0")] == []
    st = f.status()
    assert st["encap"] == "vxlan" and st["datapath"] == "kernel" and st["vxlan"]["address"] == "192.168.0.0"
    assert st["vxlan"]["mac"] == encap.vtep_mac("w0")

    set_modes(f, "Always", "Never")  # patched to IPIP: BGP routes now, Felix only tunl0
    f.apply(f.snapshot())
    assert k.link("vxlan.calico") is None and routes(k) == set()  # device, its routes and proto 80 gone
    assert [a.cidr for a in k.addrs() if a.index == k.index("tunl0")] == ["192.168.0.1/32"]
    assert (tmp_path / "mtu").read_text() == "1480\n" and f.status()["encap"] == "ipip"

    set_modes(f, "Never", "Never")  # no encapsulation: tunl0 keeps no address
    f.apply(f.snapshot())
    assert [a.cidr for a in k.addrs() if a.index == k.index("tunl0")] == []
    assert (tmp_path / "mtu").read_text() == "1500\n"
    assert f.status()["encap"] == "none" and f.status()["datapath"] == "routed"

    set_modes(f, "Never", "CrossSubnet")
    f.apply(f.snapshot())
    assert "192.168.1.0/26 via 172.30.8.12 dev eth0 proto 80 onlink" in routes(k)
    # drift: the device deleted by hand is made again on the next resync, with its entries and routes
    k.link_del(k.index("vxlan.calico"))
    f.apply(f.snapshot(), resync={"routes"})
    dev = k.link("vxlan.calico")
    assert dev is not None and "192.168.2.0/26 via 192.168.2.0 dev vxlan.calico proto 3 onlink" in routes(k)
    assert {n.dst for n in k.neighs() if n.index == dev.index} == {"192.168.1.0", "192.168.2.0"}


def test_loop_remakes_a_deleted_device_within_ten_seconds(tmp_path):
    from tests.unit.test_felix_kernel import run_loop

    k = host()
    f = felix_on(k, tmp_path, ("Never", "Always"))
    clock = f.clock
    seen: list[tuple[float, bool]] = []
    clock.call_later(5, lambda: k.link_del(k.index("vxlan.calico")))  # by hand at t=5
    for t in (6, 9.9, 10.1):
        clock.call_later(t, lambda t=t: seen.append((t, k.link("vxlan.calico") is not None)))
    f._dirty.set()
    run_loop(f, clock, until=12)
    assert seen == [(6, False), (9.9, False), (10.1, True)]  # the 10 s device check (KeepVXLANDeviceInSync)
    assert "192.168.2.0/26 via 192.168.2.0 dev vxlan.calico proto 3 onlink" in routes(k)


def test_vxlan_alone_is_the_kernel_datapath_before_the_node_has_its_vtep_address(tmp_path):
    """VXLAN without IPIP: until IPAM gave this node its VTEP address there is no vxlan.calico
    yet, and the status still names the kernel's vxlan datapath (not the tunl0 that IPIP would
    use: the netns tier read "bpf" there when calico-node was slow to get its address)."""
    import dataclasses

    k = host()
    f = felix_on(k, tmp_path, ("Never", "Always"))
    f._nodes["w0"] = dataclasses.replace(f._nodes["w0"], vxlan_tunnel_addr=None, vxlan_mac=None)
    f.apply(f.snapshot())
    assert k.link("vxlan.calico") is None
    st = f.status()
    assert st["encap"] == "vxlan" and st["datapath"] == "kernel" and st["vxlan"] is None, st
