"""The BGP speaker's kernel sync on the in-memory kernel and a virtual clock.

KernelRoutes (diff and apply of ``proto bird`` routes): conflict with someone else's
route, multipath, blackhole, delete semantics, a device that appears later. The
speaker: adoption of routes left by a previous run, retry after failures, the periodic
scan repairing drift. The netns tier keeps what needs real sessions and a real kernel.
"""

from __future__ import annotations

import asyncio
import errno
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network

import pytest

from agent.bgp import messages as M
from agent.bgp.config import KernelPolicy, SpeakerConfig
from agent.bgp.kernel import KernelRoutes
from agent.bgp.prefix import parse as N  # prefixes are integer keys in the speaker
from agent.bgp.rib import PeerInfo
from agent.bgp.routes import KernelRoute, NextHop
from agent.bgp.speaker import KERNEL_RETRY_FIRST, KERNEL_RETRY_SECONDS, KERNEL_SCAN_SECONDS, Speaker
from agent.clock import FakeClock
from kernel import RT_SCOPE_LINK, RTN_BLACKHOLE, RTPROT_BIRD, Route, Tun
from kernel.fake import FakeKernel
from kernel.model import LinkAdd, RouteAdd, RouteDel

pytestmark = pytest.mark.unit

POOL = IPv4Network("192.168.0.0/16")
OWN = N("192.168.0.0/26")


def node(tunl0: bool = True) -> FakeKernel:
    """A node: eth0 172.30.0.11/24 up, and the tunl0 Felix makes (a TUN) unless told not to."""
    k = FakeKernel("node")
    k.add_link("eth0", cidr="172.30.0.11/24")
    if tunl0:
        k.do(LinkAdd(Tun("tunl0")))
        k.link_set(k.index("tunl0"), up=True)
    return k


def tunnel(prefix: str, gw: str) -> KernelRoute:
    return KernelRoute(N(prefix), nexthops=(NextHop(A(gw), "tunl0", True),))


def bird(k: FakeKernel) -> set[str]:
    """The kernel's proto bird routes, iproute2-like."""
    names = {ln.index: ln.name for ln in k.links()}
    out = set()
    for r in k.routes(protocol=RTPROT_BIRD):
        if r.type == RTN_BLACKHOLE:
            out.add(f"blackhole {r.dst}")
        else:
            out.add(r.dst + "".join(f" via {h.gateway} dev {names[h.oif]}" + (" onlink" if h.onlink else "")
                                    for h in r.hops()))
    return out


def test_reconcile_programs_tunnel_multipath_and_blackhole_and_reads_them_back():
    k = node()
    kr = KernelRoutes(k)
    mp = KernelRoute(N("192.168.3.0/26"), nexthops=(NextHop(A("172.30.0.12"), "tunl0", True),
                                                   NextHop(A("172.30.0.13"), "tunl0", True)))
    direct = KernelRoute(N("192.168.4.0/26"), nexthops=(NextHop(A("172.30.0.14")),))
    desired = {OWN: KernelRoute(OWN, blackhole=True), N("192.168.1.0/26"): tunnel("192.168.1.0/26", "172.30.0.12"),
               mp.prefix: mp, direct.prefix: direct}
    assert kr.reconcile(desired) == set()
    assert k.batches[-1] == 4  # one batch
    assert bird(k) == {"blackhole 192.168.0.0/26", "192.168.1.0/26 via 172.30.0.12 dev tunl0 onlink",
                       "192.168.3.0/26 via 172.30.0.12 dev tunl0 onlink via 172.30.0.13 dev tunl0 onlink",
                       "192.168.4.0/26 via 172.30.0.14 dev eth0"}
    dumped = kr.dump()
    assert dumped[mp.prefix] == mp and dumped[OWN] == desired[OWN]
    assert dumped[direct.prefix] == KernelRoute(direct.prefix, nexthops=(NextHop(A("172.30.0.14"), "eth0"),))
    # nothing to do the second time round (except the direct route: the kernel names its device)
    before = len(k.log)
    kr.reconcile({**desired, direct.prefix: dumped[direct.prefix]})
    assert len(k.log) == before


def test_a_route_from_another_source_is_never_replaced_or_deleted():
    k = node()
    eth = k.index("eth0")
    k.route_add(Route("10.99.0.0/24", oif=eth, scope=RT_SCOPE_LINK))  # an admin's (proto boot)
    kr = KernelRoutes(k)
    kr.dump()
    failed = kr.apply({N("10.99.0.0/24"): tunnel("10.99.0.0/24", "172.30.0.12"),
                       N("172.30.0.0/24"): tunnel("172.30.0.0/24", "172.30.0.12")})
    assert failed == {N("10.99.0.0/24"), N("172.30.0.0/24")}
    assert "already in the kernel from another source" in kr.failing[N("172.30.0.0/24")]
    assert [r.protocol for r in k.routes() if r.dst == "172.30.0.0/24"] == [2]  # the connected route stays
    # withdrawing it: not ours, so nothing is deleted, and the report goes away
    assert kr.apply({N("10.99.0.0/24"): None}) == set()
    assert N("10.99.0.0/24") not in kr.failing
    assert [r.dst for r in k.routes() if r.dst == "10.99.0.0/24"] == ["10.99.0.0/24"]


def test_delete_semantics():
    k = node()
    kr = KernelRoutes(k)
    kr.reconcile({N("192.168.1.0/26"): tunnel("192.168.1.0/26", "172.30.0.12"), OWN: KernelRoute(OWN, True)})
    k.do(RouteDel(Route("192.168.1.0/26", protocol=RTPROT_BIRD)))  # gone behind our back
    assert kr.apply({N("192.168.1.0/26"): None, OWN: None}) == set()  # ESRCH counts as done
    assert bird(k) == set() and kr.owned == set()
    # flush removes only proto bird routes
    kr.apply({N("192.168.2.0/26"): tunnel("192.168.2.0/26", "172.30.0.12")})
    k.route_add(Route("10.98.0.0/24", oif=k.index("eth0"), scope=RT_SCOPE_LINK))
    kr.flush()
    assert bird(k) == set() and any(r.dst == "10.98.0.0/24" for r in k.routes())


def test_owned_route_is_replaced_in_place():
    k = node()
    kr = KernelRoutes(k)
    kr.apply({N("192.168.1.0/26"): tunnel("192.168.1.0/26", "172.30.0.12")})
    assert kr.apply({N("192.168.1.0/26"): tunnel("192.168.1.0/26", "172.30.0.99")}) == set()
    assert bird(k) == {"192.168.1.0/26 via 172.30.0.99 dev tunl0 onlink"}
    assert isinstance(k.log[-1], RouteAdd) and k.log[-1].replace


def test_missing_device_fails_naming_it_then_succeeds_once_it_exists():
    k = node(tunl0=False)
    kr = KernelRoutes(k)
    r = tunnel("192.168.1.0/26", "172.30.0.12")
    assert kr.apply({r.prefix: r}) == {r.prefix}
    assert kr.failing[r.prefix] == "kernel route 192.168.1.0/26: link tunl0: No such device"
    assert kr.apply({r.prefix: r}) == {r.prefix}
    assert len(kr.errors) == 1  # logged once, not every retry
    k.do(LinkAdd(Tun("tunl0")))
    k.link_set(k.index("tunl0"), up=True)
    assert kr.apply({r.prefix: r}) == set() and kr.failing == {}
    k.link_del(k.index("tunl0"))  # re-made: the cached index must not be reused
    k.do(LinkAdd(Tun("tunl0")))
    k.link_set(k.index("tunl0"), up=True)
    kr.owned.discard(r.prefix)  # its route went with the old device
    assert kr.apply({r.prefix: r}) == {r.prefix}  # the cached index is stale: fails once, cache dropped
    assert kr.apply({r.prefix: r}) == set()
    assert bird(k) == {"192.168.1.0/26 via 172.30.0.12 dev tunl0 onlink"}


def test_kernel_refusal_is_reported_with_the_kernels_reason():
    k = node()
    kr = KernelRoutes(k)
    off_link = KernelRoute(N("192.168.5.0/26"), nexthops=(NextHop(A("10.50.0.1")),))  # no onlink, no subnet
    assert kr.apply({off_link.prefix: off_link}) == {off_link.prefix}
    assert kr.failing[off_link.prefix].endswith("Network is unreachable (Nexthop has invalid gateway)")
    k.fault = lambda op: errno.ENOBUFS
    assert kr.apply({N("192.168.6.0/26"): tunnel("192.168.6.0/26", "172.30.0.12")}) == {N("192.168.6.0/26")}


# -- the speaker's kernel sync (asyncio, virtual time) -----------------------------------


def config(originate: tuple = ((OWN, True),), graceful_restart: float = 120) -> SpeakerConfig:
    from agent.bgp.fsm import Timers

    return SpeakerConfig(router_id=A("172.30.0.11"), local_as=64512, local_address=A("172.30.0.11"),
                         originate=originate, export_pools=(POOL,), kernel=KernelPolicy(ipip_pools=(POOL,)),
                         listen_address="127.0.0.1", listen_port=0,
                         timers=Timers(graceful_restart=graceful_restart))


def announce(sp: Speaker, prefix: str, nh: str, peer: str = "Mesh_172_30_0_12") -> None:
    info = PeerInfo(key=peer, address=A(nh), asn=64512, router_id=A(nh))
    upd = M.Update(attributes=M.Attributes(next_hop=A(nh), origin=0), nlri=[N(prefix)])
    sp._changed(sp.rib.apply_update(info, upd))


async def settle(sp: Speaker) -> None:
    """Wait (real time, bounded) until the speaker's kernel work is done: no kernel sync task
    running and the scan task parked on the virtual clock again."""
    clock = sp.clock
    assert isinstance(clock, FakeClock)
    quiet = 0
    for _ in range(2500):
        await asyncio.sleep(0.002)  # lets the kernel thread's results come back to the loop
        syncing = sp._kernel_task is not None and not sp._kernel_task.done()
        scanning = (sp._scan_task is not None and not sp._scan_task.done()
                    and not any(t > clock.now for t in clock.pending()))
        quiet = 0 if syncing or scanning else quiet + 1
        if quiet >= 3:
            return
    raise AssertionError("the speaker's kernel work did not settle within 5 s")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


async def speaker_before_tunl0() -> tuple:
    """A started speaker on a node without tunl0 that has just learnt a route via tunl0."""
    k, clock = node(tunl0=False), FakeClock()
    sp = Speaker(config(), kernel=k, clock=clock)
    await sp.start()
    announce(sp, "192.168.1.0/26", "172.30.0.12")
    await settle(sp)
    return k, clock, sp


def test_speaker_retries_until_tunl0_exists():
    async def main() -> None:
        k, clock, sp = await speaker_before_tunl0()
        assert bird(k) == {"blackhole 192.168.0.0/26"}
        assert sp.status()["kernel_errors"] == ["kernel route 192.168.1.0/26: link tunl0: No such device"]
        clock.advance(KERNEL_RETRY_SECONDS)  # still missing: retried and failing again
        await settle(sp)
        assert sp.status()["kernel_errors"] and len(sp.status()["kernel_error_history"]) == 1
        k.do(LinkAdd(Tun("tunl0")))
        k.link_set(k.index("tunl0"), up=True)
        clock.advance(KERNEL_RETRY_SECONDS)
        await settle(sp)
        assert bird(k) == {"blackhole 192.168.0.0/26", "192.168.1.0/26 via 172.30.0.12 dev tunl0 onlink"}
        assert sp.status()["kernel_errors"] == [] and sp.status()["kernel_error_history"]
        await sp.stop()
        assert bird(k) == set() and not k.closed  # flushed; the handle belongs to the caller

    run(main())


def test_speaker_retries_quickly_first_then_backs_off_to_a_second():
    """tunl0 made a moment after the first route (Felix and the BGP sessions start together):
    the route is in 0.1 s, not a second later; retries that keep failing back off to 1 s."""
    async def main() -> None:
        k, clock, sp = await speaker_before_tunl0()
        assert sp.status()["kernel_errors"]
        delays = []
        for _ in range(6):  # each failed retry waits twice as long, up to KERNEL_RETRY_SECONDS
            delays.append(min(t for t in clock.pending() if t > clock.now) - clock.now)
            clock.advance(delays[-1])
            await settle(sp)
        assert [round(d, 3) for d in delays] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0], delays
        k.do(LinkAdd(Tun("tunl0")))
        k.link_set(k.index("tunl0"), up=True)
        clock.advance(KERNEL_RETRY_SECONDS)
        await settle(sp)
        assert "192.168.1.0/26 via 172.30.0.12 dev tunl0 onlink" in bird(k)
        announce(sp, "192.168.2.0/26", "172.30.0.13")  # works at once; the next failure starts at 0.1 again
        await settle(sp)
        assert sp._kernel_retry_delay == KERNEL_RETRY_FIRST
        await sp.stop()

    run(main())


def test_speaker_scan_repairs_drift_and_drops_routes_nobody_reannounced():
    async def main() -> None:
        k, clock = node(), FakeClock()
        kr = KernelRoutes(k)  # a previous run left two routes
        kr.apply({N("192.168.1.0/26"): tunnel("192.168.1.0/26", "172.30.0.12"),
                  N("192.168.9.0/26"): tunnel("192.168.9.0/26", "172.30.0.19")})
        sp = Speaker(config(graceful_restart=30), kernel=k, clock=clock)
        await sp.start()
        await settle(sp)
        assert bird(k) == {"blackhole 192.168.0.0/26", "192.168.1.0/26 via 172.30.0.12 dev tunl0 onlink",
                           "192.168.9.0/26 via 172.30.0.19 dev tunl0 onlink"}  # kept while peers come back
        announce(sp, "192.168.1.0/26", "172.30.0.12")
        await settle(sp)
        clock.advance(30)  # the first scan, one graceful-restart time after start
        await settle(sp)
        assert bird(k) == {"blackhole 192.168.0.0/26", "192.168.1.0/26 via 172.30.0.12 dev tunl0 onlink"}
        k.do(RouteDel(Route("192.168.1.0/26", protocol=RTPROT_BIRD)))  # deleted by hand
        k.route_add(Route("192.168.7.0/26", type=RTN_BLACKHOLE, protocol=RTPROT_BIRD))  # a stray one
        clock.advance(KERNEL_SCAN_SECONDS - 1)
        await settle(sp)
        assert "192.168.1.0/26 via 172.30.0.12 dev tunl0 onlink" not in bird(k)  # not yet: scans every 10 s
        clock.advance(1)
        await settle(sp)
        assert bird(k) == {"blackhole 192.168.0.0/26", "192.168.1.0/26 via 172.30.0.12 dev tunl0 onlink"}
        await sp.stop(graceful=True)
        assert bird(k) == {"blackhole 192.168.0.0/26", "192.168.1.0/26 via 172.30.0.12 dev tunl0 onlink"}

    run(main())


def test_speaker_withdrawal_removes_and_conflict_is_reported():
    async def main() -> None:
        k, clock = node(), FakeClock()
        sp = Speaker(config(), kernel=k, clock=clock)
        await sp.start()
        announce(sp, "192.168.1.0/26", "172.30.0.12")
        announce(sp, "172.30.0.0/24", "172.30.0.12")  # a peer announcing our connected subnet
        await settle(sp)
        errors = sp.status()["kernel_errors"]
        assert len(errors) == 1 and "172.30.0.0/24 is already in the kernel from another source" in errors[0]
        info = PeerInfo(key="Mesh_172_30_0_12", address=A("172.30.0.12"), asn=64512, router_id=A("172.30.0.12"))
        sp._changed(sp.rib.apply_update(info, M.Update(withdrawn=[N("192.168.1.0/26"), N("172.30.0.0/24")])))
        await settle(sp)
        assert bird(k) == {"blackhole 192.168.0.0/26"} and sp.status()["kernel_errors"] == []
        assert [r.protocol for r in k.routes() if r.dst == "172.30.0.0/24"] == [2]
        assert sp.counters.kernel_changes >= 3
        await sp.stop()

    run(main())
