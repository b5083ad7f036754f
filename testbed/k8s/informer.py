"""A change feed over the object store for level-triggered loops.

A background thread watches etcd; every interesting event marks the feed dirty and
wakes the consumer, which then re-reads what it needs. After a watch error (etcd gone,
revision compacted) it restarts from the current revision and marks the feed dirty,
so nothing is missed: the consumer always re-reads the full state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from testbed.k8s.store import Event, Store

log = logging.getLogger("informer")


class ChangeFeed:
    """Wakes a consumer when the store changes."""

    def __init__(self, store: Store, interesting: Callable[[Event], bool] = lambda ev: True):
        self.store = store
        self.interesting = interesting
        self._cond = threading.Condition()
        self._dirty = True
        self.kinds_changed: set[str] = set()
        self._watch: object | None = None
        self._stop: threading.Event | None = None

    def start(self, stop: threading.Event) -> threading.Thread:
        """Start the watch thread (a daemon; it ends when ``stop`` is set)."""
        t = threading.Thread(target=self._loop, args=(stop,), daemon=True, name="changefeed")
        t.start()
        threading.Thread(target=self._closer, args=(stop,), daemon=True, name="changefeed-stop").start()
        return t

    def _closer(self, stop: threading.Event) -> None:
        stop.wait()
        w = self._watch
        if w is not None and hasattr(w, "close"):
            w.close()
        self.mark()

    def _opened(self, w: object) -> None:
        self._watch = w
        if self._stop is not None and self._stop.is_set() and hasattr(w, "close"):
            w.close()

    def mark(self, kind: str = "*") -> None:
        """Mark dirty (also usable by the consumer itself to request another pass)."""
        with self._cond:
            self._dirty = True
            self.kinds_changed.add(kind)
            self._cond.notify_all()

    def wait(self, stop: threading.Event, timeout: float) -> set[str]:
        """Block until dirty or ``timeout``; returns (and clears) the kinds that changed."""
        with self._cond:
            if not self._dirty and not stop.is_set():
                self._cond.wait(timeout)
            self._dirty = False
            kinds, self.kinds_changed = self.kinds_changed, set()
            return kinds

    def _loop(self, stop: threading.Event) -> None:
        self._stop = stop
        while not stop.is_set():
            try:
                rev = self.store.revision()
                self.mark()
                for ev in self.store.watch(rev, on_open=self._opened):
                    if stop.is_set():
                        return
                    if self.interesting(ev):
                        self.mark(ev.kind)
            except Exception as exc:  # etcd restarting, compaction: re-list and watch again
                log.debug("watch restarted after %s", exc)
                stop.wait(0.2)
