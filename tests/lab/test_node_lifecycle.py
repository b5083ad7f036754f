"""Node lifecycle in a running lab (plain `up`: the control plane as static pods, a kubelet
and calico-node on every node), checked as a user sees it through kubectl and calicoctl:

* a hung kubelet (SIGSTOP: the process lives on, so nothing restarts it) stops renewing its
  Lease: after kube-controller-manager's --node-monitor-grace-period the Node is Unknown
  with the unreachable taints, its pods are marked not ready, a pod tolerating the taint for
  3 s is evicted then and one with the default 300 s is not; the kubelet resumed, all is
  Ready again;
* `kubectl delete node`: the node's kubelet stops its pods (Failed, processes gone) and
  restarts none; their IPs stay allocated until the pods are deleted (pod GC: its
  quarantine, 40 s in Kubernetes, is :data:`PODGC` s here by the test-only
  CALICOLAB_PODGC_QUARANTINE, docs/kubernetes.md), so the pods created meanwhile get other
  IPs; then the IPs, the WEPs and the node's Calico data go, and `calicoctl ipam check`
  finds no problem.

One lab serves the module (tests run in file order; the last one deletes a node).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from testbed.lab import faults, kubeadm
from testbed.lab import lifecycle as labmod
from testbed.lab import state as labstate
from testbed.lab.clean import clean_lab
from testbed.poll import wait_for
from tests.lab.lab_helpers import write_topology
from tests.support import require_root, require_tool, unique

pytestmark = pytest.mark.lab

TOPOLOGY = """\
name: {name}
segments:
  - {{name: lan0, cidr: 172.30.62.0/24}}
nodes:
  - {{name: m, role: control-plane, address: 172.30.62.10, segment: lan0}}
  - {{name: w0, role: worker, address: 172.30.62.11, segment: lan0}}
  - {{name: w1, role: worker, address: 172.30.62.12, segment: lan0}}
"""
UNREACHABLE = "node.kubernetes.io/unreachable"
#: kube-controller-manager flags for this lab: the grace period must exceed the kubelet's
#: Lease renewal interval (10 s), as with Kubernetes' defaults (40 s, 5 s)
GRACE = 15
CM_FLAGS = [f"--node-monitor-grace-period={GRACE}s", "--node-monitor-period=1s"]
#: pod GC's quarantine for this lab (test-only CALICOLAB_PODGC_QUARANTINE; Kubernetes' is 40 s):
#: long enough for the deleted-node test to create pods while the orphans still hold their IPs
PODGC = 20
CM_ENV = {"CALICOLAB_PODGC_QUARANTINE": str(PODGC)}


def cli(*args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "testbed.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, cwd=str(labstate.REPO))


def kubectl(lab: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return cli("kubectl", "--lab", lab, *args, stdin=stdin)


def calicoctl(lab: str, *args: str) -> subprocess.CompletedProcess:
    return cli("calicoctl", "--lab", lab, *args)


def get_json(lab: str, *args: str) -> dict | None:
    """``kubectl get ... -o json``; None when it is NotFound."""
    res = kubectl(lab, "get", *args, "-o", "json")
    if res.returncode != 0:
        if "NotFound" in res.stderr or "not found" in res.stderr:
            return None
        raise RuntimeError(f"kubectl get {' '.join(args)}: {res.stderr.strip()}")
    return json.loads(res.stdout)


def pods(lab: str) -> dict[str, dict]:
    return {p["metadata"]["name"]: p for p in get_json(lab, "pods", "-n", "default")["items"]}


def condition(obj: dict | None, typ: str = "Ready") -> dict:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c.get("type") == typ), {})


def taints(node: dict | None) -> set[tuple[str, str]]:
    return {(t["key"], t["effect"]) for t in ((node or {}).get("spec") or {}).get("taints") or []}


def apply_pod(lab: str, name: str, node: str, tolerations: list[dict] | None = None) -> None:
    spec: dict = {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}
    if tolerations:
        spec["tolerations"] = tolerations
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec}
    res = kubectl(lab, "apply", "-f", "-", stdin=json.dumps(doc))
    assert res.returncode == 0, res.stderr


def running(lab: str, names: list[str], timeout: float = 40) -> dict[str, dict]:
    return wait_for(lambda: pods(lab), lambda ps: all(faults.pod_running(ps.get(n)) for n in names),
                    timeout=timeout, what=f"pods {names} Running with an IP")


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def ip_in_use(lab: str, ip: str) -> bool:
    res = calicoctl(lab, "ipam", "show", f"--ip={ip}")
    assert res.returncode == 0, res.stderr
    return "is in use" in res.stdout


def ipam_clean(lab: str, when: str) -> None:
    """`calicoctl ipam check` finds 0 problems (else: its problem IPs, the WEPs, the pods and
    calico-kube-controllers' log)."""
    check = calicoctl(lab, "ipam", "check", "--show-problem-ips")
    if (check.returncode == 0 and check.stdout.endswith("found 0 problems.\n")
            and "has multiple owners" not in check.stdout):
        return
    kc_log = labstate.state_dir(lab) / "logs" / "m.calico-kube-controllers.log"
    pytest.fail("\n".join([f"ipam check {when}:", check.stdout, check.stderr,
                            calicoctl(lab, "get", "workloadendpoints", "-A", "-o", "wide").stdout,
                            kubectl(lab, "get", "pods", "-A", "-o", "wide").stdout,
                            kc_log.read_text()[-6000:] if kc_log.exists() else f"({kc_log} missing)"]))


def all_pods(lab: str) -> list[dict]:
    """Every pod of the cluster (``kubectl get pods -A -o json``)."""
    return get_json(lab, "pods", "-A")["items"]


def in_node(lab: str, node: str, *cmd: str) -> str:
    """``calicolab exec <node> -- cmd`` (the node's net and mount namespaces): its stdout."""
    res = cli("--lab", lab, "exec", node, "--", *cmd)
    assert res.returncode == 0, f"{' '.join(cmd)} in {node}: {res.stderr}"
    return res.stdout


def pod_key(pod: dict) -> str:
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"


def pod_ips(pod: dict) -> list[str]:
    """The IPs a (not hostNetwork) pod reports; a hostNetwork pod's are its node's."""
    if pod["spec"].get("hostNetwork"):
        return []
    st = pod.get("status") or {}
    return sorted({i["ip"] for i in st.get("podIPs") or []} | ({st["podIP"]} if st.get("podIP") else set()))


ALLOC_LINE = re.compile(r"^\s+(\d+\.\d+\.\d+\.\d+) allocated; attrs Main:(\S+) Extra:(.*)$")
BLOCK_LINE = re.compile(r"^ IPAM block (\S+) affinity=(\S+):$")


def ipam_state(lab: str) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """What IPAM records, from ``calicoctl ipam check --show-all-ips``: every allocated
    address with its handle and attributes (pod, namespace, node), and every block's affinity."""
    res = calicoctl(lab, "ipam", "check", "--show-all-ips")
    assert res.returncode == 0, res.stderr
    allocs: dict[str, dict[str, str]] = {}
    blocks: dict[str, str] = {}
    for line in res.stdout.splitlines():
        if m := BLOCK_LINE.match(line):
            blocks[m[1]] = m[2]
        elif m := ALLOC_LINE.match(line):
            assert m[1] not in allocs, f"{m[1]} listed twice by ipam check:\n{res.stdout}"
            allocs[m[1]] = {"handle": m[2], **dict(kv.split("=", 1) for kv in m[3].split(",") if "=" in kv)}
    assert blocks, res.stdout
    return allocs, blocks


class IpLedger:
    """No IP is ever handed out twice, checked at every :meth:`observe`: no two existing pods
    (of any phase, any namespace) report the same IP; each pod that exists before and after
    IPAM is read, unchanged and not being deleted, holds its IP in IPAM under its own name
    and namespace; and an IP seen on one pod appears on another only once the first is gone
    from the API (``reused`` lists those hand-overs)."""

    def __init__(self, lab: str) -> None:
        self.lab = lab
        self.holder: dict[str, tuple[str, str]] = {}  # ip -> (uid, ns/name) last seen holding it
        self.reused: list[tuple[str, str, str]] = []  # (ip, former holder, new holder)
        self.observations = 0

    def observe(self) -> list[dict]:
        """One check of the rule above; returns the pods it saw (the later list)."""
        first = {p["metadata"]["uid"]: p for p in all_pods(self.lab)}
        allocs, _ = ipam_state(self.lab)
        later = all_pods(self.lab)
        for snapshot in (list(first.values()), later):
            seen: dict[str, str] = {}
            for p in snapshot:
                for ip in pod_ips(p):
                    assert ip not in seen, f"IP {ip} held by both {seen[ip]} and {pod_key(p)}"
                    seen[ip] = pod_key(p)
        uids = {p["metadata"]["uid"] for p in later}
        for p in later:
            uid, key = p["metadata"]["uid"], pod_key(p)
            ips = pod_ips(p)
            stable = (uid in first and pod_ips(first[uid]) == ips and not p["metadata"].get("deletionTimestamp")
                      and not first[uid]["metadata"].get("deletionTimestamp"))
            for ip in ips:
                if stable:
                    got = allocs.get(ip)
                    want = {"pod": p["metadata"]["name"], "namespace": p["metadata"]["namespace"]}
                    assert got and {k: got.get(k) for k in want} == want, \
                        f"pod {key} reports {ip} but IPAM records {got or 'no allocation'} for it"
                old = self.holder.get(ip)
                if old and old[0] != uid:
                    assert old[0] not in uids, f"{ip} moved from {old[1]} to {key} while {old[1]} still exists"
                    self.reused.append((ip, old[1], key))
                self.holder[ip] = (uid, key)
        self.observations += 1
        return later


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A running lab (m, w0, w1) whose kube-controller-manager runs with :data:`CM_FLAGS` and
    :data:`CM_ENV` (its static pod manifest edited, as on a kubeadm control plane)."""
    require_root()
    for tool in ("mnexec", "etcd", "nsenter"):
        require_tool(tool)
    tmp = tmp_path_factory.mktemp("nodelife")
    name = unique("nl")
    topo = write_topology(tmp, name, TOPOLOGY)
    try:
        st = labmod.up(topo, progress=lambda _m: None, ready_timeout=30, datastore="etcdv3")
        manifest = kubeadm.etc_kubernetes(st, "m") / kubeadm.MANIFESTS / "kube-controller-manager.yaml"
        pod = json.loads(manifest.read_text())
        pod["spec"]["containers"][0]["command"] += CM_FLAGS
        pod["spec"]["containers"][0].setdefault("env", []).extend(
            {"name": k, "value": v} for k, v in CM_ENV.items())
        manifest.write_text(json.dumps(pod, indent=2) + "\n")

        def cm_cmdline() -> tuple[str, str]:
            mirror = get_json(name, "pod", "-n", "kube-system", "kube-controller-manager-m")
            pids = json.loads(((mirror or {}).get("metadata", {}).get("annotations") or {})
                              .get("calicolab.io/pids") or "{}")
            try:
                pid = next(iter(pids.values()))
                with open(f"/proc/{pid}/cmdline", "rb") as f, open(f"/proc/{pid}/environ", "rb") as e:
                    return f.read().replace(b"\0", b" ").decode(), e.read().replace(b"\0", b"\n").decode()
            except (OSError, StopIteration):
                return "", ""

        wait_for(cm_cmdline, lambda c: all(f in c[0] for f in CM_FLAGS)
                 and all(f"{k}={v}" in c[1].splitlines() for k, v in CM_ENV.items()), timeout=30,
                 what=f"kube-controller-manager restarted by the kubelet with {CM_FLAGS} and {CM_ENV}")
        yield {"name": name, "state": st}
    finally:
        clean_lab(name)


def test_a_hung_kubelet_makes_its_node_unknown_tainted_and_its_pods_evicted(lab):
    name = lab["name"]
    short = [{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 3}]
    apply_pod(name, "hung-default", "w1")  # the API server adds the 300 s tolerations
    apply_pod(name, "hung-short", "w1", short)
    running(name, ["hung-default", "hung-short"])
    default_tol = {t["key"]: t.get("tolerationSeconds") for t in pods(name)["hung-default"]["spec"]["tolerations"]}
    assert default_tol[UNREACHABLE] == 300
    pid = faults.kill_service(name, "w1/kubelet", signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        node = wait_for(lambda: get_json(name, "node", "w1"),
                        lambda n: condition(n).get("status") == "Unknown"
                        and {(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")} <= taints(n),
                        timeout=GRACE + 10 + 15, what="node w1 Unknown with the unreachable taints")
        took = time.monotonic() - t0
        # the last Lease renewal was at most 10 s before the hang
        assert took > GRACE - 10 - 1, f"Unknown {took:.1f}s after the kubelet hung: early for a {GRACE}s grace period"
        ready = condition(node)
        assert ready["reason"] == "NodeStatusUnknown" and ready["message"] == "Kubelet stopped posting node status."
        assert all(condition(node, t).get("status") == "Unknown" for t in ("MemoryPressure", "DiskPressure",
                                                                              "PIDPressure"))
        row = kubectl(name, "get", "node", "w1").stdout
        assert "NotReady" in row, row
        # the pod tolerating the taint for 3 s is evicted (Terminating: its kubelet is hung) ...
        wait_for(lambda: pods(name).get("hung-short"),
                           lambda p: p is None or p["metadata"].get("deletionTimestamp"), timeout=3 + 10,
                           what="hung-short evicted 3 s after the unreachable taint")
        # ... the one with the default 300 s stays, marked not ready
        default = wait_for(lambda: pods(name)["hung-default"], lambda p: condition(p).get("status") == "False",
                           timeout=10, what="hung-default marked not ready")
        assert not default["metadata"].get("deletionTimestamp")
        events = get_json(name, "events", "-n", "default")["items"]
        assert any(e["reason"] == "TaintManagerEviction" and e["involvedObject"]["name"] == "hung-short"
                   for e in events), [e["reason"] for e in events]
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: get_json(name, "node", "w1"),
             lambda n: condition(n).get("status") == "True" and not any(k == UNREACHABLE for k, _ in taints(n)),
             timeout=30, what="node w1 Ready again, unreachable taints removed")
    wait_for(lambda: pods(name), lambda ps: "hung-short" not in ps, timeout=30,
             what="the evicted pod torn down by its resumed kubelet and deleted")
    wait_for(lambda: pods(name)["hung-default"], lambda p: condition(p).get("status") == "True"
             and faults.pod_running(p), timeout=30, what="hung-default Ready again")


def test_a_deleted_node_runs_no_pod_and_no_ip_is_handed_out_twice(lab):
    name = lab["name"]
    ledger = IpLedger(name)
    orphans = ["del-a", "del-b"]
    for p in orphans:
        apply_pod(name, p, "w1")
    apply_pod(name, "keep", "w0")
    before = running(name, [*orphans, "keep"])
    orphan_ips = {before[p]["status"]["podIP"] for p in orphans}
    ledger.observe()
    # every pod bound to w1 (ours, kube-proxy's, CoreDNS's if the scheduler put one there):
    # its processes and, unless hostNetwork, its sandbox netns on w1
    on_w1 = wait_for(lambda: {pod_key(p): p for p in all_pods(name) if p["spec"].get("nodeName") == "w1"},
                     lambda ps: all(faults.pod_running(p) for p in ps.values()), timeout=30,
                     what="every pod bound to w1 Running")
    w1_pids = {k: list(json.loads(p["metadata"]["annotations"]["calicolab.io/pids"]).values())
               for k, p in on_w1.items()}
    w1_netns = {k: p["metadata"]["annotations"]["calicolab.io/netns"] for k, p in on_w1.items()
                if not p["spec"].get("hostNetwork")}
    assert {f"default/{p}" for p in orphans} <= set(w1_netns), sorted(on_w1)
    assert all(pid_alive(pid) for pids in w1_pids.values() for pid in pids), w1_pids
    assert set(w1_netns.values()) <= set(in_node(name, "w1", "ip", "netns", "list").split()), w1_netns
    w1_blocks = {c for c, aff in ipam_state(name)[1].items() if aff == "host:w1"}
    assert w1_blocks, "w1 has no affine block before its deletion"

    ipam_clean(name, "before the Node's deletion")
    res = kubectl(name, "delete", "node", "w1")
    assert res.returncode == 0 and 'node "w1" deleted' in res.stdout, res.stderr
    t0 = time.monotonic()
    # no pod runs on a deleted node: its kubelet stops every one of them (all their processes
    # gone, no process left in their netns) and reports them Failed
    def w1_pods_state() -> dict[str, dict | None]:
        now = {pod_key(p): p for p in all_pods(name)}
        return {k: now.get(k) for k in on_w1}

    def stopped_for_good(ps: dict[str, dict | None]) -> bool:
        return all(p is None or (p["status"].get("phase") == "Failed" and p["status"].get("reason") == "NodeNotFound")
                   for p in ps.values()) and not any(pid_alive(pid) for pids in w1_pids.values() for pid in pids)

    stopped = wait_for(w1_pods_state, stopped_for_good, timeout=20,
                       what=f"every pod of deleted node w1 ({sorted(on_w1)}) Failed (NodeNotFound), its processes gone")
    for p in orphans:
        st = stopped[f"default/{p}"]["status"]
        assert "no longer exists" in st["message"]
        assert st["containerStatuses"][0]["state"].get("terminated"), st["containerStatuses"]
    for k, ns in w1_netns.items():
        left = in_node(name, "w1", "ip", "netns", "pids", ns).split()
        assert not left, f"processes {left} still run in {k}'s netns {ns} on deleted node w1"
    restarts = {p: stopped[f"default/{p}"]["status"]["containerStatuses"][0]["restartCount"] for p in orphans}
    # ... and restarts none of them (the kubelet would within 1 s: watch for 3 s)
    end = time.monotonic() + 3
    while time.monotonic() < end:
        ps = pods(name)
        for p in orphans:
            assert ps[p]["status"]["phase"] == "Failed", ps[p]["status"]
            assert ps[p]["status"]["containerStatuses"][0]["restartCount"] == restarts[p]
        assert not any(pid_alive(pid) for pids in w1_pids.values() for pid in pids)
        time.sleep(0.3)
    # their IPs stay allocated while the pods exist ...
    assert all(ip_in_use(name, ip) for ip in orphan_ips)
    ledger.observe()
    # ... so pods created right now never get one of them, nor any IP another pod holds
    fresh = [f"new-{i}" for i in range(4)]
    for p in fresh:
        apply_pod(name, p, "w0")
    now = running(name, fresh + ["keep"])
    new_ips = [now[p]["status"]["podIP"] for p in fresh]
    assert not set(new_ips) & orphan_ips, (new_ips, orphan_ips)
    # (the orphans held their IPs all along: pod GC had not deleted them yet)
    assert set(orphans) <= set(pods(name)), \
        f"pod GC deleted the orphans {time.monotonic() - t0:.1f} s after the deletion, before the new pods ran"
    print(f"new pods Running {time.monotonic() - t0:.1f} s after the Node's deletion (quarantine {PODGC} s)")
    ledger.observe()
    # pod GC deletes the pods of the deleted node (after its quarantine); then their IPs,
    # their netns and veths on w1, their WEPs and the node's Calico data (Node, affinities) go
    wait_for(lambda: pods(name), lambda ps: not set(orphans) & set(ps), timeout=PODGC + 30,
             what="the pods of deleted node w1 deleted by pod GC")
    assert time.monotonic() - t0 >= PODGC - 5, f"the pods went before pod GC's {PODGC} s quarantine"
    wait_for(lambda: [ip for ip in orphan_ips if ip_in_use(name, ip)], lambda left: not left, timeout=20,
             what="the deleted pods' IPs released")
    wait_for(lambda: (set(in_node(name, "w1", "ip", "netns", "list").split()) & set(w1_netns.values()),
                      [ln for ln in in_node(name, "w1", "ip", "-o", "link", "show").splitlines() if ": cali" in ln]),
             lambda left: not left[0] and not left[1], timeout=20,
             what="the sandboxes (netns, cali veths) of w1's pods removed on w1")
    wait_for(lambda: json.loads(calicoctl(name, "get", "nodes", "-o", "json").stdout)["items"],
             lambda items: "w1" not in {n["metadata"]["name"] for n in items}, timeout=20,
             what="Calico Node w1 removed by kube-controllers")
    weps = calicoctl(name, "get", "workloadendpoints", "-A", "-o", "wide").stdout
    assert "del-a" not in weps and "del-b" not in weps, weps
    allocs, blocks = wait_for(lambda: ipam_state(name), lambda s: "host:w1" not in s[1].values(), timeout=20,
                              what="no IPAM block affine to w1 any more")
    assert not [ip for ip, a in allocs.items() if a.get("node") == "w1"], allocs
    ipam_clean(name, "after the Node's deletion")
    ledger.observe()
    # new pods now may get the released IPs: the ledger checks they went only to pods created
    # after the old holders were deleted
    fresh2 = [f"after-{i}" for i in range(3)]
    for p in fresh2:
        apply_pod(name, p, "w0")
    after = running(name, fresh + fresh2 + ["keep"])
    ledger.observe()
    ipam_clean(name, "after new pods")
    assert all(faults.pod_running(after[p]) for p in fresh + fresh2 + ["keep"])
    print(f"ip ledger: {ledger.observations} observations, {len(ledger.holder)} IPs, "
          f"reused after release: {ledger.reused}")
