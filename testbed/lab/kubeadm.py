"""What ``kubeadm init`` / ``kubeadm join`` leave on a lab's nodes: the cluster PKI and the
kubeconfigs, each in the node's own ``/etc/kubernetes``.

Every node has a private ``/etc/kubernetes`` (a bind mount of
``/run/calicolab/<lab>/nodes/<node>/etc-kubernetes``, see the supervisor's node dirs):

* the control-plane node: ``pki/`` (kubeadm's file names, made by
  :func:`testbed.apiserver.pki.write_pki`: CA, API server serving cert with the
  ``kubernetes.default.svc`` names, ServiceAccount key pair, ...; P-256 keys, as kubeadm's
  ``encryptionAlgorithm: ECDSA-P256`` makes them, the ServiceAccount key RSA 2048),
  ``controller-manager.conf`` and ``scheduler.conf``;
* every node: ``admin.conf`` (the cluster-admin kubeconfig, so ``kubectl`` works in every
  node's shell; ``KUBECONFIG`` points to it) and ``kubelet.conf`` with the node's own client
  certificate (``system:node:<name>`` in ``system:nodes``, an ECDSA P-256 key as the
  kubelet's TLS bootstrap makes it), plus ``pki/ca.crt`` (the CA kubeadm join copies).

The API server answers on ``https://<control-plane address>:6443``.
"""

from __future__ import annotations

import os
from pathlib import Path

from testbed.lab import state as labstate

API_PORT = 6443
ETC_DIR = "etc-kubernetes"  # backing directory of a node's /etc/kubernetes (supervisor NODE_DIRS)
ADMIN_CONF = "/etc/kubernetes/admin.conf"
KUBELET_CONF = "/etc/kubernetes/kubelet.conf"


def api_server_url(state: dict) -> str:
    """``https://<control-plane address>:6443``."""
    cp = state["control_plane"]
    return f"https://{state['hosts'][cp]['address']}:{API_PORT}"


def etc_kubernetes(state: dict, node: str) -> Path:
    """The machine path of ``node``'s ``/etc/kubernetes``."""
    return labstate.state_dir(state["lab"]) / "nodes" / node / ETC_DIR


def pki_dir(state: dict) -> Path:
    """The machine path of the control plane's ``/etc/kubernetes/pki``."""
    return etc_kubernetes(state, state["control_plane"]) / "pki"


def admin_conf(state: dict) -> Path:
    """The machine path of the admin kubeconfig (the control-plane node's admin.conf)."""
    return etc_kubernetes(state, state["control_plane"]) / "admin.conf"


def _write(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def _kubeconfig_text(doc: dict) -> str:
    import json

    return json.dumps(doc, indent=2) + "\n"  # JSON is YAML: every client reads it


def init(state: dict, pod_cidr: str | None = None) -> None:
    """Make the PKI (control plane), every node's kubeconfigs and, given the pod network,
    the control plane's static pod manifests (idempotent: an existing PKI is kept)."""
    from testbed.apiserver import pki

    cp = state["control_plane"]
    hosts = state["hosts"]
    nodes = [n for n, h in hosts.items() if h["kind"] == "node"]
    server = api_server_url(state)
    p = pki.write_pki(str(pki_dir(state)), cp, [hosts[cp]["address"]], ecdsa=True)
    ca_pem = Path(p.ca_crt).read_bytes()
    ca = pki.load_ca(p)
    admin = pki.kubeconfig(server, ca_pem, Path(p.admin_crt).read_bytes(), Path(p.admin_key).read_bytes())
    for user, cn, orgs, conf in (("system:kube-controller-manager", "system:kube-controller-manager", (),
                                  "controller-manager.conf"),
                                 ("system:kube-scheduler", "system:kube-scheduler", (), "scheduler.conf")):
        crt, key = pki.issue_client(p, cn, orgs, ecdsa=True, ca=ca)
        _write(etc_kubernetes(state, cp) / conf, _kubeconfig_text(pki.kubeconfig(server, ca_pem, crt, key,
                                                                                 user=user)))
    for node in nodes:
        etc = etc_kubernetes(state, node)
        _write(etc / "admin.conf", _kubeconfig_text(admin))
        crt, key = pki.issue_client(p, f"system:node:{node}", ("system:nodes",), ecdsa=True, ca=ca)
        _write(etc / "kubelet.conf", _kubeconfig_text(pki.kubeconfig(server, ca_pem, crt, key,
                                                                     user=f"system:node:{node}")))
        if node != cp:
            _write(etc / "pki" / "ca.crt", ca_pem, 0o644)
    if pod_cidr:
        write_static_pods(state, pod_cidr)
        data = labstate.state_dir(state["lab"]) / "nodes" / cp / "var-lib-etcd"  # the node's /var/lib/etcd
        data.mkdir(parents=True, exist_ok=True)
        data.chmod(0o700)  # as kubeadm makes it (etcd warns about a wider one)


#: what ``kubeadm join`` leaves in a worker's /etc/kubernetes (made by :func:`init` on the
#: control plane's machine; a lab over several machines sends each its nodes' files)
JOIN_FILES = ("admin.conf", "kubelet.conf", "pki/ca.crt")


def check_join(state: dict, files: dict) -> None:
    """Refuse a join bundle (``{node: {file: text}}``) that is not exactly :data:`JOIN_FILES`
    for nodes of this lab (part) other than the control plane (ValueError naming what)."""
    nodes = sorted(n for n, h in state["hosts"].items() if h["kind"] == "node" and n != state["control_plane"])
    if not isinstance(files, dict):
        raise ValueError("the join files must map each node to its files")
    for node, per in files.items():
        if node not in nodes:
            raise ValueError(f"join files for {node!r}, which is not a worker node here "
                             f"(nodes: {', '.join(nodes) or 'none'})")
        if not isinstance(per, dict) or sorted(per) != sorted(JOIN_FILES) or \
                not all(isinstance(v, str) and v for v in per.values()):
            raise ValueError(f"join files for {node!r}: need {', '.join(JOIN_FILES)} (non-empty text), "
                             f"got {', '.join(sorted(per)) if isinstance(per, dict) else type(per).__name__}")


def join(state: dict, files: dict[str, dict[str, str]]) -> list[str]:
    """Write what ``kubeadm join`` leaves in each node's /etc/kubernetes (``files``: node ->
    :data:`JOIN_FILES` name -> text, checked by :func:`check_join` first); the nodes written."""
    check_join(state, files)
    for node, per in files.items():
        etc = etc_kubernetes(state, node)
        for name in JOIN_FILES:
            _write(etc / name, per[name], 0o644 if name.endswith(".crt") else 0o600)
    return sorted(files)


# --------------------------------------------------------------------------- static pods

MANIFESTS = "manifests"  # /etc/kubernetes/manifests: the control-plane kubelet's --pod-manifest-path
ETCD_IMAGE = "registry.k8s.io/etcd:3.5.21-0"
SERVICE_CIDR = "10.96.0.0/12"
CLUSTER_DNS = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"


def _image(component: str) -> str:
    from testbed.k8s.version import KUBE_VERSION

    return f"registry.k8s.io/{component}:{KUBE_VERSION}"


def _static(name: str, image: str, command: list[str], volumes: list[tuple[str, str, str]]) -> dict:
    """A kubeadm-style static pod: hostNetwork, system-node-critical, hostPath volumes
    ``(name, path, type)`` mounted where they are on the node."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "kube-system",
                     "labels": {"component": name, "tier": "control-plane"}},
        "spec": {
            "hostNetwork": True, "priorityClassName": "system-node-critical", "priority": 2000001000,
            "dnsPolicy": "ClusterFirst", "restartPolicy": "Always",
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": name, "image": image, "imagePullPolicy": "IfNotPresent",
                            "command": command,
                            "volumeMounts": [{"name": v, "mountPath": p, **({"readOnly": True}
                                                                           if t != "DirectoryOrCreate" else {})}
                                             for v, p, t in volumes]}],
            "volumes": [{"name": v, "hostPath": {"path": p, "type": t}} for v, p, t in volumes],
        },
    }


def etcd_command(cp: str, ip: str, token: str, data_dir: str = "/var/lib/etcd") -> list[str]:
    """The control plane's etcd command line: one member named ``cp``, clients on ``ip`` and
    127.0.0.1 (also what bench/lab_up.py's floor starts)."""
    return [
        "etcd", f"--name={cp}", f"--data-dir={data_dir}",
        f"--listen-client-urls=http://{ip}:2379,http://127.0.0.1:2379",
        f"--advertise-client-urls=http://{ip}:2379",
        "--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
        f"--initial-cluster={cp}=http://127.0.0.1:2380", f"--initial-cluster-token={token}",
        # one member, so the election timeout only delays its first (and only) election: a
        # fresh member waits a random 1-2 timeouts less the ticks etcd advances (kubeadm keeps
        # etcd's 100/1000 ms; 50/500 gave 0.12-0.37 s to /health, 10/100 0.07-0.12 s, 8 runs each)
        "--heartbeat-interval=10", "--election-timeout=100", "--snapshot-count=10000",
        "--logger=zap", "--log-outputs=stderr", "--log-level=warn"]


def static_pods(state: dict, pod_cidr: str) -> dict[str, dict]:
    """The control plane's static pod manifests (file name -> pod), as kubeadm writes them
    to /etc/kubernetes/manifests, with the flags calicolab's components take."""
    lab = state["lab"]
    cp = state["control_plane"]
    ip = state["hosts"][cp]["address"]
    return {
        "etcd.yaml": _static("etcd", ETCD_IMAGE, etcd_command(cp, ip, lab),
                             [("etcd-data", "/var/lib/etcd", "DirectoryOrCreate")]),
        "kube-apiserver.yaml": _static("kube-apiserver", _image("kube-apiserver"), [
            "kube-apiserver", f"--advertise-address={ip}", "--bind-address=0.0.0.0", "--secure-port=6443",
            "--etcd-servers=http://127.0.0.1:2379", "--cert-dir=/etc/kubernetes/pki",
            "--client-ca-file=/etc/kubernetes/pki/ca.crt",
            "--tls-cert-file=/etc/kubernetes/pki/apiserver.crt",
            "--tls-private-key-file=/etc/kubernetes/pki/apiserver.key",
            "--kubelet-client-certificate=/etc/kubernetes/pki/apiserver-kubelet-client.crt",
            "--kubelet-client-key=/etc/kubernetes/pki/apiserver-kubelet-client.key",
            "--service-account-key-file=/etc/kubernetes/pki/sa.pub",
            "--service-account-signing-key-file=/etc/kubernetes/pki/sa.key",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}"],
            [("k8s-certs", "/etc/kubernetes/pki", "DirectoryOrCreate")]),
        "kube-controller-manager.yaml": _static("kube-controller-manager", _image("kube-controller-manager"), [
            "kube-controller-manager", "--kubeconfig=/etc/kubernetes/controller-manager.conf",
            "--allocate-node-cidrs=true", f"--cluster-cidr={pod_cidr}", "--node-cidr-mask-size=24",
            "--controllers=*,bootstrapsigner,tokencleaner", "--leader-elect=false",
            "--use-service-account-credentials=false"],
            [("kubeconfig", "/etc/kubernetes/controller-manager.conf", "FileOrCreate")]),
        "kube-scheduler.yaml": _static("kube-scheduler", _image("kube-scheduler"), [
            "kube-scheduler", "--kubeconfig=/etc/kubernetes/scheduler.conf", "--leader-elect=false"],
            [("kubeconfig", "/etc/kubernetes/scheduler.conf", "FileOrCreate")]),
    }


def write_static_pods(state: dict, pod_cidr: str) -> list[str]:
    """Write the control plane's static pod manifests; returns their paths."""
    import json

    d = etc_kubernetes(state, state["control_plane"]) / MANIFESTS
    out = []
    for name, pod in static_pods(state, pod_cidr).items():
        _write(d / name, json.dumps(pod, indent=2) + "\n", 0o600)
        out.append(str(d / name))
    return out


# --------------------------------------------------------------------------- add-ons


def kube_proxy_addon(state: dict, pod_cidr: str) -> list[dict]:
    """kubeadm's kube-proxy add-on: ServiceAccount, ConfigMap (config.conf, kubeconfig.conf)
    and the DaemonSet (hostNetwork, every node, ServiceAccount token credentials)."""
    import yaml

    labels = {"k8s-app": "kube-proxy"}
    config = {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
              "bindAddress": "0.0.0.0", "clusterCIDR": pod_cidr, "mode": "iptables",
              "clientConnection": {"kubeconfig": "/var/lib/kube-proxy/kubeconfig.conf"}}
    kubeconfig = {"apiVersion": "v1", "kind": "Config",
                  "clusters": [{"name": "default", "cluster": {
                      "certificate-authority": "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
                      "server": api_server_url(state)}}],
                  "contexts": [{"name": "default", "context": {"cluster": "default", "namespace": "default",
                                                               "user": "default"}}],
                  "current-context": "default",
                  "users": [{"name": "default", "user": {
                      "tokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token"}}]}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "kube-proxy", "namespace": "kube-system"}},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "kube-proxy", "namespace": "kube-system", "labels": {"app": "kube-proxy"}},
         "data": {"config.conf": yaml.safe_dump(config, sort_keys=True),
                  "kubeconfig.conf": yaml.safe_dump(kubeconfig, sort_keys=False)}},
        {"apiVersion": "apps/v1", "kind": "DaemonSet",
         "metadata": {"name": "kube-proxy", "namespace": "kube-system", "labels": labels},
         "spec": {"selector": {"matchLabels": labels},
                  "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "hostNetwork": True, "priorityClassName": "system-node-critical",
                      "serviceAccountName": "kube-proxy", "nodeSelector": {"kubernetes.io/os": "linux"},
                      "tolerations": [{"operator": "Exists"}],
                      "containers": [{
                          "name": "kube-proxy", "image": _image("kube-proxy"), "imagePullPolicy": "IfNotPresent",
                          "command": ["/usr/local/bin/kube-proxy", "--config=/var/lib/kube-proxy/config.conf",
                                      "--hostname-override=$(NODE_NAME)"],
                          "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1",
                                                                                   "fieldPath": "spec.nodeName"}}}],
                          "securityContext": {"privileged": True},
                          "volumeMounts": [{"name": "kube-proxy", "mountPath": "/var/lib/kube-proxy"},
                                           {"name": "xtables-lock", "mountPath": "/run/xtables.lock"},
                                           {"name": "lib-modules", "mountPath": "/lib/modules", "readOnly": True}]}],
                      "volumes": [{"name": "kube-proxy", "configMap": {"name": "kube-proxy"}},
                                  {"name": "xtables-lock", "hostPath": {"path": "/run/xtables.lock",
                                                                       "type": "FileOrCreate"}},
                                  {"name": "lib-modules", "hostPath": {"path": "/lib/modules"}}]}}}},
    ]


def kubeadm_config(pod_cidr: str) -> dict:
    """kube-system/kubeadm-config: the ClusterConfiguration kubeadm init stores."""
    import yaml

    from testbed.k8s.version import KUBE_VERSION

    cfg = {"apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "ClusterConfiguration",
           "kubernetesVersion": KUBE_VERSION, "clusterName": "kubernetes", "encryptionAlgorithm": "ECDSA-P256",
           "networking": {"dnsDomain": CLUSTER_DOMAIN, "podSubnet": pod_cidr, "serviceSubnet": SERVICE_CIDR}}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
            "data": {"ClusterConfiguration": yaml.safe_dump(cfg, sort_keys=True)}}


def apply_addons(client: object, objs: list[dict]) -> list[str]:
    """Create the add-on objects that do not exist yet (kubeadm init's "addon" phase);
    returns ``kind/name`` of those made."""
    from kubeclient import AlreadyExists

    made = []
    for obj in objs:
        try:
            client.create(obj)  # type: ignore[attr-defined]
            made.append(f"{obj['kind'].lower()}/{obj['metadata']['name']}")
        except AlreadyExists:
            pass
    return made


COREFILE = """.:53 {
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
"""


def coredns_addon() -> list[dict]:
    """kubeadm's CoreDNS add-on: ServiceAccount ``coredns``, ConfigMap ``coredns`` (the
    Corefile), Deployment ``coredns`` (2 replicas, ``k8s-app: kube-dns``) and the Service
    ``kube-dns`` on 10.96.0.10 (53/UDP, 53/TCP, 9153/TCP). The pods run calicolab's DNS
    server (testbed.k8s.dns)."""
    labels = {"k8s-app": "kube-dns"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "coredns", "namespace": "kube-system"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coredns", "namespace": "kube-system"},
         "data": {"Corefile": COREFILE}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "coredns", "namespace": "kube-system", "labels": labels},
         "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                  "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": "25%"}},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "priorityClassName": "system-cluster-critical", "serviceAccountName": "coredns",
                      "dnsPolicy": "Default", "nodeSelector": {"kubernetes.io/os": "linux"},
                      "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"},
                                      {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}],
                      "containers": [{
                          "name": "coredns", "image": "registry.k8s.io/coredns/coredns:v1.12.1",
                          "imagePullPolicy": "IfNotPresent", "args": ["-conf", "/etc/coredns/Corefile"],
                          "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                    {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                                    {"name": "metrics", "containerPort": 9153, "protocol": "TCP"},
                                    {"name": "liveness-probe", "containerPort": 8080, "protocol": "TCP"},
                                    {"name": "readiness-probe", "containerPort": 8181, "protocol": "TCP"}],
                          "volumeMounts": [{"name": "config-volume", "mountPath": "/etc/coredns", "readOnly": True}]}],
                      "volumes": [{"name": "config-volume", "configMap": {
                          "name": "coredns", "items": [{"key": "Corefile", "path": "Corefile"}]}}]}}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "kube-dns", "namespace": "kube-system",
                      "labels": {**labels, "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS"},
                      "annotations": {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"}},
         "spec": {"clusterIP": CLUSTER_DNS, "selector": labels,
                  "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                            {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}]}},
    ]
