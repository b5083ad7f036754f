#!/usr/bin/env python3
"""CNI ADD/DEL wall time (exec to exit) in the Kubernetes datastore next to etcd, same run.

One node netns with its own etcd and calicolab's API server on that etcd (Calico's CRDs, a
Node, a Pod per sandbox), nothing in the root namespace. The real ``calico`` launcher
(cni/bin/calico) is exec'd once per pod and verb, as the kubelet does, forwarding to a warm
CNI server (what calico-node runs in the lab), alternating pod by pod between
``datastore_type: etcdv3`` (etcd_endpoints) and ``datastore_type: kubernetes``
(kubernetes.kubeconfig): IPAM on the custom resources, the pod's annotations patched through
pods/status. Issue 15's must-hold: ADD p50 <= 60 ms in the Kubernetes datastore.

Prints p50/p99 per datastore and verb with the load average, writes JSON (default
reports/bench/cni_datastores.json). Run as root under the shared lock::

    flock /work/wt/heavy.lock .venv/bin/python bench/cni_datastores.py [--pods 50]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import benchlib
from benchlib import REPO, in_netns

ETCD = "http://127.0.0.1:2379"
API = "https://127.0.0.1:16443"
NODE = "bench-node"
NS = "bench"
MUST_ADD_P50_MS = 60.0


def start_apiserver(ns: str, tmp: str) -> tuple[subprocess.Popen, str]:
    """calicolab's API server in the node netns on its etcd; returns (process, admin kubeconfig)."""
    from testbed.apiserver import pki

    p = pki.write_pki(os.path.join(tmp, "pki"), NODE, ["127.0.0.1"])
    kubeconfig = pki.write_kubeconfig(os.path.join(tmp, "admin.conf"), p, API)
    proc = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "testbed.apiserver", "--etcd-servers", ETCD,
         "--bind-address", "127.0.0.1", "--secure-port", API.rsplit(":", 1)[1], "--cert-dir", p.dir,
         "--advertise-address", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "apiserver.log"), "wb"), cwd=REPO)
    from kubeclient import Client, from_kubeconfig

    deadline = time.monotonic() + 30
    with in_netns(f"/run/netns/{ns}"):
        kube = Client(from_kubeconfig(kubeconfig))
        while True:
            try:
                if kube.request("GET", "/readyz", raw=True) == b"ok":
                    return proc, kubeconfig
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit(f"the API server did not start in the bench node (see {tmp}/apiserver.log)")
            time.sleep(0.1)


def prepare(ns: str, kubeconfig: str, cids: list[str]) -> None:
    """CRDs, the Node, namespace ``bench`` with a Pod per sandbox, and the same pool in both datastores."""
    from datastore import Client as EtcdDatastore
    from datastore.kdd import KubeClient, install_crds
    from datastore.resources import IPPool, Metadata
    from kubeclient import Client, from_kubeconfig

    with in_netns(f"/run/netns/{ns}"):
        kube = Client(from_kubeconfig(kubeconfig))
        install_crds(kube)
        kube.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        for cid in cids:
            kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": cid, "namespace": NS},
                         "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "nginx"}]}})
        for client, cidr in ((KubeClient(kube), "192.168.0.0/16"), (EtcdDatastore([ETCD]), "172.16.0.0/16")):
            client.create(IPPool(metadata=Metadata(name="default-ipv4-ippool"),
                                 spec=IPPool.Spec(cidr=cidr, block_size=26, ipip_mode="Always", nat_outgoing=True)))


def run_one(pod: str, cid: str, command: str, sock: str, log_path: str, exe: str, netconf: dict) -> float:
    """Exec the plugin once (caller's thread is in the node netns); wall ms."""
    return benchlib.exec_cni(exe, command, cid, pod, NS, cid, sock, benchlib.cni_netconf(log_path, NODE, **netconf))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=50, help="pods per datastore")
    ap.add_argument("--json", default=os.path.join(REPO, "reports", "bench", "cni_datastores.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    tag = uuid.uuid4().hex[:6]
    ns = f"cnid{tag}"
    stores = ("etcdv3", "kubernetes")
    pods = {ds: [f"cnidp{tag}{k}{i:04d}" for i in range(args.pods)] for k, ds in enumerate(stores)}
    tmp = tempfile.mkdtemp(prefix="cni-datastores-")
    etcd = api = server = None
    netns = benchlib.Namespaces()
    results: dict[str, object] = {"benchmark": "cni_datastores", "pods": args.pods, "cpus": os.cpu_count(),
                                  "loadavg_1m_before": os.getloadavg()[0]}
    try:
        netns.add(ns, lo_up=True)
        for p in (p for ps in pods.values() for p in ps):
            netns.add(p)
        etcd, _ = benchlib.start_etcd(os.path.join(tmp, "etcd"), 2379, netns=ns)
        api, kubeconfig = start_apiserver(ns, tmp)
        cids = {ds: [f"{ds[:4]}-{i:04d}" for i in range(args.pods)] for ds in stores}
        prepare(ns, kubeconfig, cids["kubernetes"])
        netconfs = {"etcdv3": {"datastore_type": "etcdv3", "etcd_endpoints": ETCD},
                    "kubernetes": {"datastore_type": "kubernetes", "kubernetes": {"kubeconfig": kubeconfig}}}
        sock = os.path.join(tmp, "cni.sock")
        server = benchlib.start_cni_server(ns, sock)
        exe = benchlib.CNI_LAUNCHER
        walls = {ds: {"ADD": [], "DEL": []} for ds in stores}
        with in_netns(f"/run/netns/{ns}"):
            for ds in stores:  # one warm-up ADD/DEL each (the server's first client of that datastore)
                for verb in ("ADD", "DEL"):
                    run_one(pods[ds][0], cids[ds][0], verb, sock, os.path.join(tmp, f"{ds}.log"), exe, netconfs[ds])
            for command in ("ADD", "DEL"):
                for i in range(args.pods):  # interleaved: a change of load hits both alike
                    for ds in stores:
                        walls[ds][command].append(run_one(pods[ds][i], cids[ds][i], command, sock,
                                                          os.path.join(tmp, f"{ds}.log"), exe, netconfs[ds]))
        results["datastores"] = {ds: {verb: benchlib.summarize(w, []) for verb, w in verbs.items()}
                                 for ds, verbs in walls.items()}
        add_p50 = results["datastores"]["kubernetes"]["ADD"]["p50_ms"]  # type: ignore[index]
        results["must_hold"] = {f"CNI ADD p50 <= {MUST_ADD_P50_MS:g} ms in the Kubernetes datastore":
                                add_p50 <= MUST_ADD_P50_MS}
        results["loadavg_1m_after"] = os.getloadavg()[0]
    finally:
        for proc in (server, api):
            benchlib.stop(proc)
        if etcd is not None:
            etcd.kill()
            etcd.wait()
        netns.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"CNI exec-to-exit wall time (cni/bin/calico -> warm CNI server), {args.pods} pods per datastore, "
          f"interleaved ({os.cpu_count()} CPUs, load {results['loadavg_1m_before']:.2f} -> "
          f"{results.get('loadavg_1m_after', 0):.2f})")
    benchlib.print_verb_table("datastore", results["datastores"])  # type: ignore[arg-type]
    for what, ok in results["must_hold"].items():  # type: ignore[union-attr]
        print(f"{what}: {'HOLDS' if ok else 'DOES NOT HOLD'}")
    benchlib.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
