"""A real runtime drives the plugin: containerd + runc + ctr from Debian.

containerd runs with its own root, state and socket inside a node netns (entered with
``nsenter --net``, which keeps the mount namespace), the image is a busybox tarball
built here from busybox-static (no registry), and ``ctr run --rm --cni`` runs in a
private mount namespace where /etc/cni/net.d and /opt/cni/bin are the test's dirs.
The container's eth0 must carry the address our IPAM assigned, with portmap chained
after calico, and afterwards no veth, allocation or WorkloadEndpoint may be left.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from testbed.poll import wait_for
from tests.netns import cni_support
from tests.netns.cni_support import ETCD, CniNode
from tests.support import require, require_tool, unique

pytestmark = pytest.mark.interop
cni_node = cni_support.cni_node  # fixture
node = cni_support.node  # fixture

IMAGE = "docker.io/calicolab/busybox:cni-test"


def build_busybox_archive(path: Path) -> None:
    """A docker-archive tarball (manifest.json + config + one layer) holding busybox-static."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        for d in ("bin", "proc", "sys", "dev", "etc", "tmp"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add("/bin/busybox", arcname="bin/busybox")
        for applet in ("sh", "ip", "cat", "sleep"):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [IMAGE.removeprefix("docker.io/")],
                            "Layers": ["layer.tar"]}]).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in (("layer.tar", layer_bytes), (config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def containerd(node: CniNode, tmp_path_factory):
    """containerd in the node netns with private root/state/socket; stopped by PID."""
    require_tool("containerd")
    require_tool("runc")
    require_tool("ctr")
    require_tool("unshare")
    require(os.path.isdir("/etc/cni/net.d") and os.path.isdir("/opt/cni/bin"),
            "needs /etc/cni/net.d and /opt/cni/bin to exist as mount points")
    tmp = tmp_path_factory.mktemp("ctrd")
    sock = str(tmp / "c.sock")
    cfg = tmp / "config.toml"
    cfg.write_text(
        "version = 2\n"
        f'root = "{tmp}/root"\nstate = "{tmp}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sock}"\n'
        f'[ttrpc]\n  address = "{sock}.ttrpc"\n'
        f'[debug]\n  address = "{tmp}/debug.sock"\n'
        '[plugins]\n'
        f'  [plugins."io.containerd.internal.v1.opt"]\n    path = "{tmp}/opt"\n'
    )
    log = open(tmp / "containerd.log", "ab")
    proc = subprocess.Popen(["nsenter", f"--net={node.nspath}", "containerd", "--config", str(cfg)],
                            stdout=log, stderr=log)
    try:
        def ready() -> str:
            return subprocess.run(["ctr", "-a", sock, "version"], capture_output=True, text=True).stdout

        wait_for(ready, lambda out: "Server:" in out, timeout=20, what="containerd answering on its socket")
        yield sock, tmp
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_ctr_run_cni_gets_ip_from_calico_ipam_and_leaves_nothing(node, containerd):
    sock, tmp = containerd
    archive = tmp / "busybox.tar"
    build_busybox_archive(archive)
    imp = subprocess.run(["ctr", "-a", sock, "-n", "k8s.io", "images", "import", str(archive)],
                         capture_output=True, text=True, timeout=120)
    assert imp.returncode == 0, imp.stderr
    netd, bindir = tmp / "net.d", tmp / "bin"
    netd.mkdir()
    bindir.mkdir()
    for name in os.listdir(node.bin_dir):
        os.symlink(os.readlink(node.bin_dir / name), bindir / name)
    cni_log = tmp / "cni.log"
    (netd / "10-calico.conflist").write_text(json.dumps({
        "name": "k8s-pod-network", "cniVersion": "1.0.0",
        "plugins": [
            {"type": "calico", "log_level": "info", "log_file_path": str(cni_log), "datastore_type": "etcdv3",
             "etcd_endpoints": ETCD, "nodename": "k8s-w0", "nodename_file": str(node.nodename_file), "mtu": 0,
             "ipam": {"type": "calico-ipam"},
             "policy": {"type": "k8s"}, "ipam_lock_file": str(tmp / "ipam.lock")},
            {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}},
        ],
    }))
    cid = unique("ctr")
    script = ('mount --bind "$1" /etc/cni/net.d && mount --bind "$2" /opt/cni/bin && '
              'exec nsenter --net="$3" ctr -a "$4" -n k8s.io run --rm --cni "$5" "$6" '
              'sh -c \'o=$(ip -4 addr show eth0; ip route); echo "$o"\'')
    env = dict(os.environ, CALICO_CNI_SOCKET="none")
    started = time.monotonic()
    run = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "_",
                          str(netd), str(bindir), node.nspath, sock, IMAGE, cid],
                         capture_output=True, text=True, timeout=120, env=env)
    elapsed = time.monotonic() - started
    log = cni_log.read_text() if cni_log.exists() else ""
    assert run.returncode == 0, f"ctr run failed ({elapsed:.1f}s): {run.stdout} {run.stderr}\nCNI log:\n{log}"
    m = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/32 .*eth0", run.stdout)
    assert m, run.stdout
    ip = m.group(1)
    # (printed with one write: once in CI the route lines were missing from ctr's output, whether
    # a second write was lost or the routes were missing is not known; the assertion shows it)
    assert "default via 169.254.1.1 dev eth0" in run.stdout and "169.254.1.1 dev eth0 scope link" in run.stdout, \
        run.stdout
    # the address is the one calico-ipam assigned to this container's handle, from our pool
    assigned = re.findall(r"IPAM assigned (\S+) to handle k8s-pod-network\.(\S+) on k8s-w0", log)
    assert [a for a, handle in assigned if cid in handle] == [ip], log
    assert re.search(rf"calico DEL .*IPAM released \['{re.escape(ip)}'\]", log), log
    # nothing is left: no veth, no allocation, no WorkloadEndpoint
    assert "cali" not in node.ip("link")
    from ipam import IPAM

    with node.client() as c:
        assert [str(i) for b in IPAM(c).blocks() for i, _ in b.allocated()] == []
        assert c.list("WorkloadEndpoint") == []
        affinities = c.etcd.list("/calico/ipam/v2/host/k8s-w0/")[0]
    assert affinities, "the node should keep its affine block"
