"""tunl0 as a tc-BPF tunnel: devices, pinned programs and maps, filters (the kernel side).

The programs are :mod:`agent.felix.ipip_bpf`'s; this driver makes the node match them:

* tunl0 is a veth with the tunnel address /32, MTU host-20, ARP off and IPv6 off; its peer
  ``tunl0-bpf`` (same MTU, no address) carries what tunl0 transmits into the encap program;
* maps and programs are pinned under ``<bpffs>/calico/ipip/`` (bpffs mounted there if it is
  not: a lab node's /sys/fs/bpf lives in the node's own mount namespace), so they and the
  filters using them outlive calico-node;
* a clsact qdisc with one direct-action cls_bpf filter (prio :data:`FILTER_PRIO`, handle
  :data:`FILTER_HANDLE`) on the peer's ingress (encap) and on every uplink's ingress (decap).

:meth:`BpfTunnel.ensure` adopts what is there when it is what this code would load (the
programs' tags and map ids match), and otherwise loads the new programs and swaps each
filter's program in one netlink request (packets see the old program or the new one) before
re-pointing the pins. The allowed-hosts map is synced before a new program is attached.
:meth:`BpfTunnel.remove` takes everything away (IPIP disabled, or another datapath chosen).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.felix import ipip_bpf as P
from agent.felix.bpfprobe import unsupported_reason
from kernel import Kernel, KernelError, LinkAdd, LinkSet, Veth, bpf
from kernel.bpfasm import prog_tags
from kernel.model import IFF_NOARP
from kernel.rtnl import mac_bytes

log = logging.getLogger(__name__)

DEFAULT_BPFFS = "/sys/fs/bpf"
PIN_SUBDIR = "calico/ipip"
FILTER_PRIO = 0xCA1
FILTER_HANDLE = 1
UPLINK_PATTERN = r"^((en|wl|ww|sl|ib)[Pcopsvx].*|(eth|wlan|wwan).*)"
MAP_SPECS = P.MAP_SPECS


class BpfTunnelError(RuntimeError):
    """The tc-BPF tunnel cannot be set up (with the reason)."""


@dataclass
class BpfTunnelState:
    """What :meth:`BpfTunnel.ensure` found or made (for status and tests)."""

    tunl0_index: int
    peer_index: int
    uplinks: list[str]
    prog_ids: dict[str, int]
    map_ids: dict[str, int]
    adopted: bool
    pin_dir: str
    replaced: list[str] = field(default_factory=list)


class BpfTunnel:
    """The tc-BPF tunl0 of one node (``kernel``: a handle on the node's netns; ``bpffs``: where
    the node's bpf filesystem is or gets mounted)."""

    def __init__(self, kernel: Kernel, bpffs: str = DEFAULT_BPFFS, uplink_pattern: str = UPLINK_PATTERN) -> None:
        self.kernel = kernel
        self.bpffs = bpffs
        self.pin_dir = os.path.join(bpffs, PIN_SUBDIR)
        self.uplink_re = re.compile(uplink_pattern)
        self.maps: dict[str, int] = {}
        self.state: BpfTunnelState | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Close our map fds (the pinned objects stay)."""
        for fd in self.maps.values():
            os.close(fd)
        self.maps = {}

    def _tc(self):  # noqa: ANN202 - kernel.tc.Tc, imported lazily
        from kernel.tc import Tc

        return Tc(getattr(self.kernel, "netns_path", None))

    def ensure(self, address: str, mtu: int, allowed: Iterable[str], extra_uplinks: Iterable[str] = ()) -> BpfTunnelState:
        """Make tunl0 and the programs as they should be; adopt what is already right. Idempotent."""
        reason = unsupported_reason()
        if reason is not None:
            raise BpfTunnelError(reason)
        try:
            bpf.mount_bpffs(self.bpffs)
        except KernelError as exc:
            raise BpfTunnelError(f"no bpf filesystem at {self.bpffs}: {exc}") from None
        os.makedirs(self.pin_dir, exist_ok=True)
        tc = self._tc()
        try:
            tunl0, peer = self._ensure_devices(address, mtu, tc)
            self._ensure_maps(tc)
            self.sync_allowed(allowed)
            uplinks = self._uplinks(extra_uplinks)
            cfg = P.ProgConfig(tunl0.index, peer.index, mac_bytes(tunl0.mac), mac_bytes(peer.mac),
                               self.maps[P.HOSTS], self.maps[P.REMOTES], self.maps[P.COUNTERS])
            map_ids = {name: bpf.map_info(fd).id for name, fd in self.maps.items()}
            progs: dict[str, int] = {}
            replaced: list[str] = []
            adopted = True
            for name, code, targets in ((P.PROG_ENCAP, P.encap_program(cfg), [peer.index]),
                                        (P.PROG_DECAP, P.decap_program(cfg), [self.kernel.index(u) for u in uplinks])):
                fd, fresh = self._program(name, code, map_ids, tc, targets)
                try:
                    pid = bpf.prog_info(fd).id
                    progs[name] = pid
                    for idx in targets:
                        tc.clsact_add(idx)
                        have = [f for f in tc.filters(idx, "ingress")
                                if (f.prio, f.handle) == (FILTER_PRIO, FILTER_HANDLE)]
                        if not have or have[0].prog_id != pid:
                            tc.filter_replace(idx, "ingress", FILTER_PRIO, FILTER_HANDLE, fd, name)
                            replaced.append(f"{name}@{idx}")
                    if fresh:
                        adopted = False
                        self._repin(fd, name)
                finally:
                    os.close(fd)
        finally:
            tc.close()
        self.state = BpfTunnelState(tunl0.index, peer.index, uplinks, progs, map_ids,
                                    adopted and not replaced, self.pin_dir, replaced)
        return self.state

    def _ensure_devices(self, address: str, mtu: int, tc):  # noqa: ANN001,ANN202 - kernel.tc.Tc; (Link, Link)
        k = self.kernel
        tunl0, peer = k.link("tunl0"), k.link(P.PEER_NAME)
        if tunl0 is not None and (tunl0.kind != "veth" or peer is None or tunl0.parent != peer.index):
            log.warning("tunl0 is a %s device, not the tc-BPF veth pair: replacing it", tunl0.kind or "?")
            k.link_del(tunl0.index)
            tunl0 = None
            peer = k.link(P.PEER_NAME)
        if peer is not None and tunl0 is None:
            k.link_del(peer.index)
        if tunl0 is None:
            try:
                k.do(LinkAdd(Veth("tunl0", P.PEER_NAME, mtu=mtu, queues=1)))
            except KernelError as exc:
                raise BpfTunnelError(f"cannot create the tunl0 veth pair: {exc}") from None
        for name in ("tunl0", P.PEER_NAME):
            try:
                k.sysctl_set(f"net/ipv6/conf/{name}/disable_ipv6", "1")
            except KernelError:
                pass  # no IPv6 in this kernel: nothing to switch off
        tunl0, peer = k.link("tunl0"), k.link(P.PEER_NAME)
        if tunl0 is None or peer is None:
            raise BpfTunnelError("the tunl0 veth pair vanished right after creation")
        if not peer.up:  # the qdisc first: added to a device that is up, it waits for an RCU grace
            tc.clsact_add(peer.index)  # period holding the RTNL lock the whole machine's links wait for
        for ln in (peer, tunl0):
            if ln.mtu != mtu or not ln.up or not ln.flags & IFF_NOARP:
                k.do(LinkSet(ln.index, mtu=mtu, up=True, arp=False))
        from agent.felix.tunnel import set_only_address

        set_only_address(k, tunl0.index, address)
        return k.link("tunl0"), k.link(P.PEER_NAME)

    def _uplinks(self, extra: Iterable[str]) -> list[str]:
        names = {ln.name for ln in self.kernel.links()
                 if self.uplink_re.match(ln.name) and ln.up and ln.name not in ("tunl0", P.PEER_NAME)}
        names.update(n for n in extra if self.kernel.link(n) is not None)
        if not names:
            raise BpfTunnelError(f"no uplink matching {self.uplink_re.pattern} is up to receive IPIP on")
        return sorted(names)

    def _attached(self, tc, targets: Iterable[int]) -> list[int]:  # noqa: ANN001 - kernel.tc.Tc
        """Ids of the programs our filters (prio, handle) run on ``targets``."""
        ids = []
        for idx in targets:
            ids += [f.prog_id for f in tc.filters(idx, "ingress")
                    if (f.prio, f.handle) == (FILTER_PRIO, FILTER_HANDLE) and f.prog_id]
        return ids

    def _ensure_maps(self, tc) -> None:  # noqa: ANN001 - kernel.tc.Tc
        """Our maps: the pinned ones; else those of our programs attached in this namespace
        (pins lost, e.g. a bpffs that went with a mount namespace), pinned again; else new ones."""
        attached: dict[str, int] = {}
        pinned = all(name in self.maps or os.path.exists(os.path.join(self.pin_dir, name)) for name in MAP_SPECS)
        indexes = [] if pinned else [ln.index for ln in self.kernel.links() if not ln.name.startswith("cali")]
        for pid in set(self._attached(tc, indexes)):
            pfd = bpf.prog_fd_by_id(pid)
            if pfd is None:
                continue
            try:
                for mid in bpf.prog_info(pfd).map_ids:
                    mfd = bpf.map_fd_by_id(mid)
                    if mfd is not None:
                        attached.setdefault(bpf.map_info(mfd).name, mfd)
            finally:
                os.close(pfd)
        try:
            self._open_maps(attached)
        finally:
            for name, fd in attached.items():
                if self.maps.get(name) != fd:
                    os.close(fd)

    def _open_maps(self, attached: dict[str, int]) -> None:
        for name, (mtype, ks, vs, n, fl) in MAP_SPECS.items():
            if name in self.maps:
                continue
            path = os.path.join(self.pin_dir, name)
            fd = bpf.obj_get(path)
            from_filter = fd is None and name in attached
            if from_filter:
                fd = attached[name]
            if fd is not None:
                info = bpf.map_info(fd)
                if (info.type, info.key_size, info.value_size, info.max_entries, info.name) == (mtype, ks, vs, n, name):
                    if from_filter:
                        bpf.obj_pin(fd, path)
                        log.info("re-pinned map %s from the attached program", path)
                    self.maps[name] = fd
                    continue
                log.warning("map %s has another shape (%s): replacing it", path, info)
                if not from_filter:
                    os.close(fd)
                    os.unlink(path)
            fd = bpf.map_create(mtype, ks, vs, n, name, fl)
            bpf.obj_pin(fd, path)
            self.maps[name] = fd

    def _program(self, name: str, code: bytes, map_ids: dict[str, int], tc, targets: list[int]) -> tuple[int, bool]:  # noqa: ANN001
        """(fd, loaded now) of program ``name``: the pinned one (else the attached one, pinned
        again) if it is ``code`` on our maps; else ``code`` loaded now."""
        tags = prog_tags(code)
        path = os.path.join(self.pin_dir, name)
        fd = bpf.obj_get(path)
        candidates = [fd] if fd is not None else [bpf.prog_fd_by_id(i) for i in self._attached(tc, targets)]
        found = None
        for cfd in candidates:
            if cfd is None:
                continue
            info = bpf.prog_info(cfd)
            if found is None and info.tag in tags and set(info.map_ids) <= set(map_ids.values()):
                found = cfd
            else:
                os.close(cfd)
        if found is not None:
            if fd is None:
                self._repin(found, name)
                log.info("re-pinned program %s from its filter", path)
            return found, False
        return bpf.prog_load(bpf.PROG_TYPE_SCHED_CLS, code, name), True

    def _repin(self, fd: int, name: str) -> None:
        """Point the pin ``name`` at ``fd``: pinned under a new name, then renamed over the old."""
        path = os.path.join(self.pin_dir, name)
        tmp = f"{path}_new"  # bpffs refuses names with a dot
        if os.path.exists(tmp):
            os.unlink(tmp)
        bpf.obj_pin(fd, tmp)
        os.rename(tmp, path)

    # -- maps ------------------------------------------------------------------------------
    def _ensure_maps_only(self) -> None:
        """Open the pinned maps (for :meth:`stats` from another process); BpfTunnelError if absent."""
        for name in MAP_SPECS:
            fd = bpf.obj_get(os.path.join(self.pin_dir, name)) if bpf.is_bpffs(self.bpffs) else None
            if fd is None:
                raise BpfTunnelError(f"no tc-BPF tunnel pinned in {self.pin_dir}")
            self.maps[name] = fd

    def sync_allowed(self, members: Iterable[str], previous: Iterable[str] | None = None) -> None:
        """Make the allowed-hosts map hold exactly ``members`` (cali40all-hosts-net's members).
        With ``previous`` (the members this map was last synced to) only the difference is
        written, without reading the map back: a node joining a big lab is one update."""
        fd = self.maps[P.HOSTS]
        if previous is not None:
            members, previous = set(members), set(previous)
            for m in previous - members:
                bpf.map_delete(fd, P.hosts_key(m))
            for m in members - previous:
                bpf.map_update(fd, P.hosts_key(m), bytes(P.HOSTS_VALUE.size))
            return
        want = {P.hosts_key(m) for m in members}
        have = set(bpf.map_keys(fd, P.HOSTS_KEY.size))
        for key in have - want:
            bpf.map_delete(fd, key)
        for key in want - have:
            bpf.map_update(fd, key, bytes(P.HOSTS_VALUE.size), bpf.NOEXIST)

    def stats(self) -> dict:
        """Counters of the programs: per remote node (tx), per allowed host (rx), drops."""
        if not self.maps:
            return {}
        out: dict = {"remotes": {}, "hosts": {}, "drops": {}}
        fd = self.maps[P.REMOTES]
        for key in bpf.map_keys(fd, P.REMOTES_KEY.size):
            raw = bpf.map_lookup(fd, key, P.REMOTES_VALUE.size)
            if raw is not None:
                out["remotes"][".".join(str(b) for b in key)] = P.remotes_value(raw)
        fd = self.maps[P.HOSTS]
        for key in bpf.map_keys(fd, P.HOSTS_KEY.size):
            raw = bpf.map_lookup(fd, key, P.HOSTS_VALUE.size)
            if raw is not None:
                out["hosts"][P.hosts_member(key)] = P.hosts_value(raw)
        raw = bpf.map_lookup(self.maps[P.COUNTERS], bytes(4), P.COUNTERS_VALUE.size)
        out["drops"] = {k: v for k, v in P.counters_value(raw).items() if v} if raw else {}
        out["tx_packets"] = sum(v["tx_packets"] for v in out["remotes"].values())
        out["rx_packets"] = sum(v["rx_packets"] for v in out["hosts"].values())
        return out

    # -- removal ---------------------------------------------------------------------------
    def remove(self) -> list[str]:
        """Remove the filters, tunl0 and its peer, and the pins; returns what was removed."""
        done: list[str] = []
        tc = self._tc()
        try:
            for ln in self.kernel.links():
                if ln.name in ("tunl0", P.PEER_NAME):
                    continue
                filters = tc.filters(ln.index, "ingress")
                ours = [f for f in filters if (f.prio, f.handle) == (FILTER_PRIO, FILTER_HANDLE)
                        and f.name == P.PROG_DECAP]
                if ours and tc.filter_del(ln.index, "ingress", FILTER_PRIO, FILTER_HANDLE):
                    done.append(f"filter {ln.name}")
                    if len(filters) == 1 and not tc.filters(ln.index, "egress"):
                        tc.clsact_del(ln.index)
        finally:
            tc.close()
        tunl0 = self.kernel.link("tunl0")
        if tunl0 is not None and tunl0.kind == "veth":
            self.kernel.link_del(tunl0.index)
            done.append("tunl0")
        peer = self.kernel.link(P.PEER_NAME)
        if peer is not None:
            self.kernel.link_del(peer.index)
        self.close()
        if os.path.isdir(self.pin_dir):
            for entry in os.listdir(self.pin_dir):
                os.unlink(os.path.join(self.pin_dir, entry))
                done.append(f"pin {entry}")
            os.rmdir(self.pin_dir)
        self.state = None
        return done


def main(argv: list[str] | None = None) -> int:
    """Set up (or adopt), show, or remove the tc-BPF tunl0 in the current netns; no process stays."""
    import argparse
    import json

    from agent.felix.tunnel import detect_host_mtu, tunnel_mtu
    from kernel.netlink import Netlink

    p = argparse.ArgumentParser(prog="python -m agent.felix.bpftunnel", description=main.__doc__)
    p.add_argument("--address", help="tunnel address (tunl0 gets it as /32)")
    p.add_argument("--mtu", type=int, default=0, help="tunl0 MTU (0: host MTU - 20)")
    p.add_argument("--allow", action="append", default=[], help="node address (or CIDR) whose IPIP is accepted")
    p.add_argument("--uplink", action="append", default=[], help="decapsulate on this link too")
    p.add_argument("--bpffs", default=DEFAULT_BPFFS, help="where the bpf filesystem is (mounted if not)")
    p.add_argument("--remove", action="store_true", help="remove the tunnel, its filters and pins")
    p.add_argument("--stats", action="store_true", help="print the programs' counters")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    kernel = Netlink()
    t = BpfTunnel(kernel, args.bpffs)
    try:
        if args.remove:
            print(json.dumps({"removed": t.remove()}))
            return 0
        if args.stats:
            t._ensure_maps_only()
            print(json.dumps(t.stats(), sort_keys=True))
            return 0
        if not args.address:
            p.error("--address is required to set the tunnel up")
        st = t.ensure(args.address, args.mtu or tunnel_mtu(detect_host_mtu(kernel)), args.allow, args.uplink)
        print(json.dumps({"adopted": st.adopted, "uplinks": st.uplinks, "prog_ids": st.prog_ids,
                          "map_ids": st.map_ids, "replaced": st.replaced, "pin_dir": st.pin_dir}))
        return 0
    except (BpfTunnelError, KernelError) as exc:
        print(f"tc-BPF tunnel: {exc}", file=sys.stderr)
        return 1
    finally:
        t.close()
        kernel.close()


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["BpfTunnel", "BpfTunnelError", "BpfTunnelState", "DEFAULT_BPFFS", "unsupported_reason"]
