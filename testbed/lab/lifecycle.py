"""Bring a calicolab lab up and down, and talk to its supervisor.

A lab named ``L`` is held by a detached supervisor (:mod:`testbed.lab.supervisor`) that
builds the Mininet network and keeps it alive. Everything the lab makes is
written, *before* it is made, to ``/run/calicolab/L/state.json`` (:mod:`testbed.lab.state`):

* netns ``L-<host>`` for every node, router and external host, and
  ``L-<segment>`` for every segment (its Linux bridge lives there, so bridges
  and their ports never appear in the machine's own namespace);
* the cgroup (v2) ``calicolab/L`` holding every process of the lab;
* the PIDs (with their start times) of the supervisor, the node shells and the
  services (etcd, kubelet, calico-node).

:func:`up`, :func:`down`, :func:`install_cni` and :func:`status` are what the
CLI calls; :mod:`testbed.lab.clean` removes whatever a lab left behind.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kernel.mount import mount
from testbed.lab.state import (
    EXIT_EXISTS,
    EXIT_INPUT,
    EXIT_NOLAB,
    HEALTH_PORT,
    PYCACHE,
    REPO,
    RUN_ROOT,
    LabError,
    Progress,
    is_multihost,
    is_running,
    list_labs,
    part,
    pid_alive,
    plan,
    read_state,
    resolve,
    state_dir,
    write_state,
)
from testbed.lab.topology import load

# --------------------------------------------------------------------------- up / down


def _stderr_progress(msg: str) -> None:
    print(f"calicolab: {msg}", file=sys.stderr, flush=True)


def up(topology: str | os.PathLike, name: str | None = None, no_cni: bool = False,
       timeout: float = 120.0, progress: Progress | None = None,
       ready_timeout: float = 30.0, runtime: str | None = None,
       tunnels: dict | None = None, datastore: str | None = None,
       join_files: str | None = None) -> dict:
    """Bring up the lab described by ``topology``; return its state once it is ready.
    ``datastore`` (kubernetes or etcdv3) overrides the file's ``calico.datastore``.

    Validation and every check happen before anything is created; a failure
    during the build tears down whatever was made. Raises :class:`LabError`
    (or :class:`testbed.lab.topology.TopologyError` for a bad file). A topology
    with ``hosts:`` is brought up on every machine by :mod:`testbed.multihost`;
    each machine's part comes back here (``CALICOLAB_PART``, with its ``tunnels`` and, for
    its worker nodes, ``join_files``: a JSON file of what ``kubeadm join`` leaves in their
    /etc/kubernetes, written there before any of its kubelets starts).
    """
    progress = progress or _stderr_progress
    topo = load(topology, name=name, runtime=runtime, datastore=datastore)
    lab = topo.name
    _preflight()
    old = read_state(lab)
    if is_running(old):
        raise LabError(f"lab {lab!r} is already running (supervisor pid "
                       f"{old['supervisor'].get('pid')}); `calicolab down {lab}` first, "
                       "or use --name for another copy", EXIT_EXISTS)
    if state_dir(lab).exists():
        from testbed.lab.clean import clean_lab
        progress(f"removing leftovers of an earlier lab {lab!r}")
        clean_lab(lab)
    if topo.multihost and not part():
        from testbed.multihost import controller

        return controller.up(topo, no_cni=no_cni, timeout=timeout, progress=progress,
                             ready_timeout=ready_timeout)
    taken = [n for n in plan(topo)["netns"] if (Path("/run/netns") / n).exists()]
    if taken:
        raise LabError(f"network namespace(s) {', '.join(taken)} already exist and were not made "
                       f"by a calicolab lab named {lab!r}; choose another --name", EXIT_EXISTS)
    state = plan(topo)
    join = _read_join_files(state, join_files) if join_files else None
    state["no_cni"] = no_cni
    state["tunnels"] = tunnels or {}
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    try:
        state_dir(lab).mkdir()
    except FileExistsError:
        raise LabError(f"lab {lab!r} is being created by someone else right now",
                       EXIT_EXISTS) from None
    if part():  # the copy sent by the machine driving the lab: keep it with the part
        kept = state_dir(lab) / "topology.yaml"
        shutil.copyfile(topology, kept)
        topology = kept
        state["topology"] = str(kept)
    else:
        _mount_state_dir(lab, progress)
    write_state(lab, state)
    if join:
        from testbed.lab import kubeadm

        kubeadm.join(state, join)

    rfd, wfd = os.pipe()
    log = open(state_dir(lab) / "labd.log", "ab")
    argv = [sys.executable, "-m", "testbed.lab.supervisor", "--topology", str(Path(topology).resolve()),
            "--name", lab, "--progress-fd", str(wfd), "--ready-timeout", str(ready_timeout)]
    if no_cni:
        argv.append("--no-cni")
    argv += ["--runtime", topo.runtime]
    argv += ["--datastore", topo.calico.datastore]
    # the supervisor compiles into the lab processes' bytecode cache too (testbed.lab.state.node_env)
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONPYCACHEPREFIX=str(PYCACHE))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                pass_fds=(wfd,), start_new_session=True, env=env, cwd="/")
    finally:
        os.close(wfd)
        log.close()
    progress(f"lab {lab}: supervisor started (pid {proc.pid})")
    try:
        _follow(rfd, proc, lab, timeout, progress)
    except KeyboardInterrupt:
        progress(f"interrupted: removing lab {lab}")
        _abort(proc, lab)
        raise
    finally:
        os.close(rfd)
    st = read_state(lab)
    assert st is not None
    return st


def _mount_state_dir(lab: str, progress: Progress) -> None:
    """Make the lab's state dir a tmpfs of its own (``calicolab-<lab>``), as ``/run`` is on a
    Debian machine, whatever the filesystem under :data:`RUN_ROOT`: etcd's data, the logs
    and the nodes' directories then never wait on a disk (on an ext4 ``/run``, inode
    allocation was ~2.7% of a 50-node start's CPU and etcd's fsyncs went to the disk), and
    are not capped by ``/run``'s size. :func:`testbed.lab.clean.clean_lab` unmounts it (it
    unmounts every mount under the state dir) before removing the directory. A machine where
    the mount is refused keeps the state on its disk, and says so. Not for a part of a lab over
    several machines: its record must outlive the mount namespace of the sshd that started it,
    so that ``calicolab clean`` finds it after that machine comes back (the multi-host tests'
    machines each get a new mount namespace with their new sshd)."""
    sdir = state_dir(lab)
    try:
        mount(f"calicolab-{lab}", str(sdir), "tmpfs", 0, "mode=0755", what=f"tmpfs on {sdir}")
    except OSError as exc:
        progress(f"the lab's state stays on the machine's filesystem ({exc})")


def _read_join_files(state: dict, path: str) -> dict:
    """The join bundle at ``path`` (one machine's part only), checked before anything is made."""
    from testbed.lab import kubeadm

    if not part():
        raise LabError("--join-files is for one machine's part of a lab over several "
                       "(CALICOLAB_PART, set by testbed.multihost)", EXIT_INPUT)
    try:
        files = json.loads(Path(path).read_text())
        kubeadm.check_join(state, files)
    except OSError as exc:
        raise LabError(f"cannot read the join files {path}: {exc.strerror or exc}", EXIT_INPUT) from None
    except ValueError as exc:  # JSONDecodeError included
        raise LabError(f"bad join files {path}: {exc}", EXIT_INPUT) from None
    return files


def _follow(rfd: int, proc: subprocess.Popen, lab: str, timeout: float, progress: Progress) -> None:
    deadline = time.monotonic() + timeout
    buf = b""
    error: str | None = None
    last = "none"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            tail = _log_tail(state_dir(lab) / "labd.log", 25)  # read before the lab is removed
            _abort(proc, lab)
            raise LabError(f"lab {lab!r} was not ready after {timeout:.0f}s (last progress: {last}); "
                           f"it was removed"
                           + (f"\n--- supervisor log (tail) ---\n{tail}" if tail else ""))
        ready, _, _ = select.select([rfd], [], [], min(left, 0.5))
        if not ready:
            if proc.poll() is not None:
                break  # the supervisor died without a word (whoever else holds the pipe)
            continue
        data = os.read(rfd, 65536)
        if not data:
            break
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            text = line.decode(errors="replace")
            if text == "ready":
                return
            if text.startswith("error: "):
                error = text[7:]
            elif text.startswith("progress: "):
                last = text[10:]
                progress(last)
    # EOF (or exit) without "ready": the supervisor failed; it tears itself down.
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    tail = _log_tail(state_dir(lab) / "labd.log")
    code = proc.returncode
    _abort(proc, lab)
    died = "supervisor exited" + (f" with status {code}" if code is not None and code >= 0 else
                                  f" on signal {-code}" if code is not None else "")
    raise LabError(f"lab {lab!r} failed to start: {error or died} (last progress: {last})"
                   + (f"\n--- supervisor log (tail) ---\n{tail}" if tail and not error else ""))


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _abort(proc: subprocess.Popen, lab: str) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    from testbed.lab.clean import clean_lab
    clean_lab(lab)


def _preflight() -> None:
    if os.geteuid() != 0:
        raise LabError("calicolab needs root (network namespaces, Mininet): run it with sudo")
    for tool in ("mnexec", "etcd", "ip", "nsenter"):
        if not any((Path(d) / tool).exists() for d in os.environ.get("PATH", "").split(":")
                   + ["/usr/sbin", "/usr/bin", "/sbin"]):
            raise LabError(f"the '{tool}' command is missing: run scripts/setup.sh")


def down(name: str | None = None, timeout: float = 30.0, progress: Progress | None = None) -> str:
    """Stop a running lab cleanly (SIGTERM to its supervisor), then remove any leftovers."""
    progress = progress or _stderr_progress
    if name:
        st = read_state(name)
        if st is None:
            raise LabError(f"no lab named {name!r} (labs: {', '.join(list_labs()) or 'none'})",
                           EXIT_NOLAB)
    else:
        st = resolve(None)
    lab = st["lab"]
    if is_multihost(st):
        from testbed.multihost import controller

        controller.down(st, progress)
        progress(f"lab {lab}: down")
        return lab
    sup = st.get("supervisor") or {}
    pid, start = sup.get("pid"), sup.get("start")
    if pid_alive(pid, start):
        progress(f"lab {lab}: stopping (supervisor pid {pid})")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid, start) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid, start):
            progress(f"lab {lab}: supervisor still running after {timeout:.0f}s, cleaning up")
    from testbed.lab.clean import clean_lab
    clean_lab(lab)
    progress(f"lab {lab}: down")
    return lab


# --------------------------------------------------------------------------- control socket


def control(lab: str, request: dict, timeout: float = 120.0) -> dict:
    """Send one request to the lab's supervisor and return its reply."""
    path = state_dir(lab) / "control.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise LabError(f"cannot reach the supervisor of lab {lab!r}: {exc}") from None
    finally:
        sock.close()
    try:
        reply = json.loads(data)
    except ValueError:
        raise LabError(f"the supervisor of lab {lab!r} sent a bad reply: {data[:100]!r}") from None
    if not reply.get("ok"):
        raise LabError(reply.get("error") or f"supervisor of lab {lab!r} refused {request}")
    return reply


def install_cni(name: str | None = None, timeout: float = 120.0, operator: bool = False,
                manifest: str | None = None) -> dict:
    """Start calico-node on every node (the walkthrough's `kubectl apply -f calico.yaml`: the
    project's manifest of the lab's datastore, or the file ``manifest`` as it is).
    ``operator``: the Tigera operator has installed Calico (testbed.k8s.tigera.install); the
    lab only records it and waits for the nodes."""
    st = resolve(name)
    if is_multihost(st):
        from testbed.multihost import controller

        return controller.install_cni(st, timeout=timeout)
    req = {"cmd": "install-cni", "operator": operator}
    if manifest:
        req["manifest"] = os.path.abspath(manifest)
    return control(st["lab"], req, timeout=timeout)


# --------------------------------------------------------------------------- status


#: seconds a node's missing routes must persist before ``status`` calls the
#: lab degraded (BGP carries a new block to every node well within it)
DEGRADED_SETTLE = 3.0


def status(name: str | None = None) -> dict:
    """Nodes, addresses, services and calico-node health of a running lab."""
    from testbed.lab import netns as nsmod

    st = resolve(name)
    if is_multihost(st):
        from testbed.multihost import controller

        return controller.status(st)
    out: dict[str, Any] = {"lab": st["lab"], "phase": st["phase"], "topology": st["topology"],
                           "etcd_endpoints": st["etcd_endpoints"],
                           "supervisor": st["supervisor"].get("pid"), "nodes": [], "others": [],
                           "skipped": st.get("skipped") or [], "timings": st.get("timings") or {}}
    for hname, h in st["hosts"].items():
        if h["kind"] != "node":
            out["others"].append({"name": hname, "kind": h["kind"], "address": h["address"],
                                  "netns": h["netns"]})
            continue
        services = {}
        for key, svc in st["services"].items():
            host, _, sname = key.partition("/")
            if host == hname:
                services[sname] = service_status(svc, now=time.time())
        node = {"name": hname, "role": h["role"], "address": h["address"], "netns": h["netns"],
                "services": services, "datapath": None, "ready": None, "live": None,
                "agent": "not running"}
        if st.get("cni_installed") or "calico-node" in services:  # a DaemonSet pod or a service
            try:
                code, body = nsmod.http_json(h["netns"], "127.0.0.1", HEALTH_PORT, "/status",
                                             timeout=1.0)
                if isinstance(body, dict):
                    node.update(datapath=body.get("datapath"), datapath_note=body.get("datapath_note"),
                                bpf=body.get("bpf"), encap=body.get("encap"), ready=body.get("ready"),
                                live=body.get("live"), tunnel_address=body.get("tunnel_address"),
                                bgp=body.get("bgp"), last_error=body.get("last_error"),
                                unimplemented=body.get("unimplemented") or [])
                    node["agent"] = "ready" if body.get("ready") else "not ready"
                else:
                    node["agent"] = f"health answered {code} without JSON"
            except OSError as exc:
                node["agent"] = f"health port unreachable ({exc.strerror or exc})"
        out["nodes"].append(node)
    agents = bool(st.get("cni_installed"))
    if agents:
        _check_dataplane(st, out["nodes"])
    out["health"] = settled_health(out, agents, lambda: _check_dataplane(st, out["nodes"]))
    return out


def settled_health(info: dict, agents_expected: bool, recheck: Callable[[], None],
                   settle: float = DEGRADED_SETTLE, clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> dict:
    """:func:`health` of ``info``, where a route missing for a moment is convergence, not
    damage (a block claimed a moment ago is still on its way through BGP): when routes are
    all a degraded lab lacks, ``recheck()`` re-reads the nodes' dataplane until they are there
    or ``settle`` seconds have passed, and only gaps that last are "degraded". A missing
    tunnel device is reported at once."""
    verdict = health(info, agents_expected=agents_expected)
    deadline = clock() + settle
    while (agents_expected and verdict["state"] == "degraded" and clock() < deadline
           and all(" no route to " in m for n in info["nodes"] for m in n.get("missing") or [])):
        sleep(0.25)
        recheck()
        verdict = health(info, agents_expected=agents_expected)
    return verdict


def service_status(rec: dict, now: float, alive: bool | None = None) -> dict:
    """What ``status`` says of one recorded service: ``state`` is ``running``,
    ``restarting`` (exited, the supervisor restarts it at ``next_start``) or ``crashed``
    (not running and no restart scheduled); ``restarts`` counts the restarts so far."""
    if alive is None:
        alive = pid_alive(rec.get("pid"), rec.get("start"))
    out = {"pid": rec.get("pid"), "running": alive, "restarts": rec.get("restarts", 0),
           "exit": None if alive else rec.get("exit"), "last_exit": rec.get("last_exit")}
    if alive:
        out["state"] = "running"
    elif rec.get("next_start") is not None and rec.get("exit") is not None:
        out["state"] = "restarting"
        out["restart_in"] = round(max(0.0, rec["next_start"] - now), 1)
    elif rec.get("restart_policy") and rec.get("exit") is None:
        out["state"] = "restarting"  # just exited: the supervisor notices within 0.2 s
    else:
        out["state"] = "crashed"
    return out


def describe_service(name: str, svc: dict) -> str:
    """One service for a person: ``kubelet``, ``kubelet(2 restarts)``,
    ``calico-node(restarting in 9.8s after signal 9 (SIGKILL), 1 restart)``, ``etcd(crashed: status 1)``."""
    from testbed.lab.restarts import describe_exit

    n = svc.get("restarts") or 0
    count = f"{n} restart{'s' if n != 1 else ''}"
    state = svc.get("state", "running" if svc.get("running") else "crashed")
    if state == "running":
        return name + (f"({count})" if n else "")
    if state == "restarting" and "restart_in" not in svc:
        return f"{name}(exited, restart pending" + (f", {count}" if n else "") + ")"
    if state == "restarting":
        return (f"{name}(restarting in {svc.get('restart_in', 0):g}s after "
                f"{describe_exit(svc.get('exit'))}" + (f", {count}" if n else "") + ")")
    return f"{name}(crashed: {describe_exit(svc.get('exit'))}" + (f", {count}" if n else "") + ")"


def _check_dataplane(st: dict, nodes: list[dict]) -> None:
    """Each running node's routes and tunnel devices against its pools' modes
    (:mod:`testbed.lab.dataplane`): ``dataplane`` is "ok", "degraded" (with ``missing``: what
    it lacks) or why it could not be read."""
    from testbed.lab import dataplane

    names = [n["name"] for n in nodes if n["agent"] in ("ready", "not ready")]
    try:
        found = dataplane.check(st, names)
    except Exception as exc:  # noqa: BLE001 - status reports what it could not read
        for n in nodes:
            n["dataplane"], n["missing"] = f"not read ({type(exc).__name__}: {exc})", []
        return
    for n in nodes:
        missing = found.get(n["name"])
        n["dataplane"] = "-" if missing is None else ("degraded" if missing else "ok")
        n["missing"] = missing or []


def health(info: dict, agents_expected: bool = False) -> dict:
    """The lab's verdict from a :func:`status` dict: ``broken`` (a service exited, a
    calico-node does not answer or is not live, its dataplane or BGP reports an error),
    ``degraded`` (a node's routes do not cover every remote block, or its tunnel device is
    missing, while its agent is ready and its BGP sessions are up), ``not ready`` (an agent
    not ready yet, BGP sessions not all Established: routes may still be coming) or
    ``healthy``; with the problems, each naming its node."""
    broken: list[str] = []
    waiting: list[str] = []
    degraded: list[str] = []
    for n in info["nodes"]:
        name = n["name"]
        for sname, svc in sorted(n["services"].items()):
            if not svc["running"]:
                broken.append(f"{name}: {describe_service(sname, svc)}")
        if agents_expected or "calico-node" in n["services"]:
            agent = n.get("agent", "")
            if agent not in ("ready", "not ready"):
                broken.append(f"{name}: calico-node {agent}")
            elif n.get("live") is False:
                broken.append(f"{name}: calico-node is not live")
            elif agent == "not ready":
                waiting.append(f"{name}: calico-node not ready")
            if n.get("last_error"):
                broken.append(f"{name}: calico-node: {n['last_error']}")
        bgp = n.get("bgp")
        if isinstance(bgp, dict) and (bgp.get("error") or bgp.get("config_error")):
            broken.append(f"{name}: BGP: {bgp.get('error') or bgp.get('config_error')}")
        peers = bgp.get("peers") if isinstance(bgp, dict) else None
        if peers:
            down = [str(p.get("address") or p.get("name")) for p in peers if p.get("info") != "Established"]
            if down:
                waiting.append(f"{name}: BGP not established with {', '.join(down)}")
        missing = n.get("missing") or []
        converging = n.get("agent") != "ready" or any(p.startswith(f"{name}: BGP not established")
                                                      for p in waiting)
        (waiting if converging else degraded).extend(missing)
    state = "broken" if broken else ("degraded" if degraded else ("not ready" if waiting else "healthy"))
    return {"state": state, "problems": broken + degraded + waiting}
