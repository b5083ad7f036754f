"""The kubelet in a real node netns: readiness from the CNI config dir, pod sandboxes via a
real CNI chain (reference bridge + host-local + portmap plugins), workloads, exec, delete."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from testbed.k8s.store import Store
from testbed.poll import wait_for
from tests.netns.kubelet_support import KubeletProcess, NetnsRelay, bridge_conflist
from tests.support import require, require_root, require_tool, unique

pytestmark = pytest.mark.netns

SUBNET = "10.244.7.0/24"
NOT_READY_MSG = ("container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady "
                 "message:Network plugin returns error: cni config uninitialized")


@pytest.fixture
def node(netns, etcd_endpoints, tmp_path):
    """A node netns running a kubelet against the session etcd; everything removed after."""
    require_root()
    require_tool("nsenter")
    require_tool("curl")
    require(os.path.exists("/usr/lib/cni/bridge"), "needs containernetworking-plugins in /usr/lib/cni")
    ns = netns("k8n")
    host, port = etcd_endpoints[0].removeprefix("http://").split(":")
    relay = NetnsRelay(ns, (host, int(port)))
    store = Store.from_endpoints(etcd_endpoints)
    store.ensure_cluster()
    name = unique("node-")
    kubelet = KubeletProcess(ns, name, "172.31.250.1", relay.endpoint, str(tmp_path))
    try:
        yield kubelet, store, ns
    finally:
        kubelet.stop()
        relay.close()


def ready_condition(store: Store, name: str) -> dict | None:
    node = store.find("Node", name, None)
    if node is None:
        return None
    return next((c for c in node["status"]["conditions"] if c["type"] == "Ready"), None)


def kubectl(endpoints: list[str], *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ETCD_ENDPOINTS=",".join(endpoints))
    return subprocess.run([sys.executable, "-m", "testbed.kubectl", *args], capture_output=True, text=True,
                          env=env, timeout=30)


def make_pod(store: Store, name: str, node: str, image: str = "nginx", **spec) -> dict:
    return store.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
                         "spec": {"nodeName": node, "containers": [{"name": "main", "image": image}], **spec}})


def test_node_not_ready_until_cni_config_then_pods_run_and_serve(node, etcd_endpoints, tmp_path):
    kubelet, store, ns = node
    cond = wait_for(lambda: ready_condition(store, kubelet.node), lambda c: c is not None, timeout=15,
                    what="node registered")
    assert (cond["status"], cond["reason"], cond["message"]) == ("False", "NetworkPluginNotReady", NOT_READY_MSG)
    got = kubectl(etcd_endpoints, "get", "nodes")
    assert kubelet.node in got.stdout and "NotReady" in got.stdout, got

    make_pod(store, "web", kubelet.node)
    pending = wait_for(lambda: store.get("Pod", "web"),
                       lambda p: (p.get("status") or {}).get("containerStatuses"), timeout=10,
                       what="pod status while the network is not ready")
    assert pending["status"]["phase"] == "Pending"
    assert pending["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ContainerCreating"
    assert "ContainerCreating" in kubectl(etcd_endpoints, "get", "pods").stdout
    assert kubelet.in_mount_ns("ls", kubelet.netns_dir).stdout.split() == []

    # a hostNetwork pod needs no CNI: it runs in the node's netns even now, with the node's IP
    make_pod(store, "hostweb", kubelet.node, hostNetwork=True)
    host = wait_for(lambda: store.get("Pod", "hostweb"), lambda p: p["status"].get("phase") == "Running",
                    timeout=15, what="hostNetwork pod Running on a NotReady node")
    assert host["status"]["podIP"] == "172.31.250.1" and "calicolab.io/netns" not in host["metadata"]["annotations"]
    assert kubelet.in_mount_ns("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3",
                               "http://127.0.0.1/").stdout == "200"

    data_dir = str(tmp_path / "ipam")
    kubelet.write_conflist(bridge_conflist("testnet", unique("cnb"), SUBNET, data_dir))
    wait_for(lambda: ready_condition(store, kubelet.node), lambda c: c["status"] == "True", timeout=10,
             what="node Ready after the CNI config appeared")

    pod = wait_for(lambda: store.get("Pod", "web"), lambda p: p["status"].get("phase") == "Running"
                   and p["status"].get("podIP"), timeout=15, what="pod Running with an IP")
    ip = pod["status"]["podIP"]
    assert ip.startswith("10.244.7.")
    assert pod["status"]["hostIP"] == "172.31.250.1"
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"

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

    # kubectl exec runs inside the pod
    out = kubectl(etcd_endpoints, "exec", "web", "--", "ip", "-4", "-o", "addr", "show", "eth0")
    assert out.returncode == 0 and f"{ip}/24" in out.stdout, out

    # delete: CNI DEL (IP released, veth gone), netns removed, process gone, object removed
    pids = json.loads(pod["metadata"]["annotations"]["calicolab.io/pids"])
    res = kubectl(etcd_endpoints, "delete", "pod", "web", "--timeout", "20")
    assert res.returncode == 0 and 'pod "web" deleted' in res.stdout, res
    assert store.find("Pod", "web") is None
    assert kubelet.in_mount_ns("ls", kubelet.netns_dir).stdout.split() == []
    assert not os.path.exists(os.path.join(data_dir, "testnet", ip))
    assert all(not os.path.exists(f"/proc/{pid}") for pid in pids.values())
    links = subprocess.run(["ip", "-n", ns, "-o", "link", "show", "type", "veth"], capture_output=True,
                           text=True).stdout
    assert links.strip() == ""


def test_busybox_idles_unknown_image_backs_off(node, tmp_path, etcd_endpoints):
    kubelet, store, ns = node
    kubelet.write_conflist(bridge_conflist("testnet", unique("cnb"), SUBNET, str(tmp_path / "ipam")))
    wait_for(lambda: store.find("Node", kubelet.node, None), lambda n: n is not None, timeout=15,
             what="node registered")
    wait_for(lambda: ready_condition(store, kubelet.node), lambda c: c["status"] == "True", timeout=10,
             what="node Ready")
    make_pod(store, "box", kubelet.node, image="busybox:1.36")
    make_pod(store, "nope", kubelet.node, image="example.com/no-such-image:1")
    box = wait_for(lambda: store.get("Pod", "box"), lambda p: p["status"].get("phase") == "Running", timeout=15,
                   what="busybox Running")
    nope = wait_for(lambda: store.get("Pod", "nope"), lambda p: p["status"].get("containerStatuses"), timeout=15,
                    what="status of the unknown image pod")
    waiting = nope["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "ImagePullBackOff"
    assert "example.com/no-such-image:1" in waiting["message"]
    table = kubectl(etcd_endpoints, "get", "pods", "-o", "wide").stdout
    assert "ImagePullBackOff" in table and box["status"]["podIP"] in table
    out = kubectl(etcd_endpoints, "exec", "box", "--", "cat", "/proc/self/net/route")
    assert out.returncode == 0 and "eth0" in out.stdout, out
    # a container's output is readable with kubectl logs
    store.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "talker"},
                  "spec": {"nodeName": kubelet.node, "containers": [{
                      "name": "main", "image": "busybox",
                      "command": ["sh", "-c", "echo hello from $HOSTNAME; ip -4 -o addr show eth0; sleep 600"]}]}})
    wait_for(lambda: kubectl(etcd_endpoints, "logs", "talker").stdout, lambda out: "eth0" in out, timeout=15,
             what="kubectl logs of the talker pod")
    logs = kubectl(etcd_endpoints, "logs", "talker", "--tail", "2").stdout.splitlines()
    talker_ip = store.get("Pod", "talker")["status"]["podIP"]
    assert logs[0] == "hello from talker" and talker_ip in logs[1]


def test_crashing_containers_back_off_and_completed_ones_succeed(node, tmp_path, etcd_endpoints):
    kubelet, store, ns = node
    kubelet.write_conflist(bridge_conflist("testnet", unique("cnb"), SUBNET, str(tmp_path / "ipam")))
    wait_for(lambda: ready_condition(store, kubelet.node), lambda c: c is not None and c["status"] == "True",
             timeout=15, what="node Ready")
    crash = {"name": "main", "image": "busybox", "command": ["sh", "-c", "echo started; exit 3"]}
    store.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "crash"},
                  "spec": {"nodeName": kubelet.node, "containers": [crash]}})
    once = {"name": "main", "image": "busybox", "command": ["true"]}
    store.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "once"},
                  "spec": {"nodeName": kubelet.node, "restartPolicy": "Never", "containers": [once]}})

    def container(name: str) -> dict:
        return (store.get("Pod", name)["status"].get("containerStatuses") or [{}])[0]

    cs = wait_for(lambda: container("crash"), lambda c: c.get("restartCount") == 1
                  and c["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff", timeout=20,
                  what="crash restarted once, then in CrashLoopBackOff")
    assert "back-off" in cs["state"]["waiting"]["message"]
    assert "CrashLoopBackOff" in kubectl(etcd_endpoints, "get", "pod", "crash").stdout
    done = wait_for(lambda: store.get("Pod", "once")["status"], lambda st: st.get("phase") == "Succeeded",
                    timeout=20, what="the run-once pod Succeeded")
    assert done["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    # deleting a pod in back-off is not held up by the back-off
    store.delete("Pod", "crash")
    wait_for(lambda: store.find("Pod", "crash"), lambda p: p is None, timeout=8, what="crash pod removed")


def test_refuses_to_run_in_the_machines_own_netns():
    from testbed.k8s.kubelet import in_host_netns

    require(in_host_netns(), "the test process must run in the machine's network namespace")
    res = subprocess.run([sys.executable, "-m", "testbed.k8s.kubelet", "--node", "stray",
                          "--etcd-endpoints", "http://127.0.0.1:9"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "refusing to run in the machine's own network namespace" in res.stderr
