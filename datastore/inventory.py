"""What calicolab implements of each Calico setting: the entries every inventory registry uses.

Each registry sits next to what it describes: a kind's fields in ``INVENTORY`` of its
class in :mod:`datastore.resources`, calico-node's environment in :mod:`agent.envvars`,
the CNI netconf keys in :mod:`cni.netconf`, the topology fields in
:mod:`testbed.topology`. ``docs/inventory.md`` is generated from them
(``python -m testbed.inventory``) and a unit test keeps it current.

An entry is a :class:`Support`:

* :func:`works` - implemented, with the tests that show its effect;
* :func:`works_for` - implemented for some values (``ok``), not for others;
* :func:`missing` - not implemented; values listed in ``ok`` need no warning because
  calicolab behaves that way anyway (e.g. ``bpfEnabled: false``).

:func:`findings` walks a stored document and returns what is set to a value calicolab
does not honour, for calicoctl's warnings, calico-node's log and ``calicolab status``.
Pure logic; imports nothing of ours.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

DOC = "docs/inventory.md"
_UNSET: Any = object()


@dataclass(frozen=True)
class Support:
    """How far calicolab implements one setting."""

    implemented: bool
    tests: tuple[str, ...] = ()
    note: str = ""
    #: the values honoured (a tuple, or a predicate); None: every value (implemented) or none
    ok: tuple[Any, ...] | Callable[[Any], bool] | None = None
    #: how the doc describes ``ok`` (defaults to the tuple's values)
    ok_doc: str = ""
    #: a value that is not honoured, for the test that walks the inventory
    sample: Any = _UNSET
    #: the Calico release that added the setting, when it is newer than v3.28.1
    since: str = ""

    def honours(self, value: Any) -> bool:
        """True when ``value`` has the effect it has in Calico (no warning needed)."""
        if self.ok is None:
            return self.implemented
        if callable(self.ok):
            try:
                return bool(self.ok(value))
            except (TypeError, ValueError, AttributeError):
                return False
        return value in self.ok

    @property
    def partial(self) -> bool:
        """Implemented for some values only."""
        return self.implemented and self.ok is not None

    def status(self) -> str:
        """``implemented``, ``partly`` or ``not implemented``, as the doc shows it."""
        if self.partial:
            return "partly"
        return "implemented" if self.implemented else "not implemented"

    def honoured_doc(self) -> str:
        """The honoured values in words ('' when every or no value is)."""
        if self.ok is None:
            return ""
        if self.ok_doc:
            return self.ok_doc
        if callable(self.ok):
            return "some values"
        return ", ".join(_show(v) for v in self.ok)


def works(*tests: str, note: str = "", since: str = "") -> Support:
    """Implemented; ``tests`` are pytest node ids (``tests/unit/x.py::test_y``) showing the effect."""
    if not tests:
        raise ValueError("an implemented setting needs at least one test that shows its effect")
    return Support(True, tuple(tests), note, since=since)


def works_for(ok: tuple[Any, ...] | Callable[[Any], bool], *tests: str, note: str,
              ok_doc: str = "", sample: Any = _UNSET, since: str = "") -> Support:
    """Implemented for the values ``ok`` accepts; any other value is not (``note`` says why)."""
    if not tests:
        raise ValueError("an implemented setting needs at least one test that shows its effect")
    return Support(True, tuple(tests), note, ok, ok_doc, sample, since)


def missing(note: str, ok: tuple[Any, ...] | Callable[[Any], bool] | None = None, ok_doc: str = "",
            sample: Any = _UNSET, since: str = "") -> Support:
    """Not implemented (``note`` says what calicolab does instead); ``ok`` values need no warning."""
    return Support(False, (), note, ok, ok_doc, sample, since)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    return repr(value)


# ---------------------------------------------------------------------------
# fields of typed resources


@functools.cache
def json_fields(cls: type) -> list[tuple[str, str, Any]]:
    """``(attribute, JSON name, type)`` of each field of dataclass ``cls`` (the codec's naming)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.init:
            out.append((f.name, f.metadata.get("json") or _camel(f.name), hints[f.name]))
    return out


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _element(tp: Any) -> Any:
    """The dataclass inside ``tp`` (through Optional and list), or None."""
    for _ in range(4):
        if dataclasses.is_dataclass(tp):
            return tp
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) is list and args:
            tp = args[0]
        elif len(args) == 1:
            tp = args[0]
        else:
            return None
    return None


def field_paths(cls: type, prefix: str = "") -> Iterator[tuple[str, bool]]:
    """Every field path of dataclass ``cls`` (``spec.bgp.asNumber``), each with a flag
    telling whether the field holds a dataclass (its own fields follow it)."""
    for _attr, jname, tp in json_fields(cls):
        path = f"{prefix}{jname}"
        inner = _element(tp)
        yield path, inner is not None
        if inner is not None:
            yield from field_paths(inner, path + ".")


def lookup(table: Mapping[str, Support], path: str) -> tuple[str, Support] | None:
    """The entry for ``path``: its own, else the nearest not-implemented ancestor's
    (a setting that is not implemented is not implemented in every part)."""
    if path in table:
        return path, table[path]
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        anc = ".".join(parts[:i])
        if anc in table and not table[anc].implemented:
            return anc, table[anc]
    return None


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and len(value) == 0)


@dataclass(frozen=True)
class Finding:
    """A setting in effect that calicolab does not honour."""

    subject: str  # "IPPool(v6)", "env", "netconf"
    path: str  # "spec.cidr", "FELIX_BPFENABLED"
    value: Any
    support: Support

    def message(self) -> str:
        """One line naming the setting, e.g. for calicoctl's warning."""
        value = _show(self.value) if not isinstance(self.value, dict | list) else _compact(self.value)
        why = self.support.note or "not implemented"
        return f"{self.subject} {self.path}={value} has no effect in calicolab: {why} (see {DOC})"

    def brief(self) -> str:
        """``path=value`` for one-line summaries (``calicolab status``)."""
        value = _show(self.value) if not isinstance(self.value, dict | list) else _compact(self.value)
        return f"{self.path}={value}"


def prune(value: Any) -> Any:
    """``value`` without empty mappings and lists inside it (``{"a": 1, "b": {}}`` -> ``{"a": 1}``)."""
    if isinstance(value, dict):
        out = {k: prune(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if not _empty(v)}
    if isinstance(value, list):
        return [prune(v) for v in value]
    return value


def _compact(value: Any) -> str:
    import json

    text = json.dumps(prune(value), separators=(",", ":"), sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def findings(subject: str, doc: Mapping[str, Any], table: Mapping[str, Support],
             roots: tuple[str, ...] = ("spec",)) -> list[Finding]:
    """What ``doc`` (a calicoctl-shaped document) sets to values calicolab does not honour.

    Walks the document: a field with an entry is judged by it as a whole (and, when it
    is implemented and honoured, its parts are judged in turn); the entries of a list
    are judged field by field. Empty values (absent, "", [], {}) set nothing.
    """
    out: list[Finding] = []

    def walk(path: str, value: Any) -> None:
        if _empty(value):
            return
        entry = table.get(path)
        if entry is not None:
            if not entry.honours(value):
                out.append(Finding(subject, path, value, entry))
                return
            if not entry.implemented:
                return  # honoured as a whole (e.g. bpfEnabled: false)
        parts = value if isinstance(value, list) else [value]
        for part in parts:
            if isinstance(part, dict):
                for k, v in part.items():
                    walk(f"{path}.{k}", v)

    for root in roots:
        walk(root, doc.get(root))
    return out
