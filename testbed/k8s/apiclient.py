"""How the Kubernetes-side components (kubelet, kube-proxy, controllers, scheduler, labd)
talk to the API server: list+watch caches and writes, through :mod:`kubeclient`.

:class:`Cluster` keeps one informer (list, then watch with bookmarks, resync after 410)
per kind a component watches, wakes the component's level-triggered loop when any of
them changes (:meth:`Cluster.wait`, as the old etcd change feed did), and serves reads
from those caches. Writes go to the API server: ``create``, graceful ``delete``,
``mutate`` (read-modify-write of the object or its ``status`` subresource, retried on
409 Conflict), ``bind`` (``pods/binding``), and Events (:class:`EventRecorder`, sent in
the background, repeated ones counted as client-go's recorder does).
"""

from __future__ import annotations

import copy
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable

from kubeclient import AlreadyExists, ApiError, Client, Conflict, Informer, KubeError, NotFound
from kubeclient.client import BUILTIN

log = logging.getLogger("apiclient")

#: kind -> (apiVersion, plural, namespaced)
KINDS: dict[str, tuple[str, str, bool]] = dict(BUILTIN)


def now_iso() -> str:
    """The current time in Kubernetes' timestamp format."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def micro_time() -> str:
    """A MicroTime (``eventTime``): RFC 3339 with microseconds."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def client_from(kubeconfig: str | None = None, user_agent: str = "") -> Client:
    """A client from a kubeconfig (``kubeconfig``, else $KUBECONFIG / ~/.kube/config /
    in-cluster), identifying itself as ``user_agent`` (the field manager of its writes)."""
    c = Client.from_config(kubeconfig)
    if user_agent:
        c.config.user_agent = user_agent
    return c


def meta_key(obj: dict) -> tuple[str | None, str]:
    """``(namespace, name)`` of an object."""
    m = obj.get("metadata") or {}
    return m.get("namespace"), m.get("name", "")


class Cluster:
    """A component's view of the cluster: caches of the kinds it watches, and writes.

    ``watches`` maps a kind to its list/watch options (``field_selector``,
    ``label_selector``, ``namespace``); e.g. a kubelet watches
    ``{"Pod": {"field_selector": "spec.nodeName=w0"}, "Node": {...}}``."""

    def __init__(self, client: Client, watches: dict[str, dict[str, str]] | list[str] | tuple[str, ...] = (),
                 component: str = "", host: str = ""):
        self.client = client
        self.informers: dict[str, Informer] = {}
        self._cond = threading.Condition()
        self._dirty = True
        self._kinds: set[str] = {"*"}
        self.recorder = EventRecorder(client, component or client.config.user_agent, host)
        opts = watches if isinstance(watches, dict) else dict.fromkeys(watches, {})
        for kind, o in opts.items():
            api, plural, namespaced = KINDS[kind]
            inf = Informer(client, api, plural, o.get("namespace") if namespaced else None,
                           label_selector=o.get("label_selector", ""), field_selector=o.get("field_selector", ""))
            inf.add_handler(lambda typ, obj, old, kind=kind: self.mark(kind))
            self.informers[kind] = inf

    # --- caches ------------------------------------------------------------------------------
    def start(self) -> Cluster:
        """Start every informer (returns self; :meth:`wait_synced` before trusting reads)."""
        for inf in self.informers.values():
            inf.start()
        self.recorder.start()
        return self

    def stop(self) -> None:
        for inf in self.informers.values():
            inf.stop(wait=1.0)
        self.recorder.stop()
        self.mark()

    def wait_synced(self, timeout: float = 30.0, stop: threading.Event | None = None) -> bool:
        """True once every informer has listed (False after ``timeout`` or ``stop``)."""
        deadline = time.monotonic() + timeout
        for inf in self.informers.values():
            while not inf.synced.wait(0.1):
                if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                    return False
        return True

    def synced(self) -> bool:
        return all(inf.synced.is_set() for inf in self.informers.values())

    def list(self, kind: str, namespace: str | None = None) -> list[dict]:
        """Every cached object of ``kind`` (in ``namespace``), sorted by namespace/name."""
        objs = self.informers[kind].snapshot()
        if namespace is not None:
            objs = [o for o in objs if (o.get("metadata") or {}).get("namespace") == namespace]
        return sorted(objs, key=lambda o: (meta_key(o)[0] or "", meta_key(o)[1]))

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        """The cached object, or None."""
        namespaced = KINDS[kind][2]
        return self.informers[kind].get(name, namespace if namespaced else None)

    def mark(self, kind: str = "*") -> None:
        """Wake the consumer (also usable by the consumer to ask for another pass)."""
        with self._cond:
            self._dirty = True
            self._kinds.add(kind)
            self._cond.notify_all()

    def wake_on_signals(self, stop: threading.Event) -> None:
        """SIGTERM and SIGINT set ``stop`` and wake :meth:`wait` at once (call from the main
        thread): a daemon blocked in wait() would otherwise notice its stop only at the wait's
        timeout, up to 5 s later."""
        import signal

        def handler(*_: object) -> None:
            stop.set()
            self.mark()  # the condition's lock is reentrant: safe even if the main thread holds it

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handler)

    def wait(self, stop: threading.Event, timeout: float) -> set[str]:
        """Block until something changed or ``timeout``; returns (and clears) the kinds that did."""
        with self._cond:
            if not self._dirty and not stop.is_set():
                self._cond.wait(timeout)
            self._dirty = False
            kinds, self._kinds = self._kinds, set()
            return kinds

    # --- reads from the server -----------------------------------------------------------------
    def fetch(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        """GET the object from the server (None if it does not exist)."""
        api, plural, namespaced = KINDS[kind]
        try:
            return self.client.get(api, plural, name, namespace if namespaced else None)
        except NotFound:
            return None

    # --- writes ----------------------------------------------------------------------------------
    def create(self, obj: dict, namespace: str | None = None) -> dict:
        """POST a new object (ApiError on refusal, AlreadyExists included)."""
        return self.client.create(obj, namespace, field_validation="Strict")

    def delete(self, kind: str, name: str, namespace: str | None = None, *, grace: int | None = None,
               uid: str | None = None, propagation: str | None = None) -> bool:
        """DELETE (graceful unless ``grace`` is 0; with ``uid``, only that incarnation).
        False if it was already gone."""
        api, plural, namespaced = KINDS[kind]
        try:
            self.client.delete(api, plural, name, namespace if namespaced else None, grace_period=grace,
                               propagation=propagation, preconditions={"uid": uid} if uid else None)
            return True
        except NotFound:
            return False
        except Conflict:  # the uid precondition: another object of that name now
            return False

    def mutate(self, kind: str, name: str, namespace: str | None, fn: Callable[[dict], bool | None], *,
               sub: str | None = None, current: dict | None = None, attempts: int = 10) -> dict | None:
        """Read-modify-write: ``fn`` edits a copy of the object in place (returns False to
        skip the write); PUT to the object or to ``sub`` (``"status"``) with its
        resourceVersion; on 409 the object is read again and ``fn`` applied again.
        Starts from ``current`` (else the cache, else a GET). Returns what was stored (the
        unchanged object when nothing was written), None if the object does not exist."""
        api, plural, namespaced = KINDS[kind]
        ns = namespace if namespaced else None
        obj = current if current is not None else self.get(kind, name, ns)
        for _ in range(attempts):
            if obj is None:
                obj = self.fetch(kind, name, ns)
                if obj is None:
                    return None
            edited = copy.deepcopy(obj)
            if fn(edited) is False or edited == obj:
                return obj
            try:
                return self.client.replace(edited, ns, plural=plural, sub=sub)
            except Conflict:
                obj = None  # read it again
            except NotFound:
                return None
        raise Conflict(409, "Conflict", f"{plural} {name!r}: still conflicting after {attempts} attempts")

    def bind(self, pod: dict, node: str) -> bool:
        """POST ``pods/binding`` (the scheduler's write). False if the pod is gone or bound."""
        ns, name = meta_key(pod)
        body = {"apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": name, "namespace": ns, "uid": pod["metadata"].get("uid")},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        try:
            self.client.request("POST", f"/api/v1/namespaces/{ns}/pods/{name}/binding", body)
            return True
        except (NotFound, Conflict):
            return False

    def event(self, obj: dict, reason: str, message: str, type_: str = "Normal",
              field_path: str = "", component: str = "") -> None:
        """Record an Event about ``obj`` (sent in the background; ``component``: the
        reporting controller, default the recorder's)."""
        self.recorder.record(obj, reason, message, type_, field_path, component)


class EventRecorder:
    """client-go's event recorder, simplified: core/v1 Events named
    ``<object>.<16 hex>``, sent from a background thread; the same event again
    (same object, reason, message, source) within 10 minutes bumps ``count`` and
    ``lastTimestamp`` of the first instead of making a new one."""

    def __init__(self, client: Client, component: str, host: str = ""):
        self.client = client
        self.component = component
        self.host = host
        self.instance = host or os.uname().nodename
        self._q: queue.Queue = queue.Queue(maxsize=1000)
        self._seen: dict[tuple, tuple[str, str, int, float]] = {}
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="events")
            self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        try:
            self._q.put_nowait(None)
        except queue.Full:
            pass

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every queued event was sent (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._q.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def record(self, obj: dict, reason: str, message: str, type_: str = "Normal", field_path: str = "",
               component: str = "") -> None:
        meta = obj.get("metadata") or {}
        ref = {"kind": obj.get("kind", ""), "name": meta.get("name", ""), "uid": meta.get("uid", ""),
               "apiVersion": obj.get("apiVersion", ""), "resourceVersion": meta.get("resourceVersion", "")}
        if meta.get("namespace"):
            ref["namespace"] = meta["namespace"]
        if field_path:
            ref["fieldPath"] = field_path
        if self._thread is None:
            self.start()
        try:
            self._q.put_nowait((ref, reason, message, type_, now_iso(), component or self.component))
        except queue.Full:
            log.warning("event queue full: dropped %s %s", reason, message)

    def _run(self) -> None:
        from kubeclient import ConnectionFailed

        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                for attempt in range(12):  # the API server may not answer yet (a lab starting)
                    try:
                        self._send(*item)
                        break
                    except ConnectionFailed as exc:
                        if self._stopped or attempt == 11:
                            log.info("event not recorded: %s", exc)
                            break
                        time.sleep(min(0.25 * 2 ** attempt, 5.0))
            except (KubeError, OSError) as exc:
                log.info("event not recorded: %s", exc)
            finally:
                self._q.task_done()

    def _send(self, ref: dict, reason: str, message: str, type_: str, ts: str, component: str) -> None:
        ns = ref.get("namespace") or "default"
        key = (ref["kind"], ns, ref["name"], ref["uid"], reason, message, type_, component)
        seen = self._seen.get(key)
        if seen is not None and time.monotonic() - seen[3] < 600:
            name, first, count, _ = seen
            try:
                self.client.patch("v1", "events", name, {"count": count + 1, "lastTimestamp": ts}, ns,
                                  patch_type="merge")
                self._seen[key] = (name, first, count + 1, time.monotonic())
                return
            except NotFound:
                pass
        name = f"{ref['name']}.{secrets.token_hex(8)}"
        ev = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": name, "namespace": ns},
              "involvedObject": ref, "reason": reason, "message": message, "type": type_,
              "source": {"component": component, **({"host": self.host} if self.host else {})},
              "firstTimestamp": ts, "lastTimestamp": ts, "count": 1,
              "reportingComponent": component, "reportingInstance": self.instance}
        try:
            self.client.create(ev, ns)
        except AlreadyExists:
            return
        except ApiError as exc:
            if exc.code == 403 and "being terminated" in exc.message:
                return  # the namespace is going away
            raise
        if len(self._seen) > 4096:
            self._seen.clear()
        self._seen[key] = (name, ts, 1, time.monotonic())
