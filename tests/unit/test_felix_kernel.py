"""Felix's kernel side on the in-memory kernel and a virtual clock (no root).

The route driver's diff, the sysctl driver, tunl0's set-up (userspace TUN and kernel
ipip), the host MTU, and the dataplane loop: resync repairing drift on the refresh
interval, back-off after failed applies. The netns tier keeps iptables/ipsets (real
iptables-restore) and what needs packets.
"""

from __future__ import annotations

import errno
import threading

import pytest

from agent.clock import FakeClock
from agent.felix.calc import calculate
from agent.felix.daemon import Felix
from agent.felix.model import Endpoint, FelixInput, HostNode, Pool
from agent.felix.routes import RouteDriver
from agent.felix.sysctl import SysctlDriver
from agent.felix.tunnel import (
    TunnelError,
    detect_host_mtu,
    ensure_tunl0,
    kernel_has_ipip,
    tunl0_kind,
)
from kernel import RT_SCOPE_LINK, KernelError, Route, RouteAdd, Veth
from kernel.fake import FakeKernel

pytestmark = pytest.mark.unit

NODES = (HostNode("w0", "172.31.9.1/24", "192.168.1.0"), HostNode("w1", "172.31.9.2/24", "192.168.2.0"))
POOL = Pool("192.168.0.0/16", "Never", nat_outgoing=True)


def ep(i: int) -> Endpoint:
    return Endpoint(f"ns/p{i}", f"cali{i:011x}", (f"192.168.1.{i}/32",), ("kns.ns",))


def desired(n: int):
    return calculate(FelixInput(hostname="w0", endpoints=tuple(ep(i) for i in range(1, n + 1)), nodes=NODES,
                                pools=(POOL,)))


def node(pods: int = 2) -> FakeKernel:
    """A node with eth0 and ``pods`` workload veths (host ends cali..., up), as the CNI plugin leaves them."""
    k = FakeKernel("node")
    k.add_link("eth0", cidr="172.31.9.1/24")
    for i in range(1, pods + 1):
        k.link_add(Veth(f"cali{i:011x}", "eth0", peer_netns=FakeKernel(f"pod{i}")))
        k.link_set(k.index(f"cali{i:011x}"), up=True)
    return k


def cali_routes(k: FakeKernel) -> set[str]:
    names = {ln.index: ln.name for ln in k.links()}
    return {f"{r.dst} dev {names[r.oif]}" for r in k.routes() if names.get(r.oif, "").startswith("cali")}


# -- route driver ---------------------------------------------------------------------------


def test_route_driver_programs_workload_routes_and_removes_stale_ones():
    k = node()
    k.route_add(Route("10.99.0.0/24", oif=k.index("cali00000000002"), scope=RT_SCOPE_LINK))  # left by a dead pod
    k.route_add(Route("192.0.2.0/24", oif=k.index("eth0"), scope=RT_SCOPE_LINK))  # not ours
    rd = RouteDriver(k)
    assert rd.apply(desired(3).routes) == (3, ["cali00000000003"])  # 2 adds + 1 stale delete, pod 3 waits
    assert cali_routes(k) == {"192.168.1.1/32 dev cali00000000001", "192.168.1.2/32 dev cali00000000002"}
    assert [r for r in k.routes() if r.dst == "192.168.1.1/32"][0].protocol == 3  # RTPROT_BOOT: no proto shown
    assert any(r.dst == "192.0.2.0/24" for r in k.routes())
    assert k.batches[-1] == 3  # one batch
    assert rd.apply(desired(3).routes) == (0, ["cali00000000003"])
    # the pod's interface appears: its route follows on the next apply
    k.link_add(Veth("cali00000000003", "eth0", peer_netns=FakeKernel("pod3")))
    k.link_set(k.index("cali00000000003"), up=True)
    assert rd.apply(desired(3).routes) == (1, [])


def test_route_driver_resync_repairs_drift_and_follows_recreated_links():
    k = node()
    rd = RouteDriver(k)
    rd.apply(desired(2).routes)
    k.route_del(Route("192.168.1.1/32", protocol=0))  # deleted by hand
    assert rd.apply(desired(2).routes) == (0, [])  # cached: not seen without a resync
    assert rd.apply(desired(2).routes, resync=True) == (1, [])
    assert "192.168.1.1/32 dev cali00000000001" in cali_routes(k)
    k.link_del(k.index("cali00000000002"))  # the pod's veth re-made (its route went with it)
    k.link_add(Veth("cali00000000002", "eth0", peer_netns=FakeKernel("pod2b")))
    k.link_set(k.index("cali00000000002"), up=True)
    assert rd.apply(desired(2).routes, resync=True) == (1, [])
    assert cali_routes(k) == {"192.168.1.1/32 dev cali00000000001", "192.168.1.2/32 dev cali00000000002"}


def test_route_driver_waits_for_a_down_link_and_raises_other_errors():
    k = node()
    k.link_set(k.index("cali00000000002"), up=False)
    rd = RouteDriver(k)
    assert rd.apply(desired(2).routes) == (2, ["cali00000000002"])  # ENETDOWN: retried later
    k.fault = lambda op: errno.ENOBUFS if isinstance(op, RouteAdd) else None
    with pytest.raises(KernelError) as exc:
        rd.apply(desired(2).routes)
    assert exc.value.errno == errno.ENOBUFS and "192.168.1." in str(exc.value)


# -- sysctls ---------------------------------------------------------------------------------


def test_sysctl_driver_sets_globals_and_each_interface_once():
    k = node()
    k.sysctls["net/ipv4/conf/default/rp_filter"] = "1"
    sd = SysctlDriver(k)
    assert sd.apply(desired(3).interfaces) == ["cali00000000003"]
    assert k.sysctl_get("net/ipv4/ip_forward") == "1" and k.sysctl_get("net/netfilter/nf_conntrack_acct") == "1"
    for key, want in (("conf/cali00000000001/proxy_arp", "1"), ("conf/cali00000000001/route_localnet", "1"),
                      ("neigh/cali00000000001/proxy_delay", "0"), ("conf/cali00000000001/forwarding", "1"),
                      ("conf/cali00000000001/rp_filter", "1")):
        assert k.sysctl_get(f"net/ipv4/{key}") == want, key
    k.sysctl_set("net/ipv4/conf/cali00000000001/proxy_arp", "0")  # drift: repaired on resync only
    sd.apply(desired(2).interfaces)
    assert k.sysctl_get("net/ipv4/conf/cali00000000001/proxy_arp") == "0"
    sd.apply(desired(2).interfaces, resync=True)
    assert k.sysctl_get("net/ipv4/conf/cali00000000001/proxy_arp") == "1"
    del k.sysctls["net/ipv6/conf/cali00000000002/accept_ra"]  # IPv6 off: skipped, not an error
    k.link_del(k.index("cali00000000002"))
    sd.apply(desired(1).interfaces)
    k.link_add(Veth("cali00000000002", "eth0", peer_netns=FakeKernel("pod2b")))
    assert sd.apply(desired(2).interfaces) == []  # a re-made interface gets its settings again
    assert k.sysctl_get("net/ipv4/conf/cali00000000002/proxy_arp") == "1"


# -- tunl0 -----------------------------------------------------------------------------------


def test_userspace_tunl0_is_idempotent_and_exact():
    k = node(0)
    assert tunl0_kind(k) is None and not kernel_has_ipip(k)
    for _ in range(2):
        info = ensure_tunl0(k, "192.168.3.0", 1480, mode="auto")
    assert (info.kind, info.ifname, info.address, info.mtu, tunl0_kind(k)) == (
        "userspace", "tunl0", "192.168.3.0", 1480, "userspace")
    t = k.link("tunl0")
    assert (t.kind, t.mtu, t.up, t.txqlen) == ("tun", 1480, True, 1000)
    assert [a.cidr for a in k.addrs() if a.index == t.index] == ["192.168.3.0/32"]
    k.addr_add(t.index, "10.9.9.9/24")  # a second address added by hand goes, as Felix does (felix#2887)
    k.link_set(t.index, mtu=1300)
    ensure_tunl0(k, "192.168.3.0", 1480, mode="userspace")
    assert [a.cidr for a in k.addrs() if a.index == t.index] == ["192.168.3.0/32"] and k.link("tunl0").mtu == 1480


def test_kernel_tunl0_uses_the_modules_device_and_refuses_what_it_cannot_do():
    k = FakeKernel("ipip-node", kinds={"veth", "ipip", "tun"})
    assert kernel_has_ipip(k)
    info = ensure_tunl0(k, "192.168.3.0", 1440, mode="auto")
    t = k.link("tunl0")
    assert (info.kind, t.kind, t.mtu, t.up, tunl0_kind(k)) == ("kernel", "ipip", 1440, True, "kernel")
    with pytest.raises(TunnelError, match="no ipip support"):
        ensure_tunl0(node(0), "192.168.3.0", 1480, mode="kernel")
    clash = FakeKernel("clash", kinds={"veth", "ipip"})
    clash.link_del(clash.index("tunl0"))
    clash.link_add(Veth("tunl0", "peer0"))
    with pytest.raises(TunnelError, match="tunl0 exists but is a veth device, not ipip"):
        ensure_tunl0(clash, "192.168.3.0", 1480, mode="kernel")
    with pytest.raises(TunnelError, match="exists and is not a TUN device"):
        ensure_tunl0(clash, "192.168.3.0", 1480, mode="userspace")


def test_bad_tunnel_input_is_rejected():
    k = node(0)
    with pytest.raises(TunnelError, match="not an IPv4 address"):
        ensure_tunl0(k, "nonsense", 1480)
    with pytest.raises(TunnelError, match="MTU"):
        ensure_tunl0(k, "192.168.0.1", 10)
    with pytest.raises(TunnelError, match="mode"):
        ensure_tunl0(k, "192.168.0.1", 1480, mode="gre")
    assert k.link("tunl0") is None


def test_host_mtu_is_the_smallest_up_uplink():
    k = FakeKernel()
    assert detect_host_mtu(k) == 1460  # nothing matches: Felix's default
    k.add_link("eth0", mtu=1500)
    k.add_link("ens3", mtu=9000)
    k.add_link("eth1", mtu=1400, up=False)  # down: ignored
    k.add_link("cali1", mtu=1200)  # not an uplink name
    assert detect_host_mtu(k) == 1500


# -- the dataplane loop (virtual time) -----------------------------------------------------------


class FakeTable:
    """Stands in for an iptables table (the netns tier runs the real one)."""

    def __init__(self) -> None:
        self.applies = 0

    def apply(self, state, resync: bool = False) -> list[str]:
        self.applies += 1
        return []


class FakeIpsets:
    def apply_updates(self, sets, resync: bool = False) -> int:
        return 0

    def remove_stale(self, sets) -> list[str]:
        return []


def felix_on(k: FakeKernel, clock: FakeClock, tmp_path, pods: int = 2) -> Felix:
    from datastore.resources import IPPool, Metadata

    f = Felix(object(), "w0", env={}, var_lib=str(tmp_path), kernel=k, clock=clock)
    f.tables = {"filter": FakeTable(), "nat": FakeTable()}
    # Felix applies its tables with one iptables-restore (iptables.apply_tables); the fakes stand in there
    f._apply_tables = lambda desired, resync: [t.apply(desired.tables[n], resync) for n, t in f.tables.items()]
    f.ipsets = FakeIpsets()
    f._weps = {e.key: e for e in (ep(i) for i in range(1, pods + 1))}
    f._nodes = {n.name: n for n in NODES}
    f._pools = {"p": IPPool(metadata=Metadata(name="p"), spec=IPPool.Spec(cidr="192.168.0.0/16", ipip_mode="Never",
                                                                          nat_outgoing=True))}
    f._synced.set()
    f._dirty.set()
    return f


def run_loop(f: Felix, clock: FakeClock, until: float) -> None:
    """Run the dataplane loop in virtual time until ``until`` (virtual seconds from now)."""
    def stop() -> None:
        f._stop.set()
        f._dirty.set()

    clock.call_later(until, stop)
    t = threading.Thread(target=f._dataplane_loop, daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "the dataplane loop did not stop"


def timed_routes(k: FakeKernel, clock: FakeClock) -> list[tuple[float, str]]:
    """Wrap submit to record (virtual time, route) of every route add."""
    seen: list[tuple[float, str]] = []
    real = k.submit

    def submit(ops):
        seen.extend((clock.now, op.route.dst) for op in ops if isinstance(op, RouteAdd))
        return real(ops)

    k.submit = submit
    return seen


def test_loop_resync_repairs_a_deleted_route_on_the_refresh_interval(tmp_path):
    k, clock = node(), FakeClock(start=0.0)
    f = felix_on(k, clock, tmp_path)
    adds = timed_routes(k, clock)
    clock.call_later(5, lambda: k.route_del(Route("192.168.1.1/32", protocol=0)))  # by hand, at t=5
    run_loop(f, clock, until=200)
    assert [dst for t, dst in adds if t == 0.0] == ["192.168.1.1/32", "192.168.1.2/32"]
    repaired = [t for t, dst in adds if t > 0 and dst == "192.168.1.1/32"]
    assert repaired and 90.0 <= repaired[0] <= 91.0  # route_refresh_interval (90 s)
    assert "192.168.1.1/32 dev cali00000000001" in cali_routes(k)
    assert f.ready and f.last_error is None
    assert f.tables["filter"].applies >= 1


def test_loop_backs_off_after_failures_then_recovers(tmp_path):
    k, clock = node(), FakeClock(start=0.0)
    f = felix_on(k, clock, tmp_path)
    attempts: list[float] = []  # virtual time of each apply that reached the kernel

    def fault(op):
        if not isinstance(op, RouteAdd):
            return None
        if op.route.dst == "192.168.1.1/32":  # the first route of each apply
            attempts.append(clock.now)
        return errno.ENOBUFS if len(attempts) <= 4 else None

    k.fault = fault
    states: list[tuple[bool, str | None]] = []
    clock.call_later(0.05, lambda: states.append((f.ready, f.last_error)))
    run_loop(f, clock, until=30)
    gaps = [round(b - a, 3) for a, b in zip(attempts, attempts[1:], strict=False)]
    assert gaps == [0.1, 0.2, 0.4, 0.8]  # doubled after each failure, then it worked
    assert states[0][0] is False and "apply:" in states[0][1] and "192.168.1." in states[0][1]
    assert f.ready and f.last_error is None
    assert cali_routes(k) == {"192.168.1.1/32 dev cali00000000001", "192.168.1.2/32 dev cali00000000002"}


def test_loop_backoff_is_capped_and_resets_after_success(tmp_path):
    k, clock = node(3), FakeClock(start=0.0)
    f = felix_on(k, clock, tmp_path)
    attempts: list[float] = []
    broken = {"dst": "192.168.1.1/32"}

    def fault(op):
        if isinstance(op, RouteAdd) and op.route.dst == broken["dst"]:
            attempts.append(clock.now)
            return errno.ENOBUFS
        return None

    k.fault = fault
    clock.call_later(60, lambda: broken.update(dst=None))
    run_loop(f, clock, until=80)
    gaps = [round(b - a, 3) for a, b in zip(attempts, attempts[1:], strict=False)]
    assert gaps[:8] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0] and max(gaps) == 10.0  # capped at 10 s
    assert f.ready
    # after a success, a new failure (a third pod whose route fails) starts again from 0.1 s
    attempts.clear()
    broken["dst"] = "192.168.1.3/32"
    f._weps["ns/p3"] = ep(3)
    f._stop.clear()
    f._dirty.set()
    run_loop(f, clock, until=2)
    gaps = [round(b - a, 3) for a, b in zip(attempts, attempts[1:], strict=False)]
    assert gaps[:3] == [0.1, 0.2, 0.4]


def test_felix_reports_the_datapath_from_the_kernel_it_was_given(tmp_path):
    clock = FakeClock()
    assert Felix(object(), "w0", env={}, var_lib=str(tmp_path), kernel=node(0), clock=clock).status()[
        "datapath"] == "userspace"
    ipip = FakeKernel(kinds={"veth", "ipip"})
    assert Felix(object(), "w0", env={}, var_lib=str(tmp_path), kernel=ipip, clock=clock).status()[
        "datapath"] == "kernel"


def test_split_save_gives_each_table_its_part():
    from agent.felix.iptables import parse_save, split_save

    text = ("# Generated by iptables-nft-save\n*raw\n:PREROUTING ACCEPT [0:0]\n:cali-PREROUTING - [0:0]\n"
            "COMMIT\n# Completed\n*filter\n:INPUT ACCEPT [0:0]\n:cali-INPUT - [0:0]\n"
            '-A INPUT -m comment --comment "cali:Cz_u1IQiXIMmKD4c" -j cali-INPUT\nCOMMIT\n')
    parts = split_save(text)
    assert sorted(parts) == ["filter", "raw"]
    assert sorted(parse_save(parts["raw"]).chains) == ["PREROUTING", "cali-PREROUTING"]
    assert parse_save(parts["filter"]).chains["INPUT"] == [("Cz_u1IQiXIMmKD4c", '-m comment --comment '
                                                            '"cali:Cz_u1IQiXIMmKD4c" -j cali-INPUT')]


def test_datapath_choice_and_its_fallback_note():
    """auto: kernel ipip, else tc-BPF, else the userspace pump with the reason; forced modes
    the kernel cannot run are refused naming why."""
    from agent.felix.tunnel import TunnelError, choose_datapath

    ipip = FakeKernel(kinds={"veth", "ipip"})
    assert choose_datapath(ipip) == ("kernel", None)
    bpf_ok = FakeKernel()
    bpf_ok.tc_bpf_reason = lambda: None
    assert choose_datapath(bpf_ok) == ("bpf", None)
    assert choose_datapath(bpf_ok, "userspace") == ("userspace", None)
    no_bpf = FakeKernel()
    no_bpf.tc_bpf_reason = lambda: "bpf(2) unavailable: [Errno 1] Operation not permitted"
    kind, note = choose_datapath(no_bpf)
    assert kind == "userspace" and "tc-BPF unavailable (bpf(2) unavailable" in note and note.startswith("fallback")
    with pytest.raises(TunnelError, match="tc-BPF tunl0 asked for, but this kernel cannot run it: bpf"):
        choose_datapath(no_bpf, "bpf")
    with pytest.raises(TunnelError, match="no ipip support"):
        choose_datapath(bpf_ok, "kernel")
    with pytest.raises(TunnelError, match="not one of auto, kernel, bpf, userspace"):
        choose_datapath(bpf_ok, "ebpf")
    assert choose_datapath(FakeKernel())[0] == "userspace"  # a handle that cannot say: no BPF


def test_an_address_change_reaches_this_host_at_once_through_the_interface_monitor(tmp_path):
    """cali40this-host follows the host's addresses as the kernel reports them (Felix's
    ifacemonitor -> hostIPManager): the tunnel address Felix gives tunl0, an address added
    by hand, one removed; not at the routes refresh 90 s later. Workload interfaces do not count."""
    from kernel import Addr, AddrAdd, AddrDel
    from testbed.poll import wait_for

    k = node(1)
    f = Felix(object(), "w0", env={}, var_lib=str(tmp_path), kernel=k, clock=FakeClock(start=0.0))
    f._host_ips = f.host_ips_fn("cali")
    assert f._host_ips == {"127.0.0.1", "172.31.9.1"}
    f.ifacemonitor.start()
    try:
        tunl0 = k.add_link("tunl0", "tun", mtu=1480)
        k.do(AddrAdd(Addr(tunl0.index, "192.168.133.0", 32)))  # as the tunnel driver sets it
        wait_for(lambda: f._host_ips, lambda ips: "192.168.133.0" in ips, timeout=5, what="the tunnel address")
        assert f._dirty.is_set()
        f._dirty.clear()
        k.do(AddrDel(Addr(tunl0.index, "192.168.133.0", 32)))
        wait_for(lambda: f._host_ips, lambda ips: "192.168.133.0" not in ips, timeout=5, what="the address gone")
        assert f._dirty.is_set()
        f._dirty.clear()
        changes = f.ifacemonitor.changes
        k.do(AddrAdd(Addr(k.index("cali00000000001"), "10.9.9.9", 32)))  # a workload interface's
        wait_for(lambda: f.ifacemonitor.changes, lambda n: n > changes, timeout=5, what="the event seen")
        assert "10.9.9.9" not in f._host_ips and not f._dirty.is_set()
    finally:
        f.ifacemonitor.stop()
    assert not f.ifacemonitor.thread.is_alive() and k._subs == []


def test_only_ipv4_address_events_count_as_address_changes():
    from agent.felix.ifacemonitor import addresses_touched
    from kernel import Addr, Link, rtnl

    assert addresses_touched([(rtnl.RTM_NEWADDR, Addr(2, "10.0.0.1", 24))])
    assert addresses_touched([(rtnl.RTM_NEWLINK, Link(2, "eth0")), (rtnl.RTM_DELADDR, Addr(2, "10.0.0.1", 24))])
    assert not addresses_touched([(rtnl.RTM_NEWLINK, Link(2, "eth0")), (rtnl.NLMSG_DONE, None)])
    assert not addresses_touched([(rtnl.RTM_NEWADDR, Addr(2, "fd00::1", 64, family=10))])
    assert not addresses_touched([])


def test_loop_before_the_first_sync_waits_for_it_and_does_not_spin(tmp_path):
    """Before the datastore snapshot arrives there is nothing to apply: the loop waits on the
    sync (a second at a time), instead of spinning on refresh deadlines that are all past
    (seen: a third of a 50-node lab's calico-node CPU during the Typha snapshots)."""
    k, clock = node(), FakeClock(start=0.0)
    f = felix_on(k, clock, tmp_path)
    f._synced.clear()
    run_loop(f, clock, until=10.0)
    assert len(clock.waits) <= 12, f"the loop woke {len(clock.waits)} times in 10 virtual seconds"
    assert all(w == 1.0 for w in clock.waits), clock.waits[:20]
    assert f.tables["filter"].applies == 0, "applied before the first sync"


def test_loop_applies_a_stream_of_changes_at_most_ten_times_a_second(tmp_path):
    """Calico's apply throttle: a change every 10 ms for 3 s is applied in a first burst of 10, then
    once per 100 ms refill (not 300 times), and the last change is applied."""
    k, clock = node(), FakeClock(start=0.0)
    f = felix_on(k, clock, tmp_path)
    real = f.apply
    at: list[float] = []

    def apply(inp, resync=frozenset()):  # each apply takes 10 ms and a change comes meanwhile
        at.append(clock.now)
        out = real(inp, resync)
        if clock.now < 3.0:
            clock.advance(0.01)
            f._dirty.set()
        return out

    f.apply = apply
    run_loop(f, clock, until=5)
    assert 10 + 28 <= f.applies <= 10 + 31, f.applies  # unthrottled: 300
    assert at[10] >= 0.099 and 3.0 <= at[-1] <= 3.1 and f.ready  # the change made during the last is applied


def test_throttle_bucket():
    from agent.felix.throttle import Throttle

    t = Throttle(start=100.0)
    assert [t.admit(100.0) for _ in range(11)] == [True] * 10 + [False]  # a full bucket of 10
    assert t.next_token(100.03) == pytest.approx(0.07)
    assert not t.admit(100.09) and t.admit(100.1) and not t.admit(100.15)
    assert t.admit(100.35) and t.admit(100.35) and not t.admit(100.35)  # two refills since 100.1
    t.admit(1000.0)
    assert t.count == 9  # refills stop at the bucket's size
