"""The verbs of the ``calico`` and ``calico-ipam`` CNI plugins.

:func:`run` is the single entry point: the standalone executables call it
in-process, and :class:`cni.server.CNIServer` calls it for requests forwarded by
the thin executables. It never reads ``os.environ``: everything comes from the
request's ``env`` and ``stdin``, and it returns ``(exit code, stdout, stderr)``.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from cni import k8s, spec
from cni.log import Log
from cni.netconf import NetConf, determine_mtu, determine_nodename, parse_netconf
from cni.spec import CNIError
from datastore import names

MTU_FILE = "/var/lib/calico/mtu"
#: seconds between looks at the nodename (and MTU) file while a request waits for calico-node's start-up
STARTUP_POLL = 0.02
DATASTORE_TIMEOUT = 3.0
WEP_DELETE_RETRIES = 5  # Calico retries the CAS delete of the WorkloadEndpoint 5 times

_clients: dict[tuple[str, ...], Any] = {}
_clients_lock = threading.Lock()


@dataclass
class Invocation:
    """Everything one verb needs."""

    plugin: str
    env: spec.Environment
    raw_env: dict[str, str]
    conf: dict[str, Any]
    version: str
    nc: NetConf
    log: Log
    timings: dict[str, float] = field(default_factory=dict)
    _pod: Any = None
    _pod_loaded: bool = False
    #: the datastore client of this invocation when it differs from client_for's (ADD: its prefetched reads)
    client: Any = None
    #: the Pod as the API served it (None: not read through the API, or no such pod)
    pod_doc: dict[str, Any] | None = None

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the block's wall time (ms) to ``timings[phase]`` (logged at the end)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] = self.timings.get(phase, 0.0) + (time.perf_counter() - t0) * 1000

    @property
    def pod_namespace(self) -> str:
        """K8S_POD_NAMESPACE from CNI_ARGS ('' without k8s args)."""
        return self.env.args.get("K8S_POD_NAMESPACE", "")

    @property
    def pod_name(self) -> str:
        """K8S_POD_NAME from CNI_ARGS ('' without k8s args)."""
        return self.env.args.get("K8S_POD_NAME", "")

    def pod(self, client: Any) -> k8s.PodInfo | None:
        """The Kubernetes Pod of this attachment (read once; None without k8s args or pod)."""
        if not self._pod_loaded:
            self._pod_loaded = True
            if self.pod_name:
                with self.timed("datastore"):
                    kube = kube_for(self.nc, client)
                    if kube is not None:
                        self.pod_doc = k8s.get_pod(kube, self.pod_namespace, self.pod_name)
                        self._pod = k8s.parse_pod(self.pod_doc) if self.pod_doc is not None else None
                if kube is None:  # the API server's etcd keys are its own: never read them
                    self.log.warning(f"pod {self.pod_namespace}/{self.pod_name}: the netconf has no "
                                     "kubernetes.kubeconfig, so the pod's labels, ports and annotations "
                                     "are not read (Calico's plugin needs one to reach the Kubernetes API)")
                elif self._pod is None:
                    self.log.warning(f"pod {self.pod_namespace}/{self.pod_name} not found in the Kubernetes "
                                     "store; no labels, ports or annotations applied")
        return self._pod

    @property
    def handle(self) -> str:
        """IPAM handle of this attachment."""
        return names.handle_id(self.nc.name, self.env.container_id)


# ---------------------------------------------------------------------------
# datastore access (imported lazily: the thin client never pays for it)


def client_for(nc: Any) -> Any:
    """The datastore client of a netconf (``datastore_type`` etcdv3 with ``etcd_endpoints``, or
    kubernetes with ``kubernetes.kubeconfig``), reused across requests in one process."""
    if nc.datastore_type == "kubernetes":
        key: tuple[str, ...] = ("kubernetes", nc.kubeconfig)
    else:
        key = ("etcdv3", *nc.etcd_endpoints)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            if nc.datastore_type == "kubernetes":
                from datastore.kdd import KubeClient

                client = KubeClient.from_env({"KUBECONFIG": nc.kubeconfig}, timeout=DATASTORE_TIMEOUT)
            else:
                from datastore import Client

                client = Client(list(nc.etcd_endpoints), timeout=DATASTORE_TIMEOUT)
            _clients[key] = client
        return client


class _ReadsOnce:
    """An etcd client whose first ``get`` of each of ``keys`` is answered from one batched
    read (the reads an ADD starts with, one round trip instead of four); every other call,
    and a second read of a key, goes to ``etcd``."""

    def __init__(self, etcd: Any, keys: list[str]) -> None:
        self._etcd = etcd
        self._kvs = dict(zip(keys, etcd.get_many(keys), strict=True))

    def get(self, key: str) -> Any:
        """The prefetched pair at ``key`` (once), else etcd's."""
        if key in self._kvs:
            return self._kvs.pop(key)
        return self._etcd.get(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._etcd, name)


def _prefetching(client: Any, keys: list[str]) -> Any:
    """A per-invocation copy of ``client`` reading ``keys`` through :class:`_ReadsOnce`."""
    import copy

    view = copy.copy(client)
    view.etcd = _ReadsOnce(client.etcd, keys)
    return view


def kube_for(nc: Any, client: Any) -> Any:
    """The Kubernetes API client the plugin reads pods with: the datastore's own in the
    Kubernetes datastore, else one from ``kubernetes.kubeconfig`` (None without one)."""
    kube = getattr(client, "kube", None)
    if kube is not None:
        return kube
    if not nc.kubeconfig:
        return None
    key = ("kube", nc.kubeconfig)
    with _clients_lock:
        kube = _clients.get(key)
        if kube is None:
            from kubeclient import Client as Kube
            from kubeclient import from_kubeconfig

            cfg = from_kubeconfig(nc.kubeconfig)
            cfg.timeout = DATASTORE_TIMEOUT
            kube = _clients[key] = Kube(cfg)
        return kube


def _namespace_annotations(inv: Invocation, client: Any) -> dict[str, str]:
    kube = kube_for(inv.nc, client)
    if kube is not None:
        return k8s.get_namespace_annotations(kube, inv.pod_namespace)
    return {}  # no kubernetes.kubeconfig: Kubernetes is not read (see Invocation.pod)


def _ipam(client: Any) -> Any:
    from ipam.ipam import IPAM

    return IPAM(client)


def _datastore_error(exc: BaseException, what: str) -> CNIError:
    """Map datastore/IPAM exceptions to CNI errors a person understands."""
    from datastore import errors
    from ipam.block import IPAMError
    from ipam.ipam import BlockLimitError, NoPools, PoolsExhausted

    if isinstance(exc, errors.DatastoreUnavailable):
        return CNIError(spec.E_TRY_AGAIN, f"{what}: the Calico datastore is unreachable: {exc}")
    if isinstance(exc, PoolsExhausted):  # the IPAM plugin's wording (calico.md section 1)
        return CNIError(spec.E_IPAM_EXHAUSTED, f"failed to request IPv4 addresses: {exc}")
    if isinstance(exc, BlockLimitError):  # libcalico-go's ErrBlockLimit, as is
        return CNIError(spec.E_IPAM_EXHAUSTED, str(exc))
    if isinstance(exc, NoPools):
        return CNIError(spec.E_IPAM_EXHAUSTED, f"{what}: {exc}")
    if isinstance(exc, (errors.DatastoreError, IPAMError)):
        return CNIError(spec.E_DATASTORE, f"{what}: {exc}")
    return CNIError(spec.E_INTERNAL, f"{what}: unexpected {type(exc).__name__}: {exc}")


class _IPAMLock:
    """Calico's best-effort host lock around IPAM (``/var/run/calico/ipam.lock``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> _IPAMLock:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError:
            self.fd = None  # best effort, as in Calico
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)


# ---------------------------------------------------------------------------
# IPAM verbs (shared by calico-ipam and the in-process path of calico)


def ipam_add(inv: Invocation, nodename: str) -> list[str]:
    """Allocate one IPv4 address for this attachment; returns ``["a.b.c.d/32"]``."""
    attrs = {"node": nodename, "timestamp": time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime())}
    if inv.pod_name:
        attrs["pod"] = inv.pod_name
        attrs["namespace"] = inv.pod_namespace
    client = inv.client or client_for(inv.nc)
    try:
        pod = inv.pod(client)
        pod_ann = pod.annotations if pod else {}
        k8s.refuse_unimplemented(pod_ann)
        wanted_ips = k8s.requested_ips(pod_ann)
        pools = inv.nc.ipam.ipv4_pools
        if inv.pod_name and not wanted_ips:
            ns_ann = {} if k8s.ANN_IPV4POOLS in pod_ann else _namespace_annotations(inv, client)
            k8s.refuse_unimplemented({}, ns_ann)
            pools = k8s.requested_pools(pod_ann, ns_ann, pools)
        with inv.timed("ipam"), _IPAMLock(inv.nc.ipam_lock_file):
            ipam = _ipam(client)
            if wanted_ips:
                ips = []
                try:
                    for ip in wanted_ips:
                        ipam.assign_ip(ip, inv.handle, attrs, nodename)
                        ips.append(ip)
                except BaseException:
                    if ips:
                        ipam.release_ips(ips)
                    raise
            else:
                ips = ipam.auto_assign(1, inv.handle, attrs, nodename, pools=pools or None)
    except CNIError:
        raise
    except Exception as exc:
        raise _datastore_error(exc, "IPAM could not assign an IPv4 address") from exc
    inv.log.info(f"IPAM assigned {', '.join(map(str, ips))} to handle {inv.handle} on {nodename}")
    return [f"{ip}/32" for ip in ips]


def ipam_del(inv: Invocation) -> list[str]:
    """Release everything of this attachment's handle (and the legacy ``<ns>.<pod>`` handle)."""
    client = client_for(inv.nc)
    freed: list[str] = []
    try:
        with inv.timed("ipam"), _IPAMLock(inv.nc.ipam_lock_file):
            ipam = _ipam(client)
            freed += [str(ip) for ip in ipam.release_by_handle(inv.handle)]
            if inv.pod_name:
                freed += [str(ip) for ip in ipam.release_by_handle(f"{inv.pod_namespace}.{inv.pod_name}")]
    except Exception as exc:
        raise _datastore_error(exc, f"IPAM could not release handle {inv.handle}") from exc
    inv.log.info(f"IPAM released {freed or 'nothing'} for handle {inv.handle}")
    return freed


def ipam_check(inv: Invocation, addresses: list[str]) -> list[str]:
    """Problems with the allocations of ``addresses`` (empty when each is held by our handle)."""
    client = client_for(inv.nc)
    problems = []
    try:
        ipam = _ipam(client)
        for cidr in addresses:
            ip = cidr.split("/")[0]
            info = ipam.ip_info(ip)
            if not info["in_use"]:
                problems.append(f"{ip} is not allocated in IPAM")
            elif info["handle_id"] != inv.handle:
                problems.append(f"{ip} is allocated to handle {info['handle_id']}, not {inv.handle}")
    except Exception as exc:
        raise _datastore_error(exc, "IPAM check") from exc
    return problems


def _exec_delegate(inv: Invocation, command: str) -> dict[str, Any] | None:
    """Run a non-calico IPAM plugin (e.g. host-local) from CNI_PATH, as libcni's delegate does."""
    itype = inv.nc.ipam.type
    binary = next((os.path.join(d, itype) for d in inv.env.path if os.access(os.path.join(d, itype), os.X_OK)), None)
    if binary is None:
        raise CNIError(spec.E_INVALID_CONFIG, f"IPAM plugin {itype!r} not found in CNI_PATH {':'.join(inv.env.path)}")
    env = dict(inv.raw_env, CNI_COMMAND=command)
    proc = subprocess.run([binary], input=json.dumps(inv.conf).encode(), env=env, capture_output=True, timeout=120)
    if proc.returncode != 0:
        try:
            err = json.loads(proc.stdout)
            raise CNIError(int(err.get("code", spec.E_INTERNAL)), f"IPAM plugin {itype}: {err.get('msg', '')}",
                           err.get("details", ""))
        except (ValueError, AttributeError):
            raise CNIError(spec.E_INTERNAL, f"IPAM plugin {itype} failed: {proc.stderr.decode(errors='replace')[-500:]}") from None
    if command != "ADD":
        return None
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise CNIError(spec.E_INTERNAL, f"IPAM plugin {itype} printed no JSON result") from None


def _allocate(inv: Invocation, nodename: str) -> list[str]:
    if inv.nc.ipam.type == "calico-ipam":
        return ipam_add(inv, nodename)
    res = _exec_delegate(inv, "ADD") or {}
    addrs = [ip["address"] for ip in res.get("ips", []) if ":" not in ip.get("address", "")]
    if not addrs:
        raise CNIError(spec.E_INTERNAL, f"IPAM plugin {inv.nc.ipam.type} returned no IPv4 address")
    return [a.split("/")[0] + "/32" for a in addrs]  # narrowed to /32 as Calico does


def _release(inv: Invocation) -> None:
    if inv.nc.ipam.type == "calico-ipam":
        ipam_del(inv)
    else:
        _exec_delegate(inv, "DEL")


# ---------------------------------------------------------------------------
# calico verbs


def _nodename(inv: Invocation) -> str:
    return determine_nodename(inv.nc, socket.gethostname())


def _host_ifname(inv: Invocation) -> str:
    prefix = names.interface_prefix(inv.raw_env.get("FELIX_INTERFACEPREFIX"))
    return names.veth_name(inv.pod_namespace or None, inv.pod_name or None, inv.env.container_id, prefix)


def _wep_ident(inv: Invocation, nodename: str) -> tuple[str, str]:
    orchestrator, workload = ("k8s", inv.pod_name) if inv.pod_name else ("cni", inv.env.container_id)
    name = names.workload_endpoint_name(nodename, orchestrator, workload, inv.env.ifname)
    return name, inv.pod_namespace or "default"


def _check_ready(client: Any) -> None:
    """Calico refuses to work while ClusterInformation says the datastore is not ready."""
    from datastore import errors

    try:
        ci = client.get("ClusterInformation", "default")
    except errors.NotFound:
        return  # not initialised by calico-node yet: allowed (documented in docs/cni.md)
    if ci.spec.datastore_ready is False:
        raise CNIError(spec.E_TRY_AGAIN, "Calico is currently not ready to process requests "
                       "(ClusterInformation default has datastoreReady=false)")


def _reuse_addresses(inv: Invocation, client: Any, wep_name: str, wep_ns: str) -> list[str]:
    """A repeated ADD of the same container keeps the addresses its handle already holds."""
    from datastore import errors

    if getattr(client, "kube", None) is not None and inv.pod_name:
        # the Kubernetes datastore: the WorkloadEndpoint is the pod this ADD has just read
        from datastore import derived

        doc = inv.pod_doc
        if doc is None or not derived.is_workload(doc):
            return []
        wep = derived.pod_to_workload_endpoint(doc, client.interface_prefix)
        if wep.metadata.name != wep_name:
            return []
    else:
        try:
            wep = client.get("WorkloadEndpoint", wep_name, wep_ns)
        except errors.NotFound:
            return []
    if wep.spec.container_id != inv.env.container_id or not wep.spec.ip_networks:
        return []
    if ipam_check(inv, list(wep.spec.ip_networks)):
        return []
    return list(wep.spec.ip_networks)


def cmd_add(inv: Invocation) -> dict[str, Any]:
    """ADD: allocate, plumb, write the WorkloadEndpoint; undo everything on failure."""
    from cni import dataplane
    from datastore import errors
    from datastore.resources import ClusterInformation, EndpointPort, Metadata, WorkloadEndpoint

    nodename = _nodename(inv)
    client = client_for(inv.nc)
    wep_name, wep_ns = _wep_ident(inv, nodename)
    try:
        with inv.timed("datastore"):
            if inv.nc.datastore_type != "kubernetes":  # etcd: the first reads in one round trip
                reads = [ClusterInformation.key_for("default"), WorkloadEndpoint.key_for(wep_name, wep_ns)]
                client = inv.client = _prefetching(client, reads)
            _check_ready(client)
        pod_mac = (inv.pod(client) or k8s.PodInfo()).annotations.get(k8s.ANN_HWADDR) or None
        with inv.timed("datastore"):
            reused = _reuse_addresses(inv, client, wep_name, wep_ns) if inv.nc.ipam.type == "calico-ipam" else []
    except CNIError:
        raise
    except Exception as exc:
        raise _datastore_error(exc, "reading the datastore") from exc
    mtu = determine_mtu(inv.nc, MTU_FILE)
    host_if = _host_ifname(inv)
    addresses = reused or _allocate(inv, nodename)
    address = addresses[0].split("/")[0]
    try:
        try:
            with inv.timed("netlink"):
                if reused:  # rebuild the plumbing of a repeated ADD from scratch
                    dataplane.teardown(inv.env.ifname, inv.env.netns)
                plumbing = dataplane.setup(host_if, inv.env.ifname, inv.env.netns, address, mtu, pod_mac=pod_mac,
                                           allow_ip_forwarding=inv.nc.allow_ip_forwarding,
                                           queues=inv.nc.num_queues)
        except dataplane.DataplaneError as exc:
            raise CNIError(spec.E_DATAPLANE, str(exc)) from None
        inv.log.info(f"plumbed {host_if} <-> {inv.env.ifname}@{inv.env.netns} for {address} (mtu {mtu})")
        pod = inv.pod(client)
        if inv.pod_name:
            labels = k8s.wep_labels(pod, wep_ns)
            profiles = k8s.profiles(wep_ns, pod)
        else:
            labels = {"projectcalico.org/namespace": wep_ns, "projectcalico.org/orchestrator": "cni"}
            profiles = [f"kns.{wep_ns}"]
        ports = [EndpointPort(name=p["name"], protocol=p["protocol"], port=p["port"]) for p in (pod.ports if pod else [])]
        # the Kubernetes datastore patches the pod: its UID is the write's precondition
        pod_uid = ((inv.pod_doc or {}).get("metadata") or {}).get("uid") if getattr(client, "kube", None) else None
        wep = WorkloadEndpoint(
            metadata=Metadata(name=wep_name, namespace=wep_ns, labels=labels, uid=pod_uid),
            spec=WorkloadEndpoint.Spec(
                orchestrator="k8s" if inv.pod_name else "cni",
                node=nodename,
                pod=inv.pod_name,
                workload="" if inv.pod_name else inv.env.container_id,
                endpoint=inv.env.ifname,
                container_id=inv.env.container_id,
                ip_networks=list(addresses),
                profiles=profiles,
                interface_name=host_if,
                mac=plumbing.pod.mac,
                ports=ports,
                service_account_name=pod.service_account if pod else "",
            ),
        )
        try:
            with inv.timed("datastore"):
                try:
                    client.create(wep)  # one round trip; a repeated ADD replaces its WEP below
                except errors.AlreadyExists:
                    client.apply(wep)
        except Exception as exc:
            try:
                dataplane.teardown(inv.env.ifname, inv.env.netns)
            except dataplane.DataplaneError as undo:
                inv.log.error(f"removing {host_if} after the failed WorkloadEndpoint write also failed: {undo}")
            raise _datastore_error(exc, f"writing WorkloadEndpoint {wep_ns}/{wep_name}") from exc
        inv.log.info(f"wrote WorkloadEndpoint {wep_ns}/{wep_name}")
    except BaseException:
        try:
            _release(inv)
        except Exception as exc:  # the original error matters more; log the cleanup failure
            inv.log.error(f"releasing {addresses} after a failed ADD also failed: {exc}")
        raise
    # v3.28.1's result (k8s.go "Add the interface created above to the CNI result"): the host
    # veth by name only, the /32 addresses without an interface index, no gateway, no routes
    result = spec.Result(interfaces=[spec.Interface(host_if)], ips=[spec.IPConfig(a) for a in addresses])
    return result.to_dict(inv.version)


def cmd_del(inv: Invocation) -> None:
    """DEL: idempotent; remove the pod link, the WEP (if ours) and the allocation."""
    from cni import dataplane
    from datastore import errors

    nodename = _nodename(inv)
    client = client_for(inv.nc)
    wep_name, wep_ns = _wep_ident(inv, nodename)
    try:
        # Delete only the version whose containerID we checked (CAS on its revision, re-read
        # on conflict, as Calico's CmdDelK8s): a new sandbox's ADD may rewrite it meanwhile.
        for _ in range(WEP_DELETE_RETRIES):
            with inv.timed("datastore"):
                try:
                    wep = client.get("WorkloadEndpoint", wep_name, wep_ns)
                except errors.NotFound:
                    break
            if wep.spec.container_id != inv.env.container_id:
                inv.log.info(f"kept WorkloadEndpoint {wep_ns}/{wep_name}: it belongs to container "
                             f"{wep.spec.container_id}, not {inv.env.container_id}")
                break
            try:
                with inv.timed("datastore"):
                    client.delete("WorkloadEndpoint", wep_name, wep_ns, resource_version=wep.metadata.resource_version,
                                  uid=wep.metadata.uid)
                inv.log.info(f"deleted WorkloadEndpoint {wep_ns}/{wep_name}")
                break
            except errors.NotFound:
                break
            except errors.Conflict:
                continue
        else:
            raise CNIError(spec.E_DATASTORE, f"WorkloadEndpoint {wep_ns}/{wep_name} kept changing; "
                           f"gave up deleting it after {WEP_DELETE_RETRIES} attempts")
    except CNIError:
        raise
    except Exception as exc:
        raise _datastore_error(exc, "DEL could not reach the WorkloadEndpoint") from exc
    try:
        with inv.timed("netlink"):
            dataplane.teardown(inv.env.ifname, inv.env.netns)
    except dataplane.DataplaneError as exc:
        raise CNIError(spec.E_DATAPLANE, str(exc)) from None
    _release(inv)


def cmd_check(inv: Invocation) -> None:
    """CHECK: compare prevResult with the kernel, IPAM and the WorkloadEndpoint."""
    from cni import dataplane
    from datastore import errors

    if inv.nc.prev_result is None:
        raise CNIError(spec.E_INVALID_CONFIG, "CHECK needs prevResult in the network configuration")
    prev = spec.Result.from_dict(inv.nc.prev_result)
    nodename = _nodename(inv)
    # Calico's result lists only the host veth and gives no interface index: the pod side
    # is CNI_IFNAME in CNI_NETNS, and every IPv4 address of the result is the pod's
    addresses = [ip.address for ip in prev.ips if ":" not in ip.address]
    if not addresses:
        raise CNIError(spec.E_CHECK_FAILED, f"prevResult has no IPv4 address for {inv.env.ifname}")
    host_if = _host_ifname(inv)
    if prev.interfaces and host_if not in [i.name for i in prev.interfaces]:
        raise CNIError(spec.E_CHECK_FAILED, f"prevResult does not list the host interface {host_if}")
    problems = []
    client = client_for(inv.nc)
    wep_name, wep_ns = _wep_ident(inv, nodename)
    pod_mac = ""
    try:
        wep = client.get("WorkloadEndpoint", wep_name, wep_ns)
        pod_mac = wep.spec.mac or ""
        if wep.spec.container_id != inv.env.container_id:
            problems.append(f"WorkloadEndpoint {wep_ns}/{wep_name} belongs to container {wep.spec.container_id}")
        if sorted(wep.spec.ip_networks) != sorted(a.split("/")[0] + "/32" for a in addresses):
            problems.append(f"WorkloadEndpoint {wep_ns}/{wep_name} has {wep.spec.ip_networks}, prevResult {addresses}")
        if wep.spec.interface_name != host_if:
            problems.append(f"WorkloadEndpoint {wep_ns}/{wep_name} names interface {wep.spec.interface_name}")
    except errors.NotFound:
        problems.append(f"WorkloadEndpoint {wep_ns}/{wep_name} is missing")
    except Exception as exc:
        raise _datastore_error(exc, "CHECK could not read the WorkloadEndpoint") from exc
    for cidr in addresses:
        problems += dataplane.check(host_if, inv.env.ifname, inv.env.netns, cidr.split("/")[0], pod_mac)
    if inv.nc.ipam.type == "calico-ipam":
        problems += ipam_check(inv, addresses)
    if problems:
        raise CNIError(spec.E_CHECK_FAILED, "CHECK failed: " + "; ".join(problems))


def cmd_status(inv: Invocation) -> None:
    """STATUS: error 50 unless the datastore answers and a usable pool exists."""
    try:
        client = client_for(inv.nc)
        try:
            _check_ready(client)
        except CNIError as exc:
            raise CNIError(spec.E_PLUGIN_NOT_AVAILABLE, f"plugin not available: {exc.msg}") from None
        ipam = _ipam(client)
        usable = [p for p in ipam.pools() if not p.disabled and "Workload" in p.allowed_uses]
        if inv.nc.ipam.ipv4_pools:
            want = set(inv.nc.ipam.ipv4_pools)
            usable = [p for p in usable if p.name in want or str(p.cidr) in want]
    except CNIError:
        raise
    except Exception as exc:
        raise CNIError(spec.E_PLUGIN_NOT_AVAILABLE, f"plugin not available: cannot read IP pools from the "
                       f"datastore at {','.join(inv.nc.etcd_endpoints)}: {exc}") from exc
    if not usable:
        raise CNIError(spec.E_PLUGIN_NOT_AVAILABLE, "plugin not available: no usable IPv4 pool "
                       "(none exists, or all are disabled / not for workloads)")


def cmd_gc(inv: Invocation) -> None:
    """GC: release this node's allocations (and WEPs) of this network whose attachment is not valid."""
    from datastore import errors

    valid = {a["containerID"] for a in inv.nc.valid_attachments or []}
    nodename = _nodename(inv)
    prefix = inv.nc.name + "."
    client = client_for(inv.nc)
    try:
        ipam = _ipam(client)
        stale: set[str] = set()
        for block in ipam.blocks():
            for _ip, attr in block.allocated():
                hid = attr.handle_id or ""
                if (hid.startswith(prefix) and (attr.secondary or {}).get("node") == nodename
                        and hid[len(prefix):] not in valid):
                    stale.add(hid)
        with _IPAMLock(inv.nc.ipam_lock_file):
            for hid in sorted(stale):
                freed = ipam.release_by_handle(hid)
                inv.log.info(f"GC released {[str(i) for i in freed]} of stale handle {hid}")
        if inv.plugin != "calico":
            return  # calico-ipam owns only the allocations
        for wep in client.list("WorkloadEndpoint"):
            if wep.spec.node == nodename and wep.spec.container_id and wep.spec.container_id not in valid:
                try:
                    client.delete("WorkloadEndpoint", wep.metadata.name, wep.metadata.namespace)
                    inv.log.info(f"GC deleted WorkloadEndpoint {wep.metadata.namespace}/{wep.metadata.name}")
                except errors.NotFound:
                    pass
                _gc_host_veth(inv, wep.spec.interface_name)
    except Exception as exc:
        raise _datastore_error(exc, "GC") from exc


def _gc_host_veth(inv: Invocation, ifname: str) -> None:
    """Remove the host veth of a stale attachment (the WEP names the last ADD's, so it is the stale one)."""
    from kernel import KernelError
    from kernel.netlink import Netlink

    if not ifname:
        return
    with Netlink() as nl:
        link = nl.link(ifname)
        if link is None or link.kind != "veth":
            return
        try:
            nl.link_del(link.index)
            inv.log.info(f"GC deleted host interface {ifname}")
        except KernelError as exc:
            inv.log.warning(f"GC could not delete {ifname}: {exc.strerror}")


def ipam_plugin_add(inv: Invocation) -> dict[str, Any]:
    """calico-ipam ADD: the result carries only the addresses."""
    addresses = ipam_add(inv, _nodename(inv))
    return spec.Result(ips=[spec.IPConfig(a) for a in addresses]).to_dict(inv.version)


def ipam_plugin_check(inv: Invocation) -> None:
    """calico-ipam CHECK: prevResult's addresses must be held by our handle."""
    if inv.nc.prev_result is None:
        raise CNIError(spec.E_INVALID_CONFIG, "CHECK needs prevResult in the network configuration")
    prev = spec.Result.from_dict(inv.nc.prev_result)
    problems = ipam_check(inv, [ip.address for ip in prev.ips if ":" not in ip.address])
    if problems:
        raise CNIError(spec.E_CHECK_FAILED, "CHECK failed: " + "; ".join(problems))


# ---------------------------------------------------------------------------
# entry point


def calico_node_started(nc: NetConf, wait: float = 0.0, need_mtu: bool = False, mtu_file: str = MTU_FILE) -> float:
    """Calico's guard at the start of the calico plugin's ADD and DEL: unless
    ``nodename_file_optional``, the nodename file (``nodename_file``, /var/lib/calico/nodename),
    which calico-node writes at the end of its start-up, must exist; else the error Calico
    gives (code 999, as CNI's skel reports a plain error), and the runtime retries the sandbox.
    The conflist is written before it (install-cni runs first), so a pod scheduled while
    calico-node starts meets this.

    ``wait`` > 0 (the CNI server, a child of that calico-node: :mod:`cni.server`): a request
    that finds the file missing is held until it appears and then, with ``need_mtu`` (an ADD
    whose netconf MTU is 0, auto), until Felix has written the MTU file too (else the veth
    would get 1500 in an IPIP or VXLAN lab), at most ``wait`` seconds in all; a request that
    finds the file there never waits. Returns the seconds waited."""
    if nc.nodename_file_optional:
        return 0.0
    path = nc.nodename_file or "/var/lib/calico/nodename"
    try:
        os.stat(path)
        return 0.0
    except OSError as exc:
        missing = exc
    t0 = time.monotonic()
    deadline = t0 + wait
    while True:
        if time.monotonic() >= deadline:
            reason = os.strerror(missing.errno) if missing.errno else str(missing)
            raise CNIError(spec.E_INTERNAL, f"stat {path}: {reason[:1].lower()}{reason[1:]}: check that the "
                           "calico/node container is running and has mounted /var/lib/calico/")
        time.sleep(STARTUP_POLL)
        try:
            os.stat(path)
            break
        except OSError as exc:
            missing = exc
    while need_mtu and not os.path.exists(mtu_file) and time.monotonic() < deadline:
        time.sleep(STARTUP_POLL)
    return time.monotonic() - t0


def run(plugin: str, env: dict[str, str], stdin: bytes, startup_wait: float = 0.0,
        queued_ms: float | None = None,
        server: Callable[[], tuple[int, bytes, bytes] | None] | None = None) -> tuple[int, str, str]:
    """Execute one CNI invocation of ``plugin`` ("calico" or "calico-ipam").

    ``startup_wait``: how long an ADD or DEL of the calico plugin may wait for calico-node's
    start-up (:func:`calico_node_started`; 0, the executables in-process: not at all).
    ``queued_ms``: how long the request waited for one of the CNI server's workers (None: not
    served by one); the log's last line for the request says it.
    ``server`` (the executables in-process, :mod:`cni.main`): asked once more, after the
    checks and before the imports the work needs, to hand the request to calico-node's CNI
    server; its answer (exit code, stdout, stderr) is returned as it is. An executable that
    found no server may have started just before it: calico-node starts the server before it
    writes the nodename file the check above waits for, so once that passes the server is
    most likely there, and the imports (~0.4 s idle, 15 s seen on a node of a saturated
    50-node install) are not paid.
    Returns (exit code, stdout text, stderr text). Never raises.
    """
    queued = f", after {queued_ms:.0f} ms queued for a CNI server worker" if queued_ms is not None else ""
    log = Log()
    version = spec.LATEST
    try:
        cenv = spec.parse_env(env)
        if cenv.command == "VERSION":
            try:
                conf = spec.parse_stdin(stdin) if stdin.strip() else None
            except CNIError:
                conf = None
            return 0, json.dumps(spec.version_result(conf)), ""
        conf = spec.parse_stdin(stdin)
        if isinstance(conf.get("cniVersion"), str) and conf["cniVersion"] in spec.SUPPORTED_VERSIONS:
            version = conf["cniVersion"]
        version = spec.check_version(conf, cenv.command)
        nc = parse_netconf(conf, expect_type="calico" if plugin == "calico" else None, env=env)
        if plugin == "calico-ipam" and nc.ipam.type != "calico-ipam":
            raise CNIError(spec.E_INVALID_CONFIG, f"invalid network configuration: 'ipam.type' is {nc.ipam.type!r}, "
                           "this plugin is 'calico-ipam'")
        log.configure(nc.log_file_path, nc.log_level)
        log.prefix = f"{plugin} {cenv.command} {cenv.container_id[:12]} "
        inv = Invocation(plugin, cenv, env, conf, version, nc, log)
        if plugin == "calico" and cenv.command in ("ADD", "DEL"):  # before the imports: cheap to refuse
            waited = calico_node_started(nc, startup_wait, need_mtu=cenv.command == "ADD" and not nc.mtu)
            if waited:
                log.info(f"waited {waited * 1000:.0f} ms for calico-node's start-up ({nc.nodename_file})")
        if server is not None:
            answer = server()
            if answer is not None:
                code, out_b, err_b = answer
                return code, out_b.decode("utf-8", "surrogateescape"), err_b.decode("utf-8", "surrogateescape")
        started = time.monotonic()
        with inv.timed("imports"):  # free in the warm server; the cold path pays it here
            import cni.dataplane  # noqa: F401
            import datastore.client  # noqa: F401
            import ipam.ipam  # noqa: F401
        out = _dispatch(inv)
        phases = " ".join(f"{k}={v:.1f}" for k, v in sorted(inv.timings.items()))
        log.info(f"done in {(time.monotonic() - started) * 1000:.1f} ms (ms: {phases}){queued}")
        return 0, (spec.print_json(out) if out is not None else ""), log.stderr_text()
    except CNIError as exc:
        log.error(f"error {exc.code}: {exc.msg}{queued}")
        return 1, spec.error_json(exc, version), log.stderr_text()
    except Exception as exc:
        log.error("internal error: " + "".join(traceback.format_exception(exc)))
        err = CNIError(spec.E_INTERNAL, f"internal error in {plugin}: {type(exc).__name__}: {exc}")
        return 1, spec.error_json(err, version), log.stderr_text()


def _dispatch(inv: Invocation) -> dict[str, Any] | None:
    cmd = inv.env.command
    if inv.plugin == "calico-ipam":
        if cmd == "ADD":
            return ipam_plugin_add(inv)
        if cmd == "DEL":
            ipam_del(inv)
            return None
        if cmd == "CHECK":
            ipam_plugin_check(inv)
            return None
    else:
        if cmd == "ADD":
            return cmd_add(inv)
        if cmd == "DEL":
            cmd_del(inv)
            return None
        if cmd == "CHECK":
            cmd_check(inv)
            return None
    if cmd == "STATUS":
        cmd_status(inv)
        return None
    if cmd == "GC":
        cmd_gc(inv)
        return None
    raise CNIError(spec.E_INVALID_ENV, f"unsupported CNI_COMMAND {cmd}")

