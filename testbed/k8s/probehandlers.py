"""The kubelet's prober, kernel side: the probe handlers (httpGet, tcpSocket, exec, grpc) and
:class:`Prober`, one thread that runs the workers of :mod:`testbed.k8s.probe` on their period
grid in a small pool (one run in flight per worker; the thread sleeps until the next tick).

Handlers connect from the kubelet's network namespace (the node's) to the pod's IP (a
hostNetwork pod's is the node's; httpGet's ``host`` overrides it), as the kubelet does, and
word their failures as the kubelet's Go client does (``HTTP probe failed with statuscode:
503``; ``Get "http://10.0.0.5:8080/": dial tcp 10.0.0.5:8080: connect: connection refused``).
``exec`` runs the command line ``kubectl exec`` gets (:func:`testbed.k8s.kubeletapi.exec_argv`)
for at most timeoutSeconds; exit 0 is success, the output is the failure's message. ``grpc``
calls ``grpc.health.v1.Health/Check`` (grpcio, messages encoded with :mod:`agent.protowire`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from testbed.k8s.probe import (
    FAILURE,
    SUCCESS,
    ContainerProbes,
    Probe,
    ProbeError,
    Worker,
    container_port,
    event_message,
    http_headers,
    http_result,
    http_url,
)
from testbed.k8s.version import KUBE_VERSION

log = logging.getLogger("kubelet.prober")

MAX_OUTPUT = 10 * 1024  # the kubelet keeps at most 10 KiB of a probe's output
GRPC_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _dial_error(host: str, port: int, exc: BaseException) -> str:
    """Go's net.Dial error text for ``exc`` (``dial tcp 10.0.0.5:80: connect: connection refused``)."""
    addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(exc, TimeoutError):
        return f"dial tcp {addr}: i/o timeout"
    if isinstance(exc, socket.gaierror):
        return f"dial tcp: lookup {host}: no such host"
    code = getattr(exc, "errno", None)
    text = os.strerror(code).lower() if isinstance(code, int) and code > 0 else str(exc)
    return f"dial tcp {addr}: connect: {text}"


def tcp_probe(host: str, port: int, timeout: float) -> tuple[str, str]:
    """A tcpSocket probe: success when a TCP connection to ``host:port`` opens in ``timeout`` s."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return SUCCESS, ""
    except OSError as exc:
        return FAILURE, _dial_error(host, port, exc)


def http_probe(action: dict, container: dict, pod_ip: str, timeout: float) -> tuple[str, str]:
    """An httpGet probe: a GET (no redirect followed; 200 <= code < 400 is success)."""
    import http.client
    import ssl

    scheme, host, port, path, url = http_url(action, container, pod_ip)
    headers = http_headers(action, KUBE_VERSION.lstrip("v").rsplit(".", 1)[0])
    if scheme == "https":
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # the kubelet skips verification
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    host_header = next((v for k, v in headers.items() if k.lower() == "host"), None)
    try:
        try:
            conn.connect()
        except OSError as exc:
            return FAILURE, f'Get "{url}": {_dial_error(host, port, exc)}'
        conn.putrequest("GET", path, skip_host=host_header is not None, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        resp.read(MAX_OUTPUT)
        return http_result(resp.status)
    except TimeoutError:
        return FAILURE, f'Get "{url}": context deadline exceeded (Client.Timeout exceeded while awaiting headers)'
    except (OSError, http.client.HTTPException) as exc:
        return FAILURE, f'Get "{url}": {exc or type(exc).__name__}'
    finally:
        conn.close()


def exec_probe(argv: list[str], command: list[str], timeout: float) -> tuple[str, str]:
    """An exec probe: ``argv`` (the command in the container) run for at most ``timeout`` s;
    exit 0 is success, the combined output is the failure's message. One of the project's
    programs in a container of the netns runtime (``/bin/calico-node -felix-ready``,
    ``check-status -r``) starts as a fork of the lab's zygote (:func:`zygote_exec`)."""
    done = zygote_exec(argv, command, timeout)
    if done is not None:
        return done
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    except OSError as exc:
        return FAILURE, f"failed to exec in container: {exc}"
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.communicate()
        return FAILURE, f'command "{" ".join(command)}" timed out'
    text = out[:MAX_OUTPUT].decode(errors="replace")
    return (SUCCESS, text) if proc.returncode == 0 else (FAILURE, text)


def nsenter_parts(argv: list[str]) -> tuple[int, dict[str, str], list[str]] | None:
    """(pid, environment, command) of a netns-runtime exec command line
    (:func:`testbed.k8s.kubeletapi.exec_command`: ``nsenter -t PID -n -m -w -- env -i
    NAME=VALUE... COMMAND...``; the assignments end at the first argument without ``=``, as
    ``env`` reads them); None for any other command line (pure)."""
    head = ["-n", "-m", "-w", "--", "env", "-i"]
    if len(argv) < 10 or argv[:2] != ["nsenter", "-t"] or argv[3:9] != head or not argv[2].isdigit():
        return None
    rest = argv[9:]
    env: dict[str, str] = {}
    i = 0
    while i < len(rest) and "=" in rest[i] and not rest[i].startswith("="):
        name, value = rest[i].split("=", 1)
        env[name] = value
        i += 1
    return (int(argv[2]), env, rest[i:]) if rest[i:] else None


def zygote_exec(argv: list[str], command: list[str], timeout: float) -> tuple[str, str] | None:
    """Run an exec command line of a netns-runtime container as a fork of the lab's zygote
    (``$CALICOLAB_ZYGOTE``) when it is one of the project's programs: in the container's mount
    and network namespaces and working directory, with its environment, as ``nsenter`` would
    run it, without an interpreter start and imports per run (~0.1 s of CPU: calico.yaml's
    calico-node probes every 10 s, liveness and readiness, 10 runs a second at 50 nodes).
    (result, output) as :func:`exec_probe`; None when the zygote cannot run it (exec it)."""
    from kernel import zygote

    target = zygote.socket_path()
    parts = nsenter_parts(argv)
    if target is None or parts is None:
        return None
    pid, env, cmd = parts
    if zygote.run_spec(cmd, sys.executable, "/") is None:
        return None
    fds: list[int] = []
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
        fds.append(os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC))
        fds.append(os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC))
        fds.append(os.memfd_create("probe-output", os.MFD_CLOEXEC))
        proc = zygote.spawn(target, cmd, env=env, cwd=cwd, stdout=fds[2], stderr=fds[2], mnt=fds[0], net=fds[1],
                            propagation="unchanged")
    except (OSError, zygote.ZygoteError, ValueError) as exc:
        for fd in fds:
            os.close(fd)
        if fds[2:]:
            log.info("zygote %s did not start %s (%s): running it by exec", target, " ".join(cmd[:2]), exc)
        return None
    try:
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return FAILURE, f'command "{" ".join(command)}" timed out'
        os.lseek(fds[2], 0, os.SEEK_SET)
        text = os.read(fds[2], MAX_OUTPUT).decode(errors="replace")
        return (SUCCESS, text) if code == 0 else (FAILURE, text)
    finally:
        for fd in fds:
            os.close(fd)


#: grpc.health.v1 messages (health.proto): HealthCheckRequest{service=1}, HealthCheckResponse{status=1}
def _health_messages() -> tuple[Any, Any]:
    from agent.protowire import Field, Message

    return (Message("grpc.health.v1.HealthCheckRequest", [Field("service", 1, "string")]),
            Message("grpc.health.v1.HealthCheckResponse", [Field("status", 1, "enum")]))


def grpc_probe(host: str, port: int, service: str, timeout: float) -> tuple[str, str]:
    """A grpc probe: ``grpc.health.v1.Health/Check`` for ``service`` on ``host:port``
    (plaintext); SERVING is success. Messages as the kubelet's gRPC prober words them."""
    import grpc

    request, response = _health_messages()
    addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    channel = grpc.insecure_channel(addr)
    try:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            return FAILURE, f'timeout: failed to connect service "{addr}" within {timeout:g}s: context deadline exceeded'
        check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=request.encode,
                                    response_deserializer=response.decode)
        try:
            resp = check({"service": service}, timeout=timeout, metadata=(("user-agent", f"kube-probe/{KUBE_VERSION}"),))
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code == grpc.StatusCode.UNIMPLEMENTED:
                return FAILURE, ("error: this server does not implement the grpc health protocol "
                                 f"(grpc.health.v1.Health): {exc.details() if hasattr(exc, 'details') else exc}")
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return FAILURE, f"timeout: health rpc did not complete within {timeout:g}s"
            return FAILURE, f"error: health rpc probe failed: {exc.details() if hasattr(exc, 'details') else exc}"
        status = int(resp.get("status") or 0)
        if status == 1:
            return SUCCESS, "service healthy"
        return FAILURE, f'service unhealthy (responded with "{GRPC_STATUS.get(status, str(status))}")'
    finally:
        channel.close()


def run_probe(probe: Probe, container: dict, pod_ip: str, exec_argv: Callable[[list[str]], list[str]]) -> tuple[str, str]:
    """Run ``probe`` of ``container`` once: (SUCCESS or FAILURE, output)."""
    a = probe.action
    try:
        if probe.handler == "invalid":
            return FAILURE, a["error"]
        if probe.handler == "exec":
            command = [str(x) for x in a.get("command") or []]
            try:
                argv = exec_argv(command)
            except (OSError, ValueError, LookupError) as exc:
                return FAILURE, f"failed to exec in container: {exc}"
            return exec_probe(argv, command, probe.timeout)
        if probe.handler == "httpGet":
            return http_probe(a, container, pod_ip, probe.timeout)
        if probe.handler == "tcpSocket":
            return tcp_probe(a.get("host") or pod_ip, container_port(a.get("port"), container), probe.timeout)
        if probe.handler == "grpc":
            return grpc_probe(pod_ip, int(a["port"]), str(a.get("service") or ""), probe.timeout)
    except ProbeError as exc:
        return FAILURE, str(exc)
    return FAILURE, f"unknown probe handler {probe.handler}"


class Target(Protocol):
    """What the prober asks of the kubelet."""

    def probe_target(self, uid: str, name: str) -> tuple[dict, str] | None:
        """(container spec, pod IP) of a running container; None when it is not running."""

    def probe_exec_argv(self, uid: str, name: str, command: list[str]) -> list[str]:
        """The command line running ``command`` in the container."""

    def probe_event(self, uid: str, name: str, reason: str, message: str) -> None:
        """A Warning event about the container."""

    def probe_changed(self, uid: str) -> None:
        """A readiness or startup result changed: write the pod's status again."""

    def probe_kill(self, uid: str, name: str, kind: str, grace: int | None) -> None:
        """A liveness or startup probe failed: restart the container."""


class Prober:
    """The probe workers of one kubelet: one thread plus a pool of ``workers`` threads."""

    def __init__(self, target: Target, workers: int = 4, clock: Callable[[], float] = time.monotonic):
        self.target = target
        self.clock = clock
        self.containers: dict[tuple[str, str], ContainerProbes] = {}
        self.cond = threading.Condition()
        self.stopping = False
        self.workers = workers
        self.pool: ThreadPoolExecutor | None = None
        self.thread: threading.Thread | None = None

    # --- workers -------------------------------------------------------------------------
    def add(self, uid: str, container: dict, started: float) -> None:
        """New workers for a container instance that started at ``started`` (monotonic),
        replacing those of its previous instance; nothing for a container without probes."""
        cp, errors = ContainerProbes.make(uid, container, self.clock(), started)
        with self.cond:
            if not cp.workers:
                self.containers.pop((uid, container["name"]), None)
                return
            self.containers[(uid, container["name"])] = cp
            if self.thread is None:
                self._start()
            self.cond.notify()
        for err in errors:
            self.target.probe_event(uid, container["name"], "Unhealthy", f"probe not run: {err}")

    def remove(self, uid: str, name: str | None = None) -> None:
        """Stop the workers of one container (its instance exited) or of a whole pod."""
        with self.cond:
            for key in [k for k in self.containers if k[0] == uid and (name is None or k[1] == name)]:
                del self.containers[key]

    def has(self, uid: str, name: str, kind: str) -> bool:
        """The running instance of the container has a ``kind`` probe."""
        cp = self.containers.get((uid, name))
        return cp is not None and kind in cp.workers

    def ready(self, uid: str, name: str) -> bool | None:
        """The readiness probe's result for the container (None: it has no workers or no
        readiness probe; the kubelet's own rule applies). Readiness needs started."""
        cp = self.containers.get((uid, name))
        if cp is None or not cp.workers:
            return None
        if not cp.started:
            return False
        r = cp.result("readiness")
        return None if r is None else r == SUCCESS

    def started(self, uid: str, name: str) -> bool | None:
        """Whether the container counts as started (None: it has no workers)."""
        cp = self.containers.get((uid, name))
        return None if cp is None else cp.started

    # --- the thread ----------------------------------------------------------------------
    def _start(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="probe")
        self.thread = threading.Thread(target=self._loop, name="prober", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop the thread (runs in flight finish on their own)."""
        with self.cond:
            self.stopping = True
            self.cond.notify()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        while True:
            with self.cond:
                if self.stopping:
                    return
                now = self.clock()
                due = [(cp, w) for cp in self.containers.values() for w in cp.due(now)]
                if not due:
                    ticks = [t for cp in self.containers.values() if (t := cp.next_tick()) is not None]
                    self.cond.wait(timeout=max(0.0, min(ticks) - now) + 0.001 if ticks else None)
                    continue
            for cp, w in due:
                assert self.pool is not None
                try:
                    self.pool.submit(self._run, cp, w)
                except RuntimeError:  # shut down
                    return

    def _run(self, cp: ContainerProbes, w: Worker) -> None:
        try:
            target = self.target.probe_target(cp.uid, cp.name)
            if target is None:
                with self.cond:
                    w.in_flight = False
                return
            container, pod_ip = target
            raw, message = run_probe(w.probe, container, pod_ip,
                                     lambda command: self.target.probe_exec_argv(cp.uid, cp.name, command))
        except Exception as exc:  # noqa: BLE001 - a probe's crash is a failed probe, never the prober's end
            log.exception("%s probe of %s failed to run", w.kind, cp.name)
            raw, message = FAILURE, f"probe errored: {exc}"
        with self.cond:
            current = self.containers.get((cp.uid, cp.name)) is cp
            outcome = cp.record(w, raw, message)
            self.cond.notify()
        if not current:
            return  # the container instance is gone: its result means nothing
        if raw == FAILURE:
            log.info("pod %s container %s: %s", cp.uid, cp.name, event_message(w.kind, message.strip()))
            self.target.probe_event(cp.uid, cp.name, "Unhealthy", event_message(w.kind, message))
        if outcome.changed:
            self.target.probe_changed(cp.uid)
        if outcome.kill:
            self.target.probe_kill(cp.uid, cp.name, w.kind, w.probe.termination_grace)



def run_hook(spec: dict, hook: str, container: dict, pod: dict, pod_ip: str,
             exec_argv: Callable[[list[str]], list[str]], timeout: float) -> str | None:
    """Run a lifecycle hook of ``container`` for at most ``timeout`` s; None when it succeeded,
    else the event's message (:func:`testbed.k8s.probe.hook_failure`)."""
    from testbed.k8s.probe import hook_failure, parse_hook

    meta = pod["metadata"]
    who = f"{meta['name']}_{meta['namespace']}({meta.get('uid', '')})"
    try:
        handler, action = parse_hook(spec, hook)
    except ProbeError as exc:
        return hook_failure("", {}, container["name"], who, str(exc))
    if handler == "exec":
        command = [str(x) for x in action.get("command") or []]
        try:
            argv = exec_argv(command)
        except (OSError, ValueError, LookupError) as exc:
            return hook_failure(handler, action, container["name"], who, str(exc))
        result, output = exec_probe(argv, command, timeout)
        if result == SUCCESS:
            return None
        error = output if output.startswith("command ") and output.endswith("timed out") else "command terminated"
        return hook_failure(handler, action, container["name"], who, error, output)
    try:
        result, output = http_probe(action, container, pod_ip, timeout)
    except ProbeError as exc:
        result, output = FAILURE, str(exc)
    return None if result == SUCCESS else hook_failure(handler, action, container["name"], who, output)
