"""`vagrant up` for real (issue 19): the Vagrantfile's one-VM layout with the box built here.

The box comes from Debian packages (testbed.vagrant.box, debootstrap; cached by its inputs);
libvirt runs the VM under TCG (no usable KVM here), its management network isolated (no
``<forward>``: no route out), the storage pool, network and domain names unique to the run.
The test runs `vagrant up` (which provisions with scripts/setup.sh --guest, offline), the
demo inside, `vagrant destroy`, and checks that nothing of the run is left: domains,
networks, pools, volumes, qemu/dnsmasq processes, bridges, libvirt's firewall chains and
daemons; and that `vagrant destroy` itself removed the domain and the networks.

A TCG VM takes one of the machine's cores for about 10 minutes: the tier is deselected by
default (pyproject addopts) and runs on its own: ``pytest -m vagrant``. The timings of each
step are printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from testbed.vagrant import libvirt
from testbed.vagrant.run import VagrantRun, run_names
from tests.support import require, require_root, require_tool

pytestmark = [pytest.mark.vagrant, pytest.mark.timeout(3600)]


def _bridge_ports(bridge: str) -> list[str]:
    brif = Path("/sys/class/net") / bridge / "brif"
    return sorted(p.name for p in brif.iterdir()) if brif.is_dir() else []


def test_vagrant_up_runs_the_demo_inside_and_destroy_leaves_nothing(tmp_path):
    require_root()
    for tool in ("vagrant", "virsh", "libvirtd", "debootstrap", "qemu-img", "sfdisk"):
        require_tool(tool)
    gems = "/usr/share/rubygems-integration/all/gems"
    require(os.path.isdir(gems) and any(p.startswith("vagrant-libvirt") for p in os.listdir(gems)),
            "needs vagrant-libvirt (scripts/setup.sh)")
    forward_before = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    run = VagrantRun("single", memory=3072, cpus=1, workdir=tmp_path / "run")
    before = None
    try:
        before = run.prepare()
        chains_before = run.firewall_before
        run.up()
        # the management network: isolated (no <forward>), its bridge holds only the VM's tap
        mgmt = run_names(run.tag)[1][0]
        xml = libvirt.network_xml(mgmt)
        assert "<forward" not in xml, xml
        bridge = re.search(r"<bridge name='([^']+)'", xml).group(1)
        ports = _bridge_ports(bridge)
        assert ports and all(p.startswith("vnet") for p in ports), (bridge, ports)
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
        after = libvirt.inventory() if before is not None else None
        chains = libvirt.firewall_chains()
        run.stop_daemons()
        print("removed:", removed, "reaped before the run:", run.reaped)
        print("timings:", json.dumps(run.timings))
    assert run.left_by_vagrant == [], f"vagrant destroy left {run.left_by_vagrant}"
    assert after.minus(before) == {}, after.minus(before)
    assert chains == chains_before, (chains, chains_before)
    assert not any(p.startswith("qemu ") for p in after.processes)
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == forward_before
    assert not run.record.exists()
    shutil.rmtree(tmp_path / "run", ignore_errors=True)
