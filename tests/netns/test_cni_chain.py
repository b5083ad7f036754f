"""``calico`` chained with Debian's reference plugins (tuning, portmap) through a small
libcni-like runner: prevResult flows down the chain, CHECK and DEL get the cached
result, and the port mapping carries a real HTTP request into the pod."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from testbed.poll import wait_for
from tests.netns import cni_support
from tests.netns.cni_support import CniNode, PluginRun

pytestmark = pytest.mark.netns
cni_node = cni_support.cni_node  # fixture
node = cni_support.node  # fixture


class ChainRunner:
    """What libcni does with a conflist: per-plugin config, capabilities, prevResult, reverse DEL."""

    def __init__(self, node: CniNode, conflist: dict[str, Any], runtime_config: dict[str, Any]):
        self.node, self.conflist, self.runtime_config = node, conflist, runtime_config
        self.cached: dict[str, Any] | None = None

    def _conf(self, plugin: dict[str, Any], prev: dict[str, Any] | None) -> dict[str, Any]:
        conf = dict(plugin, name=self.conflist["name"], cniVersion=self.conflist["cniVersion"])
        caps = {k for k, on in (plugin.get("capabilities") or {}).items() if on}
        rc = {k: v for k, v in self.runtime_config.items() if k in caps}
        if rc:
            conf["runtimeConfig"] = rc
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    def _exec(self, command: str, plugin: dict[str, Any], prev: dict[str, Any] | None, **kw: Any) -> PluginRun:
        run = self.node.run(command, self._conf(plugin, prev), plugin=plugin["type"], **kw)
        assert run.rc == 0, f"{plugin['type']} {command} failed: {run.stdout} {run.stderr[-1500:]}"
        return run

    def add(self, **kw: Any) -> dict[str, Any]:
        prev = None
        for plugin in self.conflist["plugins"]:
            prev = self._exec("ADD", plugin, prev, **kw).json
        self.cached = prev
        return prev or {}

    def check(self, skip: tuple[str, ...] = (), **kw: Any) -> None:
        for plugin in self.conflist["plugins"]:
            if plugin["type"] not in skip:
                self._exec("CHECK", plugin, self.cached, **kw)

    def delete(self, **kw: Any) -> None:
        for plugin in reversed(self.conflist["plugins"]):
            self._exec("DEL", plugin, self.cached, **kw)


def _node_sh(node: CniNode, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net={node.nspath}", *args], capture_output=True, text=True, timeout=20)


def test_chain_with_tuning_and_portmap_serves_http(node, netns):
    pod = netns("cnip")
    podpath = f"/run/netns/{pod}"
    c = node.conf()
    calico = {k: v for k, v in c.items() if k not in ("cniVersion", "name")}
    conflist = {
        "cniVersion": "1.0.0", "name": "k8s-pod-network",
        "plugins": [calico,
                    {"type": "tuning", "sysctl": {"net.core.somaxconn": "777"}},
                    {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}}],
    }
    runner = ChainRunner(node, conflist, {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]})
    # the node needs an address of its own to receive on (a veth pair inside the node netns)
    outer, inner = cni_support.unique("cnio"), cni_support.unique("cnii")
    subprocess.run(["ip", "-n", node.ns, "link", "add", outer, "type", "veth", "peer", "name", inner], check=True)
    server = None
    try:
        subprocess.run(["ip", "-n", node.ns, "addr", "add", "10.250.7.1/24", "dev", outer], check=True)
        subprocess.run(["ip", "-n", node.ns, "link", "set", outer, "up"], check=True)
        subprocess.run(["ip", "-n", node.ns, "link", "set", inner, "up"], check=True)
        # proxy ARP answers for 169.254.1.1 only if the node has a route to it (as real nodes do
        # through their default route); this one stays inside the node netns
        subprocess.run(["ip", "-n", node.ns, "route", "add", "169.254.1.1/32", "dev", outer], check=True)
        kw = {"cid": "chain01", "netns": podpath}
        result = runner.add(**kw)
        # the final result went through tuning and portmap unchanged in substance
        ip = result["ips"][0]["address"].split("/")[0]
        assert result["interfaces"][0]["name"] == "calic440f455693"
        assert subprocess.run(["ip", "netns", "exec", pod, "cat", "/proc/sys/net/core/somaxconn"],
                              capture_output=True, text=True).stdout.strip() == "777"
        nat = _node_sh(node, "iptables", "-t", "nat", "-S").stdout
        assert f"--to-destination {ip}:80" in nat, nat
        # Debian's portmap CHECK looks for ip6tables rules it never made for an IPv4-only
        # result (containernetworking/plugins#819), so it is left out of CHECK here.
        runner.check(skip=("portmap",), **kw)
        server = subprocess.Popen(["ip", "netns", "exec", pod, "busybox", "httpd", "-f", "-p", "80", "-h", str(node.tmp)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        (node.tmp / "index.html").write_text("hello from the pod\n")

        def fetch() -> str:
            return _node_sh(node, "curl", "-s", "-m", "2", "http://10.250.7.1:18080/index.html").stdout

        # Under load the first SYNs can be lost: a fresh veth passes packets only once the
        # kernel's linkwatch work has activated its qdisc, and a failed ARP backs off.
        try:
            wait_for(fetch, lambda out: "hello from the pod" in out, timeout=30,
                     what="HTTP through portmap hostPort 18080 to the pod")
        except AssertionError as exc:
            diag = {
                "curl": _node_sh(node, "curl", "-sv", "-m", "2", "http://10.250.7.1:18080/index.html").stderr,
                "direct": _node_sh(node, "curl", "-sv", "-m", "2", f"http://{ip}/index.html").stderr,
                "nat": _node_sh(node, "iptables", "-t", "nat", "-L", "-n", "-v").stdout,
                "pod neigh": node.ip("neigh", pod=pod), "node neigh": node.ip("neigh"),
                "pod listen": subprocess.run(["ip", "netns", "exec", pod, "busybox", "netstat", "-ltn"],
                                             capture_output=True, text=True).stdout,
                "httpd": server.poll(),
            }
            raise AssertionError(f"{exc}\n" + "\n".join(f"--- {k}:\n{v}" for k, v in diag.items())) from None
        runner.delete(**kw)
        nat = _node_sh(node, "iptables", "-t", "nat", "-S").stdout
        assert ip not in nat and "calic440f455693" not in node.ip("link")
        with node.client() as cl:
            assert cl.list("WorkloadEndpoint") == []
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "-n", node.ns, "link", "del", outer], capture_output=True)


def test_chain_result_is_accepted_as_prev_result_in_every_chained_version(node, netns):
    for version in ("0.3.1", "0.4.0", "1.0.0"):
        pod = netns("cnip")
        calico = {k: v for k, v in node.conf().items() if k not in ("cniVersion", "name")}
        conflist = {"cniVersion": version, "name": "k8s-pod-network",
                    "plugins": [calico, {"type": "tuning", "mtu": 1400}]}
        runner = ChainRunner(node, conflist, {})
        res = runner.add(cid=f"v{version}", netns=f"/run/netns/{pod}")
        assert json.dumps(res)
        assert "mtu 1400" in node.ip("link", "show", "eth0", pod=pod)
        if version != "0.3.1":
            runner.check(cid=f"v{version}", netns=f"/run/netns/{pod}")
        runner.delete(cid=f"v{version}", netns=f"/run/netns/{pod}")


def test_agent_conflist_through_the_kubelet_runner(node, netns):
    """The three-way contract: calico-node's conflist, the testbed kubelet's CNI runner, our plugin."""
    from agent.installcni import conflist
    from kernel.netns import entered as in_netns
    from testbed.k8s.cni import Runner, cni_args, parse_config

    pod = netns("cnip")
    doc = conflist("k8s-w0", [cni_support.ETCD])
    for plugin in doc["plugins"]:  # keep the plugin's files in the test's dir, not the machine's
        if plugin["type"] == "calico":
            plugin["log_file_path"] = str(node.tmp / "cni.log")
            plugin["ipam_lock_file"] = str(node.tmp / "ipam.lock")
            plugin["nodename_file"] = str(node.nodename_file)  # this node's /var/lib/calico/nodename
            plugin.pop("kubernetes")  # this node has no API server (no calico-kubeconfig): pods are not read
    conf = parse_config(doc)
    runner = Runner([str(node.bin_dir)], env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CALICO_CNI_SOCKET": "none"})
    args = cni_args("default", "nginx", "kubelet01")
    with in_netns(node.nspath):  # the runner execs the plugins from the node, as the kubelet does
        result = runner.add(conf, "kubelet01", f"/run/netns/{pod}", args)
    ip = result["ips"][0]["address"].split("/")[0]
    # the whole v3.28.1 chain ran (calico -> portmap -> bandwidth) and handed Calico's result through
    assert [p["type"] for p in doc["plugins"]] == ["calico", "portmap", "bandwidth"]
    assert result["cniVersion"] == doc["cniVersion"] == "0.3.1"
    assert result["interfaces"] == [{"name": "calic440f455693"}]
    assert f"inet {ip}/32" in node.ip("addr", "show", "eth0", pod=pod)
    with in_netns(node.nspath):
        runner.delete(conf, "kubelet01", f"/run/netns/{pod}", args, prev_result=result)
    assert "calic440f455693" not in node.ip("link")
    with node.client() as c:
        assert c.list("WorkloadEndpoint") == []
