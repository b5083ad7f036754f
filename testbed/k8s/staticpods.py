"""Static pods: pods a kubelet runs from manifest files (``--pod-manifest-path``,
kubeadm's ``/etc/kubernetes/manifests``), with or without an API server, and the *mirror
pods* it keeps in the API so ``kubectl get pods -n kube-system`` shows them.

As the real kubelet: a manifest's pod is named ``<name>-<node>``, bound to the node, its
UID is the hash of the manifest and the node (``kubernetes.io/config.hash``); the mirror pod
carries ``kubernetes.io/config.mirror: <hash>``, ``kubernetes.io/config.source: file`` and
the Node as its owner. The kubelet writes the static pod's status to its mirror pod;
deleting a mirror pod only makes the kubelet create it again (the static pod keeps
running); a changed manifest replaces the pod; a removed one stops it and deletes the mirror.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from typing import Any

from testbed.k8s.apiclient import now_iso

log = logging.getLogger("kubelet.static")

MIRROR = "kubernetes.io/config.mirror"
HASH = "kubernetes.io/config.hash"
SOURCE = "kubernetes.io/config.source"
SEEN = "kubernetes.io/config.seen"


def static_pod(manifest: dict, node: str, path: str = "") -> dict:
    """The pod a manifest describes, as the kubelet runs it (pure)."""
    pod = copy.deepcopy(manifest)
    if pod.get("kind") != "Pod" or pod.get("apiVersion") != "v1":
        raise ValueError(f"{path}: a static pod manifest must be a v1 Pod (got {pod.get('apiVersion')} "
                         f"{pod.get('kind')})")
    meta = pod.setdefault("metadata", {})
    if not meta.get("name"):
        raise ValueError(f"{path}: metadata.name is required")
    meta["name"] = f"{meta['name']}-{node}"
    meta.setdefault("namespace", "default")
    spec = pod.setdefault("spec", {})
    spec["nodeName"] = node
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("tolerations", [{"operator": "Exists", "effect": "NoExecute"}])
    for c in spec.get("containers") or []:
        c.setdefault("imagePullPolicy", "IfNotPresent")
    digest = hashlib.md5(json.dumps(pod, sort_keys=True).encode()).hexdigest()
    meta["uid"] = digest
    ann = meta.setdefault("annotations", {})
    ann.update({HASH: digest, SOURCE: "file"})
    return pod


class StaticPods:
    """The static pods of one kubelet (read from ``directory``)."""

    def __init__(self, directory: str, node: str):
        self.dir, self.node = directory, node
        self._cache: dict[str, tuple[float, dict | None]] = {}
        self.status: dict[str, dict] = {}  # static pod uid -> status last reported
        self.annotations: dict[str, dict[str, str]] = {}  # static pod uid -> the kubelet's annotations
        self._written: dict[str, str] = {}  # uid -> JSON of the status last written to the mirror

    def pods(self) -> list[dict]:
        """The static pods (manifests re-read when they change; a bad one is logged and skipped)."""
        out = []
        paths = self._paths()
        for gone in set(self._cache) - set(paths):
            self._cache.pop(gone, None)
        for path in paths:
            try:
                mtime = os.stat(path).st_mtime
            except OSError:
                continue
            cached = self._cache.get(path)
            if cached is None or cached[0] != mtime:
                pod = None
                try:
                    import yaml

                    with open(path) as f:
                        pod = static_pod(yaml.safe_load(f) or {}, self.node, path)
                    pod["metadata"]["annotations"][SEEN] = now_iso()
                except (OSError, ValueError, AttributeError) as exc:
                    log.error("static pod manifest %s: %s", path, exc)
                except Exception as exc:  # noqa: BLE001 - yaml errors
                    log.error("static pod manifest %s does not parse: %s", path, exc)
                self._cache[path] = (mtime, pod)
                cached = self._cache[path]
            if cached[1] is not None:
                pod = copy.deepcopy(cached[1])
                if pod["metadata"]["uid"] in self.status:
                    pod["status"] = self.status[pod["metadata"]["uid"]]
                out.append(pod)
        return out

    def _paths(self) -> list[str]:
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        return [os.path.join(self.dir, n) for n in names
                if not n.startswith(".") and n.endswith((".yaml", ".yml", ".json"))]

    def changed(self) -> bool:
        """A manifest was added, removed or changed since :meth:`pods` last read them (the
        kubelet's file source: a real one checks its directory every 20 s and on inotify)."""
        paths = self._paths()
        if set(paths) != set(self._cache):
            return True
        for path in paths:
            try:
                if os.stat(path).st_mtime != self._cache[path][0]:
                    return True
            except OSError:
                return True
        return False

    @staticmethod
    def is_static(pod: dict) -> bool:
        return ((pod.get("metadata") or {}).get("annotations") or {}).get(SOURCE) == "file" and \
            MIRROR not in (pod["metadata"].get("annotations") or {})

    @staticmethod
    def is_mirror(pod: dict) -> bool:
        return MIRROR in ((pod.get("metadata") or {}).get("annotations") or {})

    def set_status(self, pod: dict, status: dict, kubelet: Any, annotations: dict[str, str] | None = None) -> bool:
        """Keep the static pod's status and the kubelet's annotations (where it runs: PIDs,
        netns), written to its mirror pod by :meth:`sync_mirrors`."""
        uid = pod["metadata"]["uid"]
        prev = (self.status.get(uid), self.annotations.get(uid))
        self.status[uid] = status
        if annotations:
            self.annotations[uid] = annotations
        kubelet.cluster.mark("Pod")
        return prev != (status, self.annotations.get(uid))

    def mirror_of(self, pod: dict, mirrors: list[dict]) -> dict | None:
        h = pod["metadata"]["annotations"][HASH]
        return next((m for m in mirrors if m["metadata"]["annotations"].get(MIRROR) == h
                     and m["metadata"]["name"] == pod["metadata"]["name"]), None)

    def sync_mirrors(self, kubelet: Any) -> None:
        """Create missing mirror pods, replace stale or deleted ones, remove orphans, and
        write the static pods' status to them."""
        cluster = kubelet.cluster
        node = cluster.get("Node", self.node)
        if node is None:
            return  # not registered yet: mirror pods are owned by the Node
        statics = self.pods()
        mirrors = [p for p in cluster.list("Pod") if self.is_mirror(p)]
        wanted = {p["metadata"]["annotations"][HASH] for p in statics}
        for m in mirrors:
            meta = m["metadata"]
            stale = meta["annotations"].get(MIRROR) not in wanted
            if stale or meta.get("deletionTimestamp"):
                cluster.delete("Pod", meta["name"], meta["namespace"], grace=0, uid=meta["uid"])
                self._written.pop(meta["uid"], None)
        for pod in statics:
            m = self.mirror_of(pod, mirrors)
            if m is not None and m["metadata"].get("deletionTimestamp"):
                m = None
            if m is None:
                mirror = copy.deepcopy(pod)
                mirror.pop("status", None)
                meta = mirror["metadata"]
                meta.pop("uid", None)
                meta["annotations"][MIRROR] = meta["annotations"][HASH]
                meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": self.node,
                                            "uid": node["metadata"]["uid"], "controller": True}]
                try:
                    m = cluster.create(mirror)
                    log.info("mirror pod %s/%s created", meta["namespace"], meta["name"])
                except Exception as exc:  # noqa: BLE001 - AlreadyExists (a deleted one going), API errors
                    log.info("mirror pod %s/%s not created yet: %s", meta["namespace"], meta["name"], exc)
                    cluster.mark("Pod")
                    continue
            status = self.status.get(pod["metadata"]["uid"])
            if status is None:
                continue
            ann = self.annotations.get(pod["metadata"]["uid"]) or {}
            text = json.dumps([status, ann], sort_keys=True)
            if self._written.get(m["metadata"]["uid"]) == text:
                continue

            def put(p: dict, status: dict = status, ann: dict = ann) -> None:
                p["status"] = status
                if ann:
                    p["metadata"].setdefault("annotations", {}).update(ann)

            try:
                cluster.mutate("Pod", m["metadata"]["name"], m["metadata"]["namespace"], put, sub="status",
                               current=m)
                self._written[m["metadata"]["uid"]] = text
            except Exception as exc:  # noqa: BLE001 - written on the next pass
                log.info("mirror pod status not written: %s", exc)
                cluster.mark("Pod")
