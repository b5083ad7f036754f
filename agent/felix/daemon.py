"""The Felix loop: datastore watch -> calculation -> drivers, with periodic resync.

Two threads: the watcher keeps a cache of the resources Felix needs (local
WorkloadEndpoints, Nodes, IPPools, FelixConfigurations) and flags changes;
the dataplane thread coalesces changes, recalculates and applies the minimal
change, and re-reads the kernel on each driver's refresh interval so drift
(a route or rule deleted by hand) is repaired.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from agent.clock import Clock
from agent.felix import convert
from agent.felix.calc import Calculator, ipip_enabled
from agent.felix.encap import pod_mtu
from agent.felix.ifacemonitor import AddrMonitor
from agent.felix.ipsets import IpsetDriver
from agent.felix.iptables import IptablesTable, apply_tables
from agent.felix.model import Desired, Endpoint, FelixInput, HostNode
from agent.felix.policysync import PolicySync, endpoint_update
from agent.felix.routes import RouteDriver
from agent.felix.sysctl import SysctlDriver
from agent.felix.throttle import Throttle
from agent.felix.tunnel import (
    TunnelInfo,
    choose_datapath,
    detect_host_mtu,
    ensure_tunl0,
    open_tun,
    strip_tunl0,
)
from agent.felix.vxlan import ensure_vxlan_device, remove_vxlan_device
from agent.felix.vxlanfdb import VxlanFdb
from agent.felix.vxlanroutes import VxlanRouteDriver
from kernel import Kernel, Link

log = logging.getLogger(__name__)

WATCH_KINDS = ("WorkloadEndpoint", "Node", "IPPool", "FelixConfiguration", "Profile", "NetworkPolicy",
               "GlobalNetworkPolicy", "NetworkSet", "GlobalNetworkSet", "IPAMBlock")
POLICY_KINDS = {"NetworkPolicy": "_policies", "GlobalNetworkPolicy": "_policies", "Profile": "_profiles",
                "NetworkSet": "_netsets", "GlobalNetworkSet": "_netsets"}
VXLAN_DEVICE_CHECK = 10.0  # seconds: KeepVXLANDeviceInSync re-checks vxlan.calico this often
PENDING_RETRY = 0.25


class Felix:
    """One node's dataplane agent. ``start()``, ``stop()``, ``status()``."""

    def __init__(self, client: Any, hostname: str, *, env: Mapping[str, str] | None = None,
                 tunnel_mode: str = "auto", var_lib: str | None = None,
                 on_pools_changed: Any = None, kernel: Kernel | None = None, clock: Clock | None = None) -> None:
        """``kernel``: the node's kernel handle (default: a netlink handle on this thread's
        netns, closed by :meth:`close`); ``clock``: the loop's waits, back-off and refresh timers."""
        self.client = client
        self._own_kernel = kernel is None
        if kernel is None:
            from kernel.netlink import Netlink

            kernel = Netlink()
        self.kernel: Kernel = kernel
        self.clock = clock or Clock()
        self.on_pools_changed = on_pools_changed  # e.g. re-run the tunnel address allocation
        self._pools_changed = threading.Event()
        self.hostname = hostname
        self.env = dict(os.environ if env is None else env)
        self.tunnel_mode = tunnel_mode
        self.var_lib = var_lib or self.env.get("CALICO_VAR_LIB_DIR", "/var/lib/calico")
        self._lock = threading.Lock()
        self._weps: dict[str, Endpoint] = {}
        self._nodes: dict[str, HostNode] = {}
        self._pools: dict[str, Any] = {}
        self._configs: dict[str, Any] = {}
        self._policies: dict[str, Any] = {}  # Felix policy ID -> agent.felix.policy.Policy
        self._profiles: dict[str, Any] = {}
        self._netsets: dict[str, Any] = {}
        # addresses of the non-workload interfaces (cali40this-host)
        self.host_ips_fn = lambda prefix: _host_ips(prefix, self.kernel)
        self._host_ips: frozenset[str] = frozenset()
        self._iface_prefix = self.env.get("FELIX_INTERFACEPREFIX", "cali")  # as of the last apply
        self.ifacemonitor = AddrMonitor(self.kernel, self._on_host_addrs_changed)
        self.calc = Calculator()
        self._blocks: dict[str, Any] = {}
        self._synced = threading.Event()
        self._throttle = Throttle(self.clock.monotonic())
        self.throttled = False  # applies are waiting for the throttle's tokens (status, logs)
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stream: Any = None
        self.heartbeat = self.clock.monotonic()
        self.ready = False
        self.last_error: str | None = None
        self.applies = 0
        self.updates_changed = 0  # datastore updates that changed Felix's model (status)
        self.updates_unchanged = 0  # ... and those that did not, so woke nothing
        self.last_apply_seconds = 0.0
        self.tunnel: TunnelInfo | None = None
        self.datapath: str | None = None  # chosen once: "kernel", "bpf" or "userspace"
        self.datapath_note: str | None = None  # why a fallback was taken
        self.bpffs = self.env.get("CALICO_TUNNEL_BPFFS") or "/sys/fs/bpf"
        self.bpf: Any = None  # agent.felix.bpftunnel.BpfTunnel when the datapath is "bpf"
        self._allowed_applied: frozenset[str] | None = None
        self.pump: Any = None
        self._tun_fd: int | None = None
        self._tunnel_applied: tuple[str, int] | None = None
        self._vxlan_applied: Any = None  # the VxlanDevice last made
        self._vxlan_links: tuple[Link, Link] | None = None  # (vxlan.calico, parent) as last made
        self._encap: str | None = None  # "ipip", "vxlan", "ipip+vxlan" or "none" after an apply
        self.vxlan_waiting: list[str] = []
        self._mtu_written: int | None = None
        self.host_mtu = detect_host_mtu(self.kernel)
        self.routes = RouteDriver(self.kernel)
        self.vxlan_routes = VxlanRouteDriver(self.kernel)
        self.vxlan_fdb = VxlanFdb(self.kernel)
        self.sysctls = SysctlDriver(self.kernel)
        self.ipsets = IpsetDriver()
        self.tables = {name: IptablesTable(name) for name in ("raw", "mangle", "filter", "nat")}
        self.desired: Desired | None = None
        self.policysync = PolicySync()  # on while policySyncPathPrefix is set
        self.applied_event = threading.Event()  # set after every successful apply (tests, benchmarks)

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        """Start the interface monitor, then the watcher and dataplane threads."""
        self._threads.append(self.ifacemonitor.start())
        for name, target in (("watch", self._watch_loop), ("dataplane", self._dataplane_loop)):
            t = threading.Thread(target=target, name=f"felix-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """Stop the threads; tunl0 (and its pinned BPF programs) and all kernel state stay for the
        next agent."""
        self._stop.set()
        self._dirty.set()
        if self._stream is not None:
            self._stream.close()
        self.ifacemonitor.stop()
        for t in self._threads:
            t.join(timeout=5)
        if self.pump is not None:
            self.pump.stop()
            self.pump = None
        if self._tun_fd is not None:
            os.close(self._tun_fd)
            self._tun_fd = None
        if self.bpf is not None:
            self.bpf.close()
        self.policysync.close()
        self.close()

    def close(self) -> None:
        """Release the kernel handle if Felix opened it."""
        if self._own_kernel:
            self.kernel.close()

    def live(self) -> bool:
        """Liveness: both threads alive and the dataplane thread looped recently."""
        return (bool(self._threads) and all(t.is_alive() for t in self._threads)
                and self.clock.monotonic() - self.heartbeat < 30)

    def tunnel_addresses(self) -> dict:
        """The addresses Felix has put on tunl0 and vxlan.calico (as in :meth:`status`)."""
        vx = self._vxlan_applied
        return {"tunnel_address": self.tunnel.address if self.tunnel else None,
                "vxlan": {"address": vx.address} if vx is not None else None}

    def status(self) -> dict:
        """Ready/live, datapath kind, encapsulation, tunnel addresses and counters (served as
        /status). ``datapath``: tunl0's kind (kernel ipip, tc-BPF or userspace TUN) while IPIP
        is on, "kernel" for VXLAN alone (the kernel's vxlan device), "routed" with no
        encapsulation."""
        if self.tunnel:
            datapath = self.tunnel.kind
        elif self._vxlan_applied is not None or self._encap == "vxlan":  # also before its VTEP address
            datapath = "kernel"
        elif self._encap == "none":
            datapath = "routed"
        else:
            datapath = self._choose_datapath()[0]
        vx = self._vxlan_applied
        bpf_stats = None
        if self.bpf is not None and self.bpf.maps:
            try:
                full = self.bpf.stats()
                bpf_stats = {k: full[k] for k in ("tx_packets", "rx_packets", "drops")}
            except OSError as exc:
                bpf_stats = {"error": str(exc)}
        return {
            "ready": self.ready, "live": self.live(), "datapath": datapath,
            "datapath_note": self.datapath_note, "encap": self._encap,
            "tunnel_address": self.tunnel.address if self.tunnel else None,
            "vxlan": {"device": vx.name, "address": vx.address, "mac": vx.mac, "vni": vx.vni, "port": vx.port,
                      "mtu": vx.mtu, "waiting": list(self.vxlan_waiting)} if vx is not None else None,
            "endpoints": sum(1 for ep in self._weps.values() if ep.node in ("", self.hostname)),
            "applies": self.applies,
            "updates": {"changed": self.updates_changed, "unchanged": self.updates_unchanged},
            "throttled": self.throttled,  # applies wait for the throttle (10 a second after a burst of 10)
            "last_apply_ms": round(self.last_apply_seconds * 1000, 1), "last_error": self.last_error,
            "pump": dict(self.pump.stats) if self.pump is not None else None,
            "bpf": bpf_stats,
        }

    def _choose_datapath(self) -> tuple[str, str | None]:
        """The tunnel datapath of this node, chosen once (see tunnel.choose_datapath)."""
        if self.datapath is None:
            self.datapath, self.datapath_note = choose_datapath(self.kernel, self.tunnel_mode)
            if self.datapath_note:
                log.warning("tunl0: %s", self.datapath_note)
        return self.datapath, self.datapath_note

    # -- datastore side ------------------------------------------------------------
    def write_start_mtu(self) -> int | None:
        """The MTU file at start, as Felix writes it before it syncs: its start-up reads the
        FelixConfigurations and lists the IP pools for the encapsulation (``daemon.go``,
        ``EncapsulationCalculator``), and the dataplane driver it then makes writes the file
        (``int_dataplane.go`` ``NewIntDataplaneDriver``: ``determinePodMTU``,
        ``writeMTUFile``). A pod's CNI ADD with MTU 0 (auto) waits for this file, and the
        first sync (every endpoint, policy and block from Typha) comes seconds later on a busy
        machine. Every apply writes it again from the synced state. Returns the MTU written;
        None when the reads failed (the first apply writes it then)."""
        try:
            configs = {c.metadata.name: c for c in self.client.list("FelixConfiguration")}
            pools = self.client.list("IPPool")
        except Exception as exc:  # noqa: BLE001 - the first apply writes it instead
            log.info("MTU file not written at start (%s); the first sync's apply writes it", exc)
            return None
        inp = FelixInput(hostname=self.hostname, pools=convert.pools_from(pools), host_mtu=self.host_mtu,
                         settings=convert.settings(self.hostname, configs, self.env))
        mtu = pod_mtu(inp)
        self._write_mtu(mtu)
        return mtu

    def _watch_loop(self) -> None:
        from datastore import errors

        if self._mtu_written is None:
            self.write_start_mtu()
        while not self._stop.is_set():
            fresh: dict[str, dict] | None = {"WorkloadEndpoint": {}, "Node": {}, "IPPool": {},
                                               "FelixConfiguration": {}, "_policies": {}, "_profiles": {},
                                               "_netsets": {}, "IPAMBlock": {}}
            try:
                self._stream = self.client.watch_stream(WATCH_KINDS, stop=self._stop)
                batch_changed = False
                for ev in self._stream:
                    if ev.type == "SYNCED":
                        if fresh is not None:
                            with self._lock:
                                self._weps = fresh["WorkloadEndpoint"]
                                self._nodes = fresh["Node"]
                                self._pools = fresh["IPPool"]
                                self._configs = fresh["FelixConfiguration"]
                                self._policies = fresh["_policies"]
                                self._profiles = fresh["_profiles"]
                                self._netsets = fresh["_netsets"]
                                self._blocks = fresh["IPAMBlock"]
                            fresh = None
                        self._synced.set()
                        self._dirty.set()
                        continue
                    if fresh is not None:
                        self._store(fresh, ev)
                    else:
                        with self._lock:
                            changed = self._store({"WorkloadEndpoint": self._weps, "Node": self._nodes,
                                                   "IPPool": self._pools, "FelixConfiguration": self._configs,
                                                   "_policies": self._policies, "_profiles": self._profiles,
                                                   "_netsets": self._netsets, "IPAMBlock": self._blocks}, ev)
                        if ev.kind == "IPPool":
                            self._pools_changed.set()
                        # an update whose converted value equals what Felix holds (a Node whose
                        # addresses did not change, a block that gained a local allocation) changes
                        # nothing downstream, as in Felix's calc graph, and wakes nothing
                        batch_changed = batch_changed or changed
                        if changed:
                            self.updates_changed += 1
                        else:
                            self.updates_unchanged += 1
                        # the dataplane is woken once per batch the stream received (Felix's calc
                        # graph flushes after each batch from the syncer), not for every event in it
                        if not getattr(self._stream, "more", False):
                            if batch_changed:
                                self._dirty.set()
                            batch_changed = False
            except errors.DatastoreError as exc:
                self.last_error = f"datastore: {exc}"
                log.warning("datastore watch failed: %s; retrying", exc)
            except Exception as exc:  # noqa: BLE001 - keep watching; report it
                self.last_error = f"watch: {exc!r}"
                log.exception("watch loop error")
            self.clock.wait(self._stop, 1.0)

    def _store(self, caches: dict[str, dict], ev: Any) -> bool:
        """Put one event into ``caches`` as Felix's model; False when the model it holds for
        the key is unchanged (so nothing downstream has to be recalculated)."""
        key = f"{ev.namespace}/{ev.name}" if ev.namespace else ev.name
        if ev.kind in POLICY_KINDS:
            cache = caches[POLICY_KINDS[ev.kind]]
            key = convert.policy_key(ev.kind, ev.name, ev.namespace)
        else:
            cache = caches.get(ev.kind)
        if cache is None:
            return False
        if ev.type == "DELETED" or ev.obj is None:
            return cache.pop(key, None) is not None
        value: Any
        if ev.kind in ("NetworkPolicy", "GlobalNetworkPolicy"):
            value = convert.policy_from(ev.obj)
        elif ev.kind == "Profile":
            value = convert.profile_from(ev.obj)
        elif ev.kind in ("NetworkSet", "GlobalNetworkSet"):
            value = convert.netset_from_resource(ev.obj)
        elif ev.kind == "WorkloadEndpoint":
            value = convert.endpoint_from_wep(ev.obj)
        elif ev.kind == "Node":
            value = convert.host_from_node(ev.obj)
        elif ev.kind == "IPAMBlock":
            value = convert.block_from_ipamblock(ev.obj)
        else:
            cache[key] = ev.obj  # raw resources (FelixConfiguration, IPPool): always a change
            return True
        if value is None:  # an endpoint without an interface, a deleted or IPv6 block
            return cache.pop(key, None) is not None
        if cache.get(key) == value:
            return False
        cache[key] = value
        return True

    def config_objects(self) -> list[Any] | None:
        """The FelixConfiguration and IPPool resources as watched (None until in sync)."""
        if not self._synced.is_set():
            return None
        with self._lock:
            return [*self._configs.values(), *self._pools.values()]

    def snapshot(self) -> FelixInput:
        """The calculation input from the current cache."""
        with self._lock:
            settings = convert.settings(self.hostname, self._configs, self.env)
            return FelixInput(hostname=self.hostname, endpoints=dict(self._weps),
                              nodes=tuple(self._nodes.values()), pools=convert.pools_from(self._pools.values()),
                              settings=settings, host_mtu=self.host_mtu, policies=dict(self._policies),
                              profiles=dict(self._profiles), netsets=dict(self._netsets),
                              host_ips=self._host_ips, blocks=tuple(self._blocks.values()))

    # -- dataplane side ------------------------------------------------------------
    def _dataplane_loop(self) -> None:
        clock = self.clock
        now = clock.monotonic()
        next_sync = {"routes": now, "iptables": now, "ipsets": now, "vxlan": now}
        pending = False
        backoff = 0.1
        while not self._stop.is_set():
            self.heartbeat = clock.monotonic()
            if not self._synced.is_set():
                # nothing to apply before the first sync; the refresh deadlines are all past
                # then, and waiting on _dirty with them spun this loop (about a third of a
                # 50-node lab's calico-node CPU went there while Typha sent the snapshots)
                clock.wait(self._synced, 1.0)
                continue
            wait = min(1.0, max(0.0, min(next_sync.values()) - clock.monotonic()))
            if pending:
                wait = min(wait, PENDING_RETRY)
            clock.wait(self._dirty, wait)
            if self._stop.is_set():
                break
            now = clock.monotonic()
            due = {k for k, t in next_sync.items() if now >= t}
            if not (self._dirty.is_set() or pending or due):
                continue
            if not self._throttle.admit(now):  # Calico's apply throttle (agent.felix.throttle)
                if not self.throttled:
                    log.info("Dataplane updates throttled")
                    self.throttled = True
                clock.wait(self._stop, self._throttle.next_token(clock.monotonic()))
                continue
            if self.throttled and self._throttle.count > 0:
                log.info("Dataplane updates no longer throttled")
                self.throttled = False
            self._dirty.clear()
            if self._pools_changed.is_set() and self.on_pools_changed is not None:
                self._pools_changed.clear()
                try:
                    self.on_pools_changed()
                except Exception as exc:  # noqa: BLE001 - retried on the next pool change
                    self.last_error = f"pools changed: {exc}"
                    log.exception("pool change handler failed")
            try:
                inp = self.snapshot()
                pending = self.apply(inp, resync=due)
                s = inp.settings
                for k, interval in (("routes", s.route_refresh_interval), ("iptables", s.iptables_refresh_interval),
                                    ("ipsets", s.ipsets_refresh_interval), ("vxlan", VXLAN_DEVICE_CHECK)):
                    if k in due:
                        next_sync[k] = now + max(0.05, interval)
                backoff = 0.1
            except Exception as exc:  # noqa: BLE001 - report, back off, retry with a full resync
                self.last_error = f"apply: {exc}"
                log.exception("dataplane apply failed")
                self.ready = False
                next_sync = dict.fromkeys(next_sync, clock.monotonic() + backoff)
                clock.wait(self._stop, backoff)
                backoff = min(backoff * 2, 10.0)
                self._dirty.set()

    def apply(self, inp: FelixInput, resync: set[str] | frozenset[str] = frozenset()) -> bool:
        """Calculate and apply once; returns True when something waits for an interface to appear."""
        t0 = time.monotonic()
        self._iface_prefix = inp.settings.interface_prefix
        if "routes" in resync:
            self.host_mtu = detect_host_mtu(self.kernel)
            self._host_ips = self.host_ips_fn(inp.settings.interface_prefix)
            inp = dataclasses.replace(inp, host_ips=self._host_ips)
        desired = self.calc.calculate(inp)
        self._apply_tunnel(desired, force="routes" in resync, node_ip=self._node_ip(inp),
                           ipip_on=ipip_enabled(inp))
        vx_resync = bool({"routes", "vxlan"} & set(resync))  # the device is re-checked every 10 s
        self._apply_vxlan_device(desired, force=vx_resync)
        self.ipsets.apply_updates(desired.ipsets, resync="ipsets" in resync)
        self._apply_vxlan_fdb(desired, resync=vx_resync)
        # iptables-restore runs while the routes and sysctls are written (Calico's dataplane
        # applies its iptables and route tables in parallel too); a new thread starts in the
        # network namespace of the thread that made it, so both act on the same namespace
        tables = _Background(self._apply_tables, desired, "iptables" in resync)
        try:
            _, missing = self.routes.apply(desired.routes, resync="routes" in resync)
            vx_dev, vx_parent = self._vxlan_links or (None, None)
            _, self.vxlan_waiting = self.vxlan_routes.apply(
                desired.vxlan, vx_dev.index if vx_dev else None, vx_parent.index if vx_parent else None,
                resync=vx_resync)
            missing_sys = self.sysctls.apply(desired.interfaces, resync="routes" in resync)
        finally:
            tables.join()
        if tables.error is not None:
            raise tables.error
        self.ipsets.remove_stale(desired.ipsets)
        self._write_mtu(desired.mtu_file)
        self.desired = desired
        self._sync_policysync(inp)
        self._encap = "+".join(k for k, on in (("ipip", desired.tunnel is not None),
                                               ("vxlan", desired.vxlan.device is not None)) if on) or (
            "none" if not desired.vxlan.enabled else "vxlan")
        self.applies += 1
        self.last_apply_seconds = time.monotonic() - t0
        self.last_error = None
        self.ready = True
        self.applied_event.set()
        return bool(missing or missing_sys or self.vxlan_waiting)

    def _sync_policysync(self, inp: FelixInput) -> None:
        """The policy-sync API follows policySyncPathPrefix and serves the local endpoints as
        calculated (agent.felix.policysync)."""
        from agent.felix.calc import local_endpoints

        try:
            self.policysync.configure(inp.settings.policy_sync_path_prefix)
            if self.policysync.active:
                self.policysync.update({ep.workload: endpoint_update(ep, *self.calc.policies_of(ep.key))
                                        for ep in local_endpoints(inp) if ep.workload})
        except Exception:  # noqa: BLE001 - the policy-sync API never stops the dataplane
            log.exception("policy sync API: update failed")

    def _apply_tables(self, desired: Desired, resync: bool) -> None:
        """raw, mangle, filter and nat with one iptables-restore (see iptables.apply_tables)."""
        apply_tables(self.tables, desired.tables, resync=resync)

    @staticmethod
    def _node_ip(inp: FelixInput) -> str | None:
        me = next((n for n in inp.nodes if n.name == inp.hostname), None)
        return me.ip if me is not None else None

    def _on_host_addrs_changed(self) -> None:
        """The interface monitor saw an address come or go (the tunnel address Felix just gave
        tunl0 / vxlan.calico, an operator's, an uplink's after a flap): re-read the host's
        addresses and, when they changed, apply again, so cali40this-host follows at once
        rather than at the next routes refresh (90 s), as Felix's ifacemonitor feeds its
        hostIPManager."""
        fresh = self.host_ips_fn(self._iface_prefix)
        if fresh != self._host_ips:
            self._host_ips = fresh
            self._dirty.set()

    def _apply_tunnel(self, desired: Desired, force: bool, node_ip: str | None = None,
                      ipip_on: bool = True) -> None:
        want = desired.tunnel
        if want is None:
            if not ipip_on:  # IPIP switched off (not merely no tunnel address yet): the tunnel goes
                self._remove_bpf_tunnel()
                if self._tunnel_applied is not None or self.pump is not None or force or self._encap is None:
                    self._ipip_off()
            return
        key = (want.address, want.mtu)
        kind, _note = self._choose_datapath()
        if kind == "bpf":
            self._apply_bpf_tunnel(desired, key, force, node_ip)
            return
        if key != self._tunnel_applied or force:
            self.tunnel = ensure_tunl0(self.kernel, want.address, want.mtu, self.tunnel_mode)
            self._tunnel_applied = key
        if self.tunnel is not None and self.tunnel.kind == "userspace" and self.pump is None:
            from agent.felix.pump import IpipPump

            gro = self.env.get("CALICO_TUNNEL_GRO", "true").lower() not in ("0", "false", "no")
            self._tun_fd = open_tun(self.kernel, "tunl0", vnet_hdr=gro)
            self.pump = IpipPump(self._tun_fd, allowed_sources=desired.ipip_sources, vnet_hdr=gro,
                                 kernel=self.kernel)
            self.pump.start()
        if self.pump is not None:
            self.pump.set_allowed_sources(desired.ipip_sources)

    def _apply_bpf_tunnel(self, desired: Desired, key: tuple[str, int], force: bool, node_ip: str | None) -> None:
        """The tc-BPF tunl0: made (or adopted) on a change and on the routes refresh; the
        allowed-hosts map follows cali40all-hosts-net on every apply that changes it."""
        from agent.felix.bpftunnel import BpfTunnel
        from agent.felix.names import IPSET_ALL_HOSTS

        hosts = desired.ipsets.get(IPSET_ALL_HOSTS)
        allowed = frozenset(hosts.members) if hosts is not None else desired.ipip_sources
        if self.bpf is None:
            self.bpf = BpfTunnel(self.kernel, self.bpffs)
        if key != self._tunnel_applied or force or self.bpf.state is None:
            uplinks = [a_link for a_link in self._links_with(node_ip)] if node_ip else []
            state = self.bpf.ensure(key[0], key[1], allowed, extra_uplinks=uplinks)
            if self._tunnel_applied is None:
                log.info("tunl0 (tc-BPF): %s programs %s on %s, pins in %s",
                         "adopted" if state.adopted else "installed", state.prog_ids,
                         ", ".join(state.uplinks), state.pin_dir)
            self.tunnel = TunnelInfo("bpf", "tunl0", key[0], key[1])
            self._tunnel_applied = key
        elif allowed != self._allowed_applied:
            self.bpf.sync_allowed(allowed, self._allowed_applied)
        self._allowed_applied = allowed

    def _links_with(self, ip: str) -> list[str]:
        """Names of the links holding address ``ip``."""
        index = {a.index for a in self.kernel.addrs() if a.address == ip}
        return [ln.name for ln in self.kernel.links() if ln.index in index]

    def _remove_bpf_tunnel(self) -> None:
        """IPIP off: the tc-BPF tunnel's filters, tunl0 pair and pins go (if this node has them)."""
        if self.bpf is None:
            if self.datapath == "kernel" or not os.path.isdir(os.path.join(self.bpffs, "calico", "ipip")):
                return
            from agent.felix.bpftunnel import BpfTunnel

            self.bpf = BpfTunnel(self.kernel, self.bpffs)
        removed = self.bpf.remove()
        if removed:
            log.info("IPIP is off: removed the tc-BPF tunnel (%s)", ", ".join(removed))
        self.bpf = None
        self.tunnel = None
        self._tunnel_applied = None
        self._allowed_applied = None

    def _ipip_off(self) -> None:
        """IPIP turned off: the pump stops and tunl0 keeps no address (Felix's
        ``cleanUpIPIPAddrs``); the device itself stays, as the kernel's ipip tunl0 does."""
        if self.pump is not None:
            self.pump.stop()
            self.pump = None
        if self._tun_fd is not None:
            os.close(self._tun_fd)
            self._tun_fd = None
        if strip_tunl0(self.kernel):
            log.info("IPIP is off: removed tunl0's addresses")
        self.tunnel = None
        self._tunnel_applied = None

    def _apply_vxlan_device(self, desired: Desired, force: bool) -> None:
        """vxlan.calico made (or re-checked on resync), or deleted when VXLAN is off."""
        want = desired.vxlan.device
        if want is None:
            if self._vxlan_applied is not None or force or self._encap is None:
                if remove_vxlan_device(self.kernel) or self._vxlan_applied is not None:
                    self.vxlan_fdb.forget()
                    self.vxlan_routes.forget()
            self._vxlan_applied = None
            self._vxlan_links = None
            return
        if want != self._vxlan_applied or force or self._vxlan_links is None:
            before = self._vxlan_links[0].index if self._vxlan_links else None
            self._vxlan_links = ensure_vxlan_device(self.kernel, want)
            if self._vxlan_links[0].index != before:  # made (again): its entries and routes are new
                self.vxlan_fdb.forget()
                self.vxlan_routes.forget()
            self._vxlan_applied = want

    def _apply_vxlan_fdb(self, desired: Desired, resync: bool) -> None:
        vx = desired.vxlan
        if self._vxlan_links is None:
            return
        self.vxlan_fdb.apply(self._vxlan_links[0].index, vx.neighbours(), vx.fdb(), resync=resync)

    def _write_mtu(self, mtu: int) -> None:
        if mtu == self._mtu_written:
            return
        os.makedirs(self.var_lib, exist_ok=True)
        path = os.path.join(self.var_lib, "mtu")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{mtu}\n")
        os.replace(tmp, path)
        self._mtu_written = mtu

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Block until the first successful apply (or timeout); returns readiness."""
        deadline = time.monotonic() + timeout  # real time: callers wait for the agent's threads
        while time.monotonic() < deadline and not self.ready:
            self.applied_event.wait(0.05)
        return self.ready


class _Background(threading.Thread):
    """``fn(*args)`` on a one-shot thread, started at once; ``error`` holds what it raised."""

    def __init__(self, fn: Any, *args: Any) -> None:
        super().__init__(name="felix-iptables", daemon=True)
        self.fn, self.args = fn, args
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.fn(*self.args)
        except BaseException as exc:  # noqa: BLE001 - handed to the joiner
            self.error = exc


def _host_ips(prefix: str, kernel: Kernel | None = None) -> frozenset[str]:
    """IPv4 addresses of this namespace's non-workload interfaces (Felix's hostIPManager)."""
    from agent.startup import local_interfaces

    try:
        return frozenset(a.split("/")[0] for name, addrs in local_interfaces(kernel) if not name.startswith(prefix)
                         for a in addrs)
    except OSError as exc:
        log.warning("cannot list the host's addresses for cali40this-host: %s", exc)
        return frozenset()
