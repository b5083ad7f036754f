"""What exists in every cluster without anyone creating it.

At start (kube-apiserver's bootstrap controllers): the namespaces default, kube-system,
kube-public, kube-node-lease; the ``kubernetes`` Service (10.96.0.1:443 -> the
advertise address :6443) with its Endpoints and EndpointSlice; the PriorityClasses
system-cluster-critical and system-node-critical.

Continuously (kube-controller-manager's root-ca-cert-publisher and serviceaccount
controllers, run here so a lab needs no controller-manager for them): every active
namespace gets the ConfigMap ``kube-root-ca.crt`` and the ServiceAccount ``default``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from testbed.apiserver.status import APIError

log = logging.getLogger("apiserver.bootstrap")

SERVICE_IP = "10.96.0.1"


async def ensure(h: Any) -> None:
    """Create the bootstrap objects that are missing (idempotent)."""
    opts = h.server.opts
    for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
        await h.internal_create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    for name, value in (("system-node-critical", 2000001000), ("system-cluster-critical", 2000000000)):
        await h.internal_create({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                                 "metadata": {"name": name}, "value": value,
                                 "description": "Used for system critical pods that must not be moved from their "
                                                "current node." if name == "system-node-critical" else
                                                "Used for system critical pods that must run in the cluster, but "
                                                "can be moved to another node if necessary."})
    import ipaddress

    net = ipaddress.ip_network(opts.service_cluster_ip_range)
    ip = str(net.network_address + 1)
    await h.internal_create({"apiVersion": "v1", "kind": "Service",
                             "metadata": {"name": "kubernetes", "namespace": "default",
                                          "labels": {"component": "apiserver", "provider": "kubernetes"}},
                             "spec": {"clusterIP": ip, "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                                                                   "targetPort": opts.secure_port}],
                                      "sessionAffinity": "None", "type": "ClusterIP"}})
    addr = opts.advertise_address or ("127.0.0.1" if opts.bind_address in ("0.0.0.0", "::", "")
                                      else opts.bind_address)
    await upsert(h, {"apiVersion": "v1", "kind": "Endpoints",
                     "metadata": {"name": "kubernetes", "namespace": "default",
                                  "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
                     "subsets": [{"addresses": [{"ip": addr}],
                                  "ports": [{"name": "https", "port": opts.secure_port, "protocol": "TCP"}]}]})
    await upsert(h, {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                     "metadata": {"name": "kubernetes", "namespace": "default",
                                  "labels": {"kubernetes.io/service-name": "kubernetes",
                                             "endpointslice.kubernetes.io/managed-by":
                                                 "endpointslicemirroring-controller.k8s.io"}},
                     "addressType": "IPv4",
                     "endpoints": [{"addresses": [addr], "conditions": {"ready": True}}],
                     "ports": [{"name": "https", "port": opts.secure_port, "protocol": "TCP"}]})


async def upsert(h: Any, obj: dict) -> None:
    """Create ``obj``, or replace its content when it differs (keeps metadata)."""
    rt = h.registry.by_kind(obj["apiVersion"], obj["kind"])
    meta = obj["metadata"]
    cur = await h.storage.get(rt.key(meta["name"], meta.get("namespace")))
    if cur is None:
        await h.internal_create(obj)
        return
    new = dict(cur.obj)
    for k, v in obj.items():
        if k not in ("metadata", "apiVersion", "kind"):
            new[k] = v
    if new != cur.obj:
        try:
            await h.update_object(rt, cur, new, manager="kube-apiserver")
        except APIError as err:
            log.info("bootstrap: could not update %s: %s", meta["name"], err)


def _ca_pem(h: Any) -> str:
    o = h.server.opts
    with open(o.client_ca_file or os.path.join(o.cert_dir, "ca.crt")) as f:
        return f.read()


async def namespace_contents(h: Any) -> None:
    """Keep ``kube-root-ca.crt`` and the ``default`` ServiceAccount in every active namespace."""
    ca = _ca_pem(h)
    nsrt = h.registry.get("", "v1", "namespaces")
    cmrt = h.registry.get("", "v1", "configmaps")
    sart = h.registry.get("", "v1", "serviceaccounts")
    hub = h.storage.hub
    sub = hub.subscribe("/registry/", hub.rev)
    try:
        while True:
            for key, e in list(hub.cache.items()):
                if not key.startswith(nsrt.list_prefix()):
                    continue
                meta = e.obj.get("metadata") or {}
                if meta.get("deletionTimestamp"):
                    continue
                ns = meta.get("name")
                try:
                    if cmrt.key("kube-root-ca.crt", ns) not in hub.cache:
                        await h.internal_create({"apiVersion": "v1", "kind": "ConfigMap",
                                                 "metadata": {"name": "kube-root-ca.crt", "namespace": ns,
                                                              "annotations": {"kubernetes.io/description":
                                                                              "Contains a CA bundle that can be used "
                                                                              "to verify the kube-apiserver when "
                                                                              "using internal endpoints such as the "
                                                                              "internal service IP or "
                                                                              "kubernetes.default.svc. No other usage "
                                                                              "is guaranteed across distributions of "
                                                                              "Kubernetes clusters."}},
                                                 "data": {"ca.crt": ca}})
                    if sart.key("default", ns) not in hub.cache:
                        await h.internal_create({"apiVersion": "v1", "kind": "ServiceAccount",
                                                 "metadata": {"name": "default", "namespace": ns}})
                except APIError as err:
                    if err.code not in (403, 404, 409):
                        log.warning("namespace %s: %s", ns, err.message)
                except Exception as exc:  # noqa: BLE001 - etcd unavailable: try again later
                    log.info("namespace %s: %s", ns, exc)
            # wait for the next change touching namespaces, configmaps or serviceaccounts
            while True:
                ev = await sub.queue.get()
                if isinstance(ev, Exception):
                    sub = hub.subscribe("/registry/", hub.rev)
                    break
                if ev.key.startswith((nsrt.list_prefix(), "/registry/configmaps/", "/registry/serviceaccounts/")):
                    break
            await asyncio.sleep(0.05)
    finally:
        sub.close()
