"""calicoctl as a user runs it (subprocess, ETCD_ENDPOINTS) against a real etcd."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from ipaddress import IPv4Network
from pathlib import Path

import pytest
import yaml

from datastore import Client
from ipam import IPAM
from testbed.calicoctl import run
from tests.support import require_tool

pytestmark = pytest.mark.etcd

_SCRIPT = Path(sys.executable).parent / "calicoctl"
# the installed console script when present (as a user runs it), else the same entry point
CALICOCTL = ([str(_SCRIPT)] if _SCRIPT.exists() else
             [sys.executable, "-c", "import sys; from testbed.calicoctl import main; sys.exit(main())"])

POOL_AND_BGP = """\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: default-ipv4-ippool
spec:
  cidr: 192.168.0.0/16
  ipipMode: Always
  natOutgoing: true
---
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata:
  name: default
spec:
  nodeToNodeMeshEnabled: true
  asNumber: 64512
"""


def ctl(endpoints: list[str], *args: str, stdin: str | None = None,
        env: dict[str, str] | None = None, proc: bool = False) -> subprocess.CompletedProcess:
    """Run calicoctl: in-process through its ``run`` entry (fast), or as the installed
    executable with ``proc=True`` (exit codes and stdio exactly as a user sees them)."""
    e = dict(os.environ, DATASTORE_TYPE="etcdv3", ETCD_ENDPOINTS=",".join(endpoints))
    e.update(env or {})
    if proc:
        res = subprocess.run([*CALICOCTL, *args], input=stdin, capture_output=True, text=True,
                             env=e, timeout=30)
    else:
        out, err = io.StringIO(), io.StringIO()
        old_stdin = sys.stdin
        sys.stdin = io.StringIO(stdin or "")
        try:
            code = run(list(args), out, err, env=e)
        finally:
            sys.stdin = old_stdin
        res = subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    return res


def test_apply_get_tables_yaml_json(etcd_endpoints, tmp_path: Path):
    f = tmp_path / "pool.yaml"
    f.write_text(POOL_AND_BGP)
    res = ctl(etcd_endpoints, "apply", "-f", str(f), proc=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "Successfully applied 2 resource(s)\n"

    res = ctl(etcd_endpoints, "get", "ippool")
    assert res.stdout.splitlines() == [
        "NAME                  CIDR             SELECTOR",
        "default-ipv4-ippool   192.168.0.0/16   all()",
    ]
    res = ctl(etcd_endpoints, "get", "ippools", "-o", "wide")
    assert res.stdout.splitlines()[0].split() == [
        "NAME", "CIDR", "NAT", "IPIPMODE", "VXLANMODE", "DISABLED", "DISABLEBGPEXPORT", "SELECTOR"]
    assert res.stdout.splitlines()[1].split() == [
        "default-ipv4-ippool", "192.168.0.0/16", "true", "Always", "Never", "false", "false", "all()"]

    doc = yaml.safe_load(ctl(etcd_endpoints, "get", "pool", "default-ipv4-ippool", "-o", "yaml").stdout)
    assert doc["kind"] == "IPPool" and doc["apiVersion"] == "projectcalico.org/v3"
    assert doc["spec"]["blockSize"] == 26 and doc["spec"]["nodeSelector"] == "all()"
    assert doc["metadata"]["resourceVersion"]

    lst = json.loads(ctl(etcd_endpoints, "get", "ipp", "-o", "json").stdout)
    assert lst["kind"] == "IPPoolList" and [i["metadata"]["name"] for i in lst["items"]] == ["default-ipv4-ippool"]

    res = ctl(etcd_endpoints, "get", "bgpconfig")
    assert res.stdout.split() == ["NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER",
                                  "default", "Info", "true", "64512"]

    # re-applying the same file is fine; create refuses, replace works
    assert ctl(etcd_endpoints, "apply", "-f", str(f)).returncode == 0
    res = ctl(etcd_endpoints, "create", "-f", str(f))
    assert res.returncode == 1 and "already exists" in res.stderr
    res = ctl(etcd_endpoints, "create", "-f", str(f), "--skip-exists")
    assert res.returncode == 0
    res = ctl(etcd_endpoints, "replace", "-f", str(f))
    assert res.returncode == 0 and res.stdout == "Successfully replaced 2 resource(s)\n"


def test_stdin_json_nodes_and_weps_and_delete(etcd_endpoints):
    docs = [
        {"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": "k8s-w0"},
         "spec": {"bgp": {"ipv4Address": "172.30.0.11/24", "ipv4IPIPTunnelAddr": "192.168.1.0"}}},
        {"apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
         "metadata": {"name": "k8s--w0-k8s-nginx-eth0", "namespace": "default"},
         "spec": {"orchestrator": "k8s", "node": "k8s-w0", "pod": "nginx", "endpoint": "eth0",
                  "ipNetworks": ["192.168.1.1/32"], "interfaceName": "calic440f455693",
                  "profiles": ["kns.default"]}},
    ]
    res = ctl(etcd_endpoints, "create", "-f", "-", stdin=json.dumps(docs))
    assert res.returncode == 0, res.stderr
    assert res.stdout == "Successfully created 2 resource(s)\n"
    assert ctl(etcd_endpoints, "get", "nodes").stdout.split() == ["NAME", "k8s-w0"]
    assert ctl(etcd_endpoints, "get", "node", "-o", "wide").stdout.split() == [
        "NAME", "ASN", "IPV4", "IPV6", "k8s-w0", "(64512)", "172.30.0.11/24"]
    res = ctl(etcd_endpoints, "get", "workloadEndpoint")
    assert res.stdout.split() == ["WORKLOAD", "NODE", "NETWORKS", "INTERFACE",
                                  "nginx", "k8s-w0", "192.168.1.1/32", "calic440f455693"]
    res = ctl(etcd_endpoints, "get", "wep", "-A")
    assert res.stdout.split()[:5] == ["NAMESPACE", "WORKLOAD", "NODE", "NETWORKS", "INTERFACE"]
    node = json.loads(ctl(etcd_endpoints, "get", "node", "k8s-w0", "-o", "json").stdout)
    assert node["spec"]["bgp"]["ipv4IPIPTunnelAddr"] == "192.168.1.0"

    res = ctl(etcd_endpoints, "delete", "wep", "k8s--w0-k8s-nginx-eth0")
    assert res.returncode == 0 and res.stdout == "Successfully deleted 1 'WorkloadEndpoint' resource(s)\n"
    res = ctl(etcd_endpoints, "delete", "node", "nope")
    assert res.returncode == 1 and "resource does not exist: Node(nope)" in res.stderr
    assert ctl(etcd_endpoints, "delete", "node", "nope", "--skip-not-exists").returncode == 0
    res = ctl(etcd_endpoints, "get", "node", "nope")
    assert res.returncode == 1 and "resource does not exist: Node(nope)" in res.stderr



def test_pod_cidrs_pipeline_in_etcd_mode_fails_in_jq_as_on_calico(etcd_endpoints):
    """In etcd mode nothing writes a Calico Node's status.podCIDRs (only the Kubernetes
    datastore derives it from the Kubernetes Node): calicoctl prints ``status: {}`` (Go's empty
    NodeStatus) and the second seed's jq pipeline stops on the null, exit 5, as on Calico."""
    node = {"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": "k8s-w9"},
            "spec": {"bgp": {"ipv4Address": "172.30.0.19/24"}}}
    assert ctl(etcd_endpoints, "apply", "-f", "-", stdin=json.dumps(node)).returncode == 0
    res = ctl(etcd_endpoints, "get", "node", "k8s-w9", "-o", "yaml")
    assert yaml.safe_load(res.stdout)["status"] == {} and "status: {}" in res.stdout, res.stdout
    listed = ctl(etcd_endpoints, "get", "node", "-o", "json", proc=True)
    assert listed.returncode == 0, listed.stderr
    assert all(n["status"] == {} for n in json.loads(listed.stdout)["items"]), listed.stdout
    jq = subprocess.run([require_tool("jq"), ".items[].status.podCIDRs[]"], input=listed.stdout, capture_output=True,
                        text=True, timeout=10)
    assert jq.returncode == 5 and "Cannot iterate over null" in jq.stderr, (jq.returncode, jq.stderr)
    assert ctl(etcd_endpoints, "delete", "node", "k8s-w9").returncode == 0

BAD_POOLS = [
    ("cidr: 10.0.0.0/33", "IPPool(bad).spec.cidr"),
    ("cidr: not-a-cidr", "IPPool(bad).spec.cidr"),
    ("cidr: 10.1.0.0/16\n  blockSize: 19", "IPPool(bad).spec.blockSize"),
    ("cidr: 192.168.128.0/17", "IPPool(bad).spec.cidr"),
    ("cidr: 10.2.0.0/16\n  blokSize: 26", "spec.blokSize: unknown field"),
]


@pytest.mark.parametrize("spec,field", BAD_POOLS, ids=["cidr", "cidr-text", "blocksize19", "overlap",
                                                       "unknown-field"])
def test_bad_pool_rejected_naming_field_and_nothing_written(etcd_endpoints, tmp_path, spec, field):
    client = Client(etcd_endpoints)
    assert ctl(etcd_endpoints, "apply", "-f", "-", stdin=POOL_AND_BGP).returncode == 0
    before = client.etcd.list("/calico/")[0]
    # a good pool first in the same file: it must not be written either
    f = tmp_path / "bad.yaml"
    f.write_text("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: good\n"
                 "spec:\n  cidr: 10.50.0.0/16\n---\n"
                 f"apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: bad\nspec:\n  {spec}\n")
    for verb in ("apply", "create"):
        res = ctl(etcd_endpoints, verb, "-f", str(f), proc=verb == "apply")
        assert res.returncode == 1
        assert field in res.stderr, res.stderr
        assert res.stdout == ""
    assert client.etcd.list("/calico/")[0] == before


def test_unreachable_etcd_is_a_clear_fast_error():
    t0 = time.monotonic()
    res = ctl(["http://127.0.0.1:9"], "get", "ippools", proc=True)
    assert time.monotonic() - t0 < 5
    assert res.returncode == 1
    assert "cannot reach etcd at http://127.0.0.1:9" in res.stderr
    res = ctl(["http://127.0.0.1:9"], "ipam", "show", proc=True)
    assert res.returncode == 1 and "127.0.0.1:9" in res.stderr
    res = ctl(["http://127.0.0.1:9"], "get", "ippools", env={"DATASTORE_TYPE": "kubernetes"})
    assert res.returncode == 1 and "DATASTORE_TYPE" in res.stderr


def test_bad_command_lines(etcd_endpoints):
    res = ctl(etcd_endpoints, "get", "frobnicators")
    assert res.returncode == 1 and "unknown resource type 'frobnicators'" in res.stderr
    res = ctl(etcd_endpoints, "apply", "-f", "/nonexistent/file.yaml")
    assert res.returncode == 1 and "cannot read /nonexistent/file.yaml" in res.stderr
    res = ctl(etcd_endpoints, "apply", "-f", "-", stdin="kind: [unclosed\n")
    assert res.returncode == 1 and "invalid YAML" in res.stderr
    res = ctl(etcd_endpoints, "get", "ippools", "-o", "xml")
    assert res.returncode == 1 and "output format" in res.stderr
    res = ctl(etcd_endpoints, "frobnicate", proc=True)
    assert res.returncode == 1 and "invalid choice" in res.stderr
    res = ctl(etcd_endpoints, "ipam", "show", "--ip=300.1.1.1")
    assert res.returncode == 1 and "invalid IP address" in res.stderr


def test_ipam_show_check_release(etcd_endpoints):
    assert ctl(etcd_endpoints, "apply", "-f", "-", stdin=POOL_AND_BGP).returncode == 0
    ipam = IPAM(Client(etcd_endpoints))
    tun = ipam.allocate_tunnel_address("k8s-w0")
    pods = ipam.auto_assign(2, "k8s-pod-network.abc", {"node": "k8s-w0", "pod": "nginx",
                                                       "namespace": "default"}, "k8s-w0")
    block = f"{tun}/26"
    res = ctl(etcd_endpoints, "ipam", "show", "--show-blocks", proc=True)
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    sep = "+----------+" + "-" * (len(block) + 2) + "+-----------+------------+--------------+"
    assert lines[0] == sep and lines[2] == sep and lines[-1] == sep
    assert [c.strip() for c in lines[1].split("|")[1:-1]] == [
        "GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"]
    assert lines[1].endswith("|   IPS FREE   |")
    assert [c.strip() for c in lines[3].split("|")[1:-1]] == [
        "IP Pool", "192.168.0.0/16", "65536", "3 (0%)", "65533 (100%)"]
    assert [c.strip() for c in lines[4].split("|")[1:-1]] == ["Block", block, "64", "3 (5%)", "61 (95%)"]
    assert lines[3].split("|")[3] == "     65536 "  # numbers right-aligned under IPS TOTAL

    res = ctl(etcd_endpoints, "get", "ipamblocks")
    assert res.stdout.split() == ["NAME", "CIDR", block.replace(".", "-").replace("/", "-"), block]
    res = ctl(etcd_endpoints, "get", "blockaffinities")
    assert res.stdout.splitlines()[1].split()[1:] == ["k8s-w0", block, "confirmed"]

    res = ctl(etcd_endpoints, "ipam", "show", f"--ip={pods[0]}")
    assert res.stdout.splitlines() == [  # v3.28.1: no Handle ID line
        f"IP {pods[0]} is in use", "Attributes:",
        "  namespace: default", "  node: k8s-w0", "  pod: nginx"]
    res = ctl(etcd_endpoints, "ipam", "show", "--ip=192.168.250.250")
    assert res.stdout == "192.168.250.250 is not assigned\n"
    bare = ipam.auto_assign(1, "no-attrs", {}, "k8s-w0")[0]
    assert ctl(etcd_endpoints, "ipam", "show", f"--ip={bare}").stdout == (
        f"IP {bare} is in use\nNo attributes defined\n")
    ipam.release_by_handle("no-attrs")

    res = ctl(etcd_endpoints, "ipam", "check")
    assert res.returncode == 0
    assert "Found 1 IPAM blocks." in res.stdout and "Found 1 active IP pools." in res.stdout
    assert "Found 3 IPs that are allocated in IPAM but not actually in use." in res.stdout
    assert res.stdout.endswith("Check complete; found 3 problems.\n")

    res = ctl(etcd_endpoints, "ipam", "release", f"--ip={pods[0]}")
    assert res.returncode == 0 and res.stdout == f"Successfully released IP address {pods[0]}\n"
    res = ctl(etcd_endpoints, "ipam", "release", f"--ip={pods[0]}")
    assert res.returncode == 1 and "is not assigned" in res.stderr
    ipam.release_by_handle("k8s-pod-network.abc")
    ipam.release_tunnel_address("k8s-w0")
    res = ctl(etcd_endpoints, "ipam", "check")
    assert res.stdout.endswith("Check complete; found 0 problems.\n")

    res = ctl(etcd_endpoints, "ipam", "configure", "--strictaffinity=true")
    assert res.returncode == 0
    assert "| StrictAffinity     | true  |" in ctl(etcd_endpoints, "ipam", "show", "--show-configuration").stdout


def test_node_status_without_a_speaker(tmp_path):
    res = ctl(["http://127.0.0.1:9"], "node", "status", "--ctl-socket", str(tmp_path / "bird.ctl"),
              proc=True)
    assert res.returncode == 1 and res.stdout == "Calico process is not running.\n"


def test_get_delete_by_file_and_config_file(etcd_endpoints, tmp_path):
    f = tmp_path / "pool.yaml"
    f.write_text(POOL_AND_BGP)
    cfg = tmp_path / "calicoctl.cfg"
    cfg.write_text("apiVersion: projectcalico.org/v3\nkind: CalicoAPIConfig\nmetadata: {}\n"
                   f"spec:\n  datastoreType: etcdv3\n  etcdEndpoints: {etcd_endpoints[0]}\n")
    # the config file wins over a wrong ETCD_ENDPOINTS
    res = ctl(["http://127.0.0.1:9"], "apply", "-f", str(f), "--config", str(cfg), proc=True)
    assert res.returncode == 0, res.stderr
    res = ctl(etcd_endpoints, "get", "-f", str(f), "-o", "yaml")
    assert res.returncode == 0
    assert 'resourceVersion: "' in res.stdout  # quoted as calicoctl does
    assert [d["kind"] for d in yaml.safe_load_all(res.stdout)] == ["IPPool", "BGPConfiguration"]
    res = ctl(etcd_endpoints, "delete", "-f", str(f))
    assert res.returncode == 0 and res.stdout == "Successfully deleted 2 resource(s)\n"
    assert ctl(etcd_endpoints, "get", "ippools").stdout.split() == ["NAME", "CIDR", "SELECTOR"]
    res = ctl(etcd_endpoints, "delete", "-f", str(f))
    assert res.returncode == 1 and "resource does not exist" in res.stderr


def test_check_report_and_release_from_report_guards_reused_addresses(etcd_endpoints, tmp_path):
    client = Client(etcd_endpoints)
    pool = ("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: small\n"
            "spec:\n  cidr: 10.77.0.0/28\n  blockSize: 28\n")
    assert ctl(etcd_endpoints, "apply", "-f", "-", stdin=pool).returncode == 0
    ipam = IPAM(client)
    ips = [ipam.auto_assign(1, f"k8s-pod-network.c{i}", {"node": "w0", "pod": f"p{i}", "namespace": "default"},
                            "w0")[0] for i in range(16)]
    report = tmp_path / "report.json"
    res = ctl(etcd_endpoints, "ipam", "check", "--show-problem-ips", "-o", str(report))
    assert "Found 16 IPs that are allocated in IPAM but not actually in use." in res.stdout
    assert f"  {ips[0]} leaked; attrs Main:k8s-pod-network.c0 Extra:namespace=default,node=w0,pod=p0\n" in res.stdout
    doc = json.loads(report.read_text())
    assert doc["allocations"][str(ips[3])][0]["handle"] == "k8s-pod-network.c3"
    assert doc["allocations"][str(ips[3])][0]["inUse"] is False

    # ABA: ips[3] is released and handed to a new pod before the report is acted on
    ipam.release_by_handle("k8s-pod-network.c3")
    assert ipam.auto_assign(1, "k8s-pod-network.new", {"node": "w0"}, "w0") == [ips[3]]

    res = ctl(etcd_endpoints, "ipam", "release", f"--from-report={report}")
    assert res.returncode == 1 and "data store is not locked" in res.stderr
    res = ctl(etcd_endpoints, "ipam", "release", f"--from-report={report}", "--force")
    assert res.returncode == 0, res.stderr
    assert "Released 15 IPs successfully" in res.stdout
    assert "1 addresses marked as leaked in the report had already been cleaned up." in res.stdout
    # the reused address survived; everything else is free
    assert ipam.ip_info(ips[3])["handle_id"] == "k8s-pod-network.new"
    assert [ip for ip in ips if ipam.ip_info(ip)["in_use"]] == [ips[3]]


def test_delete_pool_disables_it_and_releases_its_affinities(etcd_endpoints):
    client = Client(etcd_endpoints)
    pool = ("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: doomed\n"
            "spec:\n  cidr: 10.78.0.0/27\n  blockSize: 28\n")
    assert ctl(etcd_endpoints, "apply", "-f", "-", stdin=pool).returncode == 0
    ipam = IPAM(client)
    kept = ipam.auto_assign(1, "k8s-pod-network.keep", {"node": "w0"}, "w0")[0]
    gone = ipam.auto_assign(1, "k8s-pod-network.gone", {"node": "w1"}, "w1")[0]
    ipam.release_ips([gone])
    res = ctl(etcd_endpoints, "delete", "ippool", "doomed")
    assert res.returncode == 0 and res.stdout == "Successfully deleted 1 'IPPool' resource(s)\n"
    assert client.list("IPPool") == [] and client.list("BlockAffinity") == []
    # the empty block went away; the one still holding an address stays, with no affinity
    assert [(b.cidr, b.affinity) for b in ipam.blocks()] == [(IPv4Network((int(kept), 28), strict=False), None)]
    res = ctl(etcd_endpoints, "ipam", "show", "--show-blocks")
    assert [c.strip() for c in res.stdout.splitlines()[3].split("|")[1:-1]] == [
        "Block", str(IPv4Network((int(kept), 28), strict=False)), "16", "1 (6%)", "15 (94%)"]
    assert ipam.release_by_handle("k8s-pod-network.keep") == [kept]
    assert ipam.blocks() == []


def test_ipam_show_borrowed(etcd_endpoints):
    pool = ("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: one-block\n"
            "spec:\n  cidr: 10.79.0.0/28\n  blockSize: 28\n")
    assert ctl(etcd_endpoints, "apply", "-f", "-", stdin=pool).returncode == 0
    ipam = IPAM(Client(etcd_endpoints))
    ipam.auto_assign(1, "k8s-pod-network.a", {"node": "w0", "pod": "a", "namespace": "default"}, "w0")
    borrowed = ipam.auto_assign(1, "k8s-pod-network.b", {"node": "w1", "pod": "b", "namespace": "ns1"}, "w1")[0]
    lines = ctl(etcd_endpoints, "ipam", "show", "--show-borrowed").stdout.splitlines()
    assert [c.strip() for c in lines[1].split("|")[1:-1]] == [
        "IP", "BORROWING-NODE", "BLOCK", "BLOCK OWNER", "TYPE", "ALLOCATED-TO"]
    assert [c.strip() for c in lines[3].split("|")[1:-1]] == [
        str(borrowed), "w1", "10.79.0.0/28", "w0", "pod", "ns1/b"]
    assert len(lines) == 5
