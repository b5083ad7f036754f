"""kubectl logs / exec / port-forward through the API server to a kubelet endpoint.

The kubelet endpoint is the project's (testbed/apiserver/kubeletserver.py) with a backend
that runs real local processes: exec runs the command on this machine (with CONTAINER
and POD in its environment, so ``-c`` is observable), logs are files, port-forward
connects to a real TCP server on loopback.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from testbed.apiserver.kubeletserver import Backend
from testbed.poll import wait_for

pytestmark = pytest.mark.etcd


class LocalBackend(Backend):
    """Containers as local processes and log files (no attach: that answer is tested too)."""

    def __init__(self, logdir: Path, port_map: dict[int, int]):
        self.logdir, self.port_map = logdir, port_map

    def log_file(self, ns: str, pod: str, container: str, previous: bool = False) -> Path:
        return self.logdir / f"{ns}_{pod}_{container}{'.previous' if previous else ''}.log"

    async def logs(self, ns, pod, container, opts):
        from testbed.apiserver.kubeletserver import NotFoundError

        path = self.log_file(ns, pod, container, opts.previous)
        if not path.exists():
            if opts.previous:
                raise ValueError(f'previous terminated container "{container}" in pod "{pod}" not found')
            raise NotFoundError(f"container {container} of pod {ns}/{pod} is not on this node")
        data = path.read_bytes()
        lines = data.splitlines(keepends=True)
        if opts.tail_lines is not None:
            lines = lines[-opts.tail_lines:] if opts.tail_lines > 0 else []
        for line in lines:
            yield (b"2026-01-01T00:00:00.000000000Z " + line) if opts.timestamps else line
        if not opts.follow:
            return
        # follow from what was read, not from the size after the yields: a line written while
        # the first lines were on their way would otherwise be skipped (and `logs -f` wait forever)
        pos = len(data)
        while True:
            await asyncio.sleep(0.05)
            size = path.stat().st_size
            if size > pos:
                with open(path, "rb") as f:
                    f.seek(pos)
                    yield f.read(size - pos)
                pos = size

    async def exec_argv(self, ns, pod, container, command, tty):
        return ["env", f"CONTAINER={container}", f"POD={pod}", *command]

    async def open_port(self, ns, pod, port):
        return await asyncio.open_connection("127.0.0.1", self.port_map.get(port, port))


@pytest.fixture(scope="module")
def kubelet(apiserver, tmp_path_factory):
    """A kubelet endpoint on loopback, a Node pointing at it and pods bound to the Node."""
    from testbed.apiserver import pki
    from testbed.apiserver.kubeletserver import KubeletServer
    from tests.support import free_port

    d = tmp_path_factory.mktemp("kubelet")
    crt, key = pki.issue_client(apiserver.pki, "system:node:kl-node", ("system:nodes",))
    (d / "kubelet.crt").write_bytes(crt)
    (d / "kubelet.key").write_bytes(key)
    echo = socket.socket()
    echo.bind(("127.0.0.1", 0))
    echo.listen(8)
    echo_port = echo.getsockname()[1]

    def serve_echo() -> None:
        while True:
            try:
                conn, _ = echo.accept()
            except OSError:
                return
            with conn:
                data = conn.recv(65536)
                conn.sendall(b"echo:" + data)

    threading.Thread(target=serve_echo, daemon=True).start()
    backend = LocalBackend(d, {8080: echo_port})
    port = free_port()
    loop = asyncio.new_event_loop()
    server = KubeletServer(backend, str(d / "kubelet.crt"), str(d / "kubelet.key"), apiserver.pki.ca_crt)
    runner_box = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        runner_box["runner"] = loop.run_until_complete(server.start("127.0.0.1", port))
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    c = apiserver.client()
    c.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "kl-node"},
              "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                         "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}})
    for name, containers in (("kl-one", ["main"]), ("kl-two", ["first", "second"])):
        made = c.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
                         "spec": {"nodeName": "kl-node", "containers": [{"name": n, "image": "busybox:1.36"}
                                                                         for n in containers]}})
        made["status"] = {"phase": "Running", "podIP": "127.0.0.1"}  # what the kubelet reports
        c.update_status(made)
    (d / "default_kl-one_main.log").write_text("line 1\nline 2\nline 3\n")
    (d / "default_kl-two_second.log").write_text("from second\n")
    wait_for(lambda: socket.create_connection(("127.0.0.1", port), 1).close() or True, timeout=10,
             ignore=(OSError,), what="kubelet endpoint listening")
    yield {"dir": d, "backend": backend, "port": port}

    async def stop() -> None:
        await runner_box["runner"].cleanup()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)
    echo.close()


def test_logs_tail_timestamps_container(apiserver, kubelet):
    assert apiserver.kubectl("logs", "kl-one").stdout == "line 1\nline 2\nline 3\n"
    assert apiserver.kubectl("logs", "kl-one", "--tail", "1").stdout == "line 3\n"
    ts = apiserver.kubectl("logs", "kl-one", "--tail", "1", "--timestamps").stdout
    assert ts == "2026-01-01T00:00:00.000000000Z line 3\n"
    assert apiserver.kubectl("logs", "kl-two", "-c", "second").stdout == "from second\n"
    res = apiserver.kubectl("logs", "kl-one", "--previous", check=False)
    assert res.returncode == 1 and 'previous terminated container "main" in pod "kl-one" not found' in res.stderr


def test_logs_follow(apiserver, kubelet):
    from tests.apiserver_support import real_kubectl

    proc = subprocess.Popen([real_kubectl(), "logs", "-f", "kl-one"], stdout=subprocess.PIPE, text=True,
                            env=apiserver.env())
    try:
        got = [proc.stdout.readline() for _ in range(3)]
        assert got == ["line 1\n", "line 2\n", "line 3\n"]
        with open(kubelet["dir"] / "default_kl-one_main.log", "a") as f:
            f.write("line 4\n")
        assert proc.stdout.readline() == "line 4\n"
    finally:
        proc.terminate()
        proc.wait(5)


def test_logs_of_a_pod_without_node_is_an_error(apiserver, kubelet):
    apiserver.kubectl("create", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kl-unbound"},
         "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
    res = apiserver.kubectl("logs", "kl-unbound", check=False)
    assert res.returncode == 1


def test_exec_container_stdin_and_exit_code(apiserver, kubelet):
    out = apiserver.kubectl("exec", "kl-one", "--", "sh", "-c", "echo $POD $CONTAINER").stdout
    assert out == "kl-one main\n"
    out = apiserver.kubectl("exec", "kl-two", "-c", "second", "--", "sh", "-c", "echo $CONTAINER").stdout
    assert out == "second\n"
    out = apiserver.kubectl("exec", "-i", "kl-one", "--", "tr", "a-z", "A-Z", input="hello\n").stdout
    assert out == "HELLO\n"
    res = apiserver.kubectl("exec", "kl-one", "--", "sh", "-c", "echo oops >&2; exit 3", check=False)
    assert res.returncode == 3
    assert "oops" in res.stderr and "command terminated with exit code 3" in res.stderr


def test_port_forward(apiserver, kubelet):
    from tests.apiserver_support import real_kubectl
    from tests.support import free_port

    local = free_port()
    proc = subprocess.Popen([real_kubectl(), "port-forward", "pod/kl-one", f"{local}:8080"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=apiserver.env())
    try:
        line = proc.stdout.readline()
        if not line:
            proc.wait(5)
        assert line.strip() == f"Forwarding from 127.0.0.1:{local} -> 8080", (line, proc.stderr.read())
        for attempt in range(2):  # two connections over the same port-forward session
            with socket.create_connection(("127.0.0.1", local), 5) as s:
                s.sendall(f"ping{attempt}".encode())
                got = b""
                deadline = time.monotonic() + 5
                while not got.endswith(f"ping{attempt}".encode()) and time.monotonic() < deadline:
                    chunk = s.recv(100)
                    if not chunk:
                        break
                    got += chunk
            assert got == f"echo:ping{attempt}".encode()
    finally:
        proc.terminate()
        proc.wait(5)


def test_exec_over_v4_channel_protocol(apiserver, kubelet):
    """An older client's v4.channel.k8s.io exec: stdout on channel 1, the exit Status on channel 3."""
    import ssl

    import aiohttp

    async def run() -> tuple[bytes, dict]:
        ctx = ssl.create_default_context(cafile=apiserver.pki.ca_crt)
        ctx.load_cert_chain(apiserver.pki.admin_crt, apiserver.pki.admin_key)
        url = (f"{apiserver.url}/api/v1/namespaces/default/pods/kl-one/exec?command=sh&command=-c"
               "&command=echo+v4;exit+4&stdout=true&stderr=true")
        out, st = b"", {}
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(url, protocols=["v4.channel.k8s.io"], ssl=ctx) as ws:
                assert ws.protocol == "v4.channel.k8s.io"
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.BINARY:
                        break
                    if msg.data[0] == 1:
                        out += msg.data[1:]
                    elif msg.data[0] == 3:
                        st = json.loads(msg.data[1:])
        return out, st

    out, st = asyncio.run(run())
    assert out == b"v4\n"
    assert st["status"] == "Failure" and st["reason"] == "NonZeroExitCode"
    assert st["details"]["causes"] == [{"reason": "ExitCode", "message": "4"}]


def test_attach_refused_by_this_kubelet_says_so(apiserver, kubelet):
    res = apiserver.kubectl("attach", "kl-one", check=False, timeout=30)
    assert res.returncode == 1
    assert "attach is not served by this kubelet" in res.stderr


def test_binding_subresource(apiserver, kubelet):
    import kubeclient

    c = apiserver.client()
    c.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kl-bind", "namespace": "default"},
              "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "kl-bind"},
               "target": {"apiVersion": "v1", "kind": "Node", "name": "kl-node"}}
    st = c.request("POST", "/api/v1/namespaces/default/pods/kl-bind/binding", binding)
    assert st["status"] == "Success"
    pod = c.get("v1", "pods", "kl-bind", "default")
    assert pod["spec"]["nodeName"] == "kl-node"
    assert any(x["type"] == "PodScheduled" and x["status"] == "True" for x in pod["status"]["conditions"])
    with pytest.raises(kubeclient.Conflict) as ei:
        c.request("POST", "/api/v1/namespaces/default/pods/kl-bind/binding", binding)
    assert 'is already assigned to node "kl-node"' in str(ei.value)


def test_get_watch_table_rows(apiserver, kubelet):
    from tests.apiserver_support import real_kubectl

    proc = subprocess.Popen([real_kubectl(), "get", "pods", "-w", "--field-selector", "metadata.name=kl-two"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=apiserver.env())
    try:
        assert proc.stdout.readline().split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
        assert proc.stdout.readline().split()[:3] == ["kl-two", "0/2", "Running"]
        apiserver.kubectl("label", "pod", "kl-two", "seen=yes")
        assert proc.stdout.readline().split()[:3] == ["kl-two", "0/2", "Running"]
    finally:
        proc.terminate()
        proc.wait(5)


def test_logs_of_a_deployment(apiserver, kubelet):
    """kubectl logs deploy/x: kubectl finds a pod by the Deployment's selector."""
    c = apiserver.client()
    c.create({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "kl-dep", "namespace": "default"},
              "spec": {"replicas": 1, "selector": {"matchLabels": {"kl": "dep"}},
                       "template": {"metadata": {"labels": {"kl": "dep"}},
                                    "spec": {"containers": [{"name": "main", "image": "busybox"}]}}}})
    made = c.create({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": "kl-dep-abc12", "namespace": "default", "labels": {"kl": "dep"}},
                     "spec": {"nodeName": "kl-node", "containers": [{"name": "main", "image": "busybox"}]}})
    made["status"] = {"phase": "Running"}
    c.update_status(made)
    (kubelet["dir"] / "default_kl-dep-abc12_main.log").write_text("deployment says hi\n")
    assert apiserver.kubectl("logs", "deploy/kl-dep").stdout == "deployment says hi\n"
