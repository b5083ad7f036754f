"""An incremental selector index (pure): which items match which selectors, kept up to date.

Felix's ``labelindex`` (label inheritance index): items (endpoints, network
sets) carry their own labels and a list of parents (profiles) whose
``labelsToApply`` they inherit (an item's own labels win, then the first
parent's). Selectors are registered by ID. Every change reports only the
(selector, item) pairs that started or stopped matching, so a label change
costs one evaluation per *candidate* selector, never a full recalculation.

Candidates: each selector is filed under one label it requires (``k == v``,
``k in {...}`` -> (k, v) for each value; ``has(k)`` and friends -> (k, any));
selectors that require nothing are always candidates. An item is only ever
evaluated against selectors filed under its own labels, and a new selector
only against items carrying its label.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping

from datastore.selector import Selector

Callback = Callable[[Hashable, Hashable], None]
_ANY = object()


class SelectorIndex:
    """Items x selectors -> matches, with ``on_match(sel_id, item_id)`` / ``on_unmatch`` callbacks."""

    def __init__(self, on_match: Callback | None = None, on_unmatch: Callback | None = None) -> None:
        self.on_match = on_match or (lambda s, i: None)
        self.on_unmatch = on_unmatch or (lambda s, i: None)
        self._own: dict[Hashable, Mapping[str, str]] = {}
        self._item_parents: dict[Hashable, tuple[str, ...]] = {}
        self._labels: dict[Hashable, Mapping[str, str]] = {}  # effective labels
        self._parents: dict[str, Mapping[str, str]] = {}
        self._children: dict[str, set[Hashable]] = {}
        self._sels: dict[Hashable, Selector] = {}
        self._sel_anchor: dict[Hashable, list[tuple[str, object]]] = {}
        self._always: set[Hashable] = set()
        self._by_anchor: dict[tuple[str, object], set[Hashable]] = {}
        self._items_by_kv: dict[tuple[str, object], set[Hashable]] = {}
        self.item_matches: dict[Hashable, set[Hashable]] = {}
        self.sel_matches: dict[Hashable, set[Hashable]] = {}

    # -- reads -----------------------------------------------------------------------
    def labels(self, item_id: Hashable) -> Mapping[str, str]:
        """The item's effective labels (own plus inherited)."""
        return self._labels.get(item_id, {})

    def matches_of(self, sel_id: Hashable) -> set[Hashable]:
        return self.sel_matches.get(sel_id, set())

    def selectors_of(self, item_id: Hashable) -> set[Hashable]:
        return self.item_matches.get(item_id, set())

    # -- parents ---------------------------------------------------------------------
    def update_parent(self, parent: str, labels: Mapping[str, str] | None) -> None:
        """A profile's labelsToApply changed (None: the profile is gone)."""
        old = self._parents.get(parent)
        if labels is None:
            self._parents.pop(parent, None)
        else:
            if old is not None and dict(old) == dict(labels):
                return
            self._parents[parent] = dict(labels)
        for item in list(self._children.get(parent, ())):
            self._recompute(item)

    # -- items -----------------------------------------------------------------------
    def update_item(self, item_id: Hashable, labels: Mapping[str, str], parents: tuple[str, ...] = ()) -> None:
        """Add or change an item."""
        old_parents = self._item_parents.get(item_id, ())
        if old_parents != parents:
            for p in old_parents:
                kids = self._children.get(p)
                if kids is not None:
                    kids.discard(item_id)
                    if not kids:
                        del self._children[p]
            for p in parents:
                self._children.setdefault(p, set()).add(item_id)
            self._item_parents[item_id] = parents
        self._own[item_id] = labels
        self._recompute(item_id)

    def delete_item(self, item_id: Hashable) -> None:
        if item_id not in self._own:
            return
        for p in self._item_parents.pop(item_id, ()):
            kids = self._children.get(p)
            if kids is not None:
                kids.discard(item_id)
                if not kids:
                    del self._children[p]
        del self._own[item_id]
        self._set_labels(item_id, None)
        for sid in list(self.item_matches.pop(item_id, ())):
            self.sel_matches[sid].discard(item_id)
            self.on_unmatch(sid, item_id)

    def _effective(self, item_id: Hashable) -> Mapping[str, str]:
        parents = self._item_parents.get(item_id, ())
        own = self._own[item_id]
        if not parents:
            return own
        merged: dict[str, str] = {}
        for p in reversed(parents):
            merged.update(self._parents.get(p, {}))
        merged.update(own)
        return merged

    def _set_labels(self, item_id: Hashable, labels: Mapping[str, str] | None) -> None:
        old = self._labels.get(item_id)
        if old is not None:
            for k, v in old.items():
                if labels is not None and labels.get(k) == v:
                    continue
                self._items_by_kv[(k, v)].discard(item_id)
                if labels is None or k not in labels:
                    self._items_by_kv[(k, _ANY)].discard(item_id)
        if labels is None:
            self._labels.pop(item_id, None)
            return
        for k, v in labels.items():
            if old is None or old.get(k) != v:
                self._items_by_kv.setdefault((k, v), set()).add(item_id)
            if old is None or k not in old:
                self._items_by_kv.setdefault((k, _ANY), set()).add(item_id)
        self._labels[item_id] = labels

    def _recompute(self, item_id: Hashable) -> None:
        labels = self._effective(item_id)
        if self._labels.get(item_id) == labels and item_id in self.item_matches:
            return
        self._set_labels(item_id, labels)
        cands = set(self._always)
        for k, v in labels.items():
            s = self._by_anchor.get((k, v))
            if s:
                cands |= s
            s = self._by_anchor.get((k, _ANY))
            if s:
                cands |= s
        old = self.item_matches.get(item_id, set())
        new = {sid for sid in cands if self._sels[sid].matches.fast(labels)}  # type: ignore[attr-defined]
        self.item_matches[item_id] = new
        for sid in new - old:
            self.sel_matches.setdefault(sid, set()).add(item_id)
            self.on_match(sid, item_id)
        for sid in old - new:
            self.sel_matches[sid].discard(item_id)
            self.on_unmatch(sid, item_id)

    # -- selectors -------------------------------------------------------------------
    def update_selector(self, sel_id: Hashable, selector: Selector) -> None:
        """Add or replace a selector."""
        old = self._sels.get(sel_id)
        if old is not None and old.canonical() == selector.canonical():
            return
        if old is not None:
            self._unfile(sel_id)
        self._sels[sel_id] = selector
        anchors = _anchors(selector)
        self._sel_anchor[sel_id] = anchors
        if not anchors:
            self._always.add(sel_id)
            cands: set[Hashable] = set(self._own)
        else:
            cands = set()
            for a in anchors:
                self._by_anchor.setdefault(a, set()).add(sel_id)
                cands |= self._items_by_kv.get(a, set())
        fn = selector.matches.fast  # type: ignore[attr-defined]
        new = {i for i in cands if fn(self._labels[i])}
        old_m = self.sel_matches.get(sel_id, set())
        self.sel_matches[sel_id] = new
        for i in new - old_m:
            self.item_matches.setdefault(i, set()).add(sel_id)
            self.on_match(sel_id, i)
        for i in old_m - new:
            self.item_matches[i].discard(sel_id)
            self.on_unmatch(sel_id, i)

    def delete_selector(self, sel_id: Hashable) -> None:
        if sel_id not in self._sels:
            return
        self._unfile(sel_id)
        del self._sels[sel_id]
        for i in self.sel_matches.pop(sel_id, set()):
            self.item_matches[i].discard(sel_id)
            self.on_unmatch(sel_id, i)

    def _unfile(self, sel_id: Hashable) -> None:
        self._always.discard(sel_id)
        for a in self._sel_anchor.pop(sel_id, []):
            s = self._by_anchor.get(a)
            if s is not None:
                s.discard(sel_id)
                if not s:
                    del self._by_anchor[a]


def _anchors(selector: Selector) -> list[tuple[str, object]]:
    """The (key, value) buckets a selector is filed under: its most specific required label."""
    req = selector.required_labels()
    if not req:
        return []
    with_values = [(k, v) for k, v in req.items() if v is not None]
    if with_values:
        k, vals = min(with_values, key=lambda kv: (len(kv[1]), kv[0]))  # type: ignore[arg-type]
        return [(k, v) for v in sorted(vals)]  # type: ignore[union-attr]
    return [(min(req), _ANY)]
