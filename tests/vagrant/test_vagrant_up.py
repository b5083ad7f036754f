"""`vagrant up` for real (issue 19): the Vagrantfile's one-VM layout with the box built here.

The box comes from Debian packages (testbed.vagrant.box, debootstrap; cached by its inputs);
libvirt runs the VM under TCG (no usable KVM here), its management network isolated (no
route out), the storage pool, network and domain names unique to the run. The test runs
`vagrant up` (which provisions with scripts/setup.sh --guest, offline), the demo inside,
`vagrant destroy`, and checks that nothing of the run is left: domains, networks, pools,
volumes, qemu/dnsmasq processes, bridges, libvirt's firewall chains and daemons.

A TCG VM takes one of the machine's cores for about 15 minutes: the tier is deselected by
default (pyproject addopts) and runs on its own after the suite (.ci/run):
``pytest -m vagrant``. The timings of each step are printed (and go to the report).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from testbed.vagrant import libvirt
from testbed.vagrant.run import VagrantRun
from tests.support import require, require_root, require_tool

pytestmark = pytest.mark.vagrant


def test_vagrant_up_runs_the_demo_inside_and_destroy_leaves_nothing(tmp_path):
    require_root()
    for tool in ("vagrant", "virsh", "libvirtd", "debootstrap", "qemu-img", "sfdisk"):
        require_tool(tool)
    plugins = os.popen("vagrant plugin list 2>/dev/null").read()
    require(os.path.isdir("/usr/share/rubygems-integration/all/gems") and (
        "vagrant-libvirt" in plugins or any(p.startswith("vagrant-libvirt") for p in os.listdir(
            "/usr/share/rubygems-integration/all/gems"))), "needs vagrant-libvirt (scripts/setup.sh)")
    run = VagrantRun("single", memory=3072, cpus=1, workdir=tmp_path / "run")
    before = run.prepare()
    chains_before = run.firewall_before
    try:
        run.up()
        # the VM: the box's kernel with ipip, no way out of the isolated management network
        facts = run.ssh("calicolab", "uname -r; sudo modprobe ipip && lsmod | grep -c '^ipip'; "
                        "ip route; getent hosts deb.debian.org || echo NO-DNS; "
                        "cat /etc/calicolab/box.json | head -3", timeout=300).stdout
        print(facts)
        assert "default via" not in facts, facts
        assert "NO-DNS" in facts, facts
        res = run.demo(keep=True)
        print(res.stdout[-4000:])
        assert res.returncode == 0, res.stdout[-3000:]
        for flow in ("same-node", "cross-node", "internet", "service"):
            line = next((ln for ln in res.stdout.splitlines() if ln.startswith(flow)), "")
            assert " ok 200 " in line + " ", (flow, line)
        # the VM's own kernel has ipip: every node's agent runs the kernel's tunl0
        st = run.ssh("calicolab", "sudo /vagrant/.venv/bin/calicolab status --json", timeout=600)
        datapaths = {n["name"]: n["datapath"] for n in json.loads(st.stdout[st.stdout.index("{"):])["nodes"]}
        run.ssh("calicolab", "sudo /vagrant/.venv/bin/calicolab down", timeout=600)
        assert datapaths == {"k8s-m": "kernel", "k8s-w0": "kernel", "k8s-w1": "kernel"}, datapaths
    finally:
        removed = run.destroy()
        after = libvirt.inventory()
        left = after.minus(before)
        chains = libvirt.firewall_chains()
        run.stop_daemons()
        print("removed:", removed)
        print("timings:", json.dumps(run.timings))
        (tmp_path / "timings.json").write_text(json.dumps(run.timings))
    assert left == {}, left
    assert chains == chains_before, (chains, chains_before)
    assert not any(p.startswith("qemu ") for p in after.processes)
    shutil.rmtree(tmp_path / "run", ignore_errors=True)
