"""The kubelet (and kube-proxy) of one node: ``python -m testbed.k8s.kubelet --node NAME``.

Runs inside the node's network and mount namespaces. It registers the Node, reports it
``NotReady`` (NetworkPluginNotReady, "cni config uninitialized") until a CNI config exists
in the config directory, then ``Ready``; for each pod bound to the node it creates the
sandbox netns ``cni-<uuid>``, runs the CNI chain (ADD; DEL on delete), starts the image's
workload process in the sandbox and reports phase, podIP and conditions. kube-proxy keeps
the node's iptables in line with Services. With ``--controllers`` (the control-plane node)
it also runs the controllers (deployments, scheduler, endpoints, node pod CIDRs).
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
from concurrent.futures import ThreadPoolExecutor

from datastore.duration import parse_duration
from testbed.k8s import cni, cri, errors, imagebuild, images, runtime
from testbed.k8s.informer import ChangeFeed
from testbed.k8s.podstatus import (
    ContainerInfo,
    default_node_info,
    node_conditions,
    node_object,
    pod_status,
)
from testbed.k8s.runtime import PodState
from testbed.k8s.runtimes import make_runtime
from testbed.k8s.store import DEFAULT_POD_CIDR, DEFAULT_SERVICE_CIDR, Store, now_iso
from testbed.poll import deadline_scale

log = logging.getLogger("kubelet")

ANNOTATION_NETNS = "calicolab.io/netns"
ANNOTATION_PIDS = "calicolab.io/pids"
ANNOTATION_LOGS = "calicolab.io/logs"
ANNOTATION_RUNTIME = "calicolab.io/runtime"
DEL_ATTEMPTS = 3
PROXY_RESYNC = 30.0  # seconds between full kube-proxy syncs (hooks re-checked)
NODE_STATUS_UPDATE = 10.0  # seconds between checks that the Node still says what we see
NODE_STATUS_RETRY = 0.5  # seconds before a failed Node status write is tried again


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


class Kubelet:
    """One node's kubelet; :meth:`run` until ``stop`` is set."""

    def __init__(self, store: Store, node: str, node_ip: str, cni_conf_dir: str = "/etc/cni/net.d",
                 cni_bin_dirs: list[str] | None = None, netns_dir: str = "/run/netns",
                 root_dir: str = "/var/lib/kubelet", control_plane: bool = False,
                 kube_proxy: bool = True, workers: int = 8, node_status_update: float = NODE_STATUS_UPDATE,
                 container_runtime: cri.ContainerRuntime | None = None):
        self.store = store
        self.cri = container_runtime  # None: pods are processes in a netns (the netns runtime)
        self.node = node
        self.node_ip = node_ip
        self.cni_conf_dir = cni_conf_dir
        self.runner = cni.Runner(cni_bin_dirs or ["/opt/cni/bin"])
        self.netns_dir = netns_dir
        self.root_dir = root_dir
        self.control_plane = control_plane
        self.lab = os.environ.get("CALICOLAB_LAB", "")
        self.network_ready: bool | None = None
        self.next_status_sync = 0.0  # monotonic time of the next Node status check
        self.node_status_update = node_status_update
        self.conf: cni.NetworkConfig | None = None
        self.states: dict[str, PodState] = {}
        self.procs: dict[tuple[str, str], subprocess.Popen] = {}
        self.exits: dict[tuple[str, str], tuple[int, str]] = {}
        self.restart_at: dict[tuple[str, str], float] = {}
        self.busy: set[str] = set()
        self.failures: dict[str, tuple[float, int, str]] = {}
        self.image_errors: dict[str, dict[str, str]] = {}
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pod")
        self.feed = ChangeFeed(store, interesting=self._interesting)
        self.proxy = None
        if kube_proxy:
            from testbed.k8s.kubeproxy import KubeProxy

            self.proxy = KubeProxy()

    def _interesting(self, ev) -> bool:
        """Pods of this node (or gone), our Node, and anything kube-proxy needs."""
        if ev.kind in ("Service", "Endpoints"):
            return self.proxy is not None
        if ev.kind == "Pod":
            return ev.obj is None or (ev.obj.get("spec") or {}).get("nodeName") == self.node
        return ev.kind == "Node" and ev.name == self.node

    # --- node ------------------------------------------------------------------------------
    def register(self) -> None:
        """Create or refresh this node's Node object."""
        self.conf = cni.find_config(self.cni_conf_dir)
        self.network_ready = self.conf is not None
        labels = {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                  "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux"}
        taints = []
        if self.control_plane:
            labels["node-role.kubernetes.io/control-plane"] = ""
            labels["node.kubernetes.io/exclude-from-external-load-balancers"] = ""
            taints.append({"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"})
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
        obj = node_object(self.node, self.node_ip, labels, taints, info, capacity, self.network_ready, now_iso())
        self.next_status_sync = time.monotonic() + self.node_status_update
        try:
            self.store.create(obj)
            log.info("registered node %s (%s), network ready: %s", self.node, self.node_ip, self.network_ready)
        except errors.AlreadyExists:
            def refresh(n: dict) -> None:
                n["metadata"].setdefault("labels", {}).update(labels)
                n["status"] = dict(obj["status"], conditions=node_conditions(
                    bool(self.network_ready), now_iso(), (n.get("status") or {}).get("conditions")))

            self.store.mutate("Node", self.node, None, refresh)

    def check_network(self) -> bool:
        """Re-read the CNI config dir; make the Node's Ready condition follow it.
        Returns True if readiness changed.

        The Node is written on a change and then every :data:`NODE_STATUS_UPDATE` seconds
        if it no longer says what this kubelet sees (the real kubelet's
        nodeStatusUpdateFrequency); a write that fails (etcd unreachable, timeout) is
        retried on the next pass after :data:`NODE_STATUS_RETRY` seconds, so the condition
        converges once the datastore answers again."""
        conf = cni.find_config(self.cni_conf_dir)
        ready = conf is not None
        self.conf = conf
        changed = ready != self.network_ready
        if changed:
            self.network_ready = ready
            log.info("network %s (%s)", "ready" if ready else "not ready", conf.path if conf else "no CNI config")
        if changed or time.monotonic() >= self.next_status_sync:
            self.sync_node_status()
        return changed

    def sync_node_status(self) -> bool:
        """Write this node's Ready condition when the stored Node says otherwise.
        Returns True when the store agrees with the kubelet afterwards."""
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
            obj = self.store.mutate("Node", self.node, None, set_ready)
        except Exception as exc:  # noqa: BLE001 - any failure: the next pass tries again
            self.next_status_sync = time.monotonic() + NODE_STATUS_RETRY
            log.warning("node %s: Ready=%s not written, retrying in %.1fs: %s", self.node, want,
                        NODE_STATUS_RETRY, exc)
            return False
        self.next_status_sync = time.monotonic() + self.node_status_update
        if obj is None:
            log.warning("node %s: the Node object is gone; status not written", self.node)
            return False
        return True

    # --- pods ------------------------------------------------------------------------------
    def my_pods(self) -> list[dict]:
        """Pods bound to this node."""
        return [p for p in self.store.list("Pod") if p["spec"].get("nodeName") == self.node]

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
            elif uid not in self.states:
                failed = self.failures.get(uid)
                if failed and now < failed[0]:
                    continue
                if not self.network_ready and not pod["spec"].get("hostNetwork"):
                    self._report_not_ready(pod)
                    continue
                self._submit(uid, self._setup, pod)
        for uid in list(self.states):
            if uid not in by_uid and uid not in self.busy:
                self._submit(uid, self._teardown, uid, None)
        for uid in list(self.failures):
            if uid not in by_uid:
                self.failures.pop(uid, None)

    def _retry_due(self) -> bool:
        """A pod whose sandbox failed is due for another try."""
        now = time.monotonic()
        return any(uid not in self.busy and when <= now for uid, (when, _, _) in list(self.failures.items()))

    def _submit(self, uid: str, fn, *args) -> None:
        self.busy.add(uid)

        def done(_f) -> None:
            with self.lock:
                self.busy.discard(uid)
            self.feed.mark("Pod")

        fut = self.pool.submit(self._guard, fn, *args)
        fut.add_done_callback(done)

    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("%s failed", fn.__name__)

    def _report_not_ready(self, pod: dict) -> None:
        msg = "network is not ready: " + "container runtime network not ready: NetworkReady=false " \
              "reason:NetworkPluginNotReady message:Network plugin returns error: cni config uninitialized"
        infos = [ContainerInfo(c["name"], c["image"], waiting_reason="ContainerCreating") for c in pod["spec"]["containers"]]
        self._write_status(pod, infos, [], sandbox_ready=False, message=msg)

    def _write_status(self, pod: dict, infos: list[ContainerInfo], ips: list[str], sandbox_ready: bool = True,
                      message: str | None = None, state: PodState | None = None) -> None:
        meta = pod["metadata"]
        old_start = (pod.get("status") or {}).get("startTime")
        status = pod_status(pod, infos, self.node_ip, ips, now_iso(), old_start, sandbox_ready)
        if message:
            status["message"] = message

        def put(p: dict) -> bool:
            if p["metadata"].get("uid") != meta["uid"]:
                return False
            prev = p.get("status") or {}
            if _same_status(prev, status):
                return False
            for c in status["conditions"]:
                for pc in prev.get("conditions") or []:
                    if pc.get("type") == c["type"] and pc.get("status") == c["status"] and pc.get("lastTransitionTime"):
                        c["lastTransitionTime"] = pc["lastTransitionTime"]
            p["status"] = status
            if state is not None:
                ann = p["metadata"].setdefault("annotations", {})
                if state.netns and state.runtime != "docker":  # Docker's pod netns has no name
                    ann[ANNOTATION_NETNS] = os.path.basename(state.netns)
                ann[ANNOTATION_PIDS] = json.dumps(state.pids, sort_keys=True)
                ann[ANNOTATION_LOGS] = json.dumps(
                    {c: state.logs.get(c) or os.path.join(state.pod_dir(self.root_dir), "containers", c, "log")
                     for c in state.pids}, sort_keys=True)
                ann[ANNOTATION_RUNTIME] = json.dumps(
                    {c: state.container_runtimes.get(c, "netns") for c in state.pids}, sort_keys=True)
            return True

        for attempt in range(5):  # the status is the only report of what happened: retry it
            try:
                self.store.mutate("Pod", meta["name"], meta["namespace"], put)
                return
            except errors.Unavailable as exc:
                log.warning("pod %s/%s: status not written (attempt %d): %s", meta["namespace"], meta["name"],
                            attempt + 1, exc)
                time.sleep(0.2 * 2 ** attempt)

    def _setup(self, pod: dict) -> None:
        meta = pod["metadata"]
        uid, ns, name = meta["uid"], meta["namespace"], meta["name"]
        if pod["spec"].get("hostNetwork"):
            self._setup_host_network(pod)
            return
        conf = self.conf
        if conf is None:
            return
        t0 = time.monotonic()
        state = PodState(uid=uid, namespace=ns, name=name, sandbox_id=runtime.new_sandbox_id(),
                         netns=os.path.join(self.netns_dir, runtime.new_netns_name()),
                         node=self.node, lab=self.lab, runtime=self.cri.name if self.cri else "netns")
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
            t1 = time.monotonic()
            result = self.runner.add(conf, state.sandbox_id, state.netns, args, "eth0",
                                     {"portMappings": ports} if ports else None)
            if self.cri is not None:
                state.cni_result = result
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
            shutil.rmtree(state.pod_dir(self.root_dir), ignore_errors=True)
            attempts = self.failures.get(uid, (0, 0, ""))[1] + 1
            self.failures[uid] = (time.monotonic() + min(0.5 * 2 ** attempts, 10.0), attempts, str(exc))
            what = "setup network for" if isinstance(exc, cni.CNIError) else \
                "start" if isinstance(exc, cri.ContainerStartError) else "create"
            msg = (f'Failed to create pod sandbox: rpc error: code = Unknown desc = failed to {what} '
                   f'sandbox "{state.sandbox_id}": {exc}')
            log.warning("pod %s/%s: %s", ns, name, msg)
            infos = [ContainerInfo(c["name"], c["image"], waiting_reason="ContainerCreating")
                     for c in pod["spec"]["containers"]]
            self._write_status(pod, infos, [], sandbox_ready=False, message=msg)
            return
        self.failures.pop(uid, None)
        state.cni_result = result
        state.save(self.root_dir)
        with self.lock:
            self.states[uid] = state
        ips = cni.pod_ips(result)
        t2 = time.monotonic()
        infos = [self._start_container(state, pod, c) for c in pod["spec"]["containers"]]
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
                         cni_result={"ips": [{"address": f"{self.node_ip}/32"}]})
        state.save(self.root_dir)
        with self.lock:
            self.states[state.uid] = state
        infos = [self._start_container(state, pod, c) for c in pod["spec"]["containers"]]
        state.save(self.root_dir)
        self._wait_ready(state, pod, infos)
        self._write_status(pod, infos, [self.node_ip], state=state)
        log.info("hostNetwork pod %s/%s running", state.namespace, state.name)

    def _use_cri(self, state: PodState, c: dict) -> bool:
        """A container runs in the container runtime unless the pod has no sandbox there
        (hostNetwork) or its image is one of the project's components (calico/node,
        kube-controllers, typha: the project's Python code, run as processes)."""
        return self.cri is not None and state.runtime == self.cri.name and not images.is_component(c["image"])

    def _decorate(self, info: ContainerInfo, state: PodState) -> ContainerInfo:
        """The runtime's name and the image it ran, for the container's status."""
        rt = state.container_runtimes.get(info.name)
        if rt == "docker":
            info.runtime = "docker"
        ref = state.images.get(info.name)
        if ref:
            info.image_ref, info.image_id = ref[0], ref[1]
        return info

    def _start_cri_container(self, state: PodState, pod: dict, c: dict, info: ContainerInfo) -> ContainerInfo:
        assert self.cri is not None
        name = c["name"]
        env = self._container_env(pod, c)
        env.setdefault("HOSTNAME", state.name)
        try:
            started = self.cri.start_container(state, c, env)
        except images.ImageNotFound as exc:
            info.waiting_reason = "ImagePullBackOff"
            info.waiting_message = f'Back-off pulling image "{c["image"]}": ErrImagePull: {exc}'
            self.image_errors.setdefault(state.uid, {})[name] = info.waiting_message
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
        return self._decorate(info, state)

    def _start_container(self, state: PodState, pod: dict, c: dict) -> ContainerInfo:
        info = ContainerInfo(c["name"], c["image"], restart_count=state.restarts.get(c["name"], 0))
        if self._use_cri(state, c):
            return self._start_cri_container(state, pod, c, info)
        workdir = os.path.join(state.pod_dir(self.root_dir), "containers", c["name"])
        try:
            wl = images.resolve(c["image"], c.get("command"), c.get("args"), workdir, state.name)
        except images.ImageNotFound as exc:
            info.waiting_reason = "ImagePullBackOff"
            info.waiting_message = f'Back-off pulling image "{c["image"]}": ErrImagePull: {exc}'
            self.image_errors.setdefault(state.uid, {})[c["name"]] = info.waiting_message
            return info
        for path, text in wl.files.items():
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        env = dict(os.environ)
        env.update(wl.env)
        env.update(self._container_env(pod, c))
        env["HOSTNAME"] = state.name
        os.makedirs(workdir, exist_ok=True)
        try:
            proc = runtime.start_process(state.netns, wl.argv, os.path.join(workdir, "log"), env, workdir)
        except OSError as exc:
            info.waiting_reason = "RunContainerError"
            info.waiting_message = f"failed to start container {c['name']}: {exc}"
            return info
        cid = state.container_ids.get(c["name"]) or runtime.new_sandbox_id()
        state.container_ids[c["name"]] = cid
        state.pids[c["name"]] = proc.pid
        state.ticks[c["name"]] = runtime.start_ticks(proc.pid) or 0
        state.started_at[c["name"]] = now_iso()
        self.procs[(state.uid, c["name"])] = proc
        info.container_id, info.running, info.started_at = cid, True, state.started_at[c["name"]]
        info.ready = wl.port is None
        info.port = wl.port
        return info

    def _container_env(self, pod: dict, c: dict) -> dict[str, str]:
        """The container's env: values, and valueFrom fieldRef / configMapKeyRef."""
        fields = {"metadata.name": pod["metadata"]["name"], "metadata.namespace": pod["metadata"]["namespace"],
                  "metadata.uid": pod["metadata"]["uid"], "spec.nodeName": self.node,
                  "status.hostIP": self.node_ip, "spec.serviceAccountName": "default"}
        env: dict[str, str] = {}
        for e in c.get("env") or []:
            if e.get("value") is not None:
                env[e["name"]] = str(e["value"])
                continue
            src = e.get("valueFrom") or {}
            if "fieldRef" in src:
                path = src["fieldRef"].get("fieldPath", "")
                if path in fields:
                    env[e["name"]] = fields[path]
            elif "configMapKeyRef" in src:
                ref = src["configMapKeyRef"]
                cm = self.store.find("ConfigMap", ref.get("name", ""), pod["metadata"]["namespace"])
                value = ((cm or {}).get("data") or {}).get(ref.get("key", ""))
                if value is not None:
                    env[e["name"]] = value
        return env

    def _wait_ready(self, state: PodState, pod: dict, infos: list[ContainerInfo], timeout: float = 5.0) -> None:
        # the readiness of a container with a port is decided once, here: on a slow machine
        # (a VM under TCG) its deadline scales with CALICOLAB_DEADLINE_SCALE (testbed.poll)
        deadline = time.monotonic() + timeout * deadline_scale()
        for info in infos:
            port = info.port
            if not info.running or port is None:
                continue
            pid = state.pids[info.name]
            while time.monotonic() < deadline and runtime.alive(pid):
                if runtime.listening(pid, port):
                    info.ready = True
                    break
                time.sleep(0.005)

    def _infos(self, state: PodState, pod: dict) -> list[ContainerInfo]:
        infos = []
        for c in pod["spec"]["containers"]:
            name = c["name"]
            info = ContainerInfo(name, c["image"], container_id=state.container_ids.get(name, ""),
                                 restart_count=state.restarts.get(name, 0), started_at=state.started_at.get(name))
            self._decorate(info, state)
            err = self.image_errors.get(state.uid, {}).get(name)
            pid = state.pids.get(name)
            if err:
                info.waiting_reason, info.waiting_message = "ImagePullBackOff", err
            elif pid and self._alive(state.uid, name, pid):
                info.running = info.ready = True
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
        (CrashLoopBackOff: 1 s, then 10 s doubling to 5 min) has passed."""
        now = time.monotonic()
        for uid, state in list(self.states.items()):
            if uid in self.busy:
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
                self._submit(uid, self._on_exit, uid, name, code)

    def _on_exit(self, uid: str, name: str, code: int) -> None:
        state = self.states.get(uid)
        pod = next((p for p in self.my_pods() if p["metadata"]["uid"] == uid), None)
        if state is None or pod is None:
            return
        self._write_status(pod, self._infos(state, pod), cni.pod_ips(state.cni_result or {}), state=state)
        policy = pod["spec"].get("restartPolicy", "Always")
        if policy == "Always" or (policy == "OnFailure" and code != 0):
            n = state.restarts.get(name, 0)
            backoff = min(10.0 * 2 ** (n - 1), 300.0) if n else 1.0
            log.info("pod %s/%s container %s exited %s; restarting in %.0fs", state.namespace, state.name,
                     name, code, backoff)
            self.restart_at[(uid, name)] = time.monotonic() + backoff

    def _restart(self, uid: str, name: str) -> None:
        state = self.states.get(uid)
        pod = next((p for p in self.my_pods() if p["metadata"]["uid"] == uid), None)
        if state is None or pod is None or pod["metadata"].get("deletionTimestamp"):
            return
        state.restarts[name] = state.restarts.get(name, 0) + 1
        c = next(c for c in pod["spec"]["containers"] if c["name"] == name)
        self.exits.pop((uid, name), None)
        self._start_container(state, pod, c)
        state.save(self.root_dir)
        self._write_status(pod, self._infos(state, pod), cni.pod_ips(state.cni_result or {}), state=state)

    def _teardown(self, uid: str, pod: dict | None) -> None:
        state = self.states.get(uid)
        if state is not None:
            self.stop_pod(state, cni_del=True)
        if pod is not None and pod["metadata"].get("deletionTimestamp"):
            try:
                self.store.remove("Pod", pod["metadata"]["name"], pod["metadata"]["namespace"])
            except errors.K8sError as exc:
                log.warning("removing pod %s: %s", pod["metadata"]["name"], exc)
            log.info("pod %s/%s deleted", pod["metadata"]["namespace"], pod["metadata"]["name"])

    def stop_pod(self, state: PodState, cni_del: bool = True) -> None:
        """Kill the pod's processes, run CNI DEL, remove the sandbox netns and state.

        Only processes that are our children, live in the pod's netns, or have the
        recorded start time are signalled (a PID from a state file may have been reused)."""
        in_netns = set(runtime.netns_pids(state.netns))
        cri_rt = self.cri if self.cri is not None and state.runtime == self.cri.name else None
        for name, pid in state.pids.items():
            if cri_rt is not None and state.container_runtimes.get(name) == cri_rt.name:
                cri_rt.stop_container(state, name, grace=2.0)
                continue
            proc = self.procs.pop((state.uid, name), None)
            if proc is not None or pid in in_netns or (
                    state.ticks.get(name) and runtime.start_ticks(pid) == state.ticks[name]):
                runtime.kill_process(pid, grace=2.0, proc=proc)
        for pid in runtime.netns_pids(state.netns):  # e.g. processes left by kubectl exec
            if pid != state.sandbox_pid:
                runtime.kill_process(pid, grace=0.5)
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
        shutil.rmtree(state.pod_dir(self.root_dir), ignore_errors=True)
        with self.lock:
            self.states.pop(state.uid, None)
        for key in [k for k in self.exits if k[0] == state.uid]:
            self.exits.pop(key, None)
            self.restart_at.pop(key, None)
        self.image_errors.pop(state.uid, None)

    def adopt(self) -> None:
        """Pick up pods a previous kubelet started (kept if their pod still exists)."""
        live = {p["metadata"]["uid"] for p in self.my_pods() if not p["metadata"].get("deletionTimestamp")}
        for state in PodState.load_all(self.root_dir):
            if state.node != self.node or state.lab != self.lab:
                continue  # another node's (or lab's) pod sharing this root dir
            if state.uid in live and (not state.netns or os.path.exists(state.netns)) and state.cni_result is not None:
                self.states[state.uid] = state
                log.info("adopted pod %s/%s", state.namespace, state.name)
            else:
                log.info("cleaning up pod %s/%s left by a previous kubelet", state.namespace, state.name)
                self.stop_pod(state, cni_del=True)

    # --- kube-proxy --------------------------------------------------------------------------
    def sync_proxy(self, full: bool = False) -> None:
        """Apply the Services' iptables rules in this node's netns (``full``: also re-check
        the hooks in the built-in chains and rewrite every rule)."""
        if self.proxy is None:
            return
        if self.proxy.cluster_cidr is None:
            self.proxy.cluster_cidr = self.store.cluster_config()["podSubnet"]
        services, endpoints = self.store.list("Service"), self.store.list("Endpoints")
        if full:
            self.proxy.resync(services, endpoints)
        else:
            self.proxy.sync(services, endpoints)

    # --- main loop -----------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Register, then reconcile on every change until ``stop`` is set."""
        registered = False
        while not stop.is_set():  # etcd may come and go at start-up too: retry both steps
            try:
                if not registered:
                    self.register()
                    registered = True
                self.adopt()
                break
            except errors.Unavailable as exc:
                log.warning("waiting for the datastore: %s", exc)
                stop.wait(0.5)
        log.info("kubelet running: node %s, %d pod(s) adopted", self.node, len(self.states))
        self.feed.start(stop)
        last_proc_check = 0.0
        last_proxy_resync = time.monotonic()
        while not stop.is_set():
            kinds = self.feed.wait(stop, timeout=0.2 if self.network_ready else 0.05)
            if stop.is_set():
                break
            try:
                changed = self.check_network()
                if changed or kinds & {"*", "Pod", "Node"} or self._retry_due():
                    self.sync_pods()
                if time.monotonic() - last_proxy_resync > PROXY_RESYNC:
                    last_proxy_resync = time.monotonic()
                    self.sync_proxy(full=True)
                elif kinds & {"*", "Service", "Endpoints"}:
                    self.sync_proxy()
                if time.monotonic() - last_proc_check > 0.5:
                    last_proc_check = time.monotonic()
                    self.check_processes()
            except errors.Unavailable as exc:
                log.warning("datastore unavailable: %s", exc)
                self.feed.mark()
                stop.wait(0.5)
            except Exception:
                log.exception("kubelet pass failed")
                self.feed.mark()
                stop.wait(0.5)

    def shutdown(self, kill_pods: bool = False) -> None:
        """Stop the worker pool; with ``kill_pods`` also stop every pod (no CNI DEL)."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        if kill_pods:
            for state in list(self.states.values()):
                self.stop_pod(state, cni_del=False)


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
    p.add_argument("--controllers", action="store_true",
                   help="control-plane node: also run the controllers and label the node control-plane")
    p.add_argument("--etcd-endpoints", default=os.environ.get("ETCD_ENDPOINTS", "http://127.0.0.1:2379"),
                   help="etcd endpoints, comma separated (default $ETCD_ENDPOINTS)")
    p.add_argument("--cni-conf-dir", default="/etc/cni/net.d")
    p.add_argument("--cni-bin-dir", default="/opt/cni/bin", help="CNI plugin dirs, colon separated")
    p.add_argument("--netns-dir", default="/run/netns", help="where sandbox netns are bound")
    p.add_argument("--root-dir", default=None,
                   help="kubelet state (pods' files); default /var/lib/kubelet (in a lab that does not "
                        "mount one per node: /run/calicolab/$CALICOLAB_LAB/kubelet/<node>)")
    p.add_argument("--pod-network-cidr", default=os.environ.get("CALICO_IPV4POOL_CIDR", DEFAULT_POD_CIDR),
                   help="cluster pod CIDR (kubeadm --pod-network-cidr), with --controllers")
    p.add_argument("--service-cidr", default=DEFAULT_SERVICE_CIDR, help="ClusterIP range, with --controllers")
    p.add_argument("--node-status-update-frequency", type=_duration, default=NODE_STATUS_UPDATE,
                   metavar="DURATION", help="how often the Node's status is checked and corrected "
                   "(e.g. 10s, 500ms; default 10s)")
    p.add_argument("--no-kube-proxy", action="store_true", help="do not run kube-proxy")
    p.add_argument("--container-runtime", default="netns", metavar="NAME",
                   help="netns (pods are processes in a netns; default), containerd or docker "
                        "(pods are containers of that runtime: docs/runtimes.md)")
    p.add_argument("--runtime-dir", default=None,
                   help="the node's runtime directory holding the daemon's socket and the pods' files "
                        "(containerd: <dir>/containerd/containerd.sock; docker: <dir>/docker/docker.sock)")
    p.add_argument("--kill-pods-on-exit", action="store_true",
                   help="on SIGTERM also kill the pods' processes and remove their netns")
    p.add_argument("--allow-host-netns", action="store_true", help=argparse.SUPPRESS)
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
    store = Store.from_endpoints([e.strip() for e in args.etcd_endpoints.split(",") if e.strip()])
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    node_ip = args.node_ip or detect_node_ip()
    threads = []
    if args.controllers:
        from testbed.k8s.controllers import ControllerManager

        while not stop.is_set():
            try:
                store.ensure_cluster(args.pod_network_cidr, args.service_cidr)
                break
            except errors.Unavailable as exc:
                log.warning("waiting for the datastore: %s", exc)
                stop.wait(0.5)
        cm = ControllerManager(store, args.pod_network_cidr)
        t = threading.Thread(target=cm.run, args=(stop,), daemon=True, name="controllers")
        t.start()
        threads.append(t)
    container_runtime = make_runtime(args.container_runtime, args.runtime_dir,
                                     os.environ.get("CALICOLAB_LAB", ""), args.node)
    kubelet = Kubelet(store, args.node, node_ip, args.cni_conf_dir, args.cni_bin_dir.split(":"),
                      args.netns_dir, args.root_dir, control_plane=args.controllers,
                      kube_proxy=not args.no_kube_proxy,
                      node_status_update=args.node_status_update_frequency,
                      container_runtime=container_runtime)
    kubelet.run(stop)
    kubelet.shutdown(kill_pods=args.kill_pods_on_exit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
