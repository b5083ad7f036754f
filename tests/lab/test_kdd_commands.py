"""Issue 15's first must-hold: the commands a user types verbatim in a node shell of a lab in
the default (Kubernetes) datastore: ``calicolab up`` of a topology that names no datastore, with
no ``--datastore`` flag (the node shells say ``DATASTORE_TYPE=kubernetes``), each checked on what
it prints. ``kubectl`` is the real one (the pinned kubectl in the venv, first on
the node shell's PATH); ``calicoctl`` is calicolab's. One small lab (a control plane, a worker,
their router, one pod) serves the module; everything it shows is compared with what the API server holds,
read with the same kubectl."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Network

import pytest

from testbed.lab import state as labstate
from testbed.lab.clean import clean_lab
from testbed.poll import wait_for
from tests.lab.lab_helpers import leftovers
from tests.support import require_root, require_tool, unique

pytestmark = pytest.mark.lab

CLI = [sys.executable, "-m", "testbed.cli"]
POOL = IPv4Network("192.168.0.0/16")
TOPOLOGY = """\
name: {name}
segments:
  - {{name: lan0, cidr: 172.30.74.0/24}}
  - {{name: inet, cidr: 198.51.100.0/24}}
routers:  # the nodes' default route: the kubelet's probes reach pods (proxy ARP for 169.254.1.1 needs it)
  - name: r0
    interfaces:
      - {{segment: lan0, address: 172.30.74.1}}
      - {{segment: inet, address: 198.51.100.1}}
nodes:
  - {{name: k8s-m, role: control-plane, address: 172.30.74.10, segment: lan0}}
  - {{name: k8s-w0, role: worker, address: 172.30.74.11, segment: lan0}}
calico:
  pool: {{cidr: 192.168.0.0/16, blockSize: 24, ipipMode: Always, vxlanMode: Never, natOutgoing: true}}
workloads:
  - manifest: {{apiVersion: v1, kind: Pod, metadata: {{name: web, labels: {{app: web}}}},
               spec: {{nodeName: k8s-w0, containers: [{{name: nginx, image: nginx}}]}}}}
"""


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=str(labstate.REPO))


class Lab:
    """The module's lab: ``sh(line)`` types ``line`` into a node shell (``sh -c``)."""

    def __init__(self, name: str):
        self.name = name

    def run(self, line: str, node: str = "k8s-w0") -> subprocess.CompletedProcess:
        return cli("--lab", self.name, "exec", node, "--", "sh", "-c", line)

    def sh(self, line: str, node: str = "k8s-w0") -> str:
        r = self.run(line, node)
        assert r.returncode == 0, f"{line!r} on {node} exited {r.returncode}: {r.stdout}{r.stderr}"
        return r.stdout

    def kube(self, *args: str) -> dict:
        """``kubectl ... -o json`` in a node shell, parsed."""
        return json.loads(self.sh("kubectl " + " ".join(args) + " -o json"))


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    require_root()
    require_tool("etcd")
    require_tool("jq")
    name = unique("kc")
    topo = tmp_path_factory.mktemp("kddcmds") / f"{name}.yaml"
    topo.write_text(TOPOLOGY.format(name=name))
    st = None
    try:
        assert "datastore" not in TOPOLOGY  # the default, as a user gets it
        r = cli("up", str(topo), timeout=300)
        assert r.returncode == 0, r.stderr
        st = labstate.read_state(name)
        assert st["datastore"] == "kubernetes", st["datastore"]
        lab = Lab(name)
        # the pod is Running with its IP and its WorkloadEndpoint shows it
        # every pod networked by Calico (web, CoreDNS) is Running with its IP
        wait_for(lambda: [(p["metadata"]["name"], p.get("status", {}).get("phase"), p.get("status", {}).get("podIP"))
                          for p in lab.kube("get", "pods", "-A")["items"] if not p["spec"].get("hostNetwork")],
                 lambda ps: len(ps) == 3 and all(ph == "Running" and ip for _, ph, ip in ps),
                 timeout=60, what="web and the two CoreDNS pods Running with their IPs")
        yield lab
    finally:
        down = cli("down", name, timeout=120)
        if st is not None:
            assert down.returncode == 0, down.stderr
            assert leftovers(st) == []
        else:
            clean_lab(name)


def test_node_shells_run_the_real_kubectl_and_name_the_datastore(lab):
    out = lab.sh("command -v kubectl; command -v calicoctl; command -v jq; echo $DATASTORE_TYPE $KUBECONFIG")
    assert out.split() == [str(labstate.VENV_BIN / "kubectl"), str(labstate.VENV_BIN / "calicoctl"),
                           "/usr/bin/jq", "kubernetes", "/etc/kubernetes/admin.conf"], out
    assert re.search(r"Client Version: v1\.\d+\.\d+", lab.sh("kubectl version")), "not the real kubectl"


def test_kubectl_get_pods_calico_system_lists_the_operators_pods(lab):
    """``up`` lays Calico out as the operator does: a calico-node pod of the DaemonSet and a
    csi-node-driver pod (2/2: calico-csi and csi-node-driver-registrar) on every node,
    calico-typha and calico-kube-controllers pods of their Deployments, all Running."""
    def listed() -> list[list[str]]:
        return [ln.split() for ln in lab.sh("kubectl get pods -n calico-system -o wide").splitlines()]

    def ready(x: list[str]) -> bool:
        want = "2/2" if x[0].startswith("csi-node-driver-") else "1/1"
        return x[1] == want and x[2] == "Running"

    rows = wait_for(listed, lambda r: len(r) == 7 and all(ready(x) for x in r[1:]),
                    timeout=60, what="six calico-system pods Running")
    assert rows[0][:5] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"], rows
    names = sorted(r[0] for r in rows[1:])
    assert re.fullmatch(r"calico-kube-controllers-[a-z0-9]{10}-[a-z0-9]{5}", names[0]), names
    assert all(re.fullmatch(r"calico-node-[a-z0-9]{5}", n) for n in names[1:3]), names
    assert re.fullmatch(r"calico-typha-[a-z0-9]{10}-[a-z0-9]{5}", names[3]), names
    assert all(re.fullmatch(r"csi-node-driver-[a-z0-9]{5}", n) for n in names[4:6]), names
    # one calico-node and one csi-node-driver per node, each owned by its DaemonSet
    nodes = {r[0]: r[6] for r in rows[1:]}
    assert sorted(nodes[n] for n in names[1:3]) == ["k8s-m", "k8s-w0"], rows
    assert sorted(nodes[n] for n in names[4:6]) == ["k8s-m", "k8s-w0"], rows
    for app in ("calico-node", "csi-node-driver"):
        pods = lab.kube("get", "pods", "-n", "calico-system", "-l", f"k8s-app={app}")["items"]
        assert {(o["kind"], o["name"]) for p in pods for o in p["metadata"]["ownerReferences"]} == {("DaemonSet", app)}
    out = lab.sh("kubectl get daemonsets,deployments -n calico-system")
    got = {ln.split()[0] for ln in out.splitlines() if ln.split() and ln.split()[0] != "NAME"}
    assert got == {"daemonset.apps/calico-node", "deployment.apps/calico-typha",
                   "deployment.apps/calico-kube-controllers", "daemonset.apps/csi-node-driver"}, out


def test_pod_cidrs_pipeline_prints_each_nodes_kubernetes_pod_cidrs(lab):
    """The second seed's ``calicoctl get node -o json | jq ...`` with ``.status.podCIDRs[]``:
    each Calico Node's status.podCIDRs is its Kubernetes Node's spec.podCIDRs (node IPAM's
    per-node /24s of the pod network), typed as docs/kdd.md gives it and with node names."""
    k8s = {n["metadata"]["name"]: n["spec"].get("podCIDRs") for n in lab.kube("get", "nodes")["items"]}
    assert set(k8s) == {"k8s-m", "k8s-w0"} and all(k8s.values()), k8s
    cidrs = [IPv4Network(c[0]) for c in k8s.values()]
    assert all(c.subnet_of(POOL) and c.prefixlen == 24 for c in cidrs) and len(set(cidrs)) == 2, k8s

    out = lab.sh("calicoctl get node -o json | jq '.items[].status.podCIDRs[]'")
    assert out.splitlines() == [json.dumps(k8s["k8s-m"][0]), json.dumps(k8s["k8s-w0"][0])], out
    out = lab.sh("calicoctl get node -o json | jq -r '.items[] | .metadata.name + \" \" + .status.podCIDRs[]'")
    assert out.splitlines() == [f"k8s-m {k8s['k8s-m'][0]}", f"k8s-w0 {k8s['k8s-w0'][0]}"], out
    # the same column as the walkthrough's custom-columns view of the Kubernetes Nodes
    cols = lab.sh("kubectl get nodes -o custom-columns=NAME:.metadata.name,POD-CIDR:.spec.podCIDR")
    assert [ln.split() for ln in cols.splitlines()] == [["NAME", "POD-CIDR"], ["k8s-m", k8s["k8s-m"][0]],
                                                        ["k8s-w0", k8s["k8s-w0"][0]]], cols


def _table(text: str) -> list[list[str]]:
    """The cells of calicoctl's ``+---+`` box table, one list per row (header first)."""
    return [[c.strip() for c in ln.split("|")[1:-1]] for ln in text.splitlines() if ln.startswith("|")]


def test_ipam_show_blocks_is_the_pool_and_one_block_per_node(lab):
    out = lab.sh("calicoctl ipam show --show-blocks")
    lines = out.splitlines()
    assert lines[0] == lines[2] == lines[-1] and re.fullmatch(r"(\+-+)+\+", lines[0]), out
    rows = _table(out)
    assert rows[0] == ["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"], out
    # what the pool and blocks hold: one tunnel address per node plus the pods' IPs
    blocks = lab.kube("get", "ipamblocks.crd.projectcalico.org")["items"]
    owner = {b["spec"]["cidr"]: b["spec"]["affinity"] for b in blocks}
    assert sorted(owner.values()) == ["host:k8s-m", "host:k8s-w0"], owner
    pods = [p for p in lab.kube("get", "pods", "-A")["items"] if not p["spec"].get("hostNetwork")]
    used = {b["spec"]["cidr"]: sum(a is not None for a in b["spec"]["allocations"]) for b in blocks}
    assert sum(used.values()) == len(pods) + 2, (used, [p["metadata"]["name"] for p in pods])
    total = sum(used.values())
    assert rows[1] == ["IP Pool", "192.168.0.0/16", "65536", f"{total} (0%)", f"{65536 - total} (100%)"], out
    # Block rows in the order Calico lists them (by object name), numbers as %.5g (%.f%%)
    names = sorted(owner, key=lambda c: c.replace(".", "-").replace("/", "-"))
    assert rows[2:] == [["Block", c, "256", f"{used[c]} ({100 * used[c] / 256:.0f}%)",
                         f"{256 - used[c]} ({100 * (256 - used[c]) / 256:.0f}%)"] for c in names], out
    assert all(IPv4Network(c).subnet_of(POOL) for c in names)


def test_get_workload_endpoint_lists_the_pod_with_node_ip_and_interface(lab):
    pod = lab.kube("get", "pod", "web")
    out = lab.sh("calicoctl get workloadEndpoint")
    lines = [ln.split() for ln in out.splitlines()]
    assert lines[0] == ["WORKLOAD", "NODE", "NETWORKS", "INTERFACE"], out
    assert len(lines) == 2 and lines[1][:3] == ["web", "k8s-w0", f"{pod['status']['podIP']}/32"], out
    iface = lines[1][3]
    assert re.fullmatch(r"cali[0-9a-f]{11}", iface), out
    # the interface is the pod's host-side veth on its node
    assert f"{iface}@" in lab.sh(f"ip -o link show {iface}", node="k8s-w0")
    # columns line up as Go's tabwriter (padding 3) puts them
    assert out.splitlines()[0].index("NODE") == out.splitlines()[1].index("k8s-w0") == len("WORKLOAD") + 3, out
    # all namespaces: CoreDNS's pods too, a NAMESPACE column first
    every = [ln.split() for ln in lab.sh("calicoctl get workloadEndpoint -A").splitlines()]
    assert every[0] == ["NAMESPACE", "WORKLOAD", "NODE", "NETWORKS", "INTERFACE"]
    dns = [p["metadata"]["name"] for p in lab.kube("get", "pods", "-n", "kube-system", "-l", "k8s-app=kube-dns")["items"]]
    assert sorted((r[0], r[1]) for r in every[1:]) == sorted([("default", "web")] + [("kube-system", d) for d in dns])


def test_kubectl_get_ippools_crd(lab):
    out = lab.sh("kubectl get ippools.crd.projectcalico.org")
    rows = [ln.split() for ln in out.splitlines()]
    assert rows[0] == ["NAME", "AGE"] and [r[0] for r in rows[1:]] == ["default-ipv4-ippool"], out
    assert re.fullmatch(r"\d+[smhd](\d+[smh])?", rows[1][1]), out
    spec = lab.kube("get", "ippools.crd.projectcalico.org", "default-ipv4-ippool")["spec"]
    assert (spec["cidr"], spec["blockSize"], spec["ipipMode"]) == ("192.168.0.0/16", 24, "Always"), spec


def test_kubectl_get_ipamblocks_crd(lab):
    out = lab.sh("kubectl get ipamblocks.crd.projectcalico.org")
    rows = [ln.split() for ln in out.splitlines()]
    assert rows[0] == ["NAME", "AGE"], out
    shown = _table(lab.sh("calicoctl ipam show --show-blocks"))
    blocks = [r[1] for r in shown if r[0] == "Block"]
    # Calico's object names (CIDRToName), the same blocks calicoctl shows, in kubectl's name order
    assert [r[0] for r in rows[1:]] == sorted(c.replace(".", "-").replace("/", "-") for c in blocks), (out, blocks)
    assert len(rows) == 3 and all(re.fullmatch(r"192-168-\d+-0-24", r[0]) for r in rows[1:]), out


def test_status_reads_the_kubernetes_datastore(lab):
    """``calicolab status`` checks every node's dataplane against the Calico Nodes, pools and
    blocks of the lab's datastore (here the API server's): healthy, exit 0 (it read etcd in both
    modes before and called every node of a default lab DEGRADED: "no Calico Node")."""
    def status() -> tuple[int, dict]:
        r = cli("--lab", lab.name, "status", "--json")
        return r.returncode, json.loads(r.stdout) if r.stdout else {}

    code, info = wait_for(status, lambda s: s[0] == 0 and s[1].get("health", {}).get("state") == "healthy",
                          timeout=30, what="calicolab status healthy")
    assert [n["agent"] for n in info["nodes"]] == ["ready", "ready"], info["nodes"]
    human = cli("--lab", lab.name, "status")
    assert human.returncode == 0 and "status: healthy" in human.stdout, human.stdout


CSI_POD = """\
apiVersion: v1
kind: Pod
metadata: {name: policy-client}
spec:
  nodeName: k8s-w0
  containers:
    - name: client
      image: busybox
      command: [sleep, infinity]
      volumeMounts: [{name: felix-sync, mountPath: /var/run/felix}]
  volumes:
    - name: felix-sync
      csi: {driver: csi.tigera.io}
"""


def test_csi_node_driver_is_registered_on_every_node(lab):
    """The CSIDriver csi.tigera.io (ephemeral, podInfoOnMount) and, through each kubelet's
    plugin registration, every node's CSINode lists the driver with the node's name as its ID."""
    drv = lab.kube("get", "csidriver", "csi.tigera.io")["spec"]
    assert (drv["podInfoOnMount"], drv["volumeLifecycleModes"]) == (True, ["Ephemeral"]), drv

    def drivers() -> dict:
        return {n["metadata"]["name"]: [(d["name"], d["nodeID"]) for d in (n.get("spec") or {}).get("drivers") or []]
                for n in lab.kube("get", "csinodes")["items"]}

    got = wait_for(drivers, lambda d: len(d) == 2 and all(d.values()), timeout=30, what="both CSINodes with a driver")
    assert got == {"k8s-m": [("csi.tigera.io", "k8s-m")], "k8s-w0": [("csi.tigera.io", "k8s-w0")]}, got
    rows = [ln.split() for ln in lab.sh("kubectl get csinodes").splitlines()]
    assert [r[:2] for r in rows] == [["NAME", "DRIVERS"], ["k8s-m", "1"], ["k8s-w0", "1"]], rows
    # the registrar's socket and the driver's, where the kubelet looks for them
    out = lab.sh("ls /var/lib/kubelet/plugins_registry /var/lib/kubelet/plugins/csi.tigera.io")
    assert "csi.tigera.io-reg.sock" in out.split() and "csi.sock" in out.split(), out


def test_a_pod_with_a_csi_tigera_io_volume_gets_felixs_policy_sync_socket(lab):
    """With FelixConfiguration policySyncPathPrefix /var/run/nodeagent (as Calico's app-layer
    policy sets it), a pod with a csi.tigera.io volume finds Felix's policy-sync socket at
    ``<mountPath>/nodeagent/socket`` and a Sync over it answers its own endpoint, then
    InSync; deleting the pod unpublishes the volume (no creds, no workload dir, no mount)."""
    python = str(labstate.VENV_BIN / "python")
    # calico-node's start-up made FelixConfiguration default (ensureDefaultConfig)
    fc = json.loads(lab.sh("calicoctl get felixconfiguration default -o json"))
    assert fc["spec"].get("reportingInterval") == "0s" and fc["spec"].get("logSeverityScreen") == "Info", fc
    lab.sh("calicoctl patch felixconfiguration default "
           "--patch '{\"spec\": {\"policySyncPathPrefix\": \"/var/run/nodeagent\"}}'")
    try:
        lab.sh(f"cat <<'EOF' | kubectl apply -f -\n{CSI_POD}EOF")
        pod = wait_for(lambda: lab.kube("get", "pod", "policy-client"),
                       lambda p: p.get("status", {}).get("phase") == "Running", timeout=60,
                       what="policy-client Running")
        uid, ip = pod["metadata"]["uid"], pod["status"]["podIP"]
        ls = wait_for(lambda: lab.run("kubectl exec policy-client -- ls /var/run/felix/nodeagent").stdout.split(),
                      lambda names: "socket" in names, timeout=20, what="the socket in the pod's volume")
        assert ls == ["socket"], ls
        # Felix answers the pod's endpoint once its calculation has it (the WorkloadEndpoint
        # reaches Felix through Typha): until then a Sync gets InSync alone first
        out = wait_for(lambda: lab.sh(f"kubectl exec policy-client -- {python} -m agent.felix.policysync "
                                      "--dial /var/run/felix/nodeagent/socket --count 2"),
                       lambda o: "workload_endpoint_update" in o.splitlines()[0], timeout=20,
                       what="a Sync that starts with the pod's endpoint")
        first, second = (json.loads(ln) for ln in out.splitlines())
        upd = first["workload_endpoint_update"]
        assert upd["id"] == {"orchestrator_id": "k8s", "workload_id": "default/policy-client", "endpoint_id": "eth0"}
        assert upd["endpoint"]["ipv4_nets"] == [f"{ip}/32"] and upd["endpoint"]["state"] == "active", upd
        assert re.fullmatch(r"cali[0-9a-f]{11}", upd["endpoint"]["name"]), upd
        assert upd["endpoint"]["profile_ids"][0] == "kns.default", upd
        assert second == {"in_sync": {}, "sequence_number": 0}, second
        # on the node: the driver's files for the volume, and its tmpfs at the kubelet's target
        vol = lab.sh("ls /var/run/nodeagent/creds", node="k8s-w0").split()
        assert len(vol) == 1 and vol[0].startswith("csi-"), vol
        creds = json.loads(lab.sh(f"cat /var/run/nodeagent/creds/{vol[0]}", node="k8s-w0"))
        assert creds == {"UID": uid, "Workload": "policy-client", "Namespace": "default",
                         "ServiceAccount": "default"}, creds
        target = f"/var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~csi/felix-sync/mount"
        assert f" {target} " in lab.sh("cat /proc/self/mountinfo", node="k8s-w0")
    finally:
        lab.run("kubectl delete pod policy-client --wait=true --timeout=60s")
        lab.run("calicoctl patch felixconfiguration default --patch '{\"spec\": {\"policySyncPathPrefix\": \"\"}}'")
    assert lab.sh("ls -A /var/run/nodeagent/creds /var/run/nodeagent/mount", node="k8s-w0").split() == [
        "/var/run/nodeagent/creds:", "/var/run/nodeagent/mount:"]
    assert "kubernetes.io~csi" not in lab.sh("cat /proc/self/mountinfo", node="k8s-w0")


PROBE_PODS = """\
apiVersion: v1
kind: Service
metadata: {name: probe-web}
spec: {selector: {app: probe-web}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: probe-web, labels: {app: probe-web}}
spec:
  nodeName: k8s-w0
  containers:
  - name: web
    image: nginx
    readinessProbe: {httpGet: {path: /ready, port: 80}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: probe-exec}
spec:
  nodeName: k8s-w0
  terminationGracePeriodSeconds: 3
  containers:
  - name: sh
    image: busybox
    command: [sleep, infinity]
    readinessProbe: {exec: {command: [cat, ready-flag]}, periodSeconds: 1}
    lifecycle:
      postStart: {exec: {command: [touch, post-start-flag]}}
      preStop: {exec: {command: [cat, /no/such/pre-stop-file]}}
---
apiVersion: v1
kind: Pod
metadata: {name: probe-live}
spec:
  nodeName: k8s-w0
  terminationGracePeriodSeconds: 2
  containers:
  - name: sh
    image: busybox
    command: [sleep, infinity]
    livenessProbe: {exec: {command: [cat, /no/such/file]}, periodSeconds: 1, failureThreshold: 2}
"""


def test_probes_decide_readiness_and_restart_a_container_that_fails_its_liveness_probe(lab):
    """The kubelet runs the probes: an httpGet readiness probe on a path busybox httpd serves
    only once the file exists keeps the pod 0/1 (its Service's endpoint not ready) until
    ``kubectl exec ... touch`` makes it, then 1/1 (the endpoint ready); an exec readiness probe likewise, in a pod whose postStart hook
    makes a file and whose failing preStop hook is a FailedPreStopHook event; a failing liveness probe gets the container killed
    and restarted (restartCount 1, ``Killing`` and ``Unhealthy`` events)."""
    def ready(name: str) -> str:
        return lab.sh(f"kubectl get pod {name} --no-headers").split()[1]

    lab.sh(f"cat <<'EOF' | kubectl apply -f -\n{PROBE_PODS}EOF")
    try:
        for name in ("probe-web", "probe-exec"):
            wait_for(lambda n=name: lab.kube("get", "pod", n), lambda p: p.get("status", {}).get("phase") == "Running",
                     timeout=60, what=f"{name} Running")
        # failing readiness probes: Running but 0/1 (status and READY column), with Unhealthy events
        for name, words, part in (("probe-web", "Readiness probe failed: HTTP probe failed with statuscode: 404", ""),
                                  ("probe-exec", "Readiness probe failed: cat: ", "ready-flag")):
            ev = wait_for(lambda n=name: [e["message"] for e in lab.kube(
                "get", "events", "--field-selector", f"involvedObject.name={n},reason=Unhealthy")["items"]],
                lambda msgs, w=words, p=part: any(m.startswith(w) and p in m for m in msgs), timeout=20, what=f"{name}'s Unhealthy event")
            assert ev, name
            assert ready(name) == "0/1"
            cs = lab.kube("get", "pod", name)["status"]["containerStatuses"][0]
            assert cs["ready"] is False and cs["started"] is True, cs
        def slice_ready() -> list:
            return [e.get("conditions", {}).get("ready") for sl in lab.kube(
                "get", "endpointslices", "-l", "kubernetes.io/service-name=probe-web")["items"]
                for e in sl.get("endpoints") or []]

        # the Service's EndpointSlice follows the pod's readiness
        wait_for(slice_ready, lambda r: r == [False], timeout=20, what="probe-web's endpoint not ready")
        lab.sh("kubectl exec probe-web -- touch ready")  # busybox httpd runs in its document root
        lab.sh("kubectl exec probe-exec -- touch ready-flag")
        for name in ("probe-web", "probe-exec"):
            wait_for(lambda n=name: ready(n), lambda r: r == "1/1", timeout=20, what=f"{name} 1/1 after the touch")
            conds = {c["type"]: c["status"] for c in lab.kube("get", "pod", name)["status"]["conditions"]}
            assert conds["Ready"] == "True" and conds["ContainersReady"] == "True", conds
        wait_for(slice_ready, lambda r: r == [True], timeout=20, what="probe-web's endpoint ready")
        # the lifecycle hooks ran: postStart made its file; a failing preStop is an event
        assert lab.run("kubectl exec probe-exec -- test -e post-start-flag").returncode == 0
        lab.sh("kubectl delete pod probe-exec --wait=true --timeout=60s")
        hooks = [e["message"] for e in lab.kube("get", "events", "--field-selector",
                                                "involvedObject.name=probe-exec,reason=FailedPreStopHook")["items"]]
        assert len(hooks) == 1 and hooks[0].startswith(
            'Exec lifecycle hook ([cat /no/such/pre-stop-file]) for Container "sh" in Pod "probe-exec_default('), hooks
        # the liveness probe fails twice: the container is killed and restarted
        pod = wait_for(lambda: lab.kube("get", "pod", "probe-live"),
                       lambda p: any(c.get("restartCount", 0) >= 1 for c in p.get("status", {}).get(
                           "containerStatuses") or []), timeout=60, what="probe-live restarted")
        events = lab.kube("get", "events", "--field-selector", "involvedObject.name=probe-live")["items"]
        by_reason = {}
        for e in events:
            by_reason.setdefault(e["reason"], []).append(e["message"])
        assert "Container sh failed liveness probe, will be restarted" in by_reason.get("Killing", []), by_reason
        assert any(m.startswith("Liveness probe failed: cat: ") and "/no/such/file" in m
                   for m in by_reason.get("Unhealthy", [])), by_reason
        assert pod["status"]["containerStatuses"][0]["restartCount"] >= 1
    finally:
        lab.run("kubectl delete service probe-web; kubectl delete pod probe-web probe-exec probe-live --wait=true "
                "--timeout=60s")
