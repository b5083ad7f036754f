"""The install-cni step: Calico's conflist into /etc/cni/net.d and the plugins into /opt/cni/bin.

As Calico v3.28.1's install-cni (``cni-plugin/pkg/install``): the network config is the
template in ``CNI_NETWORK_CONFIG`` (calico.yaml's ``cni_network_config`` ConfigMap key;
without it :data:`KDD_NETWORK_CONFIG` with ``DATASTORE_TYPE=kubernetes``, calico.yaml's
document, else :data:`DEFAULT_NETWORK_CONFIG`, its etcd form), with install-cni's
placeholders filled (:func:`fill`), written as ``10-calico.conflist``: calico + portmap +
bandwidth, cniVersion 0.3.1. When the plugin needs the Kubernetes API
(``__KUBECONFIG_FILEPATH__`` in the template, or the Kubernetes datastore) the kubeconfig
``<CNI_NET_DIR>/calico-kubeconfig`` is written: in a pod, with a token of the
``calico-cni-plugin`` ServiceAccount (``CALICO_CNI_SERVICE_ACCOUNT``) obtained by
TokenRequest, the API server at KUBERNETES_SERVICE_HOST:PORT and the ServiceAccount's CA, as
Calico writes it; outside a pod (calicolab runs calico-node as a plain process too) a copy
of the ``KUBECONFIG`` calico-node itself uses. ``calico``, ``calico-ipam`` (our entry
points) and the reference plugins (/usr/lib/cni/*) are linked into the CNI bin dir.
Directories come from ``CNI_NET_DIR`` / ``CNI_BIN_DIR`` (defaults /etc/cni/net.d, /opt/cni/bin).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Mapping, Sequence

log = logging.getLogger(__name__)

CONFLIST_NAME = "10-calico.conflist"
#: the thin ``calico`` and ``calico-ipam`` executables linked into the CNI bin dir (cni/bin)
CNI_LAUNCHERS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cni", "bin")
REFERENCE_PLUGINS = "/usr/lib/cni"


#: calico-etcd.yaml's cni_network_config: the etcd datastore, the Kubernetes API (pods,
#: namespaces) through install-cni's calico-kubeconfig (docs/cni.md)
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
      },
      "kubernetes": {
          "kubeconfig": "__KUBECONFIG_FILEPATH__"
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
#: calico.yaml's cni_network_config (the Kubernetes datastore)
KDD_NETWORK_CONFIG = """{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "calico",
      "log_level": "info",
      "log_file_path": "/var/log/calico/cni/cni.log",
      "datastore_type": "kubernetes",
      "nodename": "__KUBERNETES_NODE_NAME__",
      "mtu": __CNI_MTU__,
      "ipam": {
          "type": "calico-ipam"
      },
      "policy": {
          "type": "k8s"
      },
      "kubernetes": {
          "kubeconfig": "__KUBECONFIG_FILEPATH__"
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
KUBECONFIG_NAME = "calico-kubeconfig"
#: seconds install-cni waits for the API server to answer its TokenRequest
TOKEN_WAIT = 30.0
#: where install-cni writes it by default (CNI_NET_DIR /etc/cni/net.d)
DEFAULT_KUBECONFIG_PATH = "/etc/cni/net.d/" + KUBECONFIG_NAME
#: install.go's defaults for the log placeholders (calicolab does not read LOG_* variables)
_LOG_DEFAULTS = {"__LOG_LEVEL__": "info", "__LOG_FILE_PATH__": "/var/log/calico/cni/cni.log",
                 "__LOG_FILE_MAX_SIZE__": "100", "__LOG_FILE_MAX_AGE__": "30", "__LOG_FILE_MAX_COUNT__": "10"}
_PLACEHOLDER = re.compile(r"__[A-Z][A-Z0-9_]*__")


def fill(template: str, values: Mapping[str, str]) -> str:
    """``template`` with install-cni's placeholders replaced (``values`` plus the log defaults)."""
    text = template
    for key, value in {**_LOG_DEFAULTS, **values}.items():
        text = text.replace(key, value)
    return text


def conflist(nodename: str, etcd_endpoints: Sequence[str], mtu: int = 0, template: str | None = None,
             values: Mapping[str, str] | None = None) -> dict:
    """The conflist document: ``template`` (default :data:`DEFAULT_NETWORK_CONFIG`) with
    install-cni's placeholders filled (``values`` adds e.g. ``__KUBECONFIG_FILEPATH__``,
    ``__DATASTORE_TYPE__``). A placeholder left over or a result that is not a JSON object
    is a ValueError naming it."""
    if not nodename:
        raise ValueError("conflist needs a node name")
    text = DEFAULT_NETWORK_CONFIG if template is None else template
    if "__ETCD_ENDPOINTS__" in text and not etcd_endpoints:
        raise ValueError("conflist needs at least one etcd endpoint")
    text = fill(text, {"__KUBERNETES_NODE_NAME__": nodename, "__CNI_MTU__": str(int(mtu)),
                       "__KUBECONFIG_FILEPATH__": DEFAULT_KUBECONFIG_PATH,
                       "__ETCD_ENDPOINTS__": ",".join(etcd_endpoints), "__ETCD_DISCOVERY_SRV__": "",
                       "__ETCD_CERT_FILE__": "", "__ETCD_CA_CERT_FILE__": "", "__ETCD_KEY_FILE__": "",
                       **(values or {})})
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


def cni_kubeconfig(env: Mapping[str, str], sa_dir: str = "/var/run/secrets/kubernetes.io/serviceaccount") -> str:
    """The kubeconfig the CNI plugin uses (``calico-kubeconfig``): in a pod, a token of the
    ``CALICO_CNI_SERVICE_ACCOUNT`` (calico-cni-plugin) ServiceAccount of the pod's namespace,
    requested by TokenRequest (24 h), with the in-cluster API address and CA; outside a pod
    the content of ``KUBECONFIG``. ValueError when there is neither.

    Written as JSON (a kubeconfig kubectl and client-go read too; Calico writes the same
    document as YAML): the CNI executables run on the standard library alone, without PyYAML."""
    import base64

    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    token_file = os.path.join(sa_dir, "token")
    if host and port and os.path.exists(token_file) and not env.get("KUBECONFIG"):
        import kubeclient
        from kubeclient.config import Config

        with open(os.path.join(sa_dir, "namespace")) as f:
            namespace = f.read().strip() or "kube-system"
        sa = env.get("CALICO_CNI_SERVICE_ACCOUNT") or "calico-cni-plugin"
        server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        kube = kubeclient.Client(Config(server=server, ca_file=os.path.join(sa_dir, "ca.crt"), token_file=token_file))
        deadline = time.monotonic() + TOKEN_WAIT
        while True:  # the kubernetes Service may not be programmed yet (kube-proxy starting too)
            try:
                tr = kube.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{sa}/token",
                                  {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                   "spec": {"expirationSeconds": 24 * 3600}})
                break
            except kubeclient.ConnectionFailed as exc:
                if time.monotonic() > deadline:
                    raise ValueError(f"Unable to create token for CNI kubeconfig (ServiceAccount {namespace}/{sa}): "
                                     f"{exc}") from None
                time.sleep(0.5)
            except kubeclient.KubeError as exc:
                raise ValueError(f"Unable to create token for CNI kubeconfig (ServiceAccount {namespace}/{sa}): "
                                 f"{exc}") from None
        with open(os.path.join(sa_dir, "ca.crt"), "rb") as f:
            ca = base64.b64encode(f.read()).decode()
        return json.dumps({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": f"https://[{host}]:{port}",
                                                       "certificate-authority-data": ca}}],
            "users": [{"name": "calico", "user": {"token": tr["status"]["token"]}}],
            "contexts": [{"name": "calico-context", "context": {"cluster": "local", "user": "calico"}}],
            "current-context": "calico-context"}, indent=2) + "\n"
    path = env.get("KUBECONFIG")
    if path:
        with open(path.split(os.pathsep)[0]) as f:
            text = f.read()
        try:
            json.loads(text)
            return text
        except ValueError:
            import yaml

            try:
                return json.dumps(yaml.safe_load(text), indent=2) + "\n"
            except yaml.YAMLError as exc:
                raise ValueError(f"KUBECONFIG {path}: not a kubeconfig (neither JSON nor YAML): {exc}") from None
    raise ValueError("the CNI plugin needs the Kubernetes API but calico-node has neither a ServiceAccount "
                     "token (in a pod) nor KUBECONFIG")


def install_cni(nodename: str, etcd_endpoints: Sequence[str], env: Mapping[str, str] | None = None,
                bin_source: str | None = None, host_root: str = "", conf_name: str = CONFLIST_NAME) -> list[str]:
    """Write the conflist ``conf_name`` (and the CNI kubeconfig when the plugin needs one) and
    link the binaries; returns the paths written. Idempotent. ``host_root`` (``/host`` in
    Calico's install-cni container) prefixes the paths written, not the paths the conflist names."""
    from datastore.client import datastore_type

    env = os.environ if env is None else env
    net_dir = env.get("CNI_NET_DIR", "/etc/cni/net.d")
    bin_dir = host_root + env.get("CNI_BIN_DIR", "/opt/cni/bin")
    bin_source = bin_source or os.path.dirname(os.path.abspath(sys.executable))
    try:
        mtu = int(env.get("CNI_MTU", "0") or 0)
    except ValueError:
        raise ValueError(f"CNI_MTU={env.get('CNI_MTU')!r} is not an MTU (0 = auto)") from None
    dtype = datastore_type(env)
    template = env.get("CNI_NETWORK_CONFIG") or (KDD_NETWORK_CONFIG if dtype == "kubernetes"
                                                 else DEFAULT_NETWORK_CONFIG)
    kubeconfig_path = os.path.join(net_dir, KUBECONFIG_NAME)
    doc = conflist(nodename, list(etcd_endpoints), mtu=mtu, template=template, values={
        "__KUBECONFIG_FILEPATH__": kubeconfig_path, "__DATASTORE_TYPE__": dtype,
        "__KUBERNETES_SERVICE_HOST__": env.get("KUBERNETES_SERVICE_HOST", ""),
        "__KUBERNETES_SERVICE_PORT__": env.get("KUBERNETES_SERVICE_PORT", "")})
    written = []
    kubeconfig_path = host_root + kubeconfig_path
    net_dir = host_root + net_dir
    os.makedirs(net_dir, exist_ok=True)
    os.makedirs(bin_dir, exist_ok=True)
    if "__KUBECONFIG_FILEPATH__" in template or dtype == "kubernetes":
        try:
            data = cni_kubeconfig(env)
        except ValueError as exc:
            if env.get("CNI_NETWORK_CONFIG") or dtype == "kubernetes":
                raise
            # calico-node run as a plain process without Kubernetes credentials (no pod, no
            # KUBECONFIG): the built-in etcd conflist without its "kubernetes" section, said so
            log.warning("install-cni: %s: the conflist gets no kubernetes.kubeconfig, so the CNI plugin "
                        "will not read pods' labels, ports or annotations", exc)
            doc["plugins"][0].pop("kubernetes", None)
            data = None
    else:
        data = None
    if data is not None:
        tmp = kubeconfig_path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.replace(tmp, kubeconfig_path)
        written.append(kubeconfig_path)
    path = os.path.join(net_dir, conf_name)
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


#: where Calico's install-cni container finds the node's CNI directories (hostPath volumes)
HOST_ROOT = "/host"


def main(argv: list[str] | None = None) -> int:
    """``/opt/cni/bin/install`` of the calico/cni image (calico.yaml's ``install-cni`` init
    container), as Calico's: the node's directories are mounted at ``/host/etc/cni/net.d`` and
    ``/host/opt/cni/bin``; ``KUBERNETES_NODE_NAME``, ``CNI_NETWORK_CONFIG`` (or
    ``CNI_NETWORK_CONFIG_FILE``), ``CNI_CONF_NAME`` (10-calico.conflist), ``CNI_MTU``,
    ``CNI_NET_DIR`` (the node's path the conflist names, /etc/cni/net.d), ``ETCD_ENDPOINTS``
    (the etcd manifest), ``SLEEP`` (true: stay running after the install, as Calico's; the
    manifests set false). ``SKIP_CNI_BINARIES``/``UPDATE_CNI_BINARIES`` set to other than their
    defaults and ``CNI_OLD_CONF_NAME`` are refused by name (not implemented). Exit 1 with the
    reason on failure (the pod shows Init:Error, the log says why)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s [%(levelname)s] cni-installer: %(message)s")
    env = dict(os.environ)
    if argv:
        print(f"install: unexpected arguments {' '.join(argv)} (Calico's install takes none)", file=sys.stderr)
        return 2
    try:
        for name, value, default in (("SKIP_CNI_BINARIES", env.get("SKIP_CNI_BINARIES", ""), ""),
                                     ("UPDATE_CNI_BINARIES", env.get("UPDATE_CNI_BINARIES", ""), "true"),
                                     ("CNI_OLD_CONF_NAME", env.get("CNI_OLD_CONF_NAME", ""), "")):
            if value and value.strip().lower() != default:
                raise ValueError(f"{name}={value!r} is not implemented by calicolab's install-cni "
                                 f"(only its default {default or '(unset)'})")
        nodename = env.get("KUBERNETES_NODE_NAME") or env.get("NODENAME") or ""
        if not nodename:
            raise ValueError("KUBERNETES_NODE_NAME is not set (the manifest sets it from spec.nodeName)")
        if not env.get("CNI_NETWORK_CONFIG") and env.get("CNI_NETWORK_CONFIG_FILE"):
            with open(env["CNI_NETWORK_CONFIG_FILE"]) as f:
                env["CNI_NETWORK_CONFIG"] = f.read()
        host_net = HOST_ROOT + "/etc/cni/net.d"
        if not _mounted(host_net):
            raise ValueError(f"{host_net} is not mounted: the install-cni container mounts the node's CNI "
                             "config directory there (volume cni-net-dir)")
        endpoints = [e.strip() for e in env.get("ETCD_ENDPOINTS", "").split(",") if e.strip()]
        written = install_cni(nodename, endpoints, env, bin_source=CNI_LAUNCHERS, host_root=HOST_ROOT,
                              conf_name=env.get("CNI_CONF_NAME") or CONFLIST_NAME)
    except (ValueError, OSError) as exc:
        log.error("install-cni failed: %s", exc)
        return 1
    for path in written:
        log.info("Installed %s", path)
    log.info("Done configuring CNI.  Sleep= %s", _truthy(env.get("SLEEP"), True))
    while _truthy(env.get("SLEEP"), True):  # until SIGTERM ends the process
        time.sleep(3600)
    return 0


def _mounted(path: str, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """True when ``path`` is a mount point (a bind mount on the same filesystem too, which
    os.path.ismount does not see)."""
    try:
        with open(mountinfo) as f:
            return any(len(line.split()) > 4 and line.split()[4] == path for line in f)
    except OSError:
        return False


def _truthy(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
