"""The policy matrix (issue 13): clients x servers x policies -> allowed/denied, in one lab, run
once with each datastore (etcd, and Kubernetes with Typha in front of Felix).

Four clients in two namespaces on both workers probe servers on both workers, another
namespace's server and the in-lab internet, through Kubernetes NetworkPolicies (as
Kubernetes' conformance tests use them: default deny ingress and egress, podSelector,
namespaceSelector, both in one peer, ipBlock with except, ports by number, name and range,
egress to the in-lab internet, a pod created after the policy, deleting a policy) and Calico's
model through calicoctl (GlobalNetworkPolicy order, Deny before Allow, Pass,
serviceAccounts and serviceAccountSelector, nets, Log). Every verdict is a real TCP
connection from inside a pod; every denied one is also proven by the iptables counter of
the Calico rule that dropped it and, on the captures, by its SYN leaving the client,
crossing the server node's tunl0 and never reaching the server; every allowed one by its
SYN-ACK on the client's interface.
"""

from __future__ import annotations

import time

import pytest
import yaml

from testbed.capture.group import CaptureGroup
from testbed.lab import lifecycle as labmod
from testbed.lab import state as labstate
from testbed.lab.clean import clean_lab
from tests.lab.lab_helpers import pcaps_kept_on_failure, template_of, write_topology
from tests.lab.policy_support import INTERNET, Case, Matrix, PodInfo, Target, prove_on_pcaps
from tests.support import require_root, require_tool, unique

pytestmark = pytest.mark.lab

CLIENTS = ["cli-a", "cli-b", "cli-c", "cli-d"]
SERVERS = ["web-0", "web-1", "web-o"]


def _server(name: str, ns: str, node: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": "web"}},
            "spec": {"nodeName": node, "containers": [
                {"name": "web", "image": "nginx", "ports": [{"name": "http", "containerPort": 80}]},
                {"name": "alt", "image": "busybox", "command": ["busybox", "httpd", "-f", "-p", "8080", "-h", "/"],
                 "ports": [{"name": "alt", "containerPort": 8080}]}]}}


def _client(name: str, ns: str, node: str, role: str, sa: str | None = None) -> dict:
    spec: dict = {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}
    if sa:
        spec["serviceAccountName"] = sa
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"role": role}},
            "spec": spec}


WORKLOADS = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "a"}}},
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other", "labels": {"team": "b"}}},
    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "api", "namespace": "shop",
                                                                 "labels": {"tier": "backend"}}},
    _server("web-0", "shop", "k8s-w0"), _server("web-1", "shop", "k8s-w1"), _server("web-o", "other", "k8s-w0"),
    _client("cli-a", "shop", "k8s-w0", "client", sa="api"), _client("cli-c", "shop", "k8s-w1", "other"),
    _client("cli-b", "other", "k8s-w1", "client"), _client("cli-d", "other", "k8s-w0", "other"),
]


def knp(name: str, spec: dict, ns: str = "shop") -> str:
    return yaml.safe_dump({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                           "metadata": {"name": name, "namespace": ns}, "spec": spec})


def calico(kind: str, name: str, spec: dict, ns: str | None = None) -> str:
    md: dict = {"name": name}
    if ns:
        md["namespace"] = ns
    return yaml.safe_dump({"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": md, "spec": spec})


WEB = {"matchLabels": {"app": "web"}}


def in_shop(t: Target) -> bool:
    return t.name.startswith("shop/")


def shop_pod(t: Target) -> bool:
    return t.name in ("shop/web-0", "shop/web-1")


def cases(m: Matrix) -> list[Case]:
    ip = {n: p.ip for n, p in m.pods.items()}

    def apply_k8s(*docs: str):
        return lambda mx: mx.kubectl("apply", "-f", "-", input="---\n".join(docs))

    def delete_k8s(*names: str, ns: str = "shop"):
        def run(mx):
            for n in names:
                mx.kubectl("delete", "networkpolicy", n, "-n", ns)
        return run

    def both(*steps):
        def run(mx):
            for s in steps:
                s(mx)
        return run

    def calicoctl_apply(*docs: str):
        return lambda mx: mx.calicoctl("apply", "-f", "-", input="---\n".join(docs))

    def cname(c: PodInfo) -> str:
        return c.name

    default_deny = knp("default-deny", {"podSelector": {}, "policyTypes": ["Ingress"]})
    return [
        Case("baseline: no policy", lambda mx: None, lambda c, t, p: True),
        Case("k8s default deny ingress (shop)", apply_k8s(default_deny),
             lambda c, t, p: not shop_pod(t)),
        Case("k8s podSelector: role=client of the same namespace", apply_k8s(knp("allow-clients", {
            "podSelector": WEB, "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]})),
            lambda c, t, p: not shop_pod(t) or cname(c) == "cli-a"),
        Case("k8s namespaceSelector: namespaces team=b", apply_k8s(knp("allow-team-b", {
            "podSelector": WEB, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]}]})),
            lambda c, t, p: not shop_pod(t) or cname(c) in ("cli-a", "cli-b", "cli-d")),
        Case("k8s namespaceSelector and podSelector in one peer", both(
            delete_k8s("allow-clients", "allow-team-b"), apply_k8s(knp("allow-b-clients", {
                "podSelector": WEB, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}},
                                                           "podSelector": {"matchLabels": {"role": "client"}}}]}]}))),
            lambda c, t, p: not shop_pod(t) or cname(c) == "cli-b"),
        Case("k8s ipBlock with except", both(delete_k8s("allow-b-clients"), apply_k8s(knp("allow-block", {
            "podSelector": WEB, "ingress": [{"from": [{"ipBlock": {"cidr": "192.168.0.0/16",
                                                                   "except": [f"{ip['cli-b']}/32"]}}]}]}))),
            lambda c, t, p: not shop_pod(t) or cname(c) != "cli-b"),
        Case("k8s port by number", both(delete_k8s("allow-block"), apply_k8s(knp("allow-80", {
            "podSelector": WEB, "ingress": [{"ports": [{"port": 80}]}]}))),
            lambda c, t, p: not shop_pod(t) or p == 80, ports=(80, 8080), targets=("web-0", "web-1")),
        Case("k8s port by name", both(delete_k8s("allow-80"), apply_k8s(knp("allow-http", {
            "podSelector": WEB, "ingress": [{"ports": [{"port": "http"}]}]}))),
            lambda c, t, p: not shop_pod(t) or p == 80, ports=(80, 8080), targets=("web-0", "web-1")),
        Case("k8s port range", both(delete_k8s("allow-http"), apply_k8s(knp("allow-range", {
            "podSelector": WEB, "ingress": [{"ports": [{"port": 8000, "endPort": 8100}]}]}))),
            lambda c, t, p: not shop_pod(t) or p == 8080, ports=(80, 8080), targets=("web-0", "web-1")),
        Case("k8s default deny egress (shop)", both(delete_k8s("allow-range", "default-deny"), apply_k8s(knp(
            "default-deny-egress", {"podSelector": {}, "policyTypes": ["Egress"]}))),
            lambda c, t, p: c.namespace != "shop", denied_on="egress"),
        Case("k8s egress to the in-lab internet", apply_k8s(knp("egress-internet", {
            "podSelector": {"matchLabels": {"role": "client"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"port": 80}]}]})),
            lambda c, t, p: c.namespace != "shop" or (cname(c) == "cli-a" and t.ip == INTERNET), denied_on="egress"),
        Case("k8s a pod created after the policy", both(delete_k8s("egress-internet", "default-deny-egress"),
                                                        apply_k8s(default_deny),
                                                        lambda mx: mx.kubectl("apply", "-f", "-", input=yaml.safe_dump(
                                                            _server("web-late", "shop", "k8s-w1"))),
                                                        lambda mx: mx.load_pods({"web-late"})),
             lambda c, t, p: not in_shop(t), targets=("web-late", "web-o")),
        Case("k8s deleting the policy restores traffic", delete_k8s("default-deny"), lambda c, t, p: True,
             targets=("web-0", "web-1", "web-late", "web-o", "internet")),
        Case("calico GlobalNetworkPolicy order: Deny (10) before Allow (20)", calicoctl_apply(
            calico("GlobalNetworkPolicy", "deny-clients", {"order": 10, "selector": "app == 'web'", "ingress": [
                {"action": "Deny", "source": {"selector": "role == 'client'"}}]}),
            calico("GlobalNetworkPolicy", "allow-web", {"order": 20, "selector": "app == 'web'",
                                                         "ingress": [{"action": "Allow"}]})),
            lambda c, t, p: t.ip == INTERNET or c.name not in ("cli-a", "cli-b")),
        Case("calico GlobalNetworkPolicy order: Allow (20) before Deny (30)", lambda mx: mx.calicoctl(
            "patch", "gnp", "deny-clients", "-p", '{"spec":{"order":30}}'), lambda c, t, p: True),
        Case("calico Deny before Allow within one policy", both(
            lambda mx: mx.calicoctl("delete", "gnp", "deny-clients", "allow-web"),
            calicoctl_apply(calico("GlobalNetworkPolicy", "mixed", {"selector": "app == 'web'", "ingress": [
                {"action": "Deny", "source": {"selector": "role == 'client'"}}, {"action": "Allow"}]}))),
            lambda c, t, p: t.ip == INTERNET or c.name not in ("cli-a", "cli-b")),
        Case("calico Pass skips the later policies to the profiles", both(
            lambda mx: mx.calicoctl("delete", "gnp", "mixed"),
            calicoctl_apply(
                calico("GlobalNetworkPolicy", "pass-clients", {"order": 1, "selector": "app == 'web'", "ingress": [
                    {"action": "Pass", "source": {"selector": "role == 'client'"}}]}),
                calico("GlobalNetworkPolicy", "deny-web", {"order": 100, "selector": "app == 'web'",
                                                            "ingress": [{"action": "Deny"}]}))),
            lambda c, t, p: t.ip == INTERNET or c.name in ("cli-a", "cli-b")),
        Case("calico serviceAccounts by name and by selector", both(
            lambda mx: mx.calicoctl("delete", "gnp", "pass-clients", "deny-web"),
            calicoctl_apply(calico("GlobalNetworkPolicy", "sa-names", {
                "selector": "app == 'web' && projectcalico.org/namespace == 'shop'",
                "ingress": [{"action": "Allow", "source": {"serviceAccounts": {"names": ["api"]}}}]}),
                calico("GlobalNetworkPolicy", "sa-selector", {
                    "selector": "app == 'web' && projectcalico.org/namespace == 'other'",
                    "ingress": [{"action": "Allow", "source": {"serviceAccounts": {"selector": "tier == 'backend'"}}}]}))),
            lambda c, t, p: t.ip == INTERNET or c.name == "cli-a"),
        Case("calico serviceAccountSelector picks the endpoints a policy applies to", both(
            lambda mx: mx.calicoctl("delete", "gnp", "sa-names", "sa-selector"),
            calicoctl_apply(calico("GlobalNetworkPolicy", "sa-egress", {
                "serviceAccountSelector": "tier == 'backend'", "types": ["Egress"],
                "egress": [{"action": "Deny", "protocol": "TCP", "destination": {"selector": "app == 'web'"}},
                           {"action": "Allow"}]}))),
            lambda c, t, p: t.ip == INTERNET or c.name != "cli-a", denied_on="egress"),
        Case("calico NetworkPolicy source nets", both(
            lambda mx: mx.calicoctl("delete", "gnp", "sa-egress"),
            calicoctl_apply(calico("NetworkPolicy", "from-cli-c", {"selector": "app == 'web'", "ingress": [
                {"action": "Allow", "source": {"nets": [f"{ip['cli-c']}/32"]}}]}, ns="shop"))),
            lambda c, t, p: not shop_pod(t) or c.name == "cli-c"),
        Case("calico Log then Allow", both(
            lambda mx: mx.calicoctl("delete", "networkpolicy", "from-cli-c", "-n", "shop"),
            calicoctl_apply(calico("GlobalNetworkPolicy", "log-web", {"selector": "app == 'web'", "ingress": [
                {"action": "Log"}, {"action": "Allow"}]}))),
            lambda c, t, p: True, after=lambda mx: None),
        Case("deleting the Calico policies restores traffic", lambda mx: mx.calicoctl("delete", "gnp", "log-web"),
             lambda c, t, p: True),
    ]


@pytest.fixture(scope="module", params=["etcdv3", "kubernetes"])
def matrix(tmp_path_factory, request):
    require_root()
    require_tool("etcd")
    require_tool("tcpdump")
    name = unique("pm")
    path = write_topology(tmp_path_factory.mktemp("pm"), name,
                          template_of(labstate.REPO / "topologies" / "walkthrough.yaml"))
    m = Matrix(name)
    caps = None
    with pcaps_kept_on_failure(request, name, "policy matrix"):
        try:
            labmod.up(path, name=name, progress=lambda msg: None, datastore=request.param)
            # the lab really is in the datastore asked for: calico-node says so in ClusterInformation
            info = yaml.safe_load(m.calicoctl("get", "clusterinformation", "default", "-o", "yaml"))
            assert ("kdd" in (info["spec"].get("clusterType") or "").split(",")) == (request.param == "kubernetes"), info
            m.kubectl("apply", "-f", "-", input="---\n".join(yaml.safe_dump(d) for d in WORKLOADS))
            m.load_pods(set(CLIENTS + SERVERS))
            m.pump_before = m.pump_stats()
            caps = CaptureGroup.for_lab(name, ["k8s-w0", "k8s-w1"], ifaces="cali*,tunl0").start()
            yield m, caps
        finally:
            if caps is not None and caps.result is None:
                caps.stop()
            m.pool.shutdown(wait=False)
            clean_lab(name)


def test_policy_matrix(matrix):
    m, caps = matrix
    counted = 0
    log_counts: list[int] = []
    for i, case in enumerate(cases(m)):
        t0 = time.monotonic()
        case.setup(m)
        before = m.counters()
        probes = m.check(case, CLIENTS, deadline=60 if i == 0 else 20)  # first: BGP routes still coming
        after = m.counters()
        m.check_drops(case, before, after, probes)
        counted += sum(1 for p in probes if not p.expect)
        print(f"{case.name}: {len(probes)} probes, {sum(not p.ok for p in probes)} denied, "
              f"{time.monotonic() - t0:.1f} s")
        if case.name == "calico Log then Allow":
            from testbed.capture.counters import delta

            log_counts = [r.packets for n in before for r in delta(before[n], after[n]) if r.target == "LOG"]
    assert counted > 60, counted  # denied verdicts proven by counters across the matrix
    assert log_counts and sum(log_counts) >= 4, "the Log rule counted no packet"
    caps.stop()
    pumps = {n: {k: v - ((m.pump_before.get(n) or {}).get(k) or 0) for k, v in (s or {}).items()}
             for n, s in m.pump_stats().items()}
    print(f"userspace tunnel counters over the matrix: {pumps}")
    captured = {p.iface for p in m.pods.values() if p.name != "web-late"}
    checked = prove_on_pcaps(m.probes, caps.file, captured)
    assert checked >= len([p for p in m.probes if p.client.iface in captured]), checked
