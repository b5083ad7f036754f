#!/usr/bin/env python3
"""Record what the kernel sends back for objects made by ``ip``/``bridge`` (golden bytes).

Makes a throwaway netns, creates links, addresses, routes, neighbours and FDB entries
with iproute2 (the commands are stored next to the bytes), dumps them with
:meth:`kernel.netlink.Netlink.dump_raw` and writes tests/data/rtnl_golden.json. The
unit tests decode these bytes with :mod:`kernel.rtnl`; tests/netns/test_kernel_netlink.py
does the same live. Run as root: ``.venv/bin/python scripts/record_rtnl_golden.py``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from kernel import Route, RouteAdd, rtnl  # noqa: E402
from kernel.netlink import Netlink  # noqa: E402

SETUP = [
    "link add v0 mtu 1480 address ee:ee:ee:ee:ee:ee type veth peer name v1 mtu 1480",
    "link set v0 up", "link set v1 up",
    "addr add 10.1.0.1/24 dev v0",
    "link add vxlan.calico address 66:f9:37:c3:7e:94 type vxlan dev v0 id 4096 local 10.1.0.1 nolearning dstport 4789",
    "link set vxlan.calico up",
    "tuntap add tunl0 mode tun vnet_hdr",
    "link set tunl0 mtu 1440 up",
    "addr add 192.168.3.0/32 dev tunl0",
    "link add br0 type bridge",
    "route add 192.168.1.5/32 dev v0 scope link",
    "route add 10.2.0.0/24 via 10.1.0.2 dev v0",
    "route add 192.168.2.0/26 via 172.30.0.12 dev v0 proto bird onlink",
    "route add 192.168.4.0/26 proto bird nexthop via 10.1.0.2 dev v0 nexthop via 172.30.0.13 dev v0 onlink",
    "route add blackhole 192.168.3.0/26 proto bird",
    "route add default via 10.1.0.254 dev v0 metric 20",
    "route add 10.9.0.0/16 via 10.1.0.2 dev v0 table 1000",
    "neigh replace 192.168.5.1 lladdr 66:00:00:00:00:01 dev vxlan.calico nud permanent",
]
FDB = "fdb replace 66:00:00:00:00:01 dev vxlan.calico dst 10.1.0.2 self permanent"


def main() -> int:
    ns = f"rtg{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        for cmd in SETUP:
            subprocess.run(["ip", "-n", ns, *cmd.split()], check=True)
        subprocess.run(["bridge", "-n", ns, *FDB.split()], check=True)
        nl = Netlink(ns)
        out = {"kernel": platform.release(), "iproute2": subprocess.run(["ip", "-V"], capture_output=True,
                                                                        text=True).stdout.strip(),
               "setup": [f"ip {c}" for c in SETUP] + [f"bridge {FDB}"], "messages": {}}
        for name, mtype, fam in (("links", rtnl.RTM_GETLINK, 0), ("addrs", rtnl.RTM_GETADDR, 2),
                                 ("routes", rtnl.RTM_GETROUTE, 2), ("neighs", rtnl.RTM_GETNEIGH, 2),
                                 ("fdb", rtnl.RTM_GETNEIGH, 7)):
            out["messages"][name] = [m.hex() for m in nl.dump_raw(mtype, fam)]
        # The kernel's answer to a refused request (acks capped, extended ack on).
        v0 = nl.index("v0")
        bad = RouteAdd(Route("10.5.0.0/24", oif=v0, gateway="10.77.0.2"))
        nl.sock.send(rtnl.encode(bad, 7))
        out["messages"]["error"] = [nl.sock.recv(65536).hex()]
        out["error_request"] = f"ip route add 10.5.0.0/24 via 10.77.0.2 dev v0 (v0 = {v0})"
        nl.close()
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)
    path = os.path.join(REPO, "tests", "data", "rtnl_golden.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {path}: " + ", ".join(f"{k} {len(v)}" for k, v in out["messages"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
