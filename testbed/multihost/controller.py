"""A lab spanning several machines, driven from this one: up, down, clean, status, routing.

The topology places each node, router and external host on a machine (``host:``; this
one is ``local``). Each machine holds its *part*: a lab of the same name made by that
machine's own ``calicolab up`` with ``CALICOLAB_PART=<machine>`` (only its members, a
bridge per segment it has members on, a VXLAN port on those that span machines:
:mod:`testbed.multihost.vxlan`), its own supervisor, state root and cleanup. This module
runs those commands on every machine through :mod:`testbed.multihost.hosts` and keeps
the lab's *record* here (``/run/calicolab/<lab>/state.json`` with a ``multihost`` key):
which machines, how to reach them, who is where, the tunnels. This machine's own part
lives under ``/run/calicolab/<lab>/local/``.

Every failure names the machine. ``up`` contacts every machine before it makes anything;
when a part fails to start, every part is removed again. ``down``/``clean`` remove what
they can reach and keep the record of the machines they could not, so a later
``calicolab clean`` tries those again.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from testbed.lab.state import (
    EXIT_EXISTS,
    EXIT_INPUT,
    EXIT_NOLAB,
    LabError,
    Progress,
    members,
    read_state,
    state_dir,
    write_state,
)
from testbed.lab.topology import LOCAL_HOST, Topology
from testbed.multihost import vxlan
from testbed.multihost.hosts import REPO, Host, HostError, Machine, open_host

__all__ = ["up", "down", "clean", "status", "install_cni", "machine_of", "connect", "run_cli",
           "exec_in", "shell", "run_tool", "portable_topology", "reach_map"]


def _machines(topo: Topology, lab: str) -> dict[str, Machine]:
    out = {}
    for name in topo.machines():
        if name == LOCAL_HOST:
            out[name] = _local_machine(lab)
        else:
            out[name] = Machine.from_spec(topo.host_spec(name))
    return out


def machines(st: dict) -> dict[str, Machine]:
    """The machines of a lab's record."""
    return {n: Machine.from_record(r) for n, r in st["multihost"]["machines"].items()}


def machine_of(st: dict, member: str) -> Machine:
    """The machine holding node/router/external ``member`` (LabError naming the members if none)."""
    placement = st["multihost"]["placement"]
    if member not in placement:
        names = [n for n, h in st["hosts"].items() if h.get("kind") != "segment"]
        raise LabError(f"lab {st['lab']!r} has no node {member!r} (nodes: {', '.join(names)})",
                       EXIT_INPUT)
    return machines(st)[placement[member]]


def connect(st: dict, machine: Machine) -> Host:
    """A connection to ``machine`` of the lab (its pinned host key checked)."""
    return open_host(machine)


def _parallel(fn: Callable[[str], Any], names: list[str]) -> dict[str, Any]:
    """``fn(name)`` for every name at once; name -> result or the exception it raised."""
    out: dict[str, Any] = {}

    def work(n: str) -> None:
        try:
            out[n] = fn(n)
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            out[n] = exc

    threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


# --------------------------------------------------------------------------- pure parts


def portable_topology(topo: Topology) -> str:
    """The topology as every machine's part reads it: the lab's name, workloads inlined
    (their files are here), key paths absolute (parts never use them), the lab's datastore
    (the file's, or ``up --datastore``'s) written out."""
    data = yaml.safe_load(Path(topo.path).read_text())
    data["name"] = topo.name
    data["calico"] = {**(data.get("calico") or {}), "datastore": topo.calico.datastore}
    if topo.workloads:
        data["workloads"] = [{"manifest": list(w.documents)} for w in topo.workloads]
    data["hosts"] = [{"name": h.name, "address": h.address, "user": h.user, "key": h.key,
                      "port": h.port} for h in topo.hosts]
    return yaml.safe_dump(data, sort_keys=False)


def _route_source(dst: str) -> str:
    """The source address this machine uses towards ``dst``."""
    res = subprocess.run(["ip", "-o", "route", "get", dst], capture_output=True, text=True,
                         check=False)
    parts = res.stdout.split()
    if res.returncode != 0 or "src" not in parts:
        raise LabError(f"this machine has no route to {dst}: {res.stderr.strip() or res.stdout.strip()}")
    return parts[parts.index("src") + 1]


def reach_map(ms: dict[str, Machine], resolve: Callable[[str], str] | None = None,
              source: Callable[[str], str] = _route_source) -> dict[str, dict[str, str]]:
    """``reach[a][b]``: the address machine ``a`` sends VXLAN to for machine ``b``.

    Another machine is reached at its topology address (resolved here); this machine, by
    a machine ``a``, at the source address this machine routes ``a`` from."""
    resolve = resolve or _resolve
    addr = {n: resolve(m.address) for n, m in ms.items() if not m.local}
    out: dict[str, dict[str, str]] = {}
    for a in ms:
        out[a] = {}
        for b in ms:
            if a == b:
                continue
            out[a][b] = source(addr[a]) if ms[b].local else addr[b]
    return out


def _resolve(address: str) -> str:
    try:
        return socket.getaddrinfo(address, None, socket.AF_INET)[0][4][0]
    except (socket.gaierror, IndexError) as exc:
        raise LabError(f"cannot resolve {address}: {exc}") from None


# --------------------------------------------------------------------------- up


def _line(progress: Progress, name: str) -> Callable[[str], None]:
    def on_line(line: str) -> None:
        text = line.removeprefix("calicolab: ")
        if text.strip():
            progress(f"[{name}] {text}")
    return on_line


def _last_error(text: str) -> str:
    lines = [ln.removeprefix("calicolab: ") for ln in text.strip().splitlines() if ln.strip()]
    errs = [ln.removeprefix("error: ") for ln in lines if ln.startswith("error: ")]
    return "\n".join(errs) if errs else (lines[-1] if lines else "no output")


def up(topo: Topology, no_cni: bool = False, timeout: float = 180.0,
       progress: Progress | None = None, ready_timeout: float = 30.0) -> dict:
    """Bring up every machine's part of ``topo``; return the lab's record once all are ready.

    Nothing is made before every machine answered; a part that fails removes every part.
    """
    progress = progress or (lambda m: None)
    lab = topo.name
    ms = _machines(topo, lab)
    record: dict[str, Any] = {
        "lab": lab, "topology": str(Path(topo.path).resolve()), "phase": "starting", "error": None,
        "created": time.time(), "supervisor": {}, "hosts": members(topo), "netns": [],
        "cgroup": None, "control_plane": topo.control_plane.name,
        "etcd_endpoints": topo.etcd_endpoints, "services": {}, "no_cni": no_cni,
        "cni_installed": False, "skipped": [],
        "multihost": {"machines": {n: m.record() for n, m in ms.items()},
                      "placement": {n: topo.host_of(n) for n in topo.host_names()}, "tunnels": {}},
    }
    try:
        state_dir(lab).mkdir(parents=True)
    except FileExistsError:
        raise LabError(f"lab {lab!r} is being created by someone else right now", EXIT_EXISTS) from None
    write_state(lab, record)
    progress(f"lab {lab}: {len(ms)} machine(s): " + ", ".join(m.describe() for m in ms.values()))
    hosts: dict[str, Host] = {}
    try:
        hosts = _connect_all(record, ms, progress)
        tunnels = vxlan.plan(lab, {s.name: topo.segment_machines(s.name) for s in topo.segments},
                             reach_map(ms))
        record["multihost"]["tunnels"] = tunnels
        write_state(lab, record)
        for seg in topo.spanning_segments():
            progress(f"segment {seg.name} spans {', '.join(topo.segment_machines(seg.name))}: "
                     f"VXLAN {vxlan.vni(lab, seg.name)} on UDP {vxlan.PORT}")
    except BaseException:
        for h in hosts.values():
            h.close()
        shutil.rmtree(state_dir(lab), ignore_errors=True)  # nothing was made on any machine
        raise
    text = portable_topology(topo).encode()
    cp_machine = topo.host_of(topo.control_plane.name)
    want = _join_paths(topo, hosts[cp_machine].machine)
    join = _Join(hosts[cp_machine], want, deadline=time.monotonic() + timeout)

    def start(name: str) -> None:
        host = hosts[name]
        tmp = f"/tmp/calicolab-{lab}-{name}-{uuid.uuid4().hex[:8]}.yaml"
        made = [tmp]
        try:
            host.write(tmp, text)
            args = ["up", tmp, "--name", lab, "--timeout", str(timeout), "--ready-timeout",
                    str(ready_timeout), "--tunnels", json.dumps(tunnels.get(name, {}))]
            if no_cni:
                args.append("--no-cni")
            if name == cp_machine and want:
                join.start(tmp)  # files newer than this copy of the topology are this up's
            if name in want:  # kubeadm join: its workers' files are there before its part starts
                files = join.files(name)
                if files is None:
                    raise HostError(host.machine, f"its part was not started: the kubeconfigs of its "
                                    f"nodes did not come from {hosts[cp_machine].describe()}: {join.error}")
                made.append(tmp.removesuffix(".yaml") + ".join.json")
                host.check(["install", "-m", "600", "/dev/null", made[-1]], "creating the join files",
                           timeout=30)
                host.write(made[-1], json.dumps(files).encode())
                args += ["--join-files", made[-1]]
                progress(f"[{name}] kubeconfigs of {', '.join(sorted(files))} from {cp_machine} (kubeadm join)")
            res = host.stream(host.calicolab(*args), _line(progress, name), timeout=timeout + 60)
        finally:
            if name == cp_machine:
                join.stop()  # and wait: the file wait compares with ``tmp``, removed next
            try:
                host.run(["rm", "-f", *made], timeout=30)
            except HostError:
                pass
        if res.rc != 0:
            raise HostError(host.machine, f"its part of lab {lab} failed to start: "
                            f"{_last_error(res.err)}")

    # the control plane's machine first in the list: its progress reads first
    order = sorted(hosts, key=lambda n: n != topo.host_of(topo.control_plane.name))
    results = _parallel(start, order)
    failed = {n: r for n, r in results.items() if isinstance(r, BaseException)}
    if failed:
        record["phase"] = "failed"
        record["error"] = "; ".join(str(e) for e in failed.values())
        write_state(lab, record)
        progress(f"lab {lab} failed on {', '.join(sorted(failed))}: removing it from every machine")
        report = _clean_parts(lab, record, hosts)
        for h in hosts.values():
            h.close()
        first = next(iter(failed.values()))
        if isinstance(first, KeyboardInterrupt):
            raise first
        msg = "\n".join(str(e) for e in failed.values())
        if report["unreached"]:
            msg += ("\nnot removed (unreachable): " + "; ".join(report["errors"])
                    + f"\n`calicolab clean {lab}` tries those again")
        raise LabError(msg)
    for h in hosts.values():
        h.close()
    record["phase"] = "ready"
    record["cni_installed"] = not no_cni
    write_state(lab, record)
    return record


def _join_paths(topo: Topology, cp: Machine) -> dict[str, dict[str, dict[str, str]]]:
    """What ``kubeadm join`` needs for each worker on another machine than the control
    plane's, where the control plane's part makes it (:func:`testbed.lab.kubeadm.init`):
    machine -> node -> file (:data:`~testbed.lab.kubeadm.JOIN_FILES`) -> path on ``cp``."""
    from testbed.lab import kubeadm

    out: dict[str, dict[str, dict[str, str]]] = {}
    for node in topo.nodes:
        where = topo.host_of(node.name)
        if where != cp.name:
            etc = f"{cp.run_dir}/{topo.name}/nodes/{node.name}/{kubeadm.ETC_DIR}"
            out.setdefault(where, {})[node.name] = {f: f"{etc}/{f}" for f in kubeadm.JOIN_FILES}
    return out


#: run on the control plane's machine: exit 0 once every file "$@" exists and is newer than
#: "$1" (this up's copy of the topology: older ones are an earlier lab's leftovers), else 1
#: after about a second
_FRESH = ('ref=$1; shift; i=0; while [ $i -lt 20 ]; do ok=1; for f; do [ "$f" -nt "$ref" ] || ok=0; '
          'done; [ $ok = 1 ] && exit 0; sleep 0.05; i=$((i+1)); done; exit 1')


class _Join:
    """The workers' join files, read from the control plane's machine once its part made them
    (its PKI is the first thing it makes), for the other machines' parts, which start only then:
    their kubelets, kube-proxy and calico-node find /etc/kubernetes as ``kubeadm join`` leaves it.
    (A kubelet without its kubeconfig exits and is restarted with back-off: the workers
    registered late or not at all while the control plane's part waited for them.)"""

    def __init__(self, src: Host, want: dict[str, dict[str, dict[str, str]]], deadline: float):
        self.src, self.want, self.deadline = src, want, deadline
        self.got: dict[str, dict[str, dict[str, str]]] = {}
        self.error = ""  # why the files could not be had
        self.done = threading.Event()
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, ref: str) -> None:
        """Begin waiting for the files (newer than ``ref``) on a thread."""
        self.thread = threading.Thread(target=self._run, args=(ref,), name="join-files", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """The control plane's part ended (ready or failed, maybe before :meth:`start`): the
        wait takes a last look and ends; return once it has."""
        self.stopped.set()
        if self.thread is None:
            self.error = self.error or "its part did not start"
            self.done.set()
        self.done.wait()

    def _run(self, ref: str) -> None:
        paths = [p for nodes in self.want.values() for files in nodes.values() for p in files.values()]
        try:
            while True:
                ended = self.stopped.is_set()  # read first: a look once the part ended is the last
                if self.src.run(["sh", "-c", _FRESH, "sh", ref, *paths], timeout=60).rc == 0:
                    break
                if ended:
                    self.error = "its part ended before it made them"
                    return
                if time.monotonic() > self.deadline:
                    self.error = "not made in time"
                    return
            self.got = {m: {n: {f: self.src.read(p).decode() for f, p in files.items()}
                            for n, files in nodes.items()} for m, nodes in self.want.items()}
        except Exception as exc:  # noqa: BLE001 - handed to the parts waiting for the files
            self.error = str(exc)
        finally:
            self.done.set()

    def files(self, machine: str) -> dict[str, dict[str, str]] | None:
        """``machine``'s workers' files (node -> file -> text) once read; None if they cannot
        be had (:attr:`error` says why)."""
        self.done.wait()
        return self.got.get(machine)


def _connect_all(record: dict, ms: dict[str, Machine], progress: Progress) -> dict[str, Host]:
    """Connect to every machine and check it can run its part; HostError naming every failure."""
    pins: dict[str, str] = {}

    def one(name: str) -> Host:
        m = ms[name]
        host = open_host(m, pin=lambda fp, n=name: pins.__setitem__(n, fp))
        try:
            who = host.check(["id", "-u"], "running a command (as root)", timeout=30).out.strip()
            if who != "0":
                raise HostError(m, f"commands run as uid {who}, not root")
            probe = host.run(host.calicolab("list"), timeout=60)
            if probe.rc != 0:
                raise HostError(m, f"cannot run calicolab from {m.repo} (run scripts/setup.sh "
                                f"there): {(probe.err or probe.out).strip()[-400:]}")
        except BaseException:
            host.close()
            raise
        return host

    results = _parallel(one, list(ms))
    failed = [r for r in results.values() if isinstance(r, BaseException)]
    hosts = {n: r for n, r in results.items() if isinstance(r, Host)}
    if failed:
        for h in hosts.values():
            h.close()
        if any(isinstance(e, KeyboardInterrupt) for e in failed):
            raise KeyboardInterrupt
        errs = [e for e in failed if isinstance(e, LabError)]
        if len(errs) == len(failed) and len(errs) == 1:
            raise errs[0]
        raise LabError("\n".join(str(e) for e in failed))
    for name, fp in pins.items():
        progress(f"{ms[name].describe()}: host key {fp} accepted on first use and pinned for this "
                 "lab (give hostKey in the topology to check it instead)")
        record["multihost"]["machines"][name]["pinned"] = fp
    return hosts


# --------------------------------------------------------------------------- down / clean


def _clean_parts(lab: str, st: dict, hosts: dict[str, Host] | None = None,
                 verb: str = "clean", ms: dict[str, Machine] | None = None) -> dict[str, Any]:
    """Run ``calicolab <verb> <lab>`` as every machine's part (``ms``: the record's machines
    unless given); what each said, what failed."""
    ms = machines(st) if ms is None else ms
    hosts = dict(hosts or {})
    report: dict[str, Any] = {"done": {}, "errors": [], "unreached": []}

    def one(name: str) -> str:
        host = hosts.get(name)
        own = host is None
        if host is None:
            host = connect(st, ms[name])
        try:
            res = host.run(host.calicolab(verb, lab), timeout=180)
            if res.rc not in (0, EXIT_NOLAB):
                raise HostError(ms[name], f"`calicolab {verb} {lab}` failed (exit {res.rc}): "
                                f"{_last_error(res.err or res.out)}")
            return (res.out.strip() or res.err.strip()).splitlines()[-1] if (res.out or res.err) \
                else "ok"
        finally:
            if own:
                host.close()

    for name, res in _parallel(one, list(ms)).items():
        if isinstance(res, BaseException):
            report["errors"].append(str(res))
            report["unreached"].append(name)
        else:
            report["done"][name] = res
    return report


def _finish_removal(lab: str, st: dict, report: dict[str, Any]) -> None:
    """Drop the record when every machine was cleaned; else keep only the unreached ones."""
    if not report["unreached"]:
        shutil.rmtree(state_dir(lab), ignore_errors=True)
        return
    st["phase"] = "failed"
    st["error"] = "; ".join(report["errors"])
    st["multihost"]["unreached"] = report["unreached"]
    st["multihost"]["machines"] = {n: r for n, r in st["multihost"]["machines"].items()
                                   if n in report["unreached"]}
    write_state(lab, st)


def down(st: dict, progress: Progress | None = None) -> str:
    """Stop every machine's part; LabError naming the machines that could not be reached."""
    progress = progress or (lambda m: None)
    lab = st["lab"]
    progress(f"lab {lab}: stopping on {', '.join(machines(st))}")
    report = _clean_parts(lab, st, verb="down")
    for name, said in report["done"].items():
        progress(f"[{name}] {said.removeprefix('calicolab: ')}")
    _finish_removal(lab, st, report)
    if report["unreached"]:
        raise LabError(f"lab {lab}: " + "; ".join(report["errors"])
                       + f"\neverything on {', '.join(report['done']) or 'no machine'} was removed; "
                       f"`calicolab clean {lab}` tries {', '.join(report['unreached'])} again")
    return lab


def clean(lab: str, st: dict) -> dict[str, list[str]]:
    """``calicolab clean`` of a lab on several machines: every machine it can reach is cleaned,
    and everything of the lab on this machine goes in any case (this machine's part, even once
    the record no longer names it, its bytecode cache, the record itself). What each machine
    said, and the errors: each machine it could not reach, named, with why and what is left
    there (its part, which that machine's own ``calicolab clean <lab>`` removes)."""
    ms = machines(st)
    if LOCAL_HOST not in ms and (state_dir(lab) / "local").exists():
        ms[LOCAL_HOST] = _local_machine(lab)
    report = _clean_parts(lab, st, ms=ms)
    errors = [f"{err}: not cleaned there; its part of lab {lab} is left on it "
              f"(`calicolab clean {lab}` on that machine removes it)" for err in report["errors"]]
    shutil.rmtree(state_dir(lab), ignore_errors=True)
    if state_dir(lab).exists():
        errors.append(f"this machine: could not remove {state_dir(lab)}")
    return {"machines": [f"{n}: {said}" for n, said in report["done"].items()], "errors": errors}


def _local_machine(lab: str) -> Machine:
    """This machine as a machine of lab ``lab`` (its part under the lab's ``local/``)."""
    return Machine(LOCAL_HOST, repo=str(REPO), run_dir=str(state_dir(lab) / "local"))


# --------------------------------------------------------------------------- status, install


def status(st: dict) -> dict:
    """:func:`testbed.lab.lifecycle.status` of every machine, merged; unreachable ones shown so."""
    lab = st["lab"]
    ms = machines(st)
    out: dict[str, Any] = {"lab": lab, "phase": st["phase"], "topology": st["topology"],
                           "etcd_endpoints": st["etcd_endpoints"], "supervisor": None,
                           "nodes": [], "others": [], "skipped": [], "timings": {},
                           "machines": {}}

    def one(name: str) -> dict:
        host = connect(st, ms[name])
        try:
            res = host.run(host.calicolab("--lab", lab, "status", "--json"), timeout=60)
        finally:
            host.close()
        if res.rc != 0 and not res.out.strip().startswith("{"):  # 1 with JSON: a broken part
            raise HostError(ms[name], f"its part of lab {lab} does not answer: {_last_error(res.err)}")
        return json.loads(res.out)

    parts: dict[str, dict] = {}
    for name, res in _parallel(one, list(ms)).items():
        m = ms[name]
        if isinstance(res, BaseException):
            out["machines"][name] = {"machine": m.describe(), "ok": False, "error": str(res)}
            for member, where in st["multihost"]["placement"].items():
                if where != name:
                    continue
                h = st["hosts"][member]
                row = {"name": member, "kind": h["kind"], "address": h["address"], "host": name,
                       "netns": h["netns"]}
                if h["kind"] == "node":
                    row.update(role=h.get("role", ""), services={}, datapath=None, ready=None,
                               live=None, agent=f"unknown: {m.describe()} unreachable")
                    out["nodes"].append(row)
                else:
                    out["others"].append(row)
            continue
        parts[name] = res
        out["machines"][name] = {"machine": m.describe(), "ok": True, "error": None,
                                 "supervisor": res.get("supervisor"), "phase": res.get("phase")}
        for row in res.get("nodes", []):
            out["nodes"].append(dict(row, host=name))
        for row in res.get("others", []):
            out["others"].append(dict(row, host=name))
        out["skipped"] += [f"[{name}] {s}" for s in res.get("skipped", [])]
    order = list(st["multihost"]["placement"])
    out["nodes"].sort(key=lambda r: order.index(r["name"]) if r["name"] in order else 0)
    out["health"] = merged_health(out["machines"], parts)
    return out


def merged_health(machines_: dict[str, dict], parts: dict[str, dict]) -> dict:
    """The lab's verdict from its machines' (each part's ``health``): ``broken`` when a machine
    is unreachable or a part is broken, ``not ready`` when one waits, else ``healthy``."""
    broken = [f"{m['machine']} unreachable" for m in machines_.values() if not m["ok"]]
    waiting: list[str] = []
    for name in sorted(parts):
        h = parts[name].get("health") or {}
        if h.get("state") == "broken":
            broken += h.get("problems") or [f"{name}: broken"]
        elif h.get("state") == "not ready":
            waiting += h.get("problems") or [f"{name}: not ready"]
    state = "broken" if broken else ("not ready" if waiting else "healthy")
    return {"state": state, "problems": broken + waiting}


def install_cni(st: dict, timeout: float = 120.0) -> dict:
    """``install-cni`` on the control plane's machine (kubectl apply of calico.yaml), then on the
    others (each waits for its own calico-node pods)."""
    lab = st["lab"]
    ms = machines(st)
    cp = st["multihost"]["placement"][st["control_plane"]]

    def one(name: str) -> None:
        host = connect(st, ms[name])
        try:
            host.check(host.calicolab("--lab", lab, "install-cni", "--timeout", str(timeout)),
                       "install-cni", timeout=timeout + 60)
        finally:
            host.close()

    one(cp)
    failed = [r for r in _parallel(one, [n for n in ms if n != cp]).values()
              if isinstance(r, BaseException)]
    if failed:
        raise LabError("\n".join(str(e) for e in failed))
    st["cni_installed"] = True
    write_state(lab, st)
    return {"ok": True, "started": [n for n, h in st["hosts"].items() if h["kind"] == "node"]}


# --------------------------------------------------------------------------- commands in members


def run_cli(st: dict, machine: Machine, args: list[str], interactive: bool = False) -> int:
    """Run ``calicolab --lab LAB ARGS`` as ``machine``'s part with this terminal; exit status."""
    host = connect(st, machine)
    try:
        argv = host.calicolab("--lab", st["lab"], *args)
        return host.interactive(argv) if interactive else host.passthrough(argv)
    finally:
        host.close()


def exec_in(st: dict, target: str, cmd: list[str]) -> int:
    """``calicolab exec NODE|NS/POD -- CMD``: a node's command where that node is; a pod's on
    the control plane's machine, as ``kubectl exec`` (the real kubectl reaches the pod through
    the API server and the kubelet API of the pod's node, wherever that node is)."""
    where = machine_of(st, st["control_plane"] if "/" in target else target)
    return run_cli(st, where, ["exec", target, "--", *cmd])


def shell(st: dict, node: str) -> int:
    """``calicolab shell NODE`` on the node's machine (a pty over SSH)."""
    return run_cli(st, machine_of(st, node), ["shell", node], interactive=True)


def run_tool(st: dict, tool: str, args: list[str]) -> int:
    """kubectl/calicoctl on the control plane's machine (its part has admin.conf); ``kubectl
    exec|logs|port-forward`` too: the API server reaches every node's kubelet API."""
    return run_cli(st, machine_of(st, st["control_plane"]), [tool, *args])


def record_of(lab: str) -> dict | None:
    """The record of lab ``lab`` if it spans machines."""
    st = read_state(lab)
    return st if st and st.get("multihost") else None

