"""The churn soak, reduced for the suite: 200 pod create/delete cycles across the walkthrough
lab's workers (two batches alive at a time), then nothing may be left: no IP allocation or
handle, WorkloadEndpoint, cali* link, route, iptables chain or rule, ipset member, pod netns
or process more than before; no IP ever shown by two Running pods. The full 1,000-cycle run
is a row of bench/faults.py (docs/faults.md)."""

from __future__ import annotations

import json
import time

import pytest

from testbed.lab import lifecycle as labmod
from testbed.lab import state as labstate
from testbed.lab.clean import clean_lab
from testbed.lab.footprint import LabCluster
from testbed.lab.soak import SEEN_PER_POD, soak
from testbed.poll import wait_for
from tests.lab.lab_helpers import leftovers, template_of, write_topology
from tests.support import require_root, require_tool, unique

pytestmark = pytest.mark.lab

CYCLES, BATCH = 200, 50


def test_pod_churn_leaves_nothing_behind(tmp_path):
    require_root()
    for tool in ("mnexec", "etcd", "ipset", "iptables-save"):
        require_tool(tool)
    name = unique("sk")
    topo = write_topology(tmp_path, name, template_of(labstate.REPO / "topologies" / "walkthrough.yaml"))
    try:
        st = labmod.up(topo, progress=lambda _m: None, ready_timeout=30, datastore="etcdv3")
        # the soak starts on a settled cluster: every calico-node healthy (BGP Established)
        wait_for(lambda: labmod.status(name)["health"]["state"], lambda h: h == "healthy", timeout=60,
                 what="`calicolab status` healthy before the soak")
        cluster = LabCluster(name)
        assert cluster.nodes() == ["k8s-w0", "k8s-w1"]
        # the cluster's own pods (CoreDNS) and kube-proxy's Service rules are in the baseline:
        # the soak starts once every pod is Running and Ready and the footprint holds still
        def settled() -> bool:
            items = json.loads(cluster._kubectl("get", "pods", "-A", "-o", "json"))["items"]
            return bool(items) and all(
                (p.get("status") or {}).get("phase") == "Running"
                and all(c.get("ready") for c in (p.get("status") or {}).get("containerStatuses") or [{}])
                for p in items)

        wait_for(settled, timeout=60, what="every pod of the lab Running and Ready before the soak")
        wait_for(lambda: (cluster.footprint(), time.sleep(1.0), cluster.footprint()),
                 lambda v: v[0] == v[2], timeout=30, what="the lab's footprint unchanged over 1 s")
        res = soak(cluster, CYCLES, BATCH, run="churn", timeout=90, settle=60, progress=print)
        print(res.row())
        assert res.error == ""
        # the check saw the pods while they ran (it is not blind), then saw them all go
        assert all(res.seen.get(k, 0) >= BATCH for k in SEEN_PER_POD), res.seen
        assert (res.cycles, res.batches) == (CYCLES, CYCLES // BATCH)
        assert res.duplicate_ips == {}, f"IPs shown by two Running pods: {res.duplicate_ips}"
        assert res.leaks == {}, f"left after {CYCLES} cycles: {res.leaks}"
        labmod.down(name, progress=lambda _m: None)
        assert leftovers(st) == []
    finally:
        clean_lab(name)
