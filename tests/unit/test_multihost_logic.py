"""Labs over several machines, the pure parts: hosts in topologies, placement, parts, tunnels."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from testbed.lab import state as labstate
from testbed.lab.topology import LOCAL_HOST, TopologyError, load, loads
from testbed.multihost import controller, vxlan
from testbed.multihost.hosts import LocalHost, Machine, fingerprint

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

SPREAD = """\
name: mh
hosts:
  - {name: ha, address: 198.18.7.10, user: root, key: keys/client, port: 2200}
  - {name: hb, address: 198.18.7.11, user: vagrant, key: /abs/key, hostKey: "ssh-ed25519 AAAAC3Nza",
     repo: /vagrant, runDir: /run/elsewhere}
segments:
  - {name: lan0, cidr: 172.30.0.0/24}
  - {name: inet, cidr: 203.0.113.0/24}
routers:
  - name: r0
    host: hb
    interfaces:
      - {segment: lan0, address: 172.30.0.1}
      - {segment: inet, address: 203.0.113.1}
nodes:
  - {name: k8s-m, role: control-plane, address: 172.30.0.10, segment: lan0, host: ha}
  - {name: k8s-w0, address: 172.30.0.11, segment: lan0, host: ha}
  - {name: k8s-w1, address: 172.30.0.12, segment: lan0, host: hb}
  - {name: k8s-w2, address: 172.30.0.13, segment: lan0}
external:
  - {name: internet, address: 203.0.113.10, segment: inet, host: hb}
calico: {datastore: etcdv3}
"""


def spread(text: str = SPREAD, base: Path | None = None):
    return loads(text, file="mh.yaml", base=base or Path("/topo"))


def test_hosts_and_placement():
    t = spread()
    assert t.multihost and [h.name for h in t.hosts] == ["ha", "hb"]
    ha, hb = t.hosts
    assert (ha.address, ha.user, ha.port, ha.key) == ("198.18.7.10", "root", 2200, "/topo/keys/client")
    assert (hb.port, hb.key, hb.host_key, hb.repo, hb.run_dir) == (
        22, "/abs/key", "ssh-ed25519 AAAAC3Nza", "/vagrant", "/run/elsewhere")
    assert t.host_of("k8s-m") == "ha" and t.host_of("r0") == "hb" and t.host_of("k8s-w2") == LOCAL_HOST
    assert t.machines() == ["ha", "hb", LOCAL_HOST]
    assert t.names_on("hb") == ["k8s-w1", "r0", "internet"]
    assert t.segment_machines("lan0") == ["ha", "hb", LOCAL_HOST]
    assert t.segment_machines("inet") == ["hb"]
    assert [s.name for s in t.spanning_segments()] == ["lan0"]
    assert [s.name for s in t.segments_on("ha")] == ["lan0"]
    assert [s.name for s in t.segments_on("hb")] == ["lan0", "inet"]
    assert not load(ROOT / "topologies" / "walkthrough.yaml").multihost


@pytest.mark.parametrize("edit, where, problem", [
    (lambda d: d["nodes"][1].update(host="hz"), "nodes[1].host", "unknown host 'hz' (hosts: ha, hb, local)"),
    (lambda d: d["hosts"][0].update(name="local"), "hosts[0].name", "'local' is this machine"),
    (lambda d: d["hosts"].append(dict(d["hosts"][0])), "hosts[2].name", "duplicate host 'ha'"),
    (lambda d: d["hosts"][0].pop("key"), "hosts[0]", "missing required field 'key'"),
    (lambda d: d["hosts"][0].update(port=70000), "hosts[0].port", "out of range"),
    (lambda d: d["hosts"][0].update(address="not an address!"), "hosts[0].address",
     "is not an IP address or a host name"),
    (lambda d: d["hosts"][0].update(address="172.30.0.99"), "hosts[0].address",
     "inside segment lan0"),
    (lambda d: d["hosts"][1].update(repo="vagrant"), "hosts[1].repo", "must be an absolute path"),
    (lambda d: d["hosts"][0].update(password="x"), "hosts[0].password", "unknown field"),
    (lambda d: [m.pop("host", None) for sec in ("nodes", "routers", "external") for m in d[sec]
                if m.get("host") == "hb"], "hosts[1].name", "holds no node, router or external"),
])
def test_bad_hosts_are_named(edit, where, problem):
    data = yaml.safe_load(SPREAD)
    edit(data)
    with pytest.raises(TopologyError) as info:
        loads(yaml.safe_dump(data, sort_keys=False), file="mh.yaml")
    assert info.value.field == where and problem in info.value.problem, str(info.value)


def test_a_part_plans_only_its_members(monkeypatch):
    t = spread()
    with pytest.raises(labstate.LabError, match="spans several machines"):
        labstate.plan(t)
    monkeypatch.setenv("CALICOLAB_PART", "hb")
    st = labstate.plan(t)
    assert st["part"] == "hb"
    assert sorted(st["hosts"]) == ["inet", "internet", "k8s-w1", "lan0", "r0"]
    assert st["hosts"]["lan0"]["netns"] == "mh-lan0@hb" and st["hosts"]["k8s-w1"]["netns"] == "mh-k8s-w1"
    assert st["hosts"]["k8s-w1"]["host"] == "hb"
    assert st["control_plane"] == "k8s-m"  # on another machine
    cg = labstate.cgroup_path("mh")
    assert cg is None or cg.name == "mh@hb"
    env = labstate.node_env(st, "k8s-w1", base={})
    assert env["CALICOLAB_PART"] == "hb" and env["CALICOLAB_LAB"] == "mh"
    monkeypatch.setenv("CALICOLAB_PART", "hz")
    with pytest.raises(labstate.LabError, match="holds nothing of lab 'mh'"):
        labstate.plan(t)


def test_one_machine_labs_keep_their_names(monkeypatch):
    monkeypatch.delenv("CALICOLAB_PART", raising=False)
    st = labstate.plan(load(ROOT / "topologies" / "walkthrough.yaml"))
    assert st["part"] == "" and st["hosts"]["lan0"]["netns"] == "walkthrough-lan0"
    assert "host" not in st["hosts"]["k8s-w0"]
    assert "CALICOLAB_PART" not in labstate.node_env(st, "k8s-w0", base={})


def test_vni_is_per_lab_and_segment_never_zero():
    assert vxlan.vni("a", "lan0") == vxlan.vni("a", "lan0")
    assert vxlan.vni("a", "lan0") != vxlan.vni("b", "lan0") != vxlan.vni("a", "lan1")
    assert all(0 < vxlan.vni(f"l{i}", "s") < 1 << 24 for i in range(200))
    assert vxlan.segment_mtu() == 1450 and vxlan.segment_mtu(9000) == 8950


def test_tunnel_plan_peers_every_other_machine_of_a_segment():
    reach = {"ha": {"hb": "b", "local": "l1"}, "hb": {"ha": "a", "local": "l2"},
             "local": {"ha": "a", "hb": "b"}}
    plan = vxlan.plan("mh", {"lan0": ["ha", "hb", "local"], "inet": ["hb"]}, reach)
    assert set(plan) == {"ha", "hb", "local"}
    assert plan["ha"]["lan0"] == {"vni": vxlan.vni("mh", "lan0"), "port": 4789,
                                  "device": "vx.hosts", "local": "a", "peers": ["b", "l1"]}
    assert plan["local"]["lan0"]["local"] == "l1"  # as ha, its first peer, reaches it
    assert plan["hb"]["lan0"]["peers"] == ["a", "l2"] and "inet" not in plan["hb"]
    assert plan["local"]["lan0"]["peers"] == ["a", "b"]
    with pytest.raises(KeyError, match="no address for machine 'hb' as seen from 'ha'"):
        vxlan.plan("mh", {"lan0": ["ha", "hb"]}, {"ha": {}, "hb": {"ha": "a"}})


def test_reach_map_uses_topology_addresses_and_this_machines_source():
    ms = {"ha": Machine("ha", "ha.example"), "hb": Machine("hb", "198.18.7.11"),
          "local": Machine(LOCAL_HOST)}
    names = {"ha.example": "198.18.7.10", "198.18.7.11": "198.18.7.11"}
    reach = controller.reach_map(ms, resolve=names.__getitem__,
                                 source=lambda dst: {"198.18.7.10": "198.18.7.1",
                                                     "198.18.7.11": "198.18.9.1"}[dst])
    assert reach == {"ha": {"hb": "198.18.7.11", "local": "198.18.7.1"},
                     "hb": {"ha": "198.18.7.10", "local": "198.18.9.1"},
                     "local": {"ha": "198.18.7.10", "hb": "198.18.7.11"}}


def test_portable_topology_inlines_workloads_and_renames(tmp_path):
    (tmp_path / "w.yaml").write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"
                                     "spec: {containers: [{name: c, image: nginx}]}\n")
    text = SPREAD + "workloads:\n  - file: w.yaml\n"
    (tmp_path / "t.yaml").write_text(text)
    t = load(tmp_path / "t.yaml", name="other")
    again = loads(controller.portable_topology(t), file="copy.yaml", base=Path("/nowhere"))
    assert again.name == "other"
    assert again.workloads[0].documents == t.workloads[0].documents
    assert [h.key for h in again.hosts] == [h.key for h in t.hosts]
    assert [(n.name, n.host) for n in again.nodes] == [(n.name, n.host) for n in t.nodes]
    # the lab's datastore is written out, also when only `up --datastore etcdv3` said it
    assert again.calico.datastore == "etcdv3"
    (tmp_path / "t.yaml").write_text(text.replace("calico: {datastore: etcdv3}\n", ""))
    t = load(tmp_path / "t.yaml", name="other", datastore="etcdv3")
    assert loads(controller.portable_topology(t), file="copy.yaml", base=Path("/nowhere")).calico.datastore == "etcdv3"


def _spread_record() -> dict:
    machines = {"ha": Machine("ha", "198.18.7.10").record(), "hb": Machine("hb", "198.18.7.11").record()}
    return {"lab": "mh", "control_plane": "k8s-m",
            "hosts": {"k8s-m": {"kind": "node"}, "k8s-w1": {"kind": "node"}},
            "multihost": {"placement": {"k8s-m": "ha", "k8s-w1": "hb"}, "machines": machines}}


@pytest.mark.parametrize("call, want_args", [
    (lambda st: controller.exec_in(st, "default/k8s-w1-pod", ["curl", "-s", "http://x"]),
     ["exec", "default/k8s-w1-pod", "--", "curl", "-s", "http://x"]),
    (lambda st: controller.run_tool(st, "kubectl", ["exec", "-n", "ns1", "web", "--", "ls"]),
     ["kubectl", "exec", "-n", "ns1", "web", "--", "ls"]),
    (lambda st: controller.run_tool(st, "kubectl", ["logs", "pod/web"]), ["kubectl", "logs", "pod/web"]),
    (lambda st: controller.run_tool(st, "calicoctl", ["get", "nodes"]), ["calicoctl", "get", "nodes"]),
    (lambda st: controller.exec_in(st, "k8s-w1", ["ip", "route"]), ["exec", "k8s-w1", "--", "ip", "route"]),
], ids=["exec-pod", "kubectl-exec", "kubectl-logs", "calicoctl", "exec-node"])
def test_pod_commands_run_on_the_control_planes_machine(monkeypatch, call, want_args):
    """The real kubectl reaches a pod through the API server and its node's kubelet API: a
    pod's exec/logs run where admin.conf is (the control plane's machine), not on the pod's
    machine, whose part has no control plane to run kubectl from (the walkthrough's service
    and policy flows from a pod on another machine got no answer)."""
    ran = []
    monkeypatch.setattr(controller, "run_cli", lambda st, m, args, interactive=False: ran.append((m.name, args)) or 0)

    def no_connect(st, m):
        raise AssertionError(f"connected to {m.name}: nothing needs to be asked first")

    monkeypatch.setattr(controller, "connect", no_connect)
    assert call(_spread_record()) == 0
    want_machine = "hb" if want_args[:2] == ["exec", "k8s-w1"] else "ha"  # a node: where it is
    assert ran == [(want_machine, want_args)]


def test_machine_records_and_part_commands():
    m = Machine("hb", "198.18.7.11", "vagrant", 22, "/k", "", "/vagrant", "/run/x", pinned="SHA256:y")
    assert Machine.from_record(m.record()) == m
    assert m.describe() == "host hb (vagrant@198.18.7.11:22)"
    assert Machine(LOCAL_HOST).describe() == "this machine"
    argv = LocalHost(m).calicolab("status", "--json")
    assert argv[:1] == ["env"] and "CALICOLAB_PART=hb" in argv and "CALICOLAB_RUN=/run/x" in argv
    assert argv[-5:] == ["/vagrant/.venv/bin/python", "-m", "testbed.cli", "status", "--json"]
    # OpenSSH's fingerprint format: SHA256 of the key blob, base64 without padding
    assert fingerprint(b"abc") == "SHA256:ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0"


def test_machine_of_names_the_nodes():
    st = {"lab": "mh", "hosts": {"k8s-m": {"kind": "node"}, "lan0": {"kind": "segment"}},
          "multihost": {"placement": {"k8s-m": "ha"},
                        "machines": {"ha": Machine("ha", "198.18.7.10").record()}}}
    assert controller.machine_of(st, "k8s-m").address == "198.18.7.10"
    with pytest.raises(labstate.LabError, match=r"has no node 'nope' \(nodes: k8s-m\)"):
        controller.machine_of(st, "nope")


def test_walkthrough_spread_text_loads():
    # the shape the vagrant multi layout uses
    t = load(ROOT / "topologies" / "vagrant-multi.yaml")
    assert t.multihost and {t.host_of(n.name) for n in t.nodes} == {"vm-m", "vm-w0", "vm-w1"}
    assert [s.name for s in t.spanning_segments()] == ["lan0"]
