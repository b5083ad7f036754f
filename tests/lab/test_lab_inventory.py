"""Issue 20 in a running lab: settings calicolab does not implement are warned about by
calicoctl, logged by every calico-node when they come into effect and when they go, and
listed per node by `calicolab status`; a dead calico-node makes status say BROKEN."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from testbed.lab import state as labstate
from testbed.lab.clean import clean_lab
from testbed.poll import wait_for
from tests.lab.lab_helpers import SMALL, write_topology
from tests.lab.test_cli_lab import cli
from tests.support import require_root, require_tool, unique

pytestmark = pytest.mark.lab

UNIMPLEMENTED = """\
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec: {bpfEnabled: true}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: v6}
spec: {cidr: "fd00:10::/64", blockSize: 122}
"""
BPF = "FelixConfiguration(default) spec.bpfEnabled=true"
V6 = "IPPool(v6) spec.cidr=fd00:10::/64"


@pytest.fixture
def lab(tmp_path):
    require_root()
    require_tool("mnexec")
    require_tool("etcd")
    name = unique("inv")
    try:
        # etcd mode: the test kills calico-node, the lab service `up` starts in etcd mode (in the
        # Kubernetes datastore it is a DaemonSet pod, restarted by its kubelet)
        res = cli("up", str(write_topology(tmp_path, name, SMALL)), "--datastore", "etcdv3", timeout=180)
        assert res.returncode == 0, res.stderr
        yield name
    finally:
        clean_lab(name)


def _status(name: str) -> tuple[int, dict]:
    res = cli("status", "--lab", name, "--json")
    return res.returncode, json.loads(res.stdout) if res.stdout else {}


def _settings(info: dict) -> dict[str, list[str]]:
    return {n["name"]: [u["setting"] for u in n.get("unimplemented") or []] for n in info.get("nodes", [])}


def test_unimplemented_settings_are_warned_logged_and_listed_then_broken_is_broken(lab, tmp_path):
    f = tmp_path / "unimplemented.yaml"
    f.write_text(UNIMPLEMENTED)
    res = cli("calicoctl", "--lab", lab, "apply", "-f", str(f))
    assert res.returncode == 0 and "Successfully applied 2 resource(s)" in res.stdout, res.stderr
    assert f"Warning: {BPF} has no effect in calicolab" in res.stderr
    assert f"Warning: {V6} has no effect in calicolab" in res.stderr

    info = wait_for(lambda: _status(lab)[1], lambda i: all(BPF in s and V6 in s for s in _settings(i).values())
                    and len(_settings(i)) == 2, timeout=30, what="both nodes listing bpfEnabled and the v6 pool")
    human = cli("--lab", lab, "status")
    assert human.returncode == 0, human.stdout + human.stderr
    assert "in effect but not implemented in calicolab" in human.stdout
    for node in ("m", "w0"):
        assert any(line.split()[:2] == [node, "FelixConfiguration(default)"] for line in human.stdout.splitlines())
    assert info["health"]["state"] in ("healthy", "not ready")

    # each calico-node logged it once when it came into effect, and logs when it goes
    st = labstate.read_state(lab)
    log = Path(st["services"]["w0/calico-node"]["log"])
    assert log.read_text().count(f"now in effect, not implemented: {BPF}") == 1
    f.write_text(UNIMPLEMENTED.replace("{bpfEnabled: true}", "{bpfEnabled: false}"))
    assert cli("calicoctl", "--lab", lab, "apply", "-f", str(f)).returncode == 0
    wait_for(log.read_text, lambda t: f"no longer in effect: {BPF}" in t, timeout=30,
             what="w0's calico-node logging that bpfEnabled is no longer in effect")
    assert BPF not in _settings(_status(lab)[1])["w0"]

    # a dead calico-node is reported as broken (exit 1), naming the node, while the supervisor
    # restarts it: the first restart comes after 1 s, the second after a 10 s back-off
    os.kill(st["services"]["w0/calico-node"]["pid"], signal.SIGKILL)
    wait_for(lambda: labstate.read_state(lab)["services"]["w0/calico-node"],
             lambda r: r.get("restarts") == 1 and labstate.pid_alive(r["pid"], r["start"]), timeout=15,
             what="w0's calico-node restarted once")
    os.kill(labstate.read_state(lab)["services"]["w0/calico-node"]["pid"], signal.SIGKILL)
    # (for up to 0.2 s before the supervisor records the exit, it reads "exited, restart pending")
    code, info = wait_for(lambda: _status(lab), lambda r: r[0] == 1 and any(
        p.startswith("w0: calico-node(restarting in ") for p in r[1].get("health", {}).get("problems", [])), timeout=30,
        what="status exit 1 naming w0's calico-node restarting")
    assert info["health"]["state"] == "broken"
    human = cli("--lab", lab, "status")
    assert human.returncode == 1 and "status: BROKEN: w0: calico-node(restarting in " in human.stdout, human.stdout
