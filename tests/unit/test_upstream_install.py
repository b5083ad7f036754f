"""Calico's own calico.yaml as calicolab runs it, pure: every container and init container
maps to a calicolab program by image repository and command; the programs the init
containers run (install-cni, upgrade-ipam, calico-node -init) and calico-node's probe flags;
the kubelet's init-container status and envFrom."""

from __future__ import annotations

import json
import types

import pytest
import yaml

from agent import nodeflags
from testbed.apiserver import validation
from testbed.k8s import images
from testbed.k8s.podstatus import ContainerInfo, pod_status
from tests.support import upstream_manifest

pytestmark = pytest.mark.unit


def _upstream_docs() -> list[dict]:
    with open(upstream_manifest("calico.yaml")) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def test_every_upstream_container_maps_to_a_program():
    docs = _upstream_docs()
    seen, probes = {}, {}
    for d in docs:
        if d["kind"] not in ("DaemonSet", "Deployment"):
            continue
        spec = d["spec"]["template"]["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            assert images.known(c["image"]) and images.is_component(c["image"]), c["image"]
            argv = images.resolve(c["image"], c.get("command"), c.get("args"), "/tmp/x").argv
            seen[c["name"]] = argv
            for field in ("readinessProbe", "livenessProbe"):
                if (c.get(field) or {}).get("exec"):
                    probes[(c["name"], field)] = images.exec_command(c["image"], c[field]["exec"]["command"], "/tmp/x")
    assert seen["upgrade-ipam"][-2:] == ["-m", "cni.upgrade"]
    assert seen["install-cni"][-2:] == ["-m", "agent.installcni"]
    assert seen["mount-bpffs"][0].endswith("calico-node") and seen["mount-bpffs"][1:] == ["-init", "-best-effort"]
    assert seen["calico-node"][0].endswith("calico-node") and len(seen["calico-node"]) == 1
    assert seen["calico-kube-controllers"][-4:] == ["-m", "agent.kubecontrollers", "--status-file",
                                                    "/tmp/x/status/status.json"]
    # the probes' commands run the project's programs (the image's binaries), as kubectl exec does
    assert probes[("calico-node", "readinessProbe")][0].endswith("calico-node")
    assert probes[("calico-node", "readinessProbe")][1:] == ["-felix-ready", "-bird-ready"]
    assert probes[("calico-node", "livenessProbe")][1:] == ["-felix-live", "-bird-live"]
    assert probes[("calico-kube-controllers", "readinessProbe")][1:] == [
        "-m", "agent.kubecontrollers.checkstatus", "--file", "/tmp/x/status/status.json", "-r"]
    assert probes[("calico-kube-controllers", "livenessProbe")][-1] == "-l"


@pytest.mark.parametrize("image", ["docker.io/calico/cni:v3.28.1", "quay.io/calico/cni:v3.27.0",
                                   "registry.example:5000/calico/cni@sha256:" + "0" * 64, "calico/cni"])
def test_cni_image_by_repository_whatever_registry_and_tag(image):
    assert images.resolve(image, ["/opt/cni/bin/install"], None, "/t").argv[-1] == "agent.installcni"
    assert images.resolve(image, None, None, "/t").argv[-1] == "agent.installcni"  # the image's entrypoint


def test_commands_calicolab_does_not_provide_are_refused_by_name():
    with pytest.raises(ValueError, match=r"'/opt/cni/bin/calico' is not available in calicolab's calico/cni"):
        images.resolve("calico/cni:v3.28.1", ["/opt/cni/bin/calico"], None, "/t")
    with pytest.raises(ValueError, match=r"'/bin/sh' is not available in calicolab's calico/node"):
        images.resolve("calico/node:v3.28.1", ["/bin/sh"], ["-c", "true"], "/t")


def test_upstream_objects_pass_the_api_servers_validation():
    for d in _upstream_docs():
        validation.default(d)
        assert validation.validate(d) == [], (d["kind"], d["metadata"]["name"])


def test_node_init_checks_bpffs_and_mounts_nothing(caplog):
    caplog.set_level("INFO")
    assert nodeflags.node_init(False, {"/sys/fs/bpf": "bpf"}) == 0
    assert nodeflags.node_init(True, {}) == 0  # -best-effort: said, not fatal
    assert "BPF filesystem is not mounted at /sys/fs/bpf" in caplog.text
    assert nodeflags.node_init(False, {"/sys/fs/bpf": "tmpfs"}) == 1
    assert "cgroup2 mount at /run/calico/cgroup is not made" in caplog.text


def test_calico_node_flags(capsys, monkeypatch):
    assert nodeflags.is_calico_flags(["-felix-ready"]) and not nodeflags.is_calico_flags(["--startup-only"])
    assert nodeflags.main(["-bogus"]) == 2
    assert "flag provided but not defined: -bogus" in capsys.readouterr().err
    assert nodeflags.main(["-confd"]) == 2
    assert "-confd is Calico's but not provided" in capsys.readouterr().err
    answers = {"/liveness": (200, b""), "/readiness": (503, b""),
               "/status": (200, json.dumps({"bgp": {"running": True, "peers": [
                   {"name": "Mesh_172_30_0_11", "state": "up", "bgp_state": "Established"},
                   {"name": "Mesh_172_30_0_12", "state": "start", "bgp_state": "Connect"}]}}).encode())}
    monkeypatch.setattr(nodeflags, "_health", lambda env, path: answers[path])
    assert nodeflags.main(["-felix-live", "-bird-live"], env={}) == 0
    assert nodeflags.main(["-felix-ready", "-bird-ready"], env={}) == 1
    assert "Felix is not ready: /readiness answered 503" in capsys.readouterr().err
    answers["/readiness"] = (200, b"")
    assert nodeflags.main(["-felix-ready", "-bird-ready"], env={}) == 1
    assert "BGP not established with Mesh_172_30_0_12" in capsys.readouterr().err
    answers["/status"] = (200, json.dumps({"bgp": {"running": True, "peers": [
        {"name": "Mesh_172_30_0_11", "state": "up", "bgp_state": "Established"}]}}).encode())
    assert nodeflags.main(["-felix-ready", "-bird-ready"], env={}) == 0
    assert nodeflags.main(["-shutdown"]) == 0


def test_upgrade_ipam_as_calicos(tmp_path):
    from cni import upgrade

    d = tmp_path / "k8s-pod-network"
    assert upgrade.migrate(str(d)) == (0, "host-local IPAM data dir not found; no migration necessary, "
                                          "successfully exiting...")
    d.mkdir()
    (d / "lock").write_text("")
    (d / "last_reserved_ip.0").write_text("10.0.0.3")
    assert upgrade.migrate(str(d))[0] == 0 and not d.exists()  # empty: removed, as Calico's
    d.mkdir()
    (d / "10.244.1.7").write_text("abc\neth0")
    code, msg = upgrade.migrate(str(d))
    assert code == 1 and "not implemented by calicolab" in msg and "10.244.1.7" in msg
    assert (d / "10.244.1.7").exists()  # nothing changed


def test_install_cni_writes_under_the_host_mount(tmp_path):
    """calico.yaml's install-cni: files go under /host (here tmp), the conflist names the node's paths."""
    from agent.installcni import install_cni

    kubeconfig = tmp_path / "admin.conf"
    kubeconfig.write_text(json.dumps({"apiVersion": "v1", "kind": "Config", "clusters": []}))
    bins = tmp_path / "src"
    bins.mkdir()
    for name in ("calico", "calico-ipam"):
        (bins / name).write_text("#!/bin/sh\n")
    template = yaml.safe_load(open(upstream_manifest("calico.yaml")).read().split("kind: ConfigMap", 1)[1]
                              .split("\n---", 1)[0].split("\n", 1)[1])["data"]["cni_network_config"]
    written = install_cni("k8s-w0", [], {"CNI_NETWORK_CONFIG": template, "CNI_MTU": "0",
                                         "KUBECONFIG": str(kubeconfig)}, bin_source=str(bins),
                          host_root=str(tmp_path / "host"), conf_name="10-calico.conflist")
    net = tmp_path / "host" / "etc" / "cni" / "net.d"
    assert str(net / "10-calico.conflist") in written and (net / "calico-kubeconfig").exists()
    conf = json.loads((net / "10-calico.conflist").read_text())
    plugin = conf["plugins"][0]
    assert plugin["datastore_type"] == "kubernetes" and plugin["nodename"] == "k8s-w0"
    assert plugin["kubernetes"]["kubeconfig"] == "/etc/cni/net.d/calico-kubeconfig"
    assert (tmp_path / "host" / "opt" / "cni" / "bin" / "calico").is_symlink()


def test_pod_status_while_init_containers_run():
    pod = {"spec": {"containers": [{"name": "calico-node", "image": "calico/node"}],
                    "initContainers": [{"name": "install-cni", "image": "calico/cni"},
                                       {"name": "mount-bpffs", "image": "calico/node"}]}}
    main = [ContainerInfo("calico-node", "calico/node", waiting_reason="PodInitializing")]
    init = [ContainerInfo("install-cni", "calico/cni", exit_code=1, finished_at="t", restart_count=1),
            ContainerInfo("mount-bpffs", "calico/node", waiting_reason="PodInitializing")]
    st = pod_status(pod, main, "10.0.0.1", ["10.0.0.1"], "now", init=init)
    assert st["phase"] == "Pending"
    cond = {c["type"]: c for c in st["conditions"]}
    assert cond["Initialized"]["status"] == "False"
    assert cond["Initialized"]["reason"] == "ContainersNotInitialized"
    assert cond["Initialized"]["message"] == "containers with incomplete status: [install-cni mount-bpffs]"
    assert st["initContainerStatuses"][0]["state"]["terminated"]["reason"] == "Error"  # kubectl: Init:Error
    done = [ContainerInfo(i.name, i.image, exit_code=0, finished_at="t") for i in init]
    running = [ContainerInfo("calico-node", "calico/node", running=True, ready=True, started_at="t")]
    st = pod_status(pod, running, "10.0.0.1", ["10.0.0.1"], "now", init=done)
    assert st["phase"] == "Running" and {c["type"]: c["status"] for c in st["conditions"]}["Initialized"] == "True"
    assert [s["state"]["terminated"]["reason"] for s in st["initContainerStatuses"]] == ["Completed", "Completed"]


def test_kubelet_env_from():
    """envFrom: every key (with the prefix), env wins; a missing optional source is skipped,
    a missing required one is an error naming it."""
    from testbed.k8s.kubelet import Kubelet
    from testbed.k8s.volumes import VolumeError

    objs = {("ConfigMap", "kubernetes-services-endpoint"): {"data": {"KUBERNETES_SERVICE_HOST": "172.30.0.10",
                                                                      "KUBERNETES_SERVICE_PORT": "6443"}},
            ("Secret", "s"): {"data": {"K": "dmFsdWU="}}}
    fake = types.SimpleNamespace(cluster=types.SimpleNamespace(fetch=lambda kind, name, ns: objs.get((kind, name))),
                                 node="k8s-w0", node_ip="10.0.0.1")
    fake._pod_read = lambda uid, kind, name, ns: fake.cluster.fetch(kind, name, ns)  # no per-pod memo here
    pod = {"metadata": {"namespace": "kube-system", "name": "p"}, "spec": {"nodeName": "k8s-w0"}}
    c = {"envFrom": [{"configMapRef": {"name": "kubernetes-services-endpoint", "optional": True}},
                     {"configMapRef": {"name": "absent", "optional": True}},
                     {"secretRef": {"name": "s"}, "prefix": "X_"}],
         "env": [{"name": "KUBERNETES_SERVICE_PORT", "value": "443"}]}
    env = Kubelet._container_env(fake, pod, c)
    assert env["KUBERNETES_SERVICE_HOST"] == "172.30.0.10" and env["KUBERNETES_SERVICE_PORT"] == "443"
    assert env["X_K"] == "value"
    with pytest.raises(VolumeError, match='configmap "absent" not found'):
        Kubelet._container_env(fake, pod, {"envFrom": [{"configMapRef": {"name": "absent"}}]})


def test_install_cni_container_main(tmp_path, monkeypatch, caplog):
    """``/opt/cni/bin/install`` as the init container runs it: env as calico.yaml sets it
    (KUBERNETES_NODE_NAME, CNI_CONF_NAME, SLEEP=false; here the template from
    CNI_NETWORK_CONFIG_FILE); a setting it does not implement is refused by name; the node's
    directory must be mounted at /host/etc/cni/net.d."""
    from agent import installcni

    caplog.set_level("INFO")
    host = tmp_path / "host"
    (host / "etc" / "cni" / "net.d").mkdir(parents=True)
    kubeconfig = tmp_path / "admin.conf"
    kubeconfig.write_text(json.dumps({"apiVersion": "v1", "kind": "Config", "clusters": []}))
    template = tmp_path / "conflist.tmpl"
    template.write_text(installcni.KDD_NETWORK_CONFIG)
    monkeypatch.setattr(installcni, "HOST_ROOT", str(host))
    for key in ("CNI_NETWORK_CONFIG", "CNI_NET_DIR", "CNI_BIN_DIR", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {"KUBERNETES_NODE_NAME": "k8s-w1", "CNI_CONF_NAME": "10-calico.conflist", "SLEEP": "false",
                       "CNI_NETWORK_CONFIG_FILE": str(template), "KUBECONFIG": str(kubeconfig),
                       "CNI_MTU": "1440"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(installcni, "_mounted", lambda path: False)
    assert installcni.main([]) == 1
    assert f"{host}/etc/cni/net.d is not mounted" in caplog.text
    monkeypatch.setattr(installcni, "_mounted", lambda path: path == f"{host}/etc/cni/net.d")
    monkeypatch.setenv("SKIP_CNI_BINARIES", "bandwidth")
    assert installcni.main([]) == 1
    assert "SKIP_CNI_BINARIES='bandwidth' is not implemented" in caplog.text
    monkeypatch.delenv("SKIP_CNI_BINARIES")
    assert installcni.main([]) == 0  # SLEEP=false: returns once done
    conf = json.loads((host / "etc" / "cni" / "net.d" / "10-calico.conflist").read_text())
    assert conf["plugins"][0]["nodename"] == "k8s-w1" and conf["plugins"][0]["mtu"] == 1440
    assert (host / "opt" / "cni" / "bin" / "calico").is_symlink()
    assert "Done configuring CNI.  Sleep= False" in caplog.text


def test_install_cni_flags():
    """``calicolab install-cni`` installs by manifest by default; ``--manifest`` alone is the
    project's manifest, ``--manifest FILE`` a file as it is; with --operator it is refused."""
    from testbed import cli

    p = cli.build_parser()
    assert p.parse_args(["install-cni"]).manifest is None
    assert p.parse_args(["install-cni", "--manifest"]).manifest == ""
    assert p.parse_args(["install-cni", "--manifest", "calico.yaml"]).manifest == "calico.yaml"
    assert cli.main(["install-cni", "--manifest", "x.yaml", "--operator"]) == cli.EXIT_FAIL
