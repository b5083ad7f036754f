"""Watch the datastore and hand each new speaker configuration to a callback."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from agent.bgp.config import SpeakerConfig
from agent.bgp.fsm import Timers
from agent.confd.compute import ConfdError, State, compute

log = logging.getLogger(__name__)
KINDS = ["Node", "BGPConfiguration", "BGPPeer", "IPPool", "BlockAffinity", "IPAMBlock"]


class ConfdWatcher:
    """A thread following ``client.watch(KINDS)``; after the initial sync and on every
    change that alters the result it calls ``on_config(SpeakerConfig)``."""

    def __init__(self, client, node_name: str, on_config: Callable[[SpeakerConfig], None], *,
                 timers: Timers | None = None):
        self.client = client
        self.node_name = node_name
        self.on_config = on_config
        self.timers = timers
        self.state = State(node_name=node_name)
        self.synced = threading.Event()
        self.last: SpeakerConfig | None = None
        self.last_error: str = ""
        self.updates_changed = 0  # updates that could change the configuration (tests, debugging)
        self.updates_unchanged = 0  # ... and those that could not, so computed nothing
        self._stream = None
        self._thread = threading.Thread(target=self._run, name="confd", daemon=True)

    def start(self) -> None:
        """Start watching."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (returns promptly)."""
        if self._stream is not None:
            self._stream.close()
        self._thread.join(5)

    def _run(self) -> None:
        self._stream = self.client.watch_stream(KINDS)
        pending = False
        try:
            for ev in self._stream:
                if ev.type == "SYNCED":
                    self.synced.set()
                    pending = True
                elif ev.kind in State.KINDS:
                    # an update that cannot change the configuration (State.apply_event) is
                    # stored but computes nothing: in a lab's start most are a block gaining
                    # a pod of its own node, or a Node whose resourceVersion alone moved
                    if self.state.apply_event(ev.kind, ev.name, None if ev.type == "DELETED" else ev.obj):
                        pending = True
                        self.updates_changed += 1
                    else:
                        self.updates_unchanged += 1
                # events received together (a watch response: many in a busy lab's start) are
                # applied first and the configuration computed once, from the state after the last
                if pending and self.synced.is_set() and not getattr(self._stream, "more", False):
                    pending = False
                    self._recompute()
        except Exception as exc:  # noqa: BLE001 - a dead watcher must be visible in status
            if not self._stream.stop.is_set():
                log.exception("confd watcher stopped")
                self.last_error = f"watch failed: {exc}"

    def _recompute(self) -> None:
        try:
            cfg = compute(self.node_name, self.state, self.timers)
            self.last_error = ""
        except (ConfdError, ValueError) as exc:
            self.last_error = str(exc)
            log.error("confd: %s", exc)
            return
        except Exception as exc:  # noqa: BLE001 - keep the last good config, keep watching
            self.last_error = f"confd failed: {type(exc).__name__}: {exc}"
            log.exception("confd: computing the BGP configuration failed")
            return
        if cfg is not None and cfg != self.last:
            self.last = cfg
            self.on_config(cfg)
