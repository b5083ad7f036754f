"""The API server through HTTP clients: the bad-input matrix (the real server's Status
code and reason, nothing written), authentication, kubeclient (CRUD, patch, watch,
informer with resync after 410), and the official Python ``kubernetes`` client."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading

import pytest

import kubeclient
from testbed.poll import wait_for

pytestmark = pytest.mark.etcd


def cm(name: str, **data: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"},
            "data": data}


def raw(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
        cert: bool = True) -> tuple[int, dict, http.client.HTTPResponse]:
    """One request with the admin cert (or none), returning (code, decoded body, response)."""
    ctx = ssl.create_default_context(cafile=server.pki.ca_crt)
    if cert:
        ctx.load_cert_chain(server.pki.admin_crt, server.pki.admin_key)
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=ctx, timeout=30)
    h = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
    conn.request(method, path, body, h)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    try:
        doc = json.loads(data)
    except ValueError:
        doc = {"raw": data.decode(errors="replace")}
    return resp.status, doc, resp


def configmap_names(server) -> list[str]:
    return sorted(i["metadata"]["name"] for i in server.client().list("v1", "configmaps", "default")["items"])


def assert_status(doc: dict, code: int, reason: str) -> None:
    assert doc.get("kind") == "Status" and doc.get("status") == "Failure", doc
    assert (doc["code"], doc.get("reason", "")) == (code, reason), doc


# --- bad input --------------------------------------------------------------------------------

def test_malformed_body_is_400_and_writes_nothing(apiserver):
    before = configmap_names(apiserver)
    code, doc, _ = raw(apiserver, "POST", "/api/v1/namespaces/default/configmaps",
                       b'{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {')
    assert code == 400
    assert_status(doc, 400, "BadRequest")
    code, doc, _ = raw(apiserver, "POST", "/api/v1/namespaces/default/configmaps", b'[1, 2]')
    assert code == 400 and doc["reason"] == "BadRequest"
    assert configmap_names(apiserver) == before


def test_unknown_field_strict_warn_ignore(apiserver):
    body = cm("uf1", a="b")
    body["spec"] = {"foo": 1}
    body["metadata"]["colour"] = "red"
    code, doc, _ = raw(apiserver, "POST", "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
                       json.dumps(body).encode())
    assert code == 400
    assert_status(doc, 400, "BadRequest")
    assert doc["message"] == 'strict decoding error: unknown field "metadata.colour", unknown field "spec"'
    assert "uf1" not in configmap_names(apiserver)
    code, doc, resp = raw(apiserver, "POST", "/api/v1/namespaces/default/configmaps?fieldValidation=Warn",
                          json.dumps(body).encode())
    assert code == 201 and "spec" not in doc and "colour" not in doc["metadata"]
    warnings = resp.headers.get_all("Warning")
    assert warnings == ['299 - "unknown field \\"metadata.colour\\""', '299 - "unknown field \\"spec\\""']
    body["metadata"]["name"] = "uf2"
    code, doc, resp = raw(apiserver, "POST", "/api/v1/namespaces/default/configmaps?fieldValidation=Ignore",
                          json.dumps(body).encode())
    assert code == 201 and resp.headers.get("Warning") is None and "spec" not in doc


def test_wrong_type_is_400(apiserver):
    body = cm("wt1")
    body["data"] = {"n": 5}
    code, doc, _ = raw(apiserver, "POST", "/api/v1/namespaces/default/configmaps", json.dumps(body).encode())
    assert code == 400 and doc["reason"] == "BadRequest"
    assert "cannot unmarshal number into Go struct field data.n of type string" in doc["message"]
    assert "wt1" not in configmap_names(apiserver)


def test_invalid_name_is_422_with_field_cause(apiserver):
    code, doc, _ = raw(apiserver, "POST", "/api/v1/namespaces/default/configmaps",
                       json.dumps(cm("Bad_Name")).encode())
    assert code == 422
    assert_status(doc, 422, "Invalid")
    assert doc["message"].startswith('ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": '
                                     "a lowercase RFC 1123 subdomain must consist of")
    assert doc["details"]["kind"] == "ConfigMap" and doc["details"]["name"] == "Bad_Name"
    assert [(c["reason"], c["field"]) for c in doc["details"]["causes"]] == [("FieldValueInvalid", "metadata.name")]
    assert "Bad_Name" not in configmap_names(apiserver)


def test_invalid_pod_names_every_field(apiserver):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad-pod"},
           "spec": {"containers": [{"name": "c"}, {"name": "c", "image": "x", "ports": [{"containerPort": 70000}]}]}}
    code, doc, _ = raw(apiserver, "POST", "/api/v1/namespaces/default/pods", json.dumps(pod).encode())
    assert code == 422 and doc["reason"] == "Invalid"
    fields = [(c["reason"], c["field"]) for c in doc["details"]["causes"]]
    assert fields == [("FieldValueRequired", "spec.containers[0].image"),
                      ("FieldValueDuplicate", "spec.containers[1].name"),
                      ("FieldValueInvalid", "spec.containers[1].ports[0].containerPort")]


def test_already_exists_and_not_found(apiserver):
    c = apiserver.client()
    c.create(cm("dup1", a="1"))
    with pytest.raises(kubeclient.AlreadyExists) as ei:
        c.create(cm("dup1", a="2"))
    assert ei.value.code == 409 and str(ei.value) == 'configmaps "dup1" already exists'
    assert c.get("v1", "configmaps", "dup1", "default")["data"] == {"a": "1"}
    with pytest.raises(kubeclient.NotFound) as ei:
        c.get("apps/v1", "deployments", "nope", "default")
    assert str(ei.value) == 'deployments.apps "nope" not found'
    assert ei.value.details == {"name": "nope", "group": "apps", "kind": "deployments"}


def test_stale_resource_version_is_409_conflict(apiserver):
    c = apiserver.client()
    first = c.create(cm("cas1", v="1"))
    second = dict(first, data={"v": "2"})
    c.replace(second)
    stale = dict(first, data={"v": "3"})
    with pytest.raises(kubeclient.Conflict) as ei:
        c.replace(stale)
    assert ei.value.code == 409 and ei.value.reason == "Conflict"
    assert str(ei.value) == ('Operation cannot be fulfilled on configmaps "cas1": the object has been modified; '
                             "please apply your changes to the latest version and try again")
    assert c.get("v1", "configmaps", "cas1", "default")["data"] == {"v": "2"}


def test_oversized_body_is_413(apiserver):
    big = cm("big1", blob="x" * (3 * 1024 * 1024 + 10))
    code, doc, _ = raw(apiserver, "POST", "/api/v1/namespaces/default/configmaps", json.dumps(big).encode())
    assert code == 413
    assert_status(doc, 413, "RequestEntityTooLarge")
    assert doc["message"] == "Request entity too large: limit is 3145728"
    assert "big1" not in configmap_names(apiserver)


def test_no_credentials_is_401(apiserver):
    for path in ("/api/v1/namespaces/default/configmaps", "/api", "/version"):
        code, doc, _ = raw(apiserver, "GET", path, cert=False)
        assert code == 401, path
        assert doc == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": "Unauthorized", "reason": "Unauthorized", "code": 401}
    code, doc, _ = raw(apiserver, "POST", "/api/v1/namespaces/default/configmaps",
                       json.dumps(cm("anon1")).encode(), cert=False)
    assert code == 401 and "anon1" not in configmap_names(apiserver)
    code, doc, _ = raw(apiserver, "GET", "/api/v1/pods", cert=False, headers={"Authorization": "Bearer nope"})
    assert code == 401 and doc["reason"] == "Unauthorized"


def _compact(apiserver) -> int:
    from datastore.etcd import EtcdClient

    etcd = EtcdClient(apiserver.etcd)
    rev = etcd.revision()
    etcd.call("/v3/kv/compaction", {"revision": str(rev), "physical": True})
    return rev


def test_watch_from_compacted_revision_is_410(apiserver):
    c = apiserver.client()
    old = int(c.create(cm("cmp1"))["metadata"]["resourceVersion"])
    c.create(cm("cmp2"))
    c.create(cm("cmp3"))
    _compact(apiserver)
    code, doc, resp = raw(apiserver, "GET", f"/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={old}")
    assert code == 200
    assert doc["type"] == "ERROR"
    assert_status(doc["object"], 410, "Expired")
    assert doc["object"]["message"].startswith(f"too old resource version: {old} (")
    with pytest.raises(kubeclient.Gone):
        for _ in c.watch("v1", "configmaps", "default", resource_version=str(old)):
            pass


def test_list_continue_after_compaction_is_410(apiserver):
    c = apiserver.client()
    for i in range(3):
        c.create(cm(f"pg{i}"))
    page = c.list("v1", "configmaps", "default", limit=1)
    cont = page["metadata"]["continue"]
    c.create(cm("pg9"))
    _compact(apiserver)
    with pytest.raises(kubeclient.Gone) as ei:
        c.list("v1", "configmaps", "default", limit=1, continue_=cont)
    assert ei.value.code == 410 and ei.value.reason == "Expired"


def test_send_initial_events(apiserver):
    c = apiserver.client()
    c.create(cm("sie1"))
    code, doc, _ = raw(apiserver, "GET", "/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true")
    assert code == 422 and doc["reason"] == "Invalid"
    w = c.watch("v1", "configmaps", "default", send_initial_events=True, timeout_seconds=5)
    seen = []
    for typ, obj in w:
        seen.append((typ, obj["metadata"].get("name"), (obj["metadata"].get("annotations") or {})))
        if typ == "BOOKMARK":
            break
    w.close()
    assert ("ADDED", "sie1", {}) in seen
    assert seen[-1][0] == "BOOKMARK" and seen[-1][2] == {"k8s.io/initial-events-end": "true"}


# --- kubeclient ---------------------------------------------------------------------------------

def test_kubeclient_patch_types(apiserver):
    c = apiserver.client()
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "pt1", "namespace": "default"},
           "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
               "metadata": {"labels": {"a": "b"}},
               "spec": {"containers": [{"name": "one", "image": "nginx:1", "env": [{"name": "X", "value": "1"}]},
                                       {"name": "two", "image": "busybox:1"}]}}}}
    c.create(dep)
    # strategic merge: containers merge by name, env by name
    out = c.patch("apps/v1", "deployments", "pt1", {"spec": {"template": {"spec": {"containers": [
        {"name": "two", "image": "busybox:2", "env": [{"name": "Y", "value": "2"}]}]}}}}, "default",
        patch_type="strategic")
    cs = out["spec"]["template"]["spec"]["containers"]
    assert [(x["name"], x["image"]) for x in cs] == [("one", "nginx:1"), ("two", "busybox:2")]
    assert cs[0]["env"] == [{"name": "X", "value": "1"}] and cs[1]["env"] == [{"name": "Y", "value": "2"}]
    # JSON merge: lists replaced
    out = c.patch("apps/v1", "deployments", "pt1", {"metadata": {"labels": {"m": "1"}}}, "default")
    assert out["metadata"]["labels"] == {"m": "1"}
    # JSON patch
    out = c.patch("apps/v1", "deployments", "pt1", [{"op": "replace", "path": "/spec/replicas", "value": 3}],
                  "default", patch_type="json")
    assert out["spec"]["replicas"] == 3 and out["metadata"]["generation"] == 3
    with pytest.raises(kubeclient.ApiError) as ei:
        c.patch("apps/v1", "deployments", "pt1", [{"op": "test", "path": "/spec/replicas", "value": 9}], "default",
                patch_type="json")
    assert ei.value.code == 422


def test_kubeclient_watch_and_informer_resync_after_410(apiserver):
    c = apiserver.client()
    inf = kubeclient.Informer(c, "v1", "configmaps", "default", label_selector="inf=yes")
    events: list[tuple[str, str]] = []
    lock = threading.Lock()

    def record(typ: str, obj: dict, old: dict | None) -> None:
        with lock:
            events.append((typ, obj["metadata"]["name"]))

    inf.add_handler(record)
    first = cm("inf1")
    first["metadata"]["labels"] = {"inf": "yes"}
    c.create(first)
    inf.start()
    try:
        assert inf.wait_synced(10)
        wait_for(lambda: list(events), lambda e: ("ADDED", "inf1") in e, timeout=10, what="inf1 ADDED")
        second = cm("inf2")
        second["metadata"]["labels"] = {"inf": "yes"}
        c.create(second)
        wait_for(lambda: sorted(inf.store), lambda k: k == ["default/inf1", "default/inf2"], timeout=10,
                 what="informer store")
        # the informer is down while changes happen and etcd compacts: started again it
        # resumes from its resourceVersion, gets 410 Gone, re-lists and reports what it missed
        inf.stop()
        c.delete("v1", "configmaps", "inf1", "default")
        third = cm("inf3")
        third["metadata"]["labels"] = {"inf": "yes"}
        c.create(third)
        _compact(apiserver)
        inf.start()
        wait_for(lambda: sorted(inf.store), lambda k: k == ["default/inf2", "default/inf3"], timeout=15,
                 what="resync after 410")
        assert inf.relists == 2
        assert ("DELETED", "inf1") in events and ("ADDED", "inf3") in events
    finally:
        inf.stop()


def test_serviceaccount_token_and_in_cluster_config(apiserver, tmp_path, monkeypatch):
    c = apiserver.client()
    wait_for(lambda: c.list("v1", "serviceaccounts", "default")["items"],
             lambda items: any(i["metadata"]["name"] == "default" for i in items), timeout=10,
             what="default ServiceAccount")
    tr = c.request("POST", "/api/v1/namespaces/default/serviceaccounts/default/token",
                   {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                    "spec": {"expirationSeconds": 3600}})
    token = tr["status"]["token"]
    sa_dir = tmp_path / "sa"
    sa_dir.mkdir()
    (sa_dir / "token").write_text(token)
    (sa_dir / "namespace").write_text("default")
    (sa_dir / "ca.crt").write_text(open(apiserver.pki.ca_crt).read())
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(apiserver.port))
    cfg = kubeclient.in_cluster(str(sa_dir))
    incl = kubeclient.Client(cfg)
    assert incl.get("v1", "namespaces", "default")["metadata"]["name"] == "default"
    # a token of a deleted ServiceAccount no longer authenticates
    c.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "gone-sa", "namespace": "default"}})
    tr = c.request("POST", "/api/v1/namespaces/default/serviceaccounts/gone-sa/token",
                   {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}})
    (sa_dir / "token").write_text(tr["status"]["token"])
    assert incl.list("v1", "pods", "default")["kind"] == "PodList"
    c.delete("v1", "serviceaccounts", "gone-sa", "default")
    wait_for(lambda: _status_of(incl), lambda s: s == 401, timeout=10, what="401 after the SA is deleted")


def _status_of(client) -> int:
    try:
        client.list("v1", "pods", "default")
        return 200
    except kubeclient.ApiError as exc:
        return exc.code


def test_official_python_client_lists_and_watches_pods(apiserver):
    from kubernetes import client as kclient
    from kubernetes import config as kconfig
    from kubernetes import watch as kwatch

    api_client = kconfig.new_client_from_config(config_file=apiserver.kubeconfig)
    v1 = kclient.CoreV1Api(api_client)
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pyc1", "labels": {"via": "python"}},
            "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}
    v1.create_namespaced_pod("default", body)
    pods = v1.list_namespaced_pod("default", label_selector="via=python")
    assert [p.metadata.name for p in pods.items] == ["pyc1"]
    assert pods.items[0].spec.containers[0].image == "busybox:1.36"
    w = kwatch.Watch()
    got = []

    def writer() -> None:
        v1.patch_namespaced_pod("pyc1", "default", {"metadata": {"labels": {"step": "2"}}})

    timer = threading.Timer(0.5, writer)
    timer.start()
    for ev in w.stream(v1.list_namespaced_pod, "default", label_selector="via=python", timeout_seconds=10):
        got.append((ev["type"], ev["object"].metadata.name, (ev["object"].metadata.labels or {}).get("step")))
        if len(got) == 2:
            w.stop()
    timer.join()
    assert got == [("ADDED", "pyc1", None), ("MODIFIED", "pyc1", "2")]
    api_client.close()


def test_etcd_restart_is_survived(apiserver, etcd_server):
    """etcd goes away and comes back: requests fail with 503 meanwhile, then work again, and
    an informer's watch carries on and sees writes made after the restart."""
    c = apiserver.client()
    inf = kubeclient.Informer(c, "v1", "configmaps", "default", label_selector="restart=yes").start()
    try:
        assert inf.wait_synced(10)
        etcd_server.stop()
        with pytest.raises(kubeclient.ApiError) as ei:
            c.list("v1", "configmaps", "default")
        assert ei.value.code == 503 and ei.value.reason == "ServiceUnavailable"
        etcd_server.start()
        wait_for(lambda: _status_of_list(c), lambda code: code == 200, timeout=20, what="API back after etcd")
        obj = cm("after-restart")
        obj["metadata"]["labels"] = {"restart": "yes"}
        c.create(obj)
        wait_for(lambda: sorted(inf.store), lambda k: k == ["default/after-restart"], timeout=20,
                 what="the informer sees a write made after etcd came back")
    finally:
        inf.stop()


def _status_of_list(client) -> int:
    try:
        client.list("v1", "configmaps", "default")
        return 200
    except kubeclient.ApiError as exc:
        return exc.code


def test_server_compacts_etcd_history(apiserver, tmp_path):
    """--etcd-compaction-interval: the history is compacted, old resourceVersions become 410."""
    from tests.apiserver_support import APIServerProcess

    other = APIServerProcess(tmp_path, apiserver.etcd, ["--etcd-compaction-interval", "1s"])
    other.start()
    try:
        c = other.client()
        old = c.create(cm("compact-me"))["metadata"]["resourceVersion"]
        c.create(cm("compact-me-2"))

        def watch_code() -> int:
            try:
                for _ in c.watch("v1", "configmaps", "default", resource_version=old, timeout_seconds=1):
                    pass
                return 200
            except kubeclient.Gone:
                return 410

        wait_for(watch_code, lambda code: code == 410, timeout=15, what="410 for a compacted resourceVersion")
    finally:
        other.stop()


def test_metrics_count_the_watches_being_served(apiserver):
    """``kubectl get --raw /metrics`` shows apiserver_longrunning_requests per resource and
    scope while watches are open, and drops them when they end."""
    import subprocess

    from testbed.apiserver.metrics import parse
    from tests.apiserver_support import real_kubectl

    def metrics() -> dict:
        out = subprocess.run([real_kubectl(), "--kubeconfig", apiserver.kubeconfig, "get", "--raw", "/metrics"],
                             capture_output=True, text=True, timeout=30, env={"HOME": str(apiserver.home)})
        assert out.returncode == 0, out.stderr
        assert "# TYPE apiserver_longrunning_requests gauge" in out.stdout
        return {k: v for k, v in parse(out.stdout).items() if k[2] in ("configmaps", "nodes")}

    client = apiserver.client()
    before = metrics()
    w1 = client.watch("v1", "configmaps", "default", timeout_seconds=30)
    w2 = client.watch("v1", "configmaps", "default", timeout_seconds=30)
    w3 = client.watch("v1", "nodes", timeout_seconds=30)
    readers = [threading.Thread(target=lambda w=w: list(w), daemon=True) for w in (w1, w2, w3)]
    for t in readers:  # a watch is requested when it is first read
        t.start()
    try:
        seen = wait_for(metrics, lambda m: m.get(("", "v1", "configmaps", "namespace", "", "WATCH"), 0)
                        - before.get(("", "v1", "configmaps", "namespace", "", "WATCH"), 0) == 2,
                        timeout=10, what="two configmap watches counted")
        assert seen[("", "v1", "nodes", "cluster", "", "WATCH")] - before.get(
            ("", "v1", "nodes", "cluster", "", "WATCH"), 0) == 1, seen
    finally:
        for w in (w1, w2, w3):
            w.close()
        for t in readers:
            t.join(10)
    keys = (("", "v1", "configmaps", "namespace", "", "WATCH"), ("", "v1", "nodes", "cluster", "", "WATCH"))
    # other tests' watches on this shared server may end meanwhile: ours are gone when no key
    # is above its count before them
    wait_for(metrics, lambda m: all(m.get(k, 0) <= before.get(k, 0) for k in keys), timeout=10,
             what="the gauge back to at most its value before the watches")


def test_kubeclient_resumes_its_tls_session_as_the_same_user(apiserver):
    """A client's next connection (another thread's, another client's with the same
    credentials) resumes its TLS session: the server skips the full handshake and still
    knows the client certificate's user."""
    c = apiserver.client()
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    first = c.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", review)
    c._drop()
    again = c.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", review)
    assert c._local.conn.sock.session_reused is True
    assert again["status"]["userInfo"] == first["status"]["userInfo"]
    assert again["status"]["userInfo"]["username"] == "kubernetes-admin"
    other: list[bool] = []

    def in_another_thread() -> None:  # its own connection
        c.request("GET", "/api/v1/namespaces/default")
        other.append(c._local.conn.sock.session_reused)

    t = threading.Thread(target=in_another_thread)
    t.start()
    t.join(30)
    assert other == [True]
    c2 = apiserver.client()  # another client of the process with the same credentials
    assert c2.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", review)["status"]["userInfo"] \
        == first["status"]["userInfo"]
    assert c2._local.conn.sock.session_reused is True


def test_a_watch_streams_on_the_list_connection_and_survives_a_stale_one(apiserver):
    """An informer's list and the watch after it share one connection (one TLS handshake, as
    client-go's share their HTTP/2 connection); a kept-alive connection the server has closed
    is replaced, not reported as a failure."""
    c = apiserver.client()
    c.create(cm("share-a"), "default")
    items, rv = c.list_all("v1", "configmaps", "default")
    listed_on = c._local.conn
    assert listed_on is not None and listed_on.sock is not None
    apiserver.client().create(cm("share-b"), "default")  # another client: c's connection stays idle
    w = c.watch("v1", "configmaps", "default", resource_version=rv)  # replays from rv
    try:
        typ, obj = next(iter(w))
        assert (typ, obj["metadata"]["name"]) == ("ADDED", "share-b")
        assert w._conn is listed_on, "the watch opened a connection of its own"
        assert c._local.conn is None, "the thread kept the connection the watch streams on"
    finally:
        w.close()
    # the thread's next request opens a connection; its server side then goes away (an idle
    # connection the API server closed): the watch retries once on a new one
    c.list("v1", "configmaps", "default")
    stale = c._local.conn
    stale.sock.shutdown(socket.SHUT_RDWR)
    w2 = c.watch("v1", "configmaps", "default", resource_version=rv)
    try:
        typ, obj = next(iter(w2))
        assert (typ, obj["metadata"]["name"]) == ("ADDED", "share-b")
        assert w2._conn is not stale
    finally:
        w2.close()
    for n in ("share-a", "share-b"):
        c.delete("v1", "configmaps", n, "default")
