"""calico-node start-up logic without a datastore: address autodetection, pool from env, conflist, settings."""

import json

import pytest

from agent.felix.convert import ConfigError, settings
from agent.installcni import conflist
from agent.startup import StartupError, autodetect, node_address, pool_from_env

pytestmark = pytest.mark.unit

IFACES = [
    ("lo", ["127.0.0.1/8"]),
    ("docker0", ["172.17.0.1/16"]),
    ("cali1234", []),
    ("tunl0", ["192.168.1.0/32"]),
    ("eth0", ["169.254.3.3/16", "172.30.0.11/24"]),
    ("eth1", ["10.10.0.5/16"]),
]


def test_first_found_skips_calicos_list_and_link_local():
    assert autodetect("first-found", IFACES) == "172.30.0.11/24"
    assert autodetect("", IFACES) == "172.30.0.11/24"


def test_interface_skip_interface_and_cidr_methods():
    assert autodetect("interface=eth1", IFACES) == "10.10.0.5/16"
    assert autodetect("interface=nomatch.*,eth.*", IFACES) == "172.30.0.11/24"
    # skip-interface uses only the given regexes (loopback addresses never qualify).
    assert autodetect("skip-interface=eth0", IFACES) == "172.17.0.1/16"
    assert autodetect("skip-interface=eth0,docker.*", IFACES) == "192.168.1.0/32"
    assert autodetect("cidr=10.0.0.0/8", IFACES) == "10.10.0.5/16"
    assert autodetect("cidr=192.0.2.0/24", IFACES) is None


def test_bad_methods_are_named():
    with pytest.raises(StartupError, match="not supported"):
        autodetect("kubernetes-internal-ip", IFACES)
    with pytest.raises(StartupError, match="bad regex"):
        autodetect("interface=(", IFACES)
    with pytest.raises(StartupError, match="CIDR"):
        autodetect("cidr=", IFACES)


def test_explicit_ip_and_none():
    assert node_address({"IP": "172.30.0.11"}, IFACES) == "172.30.0.11/24"
    assert node_address({"IP": "10.1.2.3/16"}, IFACES) == "10.1.2.3/16"
    assert node_address({"IP": "none"}, IFACES) is None
    assert node_address({"IP": "autodetect", "IP_AUTODETECTION_METHOD": "interface=eth1"}, IFACES) == "10.10.0.5/16"
    with pytest.raises(StartupError, match="IP='bogus'"):
        node_address({"IP": "bogus"}, IFACES)
    with pytest.raises(StartupError, match="no IPv4 address found"):
        node_address({"IP_AUTODETECTION_METHOD": "cidr=192.0.2.0/24"}, IFACES)


def test_pool_from_env():
    p = pool_from_env({"CALICO_IPV4POOL_CIDR": "10.244.0.0/16", "CALICO_IPV4POOL_BLOCK_SIZE": "24",
                       "CALICO_IPV4POOL_IPIP": "Always"})
    assert (p.metadata.name, p.spec.cidr, p.spec.block_size, p.spec.ipip_mode, p.spec.vxlan_mode,
            p.spec.nat_outgoing, p.spec.node_selector) == (
        "default-ipv4-ippool", "10.244.0.0/16", 24, "Always", "Never", True, "all()")
    p = pool_from_env({"CALICO_IPV4POOL_IPIP": "cross-subnet", "CALICO_IPV4POOL_NAT_OUTGOING": "false"})
    assert (p.spec.cidr, p.spec.block_size, p.spec.ipip_mode, p.spec.nat_outgoing) == (
        "192.168.0.0/16", 26, "CrossSubnet", False)
    assert pool_from_env({}).spec.ipip_mode == "Never"
    # Default CIDR overlapping a host address falls back to 172.16.0.0/16.
    assert pool_from_env({}, ["192.168.5.5/24"]).spec.cidr == "172.16.0.0/16"


@pytest.mark.parametrize("env,match", [
    ({"CALICO_IPV4POOL_IPIP": "sometimes"}, "CALICO_IPV4POOL_IPIP='sometimes'"),
    ({"CALICO_IPV4POOL_CIDR": "300.0.0.0/8"}, "CALICO_IPV4POOL_CIDR"),
    ({"CALICO_IPV4POOL_BLOCK_SIZE": "big"}, "CALICO_IPV4POOL_BLOCK_SIZE"),
    # Calico's log lines (startup.go parseBlockSizeEnvironment, validateBlockSize), then the variable
    ({"CALICO_IPV4POOL_BLOCK_SIZE": "big"}, "Unable to convert blocksize to int: CALICO_IPV4POOL_BLOCK_SIZE='big'"),
    ({"CALICO_IPV4POOL_BLOCK_SIZE": "33"}, "Invalid blocksize 33 for version 4: CALICO_IPV4POOL_BLOCK_SIZE='33'"),
    ({"CALICO_IPV4POOL_BLOCK_SIZE": "99"}, "Invalid blocksize 99 for version 4: .* must be between 20 and 32"),
    ({"CALICO_IPV4POOL_BLOCK_SIZE": "19", "CALICO_IPV4POOL_CIDR": "10.0.0.0/8"}, "Invalid blocksize 19"),
    ({"CALICO_IPV4POOL_NAT_OUTGOING": "perhaps"}, "CALICO_IPV4POOL_NAT_OUTGOING"),
])
def test_bad_pool_env_is_named(env, match):
    with pytest.raises(StartupError, match=match):
        pool_from_env(env)


def test_conflist_shape():
    """calico-etcd.yaml v3.28.1's conflist: calico + portmap + bandwidth at cniVersion 0.3.1,
    datastore_type etcdv3 + etcd_endpoints, pods read through install-cni's kubeconfig."""
    c = conflist("k8s-w0", ["http://172.30.0.10:2379"])
    calico, portmap, bandwidth = c["plugins"]
    assert c["name"] == "k8s-pod-network" and c["cniVersion"] == "0.3.1"
    assert list(calico) == ["type", "log_level", "log_file_path", "datastore_type", "etcd_endpoints", "nodename",
                            "mtu", "ipam", "policy", "kubernetes"]
    assert calico["kubernetes"] == {"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"}
    assert (calico["type"], calico["datastore_type"], calico["etcd_endpoints"], calico["nodename"], calico["mtu"],
            calico["ipam"]) == ("calico", "etcdv3", "http://172.30.0.10:2379", "k8s-w0", 0, {"type": "calico-ipam"})
    assert calico["log_file_path"] == "/var/log/calico/cni/cni.log" and calico["policy"] == {"type": "k8s"}
    assert portmap == {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}}
    assert bandwidth == {"type": "bandwidth", "capabilities": {"bandwidth": True}}
    assert conflist("k8s-w0", ["http://x:2379"], mtu=1440)["plugins"][0]["mtu"] == 1440
    with pytest.raises(ValueError):
        conflist("", ["http://x:2379"])


def test_conflist_from_cni_network_config():
    """install-cni takes the template from CNI_NETWORK_CONFIG (the manifest's ConfigMap key),
    which is the same document as the built-in default."""
    import yaml

    from agent.installcni import DEFAULT_NETWORK_CONFIG
    from testbed.k8s.install import ETCD_TEMPLATE as TEMPLATE

    cm = next(d for d in yaml.safe_load_all(TEMPLATE.read_text()) if d and d["kind"] == "ConfigMap")
    template = cm["data"]["cni_network_config"]
    assert conflist("n1", ["http://e:2379"], 0, template) == conflist("n1", ["http://e:2379"], 0, DEFAULT_NETWORK_CONFIG)
    with pytest.raises(ValueError, match="__KUBERNETES_SERVICE_HOST__"):
        conflist("n1", ["http://e:2379"], 0, '{"host": "__KUBERNETES_SERVICE_HOST__"}')
    with pytest.raises(ValueError, match="not valid JSON"):
        conflist("n1", ["http://e:2379"], 0, '{"mtu": __CNI_MTU__,}')


class _Cfg:
    def __init__(self, **kw):
        from datastore.resources import FelixConfigurationSpec

        self.spec = FelixConfigurationSpec(**kw)


def test_settings_precedence():
    cfgs = {"default": _Cfg(ipip_mtu=1400, route_refresh_interval="30s"),
            "node.w0": _Cfg(route_refresh_interval="10s")}
    s = settings("w0", cfgs, {})
    assert (s.ipip_mtu, s.route_refresh_interval, s.iptables_refresh_interval) == (1400, 10, 180)
    s = settings("w1", cfgs, {"FELIX_ROUTEREFRESHINTERVAL": "2", "FELIX_IPINIPMTU": "1300"})
    assert (s.ipip_mtu, s.route_refresh_interval) == (1300, 2)
    with pytest.raises(ConfigError, match="FELIX_IPINIPMTU"):
        settings("w0", {}, {"FELIX_IPINIPMTU": "lots"})
    with pytest.raises(ConfigError, match="route_refresh_interval"):
        settings("w0", {"default": _Cfg(route_refresh_interval="soon")}, {})


def test_install_cni_etcd_conflist_reads_pods_through_the_api(tmp_path, caplog):
    """install-cni in the etcd datastore writes calico-etcd.yaml's conflist: etcd_endpoints and
    kubernetes.kubeconfig -> <CNI_NET_DIR>/calico-kubeconfig (a copy of calico-node's
    KUBECONFIG here). Without any Kubernetes credentials the section is left out, said so."""
    from agent.installcni import install_cni

    kube = tmp_path / "admin.conf"
    kube.write_text("apiVersion: v1\nkind: Config\n")
    for exe in ("calico", "calico-ipam"):
        (tmp_path / exe).write_text("")
    env = {"DATASTORE_TYPE": "etcdv3", "KUBECONFIG": str(kube), "CNI_NET_DIR": str(tmp_path / "net"),
           "CNI_BIN_DIR": str(tmp_path / "bin")}
    written = install_cni("k8s-w0", ["http://172.30.0.10:2379"], env, bin_source=str(tmp_path))
    calico = json.loads((tmp_path / "net" / "10-calico.conflist").read_text())["plugins"][0]
    assert calico["etcd_endpoints"] == "http://172.30.0.10:2379"
    assert calico["kubernetes"] == {"kubeconfig": str(tmp_path / "net" / "calico-kubeconfig")}
    assert json.loads((tmp_path / "net" / "calico-kubeconfig").read_text()) == {"apiVersion": "v1", "kind": "Config"}
    assert str(tmp_path / "net" / "calico-kubeconfig") in written
    env.pop("KUBECONFIG")
    (tmp_path / "net" / "calico-kubeconfig").unlink()
    with caplog.at_level("WARNING"):
        install_cni("k8s-w0", ["http://172.30.0.10:2379"], env, bin_source=str(tmp_path))
    calico = json.loads((tmp_path / "net" / "10-calico.conflist").read_text())["plugins"][0]
    assert "kubernetes" not in calico and not (tmp_path / "net" / "calico-kubeconfig").exists()
    assert "gets no kubernetes.kubeconfig" in caplog.text


def test_cni_kubeconfig_in_a_pod_is_a_token_of_calico_cni_plugin_readable_without_pyyaml(tmp_path, monkeypatch):
    """In a pod install-cni asks a token for kube-system/calico-cni-plugin and writes a
    kubeconfig for https://[KUBERNETES_SERVICE_HOST]:PORT with the ServiceAccount's CA (as
    Calico's install.go); it is JSON, which the stdlib-only CNI executables read."""
    import kubeclient
    from agent.installcni import cni_kubeconfig
    from kubeclient.config import load

    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("pod-token")
    (sa / "namespace").write_text("kube-system")
    from testbed.apiserver import pki

    (sa / "ca.crt").write_bytes(open(pki.write_pki(str(tmp_path / "pki"), ecdsa=True).ca_crt, "rb").read())
    asked = []

    def request(self, method, path, body=None, **kw):
        asked.append((method, path, body["spec"]))
        return {"status": {"token": "cni-token"}}

    monkeypatch.setattr(kubeclient.Client, "request", request)
    text = cni_kubeconfig({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}, str(sa))
    assert asked == [("POST", "/api/v1/namespaces/kube-system/serviceaccounts/calico-cni-plugin/token",
                      {"expirationSeconds": 86400})]
    doc = json.loads(text)
    assert doc["clusters"][0]["cluster"]["server"] == "https://[10.96.0.1]:443"
    assert doc["users"][0]["user"] == {"token": "cni-token"}
    path = tmp_path / "calico-kubeconfig"
    path.write_text(text)
    cfg = load(str(path))
    assert cfg.server == "https://[10.96.0.1]:443" and kubeclient.Client(cfg).host == "10.96.0.1"
