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
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from kernel.netns import entered as in_netns  # noqa: E402

_spec = importlib.util.spec_from_file_location("cni_bench", os.path.join(REPO, "bench", "cni_bench.py"))
assert _spec is not None and _spec.loader is not None
cni_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cni_bench)

ETCD = cni_bench.ETCD
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
    conf = dict(netconf, cniVersion="1.0.0", name="k8s-pod-network", type="calico", nodename=NODE, mtu=0,
                log_level="info", log_file_path=log_path, ipam={"type": "calico-ipam"},
                ipam_lock_file=os.path.join(os.path.dirname(log_path), "ipam.lock"))
    env = {"PATH": f"{cni_bench.VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command,
           "CNI_CONTAINERID": cid, "CNI_NETNS": f"/run/netns/{pod}", "CNI_IFNAME": "eth0",
           "CNI_PATH": cni_bench.VENV_BIN, "CNI_ARGS": f"K8S_POD_NAMESPACE={NS};K8S_POD_NAME={cid}",
           "CALICO_CNI_SOCKET": sock}
    t0 = time.perf_counter()
    proc = subprocess.run([exe], input=json.dumps(conf).encode(), env=env, capture_output=True)
    wall = (time.perf_counter() - t0) * 1000
    if proc.returncode != 0:
        raise SystemExit(f"{command} {cid} failed: {proc.stdout.decode()} {proc.stderr.decode()[-800:]}")
    return wall


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
    made: list[str] = []
    results: dict[str, object] = {"benchmark": "cni_datastores", "pods": args.pods, "cpus": os.cpu_count(),
                                  "loadavg_1m_before": os.getloadavg()[0]}
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        made.append(ns)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        for p in (p for ps in pods.values() for p in ps):
            subprocess.run(["ip", "netns", "add", p], check=True)
            made.append(p)
        etcd = cni_bench.start_etcd(ns, os.path.join(tmp, "etcd"))
        api, kubeconfig = start_apiserver(ns, tmp)
        cids = {ds: [f"{ds[:4]}-{i:04d}" for i in range(args.pods)] for ds in stores}
        prepare(ns, kubeconfig, cids["kubernetes"])
        netconfs = {"etcdv3": {"datastore_type": "etcdv3", "etcd_endpoints": ETCD},
                    "kubernetes": {"datastore_type": "kubernetes", "kubernetes": {"kubeconfig": kubeconfig}}}
        sock = os.path.join(tmp, "cni.sock")
        server = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", os.path.join(cni_bench.VENV_BIN, "python"),
                                   "-m", "cni.server", "--socket", sock], stdout=subprocess.PIPE, text=True, cwd=REPO)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        exe = os.path.join(REPO, "cni", "bin", "calico")
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
        results["datastores"] = {ds: {verb: cni_bench.summarize(w, []) for verb, w in verbs.items()}
                                 for ds, verbs in walls.items()}
        add_p50 = results["datastores"]["kubernetes"]["ADD"]["p50_ms"]  # type: ignore[index]
        results["must_hold"] = {f"CNI ADD p50 <= {MUST_ADD_P50_MS:g} ms in the Kubernetes datastore":
                                add_p50 <= MUST_ADD_P50_MS}
        results["loadavg_1m_after"] = os.getloadavg()[0]
    finally:
        for proc in (server, api):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if etcd is not None:
            etcd.kill()
            etcd.wait()
        for name in reversed(made):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"CNI exec-to-exit wall time (cni/bin/calico -> warm CNI server), {args.pods} pods per datastore, "
          f"interleaved ({os.cpu_count()} CPUs, load {results['loadavg_1m_before']:.2f} -> "
          f"{results.get('loadavg_1m_after', 0):.2f})")
    print(f"{'datastore':<12} {'verb':<4} {'min ms':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for ds, verbs in results["datastores"].items():  # type: ignore[union-attr]
        for verb, s in verbs.items():
            print(f"{ds:<12} {verb:<4} {s['min_ms']:>8} {s['p50_ms']:>8} {s['p99_ms']:>8} {s['mean_ms']:>8}")
    for what, ok in results["must_hold"].items():  # type: ignore[union-attr]
        print(f"{what}: {'HOLDS' if ok else 'DOES NOT HOLD'}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
