"""calico-node's report of the settings in effect on this node that calicolab does not
implement: logged once at start and again on every change, and served in ``/status`` (as
``unimplemented``) for ``calicolab status``.

The settings are calico-node's environment (:mod:`agent.envvars`) and the resources that
apply to this node: FelixConfiguration ``default`` and ``node.<name>``, the IPPools that
select it, BGPConfiguration ``default`` and ``node.<name>``, the BGPPeers it takes part in,
and its own Node. What is "not honoured" comes from the inventory (``INVENTORY`` of each
kind in :mod:`datastore.resources`). :func:`in_effect` is pure; :class:`Reporter` keeps the
last report and logs only what changed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from agent import envvars
from datastore.inventory import Finding

log = logging.getLogger("calico-node")


def _matches(selector: str | None, labels: Mapping[str, str]) -> bool:
    if not selector:
        return True
    from datastore.selector import SelectorError, parse_selector

    try:
        return parse_selector(selector).matches(dict(labels))
    except SelectorError:
        return False


def applies(obj: Any, nodename: str, labels: Mapping[str, str]) -> bool:
    """Whether resource ``obj`` is in effect on node ``nodename`` (with ``labels``)."""
    kind, name = obj.KIND, obj.metadata.name
    if kind in ("FelixConfiguration", "BGPConfiguration"):
        return name in ("default", f"node.{nodename}")
    if kind == "Node":
        return name == nodename
    if kind == "IPPool":
        return _matches(obj.spec.node_selector, labels)
    if kind == "BGPPeer":
        spec = obj.spec
        if spec.peer_selector and _matches(spec.peer_selector, labels):
            return True
        if spec.node:
            return spec.node == nodename
        return _matches(spec.node_selector, labels)
    return True


def in_effect(nodename: str, env: Mapping[str, str], objects: Iterable[Any],
              labels: Mapping[str, str] | None = None) -> list[Finding]:
    """Environment variables and fields of ``objects`` in effect on ``nodename`` that
    calicolab does not honour, in a stable order."""
    from datastore.resources import unimplemented

    out = envvars.unimplemented(env)
    for obj in sorted(objects, key=lambda o: (o.KIND, o.metadata.name)):
        if applies(obj, nodename, labels or {}):
            out.extend(unimplemented(obj))
    return out


class Reporter:
    """Logs the unimplemented settings in effect: all of them at start, then each change."""

    def __init__(self, nodename: str, env: Mapping[str, str], logger: logging.Logger = log) -> None:
        self.nodename = nodename
        self.env = dict(env)
        self.log = logger
        self.current: list[Finding] = []
        self.reported = False
        self._signature: tuple | None = None

    @property
    def lines(self) -> list[dict[str, str]]:
        """The current findings for /status: ``{"setting": "<subject> <path>=<value>", "why": ...}``."""
        return [{"setting": f"{f.subject} {f.brief()}", "why": f.support.note} for f in self.current]

    def update(self, objects: Iterable[Any], labels: Mapping[str, str] | None = None) -> bool:
        """Recompute from the resources now in effect; log what changed. True if something did."""
        objs = list(objects)
        signature = (tuple(sorted((o.KIND, o.metadata.name, o.metadata.resource_version) for o in objs)),
                     tuple(sorted((labels or {}).items())))
        if signature == self._signature:
            return False
        self._signature = signature
        found = in_effect(self.nodename, self.env, objs, labels)
        before = {f.message() for f in self.current}
        after = {f.message() for f in found}
        first = not self.reported
        self.current, self.reported = found, True
        if first:
            if found:
                self.log.warning("%d setting(s) in effect on %s are not implemented in calicolab and have "
                                 "no effect:", len(found), self.nodename)
            for f in found:
                self.log.warning("not implemented: %s", f.message())
            return True
        for f in found:
            if f.message() not in before:
                self.log.warning("now in effect, not implemented: %s", f.message())
        for msg in sorted(before - after):
            self.log.info("no longer in effect: %s", msg)
        return before != after
