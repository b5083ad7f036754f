"""A running lab as the soak sees it (:class:`testbed.lab.soak.Cluster`): pods through the
real kubectl, and the footprint read from the lab's datastore and its nodes' kernels.

Everything is read the way a user on the cluster would look: ``ip -o link``, ``ip route``,
``iptables-save``, ``ipset save`` and ``ip netns list`` inside each node (its network and
mount namespaces); IPAM blocks and handles and WorkloadEndpoints from the lab's etcd,
read from the control-plane node's netns; processes from the lab's cgroup.
"""

from __future__ import annotations

import json

from testbed.lab import faults, nodeshell
from testbed.lab import netns as nsmod
from testbed.lab import state as labstate
from testbed.lab.soak import Cluster, Footprint


def _node(state: dict, node: str, *cmd: str) -> str:
    res = nodeshell.run_in_node(state, node, list(cmd), capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise RuntimeError(f"{node}: {' '.join(cmd)} failed: {res.stderr.strip()}")
    return res.stdout


def node_items(node: str, links: str, routes: str, iptables: str, ipsets: str, netns: str) -> dict[str, set[str]]:
    """Parse one node's command outputs into footprint items (pure; each item names ``node``)."""
    out: dict[str, set[str]] = {k: set() for k in ("veths", "routes", "chains", "rules", "ipsets", "netns")}
    for line in links.splitlines():
        parts = line.split(": ")
        if len(parts) > 1:
            name = parts[1].split("@")[0]
            if name.startswith("cali"):
                out["veths"].add(f"{node} {name}")
    out["routes"] = {f"{node} {line.strip()}" for line in routes.splitlines() if line.strip()}
    chains, rules = faults.iptables_save_lines(iptables)
    out["chains"] = {f"{node} {c}" for c in chains}
    out["rules"] = {f"{node} {r}" for r in rules}
    for line in ipsets.splitlines():
        f = line.split()
        if len(f) >= 3 and f[0] == "add":
            out["ipsets"].add(f"{node} {f[1]} {f[2]}")
    out["netns"] = {f"{node} {line.split()[0]}" for line in netns.splitlines() if line.strip()}
    return out


def _datastore_items(endpoints: list[str]) -> tuple[set[str], set[str]]:
    from datastore import Client
    from ipam.store import HANDLE_PREFIX, Store

    client = Client(endpoints)
    store = Store(client.etcd)
    ips = {f"block {attr.handle_id} {ip}" for block, _ in store.list_blocks() for ip, attr in block.allocated()}
    kvs, _ = client.etcd.list(HANDLE_PREFIX)
    ips |= {f"handle {kv.key[len(HANDLE_PREFIX):]}" for kv in kvs}
    weps = {f"{w.spec.node}/{w.metadata.name}" for w in client.list("WorkloadEndpoint")}
    return ips, weps


class LabCluster(Cluster):
    """The soak's view of running lab ``lab``."""

    def __init__(self, lab: str, nodes: list[str] | None = None) -> None:
        state = labstate.read_state(lab)
        if state is None:
            raise labstate.LabError(f"no lab {lab!r} on this machine", exit_code=labstate.EXIT_INPUT)
        datastore = state.get("datastore", "etcdv3")
        if datastore != "etcdv3":
            raise labstate.LabError(f"the soak's leak check reads IPAM from etcd; lab {lab!r} uses the "
                                    f"{datastore!r} datastore, which it does not read yet",
                                    exit_code=labstate.EXIT_INPUT)
        self.lab, self.state = lab, state
        members = [n for n, h in state["hosts"].items() if h.get("role") in ("worker", "control-plane")]
        self._all = sorted(members)
        self._nodes = nodes or sorted(n for n in members if state["hosts"][n].get("role") == "worker") or self._all

    def nodes(self) -> list[str]:
        return list(self._nodes)

    def _kubectl(self, *args: str, input: str | None = None) -> str:  # noqa: A002
        res = faults.cli("kubectl", "--lab", self.lab, *args, input=input, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {res.stderr.strip()}")
        return res.stdout

    def apply(self, manifest: dict) -> None:
        """``kubectl apply -f -``; a ``List`` goes as a stream of its items (one YAML document
        each): the real kubectl validates a v1 List against /openapi/v2 in protobuf, which
        calicolab's API server does not serve (docs/apiserver.md)."""
        if manifest.get("kind") == "List":
            import yaml

            text = yaml.safe_dump_all(manifest.get("items") or [], sort_keys=False)
        else:
            text = json.dumps(manifest)
        self._kubectl("apply", "-f", "-", input=text)

    def pods(self, selector: str) -> list[dict]:
        return json.loads(self._kubectl("get", "pods", "-n", "default", "-l", selector, "-o", "json"))["items"]

    def delete(self, selector: str) -> None:
        # a pod the kubelet finished deleting between kubectl's list and its DELETE is what we
        # asked for: kubectl says NotFound for it, and the next try deletes whatever is left
        for attempt in range(3):
            try:
                self._kubectl("delete", "pods", "-n", "default", "-l", selector, "--wait=false")
                return
            except RuntimeError as exc:
                if "not found" not in str(exc).lower() or attempt == 2:
                    raise

    def footprint(self) -> Footprint:
        cat: dict[str, set[str]] = {k: set() for k in ("veths", "routes", "chains", "rules", "ipsets", "netns")}
        for node in self._all:
            items = node_items(node, _node(self.state, node, "ip", "-o", "link"),
                               _node(self.state, node, "ip", "route"),
                               _node(self.state, node, "iptables-save"),
                               _node(self.state, node, "ipset", "save"),
                               _node(self.state, node, "ip", "netns", "list"))
            for k, v in items.items():
                cat[k] |= v
        cp = self.state["hosts"][self.state["control_plane"]]["netns"]
        ips, weps = nsmod.run_in(cp, _datastore_items, self.state["etcd_endpoints"])
        return Footprint(ips=frozenset(ips), workloadendpoints=frozenset(weps),
                         processes=faults.lab_processes(self.state),
                         **{k: frozenset(v) for k, v in cat.items()})
