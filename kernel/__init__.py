"""calicolab's one kernel layer: rtnetlink codec, netns-bound sockets, setns, and a fake.

Standard library only and importing nothing of the project, so the thin CNI
launcher (``python3 -IS``) can use it. The pieces:

* :mod:`kernel.model`: what the kernel holds (links, addresses, routes,
  neighbours/FDB entries), the link kinds we create, and the operations
  (:class:`~kernel.model.RouteAdd`, ...) a caller asks for;
* :mod:`kernel.rtnl`: operations -> rtnetlink request bytes, kernel messages
  -> model objects (pure functions, golden-byte tested);
* :mod:`kernel.netlink`: :class:`~kernel.netlink.Netlink`, the real kernel
  handle: one NETLINK_ROUTE socket bound to a network namespace, batched
  requests (one send, acks matched by sequence number, errors raised as
  :class:`~kernel.model.KernelError` naming the object);
* :mod:`kernel.netns`: the one ``setns(2)`` helper (a context manager for the
  calling thread);
* :mod:`kernel.fake`: :class:`~kernel.fake.FakeKernel`, an in-memory kernel
  with the same interface and kernel-like answers, for unit tests.

Callers receive a handle (``Netlink`` or ``FakeKernel``) and use the methods
of :class:`kernel.base.Kernel`; see docs/kernel.md.
"""

from kernel.base import Kernel
from kernel.model import (
    AF_BRIDGE,
    AF_INET,
    NTF_SELF,
    NUD_PERMANENT,
    RT_SCOPE_HOST,
    RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_MAIN,
    RTN_BLACKHOLE,
    RTN_UNICAST,
    RTNH_F_ONLINK,
    RTPROT_BIRD,
    RTPROT_BOOT,
    RTPROT_KERNEL,
    Addr,
    AddrAdd,
    AddrDel,
    Bridge,
    Ipip,
    KernelError,
    Link,
    LinkAdd,
    LinkDel,
    LinkSet,
    Neigh,
    NeighAdd,
    NeighDel,
    NextHop,
    Route,
    RouteAdd,
    RouteDel,
    Tun,
    Veth,
    Vxlan,
)

__all__ = [
    "AF_BRIDGE", "AF_INET", "NTF_SELF", "NUD_PERMANENT", "RT_SCOPE_HOST", "RT_SCOPE_LINK",
    "RT_SCOPE_UNIVERSE", "RT_TABLE_MAIN", "RTN_BLACKHOLE", "RTN_UNICAST", "RTNH_F_ONLINK",
    "RTPROT_BIRD", "RTPROT_BOOT", "RTPROT_KERNEL", "Addr", "AddrAdd", "AddrDel", "Bridge", "Ipip",
    "Kernel", "KernelError", "Link", "LinkAdd", "LinkDel", "LinkSet", "Neigh", "NeighAdd",
    "NeighDel", "NextHop", "Route", "RouteAdd", "RouteDel", "Tun", "Veth", "Vxlan",
]
