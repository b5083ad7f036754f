"""The walkthrough's flows in a real lab, each asserted on its pcaps (issues 7 and 13).

One lab for the module: NotReady -> install-cni -> Ready, the workloads, the four
flows under tcpdump. Each test then checks what a user would observe: curl's
answer and the packets on each interface.
"""

import xml.etree.ElementTree as ET

import pytest

from testbed.poll import wait_for
from tests.lab.lab_helpers import flow, walkthrough_lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def wt(request):
    # the etcd half of the walkthrough pair (test_walkthrough_kdd.py runs the default, kubernetes)
    with walkthrough_lab(request, "wt", flows=True, what="walkthrough (etcd datastore)", datastore="etcdv3") as w:
        yield w


def test_nodes_were_notready_then_ready(wt):
    steps = {s.name.split(":")[0]: s for s in wt.steps}
    assert "kubectl get nodes" in steps, [s.name for s in wt.steps]
    assert "NotReady" in steps["kubectl get nodes"].output
    conds = wt.node_conditions()
    assert all(c["status"] == "True" for c in conds.values()), conds


def test_same_node_flow(wt):
    f = flow(wt, "same-node")
    wt.check_same_node(f)


def test_cross_node_flow_is_ipip(wt):
    f = flow(wt, "cross-node")
    wt.check_cross_node(f)


def test_pod_to_internet_is_masqueraded(wt):
    f = flow(wt, "internet")
    wt.check_internet(f)


def test_service_is_dnatted(wt):
    f = flow(wt, "service")
    wt.check_service(f)


def test_policy_denied_flow_is_dropped_where_felix_drops_it(wt):
    """Section 10: a NetworkPolicy denies ingress to nginx; the SYN leaves pod k8s-w1, crosses
    k8s-w0's tunl0 and is dropped before nginx's cali interface, by the rule counting it."""
    f = next(f for f in wt.flows if f.name == "policy-denied")
    assert f.error is None, f.error
    assert f.result == "000", f"curl printed {f.result!r} although the policy denies it"
    wt.check_policy_denied(f)
    assert f.drop is not None and f.drop[0] == "k8s-w0" and "cali-tw-" in f.drop[1], f.drop


def test_policy_allowed_flow_passes_again(wt):
    f = flow(wt, "policy-allowed")
    wt.check_policy_allowed(f)


def test_mtu_largest_df_ping_passes_one_more_fails(wt):
    res = wt.mtu_probe()
    assert res["tunnel_mtu"] == 1480, res
    assert res["too_big_rc"] != 0, res
    assert "mtu=1480" in res["too_big_output"] or "Frag needed" in res["too_big_output"], res


def test_report_renders_flows_and_diagram(wt, tmp_path):
    wt.check_flows()
    path = wt.write_report()
    html = path.read_text()
    root = ET.fromstring(html.split("<!DOCTYPE html>")[-1].strip())  # well-formed XHTML
    svgs = [el for el in root.iter() if el.tag.endswith("svg")]
    assert svgs, "the report has no SVG diagram"
    text = "".join(svgs[0].itertext())
    for pod in wt.pods.values():
        assert pod.ip in html
    for node in ("k8s-m", "k8s-w0", "k8s-w1"):
        assert node in text
    assert all(f.ok for f in wt.flows), [(f.name, f.error) for f in wt.flows]
    assert "DROPPED by filter cali-tw-" in html and "class='drop'" in html  # the denied flow ends at the drop


def test_capture_cli_start_stop_writes_one_pcap_per_interface(wt):
    from testbed.capture import pcapassert as pa

    out = wt.cli("capture", "start", "--nodes", "k8s-w1", "--ifaces", "eth0,tunl0").stdout
    assert "capturing in" in out, out
    run_dir = out.split("capturing in ", 1)[1].split(" (pid", 1)[0]
    a, b = wt.pods["k8s-w0"], wt.pods["k8s-w1"]
    wt.in_pod(a.name, "ping", "-c", "2", "-W", "2", b.ip)
    stopped = wt.cli("capture", "stop").stdout
    assert "k8s-w1-eth0.pcap" in stopped and "k8s-w1-tunl0.pcap" in stopped, stopped
    na, nb = wt.nodes["k8s-w0"]["address"], wt.nodes["k8s-w1"]["address"]
    pa.assert_ipip(f"{run_dir}/k8s-w1-eth0.pcap", outer_src=na, outer_dst=nb, inner_src=a.ip,
                   inner_dst=b.ip)
    pa.assert_on_tunnel(f"{run_dir}/k8s-w1-tunl0.pcap", a.ip, b.ip)


def test_walkthrough_commands_work_verbatim_in_a_node(wt):
    """Sections 3-5 of the walkthrough, typed in k8s-w0's shell."""
    import json

    cols = ("NAME:.metadata.name,VERSION:.status.nodeInfo.kubeletVersion,"
            "INTERNAL-IP:.status.addresses[0].address,POD-CIDR:.spec.podCIDR")
    nodes = wt.in_node("k8s-w0", "kubectl", "get", "nodes", "-o", f"custom-columns={cols}")
    assert nodes.split()[:4] == ["NAME", "VERSION", "INTERNAL-IP", "POD-CIDR"], nodes
    assert "172.30.0.11" in nodes and "k8s-w1" in nodes, nodes

    blocks = wt.in_node("k8s-w0", "calicoctl", "ipam", "show", "--show-blocks")
    assert "IP Pool" in blocks and "192.168.0.0/16" in blocks and blocks.count("| Block") == 3, blocks

    mine = wt.pods["k8s-w0"]
    assert mine.iface in wt.in_node("k8s-w0", "ip", "-c", "route")  # colours on, as typed
    route = wt.in_node("k8s-w0", "ip", "route")
    assert f"{mine.ip} dev {mine.iface} scope link" in route, route
    assert f"blackhole {wt.nodes['k8s-w0']['tunnel'].rsplit('.', 1)[0]}.0/24 proto bird" in route, route
    status = wt.in_node("k8s-w0", "calicoctl", "node", "status")
    assert status.startswith("Calico process is running.") and status.count("Established") == 2, status
    assert "node-to-node mesh" in status
    birdc = wt.in_node("k8s-w0", "birdc", "-s", "/var/run/calico/bird.ctl", "show", "protocols")
    assert birdc.count("Established") == 2, birdc

    weps = wt.in_node("k8s-w0", "calicoctl", "get", "workloadEndpoint")
    for pod in wt.pods.values():
        assert pod.iface in weps and pod.ip in weps, weps

    netns = wt.in_node("k8s-w0", "ip", "netns", "list")
    names = [ln.split()[0] for ln in netns.splitlines() if ln.strip()]
    every = json.loads(wt.kubectl("get", "pods", "-A", "-o", "json"))["items"]
    w0_netns = {p["metadata"]["annotations"]["calicolab.io/netns"] for p in every
                if p["spec"].get("nodeName") == "k8s-w0" and not p["spec"].get("hostNetwork")}
    assert sorted(names) == sorted(w0_netns) and all(n.startswith("cni-") for n in names), netns  # k8s-w0's only
    assert len([p for p in every if p["spec"].get("nodeName") == "k8s-w0"
                and p["metadata"]["namespace"] == "default"]) == 3
    link = wt.in_node("k8s-w0", "ip", "link", "show", mine.iface)
    pod_ns = link.split("link-netns ")[1].split()[0]
    assert pod_ns in names and "ee:ee:ee:ee:ee:ee" in link, link
    inside = wt.in_node("k8s-w0", "ip", "netns", "exec", pod_ns, "ip", "route")
    assert "default via 169.254.1.1 dev eth0" in inside and "169.254.1.1 dev eth0 scope link" in inside, inside

    tasks = wt.in_node("k8s-w0", "ctr", "-n", "k8s.io", "task", "list")
    assert tasks.split()[:3] == ["TASK", "PID", "STATUS"], tasks
    for p in every:
        if p["spec"].get("nodeName") == "k8s-w0" and p["metadata"]["namespace"] == "default":
            pid = json.loads(p["metadata"]["annotations"]["calicolab.io/pids"])["nginx"]
            assert f" {pid} " in f" {tasks} ".replace("\n", " "), (pid, tasks)


# --- the real kubectl against the walkthrough lab (issue 11) ------------------------------------
# Everything below runs in the namespace `km` (made once), so the walkthrough's own pods and
# flows above are untouched; each test is one behaviour a user reaches for.

KM = "km"
KM_APP = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: km, labels: {app: web}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: nginx, image: nginx, ports: [{containerPort: 80, name: http}]}
      - {name: sidecar, image: busybox, command: [sh, -c, 'echo sidecar up; sleep 3600']}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: km}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"""


@pytest.fixture(scope="module")
def km_made(wt):
    """Namespace km with the Deployment web (2 replicas, 2 containers), its Service web (port
    named http) and, made by `kubectl expose`, the Service web-exposed (8080 -> 80)."""
    wt.kubectl("create", "namespace", KM)
    wt.kubectl("apply", "-f", "-", input=KM_APP)
    wt.kubectl("expose", "deployment", "web", "-n", KM, "--name", "web-exposed", "--port", "8080",
               "--target-port", "80")
    wt.kubectl("rollout", "status", "deployment/web", "-n", KM, "--timeout", "60s")


@pytest.fixture
def km(wt, km_made):
    """The names of web's two pods as they are now (a test may scale web and back: the
    ReplicaSet then removes whichever pod it ranks first, as Kubernetes does)."""
    import json

    def ready_pods() -> list[str]:
        pods = json.loads(wt.kubectl("get", "pods", "-n", KM, "-l", "app=web", "-o", "json"))["items"]
        return sorted(p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")
                      and any(c["type"] == "Ready" and c["status"] == "True"
                              for c in p.get("status", {}).get("conditions") or []))

    return wait_for(ready_pods, lambda names: len(names) == 2, timeout=60, what="web's 2 pods Ready")


def test_kubectl_get_nodes_and_the_control_plane_as_mirror_pods(wt):
    rows = [ln.split() for ln in wt.kubectl("get", "nodes").splitlines()]
    assert rows[0][:5] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"], rows
    assert {r[0]: (r[1], r[2], r[4]) for r in rows[1:]} == {
        "k8s-m": ("Ready", "control-plane", "v1.37.1"), "k8s-w0": ("Ready", "<none>", "v1.37.1"),
        "k8s-w1": ("Ready", "<none>", "v1.37.1")}
    taints = wt.kubectl("get", "nodes", "-o", "jsonpath={range .items[*]}{.metadata.name}={.spec.taints[*].key}{\"\\n\"}{end}")
    assert "node.kubernetes.io/not-ready" not in taints, taints  # the kubelet removed it once Ready
    wide = wt.kubectl("get", "pods", "-A", "-o", "wide")
    assert wide.split("\n")[0].split()[:9] == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP",
                                                "NODE", "NOMINATED"], wide
    running = {ln.split()[1]: ln.split() for ln in wide.splitlines()[1:] if ln.split()[3] == "Running"}
    for mirror in ("etcd-k8s-m", "kube-apiserver-k8s-m", "kube-controller-manager-k8s-m", "kube-scheduler-k8s-m"):
        assert mirror in running and running[mirror][6] == "172.30.0.10", wide
    assert sum(1 for n in running if n.startswith("kube-proxy-")) == 3, wide
    assert sum(1 for n in running if n.startswith("coredns-")) == 2, wide
    assert sum(1 for n in running if n.startswith("calico-node-")) == 3, wide


def test_kubectl_custom_columns_of_the_walkthrough_verbatim(wt):
    out = wt.kubectl("get", "nodes", "-o", "custom-columns=NAME:.metadata.name,VERSION:.status.nodeInfo.kubeletVersion,"
                     "INTERNAL-IP:.status.addresses[0].address,POD-CIDR:.spec.podCIDR")
    rows = [ln.split() for ln in out.splitlines()]
    assert rows == [["NAME", "VERSION", "INTERNAL-IP", "POD-CIDR"],
                    ["k8s-m", "v1.37.1", "172.30.0.10", "192.168.0.0/24"],
                    ["k8s-w0", "v1.37.1", "172.30.0.11", "192.168.1.0/24"],
                    ["k8s-w1", "v1.37.1", "172.30.0.12", "192.168.2.0/24"]], out


def test_kubectl_jsonpath_range_and_filters(wt):
    out = wt.kubectl("get", "pods", "-o", 'jsonpath={range .items[*]}{.metadata.name}{"\\t"}{.spec.nodeName}{"\\n"}{end}')
    rows = dict(ln.split("\t") for ln in out.splitlines())
    assert rows["k8s-w0"] == "k8s-w0" and rows["k8s-w1"] == "k8s-w1", out
    on_w1 = wt.kubectl("get", "pods", "-o", 'jsonpath={.items[?(@.spec.nodeName=="k8s-w1")].metadata.name}')
    assert on_w1.split() == ["k8s-w1"], on_w1


def test_kubectl_run_command_logs_and_delete_wait(wt):
    wt.kubectl("run", "once", "-n", "default", "--image", "busybox", "--restart", "Never", "--command", "--",
               "sh", "-c", "echo hello from once; echo second line")
    wait_for(lambda: wt.kubectl("get", "pod", "once", "-o", "jsonpath={.status.phase}"), lambda ph: ph == "Succeeded",
             timeout=30, what="pod once Succeeded")
    assert wt.kubectl("logs", "once").splitlines() == ["hello from once", "second line"]
    assert wt.kubectl("logs", "once", "--tail", "1").strip() == "second line"
    out = wt.kubectl("delete", "pod", "once", "--wait")
    assert out.strip() == 'pod "once" deleted from default namespace', out
    assert wt.cli("kubectl", "get", "pod", "once", check=False).returncode == 1


def test_kubectl_rollout_status_scale_and_ready_counts(wt, km):
    out = wt.kubectl("rollout", "status", "deployment/web", "-n", KM, "--timeout", "60s")
    assert 'deployment "web" successfully rolled out' in out, out
    wt.kubectl("scale", "deployment", "web", "-n", KM, "--replicas", "3")
    out = wt.kubectl("rollout", "status", "deployment/web", "-n", KM, "--timeout", "60s")
    assert "successfully rolled out" in out
    table = wt.kubectl("get", "deploy", "web", "-n", KM).splitlines()
    assert table[1].split()[1:4] == ["3/3", "3", "3"], table
    wt.kubectl("scale", "deployment", "web", "-n", KM, "--replicas", "2")
    wait_for(lambda: wt.kubectl("get", "deploy", "web", "-n", KM, "-o", "jsonpath={.status.replicas}"),
             lambda n: n == "2", timeout=30, what="web back to 2 replicas")
    # a Deployment whose pods never get ready: READY counts only ready pods
    wt.kubectl("create", "deployment", "broken", "-n", KM, "--image", "example.com/no-such-image:1")
    wait_for(lambda: wt.kubectl("get", "pods", "-n", KM, "-l", "app=broken"), lambda t: "ImagePullBackOff" in t,
             timeout=30, what="the broken image backing off")
    row = wt.kubectl("get", "deploy", "broken", "-n", KM).splitlines()[1].split()
    assert row[1] == "0/1" and row[3] == "0", row
    wt.kubectl("delete", "deployment", "broken", "-n", KM, "--wait")


def test_kubectl_wait_for_condition(wt, km):
    out = wt.kubectl("wait", "--for=condition=Ready", "pod", "-l", "app=web", "-n", KM, "--timeout", "60s")
    assert all(ln.endswith("condition met") for ln in out.splitlines()) and len(out.splitlines()) == 2, out
    out = wt.kubectl("wait", "--for=condition=Available", "deployment/web", "-n", KM, "--timeout", "30s")
    assert "deployment.apps/web condition met" in out


def test_kubectl_exec_container_stdin_and_exit_code(wt, km):
    pod = km[0]
    out = wt.kubectl("exec", pod, "-n", KM, "-c", "sidecar", "--", "sh", "-c", "echo $HOSTNAME; ip -4 -o addr show eth0")
    assert out.splitlines()[0] == pod and "inet 192.168." in out, out
    res = wt.cli("kubectl", "exec", "-i", pod, "-n", KM, "-c", "nginx", "--", "sh", "-c", "tr a-z A-Z; exit 3",
                 input="piped through stdin\n", check=False)
    assert res.returncode == 3 and res.stdout == "PIPED THROUGH STDIN\n", res
    assert "command terminated with exit code 3" in res.stderr
    token = wt.kubectl("exec", pod, "-n", KM, "-c", "sidecar", "--", "ls", "/var/run/secrets/kubernetes.io/serviceaccount")
    assert token.split() == ["ca.crt", "namespace", "token"], token
    resolv = wt.kubectl("exec", pod, "-n", KM, "-c", "sidecar", "--", "cat", "/etc/resolv.conf")
    assert resolv.splitlines() == ["search km.svc.cluster.local svc.cluster.local cluster.local",
                                   "nameserver 10.96.0.10", "options ndots:5"], resolv


def test_kubectl_logs_follow_container_and_deployment(wt, km):
    assert wt.kubectl("logs", "deploy/web", "-n", KM, "-c", "sidecar").strip() == "sidecar up"
    res = wt.cli("kubectl", "logs", km[0], "-n", KM, check=False)
    assert res.returncode == 0 and 'Defaulted container "nginx" out of: nginx, sidecar' in res.stderr, res
    pod = "talker"
    wt.kubectl("run", pod, "-n", KM, "--image", "busybox", "--command", "--", "sh", "-c",
               "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done")
    wait_for(lambda: wt.kubectl("get", "pod", pod, "-n", KM, "-o", "jsonpath={.status.phase}"),
             lambda ph: ph == "Running", timeout=30, what="talker Running")
    follow = wt.cli("exec", "k8s-m", "--", "timeout", "3", "kubectl", "logs", "-f", pod, "-n", KM, check=False,
                    timeout=20)
    ticks = [ln for ln in follow.stdout.splitlines() if ln.startswith("tick ")]
    assert follow.returncode == 124 and len(ticks) >= 8, follow  # still streaming when timeout ended it
    wt.kubectl("delete", "pod", pod, "-n", KM, "--wait")


def test_kubectl_port_forward_from_a_node(wt, km):
    script = (f"kubectl port-forward -n {KM} pod/{km[0]} 18080:80 >/tmp/pf-{KM}.log 2>&1 & pf=$!; "
              "for i in $(seq 100); do out=$(curl -s -m 1 http://127.0.0.1:18080/) && break; sleep 0.1; done; "
              "kill $pf; echo \"$out\"")
    out = wt.in_node("k8s-m", "sh", "-c", script, timeout=40)
    assert "Welcome to nginx!" in out and km[0] in out, out


def test_kubectl_get_watch_shows_pending_creating_running_terminating(wt):
    import subprocess
    import sys

    watcher = subprocess.Popen([sys.executable, "-m", "testbed.cli", "--lab", wt.lab, "kubectl", "get", "pods", "-n",
                                KM, "-w", "-v=6", "--field-selector", "metadata.name=watched"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # kubectl lists first (nothing yet), then watches from that list's resourceVersion: its
        # request log (-v=6) says when the watch is open, so the pod is made after that
        logged = [watcher.stderr.readline() for _ in range(1)]
        while logged[-1] and "watch=true" not in logged[-1] and len(logged) < 200:
            logged.append(watcher.stderr.readline())
        assert "watch=true" in logged[-1] and 'status="200 OK"' in logged[-1], logged
        wt.kubectl("run", "watched", "-n", KM, "--image", "nginx")
        wait_for(lambda: wt.kubectl("get", "pod", "watched", "-n", KM, "-o", "jsonpath={.status.phase}"),
                 lambda ph: ph == "Running", timeout=30, what="watched Running")
        wt.kubectl("delete", "pod", "watched", "-n", KM, "--wait")
    finally:
        watcher.terminate()
        out, _ = watcher.communicate(timeout=10)
    states = [ln.split()[2] for ln in out.splitlines()[1:] if ln.startswith("watched")]
    for want in ("Pending", "ContainerCreating", "Running", "Terminating"):
        assert want in states, (want, out)
    assert states.index("Pending") < states.index("Running") < states.index("Terminating"), out


def test_kubectl_get_events_from_scheduler_kubelet_and_controllers(wt, km):
    out = wt.kubectl("get", "events", "-n", KM, "--sort-by", ".metadata.creationTimestamp")
    for reason in ("Scheduled", "Pulling", "Pulled", "Created", "Started", "SuccessfulCreate", "ScalingReplicaSet"):
        assert f" {reason} " in out, (reason, out)
    assert "Successfully assigned km/web-" in out and "Scaled up replica set web-" in out


def test_curl_a_service_by_name_from_a_pod(wt, km):
    for host in ("web.km", "web.km.svc.cluster.local"):
        res = wt.kubectl("exec", km[0], "-n", KM, "-c", "sidecar", "--", "curl", "-s", "-m", "5", f"http://{host}/")
        assert "Welcome to nginx!" in res, (host, res)
    res = wt.kubectl("exec", km[0], "-n", KM, "-c", "sidecar", "--", "curl", "-s", "-m", "5", "http://web/")
    assert "Welcome to nginx!" in res, res  # the search domains of the pod's namespace
    res = wt.kubectl("exec", km[0], "-n", KM, "-c", "sidecar", "--", "curl", "-s", "-m", "5", "http://web-exposed:8080/")
    assert "Welcome to nginx!" in res, res  # the Service kubectl expose made
    # the API server through the kubernetes Service, with the pod's ServiceAccount token
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    res = wt.kubectl("exec", km[0], "-n", KM, "-c", "sidecar", "--", "sh", "-c",
                     f'curl -s -m 5 --cacert {sa}/ca.crt -H "Authorization: Bearer $(cat {sa}/token)" '
                     "https://kubernetes.default.svc/api/v1/namespaces/km/pods")
    assert '"kind":"PodList"' in res.replace(" ", ""), res
    # the Service's ClusterIP itself (a SAN of the serving certificate, as kubeadm makes it)
    res = wt.kubectl("exec", km[0], "-n", KM, "-c", "sidecar", "--", "sh", "-c",
                     f'curl -s -m 5 --cacert {sa}/ca.crt -H "Authorization: Bearer $(cat {sa}/token)" '
                     "https://10.96.0.1:443/version")
    assert '"gitVersion"' in res, res
    res = wt.kubectl("exec", km[0], "-n", KM, "-c", "sidecar", "--", "curl", "-s", "-m", "5", "--cacert",
                     f"{sa}/ca.crt", "https://10.96.0.1:443/version")
    assert '"reason":"Unauthorized","code":401' in res.replace(" ", ""), res  # no credentials: 401 Status


def test_dns_records_of_the_specification_from_a_pod(wt, km):
    def dig(*args: str) -> str:
        return wt.kubectl("exec", km[0], "-n", KM, "-c", "sidecar", "--", "dig", "+short", *args).strip()

    svc_ip = wt.kubectl("get", "svc", "web", "-n", KM, "-o", "jsonpath={.spec.clusterIP}")
    assert dig("web.km.svc.cluster.local") == svc_ip
    assert dig("SRV", "_http._tcp.web.km.svc.cluster.local") == "0 100 80 web.km.svc.cluster.local."
    assert dig("-x", svc_ip) == "web.km.svc.cluster.local."
    assert dig("kubernetes.default.svc.cluster.local") == "10.96.0.1"
    assert dig("TXT", "dns-version.cluster.local") == '"1.1.0"'
    pod_ip = wt.kubectl("get", "pod", km[0], "-n", KM, "-o", "jsonpath={.status.podIP}")
    assert dig(pod_ip.replace(".", "-") + ".km.pod.cluster.local") == pod_ip
    nx = wt.kubectl("exec", km[0], "-n", KM, "-c", "sidecar", "--", "dig", "nope.km.svc.cluster.local")
    assert "status: NXDOMAIN" in nx, nx
    assert wt.kubectl("get", "deploy", "coredns", "-n", "kube-system").splitlines()[1].split()[1] == "2/2"


def test_a_pod_for_a_node_that_does_not_exist_is_accepted_and_stays_pending(wt):
    wt.kubectl("run", "lost", "-n", KM, "--image", "nginx", "--overrides", '{"spec":{"nodeName":"k8s-w9"}}')
    assert wt.kubectl("get", "pod", "lost", "-n", KM, "-o", "jsonpath={.status.phase}") == "Pending"
    # no kubelet will finish a graceful deletion: force it (pod GC would after 40 s)
    wt.kubectl("delete", "pod", "lost", "-n", KM, "--grace-period=0", "--force")


LATE_CM_POD = """\
apiVersion: v1
kind: Pod
metadata: {name: late-cm, namespace: default}
spec:
  restartPolicy: Never
  containers:
    - name: main
      image: busybox
      command: [sh, -c, 'echo color=$COLOR']
      env: [{name: COLOR, valueFrom: {configMapKeyRef: {name: late-colors, key: color}}}]
"""


def test_a_pod_whose_configmap_comes_later_waits_then_runs(wt):
    """CreateContainerConfigError while the ConfigMap its env names is missing; the kubelet
    tries again, and the container starts once the ConfigMap is there."""
    wt.kubectl("apply", "-f", "-", input=LATE_CM_POD)
    try:
        waiting = "jsonpath={.status.containerStatuses[0].state.waiting.reason}|" \
                  "{.status.containerStatuses[0].state.waiting.message}"
        wait_for(lambda: wt.kubectl("get", "pod", "late-cm", "-o", waiting),
                 lambda w: w == 'CreateContainerConfigError|configmap "late-colors" not found',
                 timeout=30, what="late-cm waiting in CreateContainerConfigError")
        wt.kubectl("create", "configmap", "late-colors", "--from-literal=color=teal")
        wait_for(lambda: wt.kubectl("get", "pod", "late-cm", "-o", "jsonpath={.status.phase}"),
                 lambda ph: ph == "Succeeded", timeout=30, what="pod late-cm Succeeded after its ConfigMap came")
        assert wt.kubectl("logs", "late-cm").strip() == "color=teal"
    finally:
        wt.cli("kubectl", "delete", "pod", "late-cm", "--wait", check=False)
        wt.cli("kubectl", "delete", "configmap", "late-colors", check=False)


def test_kubectl_cluster_info(wt):
    out = wt.kubectl("cluster-info")
    assert "Kubernetes control plane is running at https://172.30.0.10:6443" in out, out
    assert "CoreDNS is running at https://172.30.0.10:6443/api/v1/namespaces/kube-system/services/kube-dns:dns/proxy" \
        in out, out


def test_the_older_kubectl_minor_against_the_lab(wt, km):
    from testbed.lab import kubeadm
    from testbed.lab import state as labstate
    from tests.apiserver_support import skew_kubectl

    old = skew_kubectl()
    st = labstate.read_state(wt.lab)
    out = wt.in_node("k8s-m", str(old), "--kubeconfig", "/etc/kubernetes/admin.conf", "get", "pods", "-n", KM,
                     "-o", "wide")
    assert out.splitlines()[0].split()[:3] == ["NAME", "READY", "STATUS"] and "web-" in out, out
    assert kubeadm.admin_conf(st).exists()


KM_APPLY = """\
apiVersion: v1
kind: Namespace
metadata: {name: km-apply}
---
apiVersion: v1
kind: Pod
metadata: {name: solo, namespace: km-apply, labels: {app: solo}}
spec:
  containers: [{name: nginx, image: nginx}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-only, namespace: km-apply}
spec:
  podSelector: {matchLabels: {app: solo}}
  policyTypes: [Ingress]
  ingress: [{ports: [{port: 80, protocol: TCP}]}]
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.lab.example.com}
spec:
  group: lab.example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wg]}
  versions:
  - name: v1
    served: true
    storage: true
    additionalPrinterColumns: [{name: Size, type: integer, jsonPath: .spec.size}]
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {size: {type: integer, minimum: 1}}}
"""


def test_kubectl_apply_multidocument_created_unchanged_configured_and_a_crd(wt):
    out = wt.kubectl("apply", "-f", "-", input=KM_APPLY).splitlines()
    assert out == ["namespace/km-apply created", "pod/solo created", "networkpolicy.networking.k8s.io/web-only created",
                   "customresourcedefinition.apiextensions.k8s.io/widgets.lab.example.com created"], out
    try:
        out = wt.kubectl("apply", "-f", "-", input=KM_APPLY).splitlines()
        assert out == ["namespace/km-apply unchanged", "pod/solo unchanged",
                       "networkpolicy.networking.k8s.io/web-only unchanged",
                       "customresourcedefinition.apiextensions.k8s.io/widgets.lab.example.com unchanged"], out
        changed = KM_APPLY.replace("{port: 80, protocol: TCP}", "{port: 8080, protocol: TCP}")
        out = wt.kubectl("apply", "-f", "-", input=changed).splitlines()
        assert "networkpolicy.networking.k8s.io/web-only configured" in out and "pod/solo unchanged" in out, out
        assert wt.kubectl("get", "networkpolicy", "web-only", "-n", "km-apply", "-o",
                          "jsonpath={.spec.ingress[0].ports[0].port}") == "8080"
        wt.kubectl("wait", "--for=condition=Established", "crd/widgets.lab.example.com", "--timeout", "20s")
        widget = "apiVersion: lab.example.com/v1\nkind: Widget\nmetadata: {name: w1, namespace: km-apply}\nspec: {size: 3}\n"
        assert wt.kubectl("apply", "-f", "-", input=widget).strip() == "widget.lab.example.com/w1 created"
        rows = [r.split() for r in wt.kubectl("get", "wg", "-n", "km-apply").splitlines()]
        assert rows[0][:2] == ["NAME", "SIZE"] and rows[1][:2] == ["w1", "3"], rows
        bad = wt.cli("kubectl", "apply", "-f", "-", check=False, input=widget.replace("size: 3", "size: 0"))
        assert bad.returncode == 1 and "spec.size: Invalid value: 0: should be greater than or equal to 1" \
            in bad.stderr, bad
        wait_for(lambda: wt.kubectl("get", "pod", "solo", "-n", "km-apply", "-o", "jsonpath={.status.phase}"),
                 lambda ph: ph == "Running", timeout=30, what="pod solo (applied) Running")
    finally:
        wt.cli("kubectl", "delete", "namespace", "km-apply", "--wait", "--timeout", "60s", check=False, timeout=90)
        wt.cli("kubectl", "delete", "crd", "widgets.lab.example.com", check=False)
    assert wt.cli("kubectl", "get", "namespace", "km-apply", check=False).returncode == 1


def test_kubectl_get_yaml_and_describe(wt, km):
    out = wt.kubectl("get", "svc", "web", "-n", KM, "-o", "yaml")
    assert "kind: Service" in out and "clusterIP: 10.96." in out and "name: web" in out, out
    desc = wt.kubectl("describe", "pod", km[0], "-n", KM)
    assert f"Name:             {km[0]}" in desc and "Status:           Running" in desc, desc
    assert "Node:             k8s-" in desc and "Containers:" in desc and "sidecar:" in desc, desc
    assert "Events:" in desc, desc
    node = wt.kubectl("describe", "node", "k8s-w0")
    assert "Taints:             <none>" in node and "InternalIP:  172.30.0.11" in node, node


def test_kubectl_label_and_annotate(wt, km):
    pod = km[1]
    assert wt.kubectl("label", "pod", pod, "-n", KM, "tier=front").strip() == f"pod/{pod} labeled"
    assert wt.kubectl("get", "pods", "-n", KM, "-l", "tier=front", "-o", "name").split() == [f"pod/{pod}"]
    assert wt.kubectl("annotate", "pod", pod, "-n", KM, "note=checked").strip() == f"pod/{pod} annotated"
    assert wt.kubectl("get", "pod", pod, "-n", KM, "-o", "jsonpath={.metadata.annotations.note}") == "checked"
    res = wt.cli("kubectl", "label", "pod", pod, "-n", KM, "app=other", check=False)
    assert res.returncode == 1 and "already has a value (web)" in res.stderr, res
    assert wt.kubectl("label", "pod", pod, "-n", KM, "tier-").strip() == f"pod/{pod} unlabeled"
    assert wt.kubectl("annotate", "pod", pod, "-n", KM, "note-").strip() == f"pod/{pod} annotated"


def test_kubectl_edit_with_a_scripted_editor_in_a_node(wt, km):
    wt.kubectl("create", "configmap", "km-edit", "-n", KM, "--from-literal=color=blue")
    out = wt.in_node("k8s-w0", "sh", "-c", f"EDITOR='sed -i s/blue/green/' kubectl edit cm km-edit -n {KM}")
    assert out.strip() == "configmap/km-edit edited", out
    assert wt.kubectl("get", "cm", "km-edit", "-n", KM, "-o", "jsonpath={.data.color}") == "green"
    wt.kubectl("delete", "cm", "km-edit", "-n", KM)
