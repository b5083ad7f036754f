"""The real kubectl on CRDs, events, rollout status, explain, wait, graceful deletion with
finalizers and garbage collection."""

from __future__ import annotations

import json
import subprocess

import pytest

from testbed.poll import wait_for

pytestmark = pytest.mark.etcd

CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.lab.example.com
spec:
  group: lab.example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wg], categories: [all]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Colour, type: string, jsonPath: .spec.colour}
    - {name: Phase, type: string, jsonPath: .status.phase}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1, maximum: 10}
              colour: {type: string, enum: [red, blue], default: blue}
          status:
            type: object
            properties:
              phase: {type: string}
"""


def test_crd_and_its_objects_with_printer_columns(apiserver, tmp_path):
    f = tmp_path / "crd.yaml"
    f.write_text(CRD)
    assert apiserver.kubectl("apply", "-f", str(f)).stdout.strip() == \
        "customresourcedefinition.apiextensions.k8s.io/widgets.lab.example.com created"
    wait_for(lambda: apiserver.kubectl("get", "crd", "widgets.lab.example.com", "-o",
                                       "jsonpath={.status.conditions[?(@.type==\"Established\")].status}").stdout,
             lambda s: s == "True", timeout=10, what="CRD Established")
    w = tmp_path / "w.yaml"
    w.write_text("apiVersion: lab.example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n---\n"
                 "apiVersion: lab.example.com/v1\nkind: Widget\nmetadata: {name: w2}\nspec: {size: 5, colour: red}\n")
    assert apiserver.kubectl("apply", "-f", str(w)).stdout.splitlines() == [
        "widget.lab.example.com/w1 created", "widget.lab.example.com/w2 created"]
    assert apiserver.kubectl("apply", "-f", str(w)).stdout.splitlines() == [
        "widget.lab.example.com/w1 unchanged", "widget.lab.example.com/w2 unchanged"]
    rows = [r.split() for r in apiserver.kubectl("get", "wg").stdout.splitlines()]
    assert rows[0] == ["NAME", "SIZE", "COLOUR", "PHASE", "AGE"]
    assert [r[:3] for r in rows[1:]] == [["w1", "3", "blue"], ["w2", "5", "red"]]
    # status subresource: the main resource ignores status, /status sets it
    apiserver.kubectl("patch", "widget", "w1", "--subresource", "status", "--type", "merge",
                      "-p", '{"status":{"phase":"Ready"}}')
    rows = [r.split() for r in apiserver.kubectl("get", "widgets", "w1").stdout.splitlines()]
    assert rows[1][:4] == ["w1", "3", "blue", "Ready"]
    # schema validation with field causes; nothing written
    res = apiserver.kubectl("apply", "-f", "-", check=False, input=(
        "apiVersion: lab.example.com/v1\nkind: Widget\nmetadata: {name: w3}\nspec: {size: 11, colour: green}\n"))
    assert res.returncode == 1
    assert 'The Widget "w3" is invalid' in res.stderr
    assert "spec.size: Invalid value: 11: should be less than or equal to 10" in res.stderr
    assert 'spec.colour: Unsupported value: "green": supported values: "red", "blue"' in res.stderr
    res = apiserver.kubectl("apply", "-f", "-", check=False, input=(
        "apiVersion: lab.example.com/v1\nkind: Widget\nmetadata: {name: w4}\nspec: {size: 1, shape: round}\n"))
    assert res.returncode == 1 and 'unknown field "spec.shape"' in res.stderr
    assert apiserver.kubectl("get", "widgets", "-o", "name").stdout.split() == \
        ["widget.lab.example.com/w1", "widget.lab.example.com/w2"]
    assert "widget.lab.example.com/w1" in apiserver.kubectl("get", "all", "-o", "name").stdout
    explain = apiserver.kubectl("explain", "widget.spec").stdout
    assert "size" in explain and "colour" in explain
    # deleting the CRD stops serving it
    apiserver.kubectl("delete", "crd", "widgets.lab.example.com")
    res = wait_for(lambda: apiserver.kubectl("get", "widgets", check=False),
                   lambda r: r.returncode != 0, timeout=10, what="widgets no longer served")
    # (kubectl's discovery cache may still name the type: then the server's 404 is what it shows)
    assert ('the server doesn\'t have a resource type "widgets"' in res.stderr
            or "the server could not find the requested resource" in res.stderr), res.stderr


def test_events_core_and_events_v1(apiserver):
    c = apiserver.client()
    c.create({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "ev1.123", "namespace": "default"},
              "involvedObject": {"kind": "Pod", "name": "p1", "namespace": "default", "apiVersion": "v1"},
              "reason": "Scheduled", "message": "Successfully assigned default/p1 to w0", "type": "Normal",
              "source": {"component": "default-scheduler"}, "count": 1,
              "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z"})
    c.create({"apiVersion": "events.k8s.io/v1", "kind": "Event",
              "metadata": {"name": "ev2.456", "namespace": "default"},
              "regarding": {"kind": "Pod", "name": "p1", "namespace": "default"}, "reason": "Pulled",
              "note": "Container image already present", "type": "Normal", "action": "Pulling",
              "reportingController": "kubelet", "reportingInstance": "w0",
              "eventTime": "2026-01-01T00:00:01.000000Z"}, plural="events")
    rows = [r.split(None, 4) for r in apiserver.kubectl("get", "events").stdout.splitlines()]
    assert rows[0] == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT   MESSAGE"] or rows[0][:2] == ["LAST", "SEEN"]
    text = apiserver.kubectl("get", "events").stdout
    assert "Scheduled" in text and "pod/p1" in text and "Successfully assigned default/p1 to w0" in text
    assert "Pulled" in text and "Container image already present" in text
    v1 = json.loads(apiserver.kubectl("get", "events.v1.events.k8s.io", "ev1.123", "-o", "json").stdout)
    assert v1["regarding"]["name"] == "p1" and v1["note"] == "Successfully assigned default/p1 to w0"
    core = c.get("v1", "events", "ev2.456", "default")
    assert core["involvedObject"]["name"] == "p1" and core["message"] == "Container image already present"
    sel = apiserver.kubectl("get", "events", "--field-selector", "reason=Pulled", "-o", "name").stdout.split()
    assert sel == ["event/ev2.456"]


DEPLOY = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "ro1", "namespace": "default"},
          "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "ro1"}},
                   "template": {"metadata": {"labels": {"app": "ro1"}},
                                "spec": {"containers": [{"name": "c", "image": "nginx:1.25"}]}}}}


def test_rollout_status_follows_deployment_status(apiserver):
    from tests.apiserver_support import real_kubectl

    c = apiserver.client()
    d = c.create(DEPLOY)
    proc = subprocess.Popen([real_kubectl(), "rollout", "status", "deployment/ro1", "--timeout=30s"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=apiserver.env())
    try:
        first = proc.stdout.readline()  # no controller has observed the spec yet
        assert first == "Waiting for deployment spec update to be observed...\n", first
        # what the deployment controller would write
        d = c.get("apps/v1", "deployments", "ro1", "default")
        d["status"] = {"observedGeneration": d["metadata"]["generation"], "replicas": 2, "updatedReplicas": 2,
                       "readyReplicas": 2, "availableReplicas": 2,
                       "conditions": [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
                                      {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}]}
        c.update_status(d, plural="deployments")
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert 'deployment "ro1" successfully rolled out' in out
    finally:
        if proc.poll() is None:
            proc.kill()
    rows = apiserver.kubectl("get", "deploy", "ro1").stdout.splitlines()
    assert rows[1].split()[:4] == ["ro1", "2/2", "2", "2"]


def test_wait_for_condition(apiserver):
    c = apiserver.client()
    pod = c.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "wt1", "namespace": "default"},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    from tests.apiserver_support import real_kubectl

    proc = subprocess.Popen([real_kubectl(), "wait", "--for=condition=Ready", "pod/wt1", "--timeout=30s"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=apiserver.env())
    pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    c.update_status(pod)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.strip() == "pod/wt1 condition met"


def test_graceful_delete_with_finalizer_and_wait(apiserver):
    from tests.apiserver_support import real_kubectl

    c = apiserver.client()
    c.create({"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": "fin1", "namespace": "default", "finalizers": ["lab.example.com/hold"]}})
    proc = subprocess.Popen([real_kubectl(), "delete", "configmap", "fin1", "--wait", "--timeout=30s"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=apiserver.env())
    got = wait_for(lambda: c.get("v1", "configmaps", "fin1", "default"),
                   lambda o: bool(o["metadata"].get("deletionTimestamp")), timeout=10, what="deletionTimestamp")
    assert proc.poll() is None  # kubectl waits while the finalizer holds the object
    got["metadata"]["finalizers"] = []
    c.replace(got)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert 'configmap "fin1" deleted' in out
    # a pod bound to a node: graceful (Terminating) until its kubelet deletes it with grace 0
    c.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gd-node"}})
    c.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "gd1", "namespace": "default"},
              "spec": {"nodeName": "gd-node", "terminationGracePeriodSeconds": 20,
                       "containers": [{"name": "c", "image": "busybox"}]}})
    apiserver.kubectl("delete", "pod", "gd1", "--wait=false")
    p = c.get("v1", "pods", "gd1", "default")
    assert p["metadata"]["deletionGracePeriodSeconds"] == 20 and p["metadata"]["deletionTimestamp"]
    rows = apiserver.kubectl("get", "pod", "gd1").stdout.splitlines()
    assert rows[1].split()[2] == "Terminating"
    c.delete("v1", "pods", "gd1", "default", grace_period=0)  # the kubelet's final delete
    res = apiserver.kubectl("get", "pod", "gd1", check=False)
    assert res.returncode == 1 and 'pods "gd1" not found' in res.stderr


@pytest.mark.parametrize("policy", ["background", "foreground", "orphan"])
def test_garbage_collection_by_owner_references(apiserver, policy):
    c = apiserver.client()
    name = f"gc-{policy}"
    rs = c.create({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name, "namespace": "default"},
                   "spec": {"replicas": 1, "selector": {"matchLabels": {"gc": name}},
                            "template": {"metadata": {"labels": {"gc": name}},
                                         "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}})
    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name, "uid": rs["metadata"]["uid"],
             "controller": True, "blockOwnerDeletion": True}
    for i in range(2):
        c.create({"apiVersion": "v1", "kind": "Pod",
                  "metadata": {"name": f"{name}-{i}", "namespace": "default", "labels": {"gc": name},
                               "ownerReferences": [owner]},
                  "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    apiserver.kubectl("delete", "rs", name, f"--cascade={policy}", "--timeout=30s")

    def pods() -> list[dict]:
        return c.list("v1", "pods", "default", label_selector=f"gc={name}")["items"]

    if policy == "orphan":
        left = wait_for(pods, lambda ps: len(ps) == 2 and all(not p["metadata"].get("ownerReferences") for p in ps),
                        timeout=15, what="orphaned pods without ownerReferences")
        assert len(left) == 2
    else:
        wait_for(pods, lambda ps: ps == [], timeout=15, what=f"dependents collected ({policy})")
    import kubeclient

    with pytest.raises(kubeclient.NotFound):
        c.get("apps/v1", "replicasets", name, "default")


def test_explain_builtin_kinds(apiserver):
    out = apiserver.kubectl("explain", "deployment.spec.strategy").stdout
    assert "GROUP:      apps" in out and "KIND:       Deployment" in out and "rollingUpdate" in out
    out = apiserver.kubectl("explain", "pods", "--recursive").stdout
    assert "containers" in out and "nodeName" in out
