"""Cluster DNS: the process of the lab's CoreDNS pods (Deployment ``coredns`` in kube-system,
Service ``kube-dns`` 10.96.0.10), answering as the Kubernetes DNS specification
(kubernetes/dns docs/specification.md, schema 1.1.0) says, with dnspython for the wire format:

* ``<svc>.<ns>.svc.<zone>`` A: the ClusterIP; for a headless Service the addresses of its
  ready endpoints; ``<hostname>.<svc>.<ns>.svc.<zone>`` A for endpoints with a hostname;
* ``_<port>._<proto>.<svc>.<ns>.svc.<zone>`` SRV for every named port (target the Service,
  or each endpoint of a headless Service);
* ``<a-b-c-d>.<ns>.pod.<zone>`` A (CoreDNS's ``pods insecure``);
* ``<d>.<c>.<b>.<a>.in-addr.arpa`` PTR for ClusterIPs and headless endpoints;
* ``dns-version.<zone>`` TXT ``1.1.0``; SOA and NS of the zone; NXDOMAIN for names that do
  not exist, NODATA (NOERROR, empty answer, the SOA as authority) for other types.

Names outside the cluster zones are not forwarded: a lab has no path to a real resolver, so
they get SERVFAIL at once (the Corefile's ``forward`` is logged as such).
``python -m testbed.k8s.dns [-conf Corefile]`` (as the coredns image's ``/coredns``): the
Corefile's ``kubernetes`` block gives the zones, ``ttl`` and ``pods`` mode; ``health``
(:8080/health), ``ready`` (:8181/ready) and ``prometheus`` (:9153/metrics) are served; any
other plugin is named in a start-up warning as not implemented. Services and EndpointSlices
come from the API (in-cluster config: the pod's ServiceAccount token).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("dns")

SCHEMA_VERSION = "1.1.0"
DEFAULT_TTL = 5


@dataclass
class Config:
    """What the Corefile says (the parts implemented)."""

    zones: list[str] = field(default_factory=lambda: ["cluster.local."])
    ttl: int = DEFAULT_TTL
    pods: str = "insecure"  # insecure | disabled (verified is refused)
    port: int = 53
    health: str = ":8080"
    ready: str = ":8181"
    metrics: str = ":9153"
    warnings: list[str] = field(default_factory=list)


def _abs(name: str) -> str:
    return name if name.endswith(".") else name + "."


def parse_corefile(text: str) -> Config:
    """The implemented subset of a Corefile (kubeadm's): one server block ``.:53``."""
    cfg = Config(health="", ready="", metrics="")
    lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    depth = 0
    sub: str | None = None
    for ln in lines:
        if not ln:
            continue
        words = ln.replace("{", " { ").replace("}", " } ").split()
        for_block = [w for w in words if w not in ("{", "}")]
        if depth == 0:
            if for_block:
                server = for_block[0]
                host, _, port = server.rpartition(":")
                cfg.port = int(port) if port.isdigit() else 53
                if host not in (".", ""):
                    raise ValueError(f"Corefile: server block {server!r}: only the root zone '.' is served")
        elif depth == 1 and for_block:
            plugin, args = for_block[0], for_block[1:]
            sub = plugin
            if plugin == "kubernetes":
                cfg.zones = [_abs(z) for z in args] or ["cluster.local."]
            elif plugin == "health":
                cfg.health = args[0] if args else ":8080"
            elif plugin == "ready":
                cfg.ready = args[0] if args else ":8181"
            elif plugin == "prometheus":
                cfg.metrics = args[0] if args else ":9153"
            elif plugin == "errors":
                pass
            elif plugin == "forward":
                cfg.warnings.append(f"forward {' '.join(args)}: not forwarding (a lab has no path to a real "
                                    "resolver): names outside the cluster zones get SERVFAIL")
            else:
                cfg.warnings.append(f"plugin {plugin}: not implemented by calicolab's DNS server, ignored")
        elif depth == 2 and for_block and sub == "kubernetes":
            opt, args = for_block[0], for_block[1:]
            if opt == "pods":
                if not args or args[0] not in ("insecure", "disabled"):
                    raise ValueError(f"Corefile: kubernetes pods {' '.join(args)}: insecure and disabled are "
                                     "implemented")
                cfg.pods = args[0]
            elif opt == "ttl":
                cfg.ttl = int(args[0])
            elif opt == "fallthrough":
                pass  # nothing after the kubernetes plugin answers in-zone names
            else:
                cfg.warnings.append(f"kubernetes option {opt}: not implemented, ignored")
        depth += words.count("{") - words.count("}")
    return cfg


class ClusterDNS:
    """The records of the cluster (pure): fed with Services and EndpointSlices, answers
    dnspython queries."""

    def __init__(self, config: Config | None = None):
        self.config = config or Config()
        self.services: list[dict] = []
        self.slices: list[dict] = []

    def update(self, services: list[dict], slices: list[dict]) -> None:
        self.services, self.slices = services, slices

    # --- lookups -----------------------------------------------------------------------------
    @property
    def cluster_zones(self) -> list[str]:
        """The zones of cluster names (the reverse zones are answered by :meth:`_ptr`)."""
        return [z for z in self.config.zones if not z.endswith("arpa.")] or ["cluster.local."]

    def _zone_of(self, name: str) -> str | None:
        for z in self.cluster_zones:
            if name == z or name.endswith("." + z):
                return z
        return None

    def _service(self, ns: str, svc: str) -> dict | None:
        return next((s for s in self.services if s["metadata"]["name"] == svc and
                     s["metadata"].get("namespace") == ns), None)

    def _endpoints(self, ns: str, svc: str) -> list[tuple[dict, dict]]:
        """(endpoint, slice) of the Service's ready endpoints."""
        out = []
        for sl in self.slices:
            labels = sl["metadata"].get("labels") or {}
            if sl["metadata"].get("namespace") == ns and labels.get("kubernetes.io/service-name") == svc:
                for ep in sl.get("endpoints") or []:
                    if (ep.get("conditions") or {}).get("ready") is not False:
                        out.append((ep, sl))
        return out

    @staticmethod
    def _ep_host(ep: dict) -> str:
        if ep.get("hostname"):
            return ep["hostname"]
        return ep["addresses"][0].replace(".", "-")

    def records(self, qname: str, qtype: str) -> tuple[str, list[tuple[str, str, str]]]:
        """``(rcode, [(name, type, rdata text)])`` for a query; rcode NOERROR, NXDOMAIN or
        SERVFAIL (outside the zones). An empty list with NOERROR is NODATA."""
        name = _abs(qname.lower())
        if name.endswith(".in-addr.arpa."):
            return self._ptr(name, qtype)
        zone = self._zone_of(name)
        if zone is None:
            return "SERVFAIL", []
        labels = name[: -len(zone)].rstrip(".").split(".") if name != zone else []
        recs: list[tuple[str, str, str]] = []
        exists = False
        if not labels:  # the zone apex
            exists = True
            if qtype == "SOA":
                recs.append((name, "SOA", self.soa(zone)))
            elif qtype == "NS":
                recs.append((name, "NS", f"ns.dns.{zone}"))
        elif labels == ["dns-version"]:
            exists = True
            if qtype == "TXT":
                recs.append((name, "TXT", f'"{SCHEMA_VERSION}"'))
        elif labels == ["ns", "dns"]:
            exists = True
            if qtype == "A":
                recs.append((name, "A", self._dns_ip()))
        elif labels[-1] == "svc":
            exists, recs = self._svc(name, labels[:-1], qtype, zone)
        elif labels[-1] == "pod" and len(labels) == 3 and self.config.pods == "insecure":
            ip = labels[0].replace("-", ".")
            try:
                ipaddress.IPv4Address(ip)
                exists = True
                if qtype == "A":
                    recs.append((name, "A", ip))
            except ValueError:
                exists = False
        else:
            # an intermediate name that exists (svc.<zone>, <ns>.svc.<zone>): NODATA, not NXDOMAIN
            exists = labels in (["svc"], ["pod"]) or (len(labels) == 2 and labels[1] in ("svc", "pod") and any(
                s["metadata"].get("namespace") == labels[0] for s in self.services))
        if not exists:
            return "NXDOMAIN", []
        return "NOERROR", recs

    def _svc(self, name: str, parts: list[str], qtype: str, zone: str) -> tuple[bool, list]:
        # parts (left to right, without "svc"): [..., svc, ns]
        if len(parts) < 2:
            return (len(parts) == 1 and any(s["metadata"].get("namespace") == parts[0] for s in self.services)), []
        ns, svcname = parts[-1], parts[-2]
        svc = self._service(ns, svcname)
        if svc is None:
            return False, []
        base = f"{svcname}.{ns}.svc.{zone}"
        headless = (svc.get("spec") or {}).get("clusterIP") == "None"
        eps = self._endpoints(ns, svcname) if headless else []
        rest = parts[:-2]
        ttl_recs: list[tuple[str, str, str]] = []
        if not rest:  # <svc>.<ns>.svc.<zone>
            if qtype == "A":
                if headless:
                    ttl_recs += [(name, "A", a) for ep, _ in eps for a in ep.get("addresses") or []]
                elif (svc.get("spec") or {}).get("type") == "ExternalName":
                    ttl_recs.append((name, "CNAME", _abs(svc["spec"].get("externalName", ""))))
                elif svc["spec"].get("clusterIP"):
                    ttl_recs.append((name, "A", svc["spec"]["clusterIP"]))
            elif qtype == "SRV":
                ttl_recs += self._srv_all(name, svc, eps, base, None, None)
            return True, ttl_recs
        if len(rest) == 1:  # <hostname>.<svc>.<ns>.svc.<zone> (headless endpoints)
            host = rest[0]
            match = [ep for ep, _ in eps if self._ep_host(ep) == host]
            if not match:
                return False, []
            if qtype == "A":
                ttl_recs += [(name, "A", a) for ep in match for a in ep.get("addresses") or []]
            return True, ttl_recs
        if len(rest) == 2 and rest[0].startswith("_") and rest[1].startswith("_"):  # _port._proto
            port, proto = rest[0][1:], rest[1][1:]
            recs = self._srv_all(name, svc, eps, base, port, proto)
            if not recs:
                return False, []
            return True, recs if qtype == "SRV" else []
        return False, []

    def _srv_all(self, name: str, svc: dict, eps: list[tuple[dict, dict]], base: str, port: str | None,
                 proto: str | None) -> list[tuple[str, str, str]]:
        out = []
        headless = svc["spec"].get("clusterIP") == "None"
        for p in svc["spec"].get("ports") or []:
            pname, pproto = p.get("name") or "", (p.get("protocol") or "TCP").lower()
            if not pname or (port is not None and (pname != port or pproto != proto)):
                continue
            if headless:
                for ep, sl in eps:
                    sp = next((q for q in sl.get("ports") or [] if q.get("name") == pname), None)
                    if sp is not None:
                        out.append((name, "SRV", f"0 {100 // max(1, len(eps))} {sp['port']} "
                                                 f"{self._ep_host(ep)}.{base}"))
            else:
                out.append((name, "SRV", f"0 100 {p['port']} {base}"))
        return out

    def _ptr(self, name: str, qtype: str) -> tuple[str, list]:
        octets = name[: -len(".in-addr.arpa.")].split(".")
        if len(octets) != 4:
            return ("NOERROR" if self._in_service_range(octets) else "SERVFAIL"), []
        ip = ".".join(reversed(octets))
        zone = self.cluster_zones[0]
        for s in self.services:
            spec = s.get("spec") or {}
            ns, svc = s["metadata"].get("namespace"), s["metadata"]["name"]
            if ip in (spec.get("clusterIPs") or [spec.get("clusterIP")]):
                return "NOERROR", ([(name, "PTR", f"{svc}.{ns}.svc.{zone}")] if qtype == "PTR" else [])
            if spec.get("clusterIP") == "None":
                for ep, _ in self._endpoints(ns, svc):
                    if ip in (ep.get("addresses") or []):
                        return "NOERROR", ([(name, "PTR", f"{self._ep_host(ep)}.{svc}.{ns}.svc.{zone}")]
                                           if qtype == "PTR" else [])
        return ("NXDOMAIN" if self._in_service_range(octets) else "SERVFAIL"), []

    def _in_service_range(self, octets: list[str]) -> bool:
        return bool(octets) and octets[-1] == "10"  # 10.96.0.0/12 lives under 10.in-addr.arpa

    def _dns_ip(self) -> str:
        svc = self._service("kube-system", "kube-dns")
        return (svc or {}).get("spec", {}).get("clusterIP") or "10.96.0.10"

    def soa(self, zone: str) -> str:
        return f"ns.dns.{zone} hostmaster.{zone} 1 7200 1800 86400 {self.config.ttl}"

    # --- wire --------------------------------------------------------------------------------
    def answer(self, wire: bytes) -> bytes | None:
        """A response to the query in ``wire`` (None if it does not parse)."""
        import dns.flags
        import dns.message
        import dns.rcode
        import dns.rdataclass
        import dns.rdatatype
        import dns.rrset

        try:
            q = dns.message.from_wire(wire)
        except Exception:  # noqa: BLE001 - garbage: no answer, as a server drops it
            return None
        r = dns.message.make_response(q)
        r.flags |= dns.flags.AA
        if not q.question:
            r.set_rcode(dns.rcode.FORMERR)
            return r.to_wire()
        qq = q.question[0]
        qname = qq.name.to_text()
        qtype = dns.rdatatype.to_text(qq.rdtype)
        rcode, recs = self.records(qname, qtype)
        r.set_rcode(dns.rcode.from_text(rcode))
        if rcode == "SERVFAIL":
            r.flags &= ~dns.flags.AA
            return r.to_wire()
        for rname, rtype, rdata in recs:
            rr = dns.rrset.from_text(rname, self.config.ttl, dns.rdataclass.IN, rtype, rdata)
            found = r.find_rrset(r.answer, rr.name, rr.rdclass, rr.rdtype, create=True)
            found.update(rr)
        if not recs:
            zone = self._zone_of(_abs(qname.lower())) or self.cluster_zones[0]
            r.authority.append(dns.rrset.from_text(zone, self.config.ttl, dns.rdataclass.IN, "SOA", self.soa(zone)))
        return r.to_wire()


# --- the server --------------------------------------------------------------------------------

class Metrics:
    """The few CoreDNS metrics the server keeps (Prometheus text on :9153/metrics)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        self.responses: dict[str, int] = {}
        self.lock = threading.Lock()

    def count(self, proto: str, qtype: str, rcode: str) -> None:
        with self.lock:
            self.requests[(proto, qtype)] = self.requests.get((proto, qtype), 0) + 1
            self.responses[rcode] = self.responses.get(rcode, 0) + 1

    def text(self) -> str:
        lines = ["# HELP coredns_dns_requests_total Counter of DNS requests made per zone, protocol and family.",
                 "# TYPE coredns_dns_requests_total counter"]
        with self.lock:
            for (proto, qtype), n in sorted(self.requests.items()):
                lines.append(f'coredns_dns_requests_total{{family="1",proto="{proto}",server="dns://:53",'
                             f'type="{qtype}",zone="."}} {n}')
            lines += ["# HELP coredns_dns_responses_total Counter of response status codes.",
                      "# TYPE coredns_dns_responses_total counter"]
            for rcode, n in sorted(self.responses.items()):
                lines.append(f'coredns_dns_responses_total{{rcode="{rcode}",server="dns://:53",zone="."}} {n}')
        return "\n".join(lines) + "\n"


def _rcode_of(wire: bytes) -> str:
    import dns.rcode

    return dns.rcode.to_text(wire[3] & 0x0F) if len(wire) > 3 else "FORMERR"


def serve(dnsdb: ClusterDNS, cfg: Config, synced: Callable[[], bool], stop: threading.Event) -> None:
    """UDP and TCP on :port, plus health/ready/metrics over HTTP, until ``stop``."""
    import asyncio

    metrics = Metrics()

    class Udp(asyncio.DatagramProtocol):
        def connection_made(self, transport) -> None:  # noqa: ANN001
            self.transport = transport

        def datagram_received(self, data: bytes, addr) -> None:  # noqa: ANN001
            out = dnsdb.answer(data)
            if out is not None:
                if len(out) > 512:
                    import dns.flags
                    import dns.message

                    msg = dns.message.from_wire(out)
                    msg.answer.clear()
                    msg.flags |= dns.flags.TC
                    out = msg.to_wire()
                self.transport.sendto(out, addr)
                metrics.count("udp", _qtype(data), _rcode_of(out))

    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(2)
                data = await reader.readexactly(int.from_bytes(head, "big"))
                out = dnsdb.answer(data)
                if out is None:
                    break
                writer.write(len(out).to_bytes(2, "big") + out)
                await writer.drain()
                metrics.count("tcp", _qtype(data), _rcode_of(out))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, what: str) -> None:
        try:
            line = (await reader.readline()).decode(errors="replace")
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            path = line.split()[1] if len(line.split()) > 1 else "/"
            if what == "metrics" and path == "/metrics":
                code, body = 200, metrics.text()
            elif what == "health" and path == "/health":
                code, body = 200, "OK"
            elif what == "ready" and path == "/ready":
                code, body = (200, "OK") if synced() else (503, "kubernetes")
            else:
                code, body = 404, "404 page not found\n"
            writer.write(f"HTTP/1.1 {code} {'OK' if code == 200 else 'Error'}\r\nContent-Type: text/plain\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}".encode())
            await writer.drain()
        finally:
            writer.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=("0.0.0.0", cfg.port))
        servers = [await asyncio.start_server(tcp, "0.0.0.0", cfg.port)]
        for what, addr in (("health", cfg.health), ("ready", cfg.ready), ("metrics", cfg.metrics)):
            if addr:
                host, _, port = addr.rpartition(":")
                servers.append(await asyncio.start_server(lambda r, w, what=what: http(r, w, what),
                                                          host or "0.0.0.0", int(port)))
        log.info("serving DNS on :%d (zones %s)", cfg.port, " ".join(cfg.zones))
        while not stop.is_set():
            await asyncio.sleep(0.2)
        udp.close()
        for s in servers:
            s.close()

    asyncio.run(main())


def _qtype(wire: bytes) -> str:
    try:
        import dns.message
        import dns.rdatatype

        return dns.rdatatype.to_text(dns.message.from_wire(wire).question[0].rdtype)
    except Exception:  # noqa: BLE001
        return "other"


def main(argv: list[str] | None = None) -> int:
    """``python -m testbed.k8s.dns [-conf Corefile]`` (the coredns image's entry point)."""
    from kernel.preload import before_threads

    before_threads()  # before any thread imports lazily (kernel.preload)
    import signal

    from kubeclient import KubeError
    from testbed.k8s.apiclient import Cluster, client_from

    p = argparse.ArgumentParser(prog="coredns", description="cluster DNS (Kubernetes DNS specification)")
    p.add_argument("-conf", dest="conf", help="Corefile")
    p.add_argument("-kubeconfig", dest="kubeconfig", default=None, help="default: in-cluster")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s coredns %(levelname)s %(message)s")
    cfg = Config()
    if args.conf:
        try:
            with open(args.conf) as f:
                cfg = parse_corefile(f.read())
        except (OSError, ValueError) as exc:
            print(f"coredns: {args.conf}: {exc}", file=sys.stderr)
            return 1
    for w in cfg.warnings:
        log.warning("%s", w)
    try:
        client = client_from(args.kubeconfig or os.environ.get("KUBECONFIG"), "coredns")
    except KubeError as exc:
        print(f"coredns: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    cluster = Cluster(client, ("Service", "EndpointSlice"), component="coredns")
    cluster.wake_on_signals(stop)
    db = ClusterDNS(cfg)

    def follow() -> None:
        cluster.start()
        while not stop.is_set():
            cluster.wait(stop, timeout=5.0)
            db.update(cluster.list("Service"), cluster.list("EndpointSlice"))

    threading.Thread(target=follow, daemon=True, name="informers").start()
    serve(db, cfg, cluster.synced, stop)
    cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
