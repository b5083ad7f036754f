"""kubectl for the testbed's Kubernetes side (objects in the lab's etcd; $ETCD_ENDPOINTS).

Subcommands: get, describe, apply, create, delete, expose, run, exec, logs, label, annotate, scale,
wait, version.
Output formats and messages follow kubectl's.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from testbed.k8s import errors, printers
from testbed.k8s.model import (
    DEFAULT_NAMESPACE,
    KINDS,
    Kind,
    kind_for,
    label_selector_matches,
    parse_label_selector,
)

ORDER = ["Namespace", "ServiceAccount", "ConfigMap", "NetworkPolicy", "Node", "Service", "Endpoints", "DaemonSet",
         "Deployment", "ReplicaSet", "Pod"]


class UsageError(Exception):
    """A command line problem (``error: ...``, exit 1)."""


def _store():
    from testbed.k8s.store import Store

    return Store.from_endpoints()


# --- manifests ---------------------------------------------------------------------------------

def _manifest_files(paths: list[str], recursive: bool = False) -> Iterator[tuple[str, str]]:
    for path in paths:
        if path == "-":
            yield "-", sys.stdin.read()
        elif os.path.isdir(path):
            walker = os.walk(path) if recursive else [(path, [], os.listdir(path))]
            for root, _, files in walker:
                for name in sorted(files):
                    if name.endswith((".yaml", ".yml", ".json")):
                        full = os.path.join(root, name)
                        with open(full, encoding="utf-8") as f:
                            yield full, f.read()
        elif os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                yield path, f.read()
        else:
            raise UsageError(f'the path "{path}" does not exist')


def load_manifests(paths: list[str], recursive: bool = False) -> list[tuple[str, dict]]:
    """Every object in the files (YAML multi-docs, JSON, and ``kind: List``), with its origin."""
    import yaml

    out: list[tuple[str, dict]] = []
    for where, text in _manifest_files(paths, recursive):
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark else ""
            raise UsageError(f"error parsing {where}:{line}: {getattr(exc, 'problem', exc)}") from None
        for doc in docs:
            if doc is None:
                continue
            if isinstance(doc, dict) and doc.get("kind") == "List":
                out += [(where, item) for item in doc.get("items") or []]
            else:
                out.append((where, doc))
    if not out:
        raise UsageError("no objects passed to apply")
    return out


# --- reading objects ---------------------------------------------------------------------------

def _namespace(args: argparse.Namespace, kind: Kind) -> str | None:
    if not kind.namespaced:
        return None
    if getattr(args, "all_namespaces", False):
        return None
    return args.namespace or DEFAULT_NAMESPACE


def resolve_targets(words: list[str]) -> list[tuple[Kind, list[str]]]:
    """``pods``, ``pod a b``, ``pod/a``, ``po,svc`` -> [(kind, names)]."""
    if not words:
        raise UsageError("You must specify the type of resource to get. Use \"kubectl api-resources\" for a complete list of supported resources.")
    if "/" in words[0]:
        out: list[tuple[Kind, list[str]]] = []
        for w in words:
            if "/" not in w:
                raise UsageError("there is no need to specify a resource type as a separate argument when passing arguments in resource/name form")
            k, name = w.split("/", 1)
            out.append((_kind(k), [name]))
        return out
    kinds = [k for word in words[0].split(",")
             for k in ([KINDS["Pod"], KINDS["Service"], KINDS["DaemonSet"], KINDS["Deployment"], KINDS["ReplicaSet"]]
                       if word == "all" else [_kind(word)])]
    names = words[1:]
    if names and len(kinds) > 1:
        raise UsageError("you may only specify a single resource type when naming objects")
    return [(k, names) for k in kinds]


def _kind(word: str) -> Kind:
    try:
        return kind_for(word)
    except errors.Invalid as exc:
        raise UsageError(str(exc).lstrip(": ")) from None


def fetch(store, args: argparse.Namespace, targets: list[tuple[Kind, list[str]]]) -> tuple[list[dict], list[str]]:
    """The objects named (or all of each kind); returns (objects, error lines)."""
    terms = parse_label_selector(args.selector) if getattr(args, "selector", None) else None
    objs, errs = [], []
    for kind, names in targets:
        ns = _namespace(args, kind)
        if names:
            for name in names:
                try:
                    objs.append(store.get(kind.kind, name, ns or DEFAULT_NAMESPACE))
                except errors.NotFound as exc:
                    errs.append(f"Error from server (NotFound): {exc}")
        else:
            found = store.list(kind.kind, ns)
            if terms is not None:
                found = [o for o in found if label_selector_matches(terms, o["metadata"].get("labels"))]
            objs += found
    return objs, errs


# --- commands ----------------------------------------------------------------------------------

def cmd_get(args: argparse.Namespace) -> int:
    """kubectl get."""
    store = _store()
    targets = resolve_targets(args.resource)
    since = store.revision() if getattr(args, "watch", False) else 0  # before the list: nothing missed
    objs, errs = fetch(store, args, targets)
    out = args.output or ""
    single = len(targets) == 1 and len(targets[0][1]) == 1 and not errs
    if out in ("json", "yaml"):
        data = objs[0] if single and objs else printers.as_list(objs)
        if objs or not errs:
            sys.stdout.write(printers.to_json(data) if out == "json" else printers.to_yaml(data))
    elif out == "name":
        for o in objs:
            print(printers.name_of(o))
    elif out.startswith("custom-columns="):
        if objs:
            sys.stdout.write(printers.custom_columns(out.split("=", 1)[1], objs))
    elif out.startswith("jsonpath="):
        data = objs[0] if single and objs else printers.as_list(objs)
        sys.stdout.write(printers.jsonpath(out.split("=", 1)[1], data))
    elif out in ("", "wide"):
        kinds_seen = [k for k, _ in targets]
        multi = len(kinds_seen) > 1
        chunks = []
        for kind, _ in targets:
            these = [o for o in objs if o["kind"] == kind.kind]
            if these:
                chunks.append(printers.table(kind.kind, these, wide=out == "wide",
                                             all_namespaces=bool(args.all_namespaces), kind_prefix=multi))
        sys.stdout.write("\n".join(chunks))
        if not objs and not errs:
            k = targets[0][0]
            where = "" if not k.namespaced or args.all_namespaces else f" in {args.namespace or DEFAULT_NAMESPACE} namespace"
            print(f"No resources found{where}.", file=sys.stderr)
    else:
        raise UsageError(f'unable to match a printer suitable for the output format "{out}", allowed formats '
                         "are: custom-columns,json,jsonpath,name,wide,yaml")
    for e in errs:
        print(e, file=sys.stderr)
    if getattr(args, "watch", False) and not errs:
        sys.stdout.flush()
        return watch_rows(store, args, targets, since)
    return 1 if errs else 0


def watch_rows(store, args: argparse.Namespace, targets: list[tuple[Kind, list[str]]], since: int) -> int:
    """``get -w``: after the table, one row per change of a matching object (no header),
    until interrupted or --request-timeout passes."""
    import threading

    if len(targets) != 1 or (args.output or "") not in ("", "wide"):
        raise UsageError("watch is only supported on individual resources and table output")
    kind, names = targets[0]
    ns = _namespace(args, kind)
    terms = parse_label_selector(args.selector) if args.selector else None
    holder: list = []
    stop = threading.Event()
    timeout = _duration(args.request_timeout) if args.request_timeout else 0
    if timeout:
        def expire() -> None:
            stop.wait(timeout)
            stop.set()
            for w in holder:
                w.close()

        threading.Thread(target=expire, daemon=True).start()
    try:
        for ev in store.watch(since, on_open=holder.append):
            if stop.is_set():
                break
            if ev.kind != kind.kind or (ns and ev.namespace != ns) or (names and ev.name not in names):
                continue
            obj = ev.obj
            if obj is None:
                continue  # a deletion: the last state was already printed (Terminating)
            if terms is not None and not label_selector_matches(terms, obj["metadata"].get("labels")):
                continue
            table = printers.table(kind.kind, [obj], wide=args.output == "wide",
                                   all_namespaces=bool(args.all_namespaces))
            print(table.splitlines()[1], flush=True)
    except KeyboardInterrupt:
        return 0
    except errors.K8sError:
        raise
    except Exception as exc:  # the watch was closed by the timeout, or etcd went away
        if not stop.is_set():
            raise errors.Unavailable(f"watch ended: {exc}") from exc
    return 0


def cmd_apply(args: argparse.Namespace, create: bool = False) -> int:
    """kubectl apply / create -f."""
    store = _store()
    items = load_manifests(args.filename, args.recursive)
    from testbed.k8s.model import calico_warnings, validate

    prepared = []
    seen: dict[tuple, str] = {}
    for where, raw in items:  # validate all first: nothing half-done on a bad file
        given = (raw.get("metadata") or {}).get("namespace") if isinstance(raw, dict) else None
        try:
            obj = validate(copy.deepcopy(raw))
        except errors.Invalid as exc:
            raise UsageError(f'error validating "{where}": {exc}') from None
        if args.namespace and KINDS[obj["kind"]].namespaced:
            if given and given != args.namespace:
                raise UsageError(f'the namespace from the provided object "{given}" does not match the namespace '
                                 f'"{args.namespace}". You must pass \'--namespace={given}\' to perform this operation.')
            obj["metadata"]["namespace"] = args.namespace
        key = (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
        if key in seen:
            raise UsageError(f'error validating "{where}": {KINDS[obj["kind"]].resource} "{key[2]}" is defined '
                             f'twice (also in "{seen[key]}")')
        seen[key] = where
        try:
            store.check_references(obj, where)
        except errors.Invalid as exc:
            raise UsageError(f'error validating "{where}": {str(exc).removeprefix(where + ": ")}') from None
        prepared.append((where, obj))
    prepared.sort(key=lambda wo: ORDER.index(wo[1]["kind"]))
    rc = 0
    for where, obj in prepared:
        try:
            if create:
                store.create(obj, where)
                action = "created"
            else:
                obj, action = store.apply(obj, where)
            for w in calico_warnings(obj["kind"], obj["metadata"]["name"]):
                print(f"Warning: {w}", file=sys.stderr)
            print(f"{printers.name_of(obj)} {action}")
        except errors.Invalid as exc:
            print(f'The {obj["kind"]} "{obj["metadata"]["name"]}" is invalid: {exc}', file=sys.stderr)
            rc = 1
        except errors.K8sError as exc:
            print(f"Error from server ({exc.reason}): error when creating \"{where}\": {exc}", file=sys.stderr)
            rc = 1
    return rc


def cmd_create(args: argparse.Namespace) -> int:
    """kubectl create -f FILE | create deployment NAME --image I [--replicas N] [--port P] |
    create namespace NAME."""
    if args.filename:
        if args.what:
            raise UsageError("specify either -f or a resource to generate, not both")
        return cmd_apply(args, create=True)
    if len(args.what) != 2:
        raise UsageError("expected -f FILE, 'deployment NAME --image IMAGE' or 'namespace NAME'")
    kind, name = _kind(args.what[0]).kind, args.what[1]
    ns = args.namespace or DEFAULT_NAMESPACE
    if kind == "Namespace":
        obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    elif kind == "Deployment":
        if not args.image:
            raise UsageError("required flag(s) \"image\" not set")
        container: dict[str, Any] = {"name": _container_name(args.image), "image": args.image}
        if args.port:
            container["ports"] = [{"containerPort": args.port}]
        obj = {"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
               "spec": {"replicas": args.replicas, "selector": {"matchLabels": {"app": name}},
                        "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}}}}
    else:
        raise UsageError(f"cannot generate a {kind}: use -f with a manifest")
    try:
        created = _store().create(obj)
    except errors.AlreadyExists as exc:
        print(f"Error from server (AlreadyExists): {exc}", file=sys.stderr)
        return 1
    print(f"{printers.name_of(created)} created")
    return 0


def _container_name(image: str) -> str:
    from testbed.k8s.images import repository

    return repository(image).rsplit("/", 1)[-1]


def cmd_delete(args: argparse.Namespace) -> int:
    """kubectl delete (by name, -f, -l or --all)."""
    store = _store()
    targets: list[tuple[str, str, str | None]] = []
    rc = 0
    if args.filename:
        for _where, obj in load_manifests(args.filename, args.recursive):
            k = _kind(obj.get("kind", ""))
            ns = (obj.get("metadata") or {}).get("namespace") or args.namespace or DEFAULT_NAMESPACE
            targets.append((k.kind, obj["metadata"]["name"], ns if k.namespaced else None))
    else:
        resolved = resolve_targets(args.resource)
        for kind, names in resolved:
            ns = _namespace(args, kind)
            if not names:
                if not (args.all or args.selector):
                    raise UsageError("resource(s) were provided, but no name was specified")
                terms = parse_label_selector(args.selector) if args.selector else []
                for o in store.list(kind.kind, ns):
                    if label_selector_matches(terms, o["metadata"].get("labels")):
                        targets.append((kind.kind, o["metadata"]["name"], o["metadata"].get("namespace")))
            for name in names:
                targets.append((kind.kind, name, ns or (DEFAULT_NAMESPACE if kind.namespaced else None)))
    deleted = []
    for kind, name, ns in targets:
        try:
            obj = store.delete(kind, name, ns, force=args.force)
            print(f'{KINDS[kind].group_name} "{name}" {"force " if args.force else ""}deleted')
            deleted.append(obj)
        except errors.NotFound as exc:
            print(f"Error from server (NotFound): {exc}", file=sys.stderr)
            rc = 1
    if args.wait and not args.force:
        from testbed.poll import WaitTimeout, wait_for

        pending = [(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace"), o["metadata"]["uid"])
                   for o in deleted if o["kind"] == "Pod"]

        def still_there() -> list[str]:
            left = []
            for kind, name, ns, uid in pending:
                cur = store.find(kind, name, ns)
                if cur is not None and cur["metadata"].get("uid") == uid:
                    left.append(name)
            return left

        try:
            wait_for(still_there, lambda left: not left, timeout=args.timeout, what="pods to terminate")
        except WaitTimeout as exc:
            print(f"error: timed out waiting for the condition: {exc.last}", file=sys.stderr)
            rc = 1
    return rc


def cmd_describe(args: argparse.Namespace) -> int:
    """kubectl describe."""
    store = _store()
    targets = resolve_targets(args.resource)
    objs, errs = fetch(store, args, targets)
    sys.stdout.write("\n\n".join(describe(o, store) for o in objs))
    if objs:
        print()
    for e in errs:
        print(e, file=sys.stderr)
    return 1 if errs else 0


def _kv_lines(title: str, d: dict | None, width: int = 14) -> list[str]:
    width = max(width, len(title) + 2)
    items = sorted((d or {}).items())
    if not items:
        return [f"{title + ':':<{width}}<none>"]
    lines = [f"{title + ':':<{width}}{items[0][0]}={items[0][1]}"]
    lines += [f"{'':<{width}}{k}={v}" for k, v in items[1:]]
    return lines


def describe(obj: dict, store=None) -> str:
    """A kubectl-describe-like text of one object."""
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    w = 14
    lines = [f"{'Name:':<{w}}{meta['name']}"]
    if meta.get("namespace"):
        lines.append(f"{'Namespace:':<{w}}{meta['namespace']}")
    kind = obj["kind"]
    if kind == "Node":
        lines.append(f"{'Roles:':<{w}}{printers.node_roles(obj)}")
    lines += _kv_lines("Labels", meta.get("labels"), w)
    lines += _kv_lines("Annotations", meta.get("annotations"), w)
    lines.append(f"CreationTimestamp:  {meta.get('creationTimestamp', '<unknown>')}")
    owner = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
    if owner:
        lines.append(f"Controlled By:  {owner['kind']}/{owner['name']}")
    if kind == "Pod":
        lines += [f"{'Node:':<{w}}{spec.get('nodeName') or '<none>'}/{status.get('hostIP', '')}",
                  f"{'Start Time:':<{w}}{status.get('startTime', '<unset>')}",
                  f"{'Status:':<{w}}{printers.pod_status(obj)}",
                  f"{'IP:':<{w}}{status.get('podIP', '')}", "IPs:"]
        lines += [f"  IP:  {ip['ip']}" for ip in status.get("podIPs") or []] or ["  <none>"]
        lines.append("Containers:")
        css = {c["name"]: c for c in status.get("containerStatuses") or []}
        for c in spec.get("containers") or []:
            cs = css.get(c["name"], {})
            state = cs.get("state") or {}
            lines += [f"  {c['name']}:", f"    Container ID:  {cs.get('containerID', '')}",
                      f"    Image:         {c['image']}",
                      f"    Image ID:      {cs.get('imageID', '')}",
                      f"    Port:          {', '.join(str(p['containerPort']) + '/' + p.get('protocol', 'TCP') for p in c.get('ports') or []) or '<none>'}"]
            for sname, sval in state.items():
                lines.append(f"    State:         {sname.capitalize()}")
                for k in ("reason", "message", "startedAt", "exitCode"):
                    if k in (sval or {}):
                        lines.append(f"      {k[0].upper() + k[1:]}:  {sval[k]}")
            lines += [f"    Ready:         {cs.get('ready', False)}", f"    Restart Count: {cs.get('restartCount', 0)}"]
        lines.append("Conditions:\n  Type              Status")
        lines += [f"  {c['type']:<18}{c['status']}" for c in status.get("conditions") or []]
        if status.get("message"):
            lines.append(f"Message:      {status['message']}")
    elif kind == "Node":
        lines.append("Conditions:")
        rows = [[c["type"], c["status"], c.get("reason", ""), c.get("message", "")] for c in status.get("conditions") or []]
        lines += ["  " + line for line in printers.render_table(["Type", "Status", "Reason", "Message"], rows).splitlines()]
        lines.append("Addresses:")
        lines += [f"  {a['type']}:  {a['address']}" for a in status.get("addresses") or []]
        info = status.get("nodeInfo") or {}
        lines += ["System Info:"] + [f"  {k}:  {v}" for k, v in sorted(info.items())]
        lines.append(f"PodCIDR:      {spec.get('podCIDR', '')}")
        lines.append(f"PodCIDRs:     {','.join(spec.get('podCIDRs') or [])}")
        if store is not None:
            pods = [p for p in store.list("Pod") if p["spec"].get("nodeName") == meta["name"]]
            lines.append(f"Non-terminated Pods:  ({len(pods)} in total)")
            rows = [[p["metadata"]["namespace"], p["metadata"]["name"], printers.age(p)] for p in pods]
            lines += ["  " + line for line in printers.render_table(["Namespace", "Name", "Age"], rows).splitlines()]
    elif kind == "Service":
        lines += _kv_lines("Selector", spec.get("selector"), w)
        lines += [f"{'Type:':<{w}}{spec.get('type')}", f"{'IP:':<{w}}{spec.get('clusterIP')}"]
        for p in spec.get("ports") or []:
            lines.append(f"{'Port:':<{w}}{p.get('name') or '<unset>'}  {p['port']}/{p.get('protocol', 'TCP')}")
            lines.append(f"{'TargetPort:':<{w}}{p.get('targetPort')}/{p.get('protocol', 'TCP')}")
        if store is not None:
            ep = store.find("Endpoints", meta["name"], meta["namespace"])
            lines.append(f"{'Endpoints:':<{w}}{printers.endpoints_text(ep) if ep else '<none>'}")
        lines.append(f"Session Affinity:  {spec.get('sessionAffinity', 'None')}")
    elif kind == "DaemonSet":
        lines += _kv_lines("Selector", (spec.get("selector") or {}).get("matchLabels"), w)
        lines.append(f"Desired Number of Nodes Scheduled: {status.get('desiredNumberScheduled', 0)}")
        lines.append(f"Current Number of Nodes Scheduled: {status.get('currentNumberScheduled', 0)}")
        lines.append(f"Number of Nodes Scheduled with Available Pods: {status.get('numberAvailable', 0)}")
        lines.append("Pod Template:")
        for c in spec["template"]["spec"].get("containers") or []:
            lines += [f"  {c['name']}:", f"    Image:  {c['image']}"]
    elif kind == "Deployment":
        lines += _kv_lines("Selector", (spec.get("selector") or {}).get("matchLabels"), w)
        lines.append(f"{'Replicas:':<{w}}{spec.get('replicas')} desired | {status.get('updatedReplicas', 0)} updated | "
                     f"{status.get('replicas', 0)} total | {status.get('availableReplicas', 0)} available | "
                     f"{status.get('unavailableReplicas', 0)} unavailable")
        lines.append("Pod Template:")
        for c in spec["template"]["spec"].get("containers") or []:
            lines += [f"  {c['name']}:", f"    Image:  {c['image']}"]
        if spec["template"]["spec"].get("nodeName"):
            lines.append(f"  Node-Name:  {spec['template']['spec']['nodeName']}")
    elif kind == "Endpoints":
        lines.append("Subsets:")
        for s in obj.get("subsets") or []:
            lines.append(f"  Addresses:          {','.join(a['ip'] for a in s.get('addresses') or []) or '<none>'}")
            lines.append(f"  NotReadyAddresses:  {','.join(a['ip'] for a in s.get('notReadyAddresses') or []) or '<none>'}")
            lines.append("  Ports:")
            lines += [f"    {p.get('name') or '<unset>'}  {p['port']}  {p.get('protocol', 'TCP')}" for p in s.get("ports") or []]
    elif kind == "Namespace":
        lines.append(f"{'Status:':<{w}}{status.get('phase', 'Active')}")
    lines.append("Events:       <none>")
    return "\n".join(lines)


def cmd_expose(args: argparse.Namespace) -> int:
    """kubectl expose pod|deployment|service NAME --port P."""
    store = _store()
    kind = _kind(args.resource)
    ns = args.namespace or DEFAULT_NAMESPACE
    try:
        obj = store.get(kind.kind, args.name, ns)
    except errors.NotFound as exc:
        print(f"Error from server (NotFound): {exc}", file=sys.stderr)
        return 1
    if kind.kind == "Pod":
        selector = obj["metadata"].get("labels") or {}
        ports = [p["containerPort"] for c in obj["spec"]["containers"] for p in c.get("ports") or []]
    elif kind.kind == "Deployment":
        selector = obj["spec"]["selector"]["matchLabels"]
        ports = [p["containerPort"] for c in obj["spec"]["template"]["spec"]["containers"] for p in c.get("ports") or []]
    elif kind.kind == "Service":
        selector = obj["spec"].get("selector") or {}
        ports = [p["port"] for p in obj["spec"].get("ports") or []]
    else:
        raise UsageError(f"cannot expose a {kind.kind}")
    if args.selector:
        selector = dict(t.split("=", 1) for t in args.selector.split(","))
    if not selector:
        raise UsageError(f"couldn't retrieve selectors via --selector flag or introspection: the {kind.kind.lower()} "
                         "has no labels and cannot be exposed")
    port = args.port or (ports[0] if ports else None)
    if port is None:
        raise UsageError("couldn't find port via --port flag or introspection")
    target = args.target_port or port
    if isinstance(target, str) and target.isdigit():
        target = int(target)
    svc = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": args.service_name or args.name, "namespace": ns,
                        "labels": dict(obj["metadata"].get("labels") or {})},
           "spec": {"type": args.type, "selector": selector,
                    "ports": [{"port": int(port), "protocol": args.protocol, "targetPort": target}]}}
    if args.cluster_ip:
        svc["spec"]["clusterIP"] = args.cluster_ip
    try:
        created = store.create(svc)
    except errors.Invalid as exc:
        print(f'The Service "{svc["metadata"]["name"]}" is invalid: {exc}', file=sys.stderr)
        return 1
    except errors.AlreadyExists as exc:
        print(f"Error from server (AlreadyExists): {exc}", file=sys.stderr)
        return 1
    print(f"service/{created['metadata']['name']} exposed")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """kubectl run NAME --image=IMAGE [--labels] [--port] [--overrides JSON] [-- COMMAND...]."""
    store = _store()
    labels = {"run": args.name}
    if args.labels:
        labels = dict(t.split("=", 1) for t in args.labels.split(","))
    container: dict[str, Any] = {"name": args.name, "image": args.image}
    if args.port:
        container["ports"] = [{"containerPort": int(args.port)}]
    if args.command_args:
        if args.command:
            container["command"] = args.command_args
        else:
            container["args"] = args.command_args
    if args.env:
        container["env"] = [{"name": e.split("=", 1)[0], "value": e.split("=", 1)[1]} for e in args.env]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": args.name, "namespace": args.namespace or DEFAULT_NAMESPACE, "labels": labels},
           "spec": {"containers": [container], "restartPolicy": args.restart}}
    if args.overrides:
        try:
            pod = merge(pod, json.loads(args.overrides))
        except ValueError as exc:
            raise UsageError(f"invalid --overrides JSON: {exc}") from None
    if args.dry_run == "client":
        sys.stdout.write(printers.to_yaml(pod) if args.output == "yaml" else printers.to_json(pod))
        return 0
    try:
        created = store.create(pod)
    except errors.Invalid as exc:
        print(f'The Pod "{args.name}" is invalid: {exc}', file=sys.stderr)
        return 1
    except errors.K8sError as exc:
        print(f"Error from server ({exc.reason}): {exc}", file=sys.stderr)
        return 1
    print(f"pod/{created['metadata']['name']} created")
    return 0


def merge(base: Any, patch: Any) -> Any:
    """JSON merge (maps merged recursively, everything else replaced), as --overrides does."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base.get(k), v) if k in base else v
        return out
    return patch


CONTAINER_RUNTIMES = ("containerd", "docker")


def container_runtime(pod: dict, container: str) -> str:
    """Who runs ``container`` of ``pod``: ``netns`` (a process of the kubelet), ``containerd``
    or ``docker`` (the kubelet's ``calicolab.io/runtime`` annotation)."""
    rts = json.loads((pod["metadata"].get("annotations") or {}).get("calicolab.io/runtime") or "{}")
    return rts.get(container, "netns")


DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _container_environ(pid: int) -> list[str]:
    """The container's environment from its OCI spec: the runc shim (the init process'
    parent, for containerd and Docker alike) runs in the bundle directory holding
    ``config.json`` (``/proc/<pid>/environ`` is no use: nginx overwrites it with its title)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{ppid}/cwd/config.json") as f:
            return list(json.load(f)["process"]["env"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return [DEFAULT_PATH]


def exec_argv(pod: dict, command: list[str], container: str | None = None) -> list[str]:
    """The command line that runs ``command`` inside a running pod: nsenter into the pod's
    workload process (its netns is the pod's, its mount namespace the node's); for a
    container of containerd or Docker, into all its namespaces (PID, mount = its rootfs,
    UTS, IPC, network) with the container's environment, as ``runc exec`` does.
    This is the one place that knows how to enter a pod."""
    pids = json.loads((pod["metadata"].get("annotations") or {}).get("calicolab.io/pids") or "{}")
    if not pids:
        raise UsageError(f"cannot exec into pod {pod['metadata']['name']}: it has no running container")
    if container is not None and container not in pids:
        raise UsageError(f'container {container} is not valid for pod {pod["metadata"]["name"]}')
    first = pod["spec"]["containers"][0]["name"]
    pid = pids[container] if container else pids.get(first, next(iter(pids.values())))
    if not os.path.exists(f"/proc/{pid}"):
        raise UsageError(f"cannot exec into pod {pod['metadata']['name']}: its process {pid} is gone "
                         "(run kubectl on the lab's machine or inside a node)")
    name = container or first
    if container_runtime(pod, name) in CONTAINER_RUNTIMES:
        return ["nsenter", "-t", str(pid), "-a", "--", "env", "-i", *_container_environ(pid), *command]
    return ["nsenter", "-t", str(pid), "-n", "-m", "--", *command]


def cmd_exec(args: argparse.Namespace) -> int:
    """kubectl exec [-n NS] POD -- CMD."""
    if not args.command:
        raise UsageError("you must specify at least one command for the container")
    store = _store()
    ns = args.namespace or DEFAULT_NAMESPACE
    name = args.pod.split("/", 1)[1] if args.pod.startswith(("pod/", "pods/", "po/")) else args.pod
    try:
        pod = store.get("Pod", name, ns)
    except errors.NotFound as exc:
        print(f"Error from server (NotFound): {exc}", file=sys.stderr)
        return 1
    phase = (pod.get("status") or {}).get("phase")
    if phase != "Running":
        raise UsageError(f"cannot exec into a container in a completed pod; current phase is {phase}"
                         if phase in ("Succeeded", "Failed") else f"unable to upgrade connection: pod {name} is {phase}")
    argv = exec_argv(pod, args.command, args.container)
    sys.stdout.flush()
    os.execvp(argv[0], argv)
    return 127  # not reached


def log_path(pod: dict, container: str | None) -> str:
    """Where a container's output can be read from here: its file in the node's mount
    namespace, seen through the workload process (``/proc/<pid>/root``)."""
    ann = pod["metadata"].get("annotations") or {}
    logs = json.loads(ann.get("calicolab.io/logs") or "{}")
    pids = json.loads(ann.get("calicolab.io/pids") or "{}")
    names = [c["name"] for c in pod["spec"]["containers"]]
    name = container or names[0]
    if container is None and len(names) > 1:
        raise UsageError(f"a container name must be specified for pod {pod['metadata']['name']}, "
                         f"choose one of: [{' '.join(names)}]")
    if name not in logs or name not in pids:
        raise UsageError(f'container "{name}" in pod "{pod["metadata"]["name"]}" is waiting to start')
    if container_runtime(pod, name) in CONTAINER_RUNTIMES:
        return logs[name]  # under the lab's runtime dir: the same path in every mount namespace
    return f"/proc/{pids[name]}/root{logs[name]}"


def decode_log(data: bytes, runtime: str) -> bytes:
    """A container log as ``kubectl logs`` prints it: Docker's json-file lines
    (``{"log": ..., "stream": ..., "time": ...}``) are decoded; other logs are raw (pure)."""
    if runtime != "docker":
        return data
    out = []
    for line in data.splitlines():
        try:
            out.append(json.loads(line)["log"].encode())
        except (ValueError, KeyError, TypeError):
            continue
    return b"".join(out)


def cmd_logs(args: argparse.Namespace) -> int:
    """kubectl logs [-n NS] POD [-c CONTAINER] [--tail N]."""
    store = _store()
    name = args.pod.split("/", 1)[1] if "/" in args.pod else args.pod
    try:
        pod = store.get("Pod", name, args.namespace or DEFAULT_NAMESPACE)
    except errors.NotFound as exc:
        print(f"Error from server (NotFound): {exc}", file=sys.stderr)
        return 1
    path = log_path(pod, args.container)
    try:
        with open(path, "rb") as f:
            data = decode_log(f.read(), container_runtime(pod, args.container or pod["spec"]["containers"][0]["name"]))
    except OSError as exc:
        raise UsageError(f"cannot read the logs of {name}: {exc.strerror}") from None
    lines = data.decode(errors="replace").splitlines(keepends=True)
    if args.tail is not None and args.tail >= 0:
        lines = lines[len(lines) - args.tail:] if args.tail else []
    sys.stdout.write("".join(lines))
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    """kubectl wait --for=condition=Ready|delete (pods, nodes, deployments)."""
    from testbed.poll import WaitTimeout, wait_for

    store = _store()
    targets = resolve_targets(args.resource)
    cond = args.for_
    if cond.startswith("condition="):
        want = cond.split("=", 1)[1]
        ctype, _, cval = want.partition("=")
        cval = cval or "True"
    elif cond != "delete":
        raise UsageError(f"unrecognized condition: \"{cond}\"")
    timeout = _duration(args.timeout)

    def probe() -> list[tuple[str, bool]]:
        objs, errs = fetch(store, args, targets)
        if cond == "delete":
            return [(printers.name_of(o), False) for o in objs]
        if errs:
            return [(e, False) for e in errs]
        if not objs:
            return [("no matching resources", False)]
        out = []
        for o in objs:
            conds = (o.get("status") or {}).get("conditions") or []
            ok = any(c.get("type", "").lower() == ctype.lower() and c.get("status", "").lower() == cval.lower()
                     for c in conds)
            out.append((printers.name_of(o), ok))
        return out

    try:
        res = wait_for(probe, lambda r: all(ok for _, ok in r), timeout=timeout, what=f"--for={cond}")
    except WaitTimeout as exc:
        print(f"error: timed out waiting for the condition on {', '.join(n for n, ok in exc.last or [] if not ok)}",
              file=sys.stderr)
        return 1
    for name, _ in res:
        print(f"{name} condition met")
    return 0


def _duration(text: str) -> float:
    """``--timeout`` / ``--request-timeout``: a Go duration, or plain seconds."""
    from datastore.duration import parse_duration

    try:
        return parse_duration(text, bare_seconds=True)
    except ValueError:
        raise UsageError(f'invalid duration "{text}"') from None


def cmd_scale(args: argparse.Namespace) -> int:
    """kubectl scale deployment NAME --replicas N."""
    store = _store()
    targets = resolve_targets(args.resource)
    rc = 0
    for kind, names in targets:
        if kind.kind not in ("Deployment", "ReplicaSet"):
            raise UsageError(f"cannot scale a {kind.kind}: only deployments and replicasets can be scaled")
        if not names:
            raise UsageError("resource(s) were provided, but no name was specified")
        for name in names:
            def set_replicas(d: dict) -> None:
                d["spec"]["replicas"] = args.replicas
                d["metadata"]["generation"] = d["metadata"].get("generation", 1) + 1

            if store.mutate(kind.kind, name, args.namespace or DEFAULT_NAMESPACE, set_replicas) is None:
                print(f'Error from server (NotFound): {kind.resource}.apps "{name}" not found', file=sys.stderr)
                rc = 1
            else:
                print(f"{kind.group_name}/{name} scaled")
    return rc


def cmd_label(args: argparse.Namespace, field: str = "labels") -> int:
    """kubectl label|annotate TYPE NAME k=v ... k- [--overwrite]."""
    words = list(args.args)
    changes = [w for w in words if "=" in w or w.endswith("-")]
    target_words = [w for w in words if w not in changes]
    if not changes:
        raise UsageError(f"at least one {field[:-1]} update is required")
    targets = resolve_targets(target_words)
    store = _store()
    rc = 0
    for kind, names in targets:
        if not names:
            raise UsageError("resource(s) were provided, but no name was specified")
        for name in names:
            ns = _namespace(args, kind) or (DEFAULT_NAMESPACE if kind.namespaced else None)

            def edit(obj: dict, name: str = name) -> None:
                current = obj["metadata"].setdefault(field, {})
                for change in changes:
                    if change.endswith("-") and "=" not in change:
                        current.pop(change[:-1], None)
                        continue
                    key, value = change.split("=", 1)
                    if key in current and current[key] != value and not args.overwrite:
                        raise UsageError(f"'{key}' already has a value ({current[key]}), and --overwrite is false")
                    current[key] = value

            try:
                obj = store.mutate(kind.kind, name, ns, edit)
            except errors.Invalid as exc:
                print(f"error: {exc}", file=sys.stderr)
                rc = 1
                continue
            if obj is None:
                print(f'Error from server (NotFound): {kind.resource} "{name}" not found', file=sys.stderr)
                rc = 1
            else:
                print(f"{kind.group_name}/{name} {'labeled' if field == 'labels' else 'annotated'}")
    return rc


def cmd_version(args: argparse.Namespace) -> int:
    """kubectl version."""
    from testbed.k8s.store import KUBE_VERSION

    print(f"Client Version: {KUBE_VERSION}\nKustomize Version: v5.0.4-0.20230601165947-6ce0bf390ce3\n"
          f"Server Version: {KUBE_VERSION}")
    return 0


# --- argument parsing --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """kubectl's argument parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace", help="namespace (default: default)")
    p = argparse.ArgumentParser(prog="kubectl",
                                description="kubectl controls the calicolab Kubernetes side (objects in the lab's etcd, $ETCD_ENDPOINTS).")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    g = sub.add_parser("get", parents=[common], help="display one or many resources")
    g.add_argument("resource", nargs="*", help="TYPE [NAME...] | TYPE/NAME... | TYPE1,TYPE2")
    g.add_argument("-o", "--output", help="wide|yaml|json|name|custom-columns=H:.path,...|jsonpath=...")
    g.add_argument("-A", "--all-namespaces", action="store_true")
    g.add_argument("-l", "--selector", help="label selector (a=b,c!=d)")
    g.add_argument("-w", "--watch", action="store_true", help="after listing, print a row per change")
    g.add_argument("--request-timeout", help="stop watching after this long (e.g. 30s)")
    g.set_defaults(func=cmd_get)

    d = sub.add_parser("describe", parents=[common], help="show details of resources")
    d.add_argument("resource", nargs="+")
    d.add_argument("-A", "--all-namespaces", action="store_true")
    d.add_argument("-l", "--selector")
    d.set_defaults(func=cmd_describe)

    a = sub.add_parser("apply", parents=[common], help="apply resources from files (-f FILE|DIR|-)")
    a.add_argument("-f", "--filename", action="append", required=True)
    a.add_argument("-R", "--recursive", action="store_true")
    a.set_defaults(func=lambda args: cmd_apply(args, create=False))

    cr = sub.add_parser("create", parents=[common],
                        help="create from files (-f), or: create deployment NAME --image I | namespace NAME")
    cr.add_argument("what", nargs="*", help="deployment NAME | namespace NAME")
    cr.add_argument("-f", "--filename", action="append")
    cr.add_argument("-R", "--recursive", action="store_true")
    cr.add_argument("--image")
    cr.add_argument("--replicas", type=int, default=1)
    cr.add_argument("--port", type=int)
    cr.set_defaults(func=cmd_create)

    x = sub.add_parser("delete", parents=[common], help="delete resources by name, file, selector or --all")
    x.add_argument("resource", nargs="*")
    x.add_argument("-f", "--filename", action="append")
    x.add_argument("-R", "--recursive", action="store_true")
    x.add_argument("-l", "--selector")
    x.add_argument("-A", "--all-namespaces", action="store_true")
    x.add_argument("--all", action="store_true")
    x.add_argument("--force", action="store_true", help="remove at once, without waiting for the kubelet")
    x.add_argument("--grace-period", type=int, default=None)
    x.add_argument("--wait", type=lambda s: s.lower() != "false", default=True, help="wait for pods to go (default true)")
    x.add_argument("--timeout", type=float, default=60.0)
    x.set_defaults(func=cmd_delete)

    e = sub.add_parser("expose", parents=[common], help="expose a pod or deployment as a ClusterIP Service")
    e.add_argument("resource", help="pod|deployment|service")
    e.add_argument("name")
    e.add_argument("--port", type=int)
    e.add_argument("--target-port")
    e.add_argument("--name", dest="service_name")
    e.add_argument("--protocol", default="TCP")
    e.add_argument("--type", default="ClusterIP")
    e.add_argument("--selector")
    e.add_argument("--cluster-ip")
    e.set_defaults(func=cmd_expose)

    r = sub.add_parser("run", parents=[common], help="run a pod from an image")
    r.add_argument("name")
    r.add_argument("--image", required=True)
    r.add_argument("--labels", "-l")
    r.add_argument("--port")
    r.add_argument("--env", action="append")
    r.add_argument("--overrides", help="JSON merged into the generated pod (e.g. spec.nodeName)")
    r.add_argument("--restart", default="Always", choices=["Always", "OnFailure", "Never"])
    r.add_argument("--command", action="store_true", help="the args after -- are the command, not args")
    r.add_argument("--dry-run", choices=["none", "client"], default="none")
    r.add_argument("-o", "--output", default="yaml")
    r.add_argument("command_args", nargs="*")
    r.set_defaults(func=cmd_run)

    ex = sub.add_parser("exec", parents=[common], help="run a command in a pod: exec POD -- CMD")
    ex.add_argument("-i", "--stdin", action="store_true")
    ex.add_argument("-t", "--tty", action="store_true")
    ex.add_argument("-c", "--container")
    ex.add_argument("pod")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    ex.set_defaults(func=cmd_exec)

    lg = sub.add_parser("logs", parents=[common], help="print a container's output")
    lg.add_argument("pod")
    lg.add_argument("-c", "--container")
    lg.add_argument("--tail", type=int)
    lg.set_defaults(func=cmd_logs)

    w = sub.add_parser("wait", parents=[common], help="wait for a condition (--for=condition=Ready|delete)")
    w.add_argument("resource", nargs="+")
    w.add_argument("--for", dest="for_", required=True)
    w.add_argument("--timeout", default="30s")
    w.add_argument("-l", "--selector")
    w.add_argument("-A", "--all-namespaces", action="store_true")
    w.add_argument("--all", action="store_true")
    w.set_defaults(func=cmd_wait)

    for verb, field in (("label", "labels"), ("annotate", "annotations")):
        lb = sub.add_parser(verb, parents=[common], help=f"update the {field} of a resource (k=v, k-)")
        lb.add_argument("args", nargs="+", help="TYPE NAME KEY=VALUE ... KEY- (or TYPE/NAME)")
        lb.add_argument("--overwrite", action="store_true")
        lb.set_defaults(func=lambda args, f=field: cmd_label(args, f))

    sc = sub.add_parser("scale", parents=[common], help="set a deployment's replicas")
    sc.add_argument("resource", nargs="+", help="deployment NAME | deployment/NAME")
    sc.add_argument("--replicas", type=int, required=True)
    sc.set_defaults(func=cmd_scale)

    v = sub.add_parser("version", help="print the versions")
    v.set_defaults(func=cmd_version)
    return p


def _hoist_globals(argv: list[str]) -> list[str]:
    """kubectl accepts ``-n NS`` / ``-A`` before the subcommand; move them after it."""
    moved: list[str] = []
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] not in ("-h", "--help"):
        if argv[i] in ("-n", "--namespace") and i + 1 < len(argv):
            moved += argv[i:i + 2]
            i += 2
        else:
            moved.append(argv[i])
            i += 1
    if i >= len(argv):
        return argv
    return [argv[i], *moved, *argv[i + 1:]]


def _options_first(argv: list[str]) -> list[str]:
    """``label pod p a=b --overwrite k-``: options before the positionals, for argparse."""
    opts: list[str] = []
    rest: list[str] = []
    i = 1
    while i < len(argv):
        word = argv[i]
        if word in ("-n", "--namespace") and i + 1 < len(argv):
            opts += argv[i:i + 2]
            i += 2
            continue
        (opts if word.startswith("-") and len(word) > 1 else rest).append(word)
        i += 1
    return [argv[0], *opts, *rest]


def _exec_options_first(argv: list[str]) -> list[str]:
    """``exec POD -c C -- CMD``: the options before ``--`` go ahead of POD, as kubectl takes them."""
    end = argv.index("--") if "--" in argv else len(argv)
    opts: list[str] = []
    rest: list[str] = []
    i = 1
    while i < end:
        word = argv[i]
        if word in ("-c", "--container", "-n", "--namespace") and i + 1 < end:
            opts += argv[i:i + 2]
            i += 2
            continue
        (opts if word.startswith("-") and len(word) > 1 else rest).append(word)
        i += 1
    return [argv[0], *opts, *rest, *argv[end:]]


def main(argv: list[str] | None = None) -> int:
    """Entry point (``kubectl``)."""
    argv = _hoist_globals(list(sys.argv[1:] if argv is None else argv))
    if argv and argv[0] in ("label", "annotate"):
        argv = _options_first(argv)
    if argv and argv[0] == "exec":
        argv = _exec_options_first(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "cmd", None):
        parser.print_help()
        return 1
    if args.cmd == "exec" and args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if args.cmd == "run" and args.command_args and args.command_args[0] == "--":
        args.command_args = args.command_args[1:]
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except errors.Unavailable as exc:
        print(f"The connection to the server was refused: {exc}", file=sys.stderr)
        return 1
    except errors.K8sError as exc:
        print(f"Error from server ({exc.reason}): {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
