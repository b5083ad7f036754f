"""The kubelet's probes: parsing, the workers' schedule and thresholds (a fake clock), the
handlers' results and messages (real sockets and processes on this machine's loopback), the
exec mapping of the project's images and kube-controllers' check-status."""

from __future__ import annotations

import http.server
import json
import socket
import sys
import threading

import pytest

from testbed.k8s import images
from testbed.k8s.probe import (
    FAILURE,
    LIVENESS,
    READINESS,
    STARTUP,
    SUCCESS,
    ContainerProbes,
    ProbeError,
    container_port,
    event_message,
    http_headers,
    http_result,
    http_url,
    kill_message,
    parse_probe,
)
from testbed.k8s.probehandlers import exec_probe, grpc_probe, http_probe, run_probe, tcp_probe

pytestmark = pytest.mark.unit


def test_defaults_and_fields():
    p = parse_probe({"exec": {"command": ["true"]}}, READINESS)
    assert (p.handler, p.initial_delay, p.period, p.timeout, p.success_threshold, p.failure_threshold) == \
        ("exec", 0, 10, 1, 1, 3)
    p = parse_probe({"httpGet": {"path": "/h", "port": 8080}, "initialDelaySeconds": 10, "periodSeconds": 5,
                     "timeoutSeconds": 10, "failureThreshold": 6, "terminationGracePeriodSeconds": 7}, LIVENESS)
    assert (p.initial_delay, p.period, p.timeout, p.failure_threshold, p.termination_grace) == (10, 5, 10, 6, 7)


@pytest.mark.parametrize("spec, words", [
    ({}, "exactly one handler"),
    ({"exec": {"command": ["a"]}, "tcpSocket": {"port": 1}}, "it has exec, tcpSocket"),
    ({"exec": {}}, "exec.command: required"),
    ({"httpGet": {"path": "/"}}, "httpGet.port: required"),
    ({"httpGet": {"port": 80, "scheme": "FTP"}}, "scheme"),
    ({"grpc": {"port": "grpc"}}, "grpc.port"),
    ({"tcpSocket": {"port": 80}, "periodSeconds": -1}, "periodSeconds"),
])
def test_invalid_probes_name_what_is_wrong(spec, words):
    with pytest.raises(ProbeError, match=words):
        parse_probe(spec, READINESS)


def test_liveness_success_threshold_must_be_one():
    with pytest.raises(ProbeError, match="successThreshold: must be 1"):
        parse_probe({"tcpSocket": {"port": 1}, "successThreshold": 2}, LIVENESS)


def test_ports_urls_and_headers():
    c = {"name": "dns", "ports": [{"name": "readiness-probe", "containerPort": 8181}]}
    assert container_port("readiness-probe", c) == 8181 and container_port(8080, c) == 8080
    assert container_port("8080", c) == 8080
    with pytest.raises(ProbeError, match="not a named port"):
        container_port("metrics", c)
    with pytest.raises(ProbeError, match="invalid port number: 70000"):
        container_port(70000, c)
    assert http_url({"path": "/ready", "port": "readiness-probe"}, c, "10.0.0.5")[-1] == "http://10.0.0.5:8181/ready"
    assert http_url({"port": 443, "scheme": "HTTPS", "host": "fd00::1"}, c, "x")[-1] == "https://[fd00::1]:443/"
    h = http_headers({"httpHeaders": [{"name": "user-agent", "value": "mine"}, {"name": "X-A", "value": "1"}]}, "1.28")
    assert h == {"Accept": "*/*", "user-agent": "mine", "X-A": "1"}
    assert http_headers({}, "1.28")["User-Agent"] == "kube-probe/1.28"


def test_messages_as_the_kubelet_words_them():
    assert http_result(200) == (SUCCESS, "") and http_result(399)[0] == SUCCESS
    assert http_result(503) == (FAILURE, "HTTP probe failed with statuscode: 503")
    assert event_message(READINESS, "x") == "Readiness probe failed: x"
    assert kill_message(LIVENESS, "calico-node") == "Container calico-node failed liveness probe, will be restarted"


def _probes(container: dict, now: float = 100.0, started: float = 100.0) -> ContainerProbes:
    cp, errors = ContainerProbes.make("uid", container, now, started)
    assert not errors
    return cp


def _run(cp: ContainerProbes, now: float, raw: str):
    due = cp.due(now)
    return [cp.record(w, raw) for w in due]


def test_readiness_starts_failing_runs_at_creation_then_on_the_period_grid():
    cp = _probes({"name": "c", "readinessProbe": {"exec": {"command": ["x"]}, "periodSeconds": 10}})
    assert cp.result(READINESS) == FAILURE and cp.started
    [out] = _run(cp, 100.0, SUCCESS)  # the first run is at the worker's creation
    assert out.changed and cp.result(READINESS) == SUCCESS
    assert cp.due(105.0) == [] and cp.next_tick() == 110.0
    [out] = _run(cp, 110.2, SUCCESS)
    assert not out.changed
    assert cp.next_tick() == 120.0  # the grid stays anchored at creation


def test_failure_threshold_and_success_threshold_are_consecutive():
    cp = _probes({"name": "c", "readinessProbe": {"tcpSocket": {"port": 1}, "periodSeconds": 1,
                                                  "successThreshold": 2, "failureThreshold": 2}})
    t = 100.0
    assert not _run(cp, t, SUCCESS)[0].changed  # 1 of 2 successes
    assert _run(cp, t + 1, SUCCESS)[0].changed and cp.result(READINESS) == SUCCESS
    _run(cp, t + 2, FAILURE)
    _run(cp, t + 3, SUCCESS)  # the run of failures is broken
    _run(cp, t + 4, FAILURE)
    assert cp.result(READINESS) == SUCCESS
    assert _run(cp, t + 5, FAILURE)[0].changed and cp.result(READINESS) == FAILURE


def test_initial_delay_skips_ticks_since_the_container_started():
    cp = _probes({"name": "c", "livenessProbe": {"exec": {"command": ["x"]}, "initialDelaySeconds": 10,
                                                 "periodSeconds": 10, "failureThreshold": 6}}, now=100.0, started=99.0)
    assert cp.result(LIVENESS) == SUCCESS  # liveness starts succeeding
    assert cp.due(100.0) == []  # within the delay: the tick is skipped
    assert len(cp.due(110.0)) == 1  # 11 s after the start


def test_one_run_in_flight_per_worker_and_ticks_missed_meanwhile_are_dropped():
    cp = _probes({"name": "c", "readinessProbe": {"exec": {"command": ["x"]}, "periodSeconds": 1}})
    [w] = cp.due(100.0)
    assert cp.due(101.0) == [] and cp.due(102.5) == []  # still in flight
    cp.record(w, SUCCESS)
    assert cp.next_tick() == 103.0 and len(cp.due(103.0)) == 1


def test_liveness_failure_at_threshold_kills_and_holds_until_a_new_container():
    cp = _probes({"name": "c", "livenessProbe": {"exec": {"command": ["x"]}, "periodSeconds": 1,
                                                 "failureThreshold": 3}})
    outs = [_run(cp, 100.0 + i, FAILURE)[0] for i in range(3)]
    assert [o.kill for o in outs] == [False, False, True] and cp.result(LIVENESS) == FAILURE
    assert cp.due(104.0) == []  # on hold: the container is being restarted


def test_startup_gates_readiness_and_liveness_then_stops():
    cp = _probes({"name": "c", "startupProbe": {"exec": {"command": ["s"]}, "periodSeconds": 1, "failureThreshold": 2},
                  "readinessProbe": {"exec": {"command": ["r"]}, "periodSeconds": 1},
                  "livenessProbe": {"exec": {"command": ["l"]}, "periodSeconds": 1}})
    assert not cp.started and cp.result(STARTUP) is None
    assert [w.kind for w in cp.due(100.0)] == [STARTUP]
    cp.record(cp.workers[STARTUP], SUCCESS)
    assert cp.started
    assert sorted(w.kind for w in cp.due(101.0)) == [LIVENESS, READINESS]  # startup runs no more


def test_startup_failure_kills():
    cp = _probes({"name": "c", "startupProbe": {"exec": {"command": ["s"]}, "periodSeconds": 1, "failureThreshold": 2}})
    assert not _run(cp, 100.0, FAILURE)[0].kill
    assert _run(cp, 101.0, FAILURE)[0].kill


def test_an_invalid_probe_fails_and_is_reported():
    cp, errors = ContainerProbes.make("uid", {"name": "c", "readinessProbe": {"periodSeconds": 1}}, 0.0, 0.0)
    assert errors and "exactly one handler" in errors[0]
    [w] = cp.due(0.0)
    assert run_probe(w.probe, {}, "127.0.0.1", lambda c: c) == (FAILURE, errors[0])


# --- handlers, on this machine's loopback --------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tcp_probe():
    port = _free_port()
    assert tcp_probe("127.0.0.1", port, 10) == (FAILURE, f"dial tcp 127.0.0.1:{port}: connect: connection refused")
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        assert tcp_probe("127.0.0.1", srv.getsockname()[1], 10) == (SUCCESS, "")


class _Handler(http.server.BaseHTTPRequestHandler):
    codes = {"/ok": 200, "/moved": 302, "/bad": 503}
    seen: list[dict] = []

    def do_GET(self):  # noqa: N802
        if self.path == "/slow":
            threading.Event().wait(2)
        _Handler.seen.append(dict(self.headers))
        self.send_response(self.codes.get(self.path, 404))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def web():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_http_probe(web):
    c = {"name": "web", "ports": [{"name": "http", "containerPort": web}]}
    assert http_probe({"path": "/ok", "port": "http", "httpHeaders": [{"name": "X-Probe", "value": "1"}]},
                      c, "127.0.0.1", 10) == (SUCCESS, "")
    assert _Handler.seen[-1]["User-Agent"].startswith("kube-probe/") and _Handler.seen[-1]["X-Probe"] == "1"
    assert http_probe({"path": "/moved", "port": web}, c, "127.0.0.1", 10)[0] == SUCCESS
    assert http_probe({"path": "/bad", "port": web}, c, "127.0.0.1", 10) == \
        (FAILURE, "HTTP probe failed with statuscode: 503")
    assert http_probe({"path": "/slow", "port": web}, c, "127.0.0.1", 0.3) == \
        (FAILURE, f'Get "http://127.0.0.1:{web}/slow": context deadline exceeded '
                  "(Client.Timeout exceeded while awaiting headers)")
    port = _free_port()
    assert http_probe({"path": "/x", "port": port}, c, "127.0.0.1", 1) == \
        (FAILURE, f'Get "http://127.0.0.1:{port}/x": dial tcp 127.0.0.1:{port}: connect: connection refused')


def test_exec_probe():
    assert exec_probe(["sh", "-c", "echo fine"], ["check"], 10) == (SUCCESS, "fine\n")
    assert exec_probe(["sh", "-c", "echo not ready >&2; exit 1"], ["check"], 10) == (FAILURE, "not ready\n")
    assert exec_probe(["sleep", "5"], ["/bin/check", "-r"], 0.2) == (FAILURE, 'command "/bin/check -r" timed out')


def test_grpc_probe():
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from testbed.k8s.probehandlers import _health_messages

    request, response = _health_messages()
    serving = {"": 1, "db": 2}

    def check(req, ctx):
        if req["service"] not in serving:
            ctx.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return {"status": serving[req["service"]]}

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": grpc.unary_unary_rpc_method_handler(check, request_deserializer=request.decode,
                                                     response_serializer=response.encode)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        assert grpc_probe("127.0.0.1", port, "", 10) == (SUCCESS, "service healthy")
        assert grpc_probe("127.0.0.1", port, "db", 10) == (FAILURE, 'service unhealthy (responded with "NOT_SERVING")')
        assert grpc_probe("127.0.0.1", port, "nope", 10)[1].startswith("error: health rpc probe failed: unknown service")
    finally:
        server.stop(0)
    res, msg = grpc_probe("127.0.0.1", _free_port(), "", 0.3)
    assert res == FAILURE and msg.startswith("timeout: failed to connect service")


# --- the project's images: exec mapping and check-status ----------------------------------------
def test_exec_mapping_of_component_images():
    node = images.exec_command("docker.io/calico/node:v3.28.1", ["/bin/calico-node", "-felix-ready", "-bird-ready"], "/w")
    assert node[0].endswith("calico-node") and node[1:] == ["-felix-ready", "-bird-ready"]
    kc = images.exec_command("calico/kube-controllers:v3.28.1", ["/usr/bin/check-status", "-r"], "/w")
    assert kc == [sys.executable, "-m", "agent.kubecontrollers.checkstatus", "--file", "/w/status/status.json", "-r"]
    assert images.exec_command("registry.k8s.io/etcd:3.5", ["etcd", "--version"], "/w")[1:] == ["--version"]
    assert images.exec_command("nginx", ["cat", "/etc/hostname"], "/w") == ["cat", "/etc/hostname"]
    assert images.exec_command("calico/node", ["ls"], "/w") == ["ls"]


def test_check_status_reads_what_kube_controllers_writes(tmp_path, capsys):
    from agent.kubecontrollers import checkstatus
    from agent.kubecontrollers.status import Status, check, read_status

    path = str(tmp_path / "status" / "status.json")
    assert checkstatus.main(["-r", "-f", path]) == 1
    assert capsys.readouterr().out.startswith(f"Failed to read status file {path}:")
    st = Status(path)
    st.set_ready("Startup", True)
    st.set_ready("KubeAPIServer", False, "Error reaching apiserver: 503")
    with open(path) as f:
        assert json.load(f) == {"Readiness": {"Startup": {"Ready": True, "Reason": ""},
                                              "KubeAPIServer": {"Ready": False, "Reason": "Error reaching apiserver: 503"}}}
    assert checkstatus.main(["-l", "--file", path]) == 1
    assert capsys.readouterr().out == "Error reaching apiserver: 503\n"
    st.set_ready("KubeAPIServer", True)
    assert checkstatus.main(["-r", "-f", path]) == 0 and capsys.readouterr().out == "Ready\n"
    assert checkstatus.main(["-f", path]) == 1 and "No command specified" in capsys.readouterr().out
    assert check({}) == (False, "") and read_status(path)["Startup"] == (True, "")
    nowhere = Status("")  # kube-controllers without --status-file: no file, not upstream's /status
    nowhere.set_ready("Startup", True)
    assert nowhere.ready() and not (tmp_path / "status.json").exists()


def test_lifecycle_hooks_run_with_the_probe_handlers(web):
    from testbed.k8s.probe import parse_hook
    from testbed.k8s.probehandlers import run_hook

    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u1"}}
    c = {"name": "c"}
    assert parse_hook({"exec": {"command": ["x"]}}, "preStop") == ("exec", {"command": ["x"]})
    with pytest.raises(ProbeError, match="tcpSocket: not supported as a lifecycle handler"):
        parse_hook({"tcpSocket": {"port": 1}}, "postStart")
    assert run_hook({"exec": {"command": ["ok"]}}, "postStart", c, pod, "127.0.0.1",
                    lambda cmd: ["sh", "-c", "exit 0"], 10) is None
    msg = run_hook({"exec": {"command": ["/bin/hook", "-x"]}}, "preStop", c, pod, "127.0.0.1",
                   lambda cmd: ["sh", "-c", "echo no; exit 3"], 10)
    assert msg == ('Exec lifecycle hook ([/bin/hook -x]) for Container "c" in Pod "p_ns(u1)" failed - error: '
                   'command terminated, message: "no\n"')
    assert run_hook({"httpGet": {"path": "/ok", "port": web}}, "postStart", c, pod, "127.0.0.1", None, 2) is None
    assert run_hook({"httpGet": {"path": "/bad", "port": web}}, "postStart", c, pod, "127.0.0.1", None, 2) == (
        'HTTP lifecycle hook (/bad) for Container "c" in Pod "p_ns(u1)" failed - error: '
        "HTTP probe failed with statuscode: 503")


def test_an_exec_command_line_is_read_back_for_the_zygote():
    """probehandlers.nsenter_parts reads kubeletapi.exec_command's netns command line back
    (the zygote runs the probe in that pid's namespaces, with that environment); anything else
    (a container runtime's, or not ours) is exec'd as it is."""
    from testbed.k8s.kubeletapi import exec_command
    from testbed.k8s.probehandlers import nsenter_parts

    env = ["PATH=/usr/bin:/bin", "A=b=c", "EMPTY="]
    cmd = ["/venv/bin/calico-node", "-felix-ready", "X=not-env-after-the-command"]
    assert nsenter_parts(exec_command("netns", 4242, env, cmd)) == (
        4242, {"PATH": "/usr/bin:/bin", "A": "b=c", "EMPTY": ""}, cmd)
    assert nsenter_parts(exec_command("containerd", 4242, env, cmd)) is None
    assert nsenter_parts(exec_command("netns", 4242, env, [])) is None
    assert nsenter_parts(["/bin/true"]) is None
