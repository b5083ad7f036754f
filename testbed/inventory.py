"""``docs/inventory.md``, generated from the registries in the code: does calicolab do X?

Sources (each next to what it describes):

* Calico v3.28.1's kinds and their fields: :mod:`datastore.calico_api`;
* what calicolab does with each field of a kind it stores: ``INVENTORY`` of the kind's
  class in :mod:`datastore.resources` (metadata: ``METADATA_INVENTORY``); the kinds it
  does not store: ``NOT_STORED``;
* calico-node's environment: :mod:`agent.envvars`;
* the CNI netconf keys: ``NETCONF_KEYS`` in :mod:`cni.netconf`;
* the topology fields: ``TOPOLOGY_FIELDS`` in :mod:`testbed.lab.topology`.

``python -m testbed.inventory`` rewrites the doc; ``--check`` exits 1 when it is stale.
:func:`problems` lists every gap between the registries and the code (a field without an
entry, an entry without a field, a Calico field a stored kind does not accept); the unit
tests require it to be empty.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import sys
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from datastore import calico_api
from datastore.inventory import Support, field_paths, lookup

REPO = Path(__file__).resolve().parent.parent
DOC_PATH = REPO / "docs" / "inventory.md"


@dataclass(frozen=True)
class Row:
    """One setting of the inventory."""

    path: str
    support: Support | None  # None: no entry (a gap, reported by problems())
    covered_by: str = ""  # the entry's path when it is an enclosing field's
    calico: bool = True  # a field of Calico v3.28.1 (False: calicolab's own or a later release's)
    felix_field: str = ""  # for a FELIX_* variable: the FelixConfiguration field it sets


# ---------------------------------------------------------------------------
# resource kinds


def _our_paths(cls: type) -> list[tuple[str, bool]]:
    """Field paths of a stored kind (spec, and status when modelled)."""
    out: list[tuple[str, bool]] = []
    spec = getattr(cls, "Spec", dict)
    if spec is not dict:
        out += list(field_paths(spec, "spec."))
    if "status" in getattr(cls, "__dataclass_fields__", {}):
        status_tp = cls.__dataclass_fields__["status"].type
        out.append(("status", False if "dict" in str(status_tp) else True))
    return out


def kind_rows(cls: type) -> list[Row]:
    """Every field of a stored kind: ours (each with its entry) and Calico's fields we keep
    inside an untyped field (with the enclosing field's entry)."""
    table = cls.INVENTORY
    calico_paths = set(calico_api.KINDS.get(cls.KIND, ()))
    rows: list[Row] = []
    seen: set[str] = set()
    for path, is_struct in _our_paths(cls):
        seen.add(path)
        if is_struct and path not in table:
            continue  # a struct: its fields are listed
        found = lookup(table, path)
        rows.append(Row(path, found[1] if found else None, found[0] if found and found[0] != path else "",
                        path in calico_paths))
    order = {r.path: float(i) for i, r in enumerate(rows)}
    for j, path in enumerate(calico_api.KINDS.get(cls.KIND, ())):
        if path in seen or path in calico_api.REFUSED_BY_CALICO.get(cls.KIND, ()):
            continue
        anc = _enclosing(path, seen)
        found = (anc, table[anc]) if anc and anc in table else None
        rows.append(Row(path, found[1] if found else None, anc or "", True))
        order[path] = order.get(anc, float(len(order))) + 0.001 * (j + 1)
    return sorted(rows, key=lambda r: order[r.path])


def _enclosing(path: str, paths: Iterable[str]) -> str:
    """The longest of ``paths`` that encloses ``path`` ('' if none)."""
    best = ""
    for p in paths:
        if path.startswith(p + ".") and len(p) > len(best):
            best = p
    return best


def metadata_rows() -> list[Row]:
    """The metadata fields every kind has."""
    from datastore.resources import METADATA_INVENTORY, Metadata

    return [Row(p, METADATA_INVENTORY.get(p), "", True) for p, _ in field_paths(Metadata, "metadata.")]


def not_stored_rows(kind: str) -> list[Row]:
    """Fields of a Calico kind calicolab does not store (all not implemented)."""
    from datastore.resources import NOT_STORED

    support = Support(False, (), f"kind not implemented: {NOT_STORED[kind]}")
    return [Row(p, support) for p in calico_api.KINDS[kind]]


# ---------------------------------------------------------------------------
# the other registries


def env_rows() -> list[tuple[str, Row]]:
    """(group, row) for every calico-node environment variable."""
    from agent.envvars import REGISTRY

    return [(v.group, Row(v.name, v.support, felix_field=v.felix_field)) for v in REGISTRY.values()]


def netconf_rows() -> list[Row]:
    """Every CNI netconf key."""
    from cni.netconf import NETCONF_KEYS

    return [Row(k, s) for k, s in NETCONF_KEYS.items()]


def annotation_rows() -> list[Row]:
    """Every pod/namespace annotation Calico's CNI plugin reads."""
    from cni.k8s import ANNOTATIONS

    return [Row(k, s) for k, s in ANNOTATIONS.items()]


def k8s_kind_rows() -> list[Row]:
    """Kubernetes kinds Calico acts on that are listed in the inventory."""
    from testbed.k8s.support import CALICO_SUPPORT

    return [Row(k, s) for k, s in CALICO_SUPPORT.items()]


def topology_rows() -> list[Row]:
    """Every topology field."""
    from testbed.lab.topology import TOPOLOGY_FIELDS

    return [Row(k, s, calico=False) for k, s in TOPOLOGY_FIELDS.items()]


# ---------------------------------------------------------------------------
# gaps


def problems() -> list[str]:
    """Everything the registries miss or get wrong; empty when the inventory is complete."""
    from datastore.resources import KINDS, METADATA_INVENTORY, NOT_STORED, Metadata

    out: list[str] = []
    for kind, cls in KINDS.items():
        ours = {p for p, _ in _our_paths(cls)}
        for row in kind_rows(cls):
            if row.support is None:
                what = "field" if row.path in ours else "Calico v3.28.1 field (not accepted by calicolab)"
                out.append(f"{kind} {row.path}: {what} without an inventory entry "
                           f"(add it to {cls.__name__}.INVENTORY in datastore/resources.py)")
        for path in cls.INVENTORY:
            if path not in ours:
                out.append(f"{kind} {path}: inventory entry for a field {kind} does not have")
        refused = calico_api.REFUSED_BY_CALICO.get(kind, ())
        for path in refused:
            if path in ours:
                out.append(f"{kind} {path}: Calico refuses it, calicolab accepts it")
    for kind in calico_api.KINDS:
        if kind not in KINDS and kind not in NOT_STORED:
            out.append(f"{kind}: a Calico v3.28.1 kind neither stored nor listed in NOT_STORED")
    for kind in NOT_STORED:
        if kind in KINDS:
            out.append(f"{kind}: stored, but still listed in NOT_STORED")
    meta = {p for p, _ in field_paths(Metadata, "metadata.")}
    out += [f"{p}: metadata field without an inventory entry" for p in sorted(meta - set(METADATA_INVENTORY))]
    out += [f"{p}: inventory entry for a metadata field that does not exist"
            for p in sorted(set(METADATA_INVENTORY) - meta)]
    for group, rows in (("environment", [r for _, r in env_rows()]), ("netconf", netconf_rows()),
                        ("annotations", annotation_rows()), ("kubernetes", k8s_kind_rows()),
                        ("topology", topology_rows()), ("resources", _all_resource_supports())):
        for row in rows:
            s = row.support
            if s is not None and s.implemented and not s.tests:
                out.append(f"{group} {row.path}: implemented without a test that shows it")
    return out + code_problems()


# -- reads in the code -------------------------------------------------------------

#: calico-node's code (kube-controllers and Typha are other components, with their own
#: settings; agent/envvars.py is the registry itself)
CALICO_NODE_SOURCES = ("agent", "datastore/client.py", "datastore/typha.py")
_NOT_CALICO_NODE = ("agent/kubecontrollers", "agent/typha", "agent/envvars.py")
_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def calico_node_files() -> list[Path]:
    """The source files of calico-node whose environment reads must be registered."""
    out: list[Path] = []
    for src in CALICO_NODE_SOURCES:
        p = REPO / src
        out += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return [f for f in out if not str(f.relative_to(REPO)).startswith(_NOT_CALICO_NODE)]


def _is_env(node: ast.AST) -> bool:
    if isinstance(node, ast.Name):
        return node.id in ("env", "environ")
    return isinstance(node, ast.Attribute) and node.attr in ("env", "environ")


def env_reads(source: str, where: str = "") -> tuple[set[str], list[str]]:
    """Environment variables ``source`` reads: (literal names, reads whose name is not a literal).

    A read is ``env.get(X)``, ``env[X]``, ``os.environ...``, ``os.getenv(X)``, or a call that
    passes ``env`` along with an upper-case string literal (``_env_bool(env, "X", ...)``); a
    module-level string constant counts as a literal."""
    tree = ast.parse(source)
    consts = {n.targets[0].id: n.value.value for n in tree.body
              if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)
              and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)}

    def lit(node: ast.AST) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):
            return consts.get(node.id)
        return None

    names: set[str] = set()
    dynamic: list[str] = []

    def take(key: ast.AST | None, node: ast.AST) -> None:
        name = lit(key) if key is not None else None
        if name is None:
            dynamic.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
        else:
            names.add(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr in ("get", "pop", "setdefault") and _is_env(f.value):
                take(node.args[0] if node.args else None, node)
            elif isinstance(f, ast.Attribute) and f.attr == "getenv":
                take(node.args[0] if node.args else None, node)
            if any(_is_env(a) for a in node.args):
                for a in node.args:
                    name = lit(a)
                    if name and _ENV_NAME.match(name):
                        names.add(name)
        elif isinstance(node, ast.Subscript) and _is_env(node.value) and isinstance(node.ctx, ast.Load):
            take(node.slice, node)
    return names, dynamic


def netconf_reads(source: str) -> set[str]:
    """Netconf keys ``source`` reads: ``conf.get("k")``/``raw.get("k")``/... and the key
    argument of the parser's helpers (``_str(conf, "k")``, ``_bool(raw, "k", ...)``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr == "get" and isinstance(f.value, ast.Name) \
                and f.value.id in ("conf", "raw", "policy", "container") and node.args:
            key = node.args[0]
        elif isinstance(f, ast.Name) and f.id in ("_str", "_bool") and len(node.args) >= 2:
            key = node.args[1]
        else:
            continue
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            out.add(key.value)
    return out


def code_problems() -> list[str]:
    """Environment variables and netconf keys the code reads without an inventory entry."""
    from agent.envvars import REGISTRY
    from cni.netconf import NETCONF_KEYS

    out: list[str] = []
    for f in calico_node_files():
        rel = str(f.relative_to(REPO))
        names, dynamic = env_reads(f.read_text(), rel)
        out += [f"{rel}: reads {n} from the environment without an entry in agent/envvars.py"
                for n in sorted(names - set(REGISTRY))]
        out += [f"{d} (read a variable by a literal name, or through agent.envvars.get)" for d in dynamic]
    from cni.k8s import ANNOTATIONS

    for f in sorted((REPO / "cni").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and node.value.startswith("cni.projectcalico.org/") and node.value not in ANNOTATIONS:
                out.append(f"cni/{f.name}: reads annotation {node.value} without an entry in cni.k8s.ANNOTATIONS")
    leaves = {part for k in NETCONF_KEYS for part in k.split(".")} | set(NETCONF_KEYS)
    for key in sorted(netconf_reads((REPO / "cni" / "netconf.py").read_text()) - leaves):
        out.append(f"cni/netconf.py: reads netconf key {key!r} without an entry in NETCONF_KEYS")
    return out


def _all_resource_supports() -> list[Row]:
    from datastore.resources import KINDS

    return [r for cls in KINDS.values() for r in kind_rows(cls)] + metadata_rows()


def linked_tests() -> set[str]:
    """Every test node id the inventory links."""
    rows = (_all_resource_supports() + [r for _, r in env_rows()] + netconf_rows() + annotation_rows()
            + k8s_kind_rows() + topology_rows())
    return {t for r in rows if r.support is not None for t in r.support.tests}


def unimplemented_samples() -> list[tuple[str, str, object]]:
    """(kind, field path, value) for every not-implemented or partly implemented field of a
    stored kind, with a value calicolab does not honour (the walking test applies each)."""
    from datastore.resources import KINDS

    out = []
    for kind, cls in KINDS.items():
        for path, support in cls.INVENTORY.items():
            if support.implemented and support.ok is None:
                continue
            out.append((kind, path, sample_for(cls, path, support)))
    return out


def sample_for(cls: type, path: str, support: Support) -> object:
    """A value for ``path`` that ``support`` does not honour (its ``sample``, else one made from the type)."""
    from datastore.inventory import _UNSET, json_fields

    if support.sample is not _UNSET:
        return support.sample
    if not path.startswith("spec."):
        raise ValueError(f"{cls.KIND} {path}: give the entry a sample (only spec fields get one made)")
    tp: object = cls.Spec
    parts = path.split(".")[1:]
    for part in parts:
        tp = _strip(tp)
        tp = next(t for _a, j, t in json_fields(tp) if j == part)
    candidates = _candidates(tp)
    for value in candidates:
        if not support.honours(value):
            return value
    raise ValueError(f"{cls.KIND} {path}: no sample value that is not honoured; give the entry a sample")


def place(cls: type, doc: dict, path: str, value: object) -> dict:
    """Set field ``path`` of calicoctl document ``doc`` (of kind ``cls``) to ``value``, making
    the mappings and one-entry lists on the way; returns ``doc``."""
    from datastore.inventory import json_fields

    parts = path.split(".")
    if len(parts) == 1:
        doc[path] = value
        return doc
    node = doc.setdefault(parts[0], {})
    tp: object = cls.Spec
    for part in parts[1:-1]:
        tp = next(t for _a, j, t in json_fields(_strip(tp)) if j == part)
        inner = tp
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        if typing.get_origin(inner) is list:
            from datastore.rules import Rule

            # a policy rule needs its action to be valid
            node[part] = [{"action": "Allow"} if typing.get_args(inner) == (Rule,) else {}]
            node = node[part][0]
        else:
            node = node.setdefault(part, {})
    node[parts[-1]] = value
    return doc


def _strip(tp: object) -> object:
    for _ in range(4):
        if dataclasses.is_dataclass(tp):
            return tp
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0]
    return tp


def _candidates(tp: object) -> list[object]:
    base = tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        base = [a for a in typing.get_args(tp) if a is not type(None)][0]
    origin = typing.get_origin(base)
    if base is bool:
        return [True, False]
    if base is int:
        return [7, 1]
    if base is str:
        return ["7s", "x"]
    if origin is list:
        (item,) = typing.get_args(base)
        if dataclasses.is_dataclass(item):
            return [[_example(item)]]
        return [[c] for c in _candidates(item)]
    if origin is dict:
        return [{"k": "v"}]
    if dataclasses.is_dataclass(base):
        return [_example(base)]
    return [{"k": "v"}, "x"]


def _example(cls: type) -> dict:
    from datastore.inventory import json_fields

    out = {}
    for _a, j, t in json_fields(cls):
        out[j] = _candidates(t)[0]
    return out


# ---------------------------------------------------------------------------
# rendering


def _status(row: Row) -> str:
    s = row.support
    if s is None:
        return "**missing entry**"
    text = s.status()
    if row.covered_by:
        return text
    if s.partial:
        text = f"partly: {s.honoured_doc()}"
    elif not s.implemented and s.ok is not None:
        text = f"not implemented (as Calico with {s.honoured_doc()})"
    return text


def _tests(row: Row) -> str:
    if row.support is None or not row.support.tests:
        return ""
    links = []
    for t in row.support.tests:
        file, _, name = t.partition("::")
        links.append(f"[`{name}`](../{file})")
    return ", ".join(links)


def _notes(row: Row) -> str:
    s = row.support
    parts = []
    if row.covered_by:
        parts.append(f"as `{row.covered_by}`")
    if row.felix_field:
        parts.append(f"FelixConfiguration `spec.{row.felix_field}`")
    if s is not None and s.since:
        parts.append(f"Calico {s.since}+")
    elif not row.calico:
        parts.append("not in Calico v3.28.1")
    if s is not None and s.note and not row.covered_by:
        parts.append(s.note)
    return "; ".join(parts).replace("|", "\\|")


def _table(rows: Iterable[Row], first: str = "Field") -> list[str]:
    out = [f"| {first} | Status | Notes | Shown by |", "|---|---|---|---|"]
    for r in rows:
        out.append(f"| `{r.path}` | {_status(r)} | {_notes(r)} | {_tests(r)} |")
    return out


def counts(rows: Iterable[Row]) -> dict[str, int]:
    """How many rows are implemented, partly implemented, not implemented."""
    c = {"implemented": 0, "partly": 0, "not implemented": 0, "missing entry": 0}
    for r in rows:
        c["missing entry" if r.support is None else r.support.status()] += 1
    return c


def summary() -> dict[str, dict[str, int]]:
    """Counts per section (the doc's first table, and the report's numbers)."""
    from datastore.resources import KINDS, NOT_STORED

    stored = [r for cls in KINDS.values() for r in kind_rows(cls)]
    return {
        f"fields of the {len(KINDS)} stored kinds": counts(stored),
        "metadata fields (every kind)": counts(metadata_rows()),
        f"fields of the {len(NOT_STORED)} kinds not stored": counts(r for k in NOT_STORED for r in not_stored_rows(k)),
        "calico-node environment variables": counts(r for _, r in env_rows()),
        "CNI netconf keys": counts(netconf_rows()),
        "CNI pod and namespace annotations": counts(annotation_rows()),
        "Kubernetes kinds Calico acts on (listed)": counts(k8s_kind_rows()),
        "topology fields": counts(topology_rows()),
    }


def render() -> str:
    """The whole of docs/inventory.md."""
    from datastore.resources import KINDS, NOT_STORED

    lines = [
        "# Inventory: what calicolab implements",
        "",
        "<!-- Generated by `python -m testbed.inventory` from the registries in the code; do not edit. -->",
        "",
        "Every setting calicolab takes, each **implemented**, **partly** implemented (for the values",
        "named) or **not implemented**, with the tests that show the effect of what is implemented:",
        f"every field of every Calico {calico_api.VERSION} resource kind (the kinds calicolab stores and",
        "the ones it does not), every calico-node environment variable Calico documents, every CNI",
        "netconf key and pod annotation Calico reads, and every field of a lab topology.",
        "",
        "What happens to what is not implemented:",
        "",
        "- `calicoctl create|replace|apply` stores it (Calico's API accepts it) and prints",
        "  `Warning: <Kind>(<name>) <field>=<value> has no effect in calicolab: <why>` on stderr, exit 0;",
        "  a kind calicolab does not store is refused by name (nothing is written).",
        "- calico-node logs the settings in effect on its node that have no effect, once at start and",
        "  again on every change, and serves them in `/status`; `calicolab status` lists them per node.",
        "- The CNI plugin refuses a netconf key or pod annotation set to a value it cannot honour,",
        "  and the topology validator a topology field, naming the key or field.",
        "- A Kubernetes NetworkPolicy is stored with the API server's `Warning:` (kubectl prints it).",
        "",
        "A value listed after \"as Calico with\" is what calicolab does anyway, so it draws no warning",
        "(e.g. `bpfEnabled: false`). \"as `x`\" means the field is part of `x` and shares its entry.",
        "The registries: `INVENTORY` of each kind in `datastore/resources.py` (Calico's field lists in",
        "`datastore/calico_api.py`), `agent/envvars.py`, `NETCONF_KEYS` in `cni/netconf.py`,",
        "`TOPOLOGY_FIELDS` in `testbed/lab/topology.py`.",
        "",
        "## Summary",
        "",
        "| Settings | Implemented | Partly | Not implemented |",
        "|---|---|---|---|",
    ]
    for name, c in summary().items():
        lines.append(f"| {name} | {c['implemented']} | {c['partly']} | {c['not implemented']} |")
    lines += ["", f"## Calico {calico_api.VERSION} kinds", "", "| Kind | Stored | Fields |", "|---|---|---|"]
    for kind in sorted(calico_api.KINDS):
        if kind in KINDS:
            c = counts(kind_rows(KINDS[kind]))
            lines.append(f"| [{kind}](#{kind.lower()}) | yes | {c['implemented']} implemented, "
                         f"{c['partly']} partly, {c['not implemented']} not |")
        else:
            lines.append(f"| [{kind}](#{kind.lower()}) | **no**: {NOT_STORED[kind]} | "
                         f"{len(calico_api.KINDS[kind])}, none implemented |")
    lines += ["", "### Metadata (every kind)", "", *_table(metadata_rows())]
    for kind in sorted(calico_api.KINDS):
        lines += ["", f"### {kind}", ""]
        if kind in KINDS:
            lines += _table(kind_rows(KINDS[kind]))
        else:
            lines += [f"Not stored: calicoctl refuses it ({NOT_STORED[kind]}).", "",
                      *_table(not_stored_rows(kind))]
    lines += ["", "## calico-node environment", "",
              "`FELIX_*` variables of FelixConfiguration fields take Felix's parameter name (e.g.",
              "`ipipMTU` is `FELIX_IPINIPMTU`); the field is named in Notes.", ""]
    groups: dict[str, list[Row]] = {}
    for group, row in env_rows():
        groups.setdefault(group, []).append(row)
    for group, rows in groups.items():
        lines += [f"### {group}", "", *_table(rows, "Variable"), ""]
    lines += ["## CNI netconf keys", "",
              "Calico's keys (`cni-plugin/pkg/types/types.go`, nested keys dotted) and the CNI spec's "
              "keys the plugin reads.", "", *_table(netconf_rows(), "Key"), ""]
    lines += ["## CNI pod and namespace annotations", "",
              "The `cni.projectcalico.org/*` annotations Calico's CNI plugin reads; ADD refuses one "
              "calicolab cannot honour, naming it.", "", *_table(annotation_rows(), "Annotation"), ""]
    lines += ["## Kubernetes kinds", "",
              "Kubernetes objects Calico acts on that calicolab does not: the API server (and kubectl) "
              "answer with a `Warning:` naming the object.", "", *_table(k8s_kind_rows(), "Kind"), ""]
    lines += ["## Topology fields", "", "Fields of `topologies/*.yaml` (see `testbed/lab/topology.py`).", "",
              *_table(topology_rows()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Write docs/inventory.md (or, with --check, exit 1 if it is out of date)."""
    ap = argparse.ArgumentParser(prog="python -m testbed.inventory", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/inventory.md is out of date")
    args = ap.parse_args(argv)
    gaps = problems()
    for g in gaps:
        print(f"inventory: {g}", file=sys.stderr)
    text = render()
    if args.check:
        current = DOC_PATH.read_text() if DOC_PATH.exists() else ""
        if current != text:
            print("docs/inventory.md is out of date: run python -m testbed.inventory", file=sys.stderr)
            return 1
        return 1 if gaps else 0
    DOC_PATH.write_text(text)
    print(f"wrote {DOC_PATH.relative_to(REPO)}")
    return 1 if gaps else 0


if __name__ == "__main__":
    sys.exit(main())


