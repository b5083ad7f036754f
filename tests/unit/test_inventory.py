"""The inventory (issue 20, docs/inventory.md): complete, current, linked to tests that
exist, and able to notice a field, variable or key added without an entry."""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent import envvars
from agent.unimplemented import Reporter, in_effect
from cni.netconf import NETCONF_KEYS, parse_netconf
from cni.spec import CNIError
from datastore import calico_api
from datastore import resources as res
from datastore.inventory import _UNSET
from testbed import inventory
from testbed.lab.topology import TOPOLOGY_FIELDS, TopologyError, loads

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def test_nothing_is_missing_from_the_inventory():
    assert inventory.problems() == []


def test_the_committed_doc_is_current():
    assert (REPO / "docs" / "inventory.md").read_text() == inventory.render(), \
        "docs/inventory.md is stale: run .venv/bin/python -m testbed.inventory"


def test_every_linked_test_is_collected_by_pytest():
    links = inventory.linked_tests()
    files = sorted({t.split("::")[0] for t in links})
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    collected = {line.strip() for line in out.stdout.splitlines() if "::" in line}
    missing = [t for t in sorted(links)
               if t not in collected and not any(c.startswith(t + "[") for c in collected)]
    assert not missing, f"linked tests pytest does not collect: {missing}\n{out.stderr[-2000:]}"


@dataclass
class _GrownSpec(res.IPPoolSpec):
    brand_new_mode: str | None = None


@dataclass
class _GrownPool(res.IPPool):
    Spec = _GrownSpec
    spec: _GrownSpec = field(default_factory=_GrownSpec)


def test_a_field_added_without_an_entry_fails(monkeypatch):
    monkeypatch.setitem(res.KINDS, "IPPool", _GrownPool)
    assert any("IPPool spec.brandNewMode: field without an inventory entry" in p for p in inventory.problems())


def test_a_calico_field_a_stored_kind_does_not_accept_fails(monkeypatch):
    monkeypatch.setitem(calico_api.KINDS, "IPPool", (*calico_api.KINDS["IPPool"], "spec.assignmentMode"))
    assert any("IPPool spec.assignmentMode: Calico v3.28.1 field (not accepted" in p for p in inventory.problems())


def test_env_and_netconf_reads_are_discovered_from_the_code():
    names, dynamic = inventory.env_reads(
        'import os\nX = "FROM_CONST"\n'
        'def f(env, var):\n'
        '    a = env.get("CALICO_NEW_THING", "")\n'
        '    b = os.environ["OTHER"] + os.getenv(X)\n'
        '    c = _env_bool(env, "HELPER_READ", False)\n'
        '    return env.get(var)\n', "x.py")
    assert names == {"CALICO_NEW_THING", "OTHER", "FROM_CONST", "HELPER_READ"}
    assert dynamic == ["x.py:7: env.get(var)"]
    assert inventory.netconf_reads('def p(conf, raw):\n    conf.get("new_key")\n    _bool(raw, "flag", False)\n') \
        == {"new_key", "flag"}
    # and the real code: every variable calico-node reads is registered
    read = set()
    for f in inventory.calico_node_files():
        read |= inventory.env_reads(f.read_text())[0]
    assert {"ETCD_ENDPOINTS", "CALICO_NETWORKING_BACKEND", "IP", "CALICO_IPV4POOL_CIDR", "FELIX_HEALTHPORT"} <= read
    assert read <= set(envvars.REGISTRY)


def test_an_unregistered_variable_read_at_run_time_is_an_error():
    with pytest.raises(KeyError, match="CALICO_SOMETHING_NEW"):
        envvars.get({"CALICO_SOMETHING_NEW": "1"}, "CALICO_SOMETHING_NEW")
    assert envvars.get({}, "NODENAME", "x") == "x"


def test_felix_variables_follow_felix_names_and_field_entries():
    reg = envvars.REGISTRY
    fields = [p for p in calico_api.KINDS["FelixConfiguration"] if p.count(".") == 1]
    assert len([v for v in reg.values() if v.felix_field]) == len(fields) == 136
    assert reg["FELIX_IPINIPMTU"].felix_field == "ipipMTU"
    assert reg["FELIX_REPORTINGINTERVALSECS"].felix_field == "reportingInterval"
    assert reg["FELIX_WIREGUARDPERSISTENTKEEPALIVE"].felix_field == "wireguardKeepAlive"
    assert not reg["FELIX_BPFENABLED"].support.implemented and reg["FELIX_IPINIPENABLED"].support.implemented


def test_environment_findings_parse_values_like_felix():
    env = {"FELIX_BPFENABLED": "true", "FELIX_WIREGUARDENABLED": "false", "FELIX_IPV6SUPPORT": "False",
           "FELIX_REPORTINGINTERVALSECS": "0", "CALICO_DISABLE_FILE_LOGGING": "true",
           "FELIX_HEALTHENABLED": "true", "CALICO_IPV4POOL_VXLAN": "Always", "IP6": "autodetect",
           "CALICO_NETWORKING_BACKEND": "vxlan", "FELIX_IPTABLESMARKMASK": "0xffff0000", "PATH": "/bin"}
    assert [f.path for f in envvars.unimplemented(env)] == ["FELIX_BPFENABLED", "IP6"]


@pytest.mark.parametrize("key", sorted(k for k, s in NETCONF_KEYS.items() if s.sample is not _UNSET))
def test_netconf_key_calicolab_cannot_honour_is_refused_by_name(key):
    conf: dict = {"cniVersion": "0.3.1", "name": "k8s-pod-network", "type": "calico", "ipam": {"type": "calico-ipam"}}
    node = conf
    parts = key.split(".") if not key.startswith("args.") else ["args", "org.apache.mesos"]
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = NETCONF_KEYS[key].sample
    with pytest.raises(CNIError) as exc:
        parse_netconf(conf)
    assert f"'{key}'" in exc.value.msg and "not supported by calicolab" in exc.value.msg


def test_operator_and_manifest_netconf_values_are_accepted():
    parse_netconf({"cniVersion": "0.3.1", "name": "k8s-pod-network", "type": "calico", "log_level": "info",
                   "datastore_type": "etcdv3", "nodename_file_optional": False, "mtu": 0,
                   "ipam": {"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "false"},
                   "container_settings": {"allow_ip_forwarding": False}, "policy": {"type": "k8s"},
                   "policy_setup_timeout_seconds": 0, "endpoint_status_dir": "/var/run/calico/endpoint-status"})


TOPO = """\
name: inv
segments:
  - {name: lan0, cidr: 172.30.70.0/24}
nodes:
  - {name: m, role: control-plane, address: 172.30.70.10, segment: lan0}
calico:
  pool: {cidr: 192.168.0.0/16, ipipMode: Never, vxlanMode: %s}
"""


def test_topology_asking_for_what_a_lab_cannot_do_is_refused_by_name():
    """Every topology field is implemented now (VXLAN since issue 14); the refusal machinery
    still names a field a lab cannot honour, with its line."""
    unimplemented = [k for k, s in TOPOLOGY_FIELDS.items() if s.ok is not None or not s.implemented]
    assert unimplemented == []
    for mode in ("Always", "CrossSubnet", "Never"):
        assert loads(TOPO % mode, file="inv.yaml").calico.pool.vxlan_mode == mode
    with pytest.raises(TopologyError) as exc:
        loads(TOPO % "Sometimes", file="inv.yaml")
    assert exc.value.field == "calico.pool.vxlanMode" and "'Sometimes' is not one of" in exc.value.problem
    assert exc.value.line == 7


def _obj(kind: str, name: str, spec: dict, labels: dict | None = None):
    return res.from_document({"apiVersion": "projectcalico.org/v3", "kind": kind,
                              "metadata": {"name": name, **({"labels": labels} if labels else {})}, "spec": spec})


def test_calico_node_reports_what_is_in_effect_on_its_node():
    objs = [_obj("FelixConfiguration", "default", {"bpfEnabled": True, "ipipEnabled": True}),
            _obj("FelixConfiguration", "node.w1", {"wireguardEnabled": True}),  # another node's
            _obj("FelixConfiguration", "node.w0", {"bpfEnabled": False}),
            _obj("IPPool", "v6", {"cidr": "fd00:10::/64", "nodeSelector": "rack == 'r1'"}),
            _obj("IPPool", "v6b", {"cidr": "fd00:20::/64", "nodeSelector": "rack == 'r2'"}),  # not this node
            _obj("BGPPeer", "tor", {"peerIP": "172.30.0.1", "asNumber": 65000,
                                    "password": {"secretKeyRef": {"name": "s", "key": "k"}}}),
            _obj("BGPPeer", "w1-only", {"node": "w1", "peerIP": "172.30.0.2", "asNumber": 65000, "ttlSecurity": 1}),
            _obj("BGPConfiguration", "default", {"serviceClusterIPs": [{"cidr": "10.96.0.0/12"}]}),
            _obj("Node", "w0", {"bgp": {"ipv4Address": "172.30.0.11/24", "ipv6Address": "fd00::1/64"}})]
    found = in_effect("w0", {"FELIX_XDPENABLED": "false", "NODENAME": "w0"}, objs, {"rack": "r1"})
    assert [f"{f.subject} {f.path}" for f in found] == [
        "env FELIX_XDPENABLED",
        "BGPConfiguration(default) spec.serviceClusterIPs",
        "BGPPeer(tor) spec.password",
        "FelixConfiguration(default) spec.bpfEnabled",
        "IPPool(v6) spec.cidr",
        "Node(w0) spec.bgp.ipv6Address"]


def test_reporter_logs_at_start_then_only_changes(caplog):
    log = logging.getLogger("test-reporter")
    rep = Reporter("w0", {}, log)
    bpf = _obj("FelixConfiguration", "default", {"bpfEnabled": True})
    bpf.metadata.resource_version = "5"
    with caplog.at_level(logging.INFO, logger="test-reporter"):
        assert rep.update([bpf])
        assert not rep.update([bpf])  # nothing changed: nothing logged
        both = _obj("FelixConfiguration", "default", {"bpfEnabled": True, "wireguardEnabled": True})
        both.metadata.resource_version = "6"
        assert rep.update([both])
        fixed = _obj("FelixConfiguration", "default", {})
        fixed.metadata.resource_version = "7"
        assert rep.update([fixed])
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[0].startswith("1 setting(s) in effect on w0 are not implemented in calicolab")
    assert msgs[1].startswith("not implemented: FelixConfiguration(default) spec.bpfEnabled=true")
    assert msgs[2].startswith("now in effect, not implemented: FelixConfiguration(default) spec.wireguardEnabled")
    assert [m.split(":")[0] for m in msgs[3:]] == ["no longer in effect"] * 2
    assert len(msgs) == 5 and rep.lines == []


def test_pod_annotation_calicolab_cannot_honour_is_refused_by_name():
    from cni.k8s import ANNOTATIONS, refuse_unimplemented

    refused = [k for k, s in ANNOTATIONS.items() if not s.implemented]
    assert len(refused) == 4
    for key in refused:
        with pytest.raises(CNIError) as exc:
            refuse_unimplemented({key: ANNOTATIONS[key].sample, "other.io/x": "y"})
        assert exc.value.msg.startswith(f"pod annotation {key} is not supported by calicolab")
        with pytest.raises(CNIError, match=f"namespace annotation {key}"):
            refuse_unimplemented({}, {key: ANNOTATIONS[key].sample})
    refuse_unimplemented({"cni.projectcalico.org/ipv4pools": '["p"]', "cni.projectcalico.org/hwAddr": "02:00:00:00:00:01"})
