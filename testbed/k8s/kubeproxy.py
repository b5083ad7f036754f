"""kube-proxy (iptables mode): ClusterIP DNAT with random balancing across endpoints.
``python -m testbed.k8s.kubeproxy --config /var/lib/kube-proxy/config.conf --hostname-override NODE``
(kubeadm runs it as the DaemonSet ``kube-proxy`` in kube-system; hostNetwork).

An API client: informers on Services and EndpointSlices (the ready endpoints of each
Service, as kube-proxy reads them); a change rewrites the rules, at most as often as
kube-proxy's sync runner allows (:class:`SyncRunner`: ``iptables.minSyncPeriod``, default 1 s,
after a burst of 2), and every ``iptables.syncPeriod`` (default 30 s) a full resync re-checks
the hooks.

:func:`render` is pure: Services + Endpoints -> the ``nat`` (and ``filter``) rules kube-proxy
writes: ``KUBE-SERVICES`` (hooked from PREROUTING and OUTPUT) jumps per service port to
``KUBE-SVC-<hash>``, which picks one ``KUBE-SEP-<hash>`` with ``-m statistic --mode random
--probability 1/n, 1/(n-1), ...``; each SEP DNATs to podIP:port. Traffic that needs SNAT
is marked by ``KUBE-MARK-MASQ`` (0x4000) and masqueraded by ``KUBE-POSTROUTING``.
A service port without ready endpoints is rejected in ``filter`` (icmp-port-unreachable).
:class:`KubeProxy` applies the rules with ``iptables-restore --noflush`` in the current
network namespace and removes chains it no longer needs.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import subprocess
from dataclasses import dataclass

MASQ_MARK = "0x4000"
NAT_HOOKS = (
    ("PREROUTING", "kubernetes service portals", "KUBE-SERVICES"),
    ("OUTPUT", "kubernetes service portals", "KUBE-SERVICES"),
    ("POSTROUTING", "kubernetes postrouting rules", "KUBE-POSTROUTING"),
)
FILTER_HOOKS = (
    ("INPUT", "kubernetes service portals", "KUBE-SERVICES"),
    ("FORWARD", "kubernetes service portals", "KUBE-SERVICES"),
    ("OUTPUT", "kubernetes service portals", "KUBE-SERVICES"),
)


def _hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return base64.b32encode(digest).decode()[:16]


def svc_chain(port_name: str, protocol: str) -> str:
    """``KUBE-SVC-`` + base32(sha256(servicePortName + protocol))[:16], as kube-proxy names it."""
    return "KUBE-SVC-" + _hash(port_name + protocol.lower())


def sep_chain(port_name: str, protocol: str, endpoint: str) -> str:
    """``KUBE-SEP-`` + base32(sha256(servicePortName + protocol + endpoint))[:16]."""
    return "KUBE-SEP-" + _hash(port_name + protocol.lower() + endpoint)


@dataclass(frozen=True)
class ServicePort:
    """One port of one service with its ready endpoints (``ip:port``)."""

    namespace: str
    name: str
    port_name: str
    cluster_ip: str
    port: int
    protocol: str
    endpoints: tuple[str, ...]

    @property
    def id(self) -> str:
        """``ns/svc:port`` (``ns/svc`` when the port is unnamed), as in the rule comments."""
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port_name}" if self.port_name else base


def service_ports(services: list[dict], slices: list[dict]) -> list[ServicePort]:
    """Join Services with their EndpointSlices' ready endpoints into ServicePorts (sorted,
    deterministic; pure)."""
    by_svc: dict[tuple[str | None, str], list[dict]] = {}
    for s in slices:
        name = (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name")
        if name and s.get("addressType", "IPv4") == "IPv4":
            by_svc.setdefault((s["metadata"].get("namespace"), name), []).append(s)
    out = []
    for svc in services:
        spec = svc.get("spec") or {}
        cip = spec.get("clusterIP")
        if not cip or cip == "None":
            continue
        ns, name = svc["metadata"].get("namespace", "default"), svc["metadata"]["name"]
        for p in spec.get("ports") or []:
            pname, proto = p.get("name") or "", p.get("protocol", "TCP")
            targets = set()
            for sl in by_svc.get((ns, name), []):
                ports = sl.get("ports") or []
                match = [q for q in ports if (q.get("name") or "") == pname and q.get("protocol", "TCP") == proto]
                for q in match:
                    if q.get("port") is None:
                        continue
                    for ep in sl.get("endpoints") or []:
                        if (ep.get("conditions") or {}).get("ready") is False:
                            continue
                        for addr in ep.get("addresses") or []:
                            targets.add(f"{addr}:{q['port']}")
            out.append(ServicePort(ns, name, pname, cip, int(p["port"]), proto,
                                   tuple(sorted(targets, key=_endpoint_key))))
    return sorted(out, key=lambda s: (s.namespace, s.name, s.port_name, s.protocol))


def _endpoint_key(ep: str) -> tuple:
    ip, port = ep.rsplit(":", 1)
    return (int(ipaddress.ip_address(ip)), int(port))


def render(ports: list[ServicePort], cluster_cidr: str | None = None,
           stale: set[str] | frozenset[str] = frozenset()) -> tuple[str, str, set[str]]:
    """The iptables-restore input for ``nat`` and ``filter``, and the set of per-service
    chains it defines. ``stale`` chains (left from before) are flushed and deleted."""
    rules: list[str] = [
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
        f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}",
    ]
    chains: set[str] = set()
    filt = ["*filter", ":KUBE-SERVICES - [0:0]"]
    for sp in ports:
        proto = sp.protocol.lower()
        if not sp.endpoints:
            filt.append(f'-A KUBE-SERVICES -d {sp.cluster_ip}/32 -p {proto} -m comment --comment '
                        f'"{sp.id} has no endpoints" -m {proto} --dport {sp.port} '
                        "-j REJECT --reject-with icmp-port-unreachable")
            continue
        svc = svc_chain(sp.id, sp.protocol)
        chains.add(svc)
        rules.append(f'-A KUBE-SERVICES -d {sp.cluster_ip}/32 -p {proto} -m comment --comment '
                     f'"{sp.id} cluster IP" -m {proto} --dport {sp.port} -j {svc}')
        if cluster_cidr:
            rules.append(f'-A {svc} ! -s {cluster_cidr} -d {sp.cluster_ip}/32 -p {proto} -m comment '
                         f'--comment "{sp.id} cluster IP" -m {proto} --dport {sp.port} -j KUBE-MARK-MASQ')
        n = len(sp.endpoints)
        for i, ep in enumerate(sp.endpoints):
            sep = sep_chain(sp.id, sp.protocol, ep)
            chains.add(sep)
            remaining = n - i
            stat = "" if remaining == 1 else f" -m statistic --mode random --probability {1.0 / remaining:.11f}"
            rules.append(f'-A {svc} -m comment --comment "{sp.id} -> {ep}"{stat} -j {sep}')
            ip = ep.rsplit(":", 1)[0]
            rules.append(f'-A {sep} -s {ip}/32 -m comment --comment "{sp.id}" -j KUBE-MARK-MASQ')
            rules.append(f'-A {sep} -p {proto} -m comment --comment "{sp.id}" -m {proto} -j DNAT --to-destination {ep}')
    rules.append('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be '
                 'the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')
    gone = sorted(set(stale) - chains)
    nat = ["*nat", ":KUBE-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]", ":KUBE-POSTROUTING - [0:0]",
           ":KUBE-MARK-MASQ - [0:0]"]
    nat += [f":{c} - [0:0]" for c in sorted(chains) + gone]
    nat += rules
    nat += [f"-X {c}" for c in gone]
    nat.append("COMMIT")
    filt.append("COMMIT")
    return "\n".join(nat) + "\n", "\n".join(filt) + "\n", chains


def _run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, input=stdin, capture_output=True, text=True)


class KubeProxyError(Exception):
    """iptables refused the rules."""


def saved_tables(text: str) -> dict[str, list[str]]:
    """``iptables-save`` output by table: ``{"nat": [lines between *nat and COMMIT], ...}``."""
    tables: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:].strip(), [])
        elif line.strip() == "COMMIT":
            current = None
        elif current is not None:
            current.append(line.strip())
    return tables


def hook_rule(comment: str, target: str) -> str:
    """A hook's match and jump as ``iptables-save`` prints them (and ``iptables-restore`` reads them)."""
    return f'-m comment --comment "{comment}" -j {target}'


def missing_hooks(tables: dict[str, list[str]]) -> dict[str, list[str]]:
    """The hooks into the built-in chains (kube-proxy's ``EnsureRule`` of each jump) that
    ``tables`` (:func:`saved_tables`) lacks, as ``iptables-restore`` lines inserting each at the
    top of its chain, by table."""
    out: dict[str, list[str]] = {}
    for table, hooks in (("nat", NAT_HOOKS), ("filter", FILTER_HOOKS)):
        present = set(tables.get(table) or ())
        for chain, comment, target in hooks:
            rule = hook_rule(comment, target)
            if f"-A {chain} {rule}" not in present:
                out.setdefault(table, []).append(f"-I {chain} 1 {rule}")
    return out


def kube_chains(tables: dict[str, list[str]]) -> set[str]:
    """The per-service chains (``KUBE-SVC-*``, ``KUBE-SEP-*``) of the ``nat`` table saved."""
    return {line[1:].split()[0] for line in tables.get("nat") or ()
            if line.startswith((":KUBE-SVC-", ":KUBE-SEP-"))}


def with_hooks(nat: str, filt: str, hooks: dict[str, list[str]]) -> tuple[str, str]:
    """The restore input with the missing ``hooks`` inserted before each table's COMMIT (after
    the chain declarations that make their targets exist: one transaction per table)."""
    def add(text: str, lines: list[str]) -> str:
        if not lines:
            return text
        body = text.rstrip("\n").splitlines()
        if not body or body[-1] != "COMMIT":
            raise ValueError(f"restore input does not end with COMMIT: {text[-80:]!r}")
        return "\n".join(body[:-1] + lines + ["COMMIT"]) + "\n"
    return add(nat, hooks.get("nat") or []), add(filt, hooks.get("filter") or [])


class KubeProxy:
    """Keeps the current netns' iptables in line with the cluster's Services."""

    def __init__(self, cluster_cidr: str | None = None):
        self.cluster_cidr = cluster_cidr
        self.last: tuple[str, str] | None = None
        self.hooked = False

    def sync(self, services: list[dict], slices: list[dict]) -> bool:
        """Apply the rules for these objects; returns True if anything was written. One
        ``iptables-save`` reads what is there (the hooks, on the first sync and each resync;
        the per-service chains left over) and one ``iptables-restore --noflush`` writes the
        rules, the hooks missing and the removal of stale chains together (kube-proxy runs an
        ``iptables -C``/``-I`` per hook instead: the rules made are the same)."""
        ports = service_ports(services, slices)
        nat, filt, chains = render(ports, self.cluster_cidr)
        if (nat, filt) == self.last:
            return False
        # the hooks are in nat and filter (checked on the first sync and each resync); the
        # leftover chains in nat alone, and a node's other tables (Felix's) need not be read
        saved = saved_tables(_run(["iptables-save"] if not self.hooked else ["iptables-save", "-t", "nat"]).stdout)
        stale = kube_chains(saved) - chains
        if stale:
            nat, filt, chains = render(ports, self.cluster_cidr, stale)
        hooks = {} if self.hooked else missing_hooks(saved)
        res = _run(["iptables-restore", "-w", "--noflush"], "".join(with_hooks(nat, filt, hooks)))
        if res.returncode != 0:
            raise KubeProxyError(f"iptables-restore failed: {res.stderr.strip()}\n{nat}{filt}")
        self.hooked = True
        self.last = None if stale else (nat, filt)
        return True

    def resync(self, services: list[dict], slices: list[dict]) -> None:
        """Re-check the hooks and rewrite everything (kube-proxy's periodic sync)."""
        self.hooked, self.last = False, None
        self.sync(services, slices)

    def cleanup(self) -> None:
        """Remove every rule and chain kube-proxy made in this netns."""
        for table, hooks in (("nat", NAT_HOOKS), ("filter", FILTER_HOOKS)):
            for chain, comment, target in hooks:
                _run(["iptables", "-w", "-t", table, "-D", chain, "-m", "comment", "--comment", comment, "-j", target])
        for table in ("nat", "filter"):
            names = [line[1:].split()[0] for line in _run(["iptables-save", "-t", table]).stdout.splitlines()
                     if line.startswith(":KUBE-")]
            for name in names:
                _run(["iptables", "-w", "-t", table, "-F", name])
            for name in names:
                _run(["iptables", "-w", "-t", table, "-X", name])
        self.last, self.hooked = None, False


PROXY_RESYNC = 30.0  # seconds between full syncs (hooks re-checked): iptables.syncPeriod's default
MIN_SYNC_PERIOD = 1.0  # iptables.minSyncPeriod's default
BURST_SYNCS = 2  # kube-proxy's burstSyncs: syncs allowed back to back before minSyncPeriod applies


class SyncRunner:
    """When kube-proxy may sync again: its BoundedFrequencyRunner, a token bucket of ``burst``
    syncs refilled at one per ``min_interval`` seconds (0: no limit). Pure; the caller passes
    the monotonic time."""

    def __init__(self, min_interval: float, burst: int = BURST_SYNCS, now: float = 0.0):
        self.min_interval = min_interval
        self.burst = burst
        self.tokens = float(burst)
        self.at = now

    def _refill(self, now: float) -> None:
        if self.min_interval <= 0:
            self.tokens = float(self.burst)
        else:
            self.tokens = min(float(self.burst), self.tokens + (now - self.at) / self.min_interval)
        self.at = now

    def delay(self, now: float) -> float:
        """Seconds until a sync may run (0.0: now)."""
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) * self.min_interval

    def ran(self, now: float) -> None:
        """A sync ran at ``now``."""
        self._refill(now)
        self.tokens = max(0.0, self.tokens - 1)


def sync_periods(cfg: dict) -> tuple[float, float]:
    """``(minSyncPeriod, syncPeriod)`` in seconds from a KubeProxyConfiguration's ``iptables``
    section; unset or ``0s`` means kube-proxy's default. Raises ValueError naming a bad value."""
    from datastore.duration import parse_duration

    section = cfg.get("iptables") or {}
    out = []
    for key, default in (("minSyncPeriod", MIN_SYNC_PERIOD), ("syncPeriod", PROXY_RESYNC)):
        raw = section.get(key)
        try:
            value = parse_duration(str(raw)) if raw not in (None, "") else 0.0
        except ValueError as exc:
            raise ValueError(f"iptables.{key}: {exc}") from None
        if value < 0:
            raise ValueError(f"iptables.{key}: {raw!r} is negative")
        out.append(value or default)
    return out[0], out[1]


def load_config(path: str) -> dict:
    """A KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1); only the iptables mode
    is implemented: any other ``mode`` is refused by name."""
    import yaml

    try:
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
    except OSError as exc:
        raise SystemExit(f"kube-proxy: cannot read --config {path}: {exc.strerror}") from None
    if doc.get("kind") != "KubeProxyConfiguration":
        raise SystemExit(f"kube-proxy: {path}: kind {doc.get('kind')!r} is not KubeProxyConfiguration")
    mode = doc.get("mode") or "iptables"
    if mode != "iptables":
        raise SystemExit(f"kube-proxy: {path}: mode {mode!r} is not implemented by calicolab (iptables is)")
    return doc


def main(argv: list[str] | None = None) -> int:
    """Entry point (kube-proxy's flag names)."""
    from kernel.preload import before_threads

    before_threads()  # before any thread imports lazily (kernel.preload)
    import argparse
    import logging
    import os
    import signal
    import sys
    import threading
    import time

    from kubeclient import KubeError
    from testbed.k8s.apiclient import Cluster, client_from

    p = argparse.ArgumentParser(prog="python -m testbed.k8s.kubeproxy", allow_abbrev=False,
                                description="kube-proxy, iptables mode")
    p.add_argument("--config", help="a KubeProxyConfiguration file")
    p.add_argument("--kubeconfig", help="default: the config's clientConnection.kubeconfig, else in-cluster")
    p.add_argument("--hostname-override", default=os.environ.get("NODE_NAME", ""))
    p.add_argument("--cluster-cidr", default="")
    p.add_argument("--iptables-min-sync-period", metavar="DURATION",
                   help="the least time between syncs, e.g. 1s (default: the config's iptables.minSyncPeriod, else 1s)")
    p.add_argument("--iptables-sync-period", metavar="DURATION",
                   help="the time between full syncs, e.g. 30s (default: the config's iptables.syncPeriod, else 30s)")
    p.add_argument("-v", "--v", default="2")
    args = p.parse_args(argv)
    cfg = load_config(args.config) if args.config else {}
    flags = {k: v for k, v in (("minSyncPeriod", args.iptables_min_sync_period),
                                ("syncPeriod", args.iptables_sync_period)) if v is not None}
    try:
        min_sync, full_sync = sync_periods({"iptables": {**(cfg.get("iptables") or {}), **flags}})
    except ValueError as exc:
        print(f"kube-proxy: {exc}", file=sys.stderr)
        return 1
    kubeconfig = args.kubeconfig or (cfg.get("clientConnection") or {}).get("kubeconfig") or None
    cidr = args.cluster_cidr or cfg.get("clusterCIDR") or None
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s kube-proxy {args.hostname_override} %(levelname)s %(message)s")
    log = logging.getLogger("kube-proxy")
    try:
        client = client_from(kubeconfig, "kube-proxy")
    except KubeError as exc:
        print(f"kube-proxy: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    cluster = Cluster(client, ("Service", "EndpointSlice"), component="kube-proxy", host=args.hostname_override)
    cluster.wake_on_signals(stop)
    cluster.start()
    proxy = KubeProxy(cidr)
    while not stop.is_set() and not cluster.wait_synced(timeout=5, stop=stop):
        log.info("waiting for Services and EndpointSlices")
    log.info("syncing iptables rules (cluster CIDR %s)", cidr or "unset: no masquerade of off-cluster traffic")
    runner = SyncRunner(min_sync, now=time.monotonic())
    next_full = 0.0
    changed = True
    while not stop.is_set():
        now = time.monotonic()
        full = now >= next_full
        if changed or full:
            delay = 0.0 if full else runner.delay(now)
            if delay > 0:  # changes within minSyncPeriod of the last sync wait and go together
                stop.wait(delay)
                continue
            cluster.wait(stop, timeout=0)  # what changed until now is in the lists below
            try:
                if full:
                    proxy.resync(cluster.list("Service"), cluster.list("EndpointSlice"))
                    next_full = time.monotonic() + full_sync
                else:
                    proxy.sync(cluster.list("Service"), cluster.list("EndpointSlice"))
                changed = False
            except KubeProxyError as exc:
                log.error("%s", exc)
                stop.wait(1.0)
                continue
            finally:
                runner.ran(time.monotonic())
        changed = bool(cluster.wait(stop, timeout=max(0.05, min(5.0, next_full - time.monotonic()))))
    cluster.stop()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
