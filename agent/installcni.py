"""The install-cni step: Calico's conflist into /etc/cni/net.d and the plugins into /opt/cni/bin.

Writes ``10-calico.conflist`` (calico with etcdv3 + calico-ipam, chained
portmap) and links ``calico``, ``calico-ipam`` (our entry points) and the
reference plugins (/usr/lib/cni/*) into the CNI bin dir. Directories come
from ``CNI_NET_DIR`` / ``CNI_BIN_DIR`` (defaults /etc/cni/net.d, /opt/cni/bin).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence

CONFLIST_NAME = "10-calico.conflist"
REFERENCE_PLUGINS = "/usr/lib/cni"


def conflist(nodename: str, etcd_endpoints: Sequence[str], mtu: int = 0, cni_version: str = "0.3.1",
             log_level: str = "info") -> dict:
    """The conflist document (pure)."""
    if not nodename:
        raise ValueError("conflist needs a node name")
    if not etcd_endpoints:
        raise ValueError("conflist needs at least one etcd endpoint")
    return {
        "name": "k8s-pod-network",
        "cniVersion": cni_version,
        "plugins": [
            {
                "type": "calico",
                "log_level": log_level,
                "log_file_path": "/var/log/calico/cni/cni.log",
                "datastore_type": "etcdv3",
                "etcd_endpoints": ",".join(etcd_endpoints),
                "nodename": nodename,
                "mtu": mtu,
                "ipam": {"type": "calico-ipam"},
                "policy": {"type": "k8s"},
            },
            {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}},
        ],
    }


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
    mtu = int(env.get("CNI_MTU", "0") or 0)
    written = []
    os.makedirs(net_dir, exist_ok=True)
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(net_dir, CONFLIST_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(conflist(nodename, list(etcd_endpoints), mtu=mtu), f, indent=2)
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
