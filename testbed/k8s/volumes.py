"""A pod's volumes and DNS configuration, as the kubelet prepares them.

Each volume a container mounts is made under the pod's directory
(``<root-dir>/pods/<uid>/volumes/<name>``) and bind-mounted at its ``mountPath`` in the
container's own mount namespace (:func:`testbed.k8s.runtime.process_argv`):

* ``projected`` (the ``kube-api-access-*`` volume the API server adds to every pod):
  ``serviceAccountToken`` (a TokenRequest bound to the pod), ``configMap`` items
  (``kube-root-ca.crt`` -> ``ca.crt``), ``downwardAPI`` items (``namespace``), ``secret``;
* ``configMap``, ``secret`` (keys as files, ``items`` honoured), ``downwardAPI``, ``emptyDir``;
* ``hostPath``: the node's path itself (a no-op when it is the mount path: a pod shares
  its node's filesystem);
* ``csi`` (inline ephemeral): the target the CSI driver published the volume at before the
  pod started (:mod:`testbed.k8s.csivolumes`).

Any other volume type is refused by name (the container does not start:
``CreateContainerConfigError``). Pods share their node's filesystem, so a mount point that
does not exist there is created (an empty directory or file) before the bind mount.

:func:`resolv_conf` is the pod's ``/etc/resolv.conf`` from ``dnsPolicy`` and ``dnsConfig``
(cluster DNS: ``nameserver <cluster-dns>``, ``search <ns>.svc.<domain> svc.<domain> <domain>``,
``options ndots:5``).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
#: the symlink to the current data directory of a configMap/secret/projected volume
DATA_LINK = "..data"
SUPPORTED = ("projected", "configMap", "secret", "downwardAPI", "emptyDir", "hostPath", "csi")


class VolumeError(Exception):
    """A volume cannot be made (unknown type, missing ConfigMap/Secret, token refused)."""


def _write_files(d: str, files: dict[str, bytes], mode: int | None = None) -> None:
    """Write ``files`` into the volume directory ``d`` atomically, as the kubelet's
    AtomicWriter does: the data goes to a new hidden ``..<time>.<n>`` directory, the
    ``..data`` symlink is swapped to it in one rename, and each top-level name is a symlink
    through ``..data``. ``d`` itself is never replaced: a running container's bind mount of it
    keeps seeing the current files (removing and recreating ``d`` left it an empty, deleted
    directory)."""
    os.makedirs(d, exist_ok=True)
    data_dir = tempfile.mkdtemp(prefix=time.strftime("..%Y_%m_%d_%H_%M_%S."), dir=d)
    os.chmod(data_dir, 0o755)
    for rel, data in files.items():
        path = os.path.join(data_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode if mode is not None else 0o644)
    link = os.path.join(d, DATA_LINK)
    tmp_link = os.path.join(d, DATA_LINK + "_tmp")
    if os.path.lexists(tmp_link):
        os.unlink(tmp_link)
    os.symlink(os.path.basename(data_dir), tmp_link)
    os.replace(tmp_link, link)
    top = {rel.split("/", 1)[0] for rel in files}
    for name in top:
        user = os.path.join(d, name)
        target = os.path.join(DATA_LINK, name)
        if os.path.islink(user) and os.readlink(user) == target:
            continue
        if os.path.lexists(user):
            if os.path.isdir(user) and not os.path.islink(user):
                shutil.rmtree(user)
            else:
                os.unlink(user)
        os.symlink(target, user)
    for name in os.listdir(d):  # names the new data no longer has, and older data directories
        full = os.path.join(d, name)
        if name.startswith(".."):
            if name not in (DATA_LINK, os.path.basename(data_dir)) and os.path.isdir(full) \
                    and not os.path.islink(full):
                shutil.rmtree(full, ignore_errors=True)
        elif name not in top and os.path.islink(full) and os.readlink(full).startswith(DATA_LINK + "/"):
            os.unlink(full)


def _keys(data: dict[str, bytes], items: list[dict] | None, what: str, optional: bool) -> dict[str, bytes]:
    if not items:
        return dict(data)
    out = {}
    for it in items:
        key = it.get("key", "")
        if key not in data:
            if optional:
                continue
            raise VolumeError(f'{what}: key "{key}" does not exist')
        out[it.get("path") or key] = data[key]
    return out


def field_value(pod: dict, path: str, node: str = "", host_ip: str = "") -> str | None:
    """A downward API ``fieldPath`` of ``pod`` (None if unsupported)."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    simple = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
              "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName") or node,
              "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
              "status.hostIP": host_ip or (pod.get("status") or {}).get("hostIP"),
              "status.podIP": (pod.get("status") or {}).get("podIP")}
    if path in simple:
        return simple[path] or ""
    for prefix, src in (("metadata.labels", meta.get("labels")), ("metadata.annotations", meta.get("annotations"))):
        if path == prefix:
            return "\n".join(f'{k}="{v}"' for k, v in sorted((src or {}).items()))
        if path.startswith(prefix + "['") and path.endswith("']"):
            return (src or {}).get(path[len(prefix) + 2:-2], "")
    return None


class VolumeMaker:
    """Makes a pod's volumes. ``get(kind, name, namespace)`` reads a ConfigMap/Secret (None if
    missing); ``token(namespace, sa, audiences, seconds, pod)`` returns a ServiceAccount token;
    ``csi(pod, volume)`` the path a CSI volume was published at (VolumeError if it was not)."""

    def __init__(self, get: Callable[[str, str, str], dict | None],
                 token: Callable[[str, str, list[str], int, dict], str], node: str = "", host_ip: str = "",
                 csi: Callable[[dict, dict], str] | None = None):
        self.get, self.token, self.node, self.host_ip = get, token, node, host_ip
        self.csi = csi

    def _configmap(self, ns: str, name: str, optional: bool) -> dict[str, bytes]:
        cm = self.get("ConfigMap", name, ns)
        if cm is None:
            if optional:
                return {}
            raise VolumeError(f'configmap "{name}" not found')
        data = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
        return data

    def _secret(self, ns: str, name: str, optional: bool) -> dict[str, bytes]:
        sec = self.get("Secret", name, ns)
        if sec is None:
            if optional:
                return {}
            raise VolumeError(f'secret "{name}" not found')
        data = {k: base64.b64decode(v) for k, v in (sec.get("data") or {}).items()}
        data.update({k: v.encode() for k, v in (sec.get("stringData") or {}).items()})
        return data

    def _downward(self, pod: dict, items: list[dict]) -> dict[str, bytes]:
        out = {}
        for it in items or []:
            ref = it.get("fieldRef") or {}
            if not ref:
                raise VolumeError(f"downwardAPI item {it.get('path')}: only fieldRef is supported")
            value = field_value(pod, ref.get("fieldPath", ""), self.node, self.host_ip)
            if value is None:
                raise VolumeError(f"downwardAPI: unsupported fieldPath {ref.get('fieldPath')!r}")
            out[it["path"]] = value.encode()
        return out

    def make(self, pod: dict, vol: dict, where: str) -> str:
        """Materialize ``vol`` under ``where`` (``<pod dir>/volumes/<name>``); returns the path
        to bind-mount (the node path for a hostPath)."""
        ns = pod["metadata"]["namespace"]
        name = vol.get("name", "")
        if "hostPath" in vol:
            path = (vol["hostPath"] or {}).get("path", "")
            typ = (vol["hostPath"] or {}).get("type", "")
            if typ in ("DirectoryOrCreate",) and not os.path.exists(path):
                os.makedirs(path, exist_ok=True)
            elif typ in ("FileOrCreate",) and not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, "a").close()
            elif typ in ("Directory", "File", "Socket", "CharDevice", "BlockDevice") and not os.path.exists(path):
                raise VolumeError(f'hostPath type check failed: {path} is not a {typ}')
            return path
        if "emptyDir" in vol:
            os.makedirs(where, exist_ok=True)
            return where
        if "csi" in vol and self.csi is not None:
            return self.csi(pod, vol)
        files: dict[str, bytes]
        mode = None
        if "configMap" in vol:
            src = vol["configMap"] or {}
            files = _keys(self._configmap(ns, src.get("name", ""), bool(src.get("optional"))), src.get("items"),
                          f'configmap "{src.get("name")}"', bool(src.get("optional")))
        elif "secret" in vol:
            src = vol["secret"] or {}
            files = _keys(self._secret(ns, src.get("secretName", ""), bool(src.get("optional"))), src.get("items"),
                          f'secret "{src.get("secretName")}"', bool(src.get("optional")))
            mode = 0o644 if src.get("defaultMode") is None else int(src["defaultMode"])
        elif "downwardAPI" in vol:
            files = self._downward(pod, (vol["downwardAPI"] or {}).get("items") or [])
        elif "projected" in vol:
            files = {}
            for source in (vol["projected"] or {}).get("sources") or []:
                if "serviceAccountToken" in source:
                    t = source["serviceAccountToken"] or {}
                    sa = pod["spec"].get("serviceAccountName") or "default"
                    audiences = [t["audience"]] if t.get("audience") else []
                    tok = self.token(ns, sa, audiences, int(t.get("expirationSeconds") or 3607), pod)
                    files[t.get("path") or "token"] = tok.encode()
                elif "configMap" in source:
                    src = source["configMap"] or {}
                    files.update(_keys(self._configmap(ns, src.get("name", ""), bool(src.get("optional"))),
                                       src.get("items"), f'configmap "{src.get("name")}"',
                                       bool(src.get("optional"))))
                elif "secret" in source:
                    src = source["secret"] or {}
                    files.update(_keys(self._secret(ns, src.get("name", ""), bool(src.get("optional"))),
                                       src.get("items"), f'secret "{src.get("name")}"', bool(src.get("optional"))))
                elif "downwardAPI" in source:
                    files.update(self._downward(pod, (source["downwardAPI"] or {}).get("items") or []))
                else:
                    raise VolumeError(f"volume {name}: projected source {sorted(source)} is not supported")
        else:
            kinds = sorted(k for k in vol if k != "name")
            raise VolumeError(f"volume {name!r}: type {', '.join(kinds) or '(none)'} is not supported by "
                              f"calicolab's kubelet (supported: {', '.join(SUPPORTED)})")
        _write_files(where, files, mode)
        return where

    def mounts(self, pod: dict, container: dict, pod_dir: str) -> list[tuple[str, str]]:
        """``(source, mountPath)`` of every volumeMount of ``container`` (volumes made once per pod)."""
        vols = {v.get("name"): v for v in pod["spec"].get("volumes") or []}
        out = []
        made: dict[str, str] = {}
        for vm in container.get("volumeMounts") or []:
            vname = vm.get("name")
            vol = vols.get(vname)
            if vol is None:
                raise VolumeError(f'volumeMount "{vname}": no volume of that name in the pod')
            if vname not in made:
                made[vname] = self.make(pod, vol, os.path.join(pod_dir, "volumes", vname))
            src = made[vname]
            if vm.get("subPath"):
                src = os.path.join(src, vm["subPath"])
            mp = vm.get("mountPath", "")
            if not mp.startswith("/"):
                raise VolumeError(f"volumeMount {vname}: mountPath {mp!r} is not absolute")
            if os.path.realpath(src) == os.path.realpath(mp):
                continue  # a hostPath mounted where it is: the pod shares the node's filesystem
            out.append((src, mp))
        return out


def resolv_conf(pod: dict, cluster_dns: list[str], cluster_domain: str, node_resolv: str = "/etc/resolv.conf"
                ) -> str | None:
    """The pod's /etc/resolv.conf text, or None when the pod uses the node's (dnsPolicy
    Default, or ClusterFirst on the host network, or no cluster DNS configured)."""
    spec = pod.get("spec") or {}
    policy = spec.get("dnsPolicy") or "ClusterFirst"
    host = bool(spec.get("hostNetwork"))
    ns = (pod.get("metadata") or {}).get("namespace") or "default"
    cfg = spec.get("dnsConfig") or {}
    servers: list[str] = []
    searches: list[str] = []
    options: list[str] = []
    if policy == "ClusterFirstWithHostNet" or (policy == "ClusterFirst" and not host):
        if not cluster_dns:
            return None  # the kubelet falls back to the node's (and says so in an event)
        servers = list(cluster_dns)
        searches = [f"{ns}.svc.{cluster_domain}", f"svc.{cluster_domain}", cluster_domain]
        options = ["ndots:5"]
    elif policy == "None":
        pass
    else:  # Default, or ClusterFirst with hostNetwork
        if not cfg:
            return None
        try:
            with open(node_resolv) as f:
                for line in f:
                    parts = line.split()
                    if parts[:1] == ["nameserver"] and len(parts) > 1:
                        servers.append(parts[1])
                    elif parts[:1] in (["search"], ["domain"]):
                        searches = parts[1:]
                    elif parts[:1] == ["options"]:
                        options = parts[1:]
        except OSError:
            pass
    servers += [s for s in cfg.get("nameservers") or [] if s not in servers]
    searches += [s for s in cfg.get("searches") or [] if s not in searches]
    opts = {o.split(":")[0]: o for o in options}
    for o in cfg.get("options") or []:
        name = o.get("name", "")
        opts[name] = f"{name}:{o['value']}" if o.get("value") is not None else name
    lines = [f"search {' '.join(searches)}"] if searches else []
    lines += [f"nameserver {s}" for s in servers[:3]]
    if opts:
        lines.append(f"options {' '.join(opts.values())}")
    return "\n".join(lines) + "\n"


def token_request(api: Any, namespace: str, sa: str, audiences: list[str], seconds: int, pod: dict) -> str:
    """A ServiceAccount token bound to ``pod`` (POST .../serviceaccounts/<sa>/token)."""
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": audiences, "expirationSeconds": seconds,
                     "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod["metadata"]["name"],
                                        "uid": pod["metadata"].get("uid")}}}
    res = api.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{sa}/token", body)
    tok = ((res or {}).get("status") or {}).get("token")
    if not tok:
        raise VolumeError(f"TokenRequest for {namespace}/{sa} returned no token: {json.dumps(res)[:200]}")
    return tok
