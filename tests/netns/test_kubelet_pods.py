"""The kubelet in a real node netns, an API client of the node's API server: readiness from
the CNI config dir (and the not-ready taint), pod sandboxes via a real CNI chain (reference
bridge + host-local + portmap plugins), workloads, events, and the real kubectl's exec, logs
and delete through the kubelet API."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kubeclient import NotFound
from testbed.poll import wait_for
from tests.netns.kubelet_support import KubeletProcess, bridge_conflist
from tests.support import require, require_root, require_tool, unique

pytestmark = pytest.mark.netns

SUBNET = "10.244.7.0/24"
NOT_READY_MSG = ("container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady "
                 "message:Network plugin returns error: cni config uninitialized")


@pytest.fixture
def node(node_cluster, tmp_path):
    """A node netns with its API server and a kubelet; everything removed after."""
    require_root()
    require_tool("nsenter")
    require_tool("curl")
    require(os.path.exists("/usr/lib/cni/bridge"), "needs containernetworking-plugins in /usr/lib/cni")
    cluster = node_cluster("k8n", "172.31.250.1")
    name = unique("node-")
    kubelet = KubeletProcess(cluster.netns, name, "172.31.250.1", cluster.kubelet_conf(name), str(tmp_path))
    try:
        yield kubelet, cluster, cluster.netns
    finally:
        kubelet.stop()


def get(cluster, kind: str, name: str, ns: str | None = "default") -> dict | None:
    from testbed.k8s.apiclient import KINDS

    api, plural, namespaced = KINDS[kind]
    try:
        return cluster.client().get(api, plural, name, ns if namespaced else None)
    except NotFound:
        return None


def ready_condition(cluster, name: str) -> dict | None:
    node = get(cluster, "Node", name)
    if node is None:
        return None
    return next((c for c in node["status"]["conditions"] if c["type"] == "Ready"), None)


def make_pod(cluster, name: str, node: str, image: str = "nginx", **spec) -> dict:
    return cluster.client().create({"apiVersion": "v1", "kind": "Pod",
                                    "metadata": {"name": name, "labels": {"app": name}},
                                    "spec": {"nodeName": node, "containers": [{"name": "main", "image": image}],
                                             **spec}}, "default")


def events_of(cluster, name: str) -> list[tuple[str, str]]:
    items = cluster.client().list("v1", "events", "default", field_selector=f"involvedObject.name={name}")["items"]
    return [(e["reason"], e["message"]) for e in sorted(items, key=lambda e: int(e["metadata"]["resourceVersion"]))]


def test_node_not_ready_until_cni_config_then_pods_run_and_serve(node, tmp_path):
    kubelet, cluster, ns = node
    cond = wait_for(lambda: ready_condition(cluster, kubelet.node), lambda c: c is not None, timeout=15,
                    what="node registered")
    assert (cond["status"], cond["reason"], cond["message"]) == ("False", "NetworkPluginNotReady", NOT_READY_MSG)
    taints = get(cluster, "Node", kubelet.node)["spec"]["taints"]
    assert [(t["key"], t["effect"]) for t in taints] == [("node.kubernetes.io/not-ready", "NoSchedule")]
    got = cluster.kubectl("get", "nodes")
    assert kubelet.node in got.stdout and "NotReady" in got.stdout, got
    lease = wait_for(lambda: cluster.kubectl("get", "lease", kubelet.node, "-n", "kube-node-lease", "-o",
                                             "jsonpath={.spec.holderIdentity} {.spec.leaseDurationSeconds}"),
                     lambda out: out.stdout, timeout=10, what="the node's Lease (the kubelet's heartbeat)")
    assert lease.stdout == f"{kubelet.node} 40", lease

    make_pod(cluster, "web", kubelet.node)
    pending = wait_for(lambda: get(cluster, "Pod", "web"),
                       lambda p: (p.get("status") or {}).get("containerStatuses"), timeout=10,
                       what="pod status while the network is not ready")
    assert pending["status"]["phase"] == "Pending"
    assert pending["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ContainerCreating"
    assert "ContainerCreating" in cluster.kubectl("get", "pods").stdout
    assert kubelet.in_mount_ns("ls", kubelet.netns_dir).stdout.split() == []

    # a hostNetwork pod needs no CNI: it runs in the node's netns even now, with the node's IP
    make_pod(cluster, "hostweb", kubelet.node, hostNetwork=True)
    host = wait_for(lambda: get(cluster, "Pod", "hostweb"), lambda p: p["status"].get("phase") == "Running",
                    timeout=15, what="hostNetwork pod Running on a NotReady node")
    assert host["status"]["podIP"] == "172.31.250.1" and \
        "calicolab.io/netns" not in (host["metadata"].get("annotations") or {})
    assert kubelet.in_mount_ns("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3",
                               "http://127.0.0.1/").stdout == "200"

    data_dir = str(tmp_path / "ipam")
    kubelet.write_conflist(bridge_conflist("testnet", unique("cnb"), SUBNET, data_dir))
    wait_for(lambda: ready_condition(cluster, kubelet.node), lambda c: c["status"] == "True", timeout=10,
             what="node Ready after the CNI config appeared")
    wait_for(lambda: get(cluster, "Node", kubelet.node), lambda n: not n["spec"].get("taints"), timeout=10,
             what="the not-ready taint removed once Ready")

    pod = wait_for(lambda: get(cluster, "Pod", "web"), lambda p: p["status"].get("phase") == "Running"
                   and p["status"].get("podIP"), timeout=15, what="pod Running with an IP")
    ip = pod["status"]["podIP"]
    assert ip.startswith("10.244.7.")
    assert pod["status"]["hostIP"] == "172.31.250.1"
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"
    reasons = [r for r, _ in wait_for(lambda: events_of(cluster, "web"), lambda evs: ("Started", "Started "
                                      "container main") in evs, timeout=10, what="the kubelet's events")]
    assert reasons[-4:] == ["Pulling", "Pulled", "Created", "Started"], reasons

    # the sandbox: a cni-<uuid> netns bound in the node's private netns dir, holding eth0 with the pod IP
    netns_name = pod["metadata"]["annotations"]["calicolab.io/netns"]
    assert netns_name.startswith("cni-") and len(netns_name) == 40
    assert kubelet.in_mount_ns("ls", kubelet.netns_dir).stdout.split() == [netns_name]
    with open("/proc/self/mountinfo") as f:
        assert netns_name not in f.read(), "the pod netns mount leaked out of the node's mount namespace"
    addr = kubelet.in_mount_ns("nsenter", f"--net={kubelet.netns_dir}/{netns_name}", "ip", "-4", "-o", "addr",
                               "show", "eth0").stdout
    assert f"{ip}/24" in addr

    # the runtime passed CNI_CONTAINERID (sandbox id) and CNI_IFNAME=eth0: host-local recorded them
    with open(os.path.join(data_dir, "testnet", ip)) as f:
        owner = f.read().split()
    assert len(owner[0]) == 64 and owner[1] == "eth0"

    # the workload answers HTTP 200 on :80, from the node
    def http_code() -> str:
        return subprocess.run(["ip", "netns", "exec", ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                               "--max-time", "3", f"http://{ip}/"], capture_output=True, text=True).stdout

    wait_for(http_code, lambda c: c == "200", timeout=20, what=f"HTTP 200 from http://{ip}/")

    # kubectl exec runs inside the pod (through the API server and the kubelet API)
    out = cluster.kubectl("exec", "web", "--", "ip", "-4", "-o", "addr", "show", "eth0")
    assert out.returncode == 0 and f"{ip}/24" in out.stdout, out
    out = cluster.kubectl("exec", "web", "--", "sh", "-c", "exit 7")
    assert out.returncode == 7 and "command terminated with exit code 7" in out.stderr, out

    # delete: Terminating, then CNI DEL (IP released, veth gone), netns removed, process gone, object removed
    pids = json.loads(pod["metadata"]["annotations"]["calicolab.io/pids"])
    res = cluster.kubectl("delete", "pod", "web", "--timeout", "20s")
    assert res.returncode == 0 and 'pod "web" deleted' in res.stdout, res
    assert get(cluster, "Pod", "web") is None
    assert kubelet.in_mount_ns("ls", kubelet.netns_dir).stdout.split() == []
    assert not os.path.exists(os.path.join(data_dir, "testnet", ip))
    assert all(not os.path.exists(f"/proc/{pid}") for pid in pids.values())
    links = subprocess.run(["ip", "-n", ns, "-o", "link", "show", "type", "veth"], capture_output=True,
                           text=True).stdout
    assert links.strip() == ""
    assert ("Killing", "Stopping container main") in events_of(cluster, "web")


def test_busybox_idles_unknown_image_backs_off(node, tmp_path):
    kubelet, cluster, ns = node
    kubelet.write_conflist(bridge_conflist("testnet", unique("cnb"), SUBNET, str(tmp_path / "ipam")))
    wait_for(lambda: ready_condition(cluster, kubelet.node), lambda c: c is not None and c["status"] == "True",
             timeout=15, what="node Ready")
    make_pod(cluster, "box", kubelet.node, image="busybox:1.36")
    make_pod(cluster, "nope", kubelet.node, image="example.com/no-such-image:1")
    box = wait_for(lambda: get(cluster, "Pod", "box"), lambda p: p["status"].get("phase") == "Running", timeout=15,
                   what="busybox Running")
    nope = wait_for(lambda: get(cluster, "Pod", "nope"),
                    lambda p: (p["status"].get("containerStatuses") or [{}])[0].get("state", {}).get(
                        "waiting", {}).get("reason") == "ImagePullBackOff", timeout=15,
                    what="status of the unknown image pod")
    waiting = nope["status"]["containerStatuses"][0]["state"]["waiting"]
    assert "example.com/no-such-image:1" in waiting["message"]
    table = cluster.kubectl("get", "pods", "-o", "wide").stdout
    assert "ImagePullBackOff" in table and box["status"]["podIP"] in table
    out = cluster.kubectl("exec", "box", "--", "cat", "/proc/self/net/route")
    assert out.returncode == 0 and "eth0" in out.stdout, out
    # a container's output is readable with kubectl logs (and --tail)
    cluster.client().create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "talker"},
                             "spec": {"nodeName": kubelet.node, "containers": [{
                                 "name": "main", "image": "busybox",
                                 "command": ["sh", "-c",
                                             "echo hello from $HOSTNAME; ip -4 -o addr show eth0; sleep 600"]}]}},
                            "default")
    wait_for(lambda: cluster.kubectl("logs", "talker").stdout, lambda out: "eth0" in out, timeout=15,
             what="kubectl logs of the talker pod")
    logs = cluster.kubectl("logs", "talker", "--tail", "2").stdout.splitlines()
    talker_ip = get(cluster, "Pod", "talker")["status"]["podIP"]
    assert logs[0] == "hello from talker" and talker_ip in logs[1]


def test_crashing_containers_back_off_and_completed_ones_succeed(node, tmp_path):
    kubelet, cluster, ns = node
    kubelet.write_conflist(bridge_conflist("testnet", unique("cnb"), SUBNET, str(tmp_path / "ipam")))
    wait_for(lambda: ready_condition(cluster, kubelet.node), lambda c: c is not None and c["status"] == "True",
             timeout=15, what="node Ready")
    crash = {"name": "main", "image": "busybox", "command": ["sh", "-c", "echo started $RESTARTS; exit 3"]}
    cluster.client().create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "crash"},
                             "spec": {"nodeName": kubelet.node, "containers": [crash]}}, "default")
    once = {"name": "main", "image": "busybox", "command": ["true"]}
    cluster.client().create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "once"},
                             "spec": {"nodeName": kubelet.node, "restartPolicy": "Never", "containers": [once]}},
                            "default")

    def container(name: str) -> dict:
        return (get(cluster, "Pod", name)["status"].get("containerStatuses") or [{}])[0]

    cs = wait_for(lambda: container("crash"), lambda c: c.get("restartCount") == 1
                  and c["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff", timeout=20,
                  what="crash restarted once, then in CrashLoopBackOff")
    assert "back-off" in cs["state"]["waiting"]["message"]
    assert "CrashLoopBackOff" in cluster.kubectl("get", "pod", "crash").stdout
    prev = cluster.kubectl("logs", "crash", "--previous")
    assert prev.returncode == 0 and prev.stdout.strip().startswith("started"), prev
    done = wait_for(lambda: get(cluster, "Pod", "once")["status"], lambda st: st.get("phase") == "Succeeded",
                    timeout=20, what="the run-once pod Succeeded")
    assert done["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    # deleting a pod in back-off is not held up by the back-off
    cluster.client().delete("v1", "pods", "crash", "default")
    wait_for(lambda: get(cluster, "Pod", "crash"), lambda p: p is None, timeout=8, what="crash pod removed")


def test_refuses_to_run_in_the_machines_own_netns(tmp_path):
    from testbed.k8s.kubelet import in_host_netns

    require(in_host_netns(), "the test process must run in the machine's network namespace")
    conf = tmp_path / "none.conf"
    conf.write_text("{}")
    res = subprocess.run([sys.executable, "-m", "testbed.k8s.kubelet", "--node", "stray",
                          "--kubeconfig", str(conf)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "refusing to run in the machine's own network namespace" in res.stderr


def test_a_csi_volume_waits_for_its_driver_with_failed_mount_events(node):
    """A pod with an inline csi.tigera.io volume does not start until the volume is published:
    without the CSIDriver object, then without the driver registered on the node, it stays
    ContainerCreating with a FailedMount event naming the reason (docs/csi.md)."""
    kubelet, cluster, _ns = node
    wait_for(lambda: ready_condition(cluster, kubelet.node), lambda c: c is not None, timeout=15,
             what="node registered")
    make_pod(cluster, "csi-pod", kubelet.node, image="busybox", hostNetwork=True,
             volumes=[{"name": "felix-sync", "csi": {"driver": "csi.tigera.io"}}])
    reasons = wait_for(lambda: [m for r, m in events_of(cluster, "csi-pod") if r == "FailedMount"],
                       lambda ms: any("CSIDriver csi.tigera.io not found" in m for m in ms), timeout=20,
                       what="FailedMount: no CSIDriver")
    assert reasons, reasons
    cluster.client().create({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
                             "metadata": {"name": "csi.tigera.io"},
                             "spec": {"podInfoOnMount": True, "volumeLifecycleModes": ["Ephemeral"]}})
    wait_for(lambda: [m for r, m in events_of(cluster, "csi-pod") if r == "FailedMount"],
             lambda ms: any("driver name csi.tigera.io not found in the list of registered CSI drivers" in m
                            for m in ms), timeout=30, what="FailedMount: driver not registered")
    pod = get(cluster, "Pod", "csi-pod")
    waiting = [(cs.get("state") or {}).get("waiting", {}).get("reason")
               for cs in (pod.get("status") or {}).get("containerStatuses") or []]
    assert pod["status"]["phase"] == "Pending" and waiting == ["ContainerCreating"], pod["status"]
