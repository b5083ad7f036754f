"""Pure parts of the API-client components: cluster DNS answers, pod volumes and
resolv.conf, $(VAR) expansion, static pods, the kubeadm manifests and images."""

from __future__ import annotations

import base64
import json
import os

import pytest

from testbed.k8s import images
from testbed.k8s.dns import ClusterDNS, parse_corefile
from testbed.k8s.kubelet import expand_vars
from testbed.k8s.runtime import process_argv
from testbed.k8s.staticpods import static_pod
from testbed.k8s.volumes import VolumeError, VolumeMaker, field_value, resolv_conf

pytestmark = pytest.mark.unit


# --- cluster DNS -----------------------------------------------------------------------------

def svc(name: str, ns: str, ip: str, ports: list[dict] | None = None) -> dict:
    return {"metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": ports or [{"name": "http", "port": 80, "protocol": "TCP"}]}}


def eps(name: str, ns: str, *addrs: tuple[str, str | None], port: int = 8080) -> dict:
    return {"metadata": {"name": f"{name}-abcde", "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}, **({"hostname": h} if h else {})}
                          for a, h in addrs]}


@pytest.fixture
def db() -> ClusterDNS:
    d = ClusterDNS()
    d.update([svc("web", "default", "10.96.0.20"), svc("db", "shop", "None"),
              svc("kube-dns", "kube-system", "10.96.0.10", [{"name": "dns", "port": 53, "protocol": "UDP"}])],
             [eps("db", "shop", ("192.168.1.5", "db-0"), ("192.168.1.6", None))])
    return d


def test_service_a_records_and_what_does_not_exist(db):
    assert db.records("web.default.svc.cluster.local", "A") == (
        "NOERROR", [("web.default.svc.cluster.local.", "A", "10.96.0.20")])
    assert db.records("web.default.svc.cluster.local.", "AAAA") == ("NOERROR", [])  # NODATA
    assert db.records("nope.default.svc.cluster.local", "A") == ("NXDOMAIN", [])
    assert db.records("web.other.svc.cluster.local", "A") == ("NXDOMAIN", [])
    assert db.records("default.svc.cluster.local", "A") == ("NOERROR", [])  # exists, no data
    assert db.records("example.com", "A") == ("SERVFAIL", [])  # no upstream from a lab


def test_headless_service_endpoints_hostnames_and_srv(db):
    rcode, recs = db.records("db.shop.svc.cluster.local", "A")
    assert rcode == "NOERROR" and sorted(r[2] for r in recs) == ["192.168.1.5", "192.168.1.6"]
    assert db.records("db-0.db.shop.svc.cluster.local", "A")[1] == [
        ("db-0.db.shop.svc.cluster.local.", "A", "192.168.1.5")]
    assert db.records("192-168-1-6.db.shop.svc.cluster.local", "A")[1][0][2] == "192.168.1.6"
    _, srv = db.records("_http._tcp.db.shop.svc.cluster.local", "SRV")
    assert sorted(r[2] for r in srv) == ["0 50 8080 192-168-1-6.db.shop.svc.cluster.local.",
                                         "0 50 8080 db-0.db.shop.svc.cluster.local."]
    _, srv = db.records("_http._tcp.web.default.svc.cluster.local", "SRV")
    assert srv == [("_http._tcp.web.default.svc.cluster.local.", "SRV", "0 100 80 web.default.svc.cluster.local.")]
    assert db.records("_nope._tcp.web.default.svc.cluster.local", "SRV") == ("NXDOMAIN", [])


def test_pods_ptr_and_version(db):
    assert db.records("192-168-1-9.default.pod.cluster.local", "A")[1] == [
        ("192-168-1-9.default.pod.cluster.local.", "A", "192.168.1.9")]
    assert db.records("20.0.96.10.in-addr.arpa", "PTR")[1] == [
        ("20.0.96.10.in-addr.arpa.", "PTR", "web.default.svc.cluster.local.")]
    assert db.records("5.1.168.192.in-addr.arpa", "PTR")[1] == [
        ("5.1.168.192.in-addr.arpa.", "PTR", "db-0.db.shop.svc.cluster.local.")]
    assert db.records("dns-version.cluster.local", "TXT")[1] == [("dns-version.cluster.local.", "TXT", '"1.1.0"')]


def test_wire_answers(db):
    import dns.message
    import dns.rcode

    q = dns.message.make_query("web.default.svc.cluster.local.", "A")
    r = dns.message.from_wire(db.answer(q.to_wire()))
    assert r.id == q.id and r.rcode() == dns.rcode.NOERROR
    assert [rr.to_text() for rr in r.answer] == ["web.default.svc.cluster.local. 5 IN A 10.96.0.20"]
    r = dns.message.from_wire(db.answer(dns.message.make_query("nope.default.svc.cluster.local.", "A").to_wire()))
    assert r.rcode() == dns.rcode.NXDOMAIN and r.authority[0].rdtype == 6  # SOA
    assert db.answer(b"\x00garbage") is None


def test_kubeadm_corefile_is_understood_and_unimplemented_plugins_named():
    cfg = parse_corefile(""".:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30
    loop
    reload
    loadbalance
}
""")
    assert cfg.zones == ["cluster.local.", "in-addr.arpa.", "ip6.arpa."] and cfg.ttl == 30 and cfg.port == 53
    assert (cfg.health, cfg.ready, cfg.metrics) == (":8080", ":8181", ":9153")
    assert any("forward" in w and "SERVFAIL" in w for w in cfg.warnings)
    assert {w.split()[1].rstrip(":") for w in cfg.warnings if w.startswith("plugin ")} == {"cache", "loop", "reload",
                                                                               "loadbalance"}
    with pytest.raises(ValueError, match="pods verified"):
        parse_corefile(".:53 {\n kubernetes cluster.local {\n pods verified\n }\n}\n")


# --- pod DNS config and volumes ---------------------------------------------------------------

def pod(**spec) -> dict:
    return {"metadata": {"name": "web", "namespace": "shop", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"nodeName": "w0", "containers": [{"name": "c", "image": "nginx"}], **spec},
            "status": {"podIP": "192.168.1.5"}}


def test_resolv_conf_by_dns_policy(tmp_path):
    assert resolv_conf(pod(), ["10.96.0.10"], "cluster.local") == (
        "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n")
    assert resolv_conf(pod(hostNetwork=True), ["10.96.0.10"], "cluster.local") is None  # the node's
    assert "nameserver 10.96.0.10" in resolv_conf(pod(hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet"),
                                                  ["10.96.0.10"], "cluster.local")
    assert resolv_conf(pod(), [], "cluster.local") is None
    custom = resolv_conf(pod(dnsPolicy="None", dnsConfig={"nameservers": ["1.2.3.4"], "searches": ["a.b"],
                                                          "options": [{"name": "ndots", "value": "2"}]}),
                         ["10.96.0.10"], "cluster.local")
    assert custom == "search a.b\nnameserver 1.2.3.4\noptions ndots:2\n"
    node = tmp_path / "resolv.conf"
    node.write_text("nameserver 9.9.9.9\nsearch lab\n")
    assert resolv_conf(pod(dnsPolicy="Default", dnsConfig={"options": [{"name": "edns0"}]}), ["10.96.0.10"],
                       "cluster.local", str(node)) == "search lab\nnameserver 9.9.9.9\noptions edns0\n"


def test_volumes_are_made_and_mounted_where_the_container_asks(tmp_path):
    objs = {("ConfigMap", "kube-root-ca.crt"): {"data": {"ca.crt": "CA"}},
            ("ConfigMap", "conf"): {"data": {"a.conf": "A", "b.conf": "B"}},
            ("Secret", "tls"): {"data": {"key": base64.b64encode(b"K").decode()}}}
    tokens = []

    def token(ns, sa, aud, secs, p):
        tokens.append((ns, sa, aud, secs, p["metadata"]["name"]))
        return "TOKEN"

    vm = VolumeMaker(lambda kind, name, ns: objs.get((kind, name)), token, "w0", "172.30.0.11")
    p = pod(serviceAccountName="app", volumes=[
        {"name": "kube-api-access-x", "projected": {"sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}},
        {"name": "conf", "configMap": {"name": "conf", "items": [{"key": "a.conf", "path": "x/a.conf"}]}},
        {"name": "tls", "secret": {"secretName": "tls"}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "modules", "hostPath": {"path": "/lib/modules"}}])
    c = {"name": "c", "volumeMounts": [
        {"name": "kube-api-access-x", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
        {"name": "conf", "mountPath": "/etc/app"}, {"name": "tls", "mountPath": "/etc/tls"},
        {"name": "scratch", "mountPath": "/scratch"}, {"name": "modules", "mountPath": "/lib/modules"}]}
    mounts = vm.mounts(p, c, str(tmp_path))
    sa = tmp_path / "volumes" / "kube-api-access-x"
    assert mounts == [(str(sa), "/var/run/secrets/kubernetes.io/serviceaccount"),
                      (str(tmp_path / "volumes" / "conf"), "/etc/app"), (str(tmp_path / "volumes" / "tls"), "/etc/tls"),
                      (str(tmp_path / "volumes" / "scratch"), "/scratch")]  # the hostPath is where it is
    assert (sa / "token").read_text() == "TOKEN" and (sa / "ca.crt").read_text() == "CA"
    assert (sa / "namespace").read_text() == "shop"
    assert tokens == [("shop", "app", [], 3607, "web")]
    assert (tmp_path / "volumes" / "conf" / "x" / "a.conf").read_text() == "A"
    assert (tmp_path / "volumes" / "tls" / "key").read_bytes() == b"K"
    with pytest.raises(VolumeError, match='configmap "missing" not found'):
        vm.mounts(pod(volumes=[{"name": "m", "configMap": {"name": "missing"}}]),
                  {"volumeMounts": [{"name": "m", "mountPath": "/m"}]}, str(tmp_path))
    with pytest.raises(VolumeError, match="type nfs is not supported"):
        vm.mounts(pod(volumes=[{"name": "n", "nfs": {"server": "x"}}]),
                  {"volumeMounts": [{"name": "n", "mountPath": "/n"}]}, str(tmp_path))
    assert field_value(p, "metadata.labels['app']") == "web" and field_value(p, "status.podIP") == "192.168.1.5"


def test_a_volume_made_again_keeps_its_directory_and_swaps_its_data(tmp_path):
    """A second container (or a refresh) makes the pod's volumes again: the volume directory
    a running container has bind-mounted must stay the same directory and show the new data
    (CI once saw an empty serviceaccount directory: the re-make had removed and recreated it)."""
    data = {"a": "1", "b": "2"}
    vm = VolumeMaker(lambda kind, name, ns: {"data": dict(data)}, lambda *a: "T")
    p = pod(volumes=[{"name": "cfg", "configMap": {"name": "cfg"}}])
    c = {"name": "c", "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}
    [(src, _)] = vm.mounts(p, c, str(tmp_path))
    ino = os.stat(src).st_ino
    fd = os.open(src, os.O_RDONLY)  # what a bind mount holds: the directory itself
    try:
        data.pop("b")
        data["a"] = "one"
        vm.mounts(p, c, str(tmp_path))
        assert os.stat(src).st_ino == ino
        assert sorted(n for n in os.listdir(f"/proc/self/fd/{fd}") if not n.startswith("..")) == ["a"]
        assert open(f"/proc/self/fd/{fd}/a").read() == "one"
    finally:
        os.close(fd)
    assert os.readlink(os.path.join(src, "a")) == "..data/a"
    assert len([n for n in os.listdir(src) if n.startswith("..") and n != "..data"]) == 1  # old data removed


def test_process_argv_mounts_then_enters_the_sandbox():
    argv = process_argv("/run/netns/cni-1", ["sleep", "1"], [("/src", "/etc/resolv.conf")], nice=-10)
    assert argv[:7] == ["nice", "-n", "-10", "unshare", "--mount", "--propagation", "slave"]
    assert argv[-6:] == ["/run/netns/cni-1", "1", "/src", "/etc/resolv.conf", "sleep", "1"]
    assert process_argv("/run/netns/cni-1", ["sleep", "1"]) == ["nsenter", "--net=/run/netns/cni-1", "--",
                                                                 "sleep", "1"]
    assert process_argv("", ["sleep", "1"]) == ["sleep", "1"]


def test_command_variable_expansion():
    env = {"NODE_NAME": "w0", "A": "x"}
    assert expand_vars("--hostname-override=$(NODE_NAME)", env) == "--hostname-override=w0"
    assert expand_vars("$$(NODE_NAME) $(MISSING) $(A)$(A)", env) == "$(NODE_NAME) $(MISSING) xx"


# --- static pods and kubeadm -----------------------------------------------------------------

def test_static_pod_is_named_for_its_node_with_a_stable_uid():
    m = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "etcd", "namespace": "kube-system"},
         "spec": {"hostNetwork": True, "containers": [{"name": "etcd", "image": "registry.k8s.io/etcd:3.5.21-0"}]}}
    p = static_pod(m, "k8s-m")
    assert p["metadata"]["name"] == "etcd-k8s-m" and p["spec"]["nodeName"] == "k8s-m"
    ann = p["metadata"]["annotations"]
    assert ann["kubernetes.io/config.source"] == "file" and ann["kubernetes.io/config.hash"] == p["metadata"]["uid"]
    assert static_pod(m, "k8s-m")["metadata"]["uid"] == p["metadata"]["uid"] != static_pod(m, "k8s-w0")[
        "metadata"]["uid"]
    with pytest.raises(ValueError, match="must be a v1 Pod"):
        static_pod({"apiVersion": "apps/v1", "kind": "Deployment"}, "k8s-m")


def test_static_pods_notice_an_edited_added_or_removed_manifest(tmp_path):
    """The kubelet asks StaticPods.changed() every half second, so an edit of a manifest (a
    kube-controller-manager flag, as on a kubeadm control plane) replaces the pod without
    waiting for an API event."""
    import json
    import os

    from testbed.k8s.staticpods import StaticPods

    m = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kcm", "namespace": "kube-system"},
         "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["a"]}]}}
    path = tmp_path / "kcm.yaml"
    path.write_text(json.dumps(m))
    sp = StaticPods(str(tmp_path), "m")
    assert sp.changed()  # never read
    first = sp.pods()[0]["metadata"]["uid"]
    assert not sp.changed()
    m["spec"]["containers"][0]["command"] = ["a", "--node-monitor-grace-period=15s"]
    path.write_text(json.dumps(m))
    os.utime(path, (1, 1))  # a different mtime, whatever the clock's granularity
    assert sp.changed()
    assert sp.pods()[0]["metadata"]["uid"] != first and not sp.changed()
    (tmp_path / "other.yaml").write_text(json.dumps(dict(m, metadata={"name": "o", "namespace": "kube-system"})))
    assert sp.changed() and len(sp.pods()) == 2 and not sp.changed()
    path.unlink()
    assert sp.changed() and len(sp.pods()) == 1 and not sp.changed()


def test_kubeadm_static_pods_and_addons_render():
    from testbed.lab import kubeadm

    state = {"lab": "wt", "control_plane": "k8s-m", "hosts": {"k8s-m": {"address": "172.30.0.10"}}}
    pods = kubeadm.static_pods(state, "192.168.0.0/16")
    assert sorted(pods) == ["etcd.yaml", "kube-apiserver.yaml", "kube-controller-manager.yaml", "kube-scheduler.yaml"]
    for f, p in pods.items():
        c = p["spec"]["containers"][0]
        assert p["spec"]["hostNetwork"] and p["spec"]["priorityClassName"] == "system-node-critical"
        wl = images.resolve(c["image"], c["command"], None, "/tmp")  # every image runs a real program
        assert wl.argv and c["command"][0] not in wl.argv[:1], f
    api = images.resolve(pods["kube-apiserver.yaml"]["spec"]["containers"][0]["image"],
                         pods["kube-apiserver.yaml"]["spec"]["containers"][0]["command"], None, "/tmp").argv
    assert api[1:3] == ["-m", "testbed.apiserver"] and "--advertise-address=172.30.0.10" in api
    objs = kubeadm.kube_proxy_addon(state, "192.168.0.0/16")
    assert [o["kind"] for o in objs] == ["ServiceAccount", "ConfigMap", "DaemonSet"]
    assert "https://172.30.0.10:6443" in objs[1]["data"]["kubeconfig.conf"]
    dns = kubeadm.coredns_addon()
    svc = next(o for o in dns if o["kind"] == "Service")
    assert svc["spec"]["clusterIP"] == "10.96.0.10" and [(p["name"], p["port"], p["protocol"])
                                                        for p in svc["spec"]["ports"]] == [
        ("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")]
    deploy = next(o for o in dns if o["kind"] == "Deployment")
    assert deploy["spec"]["replicas"] == 2 and deploy["spec"]["selector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    corefile = next(o for o in dns if o["kind"] == "ConfigMap")["data"]["Corefile"]
    assert parse_corefile(corefile).zones[0] == "cluster.local."
    with pytest.raises(ValueError, match="is not available in it"):
        images.resolve("registry.k8s.io/kube-proxy:v1.37.1", ["sh", "-c", "x"], None, "/tmp")
    json.dumps(objs)


def test_hooks_the_kubelet_does_not_run_are_named_and_probes_are_not():
    from testbed.k8s.kubelet import not_run_fields

    calico_node = {"name": "calico-node", "livenessProbe": {"exec": {"command": ["calico-node", "-felix-live"]}},
                   "readinessProbe": {"exec": {"command": ["calico-node", "-felix-ready"]}},
                   "lifecycle": {"preStop": {"exec": {"command": ["/bin/calico-node", "-shutdown"]}}}}
    assert not_run_fields(calico_node) == []  # probes and exec/httpGet hooks run (testbed.k8s.probe)
    assert not_run_fields({"name": "x", "lifecycle": {"postStart": {"tcpSocket": {"port": 1}},
                                                      "preStop": {"httpGet": {"port": 80}}}}) == ["lifecycle.postStart"]
    assert not_run_fields({"name": "nginx", "ports": [{"containerPort": 80}], "lifecycle": {}}) == []
