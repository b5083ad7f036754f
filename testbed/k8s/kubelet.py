"""The kubelet of one node: ``python -m testbed.k8s.kubelet --node NAME --kubeconfig FILE``.

An API client (list+watch through :mod:`testbed.k8s.apiclient`): it registers its Node
(with the ``node.kubernetes.io/not-ready:NoSchedule`` taint while it is NotReady), reports
it ``NotReady`` (NetworkPluginNotReady, "cni config uninitialized") until a CNI config exists
in the config directory, then ``Ready``; it watches the pods bound to it
(``spec.nodeName=<node>``) and for each creates the sandbox netns ``cni-<uuid>``, runs the
CNI chain (ADD; DEL on delete), makes the pod's volumes (ServiceAccount token, ConfigMaps,
...) and ``/etc/resolv.conf`` (cluster DNS), starts the image's workload in the sandbox and
writes the pod's status (``pods/<p>/status``) and Events. A Terminating pod's containers are
stopped within its grace period, then the pod is deleted with grace 0. Static pods
(``--pod-manifest-path``) run without the API server and appear as mirror pods.

Once its Node object no longer exists (``kubectl delete node``; confirmed by a GET), the
kubelet runs no pod for it: it stops the containers of every pod bound to the node and
reports the pod ``Failed`` (reason ``NodeNotFound``), starts none, and restarts none; the
pod's sandbox, and with it its IP, stays until the pod is deleted (pod GC), when CNI DEL
releases the IP. A kubelet restarted later registers the Node again and never starts a pod
in a terminal phase (Failed, Succeeded). The kubelet
API on :10250 (logs, exec, port-forward) is served by :mod:`testbed.k8s.kubeletapi`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor

from datastore.duration import parse_duration
from kubeclient import AlreadyExists, KubeError, NotFound
from testbed.k8s import cni, cri, imagebuild, images, runtime
from testbed.k8s.apiclient import Cluster, client_from, now_iso
from testbed.k8s.csivolumes import CsiDrivers, CsiVolumeError, csi_volumes
from testbed.k8s.podstatus import (
    NETWORK_NOT_READY_MESSAGE,
    ContainerInfo,
    default_node_info,
    node_conditions,
    node_object,
    pod_status,
)
from testbed.k8s.probe import FIELDS, HOOKS, READINESS, ProbeError, kill_message, parse_hook
from testbed.k8s.probehandlers import Prober, run_hook
from testbed.k8s.runtime import PodState
from testbed.k8s.runtimes import make_runtime
from testbed.k8s.volumes import VolumeError, VolumeMaker, resolv_conf, token_request
from testbed.poll import deadline_scale

log = logging.getLogger("kubelet")

ANNOTATION_NETNS = "calicolab.io/netns"
ANNOTATION_PIDS = "calicolab.io/pids"
ANNOTATION_RUNTIME = "calicolab.io/runtime"
NOT_READY_TAINT = {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}
DEL_ATTEMPTS = 3
NODE_STATUS_UPDATE = 10.0  # seconds between checks that the Node still says what we see
NODE_STATUS_RETRY = 0.5  # seconds before a failed Node status write is tried again
# registration retries while the API server is not up (the kubelet's registerWithAPIServer:
# 100 ms doubling to 7 s; here 50 ms doubling to 0.5 s: in a lab the API server starts beside
# the kubelets, and its first answer is tens of ms after their first refused connection)
REGISTER_RETRY_FIRST = 0.05
REGISTER_RETRY_MAX = 0.5
GONE_RECHECK = 1.0  # seconds before a pod missing from the cache but not confirmed gone is checked again
NODE_GONE_REASON = "NodeNotFound"  # the reason of a pod the kubelet stopped because its Node is gone
LEASE_DURATION = 40  # seconds (the kubelet's nodeLeaseDurationSeconds); renewed every quarter of it
#: CPU priority of pods of priority class system-node-critical (the control plane's static
#: pods): a real kubelet gives them CPU weight from their requests, and the control plane runs
#: on machines of its own; calicolab's pods have no cgroups of their own and share one machine
#: with every node, so they get a nice value instead, which the zygote gives their session too
#: (kernel autogroups: docs/kubernetes.md). At -10 a 50-node install's API server still waited
#: on the run queue about as long as it ran (docs/performance.md)
CRITICAL_NICE = -20
#: a pod's start reads each ConfigMap/Secret its containers' env names once: its init containers
#: and containers started one after the other reuse the read for this long (the kubelet's object
#: manager keeps them cached for a running pod), and an init container that failed reads again
POD_READ_TTL = 30.0
#: a container that could not be created (its env's ConfigMap or a volume's Secret not there
#: yet, its ServiceAccount token refused) is tried again after this many seconds, doubling up
#: to START_RETRY_MAX: the kubelet's volume manager retries a mount from 0.5 s doubling, and its
#: pod worker syncs a pod whose start failed again after 10 s
START_RETRY_FIRST, START_RETRY_MAX = 1.0, 10.0
#: an image that could not be pulled: ImagePullBackOff, 10 s doubling to 5 min (the kubelet's
#: image back-off)
IMAGE_RETRY_FIRST, IMAGE_RETRY_MAX = 10.0, 300.0


def detect_node_ip() -> str:
    """The node's InternalIP: the first global IPv4 address, eth0 first."""
    out = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True).stdout
    links = json.loads(out or "[]")
    links.sort(key=lambda link: link.get("ifname") != "eth0")
    for link in links:
        if link.get("ifname") == "lo":
            continue
        for a in link.get("addr_info") or []:
            if a.get("scope") == "global" and a.get("local"):
                return a["local"]
    raise SystemExit("kubelet: cannot find the node's IPv4 address (use --node-ip)")


def _os_image() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "Linux"


def _pull_policy(c: dict) -> str:
    policy = c.get("imagePullPolicy")
    if policy:
        return policy
    image = c.get("image", "")
    tag = image.rsplit("/", 1)[-1]
    return "Always" if "@" not in image and (":" not in tag or tag.endswith(":latest")) else "IfNotPresent"


#: seconds between the checks of the pods' processes (exits, restarts, late listeners), the
#: static pod manifests and the Lease (the real kubelet's PLEG relists every 1 s)
PROC_CHECK = 0.5


class Kubelet:
    """One node's kubelet; :meth:`run` until ``stop`` is set."""

    def __init__(self, cluster: Cluster, node: str, node_ip: str, cni_conf_dir: str = "/etc/cni/net.d",
                 cni_bin_dirs: list[str] | None = None, netns_dir: str = "/run/netns",
                 root_dir: str = "/var/lib/kubelet", control_plane: bool = False, workers: int = 8,
                 node_status_update: float = NODE_STATUS_UPDATE, cluster_dns: list[str] | None = None,
                 cluster_domain: str = "cluster.local", etc_netns_dir: str | None = None,
                 pod_manifest_path: str | None = None, container_runtime: cri.ContainerRuntime | None = None,
                 join_after: str = ""):
        self.cluster = cluster
        self.api = cluster.client
        self.cri = container_runtime  # None: pods are processes in a netns (the netns runtime)
        self.node = node
        self.node_ip = node_ip
        self.cni_conf_dir = cni_conf_dir
        self.cni_watch = cni.ConfigWatch(cni_conf_dir)
        self.runner = cni.Runner(cni_bin_dirs or ["/opt/cni/bin"])
        self.netns_dir = netns_dir
        self.root_dir = root_dir
        self.control_plane = control_plane
        self.cluster_dns = cluster_dns or []
        self.cluster_domain = cluster_domain
        self.etc_netns_dir = etc_netns_dir
        self.lab = os.environ.get("CALICOLAB_LAB", "")
        self.join_after = join_after  # register only once this Node exists (kubeadm join after init)
        self.network_ready: bool | None = None
        self.registered = False
        self.next_status_sync = 0.0  # monotonic time of the next Node status check
        self.lease: dict | None = None  # the node's Lease as last written
        self.next_lease = 0.0  # monotonic time of the next Lease renewal
        self.node_status_update = node_status_update
        self.conf: cni.NetworkConfig | None = None
        self.states: dict[str, PodState] = {}
        self.procs: dict[tuple[str, str], subprocess.Popen] = {}
        self.exits: dict[tuple[str, str], tuple[int, str]] = {}
        self.restart_at: dict[tuple[str, str], float] = {}
        #: running containers with a port that did not listen within the start-up window: uid ->
        #: {container: port}; re-checked every pass, the pod turns Ready when all of them listen
        self.unready: dict[str, dict[str, int]] = {}
        self.warned_not_run: set[tuple[str, str]] = set()  # (pod UID, container) told about lifecycle hooks
        #: the probes (testbed.k8s.probe): workers start with a container, results come back as
        #: pods whose status must be written again and containers to restart (liveness/startup)
        self.prober = Prober(self)
        self.probe_dirty: set[str] = set()
        self.probe_kills: dict[tuple[str, str], tuple[str, int | None]] = {}
        self.busy: set[str] = set()
        self.failures: dict[str, tuple[float, int, str]] = {}
        #: pods missing from the cache whose deletion the API server has not confirmed: uid ->
        #: when to ask again (a list the API server got wrong must never stop a running pod)
        self.unconfirmed: dict[str, float] = {}
        #: containers that could not be created: (uid, container) -> (waiting reason, message,
        #: monotonic time of the next try, tries so far); the reason is shown in the pod's status
        #: until a retry (:meth:`_retry_start`) starts the container
        self.start_failures: dict[tuple[str, str], tuple[str, str, float, int]] = {}
        self.node_gone = False  # the API server confirmed that this kubelet's Node was deleted
        self.node_recheck = 0.0  # monotonic time to ask again whether the Node exists (0: on its events)
        self.refused: set[str] = set()  # pods stopped (and reported Failed) because the Node is gone
        self.ready_written: dict[str, bool] = {}  # uid -> the Ready status this kubelet last wrote
        self.init_infos: dict[str, list[ContainerInfo]] = {}  # uid -> its init containers' status
        self.init_procs: dict[tuple[str, str], subprocess.Popen] = {}
        #: (pod uid, kind, namespace, name) -> (object or None, when read): :meth:`_pod_read`
        self.pod_reads: dict[tuple[str, str, str, str], tuple[dict | None, float]] = {}
        #: (namespace, sa, audiences, seconds, pod uid) -> (token, when issued): :meth:`_token`
        self.tokens: dict[tuple, tuple[str, float]] = {}
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pod")
        # status writes a pod's setup does not wait for (its ContainerCreating status, written while
        # its sandbox and network are made, as the kubelet's status manager writes in the background);
        # the pod's next status write waits for them, so the statuses land in order
        self.status_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="status")
        self.status_pending: dict[str, Future] = {}
        self.prepared: dict[str, Future] = {}  # uid -> its containers' volume mounts, made during CNI ADD
        self.volumes = VolumeMaker(self._get_for_volume, self._token, node, node_ip, csi=self._csi_target)
        # CSI drivers register through <root-dir>/plugins_registry (testbed.k8s.pluginwatcher)
        self.csi = CsiDrivers(cluster, node)
        self.shared_root = False  # root_dir made a shared mount (for mountPropagation: Bidirectional)
        self.static = None
        if pod_manifest_path:
            from testbed.k8s.staticpods import StaticPods

            self.static = StaticPods(pod_manifest_path, node)

    # --- node ------------------------------------------------------------------------------
    def node_object(self) -> dict:
        """The Node this kubelet registers."""
        labels = {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                  "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux"}
        taints = []
        if self.control_plane:
            labels["node-role.kubernetes.io/control-plane"] = ""
            labels["node.kubernetes.io/exclude-from-external-load-balancers"] = ""
            taints.append({"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"})
        if not self.network_ready:
            taints.append(dict(NOT_READY_TAINT))
        cpus = os.cpu_count() or 1
        mem_kib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024
        capacity = {"cpu": str(cpus), "memory": f"{mem_kib}Ki", "pods": "110", "ephemeral-storage": "0"}
        try:
            with open("/etc/machine-id") as f:
                machine_id = f.read().strip()
        except OSError:
            machine_id = ""
        info = default_node_info(os.uname().release, _os_image(), machine_id)
        if self.cri is not None and self.cri.name == "docker":
            info["containerRuntimeVersion"] = self.cri.version()
        return node_object(self.node, self.node_ip, labels, taints, info, capacity, bool(self.network_ready),
                           now_iso())

    def register(self) -> None:
        """Create this node's Node object (or bring an existing one up to date)."""
        self.conf = self.cni_watch.current()
        self.network_ready = self.conf is not None
        obj = self.node_object()
        self.next_status_sync = time.monotonic() + self.node_status_update
        try:
            created = self.api.create(obj)
            log.info("registered node %s (%s), network ready: %s", self.node, self.node_ip, self.network_ready)
            self.cluster.event(created, "Starting", "Starting kubelet.")
        except AlreadyExists:
            def refresh(n: dict) -> None:
                n["metadata"].setdefault("labels", {}).update(obj["metadata"]["labels"])

            self.cluster.mutate("Node", self.node, None, refresh)
            self.cluster.mutate("Node", self.node, None, lambda n: self._set_status(n, obj["status"]),
                                sub="status")
        self.registered = True
        self._sync_taint()

    def _set_status(self, n: dict, status: dict) -> None:
        prev = (n.get("status") or {}).get("conditions")
        n["status"] = dict(status, conditions=node_conditions(bool(self.network_ready), now_iso(), prev))

    def _sync_taint(self) -> None:
        """The not-ready taint follows the Ready condition the kubelet reports."""
        ready = bool(self.network_ready)

        def put(n: dict) -> bool:
            spec = n.setdefault("spec", {})
            taints = [t for t in spec.get("taints") or [] if t.get("key") != NOT_READY_TAINT["key"]
                      or t.get("effect") != NOT_READY_TAINT["effect"]]
            if not ready:
                taints.append(dict(NOT_READY_TAINT, timeAdded=now_iso()))
            same = [(t.get("key"), t.get("effect")) for t in taints] == \
                [(t.get("key"), t.get("effect")) for t in spec.get("taints") or []]
            if same:
                return False
            if taints:
                spec["taints"] = taints
            else:
                spec.pop("taints", None)
            return True

        self.cluster.mutate("Node", self.node, None, put)

    def check_network(self) -> bool:
        """Re-read the CNI config dir; make the Node's Ready condition follow it.
        Returns True if readiness changed.

        The Node is written on a change and then every :data:`NODE_STATUS_UPDATE` seconds
        if it no longer says what this kubelet sees (the real kubelet's
        nodeStatusUpdateFrequency); a write that fails is retried on the next pass after
        :data:`NODE_STATUS_RETRY` seconds, so the condition converges once the API server
        answers again."""
        conf = self.cni_watch.current()
        ready = conf is not None
        self.conf = conf
        changed = ready != self.network_ready
        if changed:
            self.network_ready = ready
            log.info("network %s (%s)", "ready" if ready else "not ready", conf.path if conf else "no CNI config")
        if changed or time.monotonic() >= self.next_status_sync:
            self.sync_node_status(changed)
        return changed

    def sync_node_status(self, changed: bool = False) -> bool:
        """Write this node's Ready condition (and its not-ready taint) when the API says
        otherwise. Returns True when the server agrees with the kubelet afterwards."""
        ready = bool(self.network_ready)
        want = "True" if ready else "False"

        def set_ready(n: dict) -> bool:
            st = n.setdefault("status", {})
            cur = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), None)
            if cur is not None and cur.get("status") == want:
                return False
            st["conditions"] = node_conditions(ready, now_iso(), st.get("conditions"))
            return True

        try:
            obj = self.cluster.mutate("Node", self.node, None, set_ready, sub="status")
            if obj is not None:
                self._sync_taint()
        except (KubeError, OSError) as exc:  # any failure: the next pass tries again
            self.next_status_sync = time.monotonic() + NODE_STATUS_RETRY
            log.warning("node %s: Ready=%s not written, retrying in %.1fs: %s", self.node, want,
                        NODE_STATUS_RETRY, exc)
            return False
        self.next_status_sync = time.monotonic() + self.node_status_update
        if obj is None:  # deleted: as the kubelet, register again only when restarted
            log.warning("node %s: the Node object is gone (deleted); not registering it again until the "
                        "kubelet restarts", self.node)
            return False
        if changed:
            self.cluster.event(obj, "NodeReady" if ready else "NodeNotReady",
                               f"Node {self.node} status is now: {'NodeReady' if ready else 'NodeNotReady'}")
        return True

    def check_node(self) -> bool:
        """Whether this kubelet's Node still exists: once the informer lost it, a GET
        decides (no answer decides nothing). Returns True when that changed."""
        if not self.registered or not self.cluster.synced():
            return False
        if self.cluster.get("Node", self.node) is not None:
            gone = False
        else:
            try:
                gone = self.cluster.fetch("Node", self.node) is None
            except (KubeError, OSError) as exc:
                log.info("node %s: not in the cache and the API server does not answer (%s)", self.node, exc)
                self.node_recheck = time.monotonic() + GONE_RECHECK
                return False
        self.node_recheck = 0.0
        if gone == self.node_gone:
            return False
        self.node_gone = gone
        if gone:
            log.warning("node %s: the Node object was deleted: stopping every pod bound to it and starting none "
                        "(their sandboxes and IPs stay until the pods are deleted)", self.node)
        else:
            log.info("node %s exists again", self.node)
        return True

    def renew_lease(self) -> None:
        """The node's heartbeat: Lease ``kube-node-lease/<node>`` (holder the node, 40 s,
        renewed every 10 s), owned by the Node, as the kubelet keeps it."""
        from kubeclient import Conflict, NotFound
        from testbed.k8s.apiclient import micro_time

        now = time.monotonic()
        if now < self.next_lease:
            return
        node = self.cluster.get("Node", self.node)
        if node is None:
            return
        self.next_lease = now + LEASE_DURATION / 4
        lease = self.lease or {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.node, "namespace": "kube-node-lease",
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": self.node,
                                              "uid": node["metadata"]["uid"]}]},
            "spec": {"holderIdentity": self.node, "leaseDurationSeconds": LEASE_DURATION}}
        lease["spec"]["renewTime"] = micro_time()
        try:
            if "resourceVersion" in lease["metadata"]:
                self.lease = self.api.replace(lease, "kube-node-lease", plural="leases")
            else:
                self.lease = self.api.create(lease, "kube-node-lease", plural="leases")
        except (Conflict, NotFound, AlreadyExists):
            self.lease = None
            try:  # someone else wrote it: take the stored one and renew that
                cur = self.api.get("coordination.k8s.io/v1", "leases", self.node, "kube-node-lease")
                cur["spec"].update(holderIdentity=self.node, leaseDurationSeconds=LEASE_DURATION,
                                   renewTime=micro_time())
                self.lease = self.api.replace(cur, "kube-node-lease", plural="leases")
            except KubeError as exc:
                log.info("node lease not renewed: %s", exc)
                self.next_lease = now + 1.0
        except (KubeError, OSError) as exc:
            log.info("node lease not renewed: %s", exc)
            self.next_lease = now + 1.0

    # --- pods ------------------------------------------------------------------------------
    def my_pods(self) -> list[dict]:
        """Pods bound to this node (the API's, plus the static pods of this node)."""
        pods = self.cluster.list("Pod")
        if self.static is not None:
            mirrors = {p["metadata"]["uid"] for p in pods if self.static.is_mirror(p)}
            pods = [p for p in pods if p["metadata"]["uid"] not in mirrors] + self.static.pods()
        return pods

    def sync_pods(self) -> None:
        """Start what is missing, tear down what is gone (work runs in the pool)."""
        pods = self.my_pods()
        by_uid = {p["metadata"]["uid"]: p for p in pods}
        now = time.monotonic()
        for uid, pod in by_uid.items():
            if uid in self.busy:
                continue
            if pod["metadata"].get("deletionTimestamp"):
                self._submit(uid, self._teardown, uid, pod)
            elif self.node_gone and not self._is_static(pod):
                if uid not in self.refused:
                    self._submit(uid, self._refuse, uid, pod)
            elif uid in self.states:
                if self._probe_work(uid, pod):
                    continue
                if self.ready_written.get(uid) and pod_ready_status(pod) == "False" and uid not in self.refused \
                        and not terminal(pod):
                    self._submit(uid, self._resync_status, uid)  # e.g. marked not ready while unreachable
            elif terminal(pod):
                continue  # a Failed or Succeeded pod is never started (again)
            else:
                failed = self.failures.get(uid)
                if failed and now < failed[0]:
                    continue
                if not self.network_ready and not pod["spec"].get("hostNetwork"):
                    self._report_not_ready(pod)
                    continue
                self._submit(uid, self._setup, pod)
        for uid in list(self.states):
            if uid not in by_uid and uid not in self.busy and self.unconfirmed.get(uid, 0.0) <= now:
                self._submit(uid, self._teardown_if_gone, uid)
        for uid in list(self.unconfirmed):
            if uid in by_uid or uid not in self.states:
                self.unconfirmed.pop(uid, None)
        for uid in list(self.failures):
            if uid not in by_uid:
                self.failures.pop(uid, None)
        for uid in [u for u, f in list(self.status_pending.items()) if u not in by_uid and f.done()]:
            self.status_pending.pop(uid, None)
        self.refused &= set(by_uid)
        if self.static is not None:
            self.static.sync_mirrors(self)

    def _is_static(self, pod: dict) -> bool:
        return self.static is not None and self.static.is_static(pod)

    def _retry_due(self) -> bool:
        """A pod whose sandbox failed is due for another try."""
        now = time.monotonic()
        return any(uid not in self.busy and when <= now for uid, (when, _, _) in list(self.failures.items())) \
            or any(uid not in self.busy and when <= now for uid, when in list(self.unconfirmed.items()))

    def _submit(self, uid: str, fn, *args) -> None:
        self.busy.add(uid)

        def done(_f) -> None:
            with self.lock:
                self.busy.discard(uid)
            self.cluster.mark("Pod")

        fut = self.pool.submit(self._guard, fn, *args)
        fut.add_done_callback(done)

    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("%s failed", fn.__name__)

    def _report_not_ready(self, pod: dict) -> None:
        msg = "network is not ready: " + NETWORK_NOT_READY_MESSAGE
        infos = [ContainerInfo(c["name"], c["image"], waiting_reason="ContainerCreating")
                 for c in pod["spec"]["containers"]]
        if self._write_status(pod, infos, [], sandbox_ready=False):
            self.cluster.event(pod, "NetworkNotReady", msg, "Warning")

    def _refuse(self, uid: str, pod: dict) -> None:
        """The Node is gone: stop the pod's containers and report it Failed. Its sandbox
        (and IP) is kept: CNI DEL runs when the pod is deleted."""
        state = self.states.get(uid)
        now = now_iso()
        infos = []
        for c in pod["spec"]["containers"]:
            name = c["name"]
            started = state.started_at.get(name) if state else None
            infos.append(ContainerInfo(name, c["image"], container_id=state.container_ids.get(name, "") if state else "",
                                       started_at=started, restart_count=state.restarts.get(name, 0) if state else 0,
                                       exit_code=137 if started else None, finished_at=now if started else None,
                                       waiting_reason=None if started else NODE_GONE_REASON))
        if state is not None:
            self._kill_containers(state, grace=0.5)
            state.save(self.root_dir)
        self.refused.add(uid)
        msg = f"Node {self.node} no longer exists: the kubelet stopped this pod and runs no pod for it"
        ips = cni.pod_ips(state.cni_result or {}) if state is not None and state.netns else []
        self._write_status(pod, infos, ips, sandbox_ready=False, state=state,
                           override={"phase": "Failed", "reason": NODE_GONE_REASON, "message": msg})
        self.cluster.event(pod, NODE_GONE_REASON, msg, "Warning")
        log.info("pod %s/%s stopped: node %s no longer exists", pod["metadata"]["namespace"],
                 pod["metadata"]["name"], self.node)

    def _resync_status(self, uid: str) -> None:
        """Write the pod's status again when the API server says otherwise than this kubelet
        last wrote (the status manager's sync; e.g. after the node controller marked the pods
        of an unreachable node not ready)."""
        state = self.states.get(uid)
        pod = self._pod_by_uid(uid)
        if state is None or pod is None or pod["metadata"].get("deletionTimestamp") or terminal(pod):
            return
        ips = [self.node_ip] if not state.netns else cni.pod_ips(state.cni_result or {})
        self._write_status(pod, self._infos(state, pod), ips, state=state)

    @staticmethod
    def _annotations(state: PodState | None) -> dict[str, str]:
        """calicolab's annotations saying where a pod lives (netns, container PIDs, runtimes)."""
        if state is None:
            return {}
        ann = {ANNOTATION_PIDS: json.dumps(state.pids, sort_keys=True),
               ANNOTATION_RUNTIME: json.dumps({c: state.container_runtimes.get(c, "netns") for c in state.pids},
                                              sort_keys=True)}
        if state.netns and state.runtime != "docker":  # Docker's pod netns has no name
            ann[ANNOTATION_NETNS] = os.path.basename(state.netns)
        return ann

    def _write_status(self, pod: dict, infos: list[ContainerInfo], ips: list[str], sandbox_ready: bool = True,
                      message: str | None = None, state: PodState | None = None,
                      override: dict | None = None, wait_pending: bool = True) -> bool:
        """Write the pod's status (``pods/<p>/status``; ``override``: fields set over the
        computed ones, e.g. a Failed phase); True if it changed. The pod's status write still
        in the background (``status_pending``) lands first (``wait_pending``: False for that
        write itself)."""
        meta = pod["metadata"]
        pending = self.status_pending.pop(meta["uid"], None) if wait_pending else None
        if pending is not None:
            try:
                pending.result()
            except Exception:  # noqa: BLE001 - it logged its own failure; this write is what counts
                log.exception("pod %s/%s: background status write failed", meta.get("namespace"), meta["name"])
        init = self.init_infos.get(meta["uid"])
        self._apply_probes(pod, infos)
        if self.static is not None and self.static.is_static(pod):
            return self.static.set_status(pod, pod_status(pod, infos, self.node_ip, ips, now_iso(), None,
                                                          sandbox_ready, init), self, self._annotations(state))
        old_start = (pod.get("status") or {}).get("startTime")
        status = pod_status(pod, infos, self.node_ip, ips, now_iso(), old_start, sandbox_ready, init)
        if message:
            status["message"] = message
        if override:
            status.update(override)
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status["conditions"])
        changed = []

        def put(p: dict) -> bool:
            if p["metadata"].get("uid") != meta["uid"]:
                return False
            prev = p.get("status") or {}
            for c in status["conditions"]:
                for pc in prev.get("conditions") or []:
                    if pc.get("type") == c["type"] and pc.get("status") == c["status"] and pc.get("lastTransitionTime"):
                        c["lastTransitionTime"] = pc["lastTransitionTime"]
            ann = dict(p["metadata"].get("annotations") or {})
            ann.update(self._annotations(state))
            if _same_status(prev, status) and ann == (p["metadata"].get("annotations") or {}):
                return False
            if ann:
                p["metadata"]["annotations"] = ann
            p["status"] = status
            changed.append(True)
            return True

        for attempt in range(5):  # the status is the only report of what happened: retry it
            try:
                self.cluster.mutate("Pod", meta["name"], meta["namespace"], put, sub="status")
                self.ready_written[meta["uid"]] = ready
                return bool(changed)
            except (KubeError, OSError) as exc:
                log.warning("pod %s/%s: status not written (attempt %d): %s", meta["namespace"], meta["name"],
                            attempt + 1, exc)
                time.sleep(0.2 * 2 ** attempt)
        return False

    def _setup(self, pod: dict) -> None:
        meta = pod["metadata"]
        uid, ns, name = meta["uid"], meta["namespace"], meta["name"]
        if pod["spec"].get("hostNetwork"):
            self._setup_host_network(pod)
            return
        conf = self.conf
        if conf is None:
            return
        creating = [ContainerInfo(c["name"], c["image"], waiting_reason="ContainerCreating")
                    for c in pod["spec"]["containers"]]
        if not (pod.get("status") or {}).get("containerStatuses"):  # Pending / ContainerCreating
            self.status_pending[uid] = self.status_pool.submit(self._write_status, pod, creating, [],
                                                               sandbox_ready=False, wait_pending=False)
        t0 = time.monotonic()
        state = PodState(uid=uid, namespace=ns, name=name, sandbox_id=runtime.new_sandbox_id(),
                         netns=os.path.join(self.netns_dir, runtime.new_netns_name()),
                         node=self.node, lab=self.lab, runtime=self.cri.name if self.cri else "netns",
                         static=self._is_static(pod))
        if not self._publish_volumes(pod, state, creating):
            return
        ports = [{"containerPort": p["containerPort"], "hostPort": p["hostPort"], "protocol": p.get("protocol", "TCP").lower()}
                 for c in pod["spec"]["containers"] for p in c.get("ports") or [] if p.get("hostPort")]
        t1 = t0
        result = None
        try:
            if self.cri is not None:
                state.save(self.root_dir)  # a restarted kubelet finds (and removes) a half-made sandbox
                self.cri.create_sandbox(state, self.netns_dir)
            else:
                runtime.create_netns(state.netns)
            args = cni.cni_args(ns, name, state.sandbox_id)
            state.cni_conf = conf.raw
            state.save(self.root_dir)
            if self.cri is None:  # the volumes' API reads (TokenRequest, ConfigMaps) while CNI ADD runs
                self.prepared[uid] = self.status_pool.submit(self._prepare_mounts, pod, state)
            t1 = time.monotonic()
            result = self.runner.add(conf, state.sandbox_id, state.netns, args, "eth0",
                                     {"portMappings": ports} if ports else None)
            if self.cri is not None:
                state.cni_result = result
                state.resolv = resolv_conf(pod, self.cluster_dns, self.cluster_domain) or ""
                self.cri.start_sandbox(state, (cni.pod_ips(result) or [None])[0])
        except (cni.CNIError, runtime.SandboxError, cri.ContainerStartError, imagebuild.ImageBuildError,
                OSError) as exc:
            if self.cri is not None:
                if result is not None:  # the network is set up: undo it before the sandbox goes
                    try:
                        self.runner.delete(conf, state.sandbox_id, state.netns, cni.cni_args(ns, name, state.sandbox_id),
                                           "eth0", result)
                    except cni.CNIError as del_exc:
                        log.warning("pod %s/%s: CNI DEL after a failed sandbox: %s", ns, name, del_exc)
                self.cri.remove_sandbox(state)
            else:
                runtime.remove_netns(state.netns)
            prep = self.prepared.pop(uid, None)
            if prep is not None:  # its files go with the pod's directory
                futures.wait([prep])
            self._unpublish_volumes(state)
            shutil.rmtree(state.pod_dir(self.root_dir), ignore_errors=True)
            attempts = self.failures.get(uid, (0, 0, ""))[1] + 1
            self.failures[uid] = (time.monotonic() + min(0.5 * 2 ** attempts, 10.0), attempts, str(exc))
            what = "setup network for" if isinstance(exc, cni.CNIError) else \
                "start" if isinstance(exc, cri.ContainerStartError) else "create"
            msg = (f'Failed to create pod sandbox: rpc error: code = Unknown desc = failed to {what} '
                   f'sandbox "{state.sandbox_id}": {exc}')
            log.warning("pod %s/%s: %s", ns, name, msg)
            self._write_status(pod, creating, [], sandbox_ready=False, message=msg)
            self.cluster.event(pod, "FailedCreatePodSandBox", msg, "Warning")
            return
        self.failures.pop(uid, None)
        state.cni_result = result
        state.save(self.root_dir)
        with self.lock:
            self.states[uid] = state
        ips = cni.pod_ips(result)
        if not self._run_init_containers(state, pod, ips):
            self.prepared.pop(uid, None)
            return
        t2 = time.monotonic()
        infos = [self._start_container(state, pod, c) for c in pod["spec"]["containers"]]
        self.prepared.pop(uid, None)
        state.save(self.root_dir)
        self._wait_ready(state, pod, infos)
        t3 = time.monotonic()
        self._write_status(pod, infos, ips, state=state)
        log.info("pod %s/%s running in %s with %s (sandbox %.0f ms, CNI ADD %.0f ms, start %.0f ms, "
                 "status %.0f ms)", ns, name, os.path.basename(state.netns), ",".join(ips),
                 (t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000, (time.monotonic() - t3) * 1000)

    def _setup_host_network(self, pod: dict) -> None:
        """A hostNetwork pod: no sandbox netns, no CNI; it runs in the node's netns and
        its IP is the node's (it starts even while the network is not ready)."""
        meta = pod["metadata"]
        state = PodState(uid=meta["uid"], namespace=meta["namespace"], name=meta["name"],
                         sandbox_id=runtime.new_sandbox_id(), netns="", node=self.node, lab=self.lab,
                         cni_result={"ips": [{"address": f"{self.node_ip}/32"}]}, static=self._is_static(pod))
        creating = [ContainerInfo(c["name"], c["image"], waiting_reason="ContainerCreating")
                    for c in pod["spec"]["containers"]]
        if not self._publish_volumes(pod, state, creating):
            return
        state.save(self.root_dir)
        with self.lock:
            self.states[state.uid] = state
        if not self._run_init_containers(state, pod, [self.node_ip]):
            return
        infos = [self._start_container(state, pod, c) for c in pod["spec"]["containers"]]
        state.save(self.root_dir)
        self._wait_ready(state, pod, infos)
        self._write_status(pod, infos, [self.node_ip], state=state)
        log.info("hostNetwork pod %s/%s running", state.namespace, state.name)

    # --- CSI volumes ---------------------------------------------------------------------------
    def _publish_volumes(self, pod: dict, state: PodState, creating: list[ContainerInfo]) -> bool:
        """NodePublishVolume for the pod's CSI volumes before anything of it starts
        (:mod:`testbed.k8s.csivolumes`); on a failure the pod waits (FailedMount event,
        retried with back-off) and False is returned."""
        if not csi_volumes(pod):
            return True
        uid = pod["metadata"]["uid"]
        try:
            if self.cri is not None and not pod["spec"].get("hostNetwork"):
                raise CsiVolumeError("calicolab's kubelet publishes CSI volumes for pods of the netns runtime only "
                                     f"(this node runs {self.cri.name}; docs/csi.md)")
            state.csi_volumes = self.csi.publish(pod, state.pod_dir(self.root_dir),
                                                 lambda d: self.cluster.fetch("CSIDriver", d))
        except (CsiVolumeError, KubeError, OSError) as exc:
            attempts = self.failures.get(uid, (0, 0, ""))[1] + 1
            self.failures[uid] = (time.monotonic() + min(0.5 * 2 ** attempts, 10.0), attempts, str(exc))
            log.warning("pod %s/%s: %s", state.namespace, state.name, exc)
            self._write_status(pod, creating, [], sandbox_ready=False)
            self.cluster.event(pod, "FailedMount", str(exc), "Warning")
            return False
        state.save(self.root_dir)  # a restarted kubelet unpublishes what it finds here
        return True

    def _unpublish_volumes(self, state: PodState) -> None:
        """NodeUnpublishVolume for the pod's CSI volumes; whatever is still mounted under the
        pod's directory afterwards is detached, so removing the directory never reaches
        through a mount into the driver's (or Felix's) files."""
        if state.csi_volumes:
            for err in self.csi.unpublish(state.csi_volumes):
                log.warning("pod %s/%s: %s", state.namespace, state.name, err)
            state.csi_volumes = {}
        pod_dir = os.path.realpath(state.pod_dir(self.root_dir))
        for mp in sorted(_mounts_under(pod_dir), key=len, reverse=True):
            log.warning("pod %s/%s: %s is still mounted: detaching it", state.namespace, state.name, mp)
            runtime.remove_mount(mp)

    def _csi_target(self, pod: dict, vol: dict) -> str:
        state = self.states.get(pod["metadata"]["uid"])
        rec = (state.csi_volumes if state is not None else {}).get(vol.get("name", ""))
        if rec is None:
            raise VolumeError(f'volume "{vol.get("name")}": the CSI volume is not published')
        return rec["target"]

    def _propagation(self, c: dict) -> str:
        """The container's mount propagation: ``unchanged`` for a privileged container with a
        ``mountPropagation: Bidirectional`` volume mount (the kubelet's root dir is made a
        shared mount first), else ``slave``."""
        if not any(vm.get("mountPropagation") == "Bidirectional" for vm in c.get("volumeMounts") or []):
            return "slave"
        if not (c.get("securityContext") or {}).get("privileged"):
            raise VolumeError(f"container {c['name']}: mountPropagation Bidirectional is available only to "
                              "privileged containers")
        if not self.shared_root:
            if "shared" in _propagation_of("/"):
                raise VolumeError(f"container {c['name']}: mountPropagation Bidirectional needs the node's / to be "
                                  "a private mount (pods share the node's filesystem: run the kubelet in a node "
                                  "of a lab)")
            runtime.make_shared(self.root_dir)
            self.shared_root = True
        return "unchanged"

    # --- containers ----------------------------------------------------------------------------
    def _get_for_volume(self, kind: str, name: str, namespace: str) -> dict | None:
        return self.cluster.fetch(kind, name, namespace)

    def _token(self, namespace: str, sa: str, audiences: list[str], seconds: int, pod: dict) -> str:
        """A ServiceAccount token bound to ``pod``, as the kubelet's token manager gives it: one
        TokenRequest per (ServiceAccount, audiences, expiry, pod), reused by the pod's other
        containers (its init containers, each mounting the projected token volume, included)
        until 80% of its lifetime has passed."""
        key = (namespace, sa, tuple(audiences), seconds, pod["metadata"].get("uid", ""))
        now = time.monotonic()
        with self.lock:
            for k in [k for k, (_t, at) in self.tokens.items() if now - at >= 0.8 * k[3]]:
                del self.tokens[k]
            hit = self.tokens.get(key)
        if hit is not None:
            return hit[0]
        tok = token_request(self.api, namespace, sa, audiences, seconds, pod)
        with self.lock:
            self.tokens[key] = (tok, now)
        return tok

    def _pod_read(self, uid: str, kind: str, name: str, namespace: str) -> dict | None:
        """A ConfigMap or Secret a container of pod ``uid`` names in its env: read from the API
        server once for the pod's start (:data:`POD_READ_TTL`), not once per reference and per
        container (calico.yaml's calico-node pod named calico-config nine times over its three
        init containers and calico-node, each a GET on the start's critical path)."""
        key = (uid, kind, namespace, name)
        now = time.monotonic()
        with self.lock:
            for k in [k for k, (_o, at) in self.pod_reads.items() if now - at >= POD_READ_TTL]:
                del self.pod_reads[k]
            hit = self.pod_reads.get(key)
        if hit is not None:
            return hit[0]
        obj = self.cluster.fetch(kind, name, namespace)
        with self.lock:
            self.pod_reads[key] = (obj, now)
        return obj

    def _forget_pod_reads(self, uid: str) -> None:
        """Read pod ``uid``'s ConfigMaps and Secrets again at its next container start."""
        with self.lock:
            for k in [k for k in self.pod_reads if k[0] == uid]:
                del self.pod_reads[k]

    def _resolv_mount(self, state: PodState, pod: dict) -> tuple[str, str] | None:
        text = resolv_conf(pod, self.cluster_dns, self.cluster_domain)
        if text is None:
            return None
        if self.etc_netns_dir and state.netns:
            # where `ip netns exec <sandbox>` finds it too (it binds /etc/netns/<name>/resolv.conf)
            path = os.path.join(self.etc_netns_dir, os.path.basename(state.netns), "resolv.conf")
        else:
            path = os.path.join(state.pod_dir(self.root_dir), "resolv.conf")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path, "/etc/resolv.conf"

    def _use_cri(self, state: PodState, c: dict) -> bool:
        """A container runs in the container runtime unless the pod has no sandbox there
        (hostNetwork) or its image is one of the project's components (calico/node,
        kube-controllers, typha, the control plane, kube-proxy, CoreDNS: the project's code,
        run as processes)."""
        return self.cri is not None and state.runtime == self.cri.name and not images.is_component(c["image"])

    def _decorate(self, info: ContainerInfo, state: PodState) -> ContainerInfo:
        """The runtime's name and the image it ran, for the container's status."""
        rt = state.container_runtimes.get(info.name)
        if rt == "docker":
            info.runtime = "docker"
        ref = state.images.get(info.name)
        if isinstance(ref, list) and len(ref) == 2:  # a runtime's [image, image id] (netns: the name alone)
            info.image_ref, info.image_id = ref[0], ref[1]
        return info

    def _start_cri_container(self, state: PodState, pod: dict, c: dict, info: ContainerInfo) -> ContainerInfo:
        assert self.cri is not None
        name = c["name"]
        try:
            # the volumes live in the runtime's pod directory: the same path in the node's
            # mount namespace and the daemon's (the machine's), which bind-mounts them
            mounts = self.volumes.mounts(pod, c, self.cri.pod_dir(state))
            env = self._container_env(pod, c)
        except (VolumeError, KubeError, OSError) as exc:
            info.waiting_reason = "CreateContainerConfigError"
            info.waiting_message = str(exc)
            return info
        env.setdefault("HOSTNAME", state.name)
        try:
            started = self.cri.start_container(state, c, env, mounts)
        except images.ImageNotFound as exc:
            info.waiting_reason = "ImagePullBackOff"
            info.waiting_message = f'Back-off pulling image "{c["image"]}": ErrImagePull: {exc}'
            return info
        except (cri.ContainerStartError, imagebuild.ImageBuildError, OSError) as exc:
            info.waiting_reason = "RunContainerError"
            info.waiting_message = f"failed to start container {name}: {exc}"
            return info
        state.container_ids[name] = started.cid
        state.pids[name] = started.pid
        state.ticks[name] = runtime.start_ticks(started.pid) or 0
        state.started_at[name] = now_iso()
        state.container_runtimes[name] = self.cri.name
        state.images[name] = [started.image, started.image_id]
        state.logs[name] = started.log
        info.container_id, info.running, info.started_at = started.cid, True, state.started_at[name]
        declared = [p["containerPort"] for p in c.get("ports") or [] if p.get("protocol", "TCP") == "TCP"]
        spec = imagebuild.spec_for(c["image"])
        info.port = declared[0] if declared else (spec.ports[0] if spec and spec.ports and not c.get("command") else None)
        info.ready = info.port is None
        self._warn_not_run(pod, c, f"spec.containers{{{name}}}")
        self.prober.add(state.uid, c, time.monotonic())
        self._post_start(state, pod, c)
        return self._decorate(info, state)

    def _prepare_mounts(self, pod: dict, state: PodState) -> dict[str, list[tuple[str, str]]]:
        """Every container's volume mounts (their files written under the pod's directory), made
        while the pod's network is set up: the projected ServiceAccount volume's TokenRequest and
        ConfigMap read are API round trips the containers' start would otherwise wait for."""
        return {c["name"]: self.volumes.mounts(pod, c, state.pod_dir(self.root_dir))
                for c in pod["spec"].get("containers") or []}

    def _mounts(self, state: PodState, pod: dict, c: dict, init: bool) -> list[tuple[str, str]]:
        """Container ``c``'s volume mounts: those :meth:`_prepare_mounts` made for its first start,
        else made now (a restart, an init container, or a preparation that failed: made again
        here, so its error is reported as the container's)."""
        prep = self.prepared.get(state.uid)
        if prep is not None and not init and not state.restarts.get(c["name"]):
            try:
                made = prep.result()
            except (VolumeError, KubeError, OSError):
                made = {}
            if c["name"] in made:
                return made[c["name"]]
        return self.volumes.mounts(pod, c, state.pod_dir(self.root_dir))

    def _start_container(self, state: PodState, pod: dict, c: dict, init: bool = False) -> ContainerInfo:
        """Create and start container ``c``. A container that could not be created keeps its
        waiting reason in the pod's status and is tried again (:meth:`check_processes`), as a
        kubelet's pod worker does: a ConfigMap, Secret or ServiceAccount made a moment after the
        pod must not leave it waiting forever. Init containers are retried by
        :meth:`_run_init_containers`."""
        info = self._create_container(state, pod, c, init)
        if init:
            return info
        key = (state.uid, c["name"])
        with self.lock:
            if info.running:
                self.start_failures.pop(key, None)
            elif info.waiting_reason:
                tries = self.start_failures.get(key, ("", "", 0.0, 0))[3]
                first, most = (IMAGE_RETRY_FIRST, IMAGE_RETRY_MAX) if info.waiting_reason == "ImagePullBackOff" \
                    else (START_RETRY_FIRST, START_RETRY_MAX)
                delay = min(first * 2 ** tries, most)
                self.start_failures[key] = (info.waiting_reason, info.waiting_message or "",
                                            time.monotonic() + delay, tries + 1)
                log.warning("pod %s/%s container %s: %s: %s; trying again in %.0fs", state.namespace, state.name,
                            c["name"], info.waiting_reason, info.waiting_message, delay)
        return info

    def _startable(self, uid: str) -> tuple[PodState, dict] | None:
        """Pod ``uid``'s state and object, if a container of it may be (re)started now: not
        deleted, not terminal, not refused, its Node not gone (a static pod's still runs)."""
        state = self.states.get(uid)
        pod = self._pod_by_uid(uid)
        if state is None or pod is None or pod["metadata"].get("deletionTimestamp") or terminal(pod) or \
                uid in self.refused or (self.node_gone and not self._is_static(pod)):
            return None
        return state, pod

    def _retry_start(self, uid: str, name: str) -> None:
        """Try again to start container ``name`` of pod ``uid``, which could not be created."""
        found = self._startable(uid)
        if found is None:
            return
        state, pod = found
        c = next((c for c in pod["spec"]["containers"] if c["name"] == name), None)
        if c is None or state.pids.get(name):
            return
        self._forget_pod_reads(uid)  # the ConfigMap or Secret may be there now
        info = self._start_container(state, pod, c)
        probed = bool(c.get(FIELDS[READINESS]))
        if info.running and info.port is not None and not probed:
            self.unready.setdefault(uid, {})[name] = info.port  # Ready once it listens
        state.save(self.root_dir)
        self._write_status(pod, self._infos(state, pod), cni.pod_ips(state.cni_result or {}), state=state)

    def _create_container(self, state: PodState, pod: dict, c: dict, init: bool) -> ContainerInfo:
        info = ContainerInfo(c["name"], c["image"], restart_count=state.restarts.get(c["name"], 0))
        if self._use_cri(state, c):
            if init:
                info.waiting_reason = "CreateContainerError"
                info.waiting_message = (f"init container {c['name']}: calicolab's kubelet runs init containers "
                                        f"as processes only (the netns runtime, or the project's images), not in "
                                        f"{self.cri.name if self.cri else 'a container runtime'}")
                return info
            return self._start_cri_container(state, pod, c, info)
        workdir = os.path.join(state.pod_dir(self.root_dir), "containers", c["name"])
        path = f"spec.initContainers{{{c['name']}}}" if init else f"spec.containers{{{c['name']}}}"
        try:
            mounts = self._mounts(state, pod, c, init)
            resolv = self._resolv_mount(state, pod)
            if resolv is not None:
                mounts.append(resolv)
            env = self._container_env(pod, c)
            propagation = self._propagation(c)
        except (VolumeError, KubeError, OSError) as exc:
            info.waiting_reason = "CreateContainerConfigError"
            info.waiting_message = str(exc)
            self.cluster.event(pod, "Failed", f"Error: {exc}", "Warning", path)
            return info
        policy = _pull_policy(c)
        if policy == "Always" and not state.restarts.get(c["name"]):
            self.cluster.event(pod, "Pulling", f'Pulling image "{c["image"]}"', field_path=path)
        t0 = time.monotonic()
        command = [expand_vars(x, env) for x in c.get("command") or []]
        args = [expand_vars(x, env) for x in c.get("args") or []]
        try:
            wl = images.resolve(c["image"], command, args, workdir, state.name)
        except images.ImageNotFound as exc:
            info.waiting_reason = "ImagePullBackOff"
            info.waiting_message = f'Back-off pulling image "{c["image"]}": ErrImagePull: {exc}'
            self.cluster.event(pod, "Failed", f'Failed to pull image "{c["image"]}": {exc}', "Warning", path)
            return info
        except ValueError as exc:
            info.waiting_reason, info.waiting_message = "CreateContainerError", str(exc)
            self.cluster.event(pod, "Failed", f"Error: {exc}", "Warning", path)
            return info
        if policy == "Always" and not state.restarts.get(c["name"]):
            took = f"{(time.monotonic() - t0) * 1000:.0f}ms"
            self.cluster.event(pod, "Pulled", f'Successfully pulled image "{c["image"]}" in {took} '
                               f"({took} including waiting)", field_path=path)
        else:
            self.cluster.event(pod, "Pulled", f'Container image "{c["image"]}" already present on machine',
                               field_path=path)
        for fpath, text in wl.files.items():
            os.makedirs(os.path.dirname(fpath), exist_ok=True)
            with open(fpath, "w") as f:
                f.write(text)
        env["HOSTNAME"] = state.name
        os.makedirs(workdir, exist_ok=True)
        log_path = os.path.join(workdir, "log")
        if os.path.exists(log_path) and state.restarts.get(c["name"]):
            os.replace(log_path, log_path + ".previous")  # kubectl logs --previous
        nice = CRITICAL_NICE if pod["spec"].get("priorityClassName") == "system-node-critical" \
            and self.static is not None and self.static.is_static(pod) else 0
        try:
            proc = runtime.start_process(state.netns, wl.argv, log_path, env, workdir, mounts, nice, propagation)
        except OSError as exc:
            info.waiting_reason = "RunContainerError"
            info.waiting_message = f"failed to start container {c['name']}: {exc}"
            return info
        cid = state.container_ids.get(c["name"]) or runtime.new_sandbox_id()
        state.container_ids[c["name"]] = cid
        state.images[c["name"]] = images.qualified(c["image"])
        if init:  # waited for by _run_init_containers, never restarted by check_processes
            self.init_procs[(state.uid, c["name"])] = proc
            info.container_id, info.running, info.started_at = cid, True, now_iso()
            self.cluster.event(pod, "Created", f"Created container: {c['name']}", field_path=path)
            self.cluster.event(pod, "Started", f"Started container {c['name']}", field_path=path)
            return info
        state.pids[c["name"]] = proc.pid
        state.ticks[c["name"]] = runtime.start_ticks(proc.pid) or 0
        state.started_at[c["name"]] = now_iso()
        self.procs[(state.uid, c["name"])] = proc
        info.container_id, info.running, info.started_at = cid, True, state.started_at[c["name"]]
        info.ready = wl.port is None
        info.port = wl.port
        self.cluster.event(pod, "Created", f"Created container: {c['name']}", field_path=path)
        self.cluster.event(pod, "Started", f"Started container {c['name']}", field_path=path)
        self._warn_not_run(pod, c, path)
        self.prober.add(state.uid, c, time.monotonic())
        self._post_start(state, pod, c)
        return info

    def _warn_not_run(self, pod: dict, c: dict, path: str) -> None:
        """Say in an event (kubectl describe, kubectl get events) which of the container's
        lifecycle hooks this kubelet stores but does not run (docs/kubernetes.md)."""
        fields = not_run_fields(c)
        key = (pod["metadata"]["uid"], c["name"])
        if fields and key not in self.warned_not_run:
            self.warned_not_run.add(key)
            self.cluster.event(pod, "NotSupported",
                               f"calicolab's kubelet does not run {', '.join(fields)} of container {c['name']} "
                               "(it runs exec and httpGet hooks)",
                               "Warning", path)

    # --- probes (testbed.k8s.probehandlers.Prober calls these) ---------------------------------
    def _apply_probes(self, pod: dict, infos: list[ContainerInfo]) -> None:
        """Readiness and ``started`` of running containers from their probes: a container with
        a readinessProbe is ready when the probe succeeds (and it has started); one without
        keeps the kubelet's rule (running, listening on its port), and needs started too."""
        uid = pod["metadata"]["uid"]
        specs = {c["name"]: c for c in pod["spec"]["containers"]}
        for info in infos:
            if not info.running or info.name not in specs:
                continue
            started = self.prober.started(uid, info.name)
            info.started = started
            if specs[info.name].get(FIELDS[READINESS]):
                info.ready = bool(self.prober.ready(uid, info.name))
            elif started is False:
                info.ready = False

    def _pod_ip(self, state: PodState) -> str:
        """The IP probes and hooks connect to: the pod's (a hostNetwork pod's is the node's)."""
        ips = cni.pod_ips(state.cni_result or {}) if state.netns else [self.node_ip]
        return (ips or [self.node_ip])[0]

    def _post_start(self, state: PodState, pod: dict, c: dict) -> None:
        """The container's postStart hook, run right after it started (at most 30 s); when it
        fails: event ``FailedPostStartHook`` and the container is stopped (then restarted per
        restartPolicy, as any exit)."""
        hook = (c.get("lifecycle") or {}).get("postStart")
        name = c["name"]
        if not hook:
            return
        msg = run_hook(hook, "postStart", c, pod, self._pod_ip(state),
                       lambda cmd: self.probe_exec_argv(state.uid, name, cmd), 30.0)
        if msg is None:
            return
        log.warning("pod %s/%s: %s", state.namespace, state.name, msg)
        self.cluster.event(pod, "FailedPostStartHook", msg, "Warning", f"spec.containers{{{name}}}")
        self.cluster.event(pod, "Killing", "FailedPostStartHook", field_path=f"spec.containers{{{name}}}")
        grace = pod["spec"].get("terminationGracePeriodSeconds")
        self._stop_container(state, pod, name, max(2.0, float(30 if grace is None else grace)))

    def _pre_stop(self, state: PodState, pod: dict | None, name: str, grace: float) -> float:
        """Run the container's preStop hook (when the pod has one and a grace period) within
        ``grace`` s; event ``FailedPreStopHook`` when it fails. Returns the grace left for
        SIGTERM..SIGKILL: what the hook did not use, at least 2 s after a hook (the kubelet's
        minimum)."""
        c = next((c for c in ((pod or {}).get("spec") or {}).get("containers") or [] if c.get("name") == name), None)
        hook = ((c or {}).get("lifecycle") or {}).get("preStop")
        if not hook or grace <= 0 or pod is None or c is None:
            return grace
        t0 = time.monotonic()
        msg = run_hook(hook, "preStop", c, pod, self._pod_ip(state),
                       lambda cmd: self.probe_exec_argv(state.uid, name, cmd), grace)
        if msg is not None:
            log.warning("pod %s/%s: %s", state.namespace, state.name, msg)
            self.cluster.event(pod, "FailedPreStopHook", msg, "Warning", f"spec.containers{{{name}}}")
        return max(2.0, grace - (time.monotonic() - t0))

    def _stop_container(self, state: PodState, pod: dict, name: str, grace: float) -> None:
        """Stop one container (its preStop hook first); its exit is noticed by check_processes."""
        pid = state.pids.get(name)
        if not pid or not self._alive(state.uid, name, pid):
            return
        grace = self._pre_stop(state, pod, name, grace)
        if self.cri is not None and state.container_runtimes.get(name) == self.cri.name:
            self.cri.stop_container(state, name, grace=grace)
        else:
            runtime.kill_process(pid, grace=grace, proc=self.procs.get((state.uid, name)))

    def probe_target(self, uid: str, name: str) -> tuple[dict, str] | None:
        """(container spec, pod IP) of a running container to probe; None otherwise (also
        while its pod terminates)."""
        state = self.states.get(uid)
        pod = self._pod_by_uid(uid)
        if state is None or pod is None or pod["metadata"].get("deletionTimestamp") or uid in self.refused:
            return None
        pid = state.pids.get(name)
        c = next((c for c in pod["spec"]["containers"] if c["name"] == name), None)
        if c is None or not pid or not self._alive(uid, name, pid):
            return None
        return c, self._pod_ip(state)

    def probe_exec_argv(self, uid: str, name: str, command: list[str]) -> list[str]:
        """The command line of an exec probe: what ``kubectl exec`` runs."""
        from testbed.apiserver.kubeletserver import NotFoundError
        from testbed.k8s.kubeletapi import exec_argv

        state = self.states.get(uid)
        if state is None:
            raise LookupError(f"container {name} is not running")
        try:
            return exec_argv(self, state, name, command)
        except NotFoundError as exc:
            raise LookupError(str(exc)) from None

    def probe_event(self, uid: str, name: str, reason: str, message: str) -> None:
        """A Warning event about a container's probe."""
        pod = self._pod_by_uid(uid)
        if pod is not None:
            self.cluster.event(pod, reason, message, "Warning", f"spec.containers{{{name}}}")

    def probe_changed(self, uid: str) -> None:
        """A readiness or startup result changed: the main loop writes the pod's status again."""
        with self.lock:
            self.probe_dirty.add(uid)
        self.cluster.mark("Pod")

    def probe_kill(self, uid: str, name: str, kind: str, grace: int | None) -> None:
        """A liveness or startup probe failed: the main loop restarts the container."""
        with self.lock:
            self.probe_kills[(uid, name)] = (kind, grace)
        self.cluster.mark("Pod")

    def _probe_work(self, uid: str, pod: dict) -> bool:
        """Submit what the probes asked for the pod (a restart, a status write); True if any."""
        with self.lock:
            kills = {k: self.probe_kills.pop(k) for k in list(self.probe_kills) if k[0] == uid}
            dirty = uid in self.probe_dirty
            self.probe_dirty.discard(uid)
        if kills:
            self._submit(uid, self._probe_restart, uid, pod, kills)
        elif dirty:
            self._submit(uid, self._resync_status, uid)
        return bool(kills or dirty)

    def _probe_restart(self, uid: str, pod: dict, kills: dict[tuple[str, str], tuple[str, int | None]]) -> None:
        """Kill containers that failed their liveness or startup probe (event ``Killing``;
        grace: the probe's terminationGracePeriodSeconds, else the pod's, at least 2 s as the
        kubelet's minimum); the exit is then noticed and restarted as any exit
        (check_processes), restartCount + 1."""
        state = self.states.get(uid)
        if state is None:
            return
        for (_, name), (kind, grace) in kills.items():
            pid = state.pids.get(name)
            if not pid or not self._alive(uid, name, pid):
                continue
            spec_grace = pod["spec"].get("terminationGracePeriodSeconds")
            seconds = max(2, int(grace if grace is not None else 30 if spec_grace is None else spec_grace))
            self.cluster.event(pod, "Killing", kill_message(kind, name), field_path=f"spec.containers{{{name}}}")
            log.info("pod %s/%s: %s (grace %ds)", state.namespace, state.name, kill_message(kind, name), seconds)
            self._stop_container(state, pod, name, float(seconds))
        self.probe_dirty.add(uid)

    def _run_init_containers(self, state: PodState, pod: dict, ips: list[str]) -> bool:
        """Run the pod's ``initContainers`` in order, each to completion, before its containers
        (as the kubelet does): a failed one (exit != 0, or not startable) is restarted after a
        back-off (1 s, then 10 s doubling to 5 min: ``Init:Error``, ``Init:CrashLoopBackOff``)
        and the next waits for it. Returns False when the pod went away (deleted, its Node gone,
        the kubelet stopping) before they all succeeded; its containers then do not start.
        Their status is ``status.initContainerStatuses``; their logs are ``kubectl logs -c``."""
        inits = pod["spec"].get("initContainers") or []
        if not inits:
            return True
        uid = state.uid
        infos = [ContainerInfo(c["name"], c["image"], waiting_reason="PodInitializing") for c in inits]
        self.init_infos[uid] = infos
        waiting = [ContainerInfo(c["name"], c["image"], waiting_reason="PodInitializing")
                   for c in pod["spec"]["containers"]]

        def gone() -> bool:
            cur = self._pod_by_uid(uid)
            return (self.stopping.is_set() or cur is None or bool(cur["metadata"].get("deletionTimestamp"))
                    or uid in self.refused or self.node_gone)

        for i, c in enumerate(inits):
            restarts = 0
            while True:
                if gone():
                    return False
                info = self._start_container(state, pod, c, init=True)
                info.restart_count = restarts
                infos[i] = info
                proc = self.init_procs.pop((uid, c["name"]), None)
                if proc is not None:
                    self._write_status(pod, waiting, ips, state=state)
                    while proc.poll() is None:
                        if gone():
                            runtime.kill_process(proc.pid, grace=0.5, proc=proc)
                            return False
                        time.sleep(0.05)
                    info.running, info.exit_code, info.finished_at = False, proc.returncode, now_iso()
                    if proc.returncode == 0:
                        break
                    log.warning("pod %s/%s init container %s exited %s", state.namespace, state.name, c["name"],
                                proc.returncode)
                self._forget_pod_reads(uid)  # the retry sees a ConfigMap fixed meanwhile
                backoff = min(10.0 * 2 ** (restarts - 1), 300.0) if restarts else 1.0
                self._write_status(pod, waiting, ips, state=state)
                if restarts:
                    self.cluster.event(pod, "BackOff", f"Back-off restarting failed container {c['name']} in pod "
                                       f"{state.name}_{state.namespace}({uid})", "Warning",
                                       f"spec.initContainers{{{c['name']}}}")
                deadline = time.monotonic() + backoff
                while time.monotonic() < deadline:
                    if gone():
                        return False
                    time.sleep(0.1)
                if proc is not None:  # shown as waiting in CrashLoopBackOff until the next start
                    info.waiting_reason = "CrashLoopBackOff"
                    info.waiting_message = f"back-off restarting failed container {c['name']} in pod {state.name}"
                restarts += 1
        return True

    def _container_env(self, pod: dict, c: dict) -> dict[str, str]:
        """The container's environment: the kubelet's own (what a lab's processes get:
        PATH, CALICOLAB_LAB, ...) without its credentials, the ``kubernetes`` Service's
        variables (KUBERNETES_SERVICE_HOST/PORT, for in-cluster clients), then the
        container's ``envFrom`` (every key of a ConfigMap or Secret, with its ``prefix``; a
        missing one is an error unless ``optional``), then its ``env`` (values, fieldRef,
        configMapKeyRef, secretKeyRef)."""
        from testbed.k8s.volumes import field_value

        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "NOTIFY_SOCKET")}
        env.update({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443",
                    "KUBERNETES_SERVICE_PORT_HTTPS": "443", "KUBERNETES_PORT": "tcp://10.96.0.1:443",
                    "KUBERNETES_PORT_443_TCP": "tcp://10.96.0.1:443", "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
                    "KUBERNETES_PORT_443_TCP_PORT": "443", "KUBERNETES_PORT_443_TCP_ADDR": "10.96.0.1"})
        ns = pod["metadata"]["namespace"]
        for src in c.get("envFrom") or []:
            kind = "ConfigMap" if "configMapRef" in src else "Secret" if "secretRef" in src else None
            if kind is None:
                raise VolumeError(f"envFrom: source {sorted(src)} is not a configMapRef or secretRef")
            ref = src.get("configMapRef") or src.get("secretRef") or {}
            obj = self._pod_read(pod["metadata"].get("uid", ""), kind, ref.get("name", ""), ns)
            if obj is None:
                if ref.get("optional"):
                    continue
                raise VolumeError(f'{"configmap" if kind == "ConfigMap" else "secret"} "{ref.get("name")}" not found')
            data = dict(obj.get("data") or {})
            if kind == "Secret":
                import base64

                data = {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}
            for key, value in data.items():
                env[str(src.get("prefix") or "") + key] = str(value)
        for e in c.get("env") or []:
            if e.get("value") is not None:
                env[e["name"]] = str(e["value"])
                continue
            src = e.get("valueFrom") or {}
            value: str | None = None
            if "fieldRef" in src:
                value = field_value(pod, src["fieldRef"].get("fieldPath", ""), self.node, self.node_ip)
            elif "configMapKeyRef" in src or "secretKeyRef" in src:
                kind = "ConfigMap" if "configMapKeyRef" in src else "Secret"
                ref = src.get("configMapKeyRef") or src.get("secretKeyRef") or {}
                obj = self._pod_read(pod["metadata"].get("uid", ""), kind, ref.get("name", ""), ns)
                if kind == "Secret" and obj is not None:
                    import base64

                    data = {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()}
                else:
                    data = (obj or {}).get("data") or {}
                value = data.get(ref.get("key", ""))
                if value is None and not ref.get("optional"):
                    what = "configmap" if kind == "ConfigMap" else "secret"
                    if obj is None:
                        raise VolumeError(f'{what} "{ref.get("name")}" not found')
                    raise VolumeError(f"couldn't find key {ref.get('key')} in {kind} {ns}/{ref.get('name')}")
            if value is not None:
                env[e["name"]] = value
        return env

    def _wait_ready(self, state: PodState, pod: dict, infos: list[ContainerInfo], timeout: float = 5.0) -> None:
        # the readiness of a container with a port is decided once, here: on a slow machine
        # (a VM under TCG) its deadline scales with CALICOLAB_DEADLINE_SCALE (testbed.poll)
        deadline = time.monotonic() + timeout * deadline_scale()
        probed = {c["name"] for c in (pod.get("spec") or {}).get("containers") or [] if c.get(FIELDS[READINESS])}
        for info in infos:
            port = info.port
            if info.name in probed:
                info.port = None  # its readiness probe decides
                continue
            if not info.running or port is None:
                continue
            pid = state.pids[info.name]
            while time.monotonic() < deadline and runtime.alive(pid):
                if runtime.listening(pid, port):
                    info.ready = True
                    break
                time.sleep(0.005)
        late = {i.name: i.port for i in infos if i.running and i.port is not None and not i.ready}
        if late:  # written not ready now; check_processes re-checks (a real kubelet keeps probing)
            self.unready[state.uid] = late
        else:
            self.unready.pop(state.uid, None)

    def _infos(self, state: PodState, pod: dict) -> list[ContainerInfo]:
        infos = []
        for c in pod["spec"]["containers"]:
            name = c["name"]
            info = ContainerInfo(name, c["image"], container_id=state.container_ids.get(name, ""),
                                 restart_count=state.restarts.get(name, 0), started_at=state.started_at.get(name))
            self._decorate(info, state)
            failed = self.start_failures.get((state.uid, name))
            pid = state.pids.get(name)
            if failed:
                info.waiting_reason, info.waiting_message = failed[0], failed[1]
            elif pid and self._alive(state.uid, name, pid):
                info.running = True
                info.ready = name not in self.unready.get(state.uid, {})
            elif (state.uid, name) in self.exits:
                info.exit_code, info.finished_at = self.exits[(state.uid, name)]
                if pod["spec"].get("restartPolicy", "Always") == "Always" or (
                        pod["spec"].get("restartPolicy") == "OnFailure" and info.exit_code != 0):
                    info.waiting_reason = "CrashLoopBackOff"
                    info.waiting_message = f"back-off restarting failed container {name} in pod {state.name}"
            infos.append(info)
        return infos

    def _alive(self, uid: str, name: str, pid: int) -> bool:
        proc = self.procs.get((uid, name))
        if proc is not None:
            return proc.poll() is None
        state = self.states.get(uid)
        ticks = state.ticks.get(name) if state else None
        return runtime.alive(pid) and (not ticks or runtime.start_ticks(pid) == ticks)

    def check_processes(self) -> None:
        """Notice exited workloads; restart them per restartPolicy once their back-off
        (CrashLoopBackOff: 1 s, then 10 s doubling to 5 min) has passed. Try again to start
        containers that could not be created, once their retry is due."""
        now = time.monotonic()
        with self.lock:
            due_starts = {uid: name for (uid, name), f in self.start_failures.items() if f[2] <= now}
        for uid, state in list(self.states.items()):
            if uid in self.busy or uid in self.refused:
                continue
            if uid in due_starts:
                with self.lock:  # not due again until this try sets the next time
                    f = self.start_failures.get((uid, due_starts[uid]))
                    if f is not None:
                        self.start_failures[(uid, due_starts[uid])] = (f[0], f[1], float("inf"), f[3])
                self._submit(uid, self._retry_start, uid, due_starts[uid])
                continue
            for name, pid in list(state.pids.items()):
                key = (uid, name)
                due = self.restart_at.get(key)
                if due is not None:
                    if due <= now:
                        self.restart_at.pop(key)
                        self._submit(uid, self._restart, uid, name)
                    continue
                if key in self.exits or self._alive(uid, name, pid):
                    continue
                proc = self.procs.pop(key, None)
                code = proc.returncode if proc is not None else -1
                if self.cri is not None and state.container_runtimes.get(name) == self.cri.name:
                    code = self.cri.reap(state, name)
                self.exits[key] = (code, now_iso())
                self.prober.remove(uid, name)  # a restarted instance gets new workers
                self._submit(uid, self._on_exit, uid, name, code)
        self._check_late_listeners()

    def _check_late_listeners(self) -> None:
        """A pod written not ready because a container had not listened on its port within the
        start-up window turns Ready once every such container listens."""
        for uid, late in list(self.unready.items()):
            state = self.states.get(uid)
            if state is None:
                self.unready.pop(uid, None)
                continue
            if uid in self.busy:
                continue
            for name, port in list(late.items()):
                pid = state.pids.get(name)
                if pid and self._alive(uid, name, pid) and runtime.listening(pid, port):
                    late.pop(name)
            if not late:
                self.unready.pop(uid, None)
                log.info("pod %s/%s: every container listens now: Ready", state.namespace, state.name)
                self._submit(uid, self._resync_status, uid)

    def _pod_by_uid(self, uid: str) -> dict | None:
        return next((p for p in self.my_pods() if p["metadata"]["uid"] == uid), None)

    def _on_exit(self, uid: str, name: str, code: int) -> None:
        state = self.states.get(uid)
        pod = self._pod_by_uid(uid)
        if state is None or pod is None or uid in self.refused:
            return
        if terminal(pod) and (pod.get("status") or {}).get("reason") == NODE_GONE_REASON:
            return  # stopped because its Node was gone (e.g. adopted after a restart): never restarted
        self._write_status(pod, self._infos(state, pod), cni.pod_ips(state.cni_result or {}), state=state)
        policy = pod["spec"].get("restartPolicy", "Always")
        if policy == "Always" or (policy == "OnFailure" and code != 0):
            n = state.restarts.get(name, 0)
            backoff = min(10.0 * 2 ** (n - 1), 300.0) if n else 1.0
            log.info("pod %s/%s container %s exited %s; restarting in %.0fs", state.namespace, state.name,
                     name, code, backoff)
            if n:
                self.cluster.event(pod, "BackOff", f"Back-off restarting failed container {name} in pod "
                                   f"{state.name}_{state.namespace}({uid})", "Warning",
                                   f"spec.containers{{{name}}}")
            self.restart_at[(uid, name)] = time.monotonic() + backoff

    def _restart(self, uid: str, name: str) -> None:
        found = self._startable(uid)
        if found is None:
            return
        state, pod = found
        state.restarts[name] = state.restarts.get(name, 0) + 1
        c = next(c for c in pod["spec"]["containers"] if c["name"] == name)
        self.exits.pop((uid, name), None)
        self._forget_pod_reads(uid)  # a restart reads the env's ConfigMaps and Secrets again
        self._start_container(state, pod, c)
        state.save(self.root_dir)
        self._write_status(pod, self._infos(state, pod), cni.pod_ips(state.cni_result or {}), state=state)

    def gone_from_api(self, state: PodState) -> bool | None:
        """Whether the API server confirms that ``state``'s pod no longer exists (or is now
        another pod of that name, or bound elsewhere): True, False (it still exists: the
        cache is behind) or None (no answer: the API server is unreachable or failing).
        A static pod's existence is its manifest's: always True once it left the cache."""
        if state.static:
            return True
        try:
            cur = self.api.get("v1", "pods", state.name, state.namespace)
        except NotFound:
            return True
        except (KubeError, OSError) as exc:
            log.info("pod %s/%s: not in the pod list, and the API server cannot confirm it is gone (%s); "
                     "keeping it", state.namespace, state.name, exc)
            return None
        meta, spec = cur.get("metadata") or {}, cur.get("spec") or {}
        return meta.get("uid") != state.uid or spec.get("nodeName") != self.node

    def _teardown_if_gone(self, uid: str) -> None:
        """A pod that left the cache without being seen Terminating (a force deletion, or a
        list the API server got wrong after a restart): stopped only once the API server
        confirms it is gone; otherwise asked again after :data:`GONE_RECHECK` seconds."""
        state = self.states.get(uid)
        if state is None:
            return
        if self.gone_from_api(state):
            self.unconfirmed.pop(uid, None)
            self._teardown(uid, None)
            return
        self.unconfirmed[uid] = time.monotonic() + GONE_RECHECK

    def _teardown(self, uid: str, pod: dict | None) -> None:
        """Stop a pod: its containers within the grace period, CNI DEL, the sandbox; then,
        when it was deleted gracefully (Terminating), delete it for good (grace 0)."""
        self.init_infos.pop(uid, None)
        self.warned_not_run = {k for k in self.warned_not_run if k[0] != uid}
        state = self.states.get(uid)
        grace = 2.0
        if pod is not None:
            grace = float(pod["metadata"].get("deletionGracePeriodSeconds") or 0) or 0.5
        if state is not None:
            if pod is not None:
                for name in state.pids:
                    self.cluster.event(pod, "Killing", f"Stopping container {name}",
                                       field_path=f"spec.containers{{{name}}}")
            hooks = pod if pod is not None and (pod["metadata"].get("deletionGracePeriodSeconds") or 0) > 0 else None
            self.stop_pod(state, cni_del=True, grace=grace, pod=hooks)
        if pod is not None and pod["metadata"].get("deletionTimestamp"):
            meta = pod["metadata"]
            if self.static is not None and self.static.is_static(pod):
                return
            try:
                self.cluster.delete("Pod", meta["name"], meta["namespace"], grace=0, uid=meta["uid"])
            except (KubeError, OSError) as exc:
                log.warning("deleting pod %s/%s: %s", meta["namespace"], meta["name"], exc)
                self.cluster.mark("Pod")
                return
            log.info("pod %s/%s deleted", meta["namespace"], meta["name"])

    def stop_pod(self, state: PodState, cni_del: bool = True, grace: float = 2.0, pod: dict | None = None) -> None:
        """Kill the pod's processes (SIGTERM, SIGKILL after ``grace`` s; with ``pod``, each
        container's preStop hook first), run CNI DEL, remove the sandbox netns and state.

        Only processes that are our children, live in the pod's netns, or have the
        recorded start time are signalled (a PID from a state file may have been reused)."""
        cri_rt = self._kill_containers(state, grace, pod)
        self._finish_stop(state, cri_rt, cni_del)

    def _kill_containers(self, state: PodState, grace: float = 2.0, pod: dict | None = None):
        """Stop the pod's containers (SIGTERM, SIGKILL after ``grace`` s; with ``pod``, each
        container's preStop hook first, in parallel) and every other process in its netns; the
        sandbox stays. Returns the pod's container runtime (None: the netns runtime)."""
        in_netns = set(runtime.netns_pids(state.netns)) if state.netns else set()
        cri_rt = self.cri if self.cri is not None and state.runtime == self.cri.name else None
        kills = []
        for name, pid in state.pids.items():
            if cri_rt is not None and state.container_runtimes.get(name) == cri_rt.name:
                cri_rt.stop_container(state, name, grace=self._pre_stop(state, pod, name, grace))
                continue
            proc = self.procs.get((state.uid, name))
            if proc is not None or pid in in_netns or (
                    state.ticks.get(name) and runtime.start_ticks(pid) == state.ticks[name]):
                def stop(name: str = name, pid: int = pid, proc=proc) -> None:
                    left = self._pre_stop(state, pod, name, grace)  # exec needs the container alive
                    self.procs.pop((state.uid, name), None)
                    runtime.kill_process(pid, left, proc)

                t = threading.Thread(target=stop, daemon=True)
                t.start()
                kills.append(t)
        for t in kills:
            t.join()
        for pid in runtime.netns_pids(state.netns) if state.netns else ():  # e.g. left by kubectl exec
            if pid != state.sandbox_pid:
                runtime.kill_process(pid, grace=0.5)
        return cri_rt

    def _finish_stop(self, state: PodState, cri_rt, cni_del: bool) -> None:
        if cni_del and state.cni_conf:
            conf = cni.parse_config(state.cni_conf)
            args = cni.cni_args(state.namespace, state.name, state.sandbox_id)
            for attempt in range(1, DEL_ATTEMPTS + 1):
                try:
                    self.runner.delete(conf, state.sandbox_id, state.netns, args, "eth0", state.cni_result)
                    break
                except cni.CNIError as exc:
                    log.warning("CNI DEL for %s/%s (attempt %d): %s", state.namespace, state.name, attempt, exc)
                    time.sleep(0.5 * attempt)
        if cri_rt is not None:
            cri_rt.remove_sandbox(state)
        elif state.netns:
            runtime.remove_netns(state.netns)
            if self.etc_netns_dir:
                shutil.rmtree(os.path.join(self.etc_netns_dir, os.path.basename(state.netns)), ignore_errors=True)
        self._unpublish_volumes(state)
        shutil.rmtree(state.pod_dir(self.root_dir), ignore_errors=True)
        with self.lock:
            self.states.pop(state.uid, None)
            self.probe_dirty.discard(state.uid)
            for key in [k for k in self.probe_kills if k[0] == state.uid]:
                self.probe_kills.pop(key, None)
        self.prober.remove(state.uid)
        self.ready_written.pop(state.uid, None)
        for key in [k for k in self.exits if k[0] == state.uid]:
            self.exits.pop(key, None)
            self.restart_at.pop(key, None)
        with self.lock:
            for key in [k for k in self.start_failures if k[0] == state.uid]:
                self.start_failures.pop(key, None)

    def adopt(self) -> None:
        """Pick up pods a previous kubelet started (kept if their pod still exists)."""
        pods = {p["metadata"]["uid"]: p for p in self.my_pods() if not p["metadata"].get("deletionTimestamp")}
        live = set(pods)
        for state in PodState.load_all(self.root_dir):
            if state.node != self.node or state.lab != self.lab:
                continue  # another node's (or lab's) pod sharing this root dir
            # a pod missing from the list is stopped only when the API server confirms it is gone
            kept = state.uid in live or self.gone_from_api(state) is not True
            if kept and (not state.netns or os.path.exists(state.netns)) and state.cni_result is not None:
                self.states[state.uid] = state
                log.info("adopted pod %s/%s", state.namespace, state.name)
                self._adopt_probes(state, pods.get(state.uid))
            else:
                log.info("cleaning up pod %s/%s left by a previous kubelet", state.namespace, state.name)
                self.stop_pod(state, cni_del=True)

    def _adopt_probes(self, state: PodState, pod: dict | None) -> None:
        """Probe workers for the running containers of an adopted pod (their start times from
        the pod's state, for initialDelaySeconds). The pod's status is written again: a
        readiness probe starts failing until its first success, as after a kubelet's restart."""
        if pod is None:
            return
        if any(c.get(f) for c in pod["spec"]["containers"] for f in FIELDS.values()):
            self.probe_changed(state.uid)
        for c in pod["spec"]["containers"]:
            pid = state.pids.get(c["name"])
            if not pid or not self._alive(state.uid, c["name"], pid):
                continue
            age = 0.0
            started = state.started_at.get(c["name"])
            if started:
                from datetime import datetime

                try:
                    age = max(0.0, time.time() - datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp())
                except ValueError:
                    age = 0.0
            self.prober.add(state.uid, c, time.monotonic() - age)

    # --- main loop -----------------------------------------------------------------------------
    def start_static(self) -> None:
        """Static pods need no API server: start them before anything else."""
        if self.static is not None:
            for pod in self.static.pods():
                uid = pod["metadata"]["uid"]
                if uid not in self.states and uid not in self.busy:
                    self._submit(uid, self._setup, pod)

    def run(self, stop: threading.Event) -> None:
        """Register, then reconcile on every change until ``stop`` is set."""
        self.start_static()
        self.cluster.start()
        delay = REGISTER_RETRY_FIRST
        while not stop.is_set():  # the API server may come and go at start-up: retry both steps
            try:
                if not self.registered and self.join_after and not self._joined():
                    stop.wait(0.01)
                    continue
                if not self.registered:
                    self.register()
                if not self.cluster.wait_synced(timeout=30, stop=stop):
                    continue
                self.adopt()
                break
            except (KubeError, OSError) as exc:
                log.warning("waiting for the API server: %s", exc)
                stop.wait(delay)
                delay = min(delay * 2, REGISTER_RETRY_MAX)
        log.info("kubelet running: node %s, %d pod(s) adopted", self.node, len(self.states))
        from testbed.k8s.pluginwatcher import PluginWatcher

        threading.Thread(target=PluginWatcher(os.path.join(self.root_dir, "plugins_registry"), self.csi).run,
                         args=(stop,), daemon=True, name="pluginwatcher").start()
        last_proc_check = 0.0
        while not stop.is_set():
            # idle, the loop wakes for the process checks (every PROC_CHECK s) and, until the
            # network is ready, to look for the CNI config; any informer event wakes it at once
            due = max(0.01, last_proc_check + PROC_CHECK - time.monotonic())
            kinds = self.cluster.wait(stop, timeout=due if self.network_ready else min(due, 0.05))
            if stop.is_set():
                break
            try:
                if not self.registered:
                    self.register()
                changed = self.check_network()
                if kinds & {"*", "Node"} or 0 < self.node_recheck <= time.monotonic():
                    changed = self.check_node() or changed  # deleted or (re-)created: an informer event
                if changed or kinds & {"*", "Pod", "Node"} or self._retry_due():
                    self.sync_pods()
                if time.monotonic() - last_proc_check >= PROC_CHECK:
                    last_proc_check = time.monotonic()
                    if self.static is not None and self.static.changed():
                        self.sync_pods()  # a static pod manifest edited, added or removed
                    self.check_processes()
                    self.renew_lease()
            except (KubeError, OSError) as exc:
                log.warning("API server unavailable: %s", exc)
                self.cluster.mark()
                stop.wait(0.5)
            except Exception:
                log.exception("kubelet pass failed")
                self.cluster.mark()
                stop.wait(0.5)

    def _joined(self) -> bool:
        """True once the Node ``join_after`` is registered (watched, not polled): a lab's nodes
        join one after the other, the control plane's first, as ``kubeadm init`` then
        ``kubeadm join`` on each worker do, so node IPAM hands out pod CIDRs in that order."""
        from kubeclient import Informer

        inf = getattr(self, "_join_informer", None)
        if inf is None:
            inf = self._join_informer = Informer(self.api, "v1", "nodes",
                                                 field_selector=f"metadata.name={self.join_after}").start()
        if inf.get(self.join_after) is None:
            return False
        inf.stop(wait=0)
        return True

    def shutdown(self, kill_pods: bool = False) -> None:
        """Stop the worker pool; with ``kill_pods`` also stop every pod (no CNI DEL)."""
        self.stopping.set()  # init containers being waited for end
        self.prober.stop()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.status_pool.shutdown(wait=True, cancel_futures=True)
        self.cluster.stop()
        if kill_pods:
            for state in list(self.states.values()):
                self.stop_pod(state, cni_del=False)


def not_run_fields(c: dict) -> list[str]:
    """The lifecycle hooks of container ``c`` that calicolab's kubelet cannot run (pure): a
    handler other than exec and httpGet (its probes and exec/httpGet hooks run)."""
    out = []
    for h in HOOKS:
        spec = (c.get("lifecycle") or {}).get(h)
        if spec:
            try:
                parse_hook(spec, h)
            except ProbeError:
                out.append(f"lifecycle.{h}")
    return out


def terminal(pod: dict) -> bool:
    """The pod is in a terminal phase (Failed, Succeeded): no kubelet starts it again."""
    return (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded")


def pod_ready_status(pod: dict) -> str | None:
    """The status of the pod's Ready condition (None without one)."""
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status")
    return None


def expand_vars(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of command and args (``$$`` escapes; an unknown
    variable is left as written), as the kubelet does."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i) and ")" in text[i + 2:]:
            end = text.index(")", i + 2)
            name = text[i + 2:end]
            out.append(env[name] if name in env else text[i:end + 1])
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def serve_api(kubelet: Kubelet, host: str, port: int, stop: threading.Event) -> None:
    """The kubelet API (:mod:`testbed.k8s.kubeletapi`) on ``host:port`` until ``stop`` (call on
    a thread). The port is bound at once, but the HTTP stack (aiohttp, ~0.1 s of CPU to
    import) is loaded when the first client connects: at a lab's start every node's CPU goes
    to bringing pods up, and most nodes never serve a ``kubectl logs``."""
    import select
    import socket

    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        log.error("kubelet API not served on %s:%d: %s", host, port, exc)
        return
    while not stop.is_set():
        if select.select([sock], [], [], 0.5)[0]:
            from testbed.k8s.kubeletapi import run

            run(kubelet, sock, stop)  # the waiting client is accepted once the server runs
            return
    sock.close()


def _same_status(a: dict, b: dict) -> bool:
    def strip(s: dict) -> str:
        s = json.loads(json.dumps(s))
        for c in s.get("conditions") or []:
            c.pop("lastTransitionTime", None)
            c.pop("lastProbeTime", None)
        return json.dumps(s, sort_keys=True)

    return strip(a) == strip(b)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of the kubelet."""
    p = argparse.ArgumentParser(prog="python -m testbed.k8s.kubelet", description=__doc__.split("\n\n")[0])
    p.add_argument("--node", default=os.environ.get("NODE_NAME"), help="node name (default $NODE_NAME)")
    p.add_argument("--node-ip", help="InternalIP (default: first global IPv4 address, eth0 first)")
    p.add_argument("--kubeconfig", default=None,
                   help="the kubelet's kubeconfig (default $KUBECONFIG, else /etc/kubernetes/kubelet.conf)")
    p.add_argument("--control-plane", action="store_true",
                   help="label and taint the node as a control-plane node")
    p.add_argument("--pod-manifest-path", default=None,
                   help="directory of static pod manifests (kubeadm: /etc/kubernetes/manifests)")
    p.add_argument("--cluster-dns", default="", help="DNS server IPs for pods, comma separated (10.96.0.10)")
    p.add_argument("--cluster-domain", default="cluster.local")
    p.add_argument("--cni-conf-dir", default="/etc/cni/net.d")
    p.add_argument("--cni-bin-dir", default="/opt/cni/bin", help="CNI plugin dirs, colon separated")
    p.add_argument("--netns-dir", default="/run/netns", help="where sandbox netns are bound")
    p.add_argument("--etc-netns-dir", default=None,
                   help="write each sandbox's resolv.conf to <dir>/<netns>/resolv.conf (as ip netns "
                        "exec reads it); default /etc/netns when the netns dir is /run/netns")
    p.add_argument("--root-dir", default=None,
                   help="kubelet state (pods' files); default /var/lib/kubelet (in a lab that does not "
                        "mount one per node: /run/calicolab/$CALICOLAB_LAB/kubelet/<node>)")
    p.add_argument("--kubelet-port", type=int, default=10250, help="the kubelet API port (0: not served)")
    p.add_argument("--node-status-update-frequency", type=_duration, default=NODE_STATUS_UPDATE,
                   metavar="DURATION", help="how often the Node's status is checked and corrected "
                   "(e.g. 10s, 500ms; default 10s)")
    p.add_argument("--container-runtime", default="netns", metavar="NAME",
                   help="netns (pods are processes in a netns; default), containerd or docker "
                        "(pods are containers of that runtime: docs/runtimes.md)")
    p.add_argument("--runtime-dir", default=None,
                   help="the node's runtime directory holding the daemon's socket and the pods' files "
                        "(containerd: <dir>/containerd/containerd.sock; docker: <dir>/docker/docker.sock)")
    p.add_argument("--kill-pods-on-exit", action="store_true",
                   help="on SIGTERM also kill the pods' processes and remove their netns")
    p.add_argument("--allow-host-netns", action="store_true", help=argparse.SUPPRESS)
    # calicolab's stand-in for "kubeadm join after kubeadm init": register once that Node exists
    p.add_argument("--join-after", default="", metavar="NODE", help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if not args.node:
        p.error("--node is required (or set NODE_NAME)")
    if args.root_dir is None:
        args.root_dir = default_root_dir(args.node)
    if args.container_runtime not in cri.RUNTIMES:
        p.error(str(cri.UnknownRuntime(args.container_runtime)))
    if args.container_runtime != "netns" and not args.runtime_dir:
        p.error(f"--container-runtime {args.container_runtime} needs --runtime-dir")
    if args.kubeconfig is None:
        args.kubeconfig = os.environ.get("KUBECONFIG") or "/etc/kubernetes/kubelet.conf"
    if args.etc_netns_dir is None and args.netns_dir == "/run/netns":
        args.etc_netns_dir = "/etc/netns"
    return args


def _duration(text: str) -> float:
    """A flag's Go duration (``10s``, ``500ms``, ``1m``) or plain seconds, > 0."""
    try:
        value = parse_duration(text, bare_seconds=True)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (use e.g. 10s, 500ms, 1m)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"duration {text!r} must be positive")
    return value


def _mounts_under(path: str) -> list[str]:
    """Mount points strictly below ``path`` in this mount namespace."""
    prefix = path.rstrip("/") + "/"
    return [mp for mp in _mount_points() if mp.startswith(prefix)]


def _propagation_of(path: str) -> str:
    """The optional fields of mount point ``path`` in /proc/self/mountinfo (``shared:N``,
    ``master:N``; "" for a private mount or none)."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                head = line.split(" - ", 1)[0].split()
                if head[4] == path:
                    return " ".join(head[6:])
    except OSError:
        pass
    return ""


def _mount_points() -> set[str]:
    try:
        with open("/proc/self/mountinfo") as f:
            return {line.split()[4] for line in f}
    except OSError:
        return set()


def default_root_dir(node: str) -> str:
    """/var/lib/kubelet, when it is the node's own (a lab mounts one per node); in a lab
    that does not, a directory of the lab that goes with it on down/clean."""
    lab = os.environ.get("CALICOLAB_LAB")
    if lab and "/var/lib/kubelet" not in _mount_points() and os.path.isdir(f"/run/calicolab/{lab}"):
        return f"/run/calicolab/{lab}/kubelet/{node}"
    return "/var/lib/kubelet"


INIT_NET_INO = 0xEFFFFFF9  # the kernel's fixed inode number of the initial network namespace


def in_host_netns() -> bool:
    """True when this process is in the machine's own network namespace (the kernel's
    initial one, or PID 1's when that is readable)."""
    own = os.stat("/proc/self/ns/net").st_ino
    if own == INIT_NET_INO:
        return True
    try:
        return own == os.stat("/proc/1/ns/net").st_ino
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    if in_host_netns() and not args.allow_host_netns:
        print("kubelet: refusing to run in the machine's own network namespace (it would add pod links, "
              "routes and iptables rules there); run it inside a node (ip netns exec <lab>-<node> ...)",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format=f"%(asctime)s {args.node} %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        client = client_from(args.kubeconfig, "kubelet")
    except KubeError as exc:
        print(f"kubelet: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    node_ip = args.node_ip or detect_node_ip()
    try:
        runtime.make_shared(args.netns_dir)
    except (runtime.SandboxError, OSError) as exc:
        log.warning("sandbox netns will not show in running pods' mount namespaces: %s", exc)
    cluster = Cluster(client, {"Pod": {"field_selector": f"spec.nodeName={args.node}"},
                               "Node": {"field_selector": f"metadata.name={args.node}"}},
                      component="kubelet", host=args.node)
    kubelet = Kubelet(cluster, args.node, node_ip, args.cni_conf_dir, args.cni_bin_dir.split(":"),
                      args.netns_dir, args.root_dir, control_plane=args.control_plane,
                      node_status_update=args.node_status_update_frequency,
                      cluster_dns=[s for s in args.cluster_dns.split(",") if s],
                      cluster_domain=args.cluster_domain, etc_netns_dir=args.etc_netns_dir,
                      pod_manifest_path=args.pod_manifest_path, join_after=args.join_after,
                      container_runtime=make_runtime(args.container_runtime, args.runtime_dir,
                                                     os.environ.get("CALICOLAB_LAB", ""), args.node))
    if args.kubelet_port:
        threading.Thread(target=serve_api, args=(kubelet, node_ip, args.kubelet_port, stop), daemon=True,
                         name="kubelet-api").start()
    kubelet.run(stop)
    kubelet.shutdown(kill_pods=args.kill_pods_on_exit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
