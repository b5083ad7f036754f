"""Pure parts of the kubelet, kube-proxy, images and controllers."""

from __future__ import annotations

import json

import pytest

from testbed.k8s import cni, images
from testbed.k8s.controllers import (
    deployment_status,
    desired_endpoints,
    desired_slice,
    template_hash,
)
from testbed.k8s.kubeproxy import render, sep_chain, service_ports, svc_chain
from testbed.k8s.podstatus import (
    NETWORK_NOT_READY_MESSAGE,
    ContainerInfo,
    node_conditions,
    pod_status,
)
from testbed.k8s.scheduler import feasible_nodes

pytestmark = pytest.mark.unit


# --- CNI config (libcni semantics) -----------------------------------------------------------

def test_first_config_in_lexical_order_wins_and_bad_files_are_skipped(tmp_path):
    assert cni.find_config(str(tmp_path)) is None
    assert cni.find_config(str(tmp_path / "missing")) is None
    (tmp_path / "05-broken.conflist").write_text("{not json")
    (tmp_path / "README").write_text("ignored")
    (tmp_path / "20-b.conflist").write_text(json.dumps({"cniVersion": "1.0.0", "name": "b", "plugins": [{"type": "ptp"}]}))
    (tmp_path / "10-calico.conflist").write_text(json.dumps(
        {"cniVersion": "0.3.1", "name": "k8s-pod-network", "plugins": [{"type": "calico"}, {"type": "portmap"}]}))
    conf = cni.find_config(str(tmp_path))
    assert conf.name == "k8s-pod-network" and [p["type"] for p in conf.plugins] == ["calico", "portmap"]


def test_config_watch_reads_again_only_when_the_directory_changed(tmp_path, monkeypatch):
    d = tmp_path / "net.d"
    watch = cni.ConfigWatch(str(d))
    assert watch.current() is None  # no directory yet
    d.mkdir()
    assert watch.current() is None
    reads = []
    real = cni.find_config
    monkeypatch.setattr(cni, "find_config", lambda conf_dir: reads.append(conf_dir) or real(conf_dir))
    doc = {"cniVersion": "0.3.1", "name": "k8s-pod-network", "plugins": [{"type": "calico"}]}
    tmp = d / ".10-calico.conflist.tmp"  # written aside and renamed, as install-cni does
    tmp.write_text(json.dumps(doc))
    tmp.rename(d / "10-calico.conflist")
    assert watch.current().name == "k8s-pod-network" and len(reads) == 1
    assert watch.current().name == "k8s-pod-network" and len(reads) == 1  # unchanged: not read again
    (d / "README").write_text("not a config")
    assert watch.current() is not None and len(reads) == 1
    (d / "10-calico.conflist").write_text(json.dumps({**doc, "name": "renamed-in-place"}))
    assert watch.current().name == "renamed-in-place" and len(reads) == 2
    (d / "10-calico.conflist").unlink()
    assert watch.current() is None


def test_single_plugin_conf_is_wrapped():
    conf = cni.parse_config({"cniVersion": "0.4.0", "name": "n", "type": "bridge", "bridge": "cni0"})
    assert conf.plugins == [{"type": "bridge", "bridge": "cni0"}]
    with pytest.raises(cni.CNIError, match="no type"):
        cni.parse_config({"name": "n", "plugins": [{}]})


def test_plugin_stdin_carries_name_version_prev_result_and_declared_capabilities_only():
    conf = cni.parse_config({"cniVersion": "1.0.0", "name": "net",
                             "plugins": [{"type": "calico"}, {"type": "portmap", "capabilities": {"portMappings": True}}]})
    rc = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}], "bandwidth": {}}
    first = cni.plugin_stdin(conf, conf.plugins[0], None, rc)
    assert first == {"type": "calico", "name": "net", "cniVersion": "1.0.0"}
    second = cni.plugin_stdin(conf, conf.plugins[1], {"ips": []}, rc)
    assert second["prevResult"] == {"ips": []}
    assert second["runtimeConfig"] == {"portMappings": rc["portMappings"]}
    assert "capabilities" not in second


def test_cni_args_and_result_ips():
    assert cni.cni_args("default", "web", "abc") == \
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc"
    res = {"ips": [{"address": "fd00::5/128"}, {"address": "192.168.1.5/32"}]}
    assert cni.pod_ips(res) == ["192.168.1.5", "fd00::5"]


def test_runner_reports_plugin_errors_and_missing_plugins(tmp_path):
    plugin = tmp_path / "failer"
    plugin.write_text('#!/bin/sh\necho \'{"code": 11, "msg": "no IPs left", "details": "pool full"}\'\nexit 1\n')
    plugin.chmod(0o755)
    log = tmp_path / "log"
    recorder = tmp_path / "recorder"
    recorder.write_text(f'#!/bin/sh\necho "$CNI_COMMAND $CNI_IFNAME" >> {log}\necho \'{{"cniVersion":"1.0.0"}}\'\n')
    recorder.chmod(0o755)
    runner = cni.Runner([str(tmp_path)])
    conf = cni.parse_config({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "recorder"}, {"type": "failer"}]})
    with pytest.raises(cni.CNIError, match='type="failer".*no IPs left; pool full') as err:
        runner.add(conf, "cid", "/run/netns/x", "IgnoreUnknown=1")
    assert err.value.code == 11
    # ADD failed half-way: the runtime cleans up with DEL through the chain (reverse order)
    assert log.read_text().splitlines() == ["ADD eth0", "DEL eth0"]
    conf = cni.parse_config({"name": "n", "plugins": [{"type": "nonexistent"}]})
    with pytest.raises(cni.CNIError, match='failed to find plugin "nonexistent"'):
        runner.add(conf, "cid", "/run/netns/x", "")


# --- kube-proxy rules ------------------------------------------------------------------------

SVC = {"metadata": {"name": "web", "namespace": "default"},
       "spec": {"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}


def eps(*ips: str, ready: bool = True) -> dict:
    """An EndpointSlice of Service web (as the endpointslice controller writes it)."""
    return {"metadata": {"name": "web-x7k2p", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}} for ip in ips]}


def test_three_endpoints_get_one_third_one_half_then_the_rest():
    ports = service_ports([SVC], [eps("192.168.2.3", "192.168.1.9", "192.168.1.10")])
    assert ports[0].endpoints == ("192.168.1.9:8080", "192.168.1.10:8080", "192.168.2.3:8080")
    nat, filt, chains = render(ports, "192.168.0.0/16")
    svc = svc_chain("default/web:http", "TCP")
    lines = [line for line in nat.splitlines() if line.startswith(f"-A {svc} ") and "KUBE-SEP" in line]
    assert [line.split("--probability ")[1].split()[0] if "probability" in line else None for line in lines] == [
        "0.33333333333", "0.50000000000", None]
    assert f"-A KUBE-SERVICES -d 10.96.0.20/32 -p tcp -m comment --comment \"default/web:http cluster IP\" -m tcp --dport 80 -j {svc}" in nat
    assert f"-A {svc} ! -s 192.168.0.0/16 -d 10.96.0.20/32" in nat
    sep = sep_chain("default/web:http", "TCP", "192.168.1.9:8080")
    assert f"-A {sep} -p tcp -m comment --comment \"default/web:http\" -m tcp -j DNAT --to-destination 192.168.1.9:8080" in nat
    assert len(chains) == 4 and svc.startswith("KUBE-SVC-") and len(svc) == 25
    assert "REJECT" not in filt


def test_service_without_endpoints_rejects_and_stale_chains_are_deleted():
    assert service_ports([SVC], [eps("192.168.1.9", ready=False)])[0].endpoints == ()
    nat, filt, chains = render(service_ports([SVC], []), None, stale={"KUBE-SVC-OLDOLDOLDOLDOLDO"})
    assert chains == set()
    assert '--comment "default/web:http has no endpoints" -m tcp --dport 80 -j REJECT' in filt
    assert ":KUBE-SVC-OLDOLDOLDOLDOLDO - [0:0]" in nat and "-X KUBE-SVC-OLDOLDOLDOLDOLDO" in nat
    assert nat.rstrip().endswith("COMMIT")


# --- images ----------------------------------------------------------------------------------

def test_images_table(tmp_path):
    assert images.repository("docker.io/library/nginx:1.25") == "nginx"
    assert images.qualified("nginx") == "docker.io/library/nginx:latest"
    assert images.qualified("nicolaka/netshoot") == "docker.io/nicolaka/netshoot:latest"
    wl = images.resolve("nginx", None, None, str(tmp_path), "web-1")
    assert wl.port == 80 and "httpd" in wl.argv
    assert any("Welcome to nginx!" in t and "web-1" in t for t in wl.files.values())
    assert images.resolve("busybox:1.36", None, None, str(tmp_path)).argv == ["sleep", "infinity"]
    assert images.resolve("busybox", ["sh", "-c", "sleep 5"], None, str(tmp_path)).argv == ["sh", "-c", "sleep 5"]
    with pytest.raises(images.ImageNotFound, match="docker.io/library/nginxx:latest"):
        images.resolve("nginxx", None, None, str(tmp_path))


# --- kubelet status --------------------------------------------------------------------------

def test_pod_status_phases_and_conditions():
    p = {"spec": {"containers": [{"name": "c", "image": "nginx"}]}}
    running = pod_status(p, [ContainerInfo("c", "nginx", "id1", running=True, ready=True, started_at="t")],
                         "172.30.0.11", ["192.168.1.5"], "now")
    assert running["phase"] == "Running" and running["podIP"] == "192.168.1.5"
    assert running["podIPs"] == [{"ip": "192.168.1.5"}] and running["hostIP"] == "172.30.0.11"
    assert {c["type"]: c["status"] for c in running["conditions"]} == {
        "Initialized": "True", "Ready": "True", "ContainersReady": "True", "PodScheduled": "True"}
    assert running["containerStatuses"][0]["containerID"] == "containerd://id1"
    pulling = pod_status(p, [ContainerInfo("c", "nope", waiting_reason="ImagePullBackOff")], "h", ["192.168.1.6"], "now")
    assert pulling["phase"] == "Pending"
    assert pulling["containerStatuses"][0]["state"] == {"waiting": {"reason": "ImagePullBackOff"}}


def test_node_conditions_follow_network_readiness():
    conds = {c["type"]: c for c in node_conditions(False, "t0")}
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "NetworkPluginNotReady"
    assert conds["Ready"]["message"] == NETWORK_NOT_READY_MESSAGE
    assert "cni config uninitialized" in NETWORK_NOT_READY_MESSAGE
    later = {c["type"]: c for c in node_conditions(True, "t1", list(conds.values()))}
    assert later["Ready"]["status"] == "True" and later["Ready"]["lastTransitionTime"] == "t1"
    assert later["MemoryPressure"]["lastTransitionTime"] == "t0"


# --- controllers (pure parts) ------------------------------------------------------------------

def test_template_hash_is_stable_and_sensitive():
    t = {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}
    assert template_hash(t) == template_hash(json.loads(json.dumps(t)))
    assert len(template_hash(t)) == 10
    t2 = json.loads(json.dumps(t))
    t2["spec"]["containers"][0]["image"] = "busybox"
    assert template_hash(t2) != template_hash(t)


def test_feasible_nodes_honour_readiness_taints_and_selectors():
    def n(name, ready=True, taints=(), labels=None):
        return {"metadata": {"name": name, "labels": labels or {}}, "spec": {"taints": list(taints)},
                "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}
    cp_taint = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
    not_ready = {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}
    nodes = [n("m", taints=[cp_taint]), n("w0"), n("w1", ready=False, taints=[not_ready]),
             n("w2", labels={"disk": "ssd"})]
    pod = {"spec": {}}
    assert [x["metadata"]["name"] for x in feasible_nodes(pod, nodes)] == ["w0", "w2"]
    pod = {"spec": {"nodeSelector": {"disk": "ssd"}}}
    assert [x["metadata"]["name"] for x in feasible_nodes(pod, nodes)] == ["w2"]
    pod = {"spec": {"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]}}
    assert [x["metadata"]["name"] for x in feasible_nodes(pod, nodes)] == ["m", "w0", "w2"]


def test_desired_endpoints_resolve_named_target_ports():
    svc = {"metadata": {"name": "web", "namespace": "default"},
           "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}}
    pod = {"metadata": {"name": "p", "namespace": "default", "uid": "u", "labels": {"app": "web"}},
           "spec": {"nodeName": "w0", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
           "status": {"podIP": "192.168.1.5", "conditions": [{"type": "Ready", "status": "True"}]}}
    ep = desired_endpoints(svc, [pod])
    assert ep["subsets"] == [{"ports": [{"port": 8080, "protocol": "TCP"}], "addresses": [
        {"ip": "192.168.1.5", "nodeName": "w0", "targetRef": {"kind": "Pod", "name": "p", "namespace": "default", "uid": "u"}}]}]


def test_endpointslice_lists_every_selected_pod_with_its_readiness():
    svc = {"metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
           "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}

    def pod(name, ip, ready):
        return {"metadata": {"name": name, "namespace": "default", "uid": name, "labels": {"app": "web"}},
                "spec": {"nodeName": "w0", "containers": [{"name": "c"}]},
                "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}
    want = desired_slice(svc, [pod("a", "192.168.1.5", True), pod("b", "192.168.1.6", False)])
    assert want["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert [(e["addresses"], e["conditions"]["ready"]) for e in want["endpoints"]] == [
        (["192.168.1.5"], True), (["192.168.1.6"], False)]
    assert want["labels"]["kubernetes.io/service-name"] == "web"
    assert want["labels"]["endpointslice.kubernetes.io/managed-by"] == "endpointslice-controller.k8s.io"
    assert desired_slice(svc, [])["endpoints"] == [] and desired_slice(svc, [])["ports"] is None


def test_deployment_status_counts_only_ready_pods():
    d = {"metadata": {"name": "web", "uid": "d", "generation": 2}, "spec": {"replicas": 2, "template": {}}}
    rs = {"metadata": {"name": "web-abc", "uid": "rs"}}

    def pod(name, ready):
        return {"metadata": {"name": name, "labels": {"pod-template-hash": "abc"},
                             "ownerReferences": [{"kind": "ReplicaSet", "uid": "rs", "controller": True}]},
                "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}
    st = deployment_status(d, rs, [rs], {"rs": [pod("a", True), pod("b", False)]}, "abc")
    assert (st["replicas"], st["updatedReplicas"], st["readyReplicas"], st["availableReplicas"],
            st["unavailableReplicas"], st["observedGeneration"]) == (2, 2, 1, 1, 1, 2)
    assert {c["type"]: c["status"] for c in st["conditions"]} == {"Available": "False", "Progressing": "True"}
    none_ready = deployment_status(d, rs, [rs], {"rs": [pod("a", False)]}, "abc")
    assert "readyReplicas" not in none_ready and none_ready["unavailableReplicas"] == 2


def test_daemon_nodes_tolerate_node_condition_taints_but_not_others():
    from testbed.k8s.controllers import daemon_nodes

    def n(name, taints=(), labels=None):
        return {"metadata": {"name": name, "labels": labels or {}}, "spec": {"taints": list(taints)}}
    nodes = [n("m", [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]),
             n("w0", [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]),
             n("w1", labels={"gpu": "yes"})]
    ds = {"spec": {"template": {"spec": {"containers": []}}}}
    assert daemon_nodes(ds, nodes) == ["w0", "w1"]
    ds["spec"]["template"]["spec"]["tolerations"] = [{"operator": "Exists"}]
    assert daemon_nodes(ds, nodes) == ["m", "w0", "w1"]
    ds["spec"]["template"]["spec"]["nodeSelector"] = {"gpu": "yes"}
    assert daemon_nodes(ds, nodes) == ["w1"]
    assert images.repository("quay.io/calico/node:v3.28.1") == "calico/node"
    assert images.resolve("calico/node:v3.28.1", None, None, "/tmp").argv[0].endswith("calico-node")
    assert images.repository("node:18") == "node" and not images.known("node:18")


def test_pod_gc_deletes_pods_of_a_node_missing_for_40_seconds():
    from testbed.k8s.controllers import ControllerManager

    class FakeCluster:  # records deletions (pure-logic test of the quarantine)
        deleted: list[str] = []

        def delete(self, kind, name, ns, grace=None, uid=None):
            self.deleted.append(f"{ns}/{name}:{grace}")
            return True

    now = [100.0]
    cm = ControllerManager(FakeCluster(), clock=lambda: now[0])  # type: ignore[arg-type]
    pods = [{"metadata": {"name": "lost", "namespace": "default", "uid": "u"}, "spec": {"nodeName": "w9"}},
            {"metadata": {"name": "ok", "namespace": "default", "uid": "v"}, "spec": {"nodeName": "w0"}}]
    nodes = [{"metadata": {"name": "w0"}}]
    assert cm.gc_orphaned_pods(pods, nodes) == []
    now[0] += 39.0
    assert cm.gc_orphaned_pods(pods, nodes) == []
    now[0] += 1.0
    assert cm.gc_orphaned_pods(pods, nodes) == ["default/lost"]
    assert FakeCluster.deleted == ["default/lost:0"]


def test_pod_gc_quarantine_is_40_seconds_unless_a_test_sets_it():
    from testbed.k8s.controllers import ORPHAN_QUARANTINE, orphan_quarantine

    assert orphan_quarantine({}) == ORPHAN_QUARANTINE == 40.0
    assert orphan_quarantine({"CALICOLAB_PODGC_QUARANTINE": "15"}) == 15.0
    for bad in ("0", "-1", "soon", ""):
        with pytest.raises(ValueError, match=f"CALICOLAB_PODGC_QUARANTINE={bad!r}"):
            orphan_quarantine({"CALICOLAB_PODGC_QUARANTINE": bad})


def test_pod_creation_takes_turns_a_daemonset_rollout_does_not_hold_a_pass():
    """A controller stops creating pods after CREATE_SLICE seconds in one pass and asks for the
    next pass at once, so the Deployment controller (after the DaemonSet controller in every
    pass) is not held back by a DaemonSet rolling out to many nodes on a slow API server."""
    from testbed.k8s.controllers import CREATE_SLICE, ControllerManager

    now = [0.0]

    class SlowCluster:  # each create costs 0.4 s of the (fake) clock (pure-logic test of the slice)
        created: list[dict] = []

        def create(self, obj):
            now[0] += 0.4
            obj["metadata"].setdefault("uid", obj["spec"]["nodeName"])
            self.created.append(obj)
            return obj

        def event(self, *a, **kw):
            pass

        def mutate(self, *a, **kw):
            pass

    cm = ControllerManager(SlowCluster(), clock=lambda: now[0])  # type: ignore[arg-type]
    nodes = [{"metadata": {"name": f"w{i}", "labels": {}}, "spec": {}} for i in range(10)]
    ds = {"apiVersion": "apps/v1", "kind": "DaemonSet",
          "metadata": {"name": "kube-proxy", "namespace": "kube-system", "uid": "ds"},
          "spec": {"template": {"metadata": {}, "spec": {"containers": [{"name": "c"}]}}}}
    cm.reconcile_daemonsets([ds], [], nodes)
    per_pass = int(CREATE_SLICE / 0.4) + (CREATE_SLICE % 0.4 > 0)
    # slow-start batches (1, then 2 at once, ...): the creates of one batch land in any order
    assert sorted(p["spec"]["nodeName"] for p in SlowCluster.created) == [f"w{i}" for i in range(per_pass)] \
        and cm.more
    cm.more = False
    # the next pass goes on where the rollout's batches were (1 and 2 done: 4 at once), a slice more
    cm.reconcile_daemonsets([ds], list(SlowCluster.created), nodes)
    assert sorted(p["spec"]["nodeName"] for p in SlowCluster.created) == [f"w{i}" for i in range(per_pass + 4)]
    assert cm.more


def test_a_pass_untaints_ready_nodes_then_creates_daemon_pods_for_nodes_registered_meanwhile():
    """One controller pass: the node lifecycle controller lifts the not-ready taints of a node
    that turned Ready before any pod is created, and the DaemonSet controller puts a pod on a
    node that registered after the pass began (the nodes read at its turn, not the pass'
    start), before the Deployment controller's ReplicaSet."""
    import copy

    from testbed.k8s.controllers import ControllerManager

    ready = {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-12-03T15:00:00Z"}
    nodes = [{"metadata": {"name": "k8s-m", "labels": {}},
              "spec": {"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"},
                                  {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute",
                                   "timeAdded": "2026-12-03T15:00:00Z"}]},
              "status": {"conditions": [ready]}}]
    late = {"metadata": {"name": "k8s-w1", "labels": {}}, "spec": {}, "status": {"conditions": [ready]}}
    objects = {"Node": nodes, "DaemonSet": [{
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "calico-node", "namespace": "calico-system",
                                                                   "uid": "ds"},
        "spec": {"template": {"metadata": {}, "spec": {"containers": [{"name": "c"}]}}}}],
        "Deployment": [{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {
            "name": "nginx", "namespace": "default", "uid": "d"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "x"}},
                     "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c"}]}}}}]}
    did: list[tuple[str, str, str]] = []

    class Cluster:
        listed_nodes = 0

        def list(self, kind):
            if kind == "Node":
                self.listed_nodes += 1
                if self.listed_nodes == 2:  # k8s-w1 registers once the pass has begun
                    nodes.append(late)
            return copy.deepcopy(objects.get(kind, []))

        def create(self, obj):
            obj["metadata"].setdefault("uid", obj["metadata"].get("name", "x"))
            did.append(("create", obj["kind"], obj["spec"].get("nodeName", "")))
            return obj

        def mutate(self, kind, name, namespace, fn, sub=None, current=None):
            obj = copy.deepcopy(current) if current is not None else {"metadata": {"name": name}}
            if fn(obj) is not False and sub is None and kind == "Node":
                did.append(("taints", name, ",".join(t["key"] for t in obj["spec"].get("taints") or [])))
            return obj

        def event(self, *a, **kw):
            pass

        def delete(self, *a, **kw):
            return True

    cm = ControllerManager(Cluster(), pod_cidr=None, wall_clock=lambda: 1796310000.0)  # type: ignore[arg-type]
    cm.reconcile()
    assert did[0] == ("taints", "k8s-m", "")
    assert [d for d in did if d[0] == "create"] == [("create", "Pod", "k8s-m"), ("create", "Pod", "k8s-w1"),
                                                    ("create", "ReplicaSet", "")]


def test_pods_are_created_in_slow_start_batches():
    """kube-controller-manager's slowStartBatch: 1 pod, then 2 at once, then 4, ...; no batch
    after one with a failed create."""
    import threading

    from kubeclient import Invalid
    from testbed.k8s.controllers import ControllerManager

    class Cluster:
        def __init__(self, fail_at: int = -1):
            self.lock = threading.Lock()
            self.calls = 0
            self.fail_at = fail_at
            self.created: list[str] = []

        def create(self, obj):
            with self.lock:
                self.calls += 1
                n = self.calls
            if n == self.fail_at:
                raise Invalid(422, "Invalid", "refused")
            obj["metadata"]["uid"] = obj["spec"]["nodeName"]
            with self.lock:
                self.created.append(obj["spec"]["nodeName"])
            return obj

        def event(self, *a, **kw):
            pass

        def mutate(self, *a, **kw):
            pass

    nodes = [{"metadata": {"name": f"w{i:02d}", "labels": {}}, "spec": {}} for i in range(40)]
    ds = {"apiVersion": "apps/v1", "kind": "DaemonSet",
          "metadata": {"name": "calico-node", "namespace": "calico-system", "uid": "ds"},
          "spec": {"template": {"metadata": {}, "spec": {"containers": [{"name": "c"}]}}}}
    ok = Cluster()
    ControllerManager(ok, clock=lambda: 0.0).reconcile_daemonsets([ds], [], nodes)  # type: ignore[arg-type]
    assert sorted(ok.created) == [f"w{i:02d}" for i in range(40)]
    # the 5th create fails: it was in the third batch (creates 4-7), so no fourth batch
    bad = Cluster(fail_at=5)
    ControllerManager(bad, clock=lambda: 0.0).reconcile_daemonsets([ds], [], nodes)  # type: ignore[arg-type]
    assert bad.calls == 7 and len(bad.created) == 6


def test_kube_proxy_syncs_a_burst_then_one_per_min_sync_period():
    from testbed.k8s.kubeproxy import SyncRunner

    r = SyncRunner(1.0, burst=2, now=100.0)
    assert r.delay(100.0) == 0.0
    r.ran(100.0)
    assert r.delay(100.1) == 0.0      # the burst's second sync
    r.ran(100.1)
    assert r.delay(100.2) == pytest.approx(0.8)   # then one a second
    assert r.delay(101.0) == 0.0
    r.ran(101.0)
    assert r.delay(101.5) == pytest.approx(0.5)
    r.ran(103.0)                     # a quiet spell refills the bucket, never above the burst
    assert r.tokens == pytest.approx(1.0) and r.delay(110.0) == 0.0 and r.tokens == 2.0
    unlimited = SyncRunner(0.0, now=0.0)
    for _ in range(5):
        unlimited.ran(0.0)
        assert unlimited.delay(0.0) == 0.0


def test_kube_proxy_sync_periods_default_and_bad_values_are_named():
    from testbed.k8s.kubeproxy import sync_periods

    assert sync_periods({}) == (1.0, 30.0)
    assert sync_periods({"iptables": {"minSyncPeriod": "0s", "syncPeriod": "0s"}}) == (1.0, 30.0)  # kubeadm's
    assert sync_periods({"iptables": {"minSyncPeriod": "250ms", "syncPeriod": "1m"}}) == (0.25, 60.0)
    with pytest.raises(ValueError, match=r"iptables.minSyncPeriod: time: invalid duration"):
        sync_periods({"iptables": {"minSyncPeriod": "soon"}})
    with pytest.raises(ValueError, match=r"iptables.syncPeriod: '-1s' is negative"):
        sync_periods({"iptables": {"syncPeriod": "-1s"}})


SAVED = """# Generated by iptables-nft-save v1.8.9
*raw
:PREROUTING ACCEPT [0:0]
-A PREROUTING -m comment --comment "cali:6gwbT8clXdHdC1b1" -j cali-PREROUTING
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-AAAA - [0:0]
:KUBE-SEP-BBBB - [0:0]
-A PREROUTING -m comment --comment "cali:6gwbT8clXdHdC1b1" -j cali-PREROUTING
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
-A FORWARD -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
COMMIT
"""


def test_kubeproxy_reads_one_save_for_hooks_and_chains():
    from testbed.k8s.kubeproxy import kube_chains, missing_hooks, saved_tables

    tables = saved_tables(SAVED)
    assert set(tables) == {"raw", "nat", "filter"}
    assert kube_chains(tables) == {"KUBE-SVC-AAAA", "KUBE-SEP-BBBB"}
    assert missing_hooks(tables) == {
        "nat": ['-I POSTROUTING 1 -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING'],
        "filter": ['-I INPUT 1 -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
                   '-I OUTPUT 1 -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'],
    }
    every = missing_hooks(saved_tables(""))  # an empty netns: every hook
    assert [len(every[t]) for t in ("nat", "filter")] == [3, 3]


def test_kubeproxy_hooks_go_into_the_restore_after_the_chains():
    from testbed.k8s.kubeproxy import missing_hooks, render, saved_tables, with_hooks

    nat, filt, _ = render([])
    hooks = missing_hooks(saved_tables(""))
    nat2, filt2 = with_hooks(nat, filt, hooks)
    lines = nat2.splitlines()
    assert lines[0] == "*nat" and lines[-1] == "COMMIT"
    assert lines.index(":KUBE-POSTROUTING - [0:0]") < lines.index(hooks["nat"][2])
    assert filt2.splitlines()[-4:-1] == hooks["filter"]
    assert with_hooks(nat, filt, {}) == (nat, filt)
    with pytest.raises(ValueError, match="COMMIT"):
        with_hooks("*nat\n", filt, hooks)
