"""calicoctl as a user runs it (subprocess) in the Kubernetes datastore against the real API
server: ``DATASTORE_TYPE=kubernetes`` with ``KUBECONFIG``, or a ``CalicoAPIConfig`` file with
``spec.kubeconfig``. The issue's commands: ``get node -o json`` with ``.status.podCIDRs``,
``ipam show --show-blocks``, ``get workloadEndpoint``, and the Calico resources it writes are
the custom resources kubectl lists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.etcd

_SCRIPT = Path(sys.executable).parent / "calicoctl"


def _ctl(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess:
    cmd = [str(_SCRIPT)] if _SCRIPT.exists() else [
        sys.executable, "-c", "import sys; from testbed.calicoctl import main; sys.exit(main())"]
    full = {k: v for k, v in os.environ.items() if k not in ("ETCD_ENDPOINTS", "DATASTORE_TYPE", "KUBECONFIG")}
    full.update(env)
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, env=full, input=stdin)


@pytest.fixture(scope="module")
def cluster(apiserver):
    from datastore.kdd import install_crds

    kube = apiserver.client()
    install_crds(kube)
    for name, cidr in (("ctl-w0", "10.244.0.0/24"), ("ctl-w1", "10.244.1.0/24")):
        kube.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                     "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})
    return kube, {"DATASTORE_TYPE": "kubernetes", "KUBECONFIG": apiserver.kubeconfig}


def test_seed_commands_in_the_kubernetes_datastore(cluster, apiserver):
    from datastore.kdd import KubeClient
    from ipam import IPAM

    kube, env = cluster
    pool = ("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: default-ipv4-ippool\n"
            "spec:\n  cidr: 10.48.0.0/16\n  blockSize: 26\n  ipipMode: Always\n  natOutgoing: true\n")
    res = _ctl("apply", "-f", "-", env=env, stdin=pool)
    assert res.returncode == 0, res.stderr
    # what calicoctl wrote is the custom resource kubectl lists
    crs = kube.list("crd.projectcalico.org/v1", "ippools")["items"]
    assert [c["metadata"]["name"] for c in crs] == ["default-ipv4-ippool"]
    assert crs[0]["spec"]["cidr"] == "10.48.0.0/16"
    # the second seed's pipeline: .status.podCIDRs of every node
    res = _ctl("get", "node", "-o", "json", env=env)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["kind"] == "NodeList"
    assert sorted(c for n in doc["items"] for c in n["status"]["podCIDRs"]) == ["10.244.0.0/24", "10.244.1.0/24"]
    # a pod's endpoint, written as the CNI plugin does (annotations on the pod)
    kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"},
                 "spec": {"nodeName": "ctl-w0", "containers": [{"name": "c", "image": "nginx"}]}})
    kc = KubeClient(kube)
    ip = IPAM(kc).auto_assign(1, "k8s-pod-network.cid1", {"node": "ctl-w0", "pod": "web", "namespace": "default"},
                              "ctl-w0")[0]
    wep = next(w for w in kc.list("WorkloadEndpoint", "default") if w.spec.pod == "web")
    wep.spec.ip_networks, wep.spec.container_id = [f"{ip}/32"], "cid1"
    kc.create(wep)
    res = _ctl("get", "workloadEndpoint", env=env)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["WORKLOAD", "NODE", "NETWORKS", "INTERFACE"]
    assert lines[1].split()[:3] == ["web", "ctl-w0", f"{ip}/32"]
    res = _ctl("ipam", "show", "--show-blocks", env=env)
    assert res.returncode == 0, res.stderr
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in res.stdout.splitlines() if line.startswith("|")]
    assert rows[1][:4] == ["IP Pool", "10.48.0.0/16", "65536", "1 (0%)"], res.stdout
    assert rows[2][0] == "Block" and rows[2][3] == "1 (2%)", res.stdout
    # the block row is the IPAMBlock custom resource (named as Calico names it: 10-48-x-y-26)
    blocks = kube.list("crd.projectcalico.org/v1", "ipamblocks")["items"]
    assert [b["metadata"]["name"] for b in blocks] == [rows[2][1].replace(".", "-").replace("/", "-")]
    res = _ctl("ipam", "check", env=env)
    assert res.returncode == 0 and "found 0 problems" in res.stdout, res.stdout + res.stderr


def test_config_file_with_a_kubeconfig_and_clear_errors(cluster, apiserver, tmp_path):
    _, env = cluster
    cfg = tmp_path / "calicoctl.cfg"
    cfg.write_text("apiVersion: projectcalico.org/v3\nkind: CalicoAPIConfig\nmetadata: {}\n"
                   f"spec:\n  datastoreType: kubernetes\n  kubeconfig: {apiserver.kubeconfig}\n")
    # the config file wins over the environment's etcd
    res = _ctl("get", "ippools", "--config", str(cfg), env={"ETCD_ENDPOINTS": "http://127.0.0.1:9"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[:3] == ["NAME", "CIDR", "SELECTOR"]
    # a kubeconfig that does not exist is named; nothing is a traceback
    res = _ctl("get", "ippools", env={"DATASTORE_TYPE": "kubernetes", "KUBECONFIG": str(tmp_path / "nope")})
    assert res.returncode == 1 and "nope" in res.stderr and "Traceback" not in res.stderr
    # a Calico Node cannot be deleted here: it is the Kubernetes Node
    res = _ctl("delete", "node", "ctl-w1", env=env)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
