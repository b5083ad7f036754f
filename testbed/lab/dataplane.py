"""Each node's dataplane against its pools' modes, read live for ``calicolab status``.

Reads the IP pools, Calico Nodes and IPAM blocks from the lab's datastore, etcd or (in the
Kubernetes datastore) the API server's custom resources and Nodes (from inside the
control-plane namespace, where both are reachable) and every node's main routing table and
links (a netlink handle bound to the node's namespace); :func:`testbed.modes.dataplane_problems`
then names, per node, the remote blocks its routes do not cover and the tunnel devices
it lacks.
"""

from __future__ import annotations

from typing import Any

from kernel.base import Kernel
from kernel.model import RTN_BLACKHOLE, RTN_PROHIBIT, RTN_UNREACHABLE
from testbed.modes import KernelRoute, Mode, NodeInfo, dataplane_problems


def read_calico(endpoints: list[str], kubeconfig: str | None = None,
                ) -> tuple[dict[str, NodeInfo], dict[str, Mode], dict[str, str]]:
    """(nodes, pools by CIDR, blocks CIDR -> affine node) from etcd at ``endpoints``, or with
    ``kubeconfig`` from the Kubernetes datastore through that API server (call inside a lab netns)."""
    from datastore import Client

    if kubeconfig is not None:
        c = Client.from_env({"DATASTORE_TYPE": "kubernetes", "KUBECONFIG": kubeconfig}, timeout=3.0)
    else:
        c = Client(endpoints, timeout=3.0)
    try:
        nodes = {n.metadata.name: NodeInfo.of_node(n.to_dict()) for n in c.list("Node")}
        pools = {p.spec.cidr: Mode.of_pool(p.to_dict().get("spec") or {}) for p in c.list("IPPool")
                 if not p.spec.disabled and ":" not in p.spec.cidr}
        blocks: dict[str, str] = {}
        for b in c.list("IPAMBlock"):
            aff = b.spec.affinity or ""
            if aff.startswith("host:") and not b.spec.deleted:
                blocks[b.spec.cidr] = aff[len("host:"):]
    finally:
        close = getattr(c, "close", None)
        if close is not None:
            close()
    return nodes, pools, blocks


def read_node(netns: str) -> tuple[list[KernelRoute], list[str]]:
    """A node's main-table IPv4 routes and link names (netlink bound to its netns)."""
    from kernel.netlink import Netlink

    with Netlink(netns) as k:
        return read_kernel(k)


def read_kernel(k: Kernel) -> tuple[list[KernelRoute], list[str]]:
    """The main-table IPv4 routes and link names of kernel handle ``k``."""
    names = {ln.index: ln.name for ln in k.links()}
    routes = []
    for r in k.routes():
        hop = r.hops()[0] if r.hops() else None
        routes.append(KernelRoute(r.dst, hop.gateway if hop else None,
                                  names.get(hop.oif) if hop and hop.oif else None,
                                  r.type in (RTN_BLACKHOLE, RTN_UNREACHABLE, RTN_PROHIBIT)))
    return routes, list(names.values())


def check(state: dict[str, Any], node_names: list[str]) -> dict[str, list[str]]:
    """Per node of ``node_names``, what its dataplane lacks (an empty list: nothing).
    Raises OSError (or a datastore error) when the datastore or a namespace cannot be read."""
    from testbed.lab import kubeadm
    from testbed.lab import netns as nsmod

    cp = state["hosts"][state["control_plane"]]["netns"]
    kubeconfig = str(kubeadm.admin_conf(state)) if state.get("datastore") == "kubernetes" else None
    nodes, pools, blocks = nsmod.run_in(cp, read_calico, list(state["etcd_endpoints"]), kubeconfig)
    out: dict[str, list[str]] = {}
    for name in node_names:
        routes, links = read_node(state["hosts"][name]["netns"])
        out[name] = dataplane_problems(name, nodes, pools, blocks, routes, links)
    return out
