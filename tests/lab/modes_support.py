"""Helpers for the network-mode labs (issue 14): one lab per mode family, driven through the
walkthrough (:class:`testbed.walkthrough.Walkthrough`) and the commands a user types."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from testbed.poll import wait_for
from testbed.walkthrough import FOUR_FLOWS, Flow, Pod, Walkthrough
from tests.lab.lab_helpers import walkthrough_lab

REPO = Path(__file__).resolve().parents[2]
POOL = "default-ipv4-ippool"
#: the mode labs run the etcd datastore, as before the Kubernetes one became the default: they
#: are installed by manifest (calico-etcd.yaml's shape) and switch modes with calicoctl on etcd
DATASTORE = "etcdv3"


@contextmanager
def mode_lab(request, prefix: str, topology: str) -> Iterator[Walkthrough]:
    """A running lab of ``topologies/<topology>.yaml`` (etcd datastore) with Calico installed by manifest and the
    walkthrough's workloads Running; torn down (pcaps kept only on failure) afterwards."""
    with walkthrough_lab(request, prefix, what="mode lab", topology=REPO / "topologies" / f"{topology}.yaml",
                         datastore=DATASTORE) as w:
        yield w


def pod_ips(w: Walkthrough) -> dict[str, str]:
    """Every pod's IP as ``kubectl get pods`` shows it."""
    items = json.loads(w.kubectl("get", "pods", "-o", "json")).get("items", [])
    return {p["metadata"]["name"]: p.get("status", {}).get("podIP", "") for p in items}


def four_flows(w: Walkthrough, run: str, extra_nodes: tuple[str, ...] = ()) -> list:
    """The walkthrough's four flows under a fresh capture (``run``), each checked on its pcaps
    as the current mode puts it on the wire; fails naming the flows that did not hold."""
    from testbed.capture.group import CaptureGroup
    from testbed.walkthrough import CAPTURE_IFACES

    w.read_mode()
    w.captures = CaptureGroup.for_lab(w.lab, ["k8s-w0", "k8s-w1", "internet", *extra_nodes],
                                      run=f"{w.run_name}-{run}", ifaces=CAPTURE_IFACES)
    w.captures.start()
    w.run_flows(only=FOUR_FLOWS)
    w.check_flows()
    bad = [(f.name, f.result, f.error) for f in w.flows if not f.ok]
    assert len(w.flows) == 4 and not bad, f"{w.mode.name}: flows that failed: {bad}"
    return w.flows


def switch(w: Walkthrough, how: str, ipip: str, vxlan: str) -> float:
    """Change the pool's mode on the running lab with ``calicoctl patch`` or ``calicoctl apply``
    (as a user would); returns the seconds until a cross-node curl passes again."""
    if how == "patch":
        out = w.calicoctl("patch", "ippool", POOL, "-p", json.dumps({"spec": {"ipipMode": ipip, "vxlanMode": vxlan}}))
        assert "Successfully patched 1 'IPPool' resource" in out, out
    else:
        pool = json.loads(w.calicoctl("get", "ippool", POOL, "-o", "json"))
        pool["spec"].update(ipipMode=ipip, vxlanMode=vxlan)
        for k in ("resourceVersion", "uid", "creationTimestamp"):
            pool["metadata"].pop(k, None)
        out = w.cli("calicoctl", "apply", "-f", "-", input=json.dumps(pool)).stdout
        assert "Successfully applied 1 'IPPool' resource(s)" in out, out
    t0 = time.monotonic()
    a, b = w.pods["k8s-w0"], w.pods["k8s-w1"]
    w.curl(a, f"http://{b.ip}", f"HTTP 200 from {b.name} after the switch to ipipMode {ipip} vxlanMode {vxlan}",
           timeout=30)
    return time.monotonic() - t0


def tunnel_addresses_settle(w: Walkthrough, timeout: float = 20) -> None:
    """Every node holds exactly the tunnel address its mode needs (allocated) and not the
    other (released): spec.bgp.ipv4IPIPTunnelAddr for IPIP, spec.ipv4VXLANTunnelAddr for VXLAN."""
    def settled() -> tuple[str, dict[str, dict]]:
        mode = w.read_mode()  # the pool as it is now
        return mode.encap or "", w.nodes

    def ok(got: tuple[str, dict[str, dict]]) -> bool:
        encap, nodes = got
        return all(bool(v["ipip_tunnel"]) == (encap == "ipip") and bool(v["vxlan_tunnel"]) == (encap == "vxlan")
                   for v in nodes.values())

    wait_for(settled, ok, timeout=timeout, what="every node holding exactly the tunnel address of the pool's mode")


def status(w: Walkthrough) -> tuple[int, dict]:
    """``calicolab status --json``: (exit code, document)."""
    res = w.cli("status", "--json", check=False)
    return res.returncode, json.loads(res.stdout) if res.stdout.strip() else {}


def wait_healthy(w: Walkthrough, timeout: float = 30) -> dict:
    """``calicolab status`` healthy (exit 0) with every node's dataplane "ok"."""
    code, info = wait_for(lambda: status(w), lambda r: r[0] == 0 and r[1].get("health", {}).get("state") == "healthy"
                          and all(n.get("dataplane") == "ok" for n in r[1].get("nodes", [])),
                          timeout=timeout, what="calicolab status healthy with every dataplane ok")
    return info


def add_pod(w: Walkthrough, name: str, node: str) -> Pod:
    """An nginx pod pinned to ``node`` (kubectl apply), Running with an IP."""
    w.kubectl("apply", "-f", "-", input=f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {name}}}}}\n"
              f"spec: {{nodeName: {node}, containers: [{{name: nginx, image: nginx}}]}}\n")
    pod = wait_for(lambda: json.loads(w.kubectl("get", "pod", name, "-o", "json")),
                   lambda p: p.get("status", {}).get("phase") == "Running" and p["status"].get("podIP"),
                   timeout=60, what=f"pod {name} Running on {node}")
    weps = w._items(w.calicoctl("get", "workloadendpoints", "-o", "json"))
    iface = next(x["spec"]["interfaceName"] for x in weps if x["spec"].get("pod") == name)
    w.pods[name] = Pod(name, node, pod["status"]["podIP"], iface)
    return w.pods[name]


def check_crosssubnet_flows(w: Walkthrough, run: str, cross_node: str) -> None:
    """CrossSubnet on a topology whose k8s-m shares lan0 with k8s-w0 and whose k8s-w1 is behind
    the router: the walkthrough's four flows pass on their pcaps (k8s-m captured too), the
    cross-node one (k8s-w0 -> k8s-w1, across the router) encapsulated as ``cross_node`` says
    (its check's start), and pod k8s-w0 -> a new pod on k8s-m, inside lan0, plainly routed."""
    from testbed.capture.group import CaptureGroup
    from testbed.walkthrough import CAPTURE_IFACES

    m = add_pod(w, "k8s-m", "k8s-m")
    flows = four_flows(w, run, extra_nodes=("k8s-m",))
    checks = next(f for f in flows if f.name == "cross-node").checks
    assert any(c.startswith(cross_node) for c in checks), checks
    # same subnet: pod k8s-w0 -> pod k8s-m is routed as it is, without encapsulation
    a = w.pods["k8s-w0"]
    w.captures = CaptureGroup.for_lab(w.lab, ["k8s-w0", "k8s-m"], run=f"{w.run_name}-same-subnet",
                                      ifaces=CAPTURE_IFACES)
    with w.captures:
        assert w.curl(a, f"http://{m.ip}", "HTTP 200 from pod k8s-m") == "200"
    f = Flow("same-subnet", f"pod {a.name} -> pod {m.name}", "curl")
    w.check_wire(f, "k8s-w0", "k8s-m", a, m, ("k8s-w0", "k8s-m"))
    assert f.checks[0].startswith("plainly routed"), f.checks


def check_mtu(w: Walkthrough, device: str, tunnel_mtu: int, pod_mtu: int, fits: int) -> dict:
    """``mtu_probe`` from pod k8s-w0 to pod k8s-w1: the path goes over ``device`` (``tunnel_mtu``),
    the pod's eth0 is ``pod_mtu``, a DF ping of ``fits`` payload bytes passes and one byte more
    fails, reporting mtu ``pod_mtu``. Returns the probe's result."""
    res = w.mtu_probe()
    assert (res["device"], res["tunnel_mtu"], res["pod_mtu"], res["fits"]) == (device, tunnel_mtu, pod_mtu, fits), res
    assert res["too_big_rc"] != 0, res
    assert f"mtu={pod_mtu}" in res["too_big_output"] or f"mtu = {pod_mtu}" in res["too_big_output"], res
    return res
