"""Unit tests of the CNI spec layer, netconf parsing and Calico's names (pure logic)."""

from __future__ import annotations

import json

import pytest

from cni import netconf, spec
from cni.spec import CNIError
from datastore import names

pytestmark = pytest.mark.unit


def _env(**kw: str) -> dict[str, str]:
    base = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc", "CNI_NETNS": "/run/netns/x",
            "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


def test_env_parsed_with_args():
    env = spec.parse_env(_env(CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=nginx"))
    assert env.command == "ADD" and env.ifname == "eth0" and env.path == ["/opt/cni/bin"]
    assert env.args["K8S_POD_NAME"] == "nginx" and env.args["K8S_POD_NAMESPACE"] == "default"


@pytest.mark.parametrize("missing", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"])
def test_add_missing_env_is_error_4_naming_it(missing):
    env = _env()
    del env[missing]
    with pytest.raises(CNIError) as err:
        spec.parse_env(env)
    assert err.value.code == 4 and missing in err.value.msg


def test_del_needs_no_netns_and_unknown_command_is_4():
    env = _env(CNI_COMMAND="DEL")
    del env["CNI_NETNS"]
    assert spec.parse_env(env).netns == ""
    with pytest.raises(CNIError) as err:
        spec.parse_env(_env(CNI_COMMAND="FROB"))
    assert err.value.code == 4 and "FROB" in err.value.msg
    with pytest.raises(CNIError) as err:
        spec.parse_env({})
    assert err.value.code == 4 and "CNI_COMMAND" in err.value.msg


def test_bad_cni_args_and_ifname():
    with pytest.raises(CNIError) as err:
        spec.parse_env(_env(CNI_ARGS="novalue"))
    assert err.value.code == 4
    with pytest.raises(CNIError):
        spec.parse_env(_env(CNI_IFNAME="a" * 16))


def test_stdin_decoding_errors_are_6():
    for bad in (b"", b"{not json", b"[1,2]", b"\xff\xfe"):
        with pytest.raises(CNIError) as err:
            spec.parse_stdin(bad)
        assert err.value.code == 6, bad


@pytest.mark.parametrize("version", spec.SUPPORTED_VERSIONS)
def test_supported_versions_accepted(version):
    assert spec.check_version({"cniVersion": version}, "ADD") == version


def test_supported_versions_are_calicos_plus_1_1_0():
    # v3.28.1's PluginSupports list, then 1.1.0 kept for STATUS/GC (docs/cni.md)
    assert spec.SUPPORTED_VERSIONS == ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


@pytest.mark.parametrize("version", ["0.0.9", "1.2.0", "2.0.0", "banana"])
def test_unsupported_versions_are_1(version):
    with pytest.raises(CNIError) as err:
        spec.check_version({"cniVersion": version}, "ADD")
    assert err.value.code == 1 and err.value.msg == "incompatible CNI versions"
    assert err.value.details == (f'config is "{version}", plugin supports '
                                 '["0.1.0" "0.2.0" "0.3.0" "0.3.1" "0.4.0" "1.0.0" "1.1.0"]')


def test_missing_cni_version_is_0_2_0():
    assert spec.check_version({}, "ADD") == "0.2.0"
    assert spec.check_version({"cniVersion": ""}, "DEL") == "0.2.0"


def test_verb_version_limits():
    with pytest.raises(CNIError) as err:
        spec.check_version({"cniVersion": "0.3.1"}, "CHECK")
    assert err.value.code == 1 and err.value.msg == "config version does not allow CHECK"
    for verb in ("STATUS", "GC"):
        with pytest.raises(CNIError) as err:
            spec.check_version({"cniVersion": "1.0.0"}, verb)
        assert err.value.code == 1 and err.value.msg == f"config version does not allow {verb}"
    with pytest.raises(CNIError) as err:
        spec.check_version({"cniVersion": 1.0}, "ADD")
    assert err.value.code == 7


def test_version_result():
    assert spec.version_result({"cniVersion": "0.4.0"}) == {"cniVersion": "0.4.0", "supportedVersions": list(spec.SUPPORTED_VERSIONS)}
    assert spec.version_result(None)["cniVersion"] == "1.1.0"


def _calico_result() -> spec.Result:
    """What ADD returns: the host veth by name, the /32 (calico.md section 1)."""
    return spec.Result(interfaces=[spec.Interface("calic440f455693")], ips=[spec.IPConfig("192.168.1.5/32")])


def test_calico_result_per_version():
    assert spec.print_json(_calico_result().to_dict("0.3.1")) == """{
    "cniVersion": "0.3.1",
    "interfaces": [
        {
            "name": "calic440f455693"
        }
    ],
    "ips": [
        {
            "version": "4",
            "address": "192.168.1.5/32"
        }
    ],
    "dns": {}
}"""
    assert _calico_result().to_dict("1.0.0") == {
        "cniVersion": "1.0.0", "interfaces": [{"name": "calic440f455693"}],
        "ips": [{"address": "192.168.1.5/32"}], "dns": {}}
    assert _calico_result().to_dict("0.2.0") == {"cniVersion": "0.2.0", "ip4": {"ip": "192.168.1.5/32"}, "dns": {}}


def test_full_result_rendering_and_parsing():
    full = spec.Result(
        interfaces=[spec.Interface("calic440f455693", "ee:ee:ee:ee:ee:ee", 1480),
                    spec.Interface("eth0", "aa:bb:cc:dd:ee:ff", 1480, "/run/netns/p")],
        ips=[spec.IPConfig("192.168.1.5/32", interface=1, gateway="169.254.1.1")],
        routes=[spec.Route("0.0.0.0/0", "169.254.1.1")],
    )
    old = full.to_dict("0.4.0")
    assert old["ips"] == [{"version": "4", "interface": 1, "address": "192.168.1.5/32", "gateway": "169.254.1.1"}]
    assert list(old["ips"][0]) == ["version", "interface", "address", "gateway"]  # types040 field order
    assert "mtu" not in old["interfaces"][0]
    new = full.to_dict("1.1.0")
    assert new["interfaces"][1] == {"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "mtu": 1480, "sandbox": "/run/netns/p"}
    assert new["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]
    back = spec.Result.from_dict(json.loads(json.dumps(new)))
    assert back.ips[0].interface == 1 and back.interfaces[1].sandbox == "/run/netns/p"
    assert full.to_dict("0.1.0") == {"cniVersion": "0.1.0", "ip4": {
        "ip": "192.168.1.5/32", "gateway": "169.254.1.1", "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]},
        "dns": {}}
    legacy = spec.Result.from_dict(full.to_dict("0.2.0"))
    assert legacy.ips[0].address == "192.168.1.5/32" and legacy.routes[0].gw == "169.254.1.1"
    with pytest.raises(CNIError) as err:
        spec.Result.from_dict({"ips": [{"nope": 1}]})
    assert err.value.code == 7


def test_error_json_shape():
    text = spec.error_json(CNIError(7, "bad", "why"), "1.0.0")
    assert text.startswith('{\n    "cniVersion": "1.0.0",\n    "code": 7,')  # indented as Error.Print
    assert json.loads(text) == {"cniVersion": "1.0.0", "code": 7, "msg": "bad", "details": "why"}


def test_names_match_calico_vectors():
    assert names.veth_name("default", "nginx", "cid") == "calic440f455693"
    assert names.veth_name("test", "test-pod", "cid") == "cali998e5f7d75d"
    assert names.veth_name(None, None, "0123456789abcdef") == "cali0123456789a"
    assert names.interface_prefix("tap,cali") == "tap" and names.interface_prefix("") == "cali"
    assert names.workload_endpoint_name("node1", "k8s", "pod-1", "eth0") == "node1-k8s-pod--1-eth0"
    assert names.workload_endpoint_name("k8s-w0", "cni", "abc", "eth0") == "k8s--w0-cni-abc-eth0"
    assert names.handle_id("k8s-pod-network", "abc") == "k8s-pod-network.abc"


def _nc(**kw):
    conf = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "calico",
            "etcd_endpoints": "http://10.1.1.1:2379,http://10.1.1.2:2379", "ipam": {"type": "calico-ipam"}}
    conf.update(kw)
    return conf


def test_netconf_parses_calico_fields():
    nc = netconf.parse_netconf(_nc(mtu=1440, nodename="k8s-w0", log_level="debug",
                                   ipam={"type": "calico-ipam", "ipv4_pools": ["default-ipv4-ippool", "10.9.0.0/16"]},
                                   policy={"type": "k8s"}))
    assert nc.etcd_endpoints == ["http://10.1.1.1:2379", "http://10.1.1.2:2379"]
    assert nc.mtu == 1440 and nc.nodename == "k8s-w0" and nc.policy_type == "k8s"
    assert nc.ipam.ipv4_pools == ["default-ipv4-ippool", "10.9.0.0/16"]


def test_netconf_env_fallback_for_endpoints():
    conf = _nc()
    del conf["etcd_endpoints"]
    assert netconf.parse_netconf(conf, env={"ETCD_ENDPOINTS": "http://1.2.3.4:2379"}).etcd_endpoints == ["http://1.2.3.4:2379"]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"name": ""}, "name"),
        ({"type": "bridge"}, "type"),
        ({"datastore_type": "kubernetes"}, "kubernetes.kubeconfig"),
        ({"datastore_type": "consul"}, "datastore_type"),
        ({"kubernetes": "x"}, "kubernetes"),
        ({"etcd_endpoints": "10.0.0.1:2379"}, "etcd_endpoints"),
        ({"mtu": -3}, "mtu"),
        ({"mtu": "big"}, "mtu"),
        ({"ipam": None}, "ipam"),
        ({"ipam": {"type": "calico-ipam", "ipv4_pools": ["300.1.0.0/16"]}}, "ipv4_pools"),
        ({"ipam": {"type": "calico-ipam", "assign_ipv6": True}}, "assign_ipv6"),
        ({"log_level": "loud"}, "log_level"),
        ({"cni.dev/valid-attachments": "x"}, "valid-attachments"),
    ],
)
def test_netconf_errors_name_the_field(override, field):
    with pytest.raises(CNIError) as err:
        netconf.parse_netconf(_nc(**override))
    assert err.value.code == 7 and field in err.value.msg


def test_netconf_kubernetes_datastore():
    """``datastore_type: kubernetes`` with ``kubernetes.kubeconfig`` (calico.yaml's conflist);
    etcdv3 stays the default and may carry a kubeconfig for reading pods."""
    nc = netconf.parse_netconf(_nc(datastore_type="kubernetes",
                                   kubernetes={"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"}))
    assert nc.datastore_type == "kubernetes" and nc.kubeconfig == "/etc/cni/net.d/calico-kubeconfig"
    assert netconf.parse_netconf(_nc()).datastore_type == "etcdv3"
    nc = netconf.parse_netconf(_nc(kubernetes={"kubeconfig": "/k"}))
    assert nc.datastore_type == "etcdv3" and nc.kubeconfig == "/k"


def test_nodename_and_mtu_resolution(tmp_path):
    nc = netconf.parse_netconf(_nc(nodename_file=str(tmp_path / "nodename")))
    with pytest.raises(CNIError) as err:
        netconf.determine_nodename(nc, "host")
    assert "calico/node" in err.value.msg and err.value.code == 7
    (tmp_path / "nodename").write_text("k8s-w1\n")
    assert netconf.determine_nodename(nc, "host") == "k8s-w1"
    assert netconf.determine_mtu(nc, str(tmp_path / "mtu")) == 1500  # the kernel's veth default
    (tmp_path / "mtu").write_text("1430\n")
    assert netconf.determine_mtu(nc, str(tmp_path / "mtu")) == 1430
    assert netconf.determine_mtu(netconf.parse_netconf(_nc(mtu=1400)), str(tmp_path / "mtu")) == 1400


def test_num_queues_default_and_value():
    """``num_queues``: each veth end's queues; unset, 0 or less is 1 (Calico's plugin.go);
    anything but an integer is refused, naming the key."""
    assert netconf.parse_netconf(_nc()).num_queues == 1
    assert netconf.parse_netconf(_nc(num_queues=0)).num_queues == 1
    assert netconf.parse_netconf(_nc(num_queues=-2)).num_queues == 1
    assert netconf.parse_netconf(_nc(num_queues=4)).num_queues == 4
    for bad in ("4", True, 1.5):
        with pytest.raises(CNIError) as err:
            netconf.parse_netconf(_nc(num_queues=bad))
        assert "'num_queues' must be an integer" in err.value.msg


def test_calico_node_started_is_calicos_nodename_file_guard(tmp_path, monkeypatch):
    """ADD and DEL of the calico plugin need the nodename file calico-node's start-up writes
    (Calico's cmdAdd/cmdDel): missing, Calico's error (999, skel's code for a plain error),
    unless nodename_file_optional; the CNI server's wait holds a request until it appears,
    then (an auto MTU) until Felix's MTU file appears too, never longer than the wait."""
    import threading
    import time

    from cni import plugin

    polling = threading.Event()  # the guard's first poll: the wait has begun
    real_sleep = time.sleep

    class Clock:
        monotonic = staticmethod(time.monotonic)

        @staticmethod
        def sleep(seconds: float) -> None:
            polling.set()
            real_sleep(seconds)

    monkeypatch.setattr(plugin, "time", Clock)

    def later(delay: float, write, *args) -> None:
        """``write(*args)`` ``delay`` seconds after the next call starts waiting (counted from
        there, not from now: on a loaded machine the call may start late)."""
        polling.clear()

        def run() -> None:
            polling.wait(30)
            real_sleep(delay)
            write(*args)

        threading.Thread(target=run, daemon=True).start()

    path, mtu = tmp_path / "nodename", tmp_path / "mtu"
    nc = netconf.parse_netconf(_nc(nodename_file=str(path)))
    with pytest.raises(CNIError) as err:
        plugin.calico_node_started(nc)
    assert err.value.code == 999 and err.value.msg == (
        f"stat {path}: no such file or directory: check that the calico/node container is running and has "
        "mounted /var/lib/calico/")
    assert plugin.calico_node_started(netconf.parse_netconf(_nc(nodename_file=str(path),
                                                                nodename_file_optional=True))) == 0.0
    t0 = time.monotonic()
    with pytest.raises(CNIError):
        plugin.calico_node_started(nc, wait=0.2)
    assert time.monotonic() - t0 >= 0.2
    later(0.1, path.write_text, "k8s-w0")
    assert 0.1 <= plugin.calico_node_started(nc, wait=5.0) < 5.0
    assert plugin.calico_node_started(nc, wait=5.0, need_mtu=True, mtu_file=str(mtu)) == 0.0  # started: no wait
    path.unlink()
    later(0.1, path.write_text, "k8s-w0")
    later(0.3, mtu.write_text, "1480\n")
    assert 0.3 <= plugin.calico_node_started(nc, wait=5.0, need_mtu=True, mtu_file=str(mtu)) < 5.0
    path.unlink()
    mtu.unlink()
    later(0.1, path.write_text, "k8s-w0")
    waited = plugin.calico_node_started(nc, wait=0.4, need_mtu=True, mtu_file=str(mtu))  # Felix never wrote it
    assert 0.4 <= waited < 1.0


def test_add_and_del_without_the_nodename_file_fail_before_any_work(tmp_path):
    from cni import plugin

    conf = json.dumps(_nc(nodename_file=str(tmp_path / "nodename"), log_file_path=str(tmp_path / "cni.log"))).encode()
    for command in ("ADD", "DEL"):
        code, out, _ = plugin.run("calico", _env(CNI_COMMAND=command, CNI_NETNS="/run/netns/none"), conf)
        assert code == 1 and json.loads(out)["code"] == 999 and "calico/node container" in json.loads(out)["msg"]
    code, out, _ = plugin.run("calico", _env(CNI_COMMAND="VERSION"), conf)
    assert code == 0


def test_the_in_process_path_asks_the_server_again_once_calico_node_has_started(tmp_path):
    """An executable that found no CNI server runs in-process; after Calico's nodename check
    passes (calico-node's start-up, which starts the server first, is done) it asks the
    server once more before the imports the work needs, and returns the server's answer as
    it is. Before that check nothing is asked: a missing nodename file is Calico's error."""
    from cni import plugin

    node, log = tmp_path / "nodename", tmp_path / "cni.log"
    conf = json.dumps(_nc(nodename_file=str(node), log_file_path=str(log))).encode()
    asked: list[str] = []

    def server() -> tuple[int, bytes, bytes] | None:
        asked.append("asked")
        return 0, b'{"cniVersion": "1.0.0", "ips": []}\n', b"served\n"

    code, out, _ = plugin.run("calico", _env(CNI_COMMAND="ADD", CNI_NETNS="/run/netns/none"), conf, server=server)
    assert code == 1 and json.loads(out)["code"] == 999 and asked == []
    node.write_text("k8s-w0")
    for command in ("ADD", "DEL"):
        got = plugin.run("calico", _env(CNI_COMMAND=command, CNI_NETNS="/run/netns/none"), conf, server=server)
        assert got == (0, '{"cniVersion": "1.0.0", "ips": []}\n', "served\n")
    assert asked == ["asked", "asked"] and "done in" not in (log.read_text() if log.exists() else "")

    def no_server() -> None:
        asked.append("none")
        return None

    refused = json.dumps(_nc(nodename_file=str(node), log_file_path=str(log),
                             etcd_endpoints="http://127.0.0.1:9")).encode()  # no datastore is reached
    code, out, _ = plugin.run("calico", _env(CNI_COMMAND="DEL", CNI_NETNS="/run/netns/none"), refused,
                              server=no_server)
    assert asked[-1] == "none" and out != '{"cniVersion": "1.0.0", "ips": []}\n'  # went on in-process
