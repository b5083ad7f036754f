"""A list+watch informer (client-go's reflector + store): keeps a local copy of every
object of one resource and calls handlers on changes.

It lists (paging), then watches from the list's resourceVersion with bookmarks; the
watch resumes from the last seen resourceVersion after a disconnect, and on 410 Gone
(compacted) it re-lists and diffs against the store, so handlers see every deletion and
change they missed (a full resync).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from kubeclient import errors
from kubeclient.client import Client, Watch

log = logging.getLogger("kubeclient.informer")

Handler = Callable[[str, dict, dict | None], None]  # (event type, object, old object)


def key_of(obj: dict) -> str:
    """``namespace/name`` (or ``name``), as client-go's MetaNamespaceKeyFunc."""
    m = obj.get("metadata") or {}
    return f"{m['namespace']}/{m['name']}" if m.get("namespace") else m.get("name", "")


class Informer:
    """Watches one resource; ``store`` maps key -> object. Handlers get
    ("ADDED"|"MODIFIED"|"DELETED", obj, old)."""

    def __init__(self, client: Client, api_version: str, plural: str, namespace: str | None = None, *,
                 label_selector: str = "", field_selector: str = "", page: int = 500,
                 retry_delay: float = 0.5, first_retry_delay: float = 0.05):
        self.client, self.api_version, self.plural, self.namespace = client, api_version, plural, namespace
        self.label_selector, self.field_selector, self.page = label_selector, field_selector, page
        # failed list/watch calls are retried after first_retry_delay, doubling up to retry_delay
        # while they keep failing (an API server starting beside its clients answers a few
        # tens of ms after their first refused connection; one that is down costs a connect
        # attempt per retry_delay)
        self.retry_delay = retry_delay
        self.first_retry_delay = min(first_retry_delay, retry_delay)
        self.store: dict[str, dict] = {}
        self.resource_version = ""
        self.handlers: list[Handler] = []
        self.synced = threading.Event()
        self.relists = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watch: Watch | None = None
        self._thread: threading.Thread | None = None

    def add_handler(self, fn: Handler) -> None:
        self.handlers.append(fn)

    def start(self) -> Informer:
        """Run in a daemon thread; returns self (``wait_synced()`` then read ``store``).
        A stopped informer started again resumes watching from its resourceVersion."""
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, daemon=True, name=f"informer-{self.plural}")
        self._thread.start()
        return self

    def stop(self, wait: float = 5.0) -> None:
        self._stop.set()
        w = self._watch
        if w is not None:
            w.close()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(wait)

    def wait_synced(self, timeout: float = 10.0) -> bool:
        return self.synced.wait(timeout)

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.store.values())

    def _emit(self, typ: str, obj: dict, old: dict | None) -> None:
        for h in self.handlers:
            try:
                h(typ, obj, old)
            except Exception:  # noqa: BLE001 - a handler's bug must not kill the informer
                log.exception("informer handler failed on %s %s", typ, key_of(obj))

    def relist(self) -> None:
        """List everything and reconcile the store (emitting the differences)."""
        items, rv = self.client.list_all(self.api_version, self.plural, self.namespace,
                                         label_selector=self.label_selector, field_selector=self.field_selector,
                                         page=self.page)
        fresh = {key_of(o): o for o in items}
        with self._lock:
            old = self.store
            self.store = fresh
            self.resource_version = rv
        for k, o in fresh.items():
            prev = old.get(k)
            if prev is None:
                self._emit("ADDED", o, None)
            elif (prev.get("metadata") or {}).get("resourceVersion") != (o.get("metadata") or {}).get(
                    "resourceVersion"):
                self._emit("MODIFIED", o, prev)
        for k, o in old.items():
            if k not in fresh:
                self._emit("DELETED", o, o)
        self.relists += 1
        self.synced.set()

    def run(self) -> None:
        """List (unless resuming from a known resourceVersion), then watch, until stopped."""
        need_list = not self.resource_version
        delay = self.first_retry_delay
        while not self._stop.is_set():
            try:
                if need_list:
                    self.relist()
                    need_list = False
                    delay = self.first_retry_delay
                w = self.client.watch(self.api_version, self.plural, self.namespace,
                                      resource_version=self.resource_version, label_selector=self.label_selector,
                                      field_selector=self.field_selector, bookmarks=True)
                self._watch = w
                if self._stop.is_set():
                    return
                for typ, obj in w:
                    delay = self.first_retry_delay
                    self._apply(typ, obj)
            except errors.Gone:
                log.info("informer %s: resourceVersion %s expired; re-listing", self.plural, self.resource_version)
                need_list = True
            except (errors.KubeError, OSError, ValueError) as exc:
                if self._stop.is_set():
                    return
                log.info("informer %s: %s; retrying in %.2f s", self.plural, exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.retry_delay)

    def _apply(self, typ: str, obj: dict) -> None:
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if typ == "BOOKMARK":
            if rv:
                self.resource_version = rv
            return
        k = key_of(obj)
        with self._lock:
            old = self.store.get(k)
            if typ == "DELETED":
                self.store.pop(k, None)
            else:
                self.store[k] = obj
            if rv:
                self.resource_version = rv
        if typ == "ADDED" and old is not None:
            typ = "MODIFIED"
        self._emit(typ, obj, old)

    def get(self, name: str, namespace: str | None = None) -> Any:
        with self._lock:
            return self.store.get(f"{namespace}/{name}" if namespace else name)
