"""Faults injected into a running lab, and the probes that watch what a user would see.

Used by the fault suite (tests/lab/test_faults.py) and its benchmark (bench/faults.py).
Every fault targets one lab's own processes and links, found through its state file:

* :func:`kill_service` sends SIGKILL to a recorded service (``k8s-w0/calico-node``), by PID,
  after checking the PID still is the recorded process (its start time);
* :func:`set_link` takes a host's interface down or up inside the host's netns;
* :class:`Prober` pings from one pod's netns to an address every ``interval`` seconds and
  counts the probes that got no answer (:func:`lost_probes` reads ping's output).

Nothing here touches the machine's own namespace or a process the lab did not record.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field

from testbed.lab import state as labstate

_REPLY = re.compile(r"^\[(?P<t>[0-9.]+)\] \d+ bytes from .*icmp_seq=(?P<seq>\d+)")
_NO_ANSWER = re.compile(r"^\[(?P<t>[0-9.]+)\] no answer yet for icmp_seq=(?P<seq>\d+)")


def service_record(lab: str, key: str) -> dict:
    """The recorded service ``key`` (``host/service``) of ``lab``; KeyError if it has none."""
    st = labstate.read_state(lab) or {}
    rec = (st.get("services") or {}).get(key)
    if rec is None:
        raise KeyError(f"lab {lab} has no service {key} (has: {', '.join(sorted(st.get('services') or {}))})")
    return rec


def kill_service(lab: str, key: str, sig: int = signal.SIGKILL) -> int:
    """Send ``sig`` to the running process of service ``key``; returns its PID."""
    rec = service_record(lab, key)
    pid, start = rec.get("pid"), rec.get("start")
    if not labstate.pid_alive(pid, start):
        raise RuntimeError(f"{key} of lab {lab} is not running (pid {pid})")
    os.kill(pid, sig)
    return pid


def _daemon_pod(lab: str, node: str | None, name: str) -> dict | None:
    """The kube-system pod running daemon ``name`` on ``node``: the static pod ``<name>-<node>``,
    a DaemonSet pod ``<name>-xxxxx`` bound to the node or, with ``node`` None, the first
    running pod of a Deployment (``<name>-<hash>-xxxxx``) wherever it runs."""
    for pname, pod in sorted(pods(lab, "kube-system").items()):
        if pod["metadata"].get("deletionTimestamp"):
            continue
        on = (pod.get("spec") or {}).get("nodeName")
        if node is None:
            if pname.startswith(f"{name}-") and pname.count("-") == name.count("-") + 2 and on:
                return pod
            continue
        if on != node:
            continue
        if pname == f"{name}-{node}" or (pname.startswith(f"{name}-") and len(pname) == len(name) + 6):
            return pod
    return None


def daemon_state(lab: str, node: str | None, name: str) -> tuple[bool, int, int | None]:
    """``(running, restarts, pid)`` of daemon ``name`` on ``node``: a lab service (restarted by
    the supervisor) or, when the lab has no such service, a kube-system pod (restarted by the
    kubelet; ``restarts`` is its container's restartCount; ``node`` None: a Deployment's pod)."""
    st = labstate.read_state(lab) or {}
    rec = (st.get("services") or {}).get(f"{node}/{name}")
    if rec is not None:
        alive = labstate.pid_alive(rec.get("pid"), rec.get("start"))
        return alive, rec.get("restarts", 0), rec.get("pid") if alive else None
    pod = _daemon_pod(lab, node, name)
    if pod is None:
        raise KeyError(f"lab {lab} runs no {name} on {node} (neither a service nor a kube-system pod)")
    cs = ((pod.get("status") or {}).get("containerStatuses") or [{}])[0]
    pid = None
    try:
        pid = pod_pid(pod)
    except (KeyError, StopIteration, ValueError):
        pass
    running = "running" in (cs.get("state") or {}) and pid is not None and labstate.pid_alive(pid)
    return running, int(cs.get("restartCount") or 0), pid if running else None


def kill_daemon(lab: str, node: str | None, name: str) -> int:
    """SIGKILL daemon ``name`` on ``node`` (a lab service or a kube-system pod's process); its PID."""
    st = labstate.read_state(lab) or {}
    if f"{node}/{name}" in (st.get("services") or {}):
        return kill_service(lab, f"{node}/{name}")
    running, _restarts, pid = daemon_state(lab, node, name)
    if not running or pid is None:
        raise RuntimeError(f"{name} on {node} of lab {lab} is not running")
    os.kill(pid, signal.SIGKILL)
    return pid


def set_link(lab: str, host: str, ifname: str, up: bool) -> None:
    """``ip link set dev IFNAME up|down`` inside ``host`` of ``lab``."""
    ns = labstate.netns_name(lab, host)
    subprocess.run(["ip", "-n", ns, "link", "set", "dev", ifname, "up" if up else "down"],
                   check=True, capture_output=True, text=True)


def lost_probes(lines: list[str]) -> tuple[int, int, list[float]]:
    """``(answered, lost, times of lost probes)`` from ``ping -D -O`` output lines.

    A probe is lost when ping reported "no answer yet" for it and no reply for it came
    later; probes after the last reply are still in flight and not counted."""
    answered: dict[int, float] = {}
    unanswered: dict[int, float] = {}
    for line in lines:
        m = _REPLY.match(line)
        if m:
            answered[int(m["seq"])] = float(m["t"])
            continue
        m = _NO_ANSWER.match(line)
        if m:
            unanswered[int(m["seq"])] = float(m["t"])
    last = max(answered, default=0)
    lost = {s: t for s, t in unanswered.items() if s not in answered and s < last}
    return len(answered), len(lost), sorted(lost.values())


@dataclass
class Prober:
    """``ping`` every ``interval`` s from the netns of process ``pid`` (a pod's) to ``dst``.

    Started with :meth:`start`, ended with :meth:`stop` (SIGTERM to the ping it started,
    by PID). :meth:`result` counts answered and lost probes so far."""

    pid: int
    dst: str
    interval: float = 0.1
    lines: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    _reader: threading.Thread | None = None

    def start(self) -> Prober:
        """Start pinging."""
        argv = ["nsenter", f"--net=/proc/{self.pid}/ns/net", "--", "ping", "-n", "-D", "-O",
                "-i", str(self.interval), "-W", "1", self.dst]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def result(self) -> tuple[int, int, list[float]]:
        """``(answered, lost, times of the lost probes)`` so far."""
        return lost_probes(list(self.lines))

    def answered_since(self, t: float) -> int:
        """Probes answered after wall time ``t``."""
        return sum(1 for line in list(self.lines)
                   if (m := _REPLY.match(line)) and float(m["t"]) > t)

    def stop(self) -> tuple[int, int, list[float]]:
        """End the ping (the process this prober started) and return :meth:`result`."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        return self.result()

    def __enter__(self) -> Prober:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def cli(*args: str, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess:  # noqa: A002
    """A fresh ``calicolab`` process, as a user runs it from a terminal (``input`` on its stdin)."""
    return subprocess.run([sys.executable, "-m", "testbed.cli", *args], input=input, capture_output=True,
                          text=True, timeout=timeout, cwd=str(labstate.REPO))


def pods(lab: str, namespace: str = "default") -> dict[str, dict]:
    """The pods of ``namespace`` by name, as ``kubectl get pods -o json`` shows them."""
    res = cli("kubectl", "--lab", lab, "get", "pods", "-n", namespace, "-o", "json")
    if res.returncode != 0:
        raise RuntimeError(f"kubectl get pods: {res.stderr.strip()}")
    return {p["metadata"]["name"]: p for p in json.loads(res.stdout)["items"]}


def apply_pod(lab: str, name: str, node: str, image: str = "busybox") -> None:
    """``kubectl apply`` a one-container pod ``name`` bound to ``node``."""
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": image}]}}
    res = cli("kubectl", "--lab", lab, "apply", "-f", "-", input=json.dumps(doc))
    if res.returncode != 0:
        raise RuntimeError(f"kubectl apply pod {name}: {res.stderr.strip()}")


def pod_running(pod: dict | None) -> bool:
    """True if the pod is Running with an IP."""
    st = (pod or {}).get("status") or {}
    return st.get("phase") == "Running" and bool(st.get("podIP"))


def pod_pid(pod: dict) -> int:
    """The PID of the pod's (first) process, from the kubelet's annotation."""
    return next(iter(json.loads(pod["metadata"]["annotations"]["calicolab.io/pids"]).values()))


def node_dataplane(lab: str, node: str) -> tuple[list[str], list[str]]:
    """The node's routes (``ip route``) and iptables rules (the ``-A`` lines of ``iptables-save``,
    each prefixed with its table: ``nat -A POSTROUTING ...``)."""
    ns = labstate.netns_name(lab, node)
    routes = subprocess.run(["ip", "-n", ns, "route"], capture_output=True, text=True, check=True).stdout
    rules = subprocess.run(["ip", "netns", "exec", ns, "iptables-save"], capture_output=True, text=True,
                           check=True).stdout
    return routes.splitlines(), iptables_save_lines(rules)[1]


def iptables_save_lines(text: str) -> tuple[list[str], list[str]]:
    """``iptables-save`` output as (chains, rules), each prefixed with its table:
    ``filter cali-tw-cali1234``, ``nat -A POSTROUTING ...``."""
    chains, rules, table = [], [], ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            chains.append(f"{table} {line[1:].split()[0]}")
        elif line.startswith("-A "):
            rules.append(f"{table} {line}")
    return chains, rules


def duplicates(lines: list[str]) -> list[str]:
    """Lines that appear more than once (a route or rule programmed twice)."""
    seen: set[str] = set()
    return [line for line in lines if line in seen or seen.add(line)]


def lab_processes(state: dict) -> int:
    """How many processes the lab's cgroup holds."""
    cg = state.get("cgroup")
    if not cg:
        return 0
    from pathlib import Path

    total = 0
    for procs in Path(cg).rglob("cgroup.procs"):
        try:
            total += len(procs.read_text().split())
        except OSError:
            pass
    return total
