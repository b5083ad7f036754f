"""What ``kubeadm init`` / ``kubeadm join`` leave on a lab's nodes: the cluster PKI and the
kubeconfigs, each in the node's own ``/etc/kubernetes``.

Every node has a private ``/etc/kubernetes`` (a bind mount of
``/run/calicolab/<lab>/nodes/<node>/etc-kubernetes``, see the supervisor's node dirs):

* the control-plane node: ``pki/`` (kubeadm's file names, made by
  :func:`testbed.apiserver.pki.write_pki`: CA, API server serving cert with the
  ``kubernetes.default.svc`` names, ServiceAccount key pair, ...),
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


def init(state: dict) -> None:
    """Make the PKI (control plane) and every node's kubeconfigs (idempotent: an existing
    PKI is kept)."""
    from testbed.apiserver import pki

    cp = state["control_plane"]
    hosts = state["hosts"]
    nodes = [n for n, h in hosts.items() if h["kind"] == "node"]
    server = api_server_url(state)
    p = pki.write_pki(str(pki_dir(state)), cp, [hosts[cp]["address"]])
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
