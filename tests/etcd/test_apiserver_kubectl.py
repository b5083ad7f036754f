"""The real kubectl against calicolab's API server (issue 11's kubectl must-holds that
need no running lab). Each test uses its own names, so they share one server."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from testbed.poll import wait_for

pytestmark = pytest.mark.etcd

DEPLOY = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels: {{app: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: web
        image: nginx:1.25
        ports: [{{containerPort: 80}}]
"""


def pod(name: str, ns: str = "default", labels: dict | None = None, node: str | None = None) -> str:
    spec = {"containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "3600"]}]}
    if node:
        spec["nodeName"] = node
    return json.dumps({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": name, "namespace": ns, "labels": labels or {"app": name}},
                       "spec": spec})


def cm(name: str, ns: str = "default", **data: str) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns},
                       "data": data})


def test_version_and_cluster_info(apiserver):
    out = json.loads(apiserver.kubectl("version", "-o", "json").stdout)
    assert out["clientVersion"]["gitVersion"] == "v1.37.1"
    assert out["serverVersion"]["gitVersion"] == "v1.37.1"
    info = apiserver.kubectl("cluster-info").stdout
    assert "Kubernetes control plane is running at" in info and apiserver.url in info


def test_api_resources_lists_builtins_with_short_names(apiserver):
    out = apiserver.kubectl("api-resources").stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows["pods"][1:] == ["po", "v1", "true", "Pod"]
    assert rows["deployments"][1:] == ["deploy", "apps/v1", "true", "Deployment"]
    for name in ("customresourcedefinitions", "networkpolicies", "poddisruptionbudgets", "endpointslices",
                 "leases", "priorityclasses", "csidrivers", "clusterroles", "apiservices", "events"):
        assert name in rows, name
    wide = apiserver.kubectl("api-resources", "-o", "wide", "--api-group", "apps").stdout
    assert "create,delete,deletecollection,get,list,patch,update,watch" in wide


def test_get_namespaces_and_the_kubernetes_service(apiserver):
    out = apiserver.kubectl("get", "ns").stdout.split("\n")
    assert out[0].split() == ["NAME", "STATUS", "AGE"]
    names = {line.split()[0] for line in out[1:] if line}
    assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= names
    svc = apiserver.kubectl("get", "svc", "kubernetes", "-o", "json").stdout
    spec = json.loads(svc)["spec"]
    assert spec["clusterIP"] == "10.96.0.1" and spec["ports"][0]["port"] == 443


def test_apply_create_configured_unchanged_multidoc(apiserver, tmp_path):
    f = tmp_path / "app.yaml"
    svc = "---\napiVersion: v1\nkind: Service\nmetadata: {name: ap1}\nspec:\n  selector: {app: ap1}\n  ports: [{port: 80}]\n"
    f.write_text(DEPLOY.format(name="ap1", replicas=2) + svc)
    out = apiserver.kubectl("apply", "-f", str(f)).stdout
    assert out.splitlines() == ["deployment.apps/ap1 created", "service/ap1 created"]
    out = apiserver.kubectl("apply", "-f", str(f)).stdout
    assert out.splitlines() == ["deployment.apps/ap1 unchanged", "service/ap1 unchanged"]
    f.write_text(DEPLOY.format(name="ap1", replicas=3) + svc)
    out = apiserver.kubectl("apply", "-f", str(f)).stdout
    assert out.splitlines() == ["deployment.apps/ap1 configured", "service/ap1 unchanged"]
    d = json.loads(apiserver.kubectl("get", "deploy", "ap1", "-o", "json").stdout)
    assert d["spec"]["replicas"] == 3 and d["metadata"]["generation"] == 2
    ip = json.loads(apiserver.kubectl("get", "svc", "ap1", "-o", "json").stdout)["spec"]["clusterIP"]
    assert ip.startswith("10.") and ip not in ("10.96.0.1", "10.96.0.10")


def test_apply_server_side(apiserver, tmp_path):
    f = tmp_path / "ssa.yaml"
    f.write_text(DEPLOY.format(name="ssa1", replicas=1))
    assert apiserver.kubectl("apply", "--server-side", "-f", str(f)).stdout.strip() == \
        "deployment.apps/ssa1 serverside-applied"
    doc = yaml.safe_load(DEPLOY.format(name="ssa1", replicas=4))
    doc["metadata"]["labels"]["tier"] = "front"
    f.write_text(yaml.safe_dump(doc))
    apiserver.kubectl("apply", "--server-side", "-f", str(f))
    d = json.loads(apiserver.kubectl("get", "deploy", "ssa1", "-o", "json", "--show-managed-fields").stdout)
    assert d["spec"]["replicas"] == 4 and d["metadata"]["labels"]["tier"] == "front"
    assert any(m["manager"] == "kubectl" and m["operation"] == "Apply" for m in d["metadata"]["managedFields"])
    # a label the manager stops applying is removed (SSA ownership)
    del doc["metadata"]["labels"]["tier"]
    f.write_text(yaml.safe_dump(doc))
    apiserver.kubectl("apply", "--server-side", "-f", str(f))
    d = json.loads(apiserver.kubectl("get", "deploy", "ssa1", "-o", "json").stdout)
    assert "tier" not in d["metadata"]["labels"]


def test_create_get_formats(apiserver):
    apiserver.kubectl("create", "-f", "-", input=pod("fmt1", labels={"app": "fmt", "n": "1"}))
    apiserver.kubectl("create", "-f", "-", input=pod("fmt2", labels={"app": "fmt", "n": "2"}))
    table = apiserver.kubectl("get", "pods", "-l", "app=fmt").stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert [r.split()[:4] for r in table[1:]] == [["fmt1", "0/1", "Pending", "0"], ["fmt2", "0/1", "Pending", "0"]]
    wide = apiserver.kubectl("get", "pods", "-l", "app=fmt", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED", "NODE",
                               "READINESS", "GATES"]
    y = yaml.safe_load(apiserver.kubectl("get", "pod", "fmt1", "-o", "yaml").stdout)
    assert y["kind"] == "Pod" and y["spec"]["containers"][0]["image"] == "busybox:1.36"
    assert y["spec"]["restartPolicy"] == "Always" and y["status"]["phase"] == "Pending"
    cc = apiserver.kubectl("get", "pods", "-l", "app=fmt", "-o",
                           "custom-columns=NAME:.metadata.name,N:.metadata.labels.n,IMG:.spec.containers[0].image")
    assert [r.split() for r in cc.stdout.splitlines()] == [["NAME", "N", "IMG"], ["fmt1", "1", "busybox:1.36"],
                                                          ["fmt2", "2", "busybox:1.36"]]
    jp = apiserver.kubectl("get", "pods", "-l", "app=fmt", "-o",
                           'jsonpath={range .items[*]}{.metadata.name}{"\\t"}{.metadata.labels.n}{"\\n"}{end}')
    assert jp.stdout == "fmt1\t1\nfmt2\t2\n"
    jf = apiserver.kubectl("get", "pods", "-o", 'jsonpath={.items[?(@.metadata.labels.n=="2")].metadata.name}')
    assert jf.stdout == "fmt2"
    names = apiserver.kubectl("get", "pods", "-l", "app=fmt", "-o", "name").stdout.split()
    assert names == ["pod/fmt1", "pod/fmt2"]
    sel = apiserver.kubectl("get", "pods", "--field-selector", "metadata.name=fmt2", "-o", "name").stdout.split()
    assert sel == ["pod/fmt2"]
    allns = apiserver.kubectl("get", "pods", "-A", "-l", "app=fmt").stdout.splitlines()
    assert allns[0].split()[:2] == ["NAMESPACE", "NAME"] and allns[1].split()[:2] == ["default", "fmt1"]


def test_get_chunked_with_limit(apiserver):
    for i in range(7):
        apiserver.kubectl("create", "-f", "-", input=cm(f"chunk-{i}", k=str(i)))
    out = apiserver.kubectl("get", "cm", "--chunk-size", "2", "-o", "name").stdout.split()
    assert [n for n in out if n.startswith("configmap/chunk-")] == [f"configmap/chunk-{i}" for i in range(7)]


def test_describe_pod_and_deployment(apiserver):
    apiserver.kubectl("apply", "-f", "-", input=DEPLOY.format(name="desc1", replicas=2))
    out = apiserver.kubectl("describe", "deploy", "desc1").stdout
    assert "Name:                   desc1" in out and "Replicas:               2 desired" in out
    assert "Image:         nginx:1.25" in out
    apiserver.kubectl("create", "-f", "-", input=pod("desc-pod"))
    out = apiserver.kubectl("describe", "pod", "desc-pod").stdout
    assert "Name:             desc-pod" in out and "Status:           Pending" in out
    assert "busybox:1.36" in out


def test_label_annotate_scale(apiserver):
    apiserver.kubectl("apply", "-f", "-", input=DEPLOY.format(name="lbl1", replicas=1))
    assert apiserver.kubectl("label", "deploy", "lbl1", "tier=web").stdout.strip() == "deployment.apps/lbl1 labeled"
    assert apiserver.kubectl("annotate", "deploy", "lbl1", "note=hi").stdout.strip() == \
        "deployment.apps/lbl1 annotated"
    assert apiserver.kubectl("scale", "deploy", "lbl1", "--replicas=4").stdout.strip() == \
        "deployment.apps/lbl1 scaled"
    d = json.loads(apiserver.kubectl("get", "deploy", "lbl1", "-o", "json").stdout)
    assert d["metadata"]["labels"]["tier"] == "web" and d["metadata"]["annotations"]["note"] == "hi"
    assert d["spec"]["replicas"] == 4
    apiserver.kubectl("label", "deploy", "lbl1", "tier-")
    d = json.loads(apiserver.kubectl("get", "deploy", "lbl1", "-o", "json").stdout)
    assert "tier" not in d["metadata"]["labels"]
    res = apiserver.kubectl("label", "deploy", "lbl1", "app=other", check=False)
    assert res.returncode != 0 and "already has a value (lbl1)" in res.stderr


def test_edit_with_scripted_editor(apiserver, tmp_path):
    apiserver.kubectl("create", "-f", "-", input=cm("ed1", color="blue"))
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\nsed -i 's/color: blue/color: green/' \"$1\"\n")
    editor.chmod(0o755)
    env = dict(apiserver.env(), KUBE_EDITOR=str(editor))
    out = apiserver.kubectl("edit", "configmap", "ed1", env=env).stdout
    assert out.strip() == "configmap/ed1 edited"
    got = json.loads(apiserver.kubectl("get", "cm", "ed1", "-o", "json").stdout)
    assert got["data"] == {"color": "green"}


def test_delete_wait(apiserver):
    apiserver.kubectl("create", "-f", "-", input=cm("del1", a="b"))
    out = apiserver.kubectl("delete", "configmap", "del1", "--wait").stdout
    assert out.strip() == 'configmap "del1" deleted from default namespace'
    res = apiserver.kubectl("get", "configmap", "del1", check=False)
    assert res.returncode == 1 and 'configmaps "del1" not found' in res.stderr


def test_get_watch_sees_changes(apiserver):
    apiserver.kubectl("create", "-f", "-", input=cm("w1", a="1"))
    from tests.apiserver_support import real_kubectl

    proc = subprocess.Popen([real_kubectl(), "get", "cm", "-w", "-o", "name", "--field-selector",
                             "metadata.name=w1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=apiserver.env())
    try:
        first = proc.stdout.readline().strip()
        assert first == "configmap/w1"
        apiserver.kubectl("patch", "cm", "w1", "-p", '{"data":{"a":"2"}}')
        second = proc.stdout.readline().strip()
        assert second == "configmap/w1"
    finally:
        proc.terminate()
        proc.wait(5)


def test_namespace_lifecycle(apiserver):
    apiserver.kubectl("create", "-f", "-", input='{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"life1"}}')
    apiserver.kubectl("create", "-f", "-", input=cm("x", "life1", a="b"))
    sa = wait_for(lambda: apiserver.kubectl("get", "sa", "-n", "life1", "-o", "name", check=False).stdout.split(),
                  lambda v: "serviceaccount/default" in v, timeout=10, what="default ServiceAccount in life1")
    assert sa
    out = apiserver.kubectl("delete", "namespace", "life1", "--wait", "--timeout=30s").stdout
    assert out.strip() == 'namespace "life1" deleted'
    res = apiserver.kubectl("get", "namespace", "life1", check=False)
    assert res.returncode == 1 and 'namespaces "life1" not found' in res.stderr
    res = apiserver.kubectl("create", "-f", "-", input=cm("y", "life1", a="b"), check=False)
    assert res.returncode == 1 and 'namespaces "life1" not found' in res.stderr


def test_skew_kubectl_gets_and_applies(apiserver):
    from tests.apiserver_support import SKEW_VERSION, skew_kubectl
    from tests.support import require

    k = skew_kubectl()
    require(k.exists(), f"needs kubectl {SKEW_VERSION} in {k} (scripts/setup.sh installs it)")
    out = json.loads(apiserver.kubectl("version", "-o", "json", binary=str(k)).stdout)
    assert out["clientVersion"]["gitVersion"] == f"v{SKEW_VERSION}"
    apiserver.kubectl("apply", "-f", "-", input=DEPLOY.format(name="skew1", replicas=1), binary=str(k))
    rows = apiserver.kubectl("get", "deploy", "skew1", binary=str(k)).stdout.splitlines()
    assert rows[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert rows[1].split()[:2] == ["skew1", "0/1"]


def test_create_generators_send_protobuf(apiserver):
    """kubectl's typed clients send protobuf: the generators and create token work."""
    ns = "gen1"
    assert apiserver.kubectl("create", "namespace", ns).stdout.strip() == f"namespace/{ns} created"
    out = [
        apiserver.kubectl("create", "configmap", "g-cm", "-n", ns, "--from-literal", "a=1",
                          "--from-literal", "b=2").stdout,
        apiserver.kubectl("create", "secret", "generic", "g-s", "-n", ns, "--from-literal", "pw=x").stdout,
        apiserver.kubectl("create", "deployment", "g-d", "-n", ns, "--image", "nginx:1.25", "--replicas", "2",
                          "--port", "80").stdout,
        apiserver.kubectl("create", "serviceaccount", "g-sa", "-n", ns).stdout,
        apiserver.kubectl("create", "service", "clusterip", "g-svc", "-n", ns, "--tcp", "80:8080").stdout,
        apiserver.kubectl("create", "job", "g-j", "-n", ns, "--image", "busybox", "--", "echo", "hi").stdout,
        apiserver.kubectl("create", "role", "g-r", "-n", ns, "--verb", "get", "--resource", "pods").stdout,
        apiserver.kubectl("create", "rolebinding", "g-rb", "-n", ns, "--role", "g-r", "--user", "bob").stdout,
        apiserver.kubectl("create", "pdb", "g-pdb", "-n", ns, "--selector", "app=g", "--min-available",
                          "1").stdout,
    ]
    assert [o.strip() for o in out] == [
        "configmap/g-cm created", "secret/g-s created", "deployment.apps/g-d created",
        "serviceaccount/g-sa created", "service/g-svc created", "job.batch/g-j created",
        "role.rbac.authorization.k8s.io/g-r created", "rolebinding.rbac.authorization.k8s.io/g-rb created",
        "poddisruptionbudget.policy/g-pdb created"]
    cmj = json.loads(apiserver.kubectl("get", "cm", "g-cm", "-n", ns, "-o", "json").stdout)
    assert cmj["data"] == {"a": "1", "b": "2"}
    d = json.loads(apiserver.kubectl("get", "deploy", "g-d", "-n", ns, "-o", "json").stdout)
    c = d["spec"]["template"]["spec"]["containers"][0]
    assert d["spec"]["replicas"] == 2 and c["image"] == "nginx:1.25" and c["ports"] == [
        {"containerPort": 80, "protocol": "TCP"}]
    assert "creationTimestamp" not in d["spec"]["template"]["metadata"]
    svc = json.loads(apiserver.kubectl("get", "svc", "g-svc", "-n", ns, "-o", "json").stdout)
    assert svc["spec"]["ports"][0]["port"] == 80 and svc["spec"]["ports"][0]["targetPort"] == 8080
    token = apiserver.kubectl("create", "token", "g-sa", "-n", ns).stdout.strip()
    assert token.count(".") == 2
    assert apiserver.kubectl("auth", "can-i", "delete", "nodes").stdout.strip() == "yes"
    assert "kubernetes-admin" in apiserver.kubectl("auth", "whoami").stdout
    res = apiserver.kubectl("create", "configmap", "Bad_Name", "-n", ns, check=False)
    assert res.returncode == 1 and 'ConfigMap "Bad_Name" is invalid' in res.stderr


def test_run_expose_and_networkpolicy(apiserver):
    out = apiserver.kubectl("run", "rx1", "--image", "nginx:1.25", "--labels", "app=rx1", "--port", "80",
                            "--command", "--", "nginx", "-g", "daemon off;").stdout
    assert out.strip() == "pod/rx1 created"
    pod = json.loads(apiserver.kubectl("get", "pod", "rx1", "-o", "json").stdout)
    assert pod["spec"]["containers"][0]["command"] == ["nginx", "-g", "daemon off;"]
    assert apiserver.kubectl("expose", "pod", "rx1", "--port", "80").stdout.strip() == "service/rx1 exposed"
    svc = json.loads(apiserver.kubectl("get", "svc", "rx1", "-o", "json").stdout)
    assert svc["spec"]["selector"] == {"app": "rx1"} and svc["spec"]["ports"][0]["port"] == 80
    assert svc["spec"]["clusterIP"].startswith("10.")
    netpol = ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-rx1}\n"
              "spec:\n  podSelector: {matchLabels: {app: rx1}}\n  ingress:\n  - from:\n"
              "    - podSelector: {matchLabels: {role: client}}\n    ports: [{port: 80}]\n")
    assert apiserver.kubectl("apply", "-f", "-", input=netpol).stdout.strip() == \
        "networkpolicy.networking.k8s.io/deny-rx1 created"
    rows = [r.split() for r in apiserver.kubectl("get", "netpol", "deny-rx1").stdout.splitlines()]
    assert rows[0] == ["NAME", "POD-SELECTOR", "AGE"] and rows[1][:2] == ["deny-rx1", "app=rx1"]
    np = json.loads(apiserver.kubectl("get", "netpol", "deny-rx1", "-o", "json").stdout)
    assert np["spec"]["policyTypes"] == ["Ingress"]
    assert np["spec"]["ingress"][0]["ports"] == [{"port": 80, "protocol": "TCP"}]
