"""Shared parts of the CNI and Felix benchmarks (one implementation of each).

The scripts in bench/ run as ``python bench/<name>.py``, so this module is imported
as ``benchlib``. What is here:

* statistics and output: :func:`pct`, :func:`summarize`, :func:`print_verb_table`,
  :func:`print_median_table`, :func:`write_json`;
* processes: :func:`start_etcd` (a throwaway etcd on a loopback, optionally inside a
  netns, waited for), :func:`stop`;
* CNI: :func:`cni_netconf`, :func:`exec_cni` (one exec of a plugin as the kubelet
  runs it), :func:`start_cni_server`, :class:`Namespaces`;
* Felix: :func:`iface`, :func:`ip_of`, :func:`flush_dataplane`, :func:`restore_texts`,
  :func:`raw_restore`, :func:`time_phases`, :func:`run_inside_netns`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from kernel.netns import entered as in_netns  # noqa: E402

VENV_BIN = os.path.join(REPO, ".venv", "bin")
PY = os.path.join(VENV_BIN, "python")
#: the fast launcher a node's kubelet runs (thin client -> warm CNI server)
CNI_LAUNCHER = os.path.join(REPO, "cni", "bin", "calico")


# ---------------------------------------------------------------- statistics and output


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))]


def summarize(walls: list[float], phases: list[dict[str, float]]) -> dict[str, object]:
    """n, min, p50, p99, mean (ms) of ``walls`` and the median of each phase in ``phases``."""
    keys = sorted({k for p in phases for k in p})
    return {"n": len(walls), "min_ms": round(min(walls), 2), "p50_ms": round(pct(walls, 50), 2),
            "p99_ms": round(pct(walls, 99), 2),
            "mean_ms": round(statistics.mean(walls), 2),
            "phases_p50_ms": {k: round(statistics.median([p.get(k, 0.0) for p in phases]), 2) for k in keys}}


def print_verb_table(label: str, table: dict[str, dict[str, dict]], phases: bool = False) -> None:
    """One line per (row, verb) of :func:`summarize` results: min, p50, p99, mean ms (and the
    phases' medians when ``phases``)."""
    print(f"{label:<18} {'verb':<4} {'min ms':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}"
          + ("   plugin phases p50 (ms)" if phases else ""))
    for row, verbs in table.items():
        for verb, s in verbs.items():
            ph = "   " + " ".join(f"{k}={v}" for k, v in s["phases_p50_ms"].items()) if phases else ""
            print(f"{row:<18} {verb:<4} {s['min_ms']:>8} {s['p50_ms']:>8} {s['p99_ms']:>8} {s['mean_ms']:>8}{ph}")


def print_median_table(res: dict[str, list[float]], width: int, median_title: str,
                       target_of: Callable[[str, float], tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One line per measurement of ``res`` (seconds): median, min, max in ms and the target text
    ``target_of(name, median)`` gives with the fields it adds to the measurement's JSON row
    (``measurement``, ``seconds``, ``median_s`` + those). Returns the rows."""
    print(f"{'measurement':<{width}} {median_title:>10} {'min ms':>9} {'max ms':>9} {'target':>12}")
    rows = []
    for name, times in res.items():
        med = statistics.median(times)
        text, fields = target_of(name, med)
        rows.append({"measurement": name, "seconds": times, "median_s": med, **fields})
        print(f"{name:<{width}} {med * 1000:>10.1f} {min(times) * 1000:>9.1f} {max(times) * 1000:>9.1f} {text:>12}")
    return rows


def write_json(path: str, results: dict[str, Any]) -> None:
    """``results`` as indented JSON at ``path`` (directories made); says where."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {path}")


def page_touch_us(mb: int = 256) -> float:
    """Microseconds per page to fault in and write ``mb`` MiB of fresh anonymous memory: how warm
    the machine's memory is. On these VMs the host backs guest memory lazily and takes freed
    memory back, so the figure moves from ~6 us just after boot to
    ~1.5 us once memory has been in use; a lab start is page-fault heavy (copy-on-write after
    the zygote's forks, zeroed pages), so this is one of the things its time moves with
    (docs/performance.md). Printed beside the load average, to tell a cold machine's runs."""
    import ctypes
    import mmap

    size = mb << 20
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        buf = (ctypes.c_char * size).from_buffer(m)
        t0 = time.perf_counter()
        ctypes.memset(ctypes.addressof(buf), 1, size)
        elapsed = time.perf_counter() - t0
        del buf
    finally:
        m.close()
    return round(elapsed * 1e6 / (size // mmap.PAGESIZE), 2)


# ---------------------------------------------------------------- processes


def stop(proc: subprocess.Popen | None, timeout: float = 10) -> None:
    """SIGTERM ``proc`` (one we started) and wait; SIGKILL if it does not go."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_etcd(data: str, port: int = 2379, netns: str | None = None,
               quota_bytes: int | None = None, timeout: float = 15) -> tuple[subprocess.Popen, str]:
    """A one-member etcd on 127.0.0.1:``port`` (peers on ``port`` + 1), inside the named
    ``netns`` when given (else the caller's), answering; returns (process, client URL)."""
    from datastore.errors import DatastoreUnavailable
    from datastore.etcd import EtcdClient

    url, peer = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"
    argv = [shutil.which("etcd") or "etcd", "--name", "b", "--data-dir", data,
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"b={peer}", "--log-level", "error", "--logger", "zap"]
    if quota_bytes:
        argv += ["--quota-backend-bytes", str(quota_bytes)]
    if netns:
        argv = ["nsenter", f"--net=/run/netns/{netns}", *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while True:
        with in_netns(f"/run/netns/{netns}" if netns else None):
            c = EtcdClient(url, timeout=0.5)
            try:
                c.revision()
                return proc, url
            except DatastoreUnavailable:
                pass
            finally:
                c.close()
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            proc.wait()
            raise SystemExit(f"etcd did not start on {url}" + (f" in netns {netns}" if netns else ""))
        time.sleep(0.05)


# ---------------------------------------------------------------- CNI


class Namespaces:
    """Named netns made for a bench (``add``), all deleted again by ``close`` (newest first)."""

    def __init__(self) -> None:
        self.made: list[str] = []

    def add(self, name: str, lo_up: bool = False) -> str:
        """``ip netns add name`` (and its lo up); returns the name."""
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.made.append(name)
        if lo_up:
            subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    def close(self) -> None:
        """Delete every netns this made."""
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        self.made.clear()


def cni_netconf(log_path: str, nodename: str, **extra: Any) -> bytes:
    """The calico netconf a bench sends (calico-ipam, log, IPAM lock and the nodename file
    calico-node's start-up would write, written here, beside ``log_path``)."""
    nodename_file = os.path.join(os.path.dirname(log_path), "nodename")
    with open(nodename_file, "w") as f:
        f.write(nodename)
    conf = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "calico", **extra,
            "nodename": nodename, "nodename_file": nodename_file, "mtu": 0, "log_level": "info", "log_file_path": log_path,
            "ipam": {"type": "calico-ipam"}, "ipam_lock_file": os.path.join(os.path.dirname(log_path), "ipam.lock")}
    return json.dumps(conf).encode()


def exec_cni(exe: str, command: str, cid: str, pod_netns: str, pod_namespace: str, pod_name: str,
             sock: str, netconf: bytes) -> float:
    """Exec the plugin ``exe`` once as the kubelet does (the caller's thread is in the node's
    netns); its wall time to exit in ms. SystemExit with its output if it fails."""
    env = {"PATH": f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command,
           "CNI_CONTAINERID": cid, "CNI_NETNS": f"/run/netns/{pod_netns}", "CNI_IFNAME": "eth0",
           "CNI_PATH": VENV_BIN, "CNI_ARGS": f"K8S_POD_NAMESPACE={pod_namespace};K8S_POD_NAME={pod_name}",
           "CALICO_CNI_SOCKET": sock}
    t0 = time.perf_counter()
    proc = subprocess.run([exe], input=netconf, env=env, capture_output=True)
    wall = (time.perf_counter() - t0) * 1000
    if proc.returncode != 0:
        raise SystemExit(f"{command} {cid} failed: {proc.stdout.decode()} {proc.stderr.decode()[-800:]}")
    return wall


def start_cni_server(ns: str, sock: str) -> subprocess.Popen:
    """The warm CNI server (``python -m cni.server``, what calico-node runs) in netns ``ns``,
    listening on ``sock`` once this returns."""
    server = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", PY, "-m", "cni.server", "--socket", sock],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert server.stdout is not None
    if [server.stdout.readline().strip() for _ in range(2)] != ["listening", "ready"]:
        stop(server)
        raise SystemExit("the CNI server did not start")
    return server


# ---------------------------------------------------------------- Felix


def iface(i: int) -> str:
    """Host-side interface name of endpoint ``i`` (pod ``bench/p<i>``, named as Calico names it)."""
    from datastore.names import veth_name

    return veth_name("bench", f"p{i}")


def ip_of(i: int) -> str:
    """Pod IP of endpoint ``i`` (inside 10.64.0.0/16)."""
    return f"10.64.{i // 250}.{i % 250 + 1}"


def flush_dataplane(tables: Iterable[str], routes: bool = False) -> None:
    """Drop what Felix programmed in this netns: the chains of ``tables``, every ipset, and
    (``routes``) the routes it added (``proto boot``)."""
    if routes:
        subprocess.run(["ip", "-4", "route", "flush", "table", "main", "proto", "boot"], check=False)
    for table in tables:
        subprocess.run(["iptables", "-t", table, "-F"], check=True)
        subprocess.run(["iptables", "-t", table, "-X"], check=True)
    subprocess.run(["ipset", "destroy"], check=False)


#: the iptables tables Felix programs
TABLES = ("raw", "mangle", "filter", "nat")


def restore_texts(desired: Any) -> tuple[str, str]:
    """Felix's desired ruleset as one ``iptables-restore`` input and one ``ipset restore`` input
    (the same sets and rules, hash comments included)."""
    from agent.felix.ipsets import MAXELEM, norm_member
    from agent.felix.iptables import ActualTable, IptablesTable

    parts = []
    for table in TABLES:
        plan, _ = IptablesTable(table).plan(desired.tables[table], ActualTable())
        parts.append("\n".join(line for line in plan if line))
    sets = []
    for s in desired.ipsets.values():
        sets.append(f"create {s.name} {s.type} family inet maxelem {MAXELEM}")
        sets += [f"add {s.name} {norm_member(m)}" for m in sorted(s.members)]
    return "\n".join(parts) + "\n", "\n".join(sets) + "\n"


def raw_restore(ipt_text: str, set_text: str) -> float:
    """The floor: one ``ipset restore`` plus one ``iptables-restore --noflush``; seconds."""
    from agent.felix.iptables import commands

    t0 = time.perf_counter()
    r1 = subprocess.run(["ipset", "restore"], input=set_text, text=True, capture_output=True)
    r2 = subprocess.run([commands()[1], "--noflush"], input=ipt_text, text=True, capture_output=True)
    took = time.perf_counter() - t0
    if r1.returncode or r2.returncode:
        raise SystemExit(f"raw restore failed: {r1.stderr} {r2.stderr[-500:]}")
    return took


def time_phases(felix: Any, phases: dict[str, float], names: dict[str, str]) -> None:
    """Wrap Felix's calculation and drivers so each call adds its seconds to ``phases``.
    ``names`` maps ``calculate``, ``ipsets``, ``routes``, ``sysctls``, ``iptables`` (the
    seams: calc.calculate, ipsets.apply_updates, routes.apply, sysctls.apply,
    _apply_tables) to the phase each counts as; a seam not in ``names`` is not wrapped."""
    seams = {"calculate": (felix.calc, "calculate"), "ipsets": (felix.ipsets, "apply_updates"),
             "routes": (felix.routes, "apply"), "sysctls": (felix.sysctls, "apply"),
             "iptables": (felix, "_apply_tables")}
    for seam, name in names.items():
        obj, attr = seams[seam]
        fn = getattr(obj, attr)

        def timed(*a: Any, _fn: Callable = fn, _name: str = name, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return _fn(*a, **kw)
            finally:
                phases[_name] = phases.get(_name, 0.0) + time.perf_counter() - t
        setattr(obj, attr, timed)


def run_inside_netns(script: str, args: list[str], prefix: str) -> tuple[dict, tuple[float, float, float],
                                                                         tuple[float, float, float]]:
    """Run ``script --inside OUT *args`` in a throwaway netns (``<prefix><random>``, lo up, never
    the root namespace), then kill what is left in it and delete it. Returns the JSON the
    script wrote to OUT and the load average before and after."""
    load_before = os.getloadavg()
    ns = f"{prefix}{uuid.uuid4().hex[:6]}"
    fd, out = tempfile.mkstemp(prefix=f"{prefix}-", suffix=".json")
    os.close(fd)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", ns, PY, os.path.abspath(script), "--inside", out, *args],
                       check=True, cwd=REPO)
        with open(out) as f:
            res = json.load(f)
    finally:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in pids:  # what the bench started in its own netns
            subprocess.run(["kill", "-9", pid], check=False)
        subprocess.run(["ip", "netns", "delete", ns], check=False)
        if os.path.exists(out):
            os.unlink(out)
    return res, load_before, os.getloadavg()
