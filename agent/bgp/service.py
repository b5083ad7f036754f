"""BGPService: the BGP part of calico-node (confd + speaker + control socket) in one object.

    svc = BGPService(client, "k8s-w0", ctl_path="/var/run/calico/bird.ctl", timers=None)
    svc.start()          # own thread + asyncio loop; follows the datastore through confd
    svc.status()         # dict: peers, established count, routes, ...
    svc.stop(graceful=False)

Timers default to Calico's BIRD template; a lab may shorten them with the environment
variable CALICOLAB_BGP_TIMERS="hold=9,connect_delay=0.5,connect_retry=1,error_wait_min=1".
"""

from __future__ import annotations

import logging
import os

from agent.bgp.config import SpeakerConfig
from agent.bgp.fsm import Timers
from agent.bgp.runner import SpeakerThread

log = logging.getLogger(__name__)
TIMERS_ENV = "CALICOLAB_BGP_TIMERS"  # e.g. "hold=9,connect_delay=0.5,connect_retry=1"


class BGPService:
    """Runs confd's watcher and the speaker; applies each new configuration without
    resetting sessions that did not change."""

    def __init__(self, client, node_name: str, *, ctl_path: str = "/var/run/calico/bird.ctl",
                 timers: Timers | None = None, netns: str | None = None,
                 program_kernel: bool = True):
        if not node_name:
            raise ValueError("BGPService needs the node name (NODE_NAME)")
        if timers is None and os.environ.get(TIMERS_ENV):
            timers = Timers.parse(os.environ[TIMERS_ENV])
        if timers is not None:
            timers.validate()
        self.client = client
        self.node_name = node_name
        self.ctl_path = ctl_path
        self.timers = timers
        self.runner = SpeakerThread(netns=netns, ctl_path=ctl_path,
                                    program_kernel=program_kernel, name=f"bgp-{node_name}")
        self.watcher = None
        self.apply_error = ""

    def start(self) -> None:
        """Start the speaker thread and the datastore watch."""
        from agent.confd.watcher import ConfdWatcher

        self.runner.start()
        self.watcher = ConfdWatcher(self.client, self.node_name, self._apply, timers=self.timers)
        self.watcher.start()

    def _apply(self, cfg: SpeakerConfig) -> None:
        try:
            self.runner.apply(cfg)
            self.apply_error = ""
        except Exception as exc:  # noqa: BLE001 - keep watching; report in status()
            log.exception("applying BGP configuration failed")
            self.apply_error = str(exc)

    def stop(self, graceful: bool = False) -> None:
        """Stop watching, then stop the speaker (graceful: keep routes, no Cease)."""
        if self.watcher is not None:
            self.watcher.stop()
        self.runner.stop(graceful=graceful)

    def status(self) -> dict:
        """Speaker status plus confd's state (for calico-node's /status)."""
        st = self.runner.status() if self.runner.loop is not None else {"peers": []}
        st["running"] = self.runner.speaker is not None
        st["synced"] = bool(self.watcher and self.watcher.synced.is_set())
        st["config_error"] = (self.watcher.last_error if self.watcher else "") or self.apply_error
        return st
