"""The walkthrough's flows in a real lab, each asserted on its pcaps (issues 7 and 13).

One lab for the module: NotReady -> install-cni -> Ready, the workloads, the four
flows under tcpdump. Each test then checks what a user would observe: curl's
answer and the packets on each interface.
"""

import xml.etree.ElementTree as ET

import pytest

from tests.lab.lab_helpers import flow, walkthrough_lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def wt(request):
    with walkthrough_lab(request, "wt", flows=True, what="walkthrough") as w:
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
    assert len(names) == 3 and all(n.startswith("cni-") for n in names), netns  # k8s-w0's pods only
    link = wt.in_node("k8s-w0", "ip", "link", "show", mine.iface)
    pod_ns = link.split("link-netns ")[1].split()[0]
    assert pod_ns in names and "ee:ee:ee:ee:ee:ee" in link, link
    inside = wt.in_node("k8s-w0", "ip", "netns", "exec", pod_ns, "ip", "route")
    assert "default via 169.254.1.1 dev eth0" in inside and "169.254.1.1 dev eth0 scope link" in inside, inside

    tasks = wt.in_node("k8s-w0", "ctr", "-n", "k8s.io", "task", "list")
    assert tasks.split()[:3] == ["TASK", "PID", "STATUS"], tasks
    pods = json.loads(wt.kubectl("get", "pods", "-o", "json"))["items"]
    for p in pods:
        if p["spec"]["nodeName"] == "k8s-w0":
            pid = json.loads(p["metadata"]["annotations"]["calicolab.io/pids"])["nginx"]
            assert f" {pid} " in f" {tasks} ".replace("\n", " "), (pid, tasks)
