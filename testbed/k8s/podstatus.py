"""Pure builders of what the kubelet reports: Pod status and Node status/conditions."""

from __future__ import annotations

from dataclasses import dataclass

from testbed.k8s.version import KUBE_VERSION

NETWORK_NOT_READY_MESSAGE = (
    "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady "
    "message:Network plugin returns error: cni config uninitialized"
)


@dataclass
class ContainerInfo:
    """What the runtime knows of one container."""

    name: str
    image: str
    container_id: str = ""
    running: bool = False
    ready: bool = False
    started_at: str | None = None
    restart_count: int = 0
    waiting_reason: str | None = None
    waiting_message: str | None = None
    exit_code: int | None = None
    finished_at: str | None = None
    port: int | None = None  # TCP port whose listening socket makes it ready
    runtime: str = "containerd"  # the containerID scheme (containerd://, docker://)
    image_ref: str = ""  # the image the runtime ran, when it differs from the spec's (built locally)
    image_id: str = ""  # its digest reference (repo@sha256:...)
    started: bool | None = None  # the startup probe's verdict (None: running means started)


def _condition(typ: str, ok: bool, now: str, reason: str | None = None, message: str | None = None) -> dict:
    c = {"type": typ, "status": "True" if ok else "False", "lastProbeTime": None, "lastTransitionTime": now}
    if reason:
        c["reason"] = reason
    if message:
        c["message"] = message
    return c


def container_status(info: ContainerInfo) -> dict:
    """One entry of status.containerStatuses."""
    from testbed.k8s.images import qualified

    if info.running:
        state = {"running": {"startedAt": info.started_at}}
    elif info.exit_code is not None and not info.waiting_reason:
        state = {"terminated": {"exitCode": info.exit_code, "reason": "Completed" if info.exit_code == 0 else "Error",
                                "finishedAt": info.finished_at, "startedAt": info.started_at}}
    else:
        waiting = {"reason": info.waiting_reason or "ContainerCreating"}
        if info.waiting_message:
            waiting["message"] = info.waiting_message
        state = {"waiting": waiting}
    cs = {"name": info.name, "image": info.image, "imageID": "", "ready": info.ready,
          "restartCount": info.restart_count,
          "started": info.running if info.started is None else info.running and info.started, "state": state}
    if info.container_id:
        cs["containerID"] = f"{info.runtime}://{info.container_id}"
        cs["imageID"] = f"{qualified(info.image)}"
    if info.image_ref:
        cs["image"] = info.image_ref
        cs["imageID"] = info.image_id or info.image_ref
    return cs


def pod_status(pod: dict, containers: list[ContainerInfo], host_ip: str, pod_ips: list[str], now: str,
               start_time: str | None = None, sandbox_ready: bool = True,
               init: list[ContainerInfo] | None = None) -> dict:
    """The status a kubelet writes for a pod bound to it (``init``: its init containers, in
    order; the pod is Pending and not Initialized until each has exited 0)."""
    spec_containers = pod["spec"]["containers"]
    by_name = {c.name: c for c in containers}
    infos = [by_name.get(c["name"]) or ContainerInfo(c["name"], c["image"]) for c in spec_containers]
    all_ready = all(i.ready for i in infos)
    policy = pod["spec"].get("restartPolicy", "Always")
    if all(i.running for i in infos):
        phase = "Running"
    elif policy != "Always" and all(i.exit_code is not None and not i.running for i in infos):
        phase = "Succeeded" if all(i.exit_code == 0 for i in infos) else "Failed"
    elif any(i.running or i.restart_count or i.exit_code is not None for i in infos):
        phase = "Running"
    else:
        phase = "Pending"
    not_ready = [i.name for i in infos if not i.ready]
    msg = f"containers with unready status: [{' '.join(not_ready)}]" if not_ready else None
    incomplete = [i.name for i in init or [] if i.running or i.exit_code != 0]
    if incomplete:
        phase = "Pending"
    status = {
        "phase": phase,
        "conditions": [
            _condition("Initialized", not incomplete, now, "ContainersNotInitialized" if incomplete else None,
                       f"containers with incomplete status: [{' '.join(incomplete)}]" if incomplete else None),
            _condition("Ready", all_ready, now, None if all_ready else "ContainersNotReady", msg),
            _condition("ContainersReady", all_ready, now, None if all_ready else "ContainersNotReady", msg),
            _condition("PodScheduled", True, now),
        ],
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "containerStatuses": [container_status(i) for i in infos],
        "qosClass": "BestEffort",
        "startTime": start_time or now,
    }
    if init:
        status["initContainerStatuses"] = [container_status(i) for i in init]
    if sandbox_ready is False:
        status["conditions"].insert(0, _condition("PodReadyToStartContainers", False, now))
    if pod_ips:
        status["podIP"] = pod_ips[0]
        status["podIPs"] = [{"ip": ip} for ip in pod_ips]
    return status


def node_conditions(network_ready: bool, now: str, previous: list[dict] | None = None) -> list[dict]:
    """The Node's conditions; Ready follows the CNI config (NetworkPluginNotReady until one exists).
    Transition times are kept from ``previous`` when a condition did not change."""
    def cond(typ: str, status: str, reason: str, message: str) -> dict:
        return {"type": typ, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": now, "lastTransitionTime": now}

    conds = [
        cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        cond("Ready", "True", "KubeletReady", "kubelet is posting ready status")
        if network_ready else cond("Ready", "False", "NetworkPluginNotReady", NETWORK_NOT_READY_MESSAGE),
    ]
    old = {c.get("type"): c for c in previous or []}
    for c in conds:
        prev = old.get(c["type"])
        if prev and prev.get("status") == c["status"] and prev.get("lastTransitionTime"):
            c["lastTransitionTime"] = prev["lastTransitionTime"]
    return conds


def node_object(name: str, ip: str, labels: dict[str, str], taints: list[dict], node_info: dict,
                capacity: dict[str, str], network_ready: bool, now: str) -> dict:
    """The Node a kubelet registers."""
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels,
                     "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                                     "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
        "spec": {"taints": taints} if taints else {},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
            "nodeInfo": node_info,
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": node_conditions(network_ready, now),
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        },
    }


def default_node_info(kernel: str, os_image: str, machine_id: str = "") -> dict:
    """status.nodeInfo as a v1.28 kubelet on containerd reports it."""
    return {
        "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "containerd://1.6.20",
        "kernelVersion": kernel, "kubeProxyVersion": KUBE_VERSION, "kubeletVersion": KUBE_VERSION,
        "machineID": machine_id, "operatingSystem": "linux", "osImage": os_image, "systemUUID": machine_id,
    }
