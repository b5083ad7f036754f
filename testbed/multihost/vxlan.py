"""Segments spanning machines: one kernel VXLAN device per segment and machine.

A segment is a Linux bridge in a netns of its own (``<lab>-<segment>@<machine>``). When
its members live on several machines, each machine's bridge gets a port ``vx.hosts``: a
VXLAN device created from the machine's own network namespace (so its UDP socket, on
port 4789, lives there, bound to the machine's address on the hosts' network) and moved into the segment's
netns (``ip link add ... netns``: the device keeps its ``link-netns``). Broadcast and
unknown frames go to every other machine of the segment (one all-zero FDB entry per peer,
head-end replication); the bridge and the VXLAN device learn the rest.

Why not Mininet's own cluster support (``mininet/examples/cluster.py``): it tunnels each
*link* between two nodes through ``ssh -w`` (an Ethernet tap over the SSH TCP connection:
TCP in TCP, in userspace, needing ``PermitTunnel`` and root logins) or ``gretap`` (this
kernel has no ``gre``), runs every node's shell through its own ``ssh`` process, and
cleans up with ``mn -c`` on each server (machine-wide: forbidden here). A lab's segment
is a bridge with many members, so one tunnel per segment and machine pair, in the
kernel, is both fewer tunnels and the datapath a real multi-host cluster network has.

The frames of the lab only ever go to the other machines of the lab (the FDB's peers);
nothing bridges a lab segment onto a real interface. The segment's interfaces get the
MTU the tunnel leaves (:func:`segment_mtu`), so the nodes' ``eth0`` and, from it, Calico's
``tunl0`` (MTU - 20) fit.

:func:`plan` is pure (unit-tested); :func:`create` is the kernel side.
"""

from __future__ import annotations

import hashlib
import subprocess

__all__ = ["DEVICE", "PORT", "OVERHEAD", "vni", "plan", "segment_mtu", "create"]

#: the VXLAN port of every segment bridge that spans machines (its name has a '.', which
#: node names cannot have, so it never clashes with a member's port)
DEVICE = "vx.hosts"
#: IANA's VXLAN port
PORT = 4789
#: outer Ethernet + IPv4 + UDP + VXLAN headers
OVERHEAD = 50
#: the MTU a segment gets on a 1500-byte underlay
DEFAULT_UNDERLAY_MTU = 1500


def vni(lab: str, segment: str) -> int:
    """The segment's VXLAN network identifier: 24 bits of a hash of lab and segment, never 0
    (two labs sharing machines use different VNIs on the same port)."""
    h = int(hashlib.sha256(f"{lab}/{segment}".encode()).hexdigest()[:6], 16)
    return h or 1


def segment_mtu(underlay_mtu: int = DEFAULT_UNDERLAY_MTU) -> int:
    """The MTU left for a spanning segment's frames on an underlay of ``underlay_mtu``."""
    return underlay_mtu - OVERHEAD


def plan(lab: str, segments: dict[str, list[str]],
         reach: dict[str, dict[str, str]]) -> dict[str, dict[str, dict]]:
    """Per machine, per spanning segment: ``{"vni", "port", "device", "local", "peers"}``.

    ``segments`` maps each segment to the machines with a member on it; those with more
    than one span machines. ``reach[a][b]`` is the address machine ``a`` sends to for
    machine ``b``; a machine's ``local`` address (its tunnel's socket binds to it, not to
    every address of the machine) is the one its first peer reaches it at. Raises KeyError
    naming a missing pair.
    """
    out: dict[str, dict[str, dict]] = {}
    for seg, machines in segments.items():
        if len(machines) < 2:
            continue
        for m in machines:
            peers = []
            for other in machines:
                if other == m:
                    continue
                try:
                    peers.append(reach[m][other])
                except KeyError:
                    raise KeyError(f"no address for machine {other!r} as seen from {m!r}") from None
            first = next(o for o in machines if o != m)
            out.setdefault(m, {})[seg] = {"vni": vni(lab, seg), "port": PORT, "device": DEVICE,
                                          "local": reach[first][m], "peers": peers}
    return out


def _ip(*args: str) -> None:
    res = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"`{' '.join(args)}` failed: {res.stderr.strip()}")


def create(netns: str, bridge: str, spec: dict, mtu: int) -> None:
    """Make the VXLAN port of ``bridge`` (in ``netns``) to the peers of ``spec`` (from :func:`plan`).

    Run from the machine's own network namespace: the device's socket stays there. The
    device is created directly in ``netns``, so a failure never leaves it on the machine.
    """
    dev = spec["device"]
    _ip("ip", "link", "add", dev, "netns", netns, "mtu", str(mtu), "type", "vxlan",
        "id", str(spec["vni"]), "local", spec["local"], "dstport", str(spec["port"]), "ttl", "64")
    for peer in spec["peers"]:
        _ip("bridge", "-n", netns, "fdb", "append", "00:00:00:00:00:00", "dev", dev, "dst", peer)
    _ip("ip", "-n", netns, "link", "set", dev, "master", bridge, "up")


def underlay_mtu(peer: str) -> int:
    """The MTU of the interface this machine's netns routes ``peer`` through (1500 if unknown)."""
    res = subprocess.run(["ip", "-o", "route", "get", peer], capture_output=True, text=True,
                         check=False)
    parts = res.stdout.split()
    if res.returncode != 0 or "dev" not in parts:
        return DEFAULT_UNDERLAY_MTU
    dev = parts[parts.index("dev") + 1]
    try:
        with open(f"/sys/class/net/{dev}/mtu") as f:
            return int(f.read())
    except (OSError, ValueError):
        return DEFAULT_UNDERLAY_MTU
