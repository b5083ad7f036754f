"""``calicoctl create|replace|apply|delete|get``.

Every document of a file is parsed, defaulted and validated (including IPPool
overlap and immutability rules, and existence for create/replace/delete) before
the first write, so bad input writes nothing.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from typing import Any, TextIO

from datastore import errors
from datastore.resources import (
    K8S_POLICY_PREFIX,
    IPPool,
    Profile,
    Resource,
    from_document,
    resolve_kind,
    unimplemented,
)
from testbed.calicoctl.tables import tab_table

PAST = {"create": "created", "replace": "replaced", "apply": "applied", "delete": "deleted"}


class InputError(Exception):
    """A file that cannot be read or parsed."""


def read_documents(filename: str, stdin: TextIO | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Documents of a YAML/JSON file (``-`` = stdin) as ``(where, doc)``; Lists are expanded."""
    import yaml

    label = "stdin" if filename == "-" else filename
    try:
        if filename == "-":
            text = (stdin or sys.stdin).read()
        else:
            with open(filename) as fh:
                text = fh.read()
    except OSError as exc:
        raise InputError(f"cannot read {label}: {exc.strerror}") from None
    docs: list[Any]
    stripped = text.lstrip()
    try:
        if stripped.startswith(("{", "[")):
            decoder = json.JSONDecoder()
            docs, pos = [], 0
            while True:
                while pos < len(text) and text[pos].isspace():
                    pos += 1
                if pos >= len(text):
                    break
                doc, pos = decoder.raw_decode(text, pos)
                docs.extend(doc if isinstance(doc, list) else [doc])
        else:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except json.JSONDecodeError as exc:
        raise InputError(f"{label}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(f"{label}: invalid YAML{where}: {problem}") from None
    out: list[tuple[str, dict[str, Any]]] = []
    for i, doc in enumerate(docs, 1):
        where = f"{label}: document {i}: " if len(docs) > 1 else f"{label}: "
        if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List") and "items" in doc:
            for j, item in enumerate(doc.get("items") or [], 1):
                out.append((f"{label}: item {j}: ", item))
        else:
            out.append((where, doc))
    return out


def _load(filename: str, namespace: str | None) -> list[Resource]:
    objs = []
    for where, doc in read_documents(filename):
        obj = from_document(doc, where)
        if obj.NAMESPACED and not obj.metadata.namespace:
            obj.metadata.namespace = namespace or "default"
        objs.append(obj)
    if not objs:
        raise InputError(f"no resources found in {'stdin' if filename == '-' else filename}")
    return objs


class OperationNotSupported(errors.DatastoreError):
    """calicoctl refuses the operation on this object (Calico's ErrorOperationNotSupported)."""


def refuse_k8s_policy(obj: Resource, operation: str) -> None:
    """calicoctl does not create, change or delete the NetworkPolicies Calico converted from
    Kubernetes (``knp.default.*``): they are managed through the Kubernetes API."""
    if obj.KIND == "NetworkPolicy" and obj.metadata.name.startswith(K8S_POLICY_PREFIX):
        raise OperationNotSupported(
            f"operation {operation} is not supported on {obj.ident()}: kubernetes network policies must be "
            "managed through the kubernetes API")


def check_namespace(client: Any, obj: Resource) -> None:
    """A namespaced policy or network set must name a namespace that exists.

    In etcd mode Calico knows a Kubernetes namespace by its profile ``kns.<ns>``, which
    calico-kube-controllers' namespace controller keeps (calico.md section 6).
    """
    if obj.KIND not in ("NetworkPolicy", "NetworkSet"):
        return
    ns = obj.metadata.namespace or "default"
    try:
        client.get(Profile, f"kns.{ns}")
    except errors.NotFound:
        raise errors.ValidationError(
            f"{obj.ident()}.metadata.namespace",
            f"namespace {ns!r} does not exist (no Profile kns.{ns}: calico-kube-controllers' namespace "
            "controller writes one for every Kubernetes Namespace)") from None


def _preflight(client: Any, verb: str, objs: list[Resource], skip_exists: bool,
               skip_not_exists: bool) -> list[Resource]:
    """Validate everything before any write; returns the objects to act on."""
    todo = []
    pools_here: list[IPPool] = []
    seen: set[str] = set()
    for obj in objs:
        refuse_k8s_policy(obj, {"create": "create or apply", "apply": "create or apply",
                                "replace": "apply or replace"}.get(verb, verb))
        if verb != "delete":
            obj.apply_defaults()
            obj.validate()
            check_namespace(client, obj)
        key = obj.key()
        if key in seen:
            raise errors.ValidationError(f"{obj.ident()}.metadata.name", "appears twice in the input")
        seen.add(key)
        try:
            current = client.get(type(obj), obj.metadata.name, obj.metadata.namespace)
        except errors.NotFound:
            current = None
        if verb == "create" and current is not None:
            if skip_exists:
                continue
            raise errors.AlreadyExists(f"resource already exists: {obj.ident()}")
        if verb in ("replace", "delete") and current is None:
            if verb == "delete" and skip_not_exists:
                continue
            raise errors.NotFound(f"resource does not exist: {obj.ident()}")
        if isinstance(obj, IPPool) and verb != "delete":
            if current is not None:
                _check_immutable(current, obj)
            pools_here.append(obj)
        todo.append(obj)
    if pools_here:
        existing = {p.metadata.name: p for p in client.list(IPPool)}
        for i, pool in enumerate(pools_here):
            net = ipaddress.ip_network(pool.spec.cidr, strict=False)
            others = [(n, p) for n, p in existing.items() if n != pool.metadata.name]
            others += [(q.metadata.name, q) for q in pools_here[:i] if q.metadata.name != pool.metadata.name]
            for name, other in others:
                onet = ipaddress.ip_network(other.spec.cidr, strict=False)
                if onet.version == net.version and onet.overlaps(net):
                    raise errors.ValidationError(
                        f"{pool.ident()}.spec.cidr", f"{net} overlaps with IPPool {name!r} ({onet})")
    return todo


def _check_immutable(current: Resource, new: IPPool) -> None:
    assert isinstance(current, IPPool)
    if ipaddress.ip_network(current.spec.cidr) != ipaddress.ip_network(new.spec.cidr, strict=False):
        raise errors.ValidationError(f"{new.ident()}.spec.cidr", f"cannot be changed (is {current.spec.cidr})")
    if current.spec.block_size != new.spec.block_size:
        raise errors.ValidationError(f"{new.ident()}.spec.blockSize",
                                     f"cannot be changed (is {current.spec.block_size})")


def _delete(client: Any, cls: type[Resource], name: str, namespace: str | None) -> None:
    """Delete one object; an IPPool is first disabled and its block affinities released,
    as Calico's client does, so no new address comes from it while it goes away."""
    if cls is IPPool:
        from ipam import IPAM

        pool = client.get(IPPool, name)
        if not pool.spec.disabled:
            pool.spec.disabled = True
            client.update(pool)
        IPAM(client).release_pool_affinities(pool.spec.cidr)
    client.delete(cls, name, namespace)


def _summary(verb: str, objs: list[Resource]) -> str:
    kinds = {o.KIND for o in objs}
    if len(kinds) == 1:
        return f"Successfully {PAST[verb]} {len(objs)} '{next(iter(kinds))}' resource(s)\n"
    return f"Successfully {PAST[verb]} {len(objs)} resource(s)\n"


def modify(client: Any, verb: str, filename: str, namespace: str | None, out: TextIO, err: TextIO,
           skip_exists: bool = False, skip_not_exists: bool = False) -> int:
    """create / replace / apply / delete from a file."""
    try:
        objs = _load(filename, namespace)
    except InputError as exc:
        err.write(f"Failed to execute command: {exc}\n")
        return 1
    kind = objs[0].KIND if len({o.KIND for o in objs}) == 1 else "resource"
    try:
        todo = _preflight(client, verb, objs, skip_exists, skip_not_exists)
    except errors.DatastoreUnavailable:
        raise
    except errors.DatastoreError as exc:
        err.write(f"Failed to {verb} '{kind}' resource: {exc}\n")
        return 1
    done: list[Resource] = []
    for obj in todo:
        try:
            if verb == "create":
                client.create(obj)
            elif verb == "replace":
                obj.metadata.resource_version = None
                client.update(obj)
            elif verb == "apply":
                client.apply(obj)
            else:
                _delete(client, type(obj), obj.metadata.name, obj.metadata.namespace)
        except errors.DatastoreUnavailable:
            raise
        except errors.DatastoreError as exc:
            if done:
                out.write("Partial success: " + _summary(verb, done))
            err.write(f"Failed to {verb} '{obj.KIND}' resource: {exc}\n")
            return 1
        done.append(obj)
    out.write(_summary(verb, objs))
    if verb != "delete":
        warn_unimplemented(done, err)
    return 0


def warn_unimplemented(objs: list[Resource], err: TextIO, before: list[Resource] | None = None) -> int:
    """One ``Warning:`` line on stderr per stored field calicolab does not honour (issue 20):
    Calico's API accepts it, so it is stored, but the user must not believe it works.
    Settings already in ``before`` (the objects as they were, for patch) are not repeated.
    Returns the number of warnings."""
    known = {f.message() for obj in before or [] for f in unimplemented(obj)}
    count = 0
    for obj in objs:
        for finding in unimplemented(obj):
            if finding.message() not in known:
                err.write(f"Warning: {finding.message()}\n")
                count += 1
    return count


def delete_named(client: Any, kind: str, names: list[str], namespace: str | None, out: TextIO,
                 err: TextIO, skip_not_exists: bool) -> int:
    """``calicoctl delete KIND NAME...``."""
    cls = resolve_kind(kind)
    ns = (namespace or "default") if cls.NAMESPACED else None
    for name in names:
        try:
            refuse_k8s_policy(client.get(cls, name, ns), "delete")
        except OperationNotSupported as exc:
            err.write(f"Failed to delete '{cls.KIND}' resource: {exc}\n")
            return 1
        except errors.NotFound:
            if skip_not_exists:
                continue
            err.write(f"Failed to delete '{cls.KIND}' resource: resource does not exist: "
                      f"{cls.KIND}({(ns + '/') if ns else ''}{name})\n")
            return 1
    deleted = 0
    for name in names:
        try:
            _delete(client, cls, name, ns)
            deleted += 1
        except errors.NotFound:
            if not skip_not_exists:
                raise
    out.write(f"Successfully deleted {deleted} '{cls.KIND}' resource(s)\n")
    return 0


# ---------------------------------------------------------------------------
# get


def dump_yaml(payload: Any) -> str:
    """YAML as calicoctl (sigs.k8s.io/yaml) prints it: sorted keys, block style,
    strings that need quoting in double quotes (``resourceVersion: "459"``)."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        def choose_scalar_style(self):  # noqa: ANN202
            style = super().choose_scalar_style()
            return '"' if style == "'" else style

    return yaml.dump(payload, Dumper=_Dumper, default_flow_style=False, sort_keys=True, width=1 << 16)


def _global_as(client: Any) -> str:
    try:
        cfg = client.get("BGPConfiguration", "default").to_dict().get("spec", {})
    except errors.NotFound:
        cfg = {}
    return str(cfg.get("asNumber") or 64512)


def table_for(kind: str, docs: list[dict[str, Any]], wide: bool, all_ns: bool,
              global_as: str = "64512") -> str:
    """calicoctl's ``-o ps`` / ``-o wide`` table for a kind."""
    def s(d: dict[str, Any]) -> dict[str, Any]:
        return d.get("spec") or {}

    def name(d: dict[str, Any]) -> str:
        return (d.get("metadata") or {}).get("name", "")

    def b(v: Any) -> str:
        return "true" if v else "false"

    if kind == "IPPool":
        if wide:
            header = ["NAME", "CIDR", "NAT", "IPIPMODE", "VXLANMODE", "DISABLED", "DISABLEBGPEXPORT", "SELECTOR"]
            rows = [[name(d), s(d).get("cidr", ""), b(s(d).get("natOutgoing")), s(d).get("ipipMode", "Never"),
                     s(d).get("vxlanMode", "Never"), b(s(d).get("disabled")), b(s(d).get("disableBGPExport")),
                     s(d).get("nodeSelector", "all()")] for d in docs]
        else:
            header = ["NAME", "CIDR", "SELECTOR"]
            rows = [[name(d), s(d).get("cidr", ""), s(d).get("nodeSelector", "all()")] for d in docs]
    elif kind == "Node":
        if wide:
            header = ["NAME", "ASN", "IPV4", "IPV6"]
            rows = []
            for d in docs:
                bgp = s(d).get("bgp") or {}
                asn = str(bgp["asNumber"]) if bgp.get("asNumber") else f"({global_as})"
                rows.append([name(d), asn if bgp else "", bgp.get("ipv4Address", ""), bgp.get("ipv6Address", "")])
        else:
            header, rows = ["NAME"], [[name(d)] for d in docs]
    elif kind == "WorkloadEndpoint":
        def wl(d: dict[str, Any]) -> str:
            return s(d).get("pod") or s(d).get("workload") or ""

        nets = [",".join(s(d).get("ipNetworks") or []) for d in docs]
        if wide:
            header = ["NAME", "WORKLOAD", "NODE", "NETWORKS", "INTERFACE", "PROFILES", "NATS"]
            rows = [[name(d), wl(d), s(d).get("node", ""), n, s(d).get("interfaceName", ""),
                     ",".join(s(d).get("profiles") or []),
                     ",".join(f"{x.get('internalIP')}->{x.get('externalIP')}" for x in s(d).get("ipNATs") or [])]
                    for d, n in zip(docs, nets, strict=True)]
        else:
            header = ["WORKLOAD", "NODE", "NETWORKS", "INTERFACE"]
            rows = [[wl(d), s(d).get("node", ""), n, s(d).get("interfaceName", "")]
                    for d, n in zip(docs, nets, strict=True)]
        if all_ns:
            header = ["NAMESPACE", *header]
            rows = [[(d.get("metadata") or {}).get("namespace", ""), *r] for d, r in zip(docs, rows, strict=True)]
    elif kind == "BGPPeer":
        header = ["NAME", "PEERIP", "NODE", "ASN"]
        rows = [[name(d), s(d).get("peerIP", ""), s(d).get("node") or
                 (s(d).get("nodeSelector") if s(d).get("nodeSelector") else "(global)"),
                 str(s(d).get("asNumber", ""))] for d in docs]
    elif kind == "BGPConfiguration":
        header = ["NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER"]
        rows = []
        for d in docs:
            sp = s(d)
            mesh = sp.get("nodeToNodeMeshEnabled")
            rows.append([name(d), sp.get("logSeverityScreen", "Info"),
                         "" if mesh is None and name(d) != "default" else b(True if mesh is None else mesh),
                         str(sp.get("asNumber", "")) if sp.get("asNumber") else
                         ("64512" if name(d) == "default" else "")])
    elif kind in ("NetworkPolicy", "GlobalNetworkPolicy"):
        def order(d: dict[str, Any]) -> str:
            o = s(d).get("order")
            return "<nil>" if o is None else (f"{o:g}" if isinstance(o, float) else str(o))

        if wide:
            header = ["NAME", "ORDER", "SELECTOR"]
            rows = [[name(d), order(d), s(d).get("selector", "")] for d in docs]
        else:
            header, rows = ["NAME"], [[name(d)] for d in docs]
        if all_ns and kind == "NetworkPolicy":
            header = ["NAMESPACE", *header]
            rows = [[(d.get("metadata") or {}).get("namespace", ""), *r] for d, r in zip(docs, rows, strict=True)]
    elif kind in ("NetworkSet", "GlobalNetworkSet"):
        def nets(d: dict[str, Any]) -> str:
            text = ",".join(s(d).get("nets") or [])
            return text if len(text) <= 80 else text[:77] + "..."

        if wide:
            header, rows = ["NAME", "NETS"], [[name(d), nets(d)] for d in docs]
        else:
            header, rows = ["NAME"], [[name(d)] for d in docs]
        if all_ns and kind == "NetworkSet":
            header = ["NAMESPACE", *header]
            rows = [[(d.get("metadata") or {}).get("namespace", ""), *r] for d, r in zip(docs, rows, strict=True)]
    elif kind == "Profile":
        if wide:
            header = ["NAME", "LABELS"]
            rows = [[name(d), ",".join(sorted(f"{k}={v}" for k, v in (s(d).get("labelsToApply") or {}).items()))]
                    for d in docs]
        else:
            header, rows = ["NAME"], [[name(d)] for d in docs]
    elif kind == "IPAMBlock":
        header = ["NAME", "CIDR"]
        rows = [[name(d), s(d).get("cidr", "")] for d in docs]
    elif kind == "BlockAffinity":
        header = ["NAME", "NODE", "CIDR", "STATE"]
        rows = [[name(d), s(d).get("node", ""), s(d).get("cidr", ""), s(d).get("state", "")] for d in docs]
    else:
        header, rows = ["NAME"], [[name(d)] for d in docs]
    return tab_table(header, rows)


def printed(obj: Resource) -> dict[str, Any]:
    """The document calicoctl prints for ``obj``: a kind with a status (Node) always shows one,
    ``status: {}`` when nothing is set, as Go marshals Calico's status struct (``omitempty``
    does not drop a struct). In etcd mode nothing writes a Node's status, so that is what
    ``calicoctl get node -o yaml`` shows there."""
    doc = obj.to_dict()
    if hasattr(type(obj), "status"):
        doc.setdefault("status", {})
    return doc


def get(client: Any, kind: str, names: list[str], output: str, namespace: str | None, all_ns: bool,
        out: TextIO, err: TextIO) -> int:
    """``calicoctl get KIND [NAME...] [-o ps|wide|yaml|json]``."""
    if output not in ("ps", "wide", "yaml", "json"):
        err.write(f"Failed to execute command: unrecognized output format '{output}' "
                  "(use ps, wide, yaml or json)\n")
        return 1
    cls = resolve_kind(kind)
    ns = None if (all_ns or not cls.NAMESPACED) else (namespace or "default")
    if names:
        objs = []
        for n in names:
            try:
                objs.append(client.get(cls, n, ns if cls.NAMESPACED else None))
            except errors.NotFound:
                where = f"{ns}/" if cls.NAMESPACED and ns else ""
                err.write(f"Failed to get resources: resource does not exist: {cls.KIND}({where}{n})\n")
                return 1
        rev = None
    else:
        objs, rev = client.list_with_revision(cls, ns)
    docs = [printed(o) for o in objs]
    if output in ("yaml", "json"):
        if names and len(docs) == 1:
            payload: Any = docs[0]
        else:
            payload = {"apiVersion": "projectcalico.org/v3", "items": docs,
                       "kind": f"{cls.KIND}List",
                       "metadata": {"resourceVersion": str(rev)} if rev is not None else {}}
        if output == "json":
            out.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        else:
            out.write(dump_yaml(payload))
        return 0
    global_as = _global_as(client) if cls.KIND == "Node" and output == "wide" else "64512"
    out.write(table_for(cls.KIND, docs, output == "wide", all_ns and cls.NAMESPACED, global_as))
    return 0


def get_from_file(client: Any, filename: str, namespace: str | None, output: str, out: TextIO,
                  err: TextIO) -> int:
    """``calicoctl get -f FILE``: the stored versions of the file's resources."""
    found = []
    for obj in _load(filename, namespace):
        try:
            found.append(client.get(type(obj), obj.metadata.name, obj.metadata.namespace))
        except errors.NotFound:
            err.write(f"Failed to get resources: resource does not exist: {obj.ident()}\n")
            return 1
    docs = [printed(o) for o in found]
    if output == "json":
        out.write(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2, sort_keys=True) + "\n")
    elif output == "yaml":
        out.write("---\n".join(dump_yaml(d) for d in docs))
    else:
        for kind in dict.fromkeys(o.KIND for o in found):
            out.write(table_for(kind, [d for d in docs if d["kind"] == kind], output == "wide", False))
    return 0


def run(client: Any, args: Any, out: TextIO, err: TextIO) -> int:
    """Dispatch a parsed resource command."""
    verb = args.command
    if verb == "get":
        if args.filename:
            return get_from_file(client, args.filename, args.namespace, args.output, out, err)
        if not args.kind:
            err.write("Failed to execute command: get needs a resource type, e.g. 'calicoctl get ippools'\n")
            return 1
        return get(client, args.kind, args.names, args.output, args.namespace, args.all_namespaces, out, err)
    if verb == "delete" and not args.filename:
        if not args.kind or not args.names:
            err.write("Failed to execute command: delete needs -f FILE or KIND NAME\n")
            return 1
        return delete_named(client, args.kind, args.names, args.namespace, out, err, args.skip_not_exists)
    return modify(client, verb, args.filename, args.namespace, out, err,
                  skip_exists=getattr(args, "skip_exists", False),
                  skip_not_exists=getattr(args, "skip_not_exists", False))
