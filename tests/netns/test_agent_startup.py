"""calico-node start-up against a real etcd: Node, default pool race, tunnel address, ClusterInformation,
FelixConfiguration default."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

import pytest

from agent.health import HealthServer
from agent.startup import StartupError, run_startup

pytestmark = pytest.mark.netns

ENV = {"CALICO_IPV4POOL_CIDR": "192.168.0.0/16", "CALICO_IPV4POOL_IPIP": "Always", "IP": "autodetect"}


def ifaces(ip: str):
    return [("lo", ["127.0.0.1/8"]), ("eth0", [ip])]


def test_startup_registers_node_and_allocates_first_ip_of_first_block(ds_client, tmp_path):
    res = run_startup(ds_client, {**ENV, "NODE_NAME": "k8s-w0"}, var_lib=str(tmp_path), interfaces=ifaces("172.30.0.11/24"))
    assert res.pool_created and res.ipv4_address == "172.30.0.11/24"
    node = ds_client.get("Node", "k8s-w0")
    assert node.spec.bgp.ipv4_address == "172.30.0.11/24"
    assert node.spec.bgp.ipv4_ipip_tunnel_addr == res.tunnel_address
    affs = ds_client.list("BlockAffinity")
    assert len(affs) == 1 and affs[0].spec.node == "k8s-w0"
    assert res.tunnel_address == affs[0].spec.cidr.split("/")[0]  # first IP of the node's first block
    assert (tmp_path / "nodename").read_text() == "k8s-w0"
    ci = ds_client.get("ClusterInformation", "default")
    assert ci.spec.datastore_ready is True and ci.spec.cluster_guid
    fc = ds_client.get("FelixConfiguration", "default")  # ensureDefaultConfig's
    assert (fc.spec.reporting_interval, fc.spec.log_severity_screen) == ("0s", "Info")

    # A restart changes nothing (same tunnel address, no new pool), and a moved address is updated.
    again = run_startup(ds_client, {**ENV, "NODE_NAME": "k8s-w0"}, var_lib=str(tmp_path),
                        interfaces=ifaces("172.30.0.99/24"))
    assert again.tunnel_address == res.tunnel_address and not again.pool_created
    assert ds_client.get("Node", "k8s-w0").spec.bgp.ipv4_address == "172.30.0.99/24"
    assert len(ds_client.list("IPPool")) == 1


def test_a_users_felix_configuration_default_keeps_its_values(ds_client, tmp_path):
    """ensureDefaultConfig on an existing FelixConfiguration default: only an unset
    reportingInterval / logSeverityScreen is filled; what the user set stays, and an object
    with both set is not written at all."""
    from datastore.resources import FelixConfiguration

    ds_client.create(FelixConfiguration.from_dict({
        "apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration", "metadata": {"name": "default"},
        "spec": {"logSeverityScreen": "Debug", "healthPort": 9099}}))
    run_startup(ds_client, {**ENV, "NODE_NAME": "k8s-w0"}, var_lib=str(tmp_path), interfaces=ifaces("172.30.0.11/24"))
    fc = ds_client.get("FelixConfiguration", "default")
    assert (fc.spec.log_severity_screen, fc.spec.health_port, fc.spec.reporting_interval) == ("Debug", 9099, "0s")
    fc.spec.reporting_interval = "30s"
    rv = ds_client.update(fc).metadata.resource_version
    run_startup(ds_client, {**ENV, "NODE_NAME": "k8s-w0"}, var_lib=str(tmp_path), interfaces=ifaces("172.30.0.11/24"))
    fc = ds_client.get("FelixConfiguration", "default")
    assert (fc.spec.log_severity_screen, fc.spec.reporting_interval, fc.metadata.resource_version) == (
        "Debug", "30s", rv)


def test_exactly_one_node_creates_the_default_pool(ds_client, etcd_endpoints, tmp_path):
    from datastore import Client

    results: dict[str, object] = {}

    def start(i: int) -> None:
        client = Client(etcd_endpoints)
        try:
            results[f"n{i}"] = run_startup(client, {**ENV, "NODE_NAME": f"n{i}"}, var_lib=str(tmp_path / f"n{i}"),
                                           interfaces=ifaces(f"172.30.0.{10 + i}/24"))
        except Exception as exc:  # noqa: BLE001
            results[f"n{i}"] = exc

    threads = [threading.Thread(target=start, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    errs = {k: v for k, v in results.items() if isinstance(v, Exception)}
    assert not errs, errs
    assert sum(1 for r in results.values() if r.pool_created) == 1
    assert len(ds_client.list("IPPool")) == 1
    tunnels = [r.tunnel_address for r in results.values()]
    assert len(set(tunnels)) == 4


def test_bad_environment_fails_clearly(ds_client, tmp_path):
    with pytest.raises(StartupError, match="CALICO_IPV4POOL_IPIP"):
        run_startup(ds_client, {**ENV, "NODE_NAME": "n1", "CALICO_IPV4POOL_IPIP": "maybe"}, var_lib=str(tmp_path),
                    interfaces=ifaces("172.30.0.11/24"))
    with pytest.raises(StartupError, match="node name"):
        run_startup(ds_client, {**ENV, "NODE_NAME": "Bad_Name"}, var_lib=str(tmp_path),
                    interfaces=ifaces("172.30.0.11/24"))
    assert ds_client.list("IPPool") == [] and ds_client.list("Node") == []  # nothing half-done


def test_health_server_paths():
    state = {"ready": False}
    srv = HealthServer(lambda: True, lambda: state["ready"], lambda: {"ready": state["ready"], "datapath": "userspace"},
                       port=0)
    srv.start()
    base = f"http://127.0.0.1:{srv.port}"
    try:
        def get(path):
            try:
                with urllib.request.urlopen(base + path, timeout=2) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()
        assert get("/liveness")[0] == 200
        assert get("/readiness")[0] == 503
        state["ready"] = True
        assert get("/readiness")[0] == 200
        code, body = get("/status")
        assert code == 200 and '"datapath": "userspace"' in body
        assert get("/nope")[0] == 404
    finally:
        srv.stop()


def test_tunnel_address_follows_the_pools(ds_client, tmp_path):
    from agent.startup import ensure_tunnel_address

    res = run_startup(ds_client, {**ENV, "NODE_NAME": "w9"}, var_lib=str(tmp_path), interfaces=ifaces("172.30.0.19/24"))
    assert res.tunnel_address
    pool = ds_client.get("IPPool", "default-ipv4-ippool")
    pool.spec.ipip_mode = "Never"
    ds_client.update(pool)
    assert ensure_tunnel_address(ds_client, "w9") is None
    assert ds_client.get("Node", "w9").spec.bgp.ipv4_ipip_tunnel_addr is None
    pool = ds_client.get("IPPool", "default-ipv4-ippool")
    pool.spec.ipip_mode = "Always"
    ds_client.update(pool)
    again = ensure_tunnel_address(ds_client, "w9")
    assert again and ds_client.get("Node", "w9").spec.bgp.ipv4_ipip_tunnel_addr == again


def test_cni_config_is_written_before_start_up(netns, tmp_path):
    """calico-node writes the CNI config first, as Calico's install-cni init container runs
    before calico-node, so the kubelet turns the node Ready while start-up goes on: with the
    datastore unreachable the conflist is there and start-up is still retrying, without the
    nodename file the CNI plugin waits for (cni.plugin.calico_node_started)."""
    import json
    import os
    import subprocess

    from testbed.poll import wait_for
    from tests.netns.felix_support import PY, REPO
    from tests.support import terminate

    ns = netns("cnf")
    var_lib, net_d, log_path = tmp_path / "var-lib-calico", tmp_path / "net.d", tmp_path / "calico-node.log"
    env = {**os.environ, "NODENAME": "k8s-w7", "DATASTORE_TYPE": "etcdv3", "ETCD_ENDPOINTS": "http://127.0.0.1:1",
           "IP": "10.77.0.7/24", "CALICO_VAR_LIB_DIR": str(var_lib), "CALICO_VAR_RUN_DIR": str(tmp_path / "run"),
           "CNI_NET_DIR": str(net_d), "CNI_BIN_DIR": str(tmp_path / "bin"), "CNI_MTU": "1440"}
    env.pop("KUBECONFIG", None)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", PY, "-m", "agent.main"], env=env, cwd=REPO,
                                stdout=log, stderr=log)
    try:
        wait_for(lambda: log_path.read_text(), lambda text: "datastore not reachable" in text, timeout=30,
                 what="calico-node retrying its start-up")
        conf = json.loads((net_d / "10-calico.conflist").read_text())
        assert conf["plugins"][0]["nodename"] == "k8s-w7" and conf["plugins"][0]["mtu"] == 1440
        assert os.path.islink(tmp_path / "bin" / "calico")
        assert not (var_lib / "nodename").exists() and proc.poll() is None
        text = log_path.read_text()
        assert text.index("install-cni: wrote") < text.index("datastore not reachable"), text
    finally:
        terminate(proc)
    assert proc.returncode == 0, log_path.read_text()[-2000:]


def test_health_server_answers_on_its_own_threads_past_silent_clients(monkeypatch):
    """Requests run on the server's few long-lived threads (none started per request), and
    clients that connect and say nothing do not stop the others' answers."""
    import socket as socketmod
    import threading

    from agent.health import WORKERS

    srv = HealthServer(lambda: True, lambda: True, lambda: {}, port=0)
    srv.start()
    silent = []
    started = []
    real_start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: (started.append(self.name), real_start(self))[1])
    try:
        for _ in range(WORKERS - 1):
            s = socketmod.create_connection(("127.0.0.1", srv.port), timeout=2)
            silent.append(s)
        for _ in range(20):
            with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/readiness", timeout=2) as r:
                assert r.status == 200
        assert started == [], f"threads started for requests: {started}"
    finally:
        for s in silent:
            s.close()
        srv.stop()
