"""The walkthrough in the default datastore, Kubernetes (no ``--datastore``; test_walkthrough.py
runs the etcd one with ``--datastore etcdv3``): the same lab, the
same six flows checked on their pcaps, and the issue's commands typed verbatim in a node
shell, where Calico's data are custom resources in the API server and Calico Nodes,
WorkloadEndpoints and profiles are derived from Kubernetes objects (no etcd key of Calico's)."""

from __future__ import annotations

import json

import pytest

from testbed.lab import state as labstate
from tests.lab.lab_helpers import walkthrough_lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def wt(request):
    # no datastore given: the lab's default, Calico's (kubernetes)
    with walkthrough_lab(request, "wk", flows=True, what="walkthrough (default datastore: kubernetes)") as w:
        assert labstate.read_state(w.lab)["datastore"] == "kubernetes"
        yield w


def test_six_flows_pass_on_their_pcaps_in_the_kubernetes_datastore(wt):
    assert [f.name for f in wt.flows] == ["same-node", "cross-node", "internet", "service",
                                          "policy-denied", "policy-allowed"], [f.name for f in wt.flows]
    for f in wt.flows:
        assert f.error is None, f"{f.name}: {f.error}"
    wt.check_flows()
    assert all(f.ok for f in wt.flows), [(f.name, f.error) for f in wt.flows]


def test_issue_commands_verbatim_in_a_node_shell(wt):
    sh = ["sh", "-c"]
    pipeline = "calicoctl get node -o json | jq -r '.items[] | .metadata.name + \" \" + .status.podCIDRs[]'"
    out = wt.in_node("k8s-w0", *sh, pipeline)
    cidrs = dict(line.split() for line in out.splitlines())
    assert set(cidrs) == {"k8s-m", "k8s-w0", "k8s-w1"}, out
    nodes = json.loads(wt.kubectl("get", "nodes", "-o", "json"))["items"]
    assert cidrs == {n["metadata"]["name"]: n["spec"]["podCIDR"] for n in nodes}, out
    blocks = wt.in_node("k8s-w0", "calicoctl", "ipam", "show", "--show-blocks")
    assert "IP Pool" in blocks and "192.168.0.0/16" in blocks and blocks.count("| Block") == 3, blocks
    weps = wt.in_node("k8s-w0", "calicoctl", "get", "workloadEndpoint")
    for pod in wt.pods.values():
        assert pod.iface in weps and pod.ip in weps, weps
    # the real kubectl (node shells still put the transitional etcd-reading kubectl first on
    # PATH until issue 11's lab half lands; then this is plain `kubectl`)
    kubectl = str(labstate.VENV_BIN / "kubectl")
    pools = wt.in_node("k8s-w0", kubectl, "get", "ippools.crd.projectcalico.org")
    assert pools.split()[:2] == ["NAME", "AGE"] and "default-ipv4-ippool" in pools, pools
    cr_blocks = wt.in_node("k8s-w0", kubectl, "get", "ipamblocks.crd.projectcalico.org")
    assert len([ln for ln in cr_blocks.splitlines()[1:] if ln.strip()]) == 3, cr_blocks
    assert all(ln.split()[0].startswith("192-168-") and ln.split()[0].endswith("-24")
               for ln in cr_blocks.splitlines()[1:] if ln.strip()), cr_blocks


def test_nothing_of_calicos_is_in_etcd(wt):
    """The datastore is the API server: etcd holds only the API server's /registry keys."""
    keys = wt.in_node("k8s-m", "etcdctl", "--endpoints", "http://127.0.0.1:2379", "get", "--prefix",
                      "--keys-only", "/calico", check=False)
    assert keys.strip() == "", keys
    ctx = wt.in_node("k8s-m", "etcdctl", "--endpoints", "http://127.0.0.1:2379", "get", "--prefix",
                     "--keys-only", "/registry/crd.projectcalico.org/ippools")
    assert "default-ipv4-ippool" in ctx, ctx


def test_cluster_information_says_kdd(wt):
    ci = json.loads(wt.in_node("k8s-m", str(labstate.VENV_BIN / "kubectl"), "get", "clusterinformations.crd.projectcalico.org",
                               "default", "-o", "json"))
    assert ci["spec"]["clusterType"].split(",")[-1] == "kdd", ci["spec"]
    assert ci["spec"]["datastoreReady"] is True
    assert ci["spec"]["calicoVersion"] == "v3.28.1" and len(ci["spec"]["clusterGUID"]) == 32, ci["spec"]


def test_felix_configuration_default_made_at_start_up(wt):
    """calico-node's ensureDefaultConfig: FelixConfiguration default with reportingInterval 0s
    and logSeverityScreen Info, shown by kubectl in a node shell."""
    out = wt.in_node("k8s-m", "kubectl", "get", "felixconfiguration", "default", "-o", "yaml")
    assert "  reportingInterval: 0s\n" in out and "  logSeverityScreen: Info\n" in out, out


def test_shell_environment_names_the_datastore(wt):
    env = wt.in_node("k8s-w1", "sh", "-c", "echo $DATASTORE_TYPE $KUBECONFIG")
    assert env.split() == ["kubernetes", "/etc/kubernetes/admin.conf"], env


def test_typha_serves_every_felix_and_confd(wt):
    """Felix and confd of all three nodes behind the one Typha (the calico-typha pod of the
    walkthrough's manifest install, in kube-system, on whichever node it was scheduled), read
    from Typha's Prometheus metrics (Calico's names) in a node shell; Typha holds the only
    Calico watches."""
    host = wt.in_node("k8s-w0", "kubectl", "get", "pods", "-n", "kube-system", "-l", "k8s-app=calico-typha",
                      "-o", "jsonpath={.items[*].status.hostIP}").split()
    assert len(host) == 1, host
    out = wt.in_node("k8s-w0", "sh", "-c", f"curl -s http://{host[0]}:9093/metrics | grep ^typha_connections")
    m = {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in out.splitlines()
         if ln.startswith("typha_")}
    assert m.get('typha_connections_streaming{syncer="felix"}') == 3, out
    assert m.get('typha_connections_streaming{syncer="bgp"}') == 3, out
    assert m.get("typha_connections_active") == 6, out


@pytest.mark.parametrize("cidr, block, field, reason", [
    ("192.168.128.0/20", 26, "spec.cidr", "overlaps with IPPool 'default-ipv4-ippool' (192.168.0.0/16)"),
    ("10.77.0.0/16", 19, "spec.blockSize", "must be between 20 and 32"),
])
def test_bad_pool_refused_and_nothing_made(wt, cidr, block, field, reason):
    """calicoctl in a node shell refuses a pool overlapping the default one, and blockSize 19,
    naming the field; no IPPool custom resource is created."""
    doc = (f"apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: bad-pool}}\n"
           f"spec: {{cidr: {cidr}, blockSize: {block}}}\n")
    r = wt.cli("exec", "k8s-w0", "--", "sh", "-c", f"printf '%s' '{doc}' | calicoctl create -f -", check=False)
    assert r.returncode != 0 and field in r.stderr + r.stdout and reason in r.stderr + r.stdout, (r.stdout, r.stderr)
    pools = wt.in_node("k8s-w0", str(labstate.VENV_BIN / "kubectl"), "get", "ippools.crd.projectcalico.org",
                       "-o", "name")
    assert pools.split() == ["ippool.crd.projectcalico.org/default-ipv4-ippool"], pools
