"""Pure logic of the container runtimes (issue 17): image names, ctr output, cri-dockerd names,
the topology's ``runtime``, kubectl's view of a container."""


import pytest

from testbed.k8s import containerd, cri, dockerrt, imagebuild
from testbed.k8s.kubelet import parse_args
from testbed.k8s.kubeletapi import decode_docker_log, exec_command
from testbed.k8s.runtimes import make_runtime
from testbed.lab.topology import TopologyError, loads

pytestmark = pytest.mark.unit

TOPO = """\
name: t
{runtime}segments: [{{name: lan0, cidr: 172.30.0.0/24}}]
nodes: [{{name: k8s-w0, role: control-plane, address: 172.30.0.11, segment: lan0}}]
"""


def test_topology_runtime_field_and_override():
    assert loads(TOPO.format(runtime="")).runtime == "netns"
    assert loads(TOPO.format(runtime="runtime: containerd\n")).runtime == "containerd"
    assert loads(TOPO.format(runtime="runtime: containerd\n"), runtime="docker").runtime == "docker"
    with pytest.raises(TopologyError, match=r"runtime.*'cri-o' is not one of netns, containerd, docker"):
        loads(TOPO.format(runtime="runtime: cri-o\n"))
    with pytest.raises(TopologyError, match=r"container runtime 'podman' is not implemented"):
        loads(TOPO.format(runtime=""), runtime="podman")


def test_kubelet_rejects_a_runtime_it_does_not_build(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--node", "n", "--container-runtime", "cri-o"])
    assert "container runtime 'cri-o' is not implemented in calicolab" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--node", "n", "--container-runtime", "containerd"])
    assert "needs --runtime-dir" in capsys.readouterr().err
    with pytest.raises(cri.UnknownRuntime, match="'rkt'"):
        make_runtime("rkt", "/x", "lab", "n")
    assert make_runtime("netns", None, "lab", "n") is None


@pytest.mark.parametrize("image,key", [
    ("nginx", "nginx"), ("nginx:1.25", "nginx"), ("docker.io/library/nginx:latest", "nginx"),
    ("docker.io/nginx@sha256:" + "0" * 64, "nginx"), ("busybox", "busybox"), ("busybox:1.36", "busybox"),
    ("nicolaka/netshoot", "tools"), ("registry.k8s.io/pause:3.9", "pause"), ("calicolab/tools:1", "tools"),
])
def test_manifest_image_names_map_to_built_images(image, key):
    assert imagebuild.spec_for(image) is imagebuild.SPECS[key]


@pytest.mark.parametrize("image", ["redis", "httpd", "quay.io/nginx/other", "calicolab/nope"])
def test_unknown_images_have_no_built_image(image):
    assert imagebuild.spec_for(image) is None


def test_debian_versions_become_tags():
    assert imagebuild.tag_of_version("1:1.35.0-4+deb12u1+b1") == "1.35.0"
    assert imagebuild.tag_of_version("1.22.1-9+deb12u11") == "1.22.1"
    assert imagebuild.tag_of_version("7.88.1") == "7.88.1"


def test_nginx_image_config_logs_to_stdout_and_stops_with_sigquit():
    spec = imagebuild.SPECS["nginx"]
    cfg = imagebuild.image_config(spec, "sha256:ab")
    assert cfg["config"]["Cmd"] == ["nginx", "-g", "daemon off;"]
    assert cfg["config"]["ExposedPorts"] == {"80/tcp": {}}
    assert cfg["config"]["StopSignal"] == "SIGQUIT"
    assert cfg["rootfs"]["diff_ids"] == ["sha256:ab"]
    conf = spec.files["etc/nginx/nginx.conf"]
    assert "access_log /dev/stdout" in conf and "error_log /dev/stderr" in conf


def test_containerd_config_keeps_everything_under_the_node_dir():
    text = containerd.config_toml("/run/calicolab/l/rt/n/containerd")
    for line in ('root = "/run/calicolab/l/rt/n/containerd/root"',
                 'state = "/run/calicolab/l/rt/n/containerd/state"',
                 'address = "/run/calicolab/l/rt/n/containerd/containerd.sock"',
                 'disabled_plugins = ["io.containerd.grpc.v1.cri"]'):
        assert line in text
    assert "/var/lib/containerd" not in text and "/run/containerd" not in text


def test_ctr_task_list_and_exit_codes_parse():
    out = "TASK    PID    STATUS    \nsb1     520    RUNNING\nc2      676    STOPPED\n"
    tasks = containerd.parse_tasks(out)
    assert tasks["sb1"].pid == 520 and tasks["sb1"].status == "RUNNING"
    assert tasks["c2"].status == "STOPPED"
    assert containerd.parse_exit('time="x" level=warning msg="task c2 exit with non-zero exit code 3"\n') == 3
    assert containerd.parse_exit("") == 0


def test_cri_dockerd_names_and_labels():
    assert dockerrt.container_name("nginx", "web", "default", "u-1", 2) == "k8s_nginx_web_default_u-1_2"
    assert dockerrt.container_name("POD", "web", "default", "u-1", 0) == "k8s_POD_web_default_u-1_0"
    from testbed.k8s.runtime import PodState

    st = PodState(uid="u-1", namespace="default", name="web", sandbox_id="s", netns="")
    assert cri.pod_labels(st)["io.cri-containerd.kind"] == "sandbox"
    labels = cri.pod_labels(st, "nginx")
    assert labels["io.kubernetes.container.name"] == "nginx" and labels["io.kubernetes.pod.uid"] == "u-1"


def test_command_and_args_override_the_image():
    assert cri.container_argv(None, None) == []
    assert cri.container_argv(["sh", "-c"], ["exit 1"]) == ["sh", "-c", "exit 1"]
    assert cri.container_argv(None, ["sleep", "1"]) == ["sleep", "1"]


def test_pod_etc_files():
    files = cri.etc_files("web", "192.168.1.5", "nameserver 9.9.9.9\n")
    assert files["hostname"] == "web\n"
    assert "192.168.1.5\tweb\n" in files["hosts"] and "127.0.0.1\tlocalhost" in files["hosts"]
    assert files["resolv.conf"] == "nameserver 9.9.9.9\n"


def test_exec_enters_every_namespace_of_a_container():
    argv = exec_command("containerd", 1, ["PATH=/bin"], ["ps", "aux"])
    assert argv == ["nsenter", "-t", "1", "-a", "--", "env", "-i", "PATH=/bin", "ps", "aux"]
    assert exec_command("docker", 1, [], ["ps"])[:5] == ["nsenter", "-t", "1", "-a", "--"]
    assert exec_command("netns", 1, [], ["ps"]) == ["nsenter", "-t", "1", "-n", "-m", "-w", "--", "env", "-i", "ps"]


def test_docker_json_logs_decode_to_the_container_output():
    data = (b'{"log":"line 1\\n","stream":"stdout","time":"t"}\n'
            b'{"log":"err\\n","stream":"stderr","time":"t"}\n{"log":"par')
    assert decode_docker_log(data) == (b"line 1\nerr\n", b'{"log":"par')
    assert decode_docker_log(b'not json\n') == (b"", b"")
