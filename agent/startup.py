"""calico-node start-up: register the Node, default IPPool, ClusterInformation, tunnel address.

Mirrors ``node/pkg/lifecycle/startup`` and ``allocateip`` (calico.md sections 2-4):

* the Node's ``spec.bgp.ipv4Address`` is autodetected as a CIDR (``first-found``
  with Calico's skip list, ``interface=``, ``skip-interface=``, ``cidr=``,
  ``can-reach=``) unless ``IP`` gives one;
* ``default-ipv4-ippool`` is created from ``CALICO_IPV4POOL_*`` if no pool exists
  (create-if-absent, so exactly one node wins a race; AlreadyExists is fine);
* ``ClusterInformation default`` gets ``datastoreReady: true``;
* ``FelixConfiguration default`` is created if missing with ``reportingInterval: 0s`` and
  ``logSeverityScreen: Info``; on an existing one only those of the two that are unset are set;
* the IPIP tunnel address comes from IPAM (handle ``ipip-tunnel-addr-<node>``)
  and is stored in ``spec.bgp.ipv4IPIPTunnelAddr``, the VXLAN one (handle
  ``vxlan-tunnel-addr-<node>``) in ``spec.ipv4VXLANTunnelAddr``;
* ``/var/lib/calico/nodename`` is written.

:func:`autodetect` and :func:`pool_from_env` are pure; the rest talks to the
datastore or reads the kernel's addresses.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from datastore.version import CALICO_VERSION
from kernel import Kernel, KernelError

log = logging.getLogger(__name__)

SKIP_INTERFACES = (
    r"^docker.*", r"^cbr.*", r"^dummy.*", r"^podman.*", r"^virbr.*", r"^lxcbr.*", r"^veth.*", r"^lo",
    r"^br-.*", r"^cali.*", r"^tunl.*", r"^flannel.*", r"^kube-ipvs.*", r"^cni.*", r"^vxlan\.calico.*",
    r"^wireguard\.cali.*", r"^nodelocaldns.*",
)
DEFAULT_POOL_NAME = "default-ipv4-ippool"
DEFAULT_POOL_CIDR = "192.168.0.0/16"
#: what calico-node's ensureDefaultConfig writes into FelixConfiguration default
DEFAULT_REPORTING_INTERVAL = "0s"
DEFAULT_LOG_SEVERITY = "Info"


class StartupError(RuntimeError):
    """Start-up cannot proceed; the message names the setting or object at fault."""


@dataclass
class StartupResult:
    """What start-up decided."""

    nodename: str
    ipv4_address: str | None
    tunnel_address: str | None
    pool_created: bool
    #: milliseconds per step (calico-node's start-up log line shows them)
    steps: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# pure helpers


def autodetect(method: str, interfaces: Sequence[tuple[str, Sequence[str]]]) -> str | None:
    """Pick the node's IPv4 CIDR from ``interfaces`` [(ifname, ["a.b.c.d/len", ...]), ...] in system order.

    ``method``: ``first-found`` (default), ``interface=<regex>[,<regex>]``,
    ``skip-interface=<regex>[,...]`` or ``cidr=<cidr>[,<cidr>]``. Returns None
    when nothing qualifies; raises StartupError for an unknown method.
    """
    method = (method or "first-found").strip()
    kind, _, arg = method.partition("=")
    regexes: list[re.Pattern[str]] = []
    if kind in ("interface", "skip-interface"):
        if not arg:
            raise StartupError(f"IP_AUTODETECTION_METHOD={method!r}: give at least one interface regex")
        try:
            regexes = [re.compile(r.strip()) for r in arg.split(",") if r.strip()]
        except re.error as exc:
            raise StartupError(f"IP_AUTODETECTION_METHOD={method!r}: bad regex: {exc}") from None
    nets: list[ipaddress.IPv4Network] = []
    if kind == "cidr":
        try:
            nets = [ipaddress.IPv4Network(c.strip(), strict=False) for c in arg.split(",") if c.strip()]
        except ValueError as exc:
            raise StartupError(f"IP_AUTODETECTION_METHOD={method!r}: {exc}") from None
        if not nets:
            raise StartupError(f"IP_AUTODETECTION_METHOD={method!r}: give at least one CIDR")
    if kind not in ("first-found", "interface", "skip-interface", "cidr"):
        raise StartupError(f"IP_AUTODETECTION_METHOD={method!r} is not supported "
                           "(use first-found, interface=, skip-interface=, cidr= or can-reach=)")
    skip = [re.compile(r) for r in SKIP_INTERFACES]
    for ifname, addrs in interfaces:
        if kind == "interface":
            if not any(r.match(ifname) for r in regexes):
                continue
        elif kind == "skip-interface":
            if any(r.match(ifname) for r in regexes):
                continue
        elif kind == "first-found" and any(r.match(ifname) for r in skip):
            continue
        for a in addrs:
            iface = ipaddress.IPv4Interface(a)
            if iface.ip.is_loopback or iface.ip.is_link_local:
                continue
            if kind == "cidr" and not any(iface.ip in n for n in nets):
                continue
            return str(iface)
    return None


def _ipip_mode(value: str, var: str) -> str:
    low = value.strip().lower()
    if low in ("", "off", "never"):
        return "Never"
    if low == "always":
        return "Always"
    if low in ("crosssubnet", "cross-subnet"):
        return "CrossSubnet"
    raise StartupError(f"{var}={value!r} is not one of Always, CrossSubnet, Never")


def _env_bool(env: Mapping[str, str], var: str, default: bool) -> bool:
    from agent import envvars

    raw = envvars.get(env, var)
    if raw == "":
        return default
    low = raw.strip().lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise StartupError(f"{var}={raw!r} is not a boolean (true/false)")


def pool_from_env(env: Mapping[str, str], host_addresses: Sequence[str] = (), kubeadm_cidr: str | None = None) -> Any:
    """The default IPPool resource described by ``CALICO_IPV4POOL_*`` (validated); its CIDR is
    ``CALICO_IPV4POOL_CIDR``, else kubeadm's ``podSubnet``, else 192.168.0.0/16."""
    from datastore.errors import ValidationError
    from datastore.resources import IPPool, Metadata

    cidr = env.get("CALICO_IPV4POOL_CIDR", "").strip() or (kubeadm_cidr or "")
    if cidr:
        try:
            net = ipaddress.IPv4Network(cidr, strict=False)
        except ValueError:
            raise StartupError(f"CALICO_IPV4POOL_CIDR={cidr!r} is not an IPv4 CIDR") from None
    else:
        net = ipaddress.IPv4Network(DEFAULT_POOL_CIDR)
        hosts = [ipaddress.IPv4Interface(a).ip for a in host_addresses]
        if any(h in net for h in hosts):  # Calico falls back to 172.16-31.0.0/16
            for second in range(16, 32):
                cand = ipaddress.IPv4Network(f"172.{second}.0.0/16")
                if not any(h in cand for h in hosts):
                    net = cand
                    break
    raw_bs = env.get("CALICO_IPV4POOL_BLOCK_SIZE", "").strip() or "26"
    try:
        block_size = int(raw_bs)
    except ValueError:
        raise StartupError(f"Unable to convert blocksize to int: CALICO_IPV4POOL_BLOCK_SIZE={raw_bs!r} "
                           "is not an integer") from None
    if not 20 <= block_size <= 32:  # startup.go validateBlockSize, before any pool is looked at
        raise StartupError(f"Invalid blocksize {block_size} for version 4: CALICO_IPV4POOL_BLOCK_SIZE="
                           f"{raw_bs!r} must be between 20 and 32")
    spec = IPPool.Spec(
        cidr=str(net), block_size=block_size,
        ipip_mode=_ipip_mode(env.get("CALICO_IPV4POOL_IPIP", ""), "CALICO_IPV4POOL_IPIP"),
        vxlan_mode=_ipip_mode(env.get("CALICO_IPV4POOL_VXLAN", ""), "CALICO_IPV4POOL_VXLAN"),
        nat_outgoing=_env_bool(env, "CALICO_IPV4POOL_NAT_OUTGOING", True),
        disable_bgp_export=_env_bool(env, "CALICO_IPV4POOL_DISABLE_BGP_EXPORT", False),
        node_selector=env.get("CALICO_IPV4POOL_NODE_SELECTOR", "").strip() or "all()",
    )
    pool = IPPool(metadata=Metadata(name=DEFAULT_POOL_NAME), spec=spec)
    pool.apply_defaults()
    try:
        pool.validate()
    except ValidationError as exc:
        raise StartupError(f"default IP pool from CALICO_IPV4POOL_*: {exc}") from None
    return pool


def determine_nodename(env: Mapping[str, str]) -> str:
    """NODENAME, else NODE_NAME, else HOSTNAME, else the kernel hostname."""
    from agent import envvars

    for var in ("NODENAME", "NODE_NAME", "HOSTNAME"):
        if envvars.get(env, var).strip():
            return envvars.get(env, var).strip()
    return socket.gethostname()


# ---------------------------------------------------------------------------
# kernel and datastore side


def local_interfaces(kernel: Kernel | None = None) -> list[tuple[str, list[str]]]:
    """[(ifname, ["a.b.c.d/len", ...])] of ``kernel``'s netns (default: this thread's), in index order."""
    with _handle(kernel) as k:
        names = {ln.index: ln.name for ln in k.links(brief=True)}
        by_index: dict[int, list[str]] = {i: [] for i in names}
        for a in k.addrs():
            by_index.setdefault(a.index, []).append(a.cidr)
    return [(names.get(i, str(i)), by_index[i]) for i in sorted(by_index)]


@contextmanager
def _handle(kernel: Kernel | None) -> Iterator[Kernel]:
    if kernel is not None:
        yield kernel
        return
    from kernel.netlink import Netlink

    with Netlink() as k:
        yield k


def can_reach(dest: str, interfaces: Sequence[tuple[str, Sequence[str]]], kernel: Kernel | None = None) -> str | None:
    """The local CIDR whose address the kernel uses as source towards ``dest``."""
    try:
        ipaddress.IPv4Address(dest)
    except ValueError:
        raise StartupError(f"IP_AUTODETECTION_METHOD=can-reach={dest!r}: give an IPv4 address") from None
    with _handle(kernel) as k:
        try:
            route = k.route_get(dest)
        except KernelError:
            return None
    src = route.prefsrc if route is not None else None
    for _, addrs in interfaces:
        for a in addrs:
            if a.split("/")[0] == src:
                return a
    return None


def node_address(env: Mapping[str, str], interfaces: Sequence[tuple[str, Sequence[str]]] | None = None) -> str | None:
    """The node's IPv4 CIDR from ``IP`` (explicit, ``autodetect`` or ``none``)."""
    ip = env.get("IP", "").strip()
    if ip.lower() == "none":
        return None
    ifaces = list(interfaces) if interfaces is not None else local_interfaces()
    if ip and ip.lower() != "autodetect":
        try:
            iface = ipaddress.IPv4Interface(ip)
        except ValueError:
            raise StartupError(f"IP={ip!r} is not an IPv4 address") from None
        if "/" not in ip:  # take the prefix from the local interface holding it
            for _, addrs in ifaces:
                for a in addrs:
                    if a.split("/")[0] == str(iface.ip):
                        return a
            return f"{iface.ip}/32"
        return str(iface)
    method = env.get("IP_AUTODETECTION_METHOD", "first-found").strip() or "first-found"
    if method.startswith("can-reach="):
        found = can_reach(method.partition("=")[2], ifaces)
    else:
        found = autodetect(method, ifaces)
    if found is None:
        raise StartupError(f"no IPv4 address found with IP_AUTODETECTION_METHOD={method}")
    return found


def _update_retry(client: Any, kind: str, name: str, mutate: Any, attempts: int = 20,
                  first: Any = None) -> Any:
    """get -> mutate -> update (CAS) with retries on Conflict; returns the stored object.
    ``first``: the object as the caller just read it, used for the first attempt (under a
    busy lab's start each API round trip was 0.3-1.5 s of a late node's start-up)."""
    from datastore import errors

    for _ in range(attempts):
        obj, first = (first, None) if first is not None else (client.get(kind, name), None)
        if not mutate(obj):
            return obj
        try:
            return client.update(obj)
        except errors.Conflict:
            continue
    raise StartupError(f"{kind} {name}: gave up after {attempts} update conflicts")


def register_node(client: Any, nodename: str, ipv4: str | None) -> Any:
    """Create or update the Node with ``spec.bgp.ipv4Address``; other fields are kept.

    In the Kubernetes datastore the Calico Node is the Kubernetes Node (its
    ``projectcalico.org/*`` annotations): it cannot be created, so a missing Kubernetes
    Node is a start-up error (calico-node is restarted and tries again)."""
    from datastore import errors
    from datastore.resources import Metadata, Node, NodeBGPSpec

    try:
        current = client.get("Node", nodename)
    except errors.NotFound:
        current = None
        if getattr(client, "datastore_type", "") == "kubernetes":
            raise StartupError(f"the Kubernetes Node {nodename!r} does not exist: in the Kubernetes datastore "
                               "the Calico Node is the Kubernetes Node (has the kubelet registered it?)") from None
        node = Node(metadata=Metadata(name=nodename))
        node.spec.bgp = NodeBGPSpec(ipv4_address=ipv4)
        try:
            return client.create(node)
        except errors.AlreadyExists:
            pass

    def mutate(node: Any) -> bool:
        if node.spec.bgp is None:
            node.spec.bgp = NodeBGPSpec()
        if node.spec.bgp.ipv4_address == ipv4:
            return False
        node.spec.bgp.ipv4_address = ipv4
        return True

    return _update_retry(client, "Node", nodename, mutate, first=current)


def kube_client(client: Any, env: Mapping[str, str]) -> Any:
    """calico-node's Kubernetes API client: the datastore's own in the Kubernetes datastore,
    else one from KUBECONFIG or the in-cluster config when calico-node has them (as
    calico-node builds its clientset in etcd mode too); None without."""
    kube = getattr(client, "kube", None)
    if kube is not None:
        return kube
    if not (env.get("KUBECONFIG") or env.get("KUBERNETES_SERVICE_HOST")):
        return None
    from datastore.errors import DatastoreError
    from datastore.kdd import kube_config_from_env
    from kubeclient import Client as Kube

    try:
        return Kube(kube_config_from_env(env))
    except (DatastoreError, OSError, ValueError) as exc:
        log.warning("no Kubernetes API client (%s): kubeadm-config is not read", exc)
        return None


def kubeadm_config(kube: Any) -> dict | None:
    """kube-system/kubeadm-config, or None (not a kubeadm cluster, or no API client)."""
    if kube is None:
        return None
    import kubeclient

    try:
        return kube.get("v1", "configmaps", "kubeadm-config", "kube-system")
    except kubeclient.NotFound:
        return None
    except kubeclient.KubeError as exc:
        log.warning("failed to query kubeadm's config map: %s", exc)
        return None


def kubeadm_pod_subnet(cm: dict | None) -> str | None:
    """The IPv4 ``podSubnet`` of kubeadm's ClusterConfiguration (``extractKubeadmCIDRs``)."""
    if not cm:
        return None
    text = (cm.get("data") or {}).get("ClusterConfiguration") or ""
    m = re.search(r"podSubnet:\s*(\S+)", text)
    if not m:
        return None
    for part in m.group(1).strip("\"'").split(","):
        try:
            net = ipaddress.ip_network(part.strip(), strict=False)
        except ValueError:
            continue
        if net.version == 4:
            return str(net)
    return None


def ensure_default_pool(client: Any, env: Mapping[str, str], host_addresses: Sequence[str] = (),
                        kubeadm_cidr: str | None = None) -> bool:
    """Create default-ipv4-ippool when no IPPool exists; True if this call created it."""
    from datastore import errors

    if _env_bool(env, "NO_DEFAULT_POOLS", False):
        return False
    pool = pool_from_env(env, host_addresses, kubeadm_cidr)  # validate env even if a pool exists
    if client.list("IPPool"):
        return False
    try:
        client.create(pool)
    except errors.AlreadyExists:
        return False
    log.info("created IP pool %s %s", DEFAULT_POOL_NAME, pool.spec.cidr)
    return True


def cluster_type(env: Mapping[str, str], kubeadm: bool = False, kdd: bool | None = None) -> str:
    """ClusterInformation's ``clusterType`` as calico-node v3.28.1 builds it: ``CLUSTER_TYPE``
    from the manifest, ``,kubeadm`` when kube-system's kubeadm-config ConfigMap exists, and
    ``,kdd`` last when the datastore is Kubernetes (``k8s,bgp,kubeadm,kdd``)."""
    ctype = env.get("CLUSTER_TYPE", "").removesuffix(",")
    if kubeadm:
        ctype = f"{ctype},kubeadm" if ctype else "kubeadm"
    if kdd is None:
        from datastore.base import datastore_type

        try:
            kdd = datastore_type(env) == "kubernetes"
        except Exception:  # noqa: BLE001 - a bad DATASTORE_TYPE fails elsewhere, by name
            kdd = False
    if kdd:
        ctype = f"{ctype},kdd" if ctype else "kdd"
    return ctype


def ensure_cluster_information(client: Any, env: Mapping[str, str], kubeadm: bool = False) -> Any:
    """ClusterInformation ``default`` as libcalico-go's ``EnsureInitialized`` keeps it:
    created with a hex GUID, ``calicoVersion`` (v3.28.1), ``clusterType`` and
    ``datastoreReady: true``; on an existing one the version is set to ours, a missing GUID
    is filled, an unset datastoreReady becomes true (an explicit false is kept) and our
    cluster types are appended to those already listed."""
    from datastore import errors
    from datastore.resources import ClusterInformation, Metadata

    ctype = cluster_type(env, kubeadm, getattr(client, "datastore_type", "") == "kubernetes")
    try:
        current = client.get("ClusterInformation", "default")
    except errors.NotFound:
        current = None
        ci = ClusterInformation(metadata=Metadata(name="default"))
        ci.spec.cluster_guid = uuid.uuid4().hex
        ci.spec.cluster_type = ctype or None
        ci.spec.calico_version = CALICO_VERSION
        ci.spec.datastore_ready = True
        try:
            return client.create(ci)
        except errors.AlreadyExists:
            pass

    def mutate(ci: Any) -> bool:
        changed = False
        if ci.spec.calico_version != CALICO_VERSION:
            ci.spec.calico_version = CALICO_VERSION
            changed = True
        if not ci.spec.cluster_guid:
            ci.spec.cluster_guid = uuid.uuid4().hex
            changed = True
        if ci.spec.datastore_ready is None:
            ci.spec.datastore_ready = True
            changed = True
        if ctype:
            have = ci.spec.cluster_type.split(",") if ci.spec.cluster_type else []
            extra = [t for t in ctype.split(",") if t not in have]
            if extra or not ci.spec.cluster_type:
                ci.spec.cluster_type = ",".join(have + extra) if have else ctype
                changed = True
        return changed

    return _update_retry(client, "ClusterInformation", "default", mutate, first=current)


def ensure_default_felix_configuration(client: Any) -> Any:
    """FelixConfiguration ``default`` as calico-node's ``ensureDefaultConfig`` keeps it:
    created when missing with ``reportingInterval: 0s`` (not Felix's 30 s) and
    ``logSeverityScreen: Info``; on an existing one (a user's, the operator's) each of the two
    is set only when it is unset, every value already there is kept. Returns the object."""
    from datastore import errors
    from datastore.resources import FelixConfiguration, Metadata

    try:
        current = client.get("FelixConfiguration", "default")
    except errors.NotFound:
        current = None
        fc = FelixConfiguration(metadata=Metadata(name="default"))
        fc.spec.reporting_interval = DEFAULT_REPORTING_INTERVAL
        fc.spec.log_severity_screen = DEFAULT_LOG_SEVERITY
        try:
            created = client.create(fc)
            log.info("created FelixConfiguration default (reportingInterval %s, logSeverityScreen %s)",
                     DEFAULT_REPORTING_INTERVAL, DEFAULT_LOG_SEVERITY)
            return created
        except errors.AlreadyExists:  # another node (or the operator) was first
            pass

    def mutate(fc: Any) -> bool:
        changed = False
        if fc.spec.reporting_interval is None:
            fc.spec.reporting_interval = DEFAULT_REPORTING_INTERVAL
            changed = True
        if not fc.spec.log_severity_screen:
            fc.spec.log_severity_screen = DEFAULT_LOG_SEVERITY
            changed = True
        return changed

    return _update_retry(client, "FelixConfiguration", "default", mutate, first=current)


def ensure_tunnel_address(client: Any, nodename: str, kind: str = "ipip") -> str | None:
    """Allocate (or keep) the node's IPIP or VXLAN tunnel address and store it in the Node
    (``spec.bgp.ipv4IPIPTunnelAddr``, ``spec.ipv4VXLANTunnelAddr``); without a pool of
    that encapsulation the address is released and the field cleared; returns the address."""
    from ipam import IPAM

    ip = IPAM(client).allocate_tunnel_address(nodename, kind)
    addr = str(ip) if ip is not None else None

    def mutate(node: Any) -> bool:
        from datastore.resources import NodeBGPSpec

        if kind == "vxlan":
            if node.spec.ipv4_vxlan_tunnel_addr == addr:
                return False
            node.spec.ipv4_vxlan_tunnel_addr = addr
            return True
        if node.spec.bgp is None:
            node.spec.bgp = NodeBGPSpec()
        if node.spec.bgp.ipv4_ipip_tunnel_addr == addr:
            return False
        node.spec.bgp.ipv4_ipip_tunnel_addr = addr
        return True

    _update_retry(client, "Node", nodename, mutate)
    return addr


def ensure_tunnel_addresses(client: Any, nodename: str) -> dict[str, str | None]:
    """Calico's allocate-tunnel-addrs (``reconcileTunnelAddrs``): the IPIP address, then the
    VXLAN one, each allocated, kept or released as the pools ask; {"ipip": .., "vxlan": ..}."""
    return {kind: ensure_tunnel_address(client, nodename, kind) for kind in ("ipip", "vxlan")}


def write_nodename(var_lib: str, nodename: str) -> str:
    """Write ``<var_lib>/nodename`` (read by the CNI plugin); returns its path."""
    os.makedirs(var_lib, exist_ok=True)
    path = os.path.join(var_lib, "nodename")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(nodename)
    os.replace(tmp, path)
    return path


def check_nodename(nodename: str) -> str:
    """``nodename`` if it is a valid Calico name, else :class:`StartupError` naming it."""
    if not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", nodename):
        raise StartupError(f"node name {nodename!r} is not a valid Calico name (lower case, digits, '-', '.')")
    return nodename


def run_startup(client: Any, env: Mapping[str, str], var_lib: str | None = None,
                interfaces: Sequence[tuple[str, Sequence[str]]] | None = None,
                tunnels: bool = True) -> StartupResult:
    """The whole start-up sequence (idempotent: safe on every agent restart).

    ``tunnels=False`` leaves the tunnel addresses to the caller, as Calico's start-up does:
    it ends by writing the nodename file, and ``allocate-tunnel-addrs`` runs beside Felix and
    BIRD (calico-node's :class:`agent.main.TunnelAllocator`); ``tunnel_address`` is then None.
    With ``tunnels`` (``--startup-only``, nothing runs after it) they are allocated before the
    nodename file is written."""
    nodename = check_nodename(determine_nodename(env))
    steps: dict[str, float] = {}
    t = time.monotonic()

    def step(name: str) -> None:
        nonlocal t
        now = time.monotonic()
        steps[name] = round((now - t) * 1000, 1)
        t = now

    ifaces = list(interfaces) if interfaces is not None else local_interfaces()
    host_addrs = [a for _, addrs in ifaces for a in addrs]
    kubeadm = kubeadm_config(kube_client(client, env))
    kubeadm_cidr = kubeadm_pod_subnet(kubeadm)
    step("kubeadm")
    if not _env_bool(env, "NO_DEFAULT_POOLS", False):
        pool_from_env(env, host_addrs, kubeadm_cidr)  # bad CALICO_IPV4POOL_* fails before anything is written
    ipv4 = node_address(env, ifaces)
    log.info("node %s: IPv4 address %s", nodename, ipv4)
    step("address")
    register_node(client, nodename, ipv4)
    step("node")
    created = ensure_default_pool(client, env, host_addrs, kubeadm_cidr)
    step("pool")
    ensure_cluster_information(client, env, kubeadm is not None)
    step("clusterinfo")
    ensure_default_felix_configuration(client)
    step("felixconfig")
    tunnel = None
    if tunnels:
        addrs = ensure_tunnel_addresses(client, nodename)
        tunnel = addrs["ipip"] or addrs["vxlan"]
        step("tunnel")
    write_nodename(var_lib or env.get("CALICO_VAR_LIB_DIR", "/var/lib/calico"), nodename)
    return StartupResult(nodename, ipv4, tunnel, created, steps)
