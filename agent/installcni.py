"""The install-cni step: Calico's conflist into /etc/cni/net.d and the plugins into /opt/cni/bin.

As Calico v3.28.1's install-cni: the network config is the template in
``CNI_NETWORK_CONFIG`` (calico.yaml's ``cni_network_config`` ConfigMap key; without it
:data:`DEFAULT_NETWORK_CONFIG`, the same document), with ``__KUBERNETES_NODE_NAME__``,
``__CNI_MTU__`` (``CNI_MTU``, from ``veth_mtu``: 0 = auto) and ``__ETCD_ENDPOINTS__``
filled in, written as ``10-calico.conflist``: calico + portmap + bandwidth, cniVersion
0.3.1. ``calico``, ``calico-ipam`` (our entry points) and the reference plugins
(/usr/lib/cni/*) are linked into the CNI bin dir. Directories come from ``CNI_NET_DIR`` /
``CNI_BIN_DIR`` (defaults /etc/cni/net.d, /opt/cni/bin).

One deliberate difference: ``datastore_type`` is ``etcdv3`` (with ``etcd_endpoints``), not
calico.yaml's ``kubernetes``, because the lab's Calico datastore is etcd (docs/cni.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence

CONFLIST_NAME = "10-calico.conflist"
REFERENCE_PLUGINS = "/usr/lib/cni"


#: calico.yaml's cni_network_config, for the etcd datastore (docs/cni.md)
DEFAULT_NETWORK_CONFIG = """{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "calico",
      "log_level": "info",
      "log_file_path": "/var/log/calico/cni/cni.log",
      "datastore_type": "etcdv3",
      "etcd_endpoints": "__ETCD_ENDPOINTS__",
      "nodename": "__KUBERNETES_NODE_NAME__",
      "mtu": __CNI_MTU__,
      "ipam": {
          "type": "calico-ipam"
      },
      "policy": {
          "type": "k8s"
      }
    },
    {
      "type": "portmap",
      "snat": true,
      "capabilities": {"portMappings": true}
    },
    {
      "type": "bandwidth",
      "capabilities": {"bandwidth": true}
    }
  ]
}"""
_PLACEHOLDER = re.compile(r"__[A-Z][A-Z0-9_]*__")


def conflist(nodename: str, etcd_endpoints: Sequence[str], mtu: int = 0, template: str | None = None) -> dict:
    """The conflist document: ``template`` (default :data:`DEFAULT_NETWORK_CONFIG`) with
    install-cni's placeholders filled. A placeholder left over or a result that is not a
    JSON object is a ValueError naming it."""
    if not nodename:
        raise ValueError("conflist needs a node name")
    if not etcd_endpoints:
        raise ValueError("conflist needs at least one etcd endpoint")
    text = DEFAULT_NETWORK_CONFIG if template is None else template
    text = (text.replace("__KUBERNETES_NODE_NAME__", nodename).replace("__CNI_MTU__", str(int(mtu)))
            .replace("__ETCD_ENDPOINTS__", ",".join(etcd_endpoints)))
    left = sorted(set(_PLACEHOLDER.findall(text)))
    if left:
        raise ValueError(f"CNI_NETWORK_CONFIG has placeholders install-cni does not fill: {', '.join(left)}")
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"CNI_NETWORK_CONFIG is not valid JSON once filled in: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("CNI_NETWORK_CONFIG must be a JSON object")
    return doc


def _link(src: str, dst: str) -> None:
    if os.path.islink(dst) or os.path.exists(dst):
        if os.path.islink(dst) and os.readlink(dst) == src:
            return
        os.unlink(dst)
    os.symlink(src, dst)


def install_cni(nodename: str, etcd_endpoints: Sequence[str], env: Mapping[str, str] | None = None,
                bin_source: str | None = None) -> list[str]:
    """Write the conflist and link the binaries; returns the paths written. Idempotent."""
    env = os.environ if env is None else env
    net_dir = env.get("CNI_NET_DIR", "/etc/cni/net.d")
    bin_dir = env.get("CNI_BIN_DIR", "/opt/cni/bin")
    bin_source = bin_source or os.path.dirname(os.path.abspath(sys.executable))
    try:
        mtu = int(env.get("CNI_MTU", "0") or 0)
    except ValueError:
        raise ValueError(f"CNI_MTU={env.get('CNI_MTU')!r} is not an MTU (0 = auto)") from None
    doc = conflist(nodename, list(etcd_endpoints), mtu=mtu, template=env.get("CNI_NETWORK_CONFIG") or None)
    written = []
    os.makedirs(net_dir, exist_ok=True)
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(net_dir, CONFLIST_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    written.append(path)
    for name in ("calico", "calico-ipam"):
        src = os.path.join(bin_source, name)
        if not os.path.exists(src):
            found = shutil.which(name)
            if not found:
                raise FileNotFoundError(f"CNI plugin executable {name!r} not found in {bin_source} or PATH")
            src = found
        _link(src, os.path.join(bin_dir, name))
        written.append(os.path.join(bin_dir, name))
    if os.path.isdir(REFERENCE_PLUGINS):
        for name in sorted(os.listdir(REFERENCE_PLUGINS)):
            if name in ("calico", "calico-ipam"):
                continue
            _link(os.path.join(REFERENCE_PLUGINS, name), os.path.join(bin_dir, name))
            written.append(os.path.join(bin_dir, name))
    return written
