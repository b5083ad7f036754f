"""csi.tigera.io over its real socket: the driver (``python -m agent.csi``) in a private mount
namespace of its own (``unshare --mount``: its tmpfs and bind mounts stay out of the
machine's), its node-driver-registrar, and Felix's policy-sync binder, each driven with a
real gRPC client (grpcio, the messages of agent.protowire). The pod's view of a published
volume is read through the driver's mount namespace (``/proc/<pid>/root``): the files the
driver wrote and the policy-sync socket Felix serves, answered over that path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

from agent import rpc
from agent.csi import messages as m
from agent.felix.model import Endpoint
from agent.felix.policysync import SYNC_REQUEST, TO_DATAPLANE, PolicySync, endpoint_update
from agent.protowire import EMPTY
from testbed.poll import wait_for
from tests.support import require_root, require_tool

pytestmark = pytest.mark.netns

POD_INFO = {"csi.storage.k8s.io/pod.name": "web", "csi.storage.k8s.io/pod.namespace": "default",
            "csi.storage.k8s.io/pod.uid": "u-1", "csi.storage.k8s.io/serviceAccount.name": "default",
            "csi.storage.k8s.io/ephemeral": "true"}


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.fixture
def driver() -> Iterator[dict]:
    """The driver serving ``<d>/plugins/csi.tigera.io/csi.sock``, nodeagent home ``<d>/na``."""
    require_root()
    require_tool("unshare")
    d = tempfile.mkdtemp(prefix="csi-", dir="/tmp")  # short: unix socket paths are <= 107 bytes
    cfg = os.path.join(d, "nodeagent.json")
    with open(cfg, "w") as f:
        json.dump({"nodeagent_management_home": os.path.join(d, "na")}, f)
    sock = os.path.join(d, "plugins", "csi.tigera.io", "csi.sock")
    log = open(os.path.join(d, "driver.log"), "w")
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-m", "agent.csi",
                             "--nodeid=k8s-w0", f"--endpoint={sock}", "--loglevel=info", f"--config={cfg}"],
                            stdout=log, stderr=subprocess.STDOUT)
    procs = [proc]
    try:
        wait_for(lambda: os.path.exists(sock) or proc.poll() is not None, lambda ok: ok, timeout=15,
                 what="the driver's socket")
        assert proc.poll() is None, open(os.path.join(d, "driver.log")).read()
        yield {"dir": d, "sock": sock, "pid": proc.pid, "procs": procs, "home": os.path.join(d, "na")}
    finally:
        for p in procs:
            _stop(p)
        log.close()
        shutil.rmtree(d, ignore_errors=True)  # the driver's mounts died with its namespace


def _call(sock: str, method: str, req, resp, value=None) -> dict:
    ch = rpc.channel(sock)
    try:
        return rpc.call(ch, method, req, resp, value)
    finally:
        ch.close()


def test_identity_and_node_services_answer_as_calicos_driver(driver):
    s = driver["sock"]
    assert _call(s, "/csi.v1.Identity/GetPluginInfo", EMPTY, m.GET_PLUGIN_INFO_RESPONSE) == {
        "name": "csi.tigera.io", "vendor_version": "0.1", "manifest": {}}
    assert _call(s, "/csi.v1.Identity/GetPluginCapabilities", EMPTY, m.GET_PLUGIN_CAPABILITIES_RESPONSE) == {
        "capabilities": []}
    assert _call(s, "/csi.v1.Identity/Probe", EMPTY, m.PROBE_RESPONSE) == {}
    assert _call(s, "/csi.v1.Node/NodeGetInfo", EMPTY, m.NODE_GET_INFO_RESPONSE)["node_id"] == "k8s-w0"
    assert _call(s, "/csi.v1.Node/NodeGetCapabilities", EMPTY, m.NODE_GET_CAPABILITIES_RESPONSE) == {
        "capabilities": []}
    with pytest.raises(rpc.RpcError) as e:
        _call(s, "/csi.v1.Node/NodePublishVolume", m.NODE_PUBLISH_VOLUME_REQUEST, EMPTY, {"volume_id": "v"})
    assert (e.value.code, e.value.details) == ("INVALID_ARGUMENT", "Target path not provided")
    with pytest.raises(rpc.RpcError) as e:  # no Controller service, as Calico's driver
        _call(s, "/csi.v1.Controller/CreateVolume", EMPTY, EMPTY)
    assert e.value.code == "UNIMPLEMENTED"


def test_publish_shows_felixs_policy_sync_socket_at_the_target_then_unpublish_cleans(driver):
    d, pid, home = driver["dir"], driver["pid"], driver["home"]
    target = os.path.join(d, "pods", "u-1", "volumes", "kubernetes.io~csi", "felix", "mount")
    vol = "csi-0123"
    req = {"volume_id": vol, "target_path": target, "volume_context": POD_INFO,
           "volume_capability": {"mount": {}, "access_mode": {"mode": 1}}}
    assert _call(driver["sock"], "/csi.v1.Node/NodePublishVolume", m.NODE_PUBLISH_VOLUME_REQUEST, EMPTY, req) == {}
    with open(f"/proc/{pid}/mountinfo") as f:
        mounts = {ln.split()[4]: ln.split(" - ")[1].split()[0] for ln in f}
    assert mounts.get(target) == "tmpfs" and os.path.join(target, "nodeagent") in mounts, mounts
    assert target not in open("/proc/self/mountinfo").read()  # the machine's mount table is untouched
    with open(os.path.join(home, "creds", vol + ".json")) as f:
        assert json.load(f) == {"UID": "u-1", "Workload": "web", "Namespace": "default", "ServiceAccount": "default"}

    # Felix's binder serves the workload on <home>/mount/<vol>/socket; the pod reaches it
    # through its volume: <target>/nodeagent/socket in the driver's mount namespace
    sync = PolicySync()
    ep = Endpoint(key="default/k8s-web-eth0", iface="cali0ef24b1f1a1", ips=("192.168.9.5/32",),
                  profiles=("kns.default",), workload="default/web")
    sync.update({"default/web": endpoint_update(ep, ["default/default.allow-web"], [])})
    sync.configure(home)
    try:
        sock = os.path.join(home, "mount", vol, "socket")

        def mode() -> str | None:
            return oct(os.stat(sock).st_mode & 0o777) if os.path.exists(sock) else None

        # listening first, then opened to every user (0777) as the binder does
        wait_for(mode, lambda m: m == "0o777", timeout=10, what="Felix's policy-sync socket, mode 0777")
        via_pod = f"/proc/{pid}/root{target}/nodeagent/socket"
        ch = rpc.channel(via_pod)
        try:
            stream = rpc.stream(ch, "/felix.PolicySync/Sync", SYNC_REQUEST, TO_DATAPLANE, timeout=10)
            first, second = next(stream), next(stream)
            assert first["workload_endpoint_update"]["id"] == {
                "orchestrator_id": "k8s", "workload_id": "default/web", "endpoint_id": "eth0"}
            assert first["workload_endpoint_update"]["endpoint"]["ipv4_nets"] == ["192.168.9.5/32"]
            assert first["workload_endpoint_update"]["endpoint"]["tiers"][0]["ingress_policies"] == [
                "default/default.allow-web"]
            assert "in_sync" in second
            sync.update({})  # the endpoint goes away
            assert next(stream)["workload_endpoint_remove"]["id"]["workload_id"] == "default/web"
            stream.cancel()
        finally:
            ch.close()
    finally:
        sync.close()

    assert _call(driver["sock"], "/csi.v1.Node/NodeUnpublishVolume", m.NODE_UNPUBLISH_VOLUME_REQUEST, EMPTY,
                 {"volume_id": vol, "target_path": target}) == {}
    with open(f"/proc/{pid}/mountinfo") as f:
        assert target not in f.read()
    assert not os.path.exists(os.path.join(home, "mount", vol))
    assert not os.path.exists(os.path.join(home, "creds", vol + ".json"))


def test_registrar_serves_the_kubelets_registration_socket(driver):
    d = driver["dir"]
    reg_dir = os.path.join(d, "registry")
    os.makedirs(reg_dir)
    log = open(os.path.join(d, "registrar.log"), "w")
    reg = subprocess.Popen([sys.executable, "-m", "agent.csi.registrar", f"--csi-address={driver['sock']}",
                            "--kubelet-registration-path=/var/lib/kubelet/plugins/csi.tigera.io/csi.sock",
                            f"--plugin-registration-path={reg_dir}", "--v=5"], stdout=log, stderr=subprocess.STDOUT)
    driver["procs"].append(reg)
    try:
        sock = wait_for(lambda: os.path.join(reg_dir, "csi.tigera.io-reg.sock"), os.path.exists, timeout=15,
                        what="the registration socket")
        assert _call(sock, "/pluginregistration.Registration/GetInfo", EMPTY, m.PLUGIN_INFO) == {
            "type": "CSIPlugin", "name": "csi.tigera.io",
            "endpoint": "/var/lib/kubelet/plugins/csi.tigera.io/csi.sock", "supported_versions": ["1.0.0"]}
        _call(sock, "/pluginregistration.Registration/NotifyRegistrationStatus", m.REGISTRATION_STATUS, EMPTY,
              {"plugin_registered": True})
        assert reg.poll() is None
        # a refusal ends the registrar (its container restarts), as the upstream one
        _call(sock, "/pluginregistration.Registration/NotifyRegistrationStatus", m.REGISTRATION_STATUS, EMPTY,
              {"plugin_registered": False, "error": "no such thing"})
        assert reg.wait(timeout=10) == 1
        assert not os.path.exists(sock)
    finally:
        _stop(reg)
        log.close()
    assert "Registration process failed with error: no such thing" in open(os.path.join(d, "registrar.log")).read()
