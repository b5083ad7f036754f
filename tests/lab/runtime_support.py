"""Shared body of the runtime lab tests (issue 17): one 2-node lab per runtime whose pods are
containers of that runtime, driven as a user drives it (``calicolab kubectl``/``exec``).

:func:`runtime_lab` runs the walkthrough (NotReady -> install -> Ready, the workloads, the
flows under tcpdump) on ``topologies/containers.yaml`` with the runtime; the tests then look
inside the pods, at the runtime's own client in the nodes, and at bad input.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from testbed.lab import state as labstate
from testbed.poll import wait_for
from testbed.walkthrough import REPO, Walkthrough
from tests.lab.lab_helpers import walkthrough_lab
from tests.support import require_tool, unique

TOPOLOGY = REPO / "topologies" / "containers.yaml"
RUNTIMES = ("containerd", "docker")
#: the runtime labs run the etcd datastore, as before the Kubernetes one became the default:
#: their subject is the pod runtime (containerd, Docker), not the datastore
DATASTORE = "etcdv3"


def runtime_lab(request, runtime: str) -> Iterator[Walkthrough]:
    """The module's lab (a generator for a fixture): walkthrough flows already run."""
    for tool in ("containerd", "ctr", "runc", "containerd-shim-runc-v2"):
        require_tool(tool)
    if runtime == "docker":
        require_tool("dockerd")
    with walkthrough_lab(request, "rt", flows=True, what=f"{runtime} lab", topology=TOPOLOGY,
                         runtime=runtime, datastore=DATASTORE) as w:
        yield w


def pod(w: Walkthrough, name: str) -> dict:
    """``kubectl get pod NAME -o json``."""
    return json.loads(w.kubectl("get", "pod", name, "-o", "json"))


def pod_pids(p: dict) -> dict[str, int]:
    """container -> PID as the kubelet annotated it."""
    return json.loads(p["metadata"]["annotations"]["calicolab.io/pids"])


def in_pod(w: Walkthrough, name: str, *cmd: str) -> str:
    """``calicolab exec default/NAME -- CMD`` (stdout+stderr)."""
    res = w.in_pod(name, *cmd, check=False)
    return res.stdout + res.stderr


def check_inside_pod(w: Walkthrough, name: str) -> None:
    """What a user sees inside a pod: only its processes, its name, its image's nginx, cluster
    DNS in its /etc/resolv.conf answering it."""
    ps = in_pod(w, name, "ps", "aux")
    rows = [r for r in ps.splitlines()[1:] if r.strip()]
    cmds = [r.split(None, 2)[2] for r in rows]  # busybox ps: PID USER COMMAND
    assert any(c.startswith("nginx: master process") for c in cmds), ps
    others = [c for c in cmds if not c.startswith(("nginx:", "ps aux"))]
    assert others == [], f"ps in pod {name} shows processes that are not the pod's:\n{ps}"
    assert rows[0].split()[0] == "1", f"the pod's first process is not PID 1:\n{ps}"
    assert in_pod(w, name, "cat", "/etc/hostname").strip() == name
    assert in_pod(w, name, "hostname").strip() == name
    image = pod(w, name)["status"]["containerStatuses"][0]["image"]
    tag = image.rsplit(":", 1)[1]
    version = in_pod(w, name, "nginx", "-v")
    assert f"nginx version: nginx/{tag}" in version, (image, version)
    # the kubelet's /etc/resolv.conf names cluster DNS, and CoreDNS answers the container
    resolv = in_pod(w, name, "cat", "/etc/resolv.conf")
    assert "nameserver 10.96.0.10" in resolv and "search default.svc.cluster.local" in resolv, resolv
    svc = json.loads(w.kubectl("get", "service", "kubernetes", "-o", "json"))["spec"]["clusterIP"]
    answer = wait_for(lambda: in_pod(w, name, "nslookup", "kubernetes.default.svc.cluster.local"),
                      lambda out: svc in out, timeout=20, what="cluster DNS answering from the pod")
    assert "10.96.0.10" in answer, answer
    root = in_pod(w, name, "ls", "/")
    assert "work" not in root.split() and "home" not in root.split(), f"/ is not the image's rootfs: {root}"


def check_access_log(w: Walkthrough, name: str, client: str) -> None:
    """A curl from ``client`` shows up as an access-log line in ``kubectl logs``."""
    target = w.pods[name]
    probe = f"/?probe={unique('p')}"
    assert w.in_pod(client, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                    f"http://{target.ip}{probe}", check=False).stdout == "200"
    src = w.pods[client].ip
    logs = wait_for(lambda: w.kubectl("logs", name), lambda out: probe in out, timeout=10,
                    what=f"the access-log line of {probe} in kubectl logs {name}")
    line = next(ln for ln in logs.splitlines() if probe in ln)
    assert line.startswith(f"{src} - - [") and f'"GET {probe} HTTP/1.1" 200' in line, line


def apply(w: Walkthrough, text: str) -> None:
    """``kubectl apply -f -``."""
    w.kubectl("apply", "-f", "-", input=text)


def pod_yaml(name: str, node: str, image: str, extra: str = "", restart: str = "Always",
             command: str | None = None, annotations: str | None = None) -> str:
    """A one-container pod pinned to ``node``."""
    cmd = f"\n    command: {command}" if command else ""
    ann = f"\n  annotations: {annotations}" if annotations else ""
    return (f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}{ann}\nspec:\n  nodeName: {node}\n"
            f"  restartPolicy: {restart}\n  containers:\n  - name: main\n    image: {image}{cmd}\n{extra}")


def container_state(w: Walkthrough, name: str) -> dict:
    """The first container status of pod ``name`` ({} while there is none)."""
    st = pod(w, name).get("status") or {}
    return (st.get("containerStatuses") or [{}])[0]


def delete_and_wait(w: Walkthrough, *names: str) -> None:
    """``kubectl delete pod`` and wait until they are gone."""
    w.kubectl("delete", "pod", *names, "--grace-period=1", "--wait=false", check=False)
    wait_for(lambda: json.loads(w.kubectl("get", "pods", "-o", "json"))["items"],
             lambda items: not {i["metadata"]["name"] for i in items} & set(names), timeout=30,
             what=f"pods {names} deleted")


def node_sandboxes(w: Walkthrough, node: str, runtime: str) -> list[str]:
    """The pod containers the node's runtime holds (ids/names)."""
    if runtime == "docker":
        return w.in_node(node, "docker", "ps", "-a", "--format", "{{.Names}}").split()
    return w.in_node(node, "ctr", "-n", "k8s.io", "containers", "ls", "-q").split()


def node_netns(w: Walkthrough, node: str) -> list[str]:
    """``ip netns list`` in the node."""
    return [ln.split()[0] for ln in w.in_node(node, "ip", "netns", "list").splitlines() if ln.strip()]


def check_bad_input(w: Walkthrough, runtime: str) -> None:
    """An unknown image, a command that exits 1, a sandbox whose CNI ADD fails: the pod says
    so as Kubernetes does, and nothing is left on the node afterwards."""
    node = "k8s-w1"
    before_ctrs = set(node_sandboxes(w, node, runtime))
    before_ns = set(node_netns(w, node))
    apply(w, pod_yaml("bad-image", node, "no-such-registry.example/nope:1"))
    apply(w, pod_yaml("crash", node, "busybox", command='[sh, -c, "echo crashing; exit 1"]'))
    apply(w, pod_yaml("fail-once", node, "busybox", restart="Never", command='[sh, -c, "exit 1"]'))
    apply(w, pod_yaml("no-ip", node, "busybox", annotations="{cni.projectcalico.org/ipAddrs: '[\"10.99.0.1\"]'}"))

    cs = wait_for(lambda: container_state(w, "bad-image"),
                  lambda c: (c.get("state") or {}).get("waiting", {}).get("reason") in ("ImagePullBackOff", "ErrImagePull"),
                  timeout=30, what="bad-image waiting in ImagePullBackOff")
    assert "no-such-registry.example/nope:1" in cs["state"]["waiting"]["message"]

    cs = wait_for(lambda: container_state(w, "crash"),
                  lambda c: c.get("restartCount", 0) >= 1
                  and (c.get("state") or {}).get("waiting", {}).get("reason") == "CrashLoopBackOff",
                  timeout=40, what="crash restarted, then waiting in CrashLoopBackOff")
    assert "crashing" in w.kubectl("logs", "crash")

    st = wait_for(lambda: pod(w, "fail-once").get("status") or {}, lambda s: s.get("phase") == "Failed",
                  timeout=30, what="fail-once Failed")
    term = st["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 1 and term["reason"] == "Error", term

    st = wait_for(lambda: pod(w, "no-ip").get("status") or {},
                  lambda s: "Failed to create pod sandbox" in (s.get("message") or ""), timeout=30,
                  what="no-ip reports the failed sandbox")
    assert "failed to setup network for sandbox" in st["message"] and not st.get("podIP"), st

    delete_and_wait(w, "bad-image", "crash", "fail-once", "no-ip")
    wait_for(lambda: set(node_sandboxes(w, node, runtime)), lambda now: now <= before_ctrs, timeout=20,
             what=f"the bad pods' containers gone from {node}")
    assert set(node_netns(w, node)) <= before_ns
    weps = json.loads(w.calicoctl("get", "workloadendpoints", "-o", "json"))
    pods = {i["spec"]["pod"] for i in (weps.get("items", []) if isinstance(weps, dict) else weps)}
    assert not pods & {"bad-image", "crash", "fail-once", "no-ip"}, pods
    blocks = w.calicoctl("ipam", "show", "--show-blocks")
    assert "10.99.0.1" not in blocks


def runtime_processes(lab: str) -> list[str]:
    """Processes whose command line names the lab's runtime dir (daemons, shims)."""
    rdir = str(labstate.state_dir(lab) / "rt")
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if rdir in cmd:
                out.append(f"{entry.name}: {cmd[:120]}")
    return out


def cgroup_leftovers(lab: str) -> list[str]:
    """``calicolab-<lab>`` cgroups left in any hierarchy."""
    from testbed.lab.clean import _runtime_cgroup_dirs

    return [str(d) for d in _runtime_cgroup_dirs(lab)]


def check_nothing_left(lab: str, container_pids: list[int]) -> None:
    """No runtime process, container process, mount, cgroup or directory of the lab."""
    assert runtime_processes(lab) == []
    from testbed.k8s.runtime import alive

    # killed ones may stay zombies for a moment, until init reaps them
    wait_for(lambda: [p for p in container_pids if alive(p)], lambda left: left == [], timeout=5,
             what="no container process running")
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(labstate.state_dir(lab)) not in mounts
    assert cgroup_leftovers(lab) == []
    assert not labstate.state_dir(lab).exists()


def container_pids(w: Walkthrough) -> list[int]:
    """The init PIDs of every pod container in the lab (from the annotations)."""
    items = json.loads(w.kubectl("get", "pods", "-A", "-o", "json"))["items"]
    pids = []
    for p in items:
        ann = p["metadata"].get("annotations") or {}
        rts = json.loads(ann.get("calicolab.io/runtime") or "{}")
        pids += [pid for c, pid in json.loads(ann.get("calicolab.io/pids") or "{}").items() if rts.get(c) != "netns"]
    return pids


def kill9_everything(lab: str) -> int:
    """``kill -9`` of the supervisor and every process of the lab's services, runtime
    daemons and shims; returns how many were killed."""
    st = labstate.read_state(lab) or {}
    victims = []
    for rec in [st.get("supervisor") or {}, *(st.get("services") or {}).values()]:
        if labstate.pid_alive(rec.get("pid"), rec.get("start")):
            victims.append(rec["pid"])
    victims += [int(r.split(":")[0]) for r in runtime_processes(lab)]
    for pid in set(victims):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(0.2)
    return len(set(victims))


def clean(lab: str) -> None:
    """``calicolab clean LAB``."""
    res = subprocess.run([sys.executable, "-m", "testbed.cli", "clean", lab],
                         capture_output=True, text=True, cwd=str(REPO))
    assert res.returncode == 0, res.stderr



DUO = """\
apiVersion: v1
kind: Pod
metadata: {name: duo}
spec:
  nodeName: k8s-w1
  containers:
  - name: web
    image: "docker.io/library/nginx:latest"
    startupProbe: {exec: {command: [ps]}, periodSeconds: 1}
    readinessProbe: {httpGet: {path: /, port: 80}, periodSeconds: 1}
  - {name: side, image: "busybox:1.36", command: [sleep, "3600"]}
"""


def check_two_containers(w: Walkthrough, runtime: str) -> None:
    """A two-container pod: each container has its own PID namespace and rootfs, both share
    the pod's network and hostname; ``exec -c`` picks one; ``describe`` names what runs. The
    web container is started by an exec startup probe run in the container and ready by an
    httpGet readiness probe from the node."""
    apply(w, DUO)
    st = wait_for(lambda: pod(w, "duo").get("status") or {},
                  lambda s: s.get("phase") == "Running" and all(c.get("ready") for c in s.get("containerStatuses") or [{}]),
                  timeout=60, what="pod duo Running with both containers ready")
    assert all(c.get("started") for c in st["containerStatuses"]), st
    ps = w.kubectl("exec", "duo", "-c", "side", "--", "ps", "aux")
    cmds = [r.split(None, 2)[2] for r in ps.splitlines()[1:] if r.strip()]
    assert cmds[0] == "sleep 3600" and all(c in ("sleep 3600", "ps aux") for c in cmds), ps
    assert "nginx" in w.kubectl("exec", "duo", "-c", "web", "--", "ps", "aux")
    assert w.kubectl("exec", "duo", "-c", "side", "--", "hostname").strip() == "duo"
    page = w.kubectl("exec", "duo", "-c", "side", "--", "wget", "-qO-", "http://127.0.0.1/")
    assert "Welcome to nginx!" in page
    desc = w.kubectl("describe", "pod", "duo")
    scheme = "docker://" if runtime == "docker" else "containerd://"
    assert len(re.findall(rf"Container ID:\s+{scheme}[0-9a-f]{{64}}", desc)) == 2, desc
    assert re.search(r"Image ID:\s+docker.io/calicolab/nginx@sha256:", desc), desc
    assert re.search(r"Image ID:\s+docker.io/calicolab/busybox@sha256:", desc), desc
    delete_and_wait(w, "duo")


def check_pod_is_a_containerd_container(w: Walkthrough) -> None:
    """`ctr -n k8s.io task list` / `containers ls` in the node show the pod's real tasks:
    the PID the pod runs as, its image, and its pause sandbox."""
    p = pod(w, "k8s-w1")
    pid = pod_pids(p)["nginx"]
    cid = p["status"]["containerStatuses"][0]["containerID"]
    assert cid.startswith("containerd://")
    tasks = w.in_node("k8s-w1", "ctr", "-n", "k8s.io", "task", "list")
    rows = {r.split()[0]: r.split()[1:] for r in tasks.splitlines()[1:]}
    assert rows[cid.removeprefix("containerd://")] == [str(pid), "RUNNING"], tasks
    ctrs = w.in_node("k8s-w1", "ctr", "-n", "k8s.io", "containers", "ls")
    images = {r.split()[0]: r.split()[1] for r in ctrs.splitlines()[1:]}
    assert images[cid.removeprefix("containerd://")].startswith("docker.io/calicolab/nginx:"), ctrs
    assert any(i.startswith("docker.io/calicolab/pause:") for i in images.values()), ctrs
    # the pod's sandbox: a pause task whose netns the nginx container shares
    sandbox = [t for t, (tpid, _) in rows.items() if t != cid.removeprefix("containerd://")
               and images.get(t, "").startswith("docker.io/calicolab/pause:")
               and w.in_node("k8s-w1", "ip", "netns", "identify", tpid).strip()
               == p["metadata"]["annotations"]["calicolab.io/netns"]]
    assert len(sandbox) == 1, tasks
    # the pod's netns is the sandbox's, named as containerd's CRI names it
    ns = p["metadata"]["annotations"]["calicolab.io/netns"]
    assert ns.startswith("cni-") and ns in node_netns(w, "k8s-w1")
    assert w.in_node("k8s-w1", "ip", "netns", "identify", str(pid)).strip() == ns


def check_pod_is_a_docker_container(w: Walkthrough) -> None:
    """`docker ps` in the node lists the pod's sandbox and container under cri-dockerd's
    names, the container's PID is the pod's, and it was started with network none."""
    p = pod(w, "k8s-w1")
    uid = p["metadata"]["uid"]
    pid = pod_pids(p)["nginx"]
    cid = p["status"]["containerStatuses"][0]["containerID"]
    assert cid.startswith("docker://")
    names = [n for n in w.in_node("k8s-w1", "docker", "ps", "--format", "{{.Names}}").split() if uid in n]
    assert sorted(names) == sorted([f"k8s_nginx_k8s-w1_default_{uid}_0", f"k8s_POD_k8s-w1_default_{uid}_0"]), names
    fmt = "{{.State.Pid}} {{.HostConfig.NetworkMode}}"
    inspect = w.in_node("k8s-w1", "docker", "inspect", "-f", fmt, cid.removeprefix("docker://")).split()
    sandbox = w.in_node("k8s-w1", "docker", "inspect", "-f", fmt, f"k8s_POD_k8s-w1_default_{uid}_0").split()
    assert inspect[0] == str(pid) and inspect[1].startswith("container:"), inspect
    assert sandbox[1] == "none", sandbox
    # dockerd made no bridge and no NAT rules in the node: the pod is wired by Calico's CNI only
    assert "docker0" not in w.in_node("k8s-w1", "ip", "link")
    assert "DOCKER" not in w.in_node("k8s-w1", "iptables-save")


def end_lab(w: Walkthrough, how: str) -> None:
    """End lab ``w`` (it runs containers and runtime processes) by ``down`` or by ``kill -9``
    of every lab process then ``calicolab clean`` (``how``: "down" or "kill9"); nothing of it
    may be left."""
    from testbed.lab import lifecycle as labmod

    pids = container_pids(w)
    assert pids and runtime_processes(w.lab)
    if how == "down":
        labmod.down(w.lab, progress=lambda m: None)
    else:
        assert kill9_everything(w.lab) > 0
        clean(w.lab)
    check_nothing_left(w.lab, pids)


def check_cleanup(runtime: str, how: str) -> None:
    """A fresh lab with one running pod, ended by ``down`` or by ``kill -9`` of every process
    then ``calicolab clean``: nothing of it is left."""
    from testbed.lab import lifecycle as labmod
    from testbed.lab.clean import clean_lab

    w = Walkthrough(unique("rc"), topology=TOPOLOGY, runtime=runtime, progress=lambda m: None,
                    datastore=DATASTORE)
    try:
        labmod.up(TOPOLOGY, name=w.lab, runtime=runtime, progress=lambda m: None, datastore=DATASTORE)
        apply(w, pod_yaml("one", "k8s-w1", "nginx"))
        wait_for(lambda: pod(w, "one").get("status") or {}, lambda s: s.get("phase") == "Running", timeout=60,
                 what="pod one Running")
        end_lab(w, how)
    finally:
        if labstate.read_state(w.lab) is not None:
            clean_lab(w.lab)
