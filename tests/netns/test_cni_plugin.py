"""The real ``calico`` executable in a node netns with a real etcd: every verb, every version,
idempotency, concurrency and bad input. Pods are namespaces made by the test."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess

import pytest

from cni.spec import SUPPORTED_VERSIONS
from tests.netns import cni_support
from tests.netns.cni_support import CniNode

pytestmark = pytest.mark.netns
cni_node = cni_support.cni_node  # module-wide node netns + etcd (fixture)
node = cni_support.node  # that node, emptied, with the default pool (fixture)
node_api = cni_support.node_api  # an API server on that node's etcd (fixture)

VERSIONS = list(SUPPORTED_VERSIONS)  # v3.28.1's 0.1.0-1.0.0, and 1.1.0 (docs/cni.md)


def _sysctl(node: CniNode, key: str) -> str:
    return subprocess.run(["nsenter", f"--net={node.nspath}", "cat", f"/proc/sys/net/{key}"],
                          capture_output=True, text=True).stdout.strip()


def _allocations(node: CniNode) -> dict[str, str]:
    """ip -> handle of every allocation in etcd."""
    from ipam import IPAM

    with node.client() as c:
        return {str(ip): attr.handle_id for b in IPAM(c).blocks() for ip, attr in b.allocated()}


def _weps(node: CniNode) -> list:
    with node.client() as c:
        return c.list("WorkloadEndpoint")


def _pod_sysctl(pod: str, key: str) -> str:
    return subprocess.run(["ip", "netns", "exec", pod, "cat", f"/proc/sys/net/{key}"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_container_settings_allow_ip_forwarding(node, netns):
    pod = netns("cnip")
    conf = node.conf(container_settings={"allow_ip_forwarding": True})
    add = node.run("ADD", conf, cid="fwd01", netns=f"/run/netns/{pod}")
    assert add.rc == 0, add.stdout + add.stderr
    assert _pod_sysctl(pod, "ipv4/ip_forward") == "1"
    dele = node.run("DEL", conf, cid="fwd01", netns=f"/run/netns/{pod}")
    assert dele.rc == 0, dele.stdout + dele.stderr


@pytest.mark.parametrize("num_queues, want", [(None, 1), (0, 1), (2, 2)])
def test_veth_ends_have_the_netconf_queues(node, netns, num_queues, want):
    """Calico makes each end of a pod's veth with ``num_queues`` transmit and receive queues,
    one when it is not set (or 0 or less): ``ip -d link`` shows it on both ends."""
    pod = netns("cnip")
    conf = node.conf() if num_queues is None else node.conf(num_queues=num_queues)
    add = node.run("ADD", conf, cid="queues01", netns=f"/run/netns/{pod}")
    assert add.rc == 0, add.stdout + add.stderr
    try:
        host_if = add.json["interfaces"][0]["name"]
        (host,) = json.loads(node.ip("-d", "-j", "link", "show", host_if))
        (eth0,) = json.loads(node.ip("-d", "-j", "link", "show", "eth0", pod=pod))
        for end in (host, eth0):
            assert (end["num_tx_queues"], end["num_rx_queues"]) == (want, want), end["ifname"]
    finally:
        dele = node.run("DEL", conf, cid="queues01", netns=f"/run/netns/{pod}")
        assert dele.rc == 0, dele.stdout + dele.stderr


def test_num_queues_the_kernel_refuses_fails_add_and_leaves_nothing(node, netns):
    """More queues than the kernel allows (4096): ADD fails with the kernel's reason, as
    Calico's does at the veth, and the address it had taken is released."""
    pod = netns("cnip")
    add = node.run("ADD", node.conf(num_queues=5000), cid="queues02", netns=f"/run/netns/{pod}")
    assert add.rc != 0 and add.json["code"] == 102, add.stdout
    assert "Invalid number of transmit queues" in add.json["msg"], add.json["msg"]
    with node.client() as c:
        assert c.list("WorkloadEndpoint") == []
        assert [b for b in c.list("IPAMBlock") if any(a is not None for a in b.spec.allocations)] == []


@pytest.mark.parametrize("version", VERSIONS)
def test_add_check_del_every_version(node, netns, version):
    pod = netns("cnip")
    podpath = f"/run/netns/{pod}"
    conf = node.conf(version)
    add = node.run("ADD", conf, cid="c0ffee01", netns=podpath)
    assert add.rc == 0, add.stdout + add.stderr
    res = add.json
    # v3.28.1's result: the host veth only, the /32 without gateway, routes or interface index,
    # printed in the netconf's version and indented four spaces
    assert add.stdout.startswith('{\n    "cniVersion": '), add.stdout
    if version in ("0.1.0", "0.2.0"):
        assert list(res) == ["cniVersion", "ip4", "dns"] and list(res["ip4"]) == ["ip"]
        address = res["ip4"]["ip"]
    else:
        assert list(res) == ["cniVersion", "interfaces", "ips", "dns"] and res["dns"] == {}
        assert res["interfaces"] == [{"name": "calic440f455693"}]
        (ipc,) = res["ips"]
        assert list(ipc) == (["version", "address"] if version < "1.0.0" else ["address"])
        assert ipc.get("version", "4") == "4"
        address = ipc["address"]
    assert res["cniVersion"] == version and address.endswith("/32")
    ip = address.split("/")[0]
    # kernel: host side
    link = node.ip("-d", "link", "show", "calic440f455693")
    # no netconf mtu and no MTU file from Felix: the kernel's default, as Calico leaves it
    assert "ee:ee:ee:ee:ee:ee" in link and f"link-netns {pod}" in link and "mtu 1500" in link
    assert f"{ip} dev calic440f455693 scope link" in node.ip("route")
    assert _sysctl(node, "ipv4/conf/calic440f455693/proxy_arp") == "1"
    assert _sysctl(node, "ipv4/neigh/calic440f455693/proxy_delay") == "0"
    assert _sysctl(node, "ipv4/conf/calic440f455693/forwarding") == "1"
    assert _sysctl(node, "ipv4/conf/calic440f455693/route_localnet") == "1"
    # kernel: pod side
    assert f"inet {ip}/32 scope global eth0" in node.ip("addr", "show", "eth0", pod=pod)
    pod_link = node.ip("link", "show", "eth0", pod=pod)
    assert "mtu 1500" in pod_link
    routes = node.ip("route", pod=pod)
    assert "default via 169.254.1.1 dev eth0" in routes and "169.254.1.1 dev eth0 scope link" in routes
    assert _pod_sysctl(pod, "ipv4/ip_forward") == "0"
    # datastore
    (wep,) = _weps(node)
    assert wep.metadata.name == "k8s--w0-k8s-nginx-eth0" and wep.metadata.namespace == "default"
    assert (wep.spec.node, wep.spec.pod, wep.spec.container_id) == ("k8s-w0", "nginx", "c0ffee01")
    assert wep.spec.ip_networks == [f"{ip}/32"] and wep.spec.interface_name == "calic440f455693"
    assert wep.spec.mac and wep.spec.mac in pod_link and wep.spec.profiles == ["kns.default"]
    assert _allocations(node) == {ip: "k8s-pod-network.c0ffee01"}
    # CHECK against prevResult (spec >= 0.4.0)
    if version >= "0.4.0":
        chk = node.run("CHECK", {**conf, "prevResult": res}, cid="c0ffee01", netns=podpath)
        assert chk.rc == 0 and chk.stdout == "", chk.stdout + chk.stderr
    else:  # libcni's skel refuses CHECK below 0.4.0
        chk = node.run("CHECK", {**conf, "prevResult": res}, cid="c0ffee01", netns=podpath)
        assert chk.rc == 1 and chk.json["msg"] == "config version does not allow CHECK", chk.stdout
    # DEL removes everything, and is idempotent
    for _ in range(2):
        dele = node.run("DEL", {**conf, "prevResult": res}, cid="c0ffee01", netns=podpath)
        assert dele.rc == 0 and dele.stdout == "", dele.stdout + dele.stderr
        assert "calic440f455693" not in node.ip("link")
        assert _weps(node) == [] and _allocations(node) == {}


def test_del_succeeds_with_everything_already_gone(node, netns):
    pod = netns("cnip")
    add = node.run("ADD", node.conf(), cid="gone01", netns=f"/run/netns/{pod}")
    assert add.rc == 0, add.stdout
    subprocess.run(["ip", "netns", "delete", pod], check=True)
    dele = node.run("DEL", node.conf(), cid="gone01", netns=f"/run/netns/{pod}")
    assert dele.rc == 0, dele.stdout + dele.stderr
    assert _allocations(node) == {} and _weps(node) == []
    assert "calic440f455693" not in node.ip("link")
    # no netns at all, never-added container
    dele = node.run("DEL", node.conf(), cid="never", drop=("CNI_NETNS",))
    assert dele.rc == 0, dele.stdout


def test_del_of_other_container_keeps_wep_and_allocation(node, netns):
    pod, old = netns("cnip"), netns("cnip")
    add = node.run("ADD", node.conf(), cid="current", netns=f"/run/netns/{pod}")
    assert add.rc == 0, add.stdout
    ip = add.json["ips"][0]["address"].split("/")[0]
    dele = node.run("DEL", node.conf(), cid="stale", netns=f"/run/netns/{old}")
    assert dele.rc == 0, dele.stdout
    (wep,) = _weps(node)
    assert wep.spec.container_id == "current"
    assert _allocations(node) == {ip: "k8s-pod-network.current"}
    assert "calic440f455693" in node.ip("link")
    assert node.run("DEL", node.conf(), cid="current", netns=f"/run/netns/{pod}").rc == 0


def test_repeated_add_keeps_its_address(node, netns):
    pod = netns("cnip")
    first = node.run("ADD", node.conf(), cid="again", netns=f"/run/netns/{pod}")
    second = node.run("ADD", node.conf(), cid="again", netns=f"/run/netns/{pod}")
    assert first.rc == 0 and second.rc == 0, second.stdout
    assert first.json["ips"] == second.json["ips"]
    ip = first.json["ips"][0]["address"].split("/")[0]
    assert _allocations(node) == {ip: "k8s-pod-network.again"}
    assert f"inet {ip}/32" in node.ip("addr", "show", "eth0", pod=pod)
    assert node.run("DEL", node.conf(), cid="again", netns=f"/run/netns/{pod}").rc == 0


def test_check_reports_what_is_broken(node, netns):
    pod = netns("cnip")
    conf = node.conf("1.1.0")
    res = node.run("ADD", conf, cid="chk", netns=f"/run/netns/{pod}").json
    subprocess.run(["ip", "-n", pod, "route", "del", "default"], check=True)
    with node.client() as c:
        c.delete("WorkloadEndpoint", "k8s--w0-k8s-nginx-eth0", "default")
    chk = node.run("CHECK", {**conf, "prevResult": res}, cid="chk", netns=f"/run/netns/{pod}")
    assert chk.rc != 0
    err = chk.json
    assert err["code"] == 103 and "default via 169.254.1.1" in err["msg"] and "WorkloadEndpoint" in err["msg"]
    no_prev = node.run("CHECK", conf, cid="chk", netns=f"/run/netns/{pod}")
    assert no_prev.json["code"] == 7 and "prevResult" in no_prev.json["msg"]
    old = node.run("CHECK", {**node.conf("0.3.1"), "prevResult": res}, cid="chk", netns=f"/run/netns/{pod}")
    assert old.json["code"] == 1
    assert node.run("DEL", conf, cid="chk", netns=f"/run/netns/{pod}").rc == 0


def test_concurrent_adds_on_one_node(node, netns):
    pods = [netns("cnip") for _ in range(8)]

    def add(i: int):
        return node.run("ADD", node.conf(), cid=f"par{i:02d}", netns=f"/run/netns/{pods[i]}", pod=("default", f"p{i}"))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(add, range(8)))
    assert all(r.rc == 0 for r in results), [r.stdout for r in results if r.rc]
    ips = [r.json["ips"][0]["address"] for r in results]
    assert len(set(ips)) == 8
    allocs = _allocations(node)
    assert sorted(allocs.values()) == [f"k8s-pod-network.par{i:02d}" for i in range(8)]
    assert len([w for w in _weps(node)]) == 8
    links = node.ip("link")
    assert sum(1 for line in links.splitlines() if ": cali" in line) == 8

    def delete(i: int):
        return node.run("DEL", node.conf(), cid=f"par{i:02d}", netns=f"/run/netns/{pods[i]}", pod=("default", f"p{i}"))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert all(r.rc == 0 for r in pool.map(delete, range(8)))
    assert _allocations(node) == {} and _weps(node) == [] and ": cali" not in node.ip("link")


def test_bad_input_gives_spec_errors_and_leaves_nothing(node, netns):
    pod = netns("cnip")
    pp = f"/run/netns/{pod}"
    (node.tmp / "empty").write_text("")
    cases = {
        "invalid json": (node.run("ADD", b"{nope", cid="bad", netns=pp), 6, "not valid JSON"),
        "missing env": (node.run("ADD", node.conf(), cid="bad", netns=pp, drop=("CNI_NETNS",)), 4, "CNI_NETNS"),
        "unknown version": (node.run("ADD", node.conf("1.2.0"), cid="bad", netns=pp), 1, "incompatible CNI versions"),
        # calico-node has not written its nodename file (not started yet): Calico's error, code 999
        "no nodename file": (node.run("ADD", node.conf(nodename_file=str(node.tmp / "absent")), cid="bad", netns=pp),
                             999, f"stat {node.tmp / 'absent'}: no such file or directory: check that the calico/node "
                             "container is running and has mounted /var/lib/calico/"),
        "missing nodename": (node.run("ADD", node.conf(nodename="", nodename_file=str(node.tmp / "empty")),
                                      cid="bad", netns=pp), 7, "/var/lib/calico/"),
        "unreachable datastore": (node.run("ADD", node.conf(etcd_endpoints="http://127.0.0.1:1"), cid="bad", netns=pp),
                                  11, "unreachable"),
        "no such netns": (node.run("ADD", node.conf(), cid="bad", netns="/run/netns/does-not-exist-cni"), 102,
                          "does-not-exist-cni"),
    }
    for what, (run, code, text) in cases.items():
        assert run.rc != 0, what
        err = run.json
        assert err["code"] == code and text in err["msg"], (what, err)
        assert "Traceback" not in run.stdout, what
    assert "cali" not in node.ip("link") and _allocations(node) == {} and _weps(node) == []
    assert "eth0" not in node.ip("link", pod=pod)


def test_exhausted_pool_is_reported_and_nothing_half_done(node, netns):
    node.reset(pool_cidr="10.99.0.0/30", block_size=30)
    pods = [netns("cnip") for _ in range(5)]
    for i in range(4):
        r = node.run("ADD", node.conf(), cid=f"ex{i}", netns=f"/run/netns/{pods[i]}", pod=("default", f"e{i}"))
        assert r.rc == 0, r.stdout
    r = node.run("ADD", node.conf(), cid="ex4", netns=f"/run/netns/{pods[4]}", pod=("default", "e4"))
    err = r.json
    assert r.rc != 0 and err["code"] == 101, err
    assert err["msg"].startswith("failed to request IPv4 addresses: Assigned 0 out of 1 requested IPv4 "
                                 "addresses; No IPs available in pools: ["), err
    assert len(_allocations(node)) == 4 and len(_weps(node)) == 4
    assert "eth0" not in node.ip("link", pod=pods[4])


def test_status_version_and_gc(node, netns):
    conf = node.conf("1.1.0")
    st = node.run("STATUS", conf, drop=("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"))
    assert st.rc == 0 and st.stdout == "", st.stdout
    for version in VERSIONS:
        ver = node.run("VERSION", json.dumps({"cniVersion": version}))
        assert ver.json == {"cniVersion": version, "supportedVersions": VERSIONS}
        if version != "1.1.0":  # STATUS and GC exist from spec 1.1.0 on
            for verb in ("STATUS", "GC"):
                assert node.run(verb, node.conf(version)).json["code"] == 1
    bad = node.run("STATUS", node.conf("1.1.0", etcd_endpoints="http://127.0.0.1:1"))
    assert bad.json["code"] == 50 and "127.0.0.1:1" in bad.json["msg"]
    pods = [netns("cnip") for _ in range(3)]
    for i, p in enumerate(pods):
        assert node.run("ADD", conf, cid=f"gc{i}", netns=f"/run/netns/{p}", pod=("default", f"g{i}")).rc == 0
    gc = node.run("GC", {**conf, "cni.dev/valid-attachments": [{"containerID": "gc1", "ifname": "eth0"}]})
    assert gc.rc == 0, gc.stdout
    assert list(_allocations(node).values()) == ["k8s-pod-network.gc1"]
    assert [w.spec.container_id for w in _weps(node)] == ["gc1"]
    from datastore.names import veth_name

    links = node.ip("link")
    assert veth_name("default", "g1", "") in links
    assert veth_name("default", "g0", "") not in links and veth_name("default", "g2", "") not in links
    node.reset(pool_cidr="")
    nopool = node.run("STATUS", conf)
    assert nopool.json["code"] == 50 and "pool" in nopool.json["msg"]


def test_calico_ipam_executable(node):
    conf = node.conf("1.0.0")
    add = node.run("ADD", conf, cid="ipamonly", plugin="calico-ipam", netns="/run/netns/unused")
    assert add.rc == 0, add.stdout
    (ipc,) = add.json["ips"]
    ip = ipc["address"].split("/")[0]
    assert _allocations(node) == {ip: "k8s-pod-network.ipamonly"}
    chk = node.run("CHECK", {**conf, "prevResult": add.json}, cid="ipamonly", plugin="calico-ipam", netns="/x")
    assert chk.rc == 0, chk.stdout
    for _ in range(2):
        assert node.run("DEL", conf, cid="ipamonly", plugin="calico-ipam").rc == 0
    assert _allocations(node) == {}
    chk = node.run("CHECK", {**conf, "prevResult": add.json}, cid="ipamonly", plugin="calico-ipam", netns="/x")
    assert chk.json["code"] == 103 and "not allocated" in chk.json["msg"]


def test_other_ipam_types_are_delegated_through_cni_path(node, netns):
    pod = netns("cnip")
    data_dir = node.tmp / "host-local"
    conf = node.conf("1.0.0", ipam={"type": "host-local", "subnet": "10.77.0.0/24", "dataDir": str(data_dir)})
    add = node.run("ADD", conf, cid="hl01", netns=f"/run/netns/{pod}")
    assert add.rc == 0, add.stdout + add.stderr
    ip = add.json["ips"][0]["address"]
    assert ip.startswith("10.77.0.") and ip.endswith("/32")  # host-local's /24 narrowed to /32
    assert (data_dir / "k8s-pod-network" / ip.split("/")[0]).exists()
    assert f"inet {ip}" in node.ip("addr", "show", "eth0", pod=pod)
    assert node.run("DEL", conf, cid="hl01", netns=f"/run/netns/{pod}").rc == 0
    assert not (data_dir / "k8s-pod-network" / ip.split("/")[0]).exists()
    missing = node.run("ADD", node.conf(ipam={"type": "no-such-ipam"}), cid="hl02", netns=f"/run/netns/{pod}")
    assert missing.json["code"] == 7 and "no-such-ipam" in missing.json["msg"]


def test_failure_after_allocation_undoes_veth_and_allocation(node, netns, monkeypatch):
    """Fault injection: the WorkloadEndpoint write fails after IPAM and netlink succeeded."""
    from cni import plugin
    from datastore import errors
    from datastore.client import Client
    from kernel.netns import entered as in_netns

    def broken(real):
        def write(self, obj):
            if obj.KIND == "WorkloadEndpoint":
                raise errors.DatastoreUnavailable("etcd went away (injected by the test)")
            return real(self, obj)
        return write

    for verb in ("create", "apply"):  # ADD creates its WorkloadEndpoint (a repeated ADD applies it)
        monkeypatch.setattr(Client, verb, broken(getattr(Client, verb)))
    monkeypatch.setattr(plugin, "_clients", {})
    pod = netns("cnip")
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "undo01", "CNI_NETNS": f"/run/netns/{pod}",
           "CNI_IFNAME": "eth0", "CNI_PATH": str(node.bin_dir),
           "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=nginx"}
    with in_netns(node.nspath):  # the "node" is this thread's netns while the plugin runs in-process
        code, out, err = plugin.run("calico", env, json.dumps(node.conf()).encode())
    assert code == 1, out
    res = json.loads(out)
    assert res["code"] == 11 and "WorkloadEndpoint" in res["msg"] and "injected" in res["msg"]
    assert "cali" not in node.ip("link") and "eth0" not in node.ip("link", pod=pod)
    assert _allocations(node) == {} and _weps(node) == []


def test_pod_labels_ports_and_annotations_from_the_kubernetes_store(node, node_api, netns):
    """The pod and its namespace, read through the API server with the netconf's
    kubernetes.kubeconfig (calico-etcd.yaml's conflist), shape the WEP and IPAM."""
    from datastore.resources import IPPool, Metadata

    pods = [netns("cnip") for _ in range(3)]
    with node.client() as c:
        c.create(IPPool(metadata=Metadata(name="blue-pool"), spec=IPPool.Spec(cidr="10.60.0.0/16", block_size=26)))
    create = node_api.call
    kube = node_api.kube
    create(kube.create, {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "shop", "annotations": {"cni.projectcalico.org/ipv4pools": '["blue-pool"]'}}})
    create(kube.create, {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"serviceAccountName": "frontend", "containers": [
            {"name": "c", "image": "nginx", "ports": [{"name": "http", "containerPort": 80}]}]}}, "shop")
    create(kube.create, {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "fixed", "namespace": "shop", "annotations": {
            "cni.projectcalico.org/ipAddrs": '["192.168.77.7"]', "cni.projectcalico.org/hwAddr": "02:00:00:00:77:07"}},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]}}, "shop")
    create(kube.create, {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "bad", "namespace": "shop", "annotations": {"cni.projectcalico.org/ipv4pools": "nope"}},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]}}, "shop")
    conf = node.conf(kubernetes={"kubeconfig": node_api.kubeconfig})
    web = node.run("ADD", conf, cid="k8sweb", netns=f"/run/netns/{pods[0]}", pod=("shop", "web"))
    assert web.rc == 0, web.stdout + web.stderr
    assert web.json["ips"][0]["address"].startswith("10.60.")  # the namespace's pool annotation
    fixed = node.run("ADD", conf, cid="k8sfixed", netns=f"/run/netns/{pods[1]}", pod=("shop", "fixed"))
    assert fixed.rc == 0, fixed.stdout + fixed.stderr
    assert fixed.json["ips"][0]["address"] == "192.168.77.7/32"
    assert "02:00:00:00:77:07" in node.ip("link", "show", "eth0", pod=pods[1])
    bad = node.run("ADD", conf, cid="k8sbad", netns=f"/run/netns/{pods[2]}", pod=("shop", "bad"))
    assert bad.json["code"] == 7 and "ipv4pools" in bad.json["msg"]
    weps = {w.spec.pod: w for w in _weps(node)}
    assert set(weps) == {"web", "fixed"}
    w = weps["web"]
    assert w.metadata.labels == {"app": "web", "projectcalico.org/namespace": "shop",
                                 "projectcalico.org/orchestrator": "k8s",
                                 "projectcalico.org/serviceaccount": "frontend"}
    assert w.spec.profiles == ["kns.shop", "ksa.shop.frontend"] and w.spec.service_account_name == "frontend"
    assert [(p.name, p.protocol, p.port) for p in w.spec.ports] == [("http", "TCP", 80)]
    assert sorted(_allocations(node).values()) == ["k8s-pod-network.k8sfixed", "k8s-pod-network.k8sweb"]


def test_datastore_not_ready_refuses_add_and_status(node, netns):
    from datastore.resources import ClusterInformation, Metadata

    pod = netns("cnip")
    with node.client() as c:
        c.create(ClusterInformation(metadata=Metadata(name="default"),
                                    spec=ClusterInformation.Spec(datastore_ready=False)))
    add = node.run("ADD", node.conf(), cid="nr01", netns=f"/run/netns/{pod}")
    assert add.json["code"] == 11 and "not ready" in add.json["msg"]
    st = node.run("STATUS", node.conf("1.1.0"))
    assert st.json["code"] == 50 and "not ready" in st.json["msg"]
    assert _allocations(node) == {} and "cali" not in node.ip("link")
    with node.client() as c:
        ci = c.get("ClusterInformation", "default")
        ci.spec.datastore_ready = True
        c.update(ci)
    add = node.run("ADD", node.conf(), cid="nr01", netns=f"/run/netns/{pod}")
    assert add.rc == 0, add.stdout
    assert node.run("STATUS", node.conf("1.1.0")).rc == 0


def test_new_sandbox_of_the_same_pod_replaces_the_old_one(node, netns):
    """kubelet recreates a sandbox: ADD(new) comes before DEL(old); the old DEL must not hurt the new."""
    old, new = netns("cnip"), netns("cnip")
    a = node.run("ADD", node.conf(), cid="sandbox-old", netns=f"/run/netns/{old}")
    b = node.run("ADD", node.conf(), cid="sandbox-new", netns=f"/run/netns/{new}")
    assert a.rc == 0 and b.rc == 0, a.stdout + b.stdout
    ip_new = b.json["ips"][0]["address"].split("/")[0]
    link = node.ip("-d", "link", "show", "calic440f455693")
    assert f"link-netns {new}" in link  # the old sandbox's veth (same host name) was replaced
    assert "eth0" not in node.ip("link", pod=old)
    dele = node.run("DEL", node.conf(), cid="sandbox-old", netns=f"/run/netns/{old}")
    assert dele.rc == 0, dele.stdout
    (wep,) = _weps(node)
    assert wep.spec.container_id == "sandbox-new" and wep.spec.ip_networks == [f"{ip_new}/32"]
    assert _allocations(node) == {ip_new: "k8s-pod-network.sandbox-new"}
    assert f"{ip_new} dev calic440f455693" in node.ip("route")
    chk = node.run("CHECK", {**node.conf(), "prevResult": b.json}, cid="sandbox-new", netns=f"/run/netns/{new}")
    assert chk.rc == 0, chk.stdout
    assert node.run("DEL", node.conf(), cid="sandbox-new", netns=f"/run/netns/{new}").rc == 0


def test_del_does_not_delete_a_wep_rewritten_after_its_check(node, netns, monkeypatch):
    """Race injection: right after DEL(old) read the WEP and saw its own containerID, a new
    sandbox's ADD rewrites it. The CAS delete must fail and the re-read keep the new WEP."""
    from cni import plugin
    from datastore.client import Client
    from kernel.netns import entered as in_netns

    old, new = netns("cnip"), netns("cnip")
    a = node.run("ADD", node.conf(), cid="race-old", netns=f"/run/netns/{old}")
    assert a.rc == 0, a.stdout
    real_get = Client.get
    raced = []

    def get_then_race(self, kind, name, namespace=None):
        obj = real_get(self, kind, name, namespace)
        if kind == "WorkloadEndpoint" and not raced:
            raced.append(True)
            b = node.run("ADD", node.conf(), cid="race-new", netns=f"/run/netns/{new}")
            assert b.rc == 0, b.stdout
        return obj

    monkeypatch.setattr(Client, "get", get_then_race)
    monkeypatch.setattr(plugin, "_clients", {})
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "race-old", "CNI_NETNS": f"/run/netns/{old}",
           "CNI_IFNAME": "eth0", "CNI_PATH": str(node.bin_dir),
           "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=nginx"}
    with in_netns(node.nspath):
        code, out, err = plugin.run("calico", env, json.dumps(node.conf()).encode())
    assert code == 0, out + err
    assert raced
    (wep,) = _weps(node)
    assert wep.spec.container_id == "race-new"
    assert node.run("DEL", node.conf(), cid="race-new", netns=f"/run/netns/{new}").rc == 0
