"""kubectl against a real etcd: apply/create/get/describe/delete/expose/run and their errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from testbed.k8s.podstatus import node_object
from testbed.k8s.store import Store

pytestmark = pytest.mark.etcd

MANIFEST = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      nodeName: k8s-w0
      containers: [{name: nginx, image: nginx, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: box, namespace: shop, labels: {app: box}}
spec:
  nodeName: k8s-w0
  containers: [{name: box, image: busybox}]
"""


@pytest.fixture
def kubectl(etcd_endpoints, tmp_path):
    store = Store.from_endpoints(etcd_endpoints)
    store.ensure_cluster()
    store.create(node_object("k8s-w0", "172.30.0.11", {}, [], {"kubeletVersion": "v1.28.15"}, {}, False,
                             "2026-01-01T00:00:00Z"))
    env = dict(os.environ, ETCD_ENDPOINTS=",".join(etcd_endpoints))

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "testbed.kubectl", *args], input=stdin, capture_output=True,
                              text=True, env=env, timeout=30, cwd=str(tmp_path))

    run.store = store  # type: ignore[attr-defined]
    return run


def test_apply_get_and_output_formats(kubectl, tmp_path):
    (tmp_path / "app.yaml").write_text(MANIFEST)
    res = kubectl("apply", "-f", "app.yaml")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["namespace/shop created", "deployment.apps/web created", "pod/box created"]
    assert kubectl("apply", "-f", "app.yaml").stdout.splitlines() == [
        "namespace/shop unchanged", "deployment.apps/web unchanged", "pod/box unchanged"]

    table = kubectl("get", "pods", "-n", "shop").stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert table[1].split()[:4] == ["box", "0/1", "Pending", "0"]
    res = kubectl("get", "pods")
    assert res.stdout == "" and res.stderr.strip() == "No resources found in default namespace."
    assert kubectl("-n", "shop", "get", "pod", "box", "-o", "name").stdout == "pod/box\n"
    one = json.loads(kubectl("get", "pod/box", "-n", "shop", "-o", "json").stdout)
    assert one["kind"] == "Pod" and one["metadata"]["namespace"] == "shop" and one["metadata"]["resourceVersion"]
    many = yaml.safe_load(kubectl("get", "deploy,po", "-A", "-o", "yaml").stdout)
    assert many["kind"] == "List" and [o["kind"] for o in many["items"]] == ["Deployment", "Pod"]
    cols = kubectl("get", "nodes", "-o", "custom-columns=NAME:.metadata.name,VERSION:.status.nodeInfo.kubeletVersion,"
                   "INTERNAL-IP:.status.addresses[0].address,POD-CIDR:.spec.podCIDR").stdout
    assert cols.splitlines() == ["NAME     VERSION    INTERNAL-IP   POD-CIDR", "k8s-w0   v1.28.15   172.30.0.11   <none>"]
    nodes = kubectl("get", "nodes").stdout.splitlines()
    assert nodes[1].split()[:3] == ["k8s-w0", "NotReady", "<none>"]
    assert "box" in kubectl("get", "pods", "-A", "-l", "app=box").stdout
    assert "box" not in kubectl("get", "pods", "-A", "-l", "app!=box").stdout
    assert kubectl("scale", "deployment", "web", "-n", "shop", "--replicas", "3").stdout == "deployment.apps/web scaled\n"
    assert kubectl.store.get("Deployment", "web", "shop")["spec"]["replicas"] == 3
    desc = kubectl("describe", "pod", "box", "-n", "shop").stdout
    assert "Name:         box" in desc and "Node:         k8s-w0" in desc


def test_expose_run_and_delete(kubectl):
    res = kubectl("run", "k8s-w0", "--image", "nginx", "--overrides", '{"spec":{"nodeName":"k8s-w0"}}')
    assert res.stdout.strip() == "pod/k8s-w0 created", res.stderr
    pod = kubectl.store.get("Pod", "k8s-w0")
    assert pod["metadata"]["labels"] == {"run": "k8s-w0"} and pod["spec"]["nodeName"] == "k8s-w0"
    assert kubectl("expose", "pod", "k8s-w0", "--port", "80").stdout.strip() == "service/k8s-w0 exposed"
    svc = kubectl("get", "svc", "-o", "wide").stdout.splitlines()[1].split()
    assert svc[0] == "k8s-w0" and svc[1] == "ClusterIP" and svc[3:5] == ["<none>", "80/TCP"] and svc[-1] == "run=k8s-w0"
    assert svc[2].startswith("10.")
    res = kubectl("delete", "svc", "k8s-w0")
    assert res.stdout.strip() == 'service "k8s-w0" deleted'
    res = kubectl("delete", "pod", "k8s-w0", "--force")
    assert res.returncode == 0 and kubectl.store.find("Pod", "k8s-w0") is None
    res = kubectl("delete", "pod", "ghost")
    assert res.returncode == 1 and res.stderr.strip() == 'Error from server (NotFound): pods "ghost" not found'


@pytest.mark.parametrize("doc, message", [
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: nginx}]\n  nodeName: k8s-w9\n",
     'spec.nodeName: node "k8s-w9" does not exist'),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containerz: []\n", 'spec.containerz: unknown field "containerz"'),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: p\n", "line"),
    ("apiVersion: v1\nkind: Widget\nmetadata: {name: p}\n", 'no matches for kind "Widget"'),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: fine}\nspec:\n  containers: [{name: c, image: nginx}]\n",
     'pods "fine" is defined twice'),
])
def test_bad_manifests_are_clear_errors_and_nothing_is_created(kubectl, tmp_path, doc, message):
    good = "apiVersion: v1\nkind: Pod\nmetadata: {name: fine}\nspec:\n  containers: [{name: c, image: nginx}]\n"
    (tmp_path / "bad.yaml").write_text(good + "---\n" + doc)
    res = kubectl("apply", "-f", "bad.yaml")
    assert res.returncode == 1
    assert message in res.stderr and "bad.yaml" in res.stderr, res.stderr
    assert kubectl.store.list("Pod") == []


def test_get_watch_prints_a_row_per_change(kubectl, etcd_endpoints):
    env = dict(os.environ, ETCD_ENDPOINTS=",".join(etcd_endpoints))
    watcher = subprocess.Popen([sys.executable, "-m", "testbed.kubectl", "get", "pods", "-w", "--request-timeout",
                                "5s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert watcher.stderr.readline().strip() == "No resources found in default namespace."
        pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: w1}\nspec:\n  containers: [{name: c, image: nginx}]\n"
        assert kubectl("create", "-f", "-", stdin=pod).returncode == 0
        first = watcher.stdout.readline().split()
        assert first[:3] == ["w1", "0/1", "Pending"]
    finally:
        watcher.kill()
        watcher.wait()


def test_label_annotate_and_network_policies(kubectl):
    pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {app: a}}\nspec:\n  containers: [{name: c, image: nginx}]\n"
    kubectl("create", "-f", "-", stdin=pod)
    assert kubectl("label", "pod", "p", "tier=web").stdout == "pod/p labeled\n"
    res = kubectl("label", "pod/p", "app=b")
    assert res.returncode == 1 and "'app' already has a value (a), and --overwrite is false" in res.stderr
    assert kubectl("label", "pod", "p", "app=b", "--overwrite", "tier-").returncode == 0
    assert kubectl.store.get("Pod", "p")["metadata"]["labels"] == {"app": "b"}
    assert kubectl("annotate", "pod", "p", "note=hi").stdout == "pod/p annotated\n"
    assert kubectl.store.get("Pod", "p")["metadata"]["annotations"]["note"] == "hi"
    netpol = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-web}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{port: 80}]
"""
    res = kubectl("apply", "-f", "-", stdin=netpol)
    assert res.stdout == "networkpolicy.networking.k8s.io/allow-web created\n"
    assert "Warning" not in res.stderr  # enforced (docs/policy.md): nothing to warn about
    stored = kubectl.store.get("NetworkPolicy", "allow-web")
    assert stored["spec"]["policyTypes"] == ["Ingress"]
    assert stored["spec"]["ingress"][0]["ports"] == [{"port": 80, "protocol": "TCP"}]
    assert kubectl.store.etcd.get("/registry/networkpolicies/default/allow-web") is not None
    assert kubectl("get", "netpol").stdout.splitlines()[1].split()[:2] == ["allow-web", "app=b"]


def test_create_generators(kubectl):
    assert kubectl("create", "namespace", "team").stdout == "namespace/team created\n"
    res = kubectl("create", "deployment", "nginx", "--image", "nginx", "--replicas", "2", "-n", "team")
    assert res.stdout == "deployment.apps/nginx created\n", res.stderr
    d = kubectl.store.get("Deployment", "nginx", "team")
    assert d["spec"]["replicas"] == 2 and d["spec"]["selector"]["matchLabels"] == {"app": "nginx"}
    assert d["spec"]["template"]["spec"]["containers"] == [{"name": "nginx", "image": "nginx"}]
    res = kubectl("create", "deployment", "x")
    assert res.returncode == 1 and 'required flag(s) "image" not set' in res.stderr


def test_duplicate_create_and_stdin(kubectl):
    pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: nginx}]\n"
    assert kubectl("create", "-f", "-", stdin=pod).stdout.strip() == "pod/p created"
    res = kubectl("create", "-f", "-", stdin=pod)
    assert res.returncode == 1 and 'pods "p" already exists' in res.stderr
    res = kubectl("get", "gizmos")
    assert res.returncode == 1 and 'the server doesn\'t have a resource type "gizmos"' in res.stderr
