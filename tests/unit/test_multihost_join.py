"""``calicolab up`` over several machines: the workers on another machine than the control
plane's get their kubeconfigs (what ``kubeadm join`` leaves) before their part starts.

The machines are this one (:class:`LocalHost`, so the controller's real file wait runs in a
real shell), each with a run root under ``tmp_path``; their ``calicolab`` is a stand-in part
(``FAKE_PART``): the control plane's makes the join files as ``kubeadm.init`` would, a bit
after it starts (after removing an earlier lab's leftovers), and the other records how and
when it was started. The real parts run in tests/lab/test_multihost_lab.py.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from testbed.lab import kubeadm, lifecycle
from testbed.lab import state as labstate
from testbed.lab.topology import loads
from testbed.multihost import controller
from testbed.multihost.hosts import LocalHost

pytestmark = pytest.mark.unit

FAKE_PART = r'''
import json, os, pathlib, shutil, sys, time
name, run_dir, *args = sys.argv[1:]
if args[0] != "up":
    sys.exit(0)  # clean: nothing to remove
lab = args[args.index("--name") + 1]
root = pathlib.Path(run_dir) / lab
if name == "ha":  # the control plane's part
    if os.environ.get("FAKE_CP") == "fail":
        print("calicolab: error: etcd on k8s-m not healthy", file=sys.stderr)
        sys.exit(1)
    time.sleep(0.3)  # its supervisor starts; lifecycle.up removes an earlier lab's leftovers
    shutil.rmtree(root, ignore_errors=True)
    time.sleep(0.2)
    for node in ("k8s-m", "k8s-w0", "k8s-w1"):  # kubeadm.init
        for f in ("admin.conf", "kubelet.conf", "pki/ca.crt"):
            p = root / "nodes" / node / "etc-kubernetes" / f
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name("." + p.name + ".tmp")
            tmp.write_text(f"{node} {f} of this lab\n")
            os.replace(tmp, p)
    made = time.time()
    print(f"calicolab: lab {lab} ready", file=sys.stderr)
    (pathlib.Path(run_dir) / "made").write_text(repr(made))
else:
    rec = {"args": args, "started": time.time()}
    if "--join-files" in args:
        path = args[args.index("--join-files") + 1]
        rec["join"] = json.loads(pathlib.Path(path).read_text())
        rec["mode"] = os.stat(path).st_mode & 0o777
    (pathlib.Path(run_dir) / "part.json").write_text(json.dumps(rec))
    print(f"calicolab: lab {lab} ready", file=sys.stderr)
'''

TOPO = """\
name: {lab}
hosts:
  - {{name: ha, address: 198.18.7.10, user: root, key: /k, runDir: {base}/ha}}
  - {{name: hb, address: 198.18.7.11, user: root, key: /k, runDir: {base}/hb}}
segments:
  - {{name: lan0, cidr: 172.30.0.0/24}}
nodes:
  - {{name: k8s-m, role: control-plane, address: 172.30.0.10, segment: lan0, host: ha}}
  - {{name: k8s-w0, address: 172.30.0.11, segment: lan0, host: ha}}
  - {{name: k8s-w1, address: 172.30.0.12, segment: lan0, host: hb}}
calico: {{datastore: etcdv3}}
"""


class FakeMachine(LocalHost):
    """This machine standing in for a lab machine; its ``calicolab`` is ``FAKE_PART``."""

    script = ""

    def calicolab(self, *args: str) -> list[str]:
        return [sys.executable, self.script, self.machine.name, self.machine.run_dir, *args]


@pytest.fixture
def spread(tmp_path, monkeypatch):
    monkeypatch.setattr(labstate, "RUN_ROOT", tmp_path / "record")
    (tmp_path / "record").mkdir()
    script = tmp_path / "fake_part.py"
    script.write_text(FAKE_PART)
    FakeMachine.script = str(script)
    monkeypatch.setattr(controller, "_connect_all",
                        lambda record, ms, progress: {n: FakeMachine(m) for n, m in ms.items()})
    lab = "mhj"
    path = tmp_path / "t.yaml"
    path.write_text(TOPO.format(lab=lab, base=tmp_path))
    for m in ("ha", "hb"):
        (tmp_path / m).mkdir()
    return loads(path.read_text(), file=str(path), base=tmp_path), tmp_path


def test_workers_elsewhere_get_their_join_files_before_their_part_starts(spread):
    topo, base = spread
    # an earlier lab's leftovers on the control plane's machine: not what this lab's workers get
    stale = base / "ha" / topo.name / "nodes" / "k8s-w1" / "etc-kubernetes"
    for f in kubeadm.JOIN_FILES:
        (stale / f).parent.mkdir(parents=True, exist_ok=True)
        (stale / f).write_text("an earlier lab's\n")
        os.utime(stale / f, (time.time() - 100, time.time() - 100))
    lines: list[str] = []
    rec = controller.up(topo, no_cni=True, timeout=30, progress=lines.append)
    assert rec["phase"] == "ready"
    part = json.loads((base / "hb" / "part.json").read_text())
    assert "--join-files" in part["args"], part["args"]
    assert part["join"] == {"k8s-w1": {f: f"k8s-w1 {f} of this lab\n" for f in kubeadm.JOIN_FILES}}
    assert part["mode"] == 0o600  # kubeconfigs hold private keys
    made = float((base / "ha" / "made").read_text())
    assert part["started"] >= made, "hb's part started before the control plane made its files"
    assert "[hb] kubeconfigs of k8s-w1 from ha (kubeadm join)" in lines
    assert not list(Path("/tmp").glob(f"calicolab-{topo.name}-*"))  # the copies are removed


def test_no_worker_part_starts_when_the_control_planes_fails_first(spread, monkeypatch):
    topo, base = spread
    monkeypatch.setenv("FAKE_CP", "fail")
    with pytest.raises(labstate.LabError) as err:
        controller.up(topo, no_cni=True, timeout=30, progress=lambda m: None)
    msg = str(err.value)
    assert "host ha (root@198.18.7.10:22): its part of lab mhj failed to start: etcd on k8s-m" in msg
    assert "host hb (root@198.18.7.11:22): its part was not started: the kubeconfigs of its nodes " \
           "did not come from host ha (root@198.18.7.10:22): its part ended before it made them" in msg
    assert not (base / "hb" / "part.json").exists()


def test_join_files_are_written_checked_and_only_for_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(labstate, "RUN_ROOT", tmp_path)
    state = {"lab": "mhj", "control_plane": "k8s-m",
             "hosts": {"k8s-w1": {"kind": "node"}, "r0": {"kind": "router"}}}
    good = {"k8s-w1": {f: f"{f}\n" for f in kubeadm.JOIN_FILES}}
    assert kubeadm.join(state, good) == ["k8s-w1"]
    etc = kubeadm.etc_kubernetes(state, "k8s-w1")
    assert (etc / "kubelet.conf").read_text() == "kubelet.conf\n"
    assert stat.S_IMODE((etc / "admin.conf").stat().st_mode) == 0o600
    assert stat.S_IMODE((etc / "pki" / "ca.crt").stat().st_mode) == 0o644
    for bad, problem in (({"k8s-m": good["k8s-w1"]}, "'k8s-m', which is not a worker node here"),
                         ({"r0": good["k8s-w1"]}, "'r0', which is not a worker node here"),
                         ({"k8s-w1": {"kubelet.conf": "x"}}, "need admin.conf, kubelet.conf, pki/ca.crt"),
                         ({"k8s-w1": dict(good["k8s-w1"], **{"../x": "y"})}, "got ../x, admin.conf"),
                         ({"k8s-w1": dict(good["k8s-w1"], **{"admin.conf": ""})}, "non-empty text"),
                         ([], "must map each node")):
        with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(".", r"\.")):
            kubeadm.check_join(state, bad)


def test_up_refuses_join_files_outside_a_part_and_bad_ones(tmp_path, monkeypatch):
    state = {"lab": "mhj", "control_plane": "k8s-m", "hosts": {"k8s-w1": {"kind": "node"}}}
    bundle = tmp_path / "j.json"
    bundle.write_text(json.dumps({"k8s-w1": {"kubelet.conf": "x"}}))
    monkeypatch.delenv("CALICOLAB_PART", raising=False)
    with pytest.raises(labstate.LabError, match="--join-files is for one machine's part"):
        lifecycle._read_join_files(state, str(bundle))  # noqa: SLF001
    monkeypatch.setenv("CALICOLAB_PART", "hb")
    with pytest.raises(labstate.LabError, match=f"bad join files {bundle}: join files for 'k8s-w1': need"):
        lifecycle._read_join_files(state, str(bundle))  # noqa: SLF001
    with pytest.raises(labstate.LabError, match=f"cannot read the join files {tmp_path}/nope"):
        lifecycle._read_join_files(state, str(tmp_path / "nope"))  # noqa: SLF001
