"""The kubelet's container probes, pure logic: parsing a probe and the per-container workers'
state machines (Kubernetes' ``pkg/kubelet/prober``: worker, prober_manager). No clock and no
I/O here: the caller passes ``now`` (one monotonic clock) and runs the handlers
(:mod:`testbed.k8s.probehandlers`).

* A probe has exactly one handler: ``exec``, ``httpGet`` (host, scheme, path, port number or
  named container port, httpHeaders), ``tcpSocket`` or ``grpc`` (port, service); otherwise
  :class:`ProbeError` (the kubelet reports it as a Warning event and the probe fails).
* Defaults: initialDelaySeconds 0, periodSeconds 10, timeoutSeconds 1, successThreshold 1,
  failureThreshold 3.
* One worker per container instance and kind. A worker ticks on the period grid from its
  creation, the first tick at creation; a tick is skipped while the container is within
  initialDelaySeconds of its start, while a run is in flight, while a liveness/startup
  worker is on hold (it failed: the container is being restarted), for readiness and
  liveness while the startup probe has not succeeded, and for startup once it has.
* Results: readiness starts Failure, liveness Success, startup none (not started). A result
  is taken when the same raw result came ``successThreshold`` (success) or
  ``failureThreshold`` (failure) times in a row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

READINESS, LIVENESS, STARTUP = "readiness", "liveness", "startup"
KINDS = (STARTUP, LIVENESS, READINESS)
#: the container spec's field of each kind
FIELDS = {READINESS: "readinessProbe", LIVENESS: "livenessProbe", STARTUP: "startupProbe"}
SUCCESS, FAILURE = "Success", "Failure"
HANDLERS = ("exec", "httpGet", "tcpSocket", "grpc")
DEFAULTS = {"initialDelaySeconds": 0, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1,
            "failureThreshold": 3}


class ProbeError(ValueError):
    """A probe the kubelet cannot run (no handler, two handlers, a bad port...): the message says why."""


@dataclass(frozen=True)
class Probe:
    """One parsed probe: ``handler`` is one of :data:`HANDLERS`, ``action`` its spec."""

    handler: str
    action: dict
    initial_delay: int = 0
    period: int = 10
    timeout: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3
    termination_grace: int | None = None  # the probe's terminationGracePeriodSeconds


def _int(spec: dict, key: str, minimum: int) -> int:
    value = spec.get(key)
    if value is None or value == 0 and key != "initialDelaySeconds":
        return DEFAULTS[key]  # 0 is the API's "unset" for these (defaulted by the API server)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ProbeError(f"{key}: must be an integer >= {minimum}, got {value!r}")
    return value


def parse_probe(spec: dict, kind: str) -> Probe:
    """The probe of ``kind`` from its container spec field (pure); :class:`ProbeError` when it
    cannot be run."""
    if not isinstance(spec, dict):
        raise ProbeError(f"{FIELDS[kind]}: not an object")
    handlers = [h for h in HANDLERS if spec.get(h) is not None]
    if len(handlers) != 1:
        raise ProbeError(f"{FIELDS[kind]}: must have exactly one handler of {', '.join(HANDLERS)}"
                         + (f" (it has {', '.join(handlers)})" if handlers else " (it has none)"))
    handler = handlers[0]
    action = spec[handler]
    if not isinstance(action, dict):
        raise ProbeError(f"{FIELDS[kind]}.{handler}: not an object")
    if handler == "exec" and not [a for a in action.get("command") or [] if isinstance(a, str)]:
        raise ProbeError(f"{FIELDS[kind]}.exec.command: required")
    if handler in ("httpGet", "tcpSocket", "grpc") and action.get("port") in (None, ""):
        raise ProbeError(f"{FIELDS[kind]}.{handler}.port: required")
    if handler == "httpGet" and str(action.get("scheme") or "HTTP").upper() not in ("HTTP", "HTTPS"):
        raise ProbeError(f"{FIELDS[kind]}.httpGet.scheme: {action.get('scheme')!r} (HTTP or HTTPS)")
    if handler == "grpc" and not isinstance(action.get("port"), int):
        raise ProbeError(f"{FIELDS[kind]}.grpc.port: must be a port number, got {action.get('port')!r}")
    success = _int(spec, "successThreshold", 1)
    if kind in (LIVENESS, STARTUP) and success != 1:
        raise ProbeError(f"{FIELDS[kind]}.successThreshold: must be 1 for {kind} probes, got {success}")
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is not None and (not isinstance(grace, int) or grace < 1):
        raise ProbeError(f"{FIELDS[kind]}.terminationGracePeriodSeconds: must be a positive integer, got {grace!r}")
    return Probe(handler, action, _int(spec, "initialDelaySeconds", 0), _int(spec, "periodSeconds", 1),
                 _int(spec, "timeoutSeconds", 1), success, _int(spec, "failureThreshold", 1), grace)


def container_port(port: Any, container: dict) -> int:
    """A probe's ``port``: a number, or the name of one of the container's ports (pure);
    :class:`ProbeError` when it names none or is out of range."""
    if isinstance(port, str) and not port.isdigit():
        for p in container.get("ports") or []:
            if p.get("name") == port:
                port = p.get("containerPort")
                break
        else:
            raise ProbeError(f"port {port!r}: not a named port of container {container.get('name')}")
    try:
        number = int(port)
    except (TypeError, ValueError):
        raise ProbeError(f"invalid port {port!r}") from None
    if not 0 < number < 65536:
        raise ProbeError(f"invalid port number: {number}")
    return number


def http_url(action: dict, container: dict, pod_ip: str) -> tuple[str, str, int, str, str]:
    """(scheme, host, port, path, url) of an httpGet probe; ``host`` defaults to the pod's IP
    (pure). The path keeps its query; a missing leading slash is added, as the kubelet's URL
    formatting does."""
    scheme = str(action.get("scheme") or "HTTP").lower()
    host = action.get("host") or pod_ip
    port = container_port(action.get("port"), container)
    path = str(action.get("path") or "")
    if not path.startswith("/"):
        path = "/" + path
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return scheme, host, port, path, f"{scheme}://{hostport}{path}"


def http_headers(action: dict, version: str) -> dict[str, str]:
    """The request headers of an httpGet probe: the kubelet's User-Agent (``kube-probe/1.28``)
    and ``Accept: */*``, then the probe's httpHeaders (a header given there replaces the
    default; ``Host`` sets the request's Host)."""
    headers = {"User-Agent": f"kube-probe/{version}", "Accept": "*/*"}
    for h in action.get("httpHeaders") or []:
        name = str(h.get("name") or "")
        if not name:
            continue
        for k in list(headers):
            if k.lower() == name.lower():
                del headers[k]
        headers[name] = str(h.get("value") or "")
    return headers


def http_result(status: int) -> tuple[str, str]:
    """An httpGet probe's result for an answer's status code: success for 200 <= code < 400 (pure)."""
    if 200 <= status < 400:
        return SUCCESS, ""
    return FAILURE, f"HTTP probe failed with statuscode: {status}"


def event_message(kind: str, output: str) -> str:
    """The ``Unhealthy`` event's message, as the kubelet words it (``Readiness probe failed: ...``)."""
    return f"{kind.capitalize()} probe failed: {output}"


def kill_message(kind: str, container: str) -> str:
    """The ``Killing`` event's message when a liveness or startup probe failed."""
    return f"Container {container} failed {kind} probe, will be restarted"


@dataclass
class Worker:
    """One probe of one container instance (the kubelet's worker): its schedule and results."""

    kind: str
    probe: Probe
    created: float  # when the worker was made: the period grid's origin
    container_started: float  # when the container started (initialDelaySeconds counts from it)
    result: str | None = None  # the result the kubelet acts on (None: startup not yet decided)
    last: str | None = None  # the last raw result
    run: int = 0  # how many times in a row ``last`` came
    on_hold: bool = False  # liveness/startup failed: no more runs for this container instance
    in_flight: bool = False
    ticks: int = 0  # grid ticks handled so far

    def __post_init__(self) -> None:
        if self.result is None:
            self.result = {READINESS: FAILURE, LIVENESS: SUCCESS}.get(self.kind)

    def next_tick(self) -> float:
        """When the next tick falls (the first is the worker's creation)."""
        return self.created + self.ticks * self.probe.period

    def advance(self, now: float) -> None:
        """Consume every tick up to ``now`` (ticks that passed while a run was in flight are
        dropped, as a Go ticker drops them)."""
        while self.next_tick() <= now:
            self.ticks += 1


@dataclass
class Outcome:
    """What one recorded run changed: ``changed`` the result the kubelet acts on, ``kill`` the
    container must be restarted (liveness/startup failed), ``message`` the failure's output."""

    kind: str
    result: str
    changed: bool = False
    kill: bool = False
    message: str = ""


@dataclass
class ContainerProbes:
    """The workers of one container instance (at most one per kind)."""

    uid: str
    name: str
    workers: dict[str, Worker] = field(default_factory=dict)

    @classmethod
    def make(cls, uid: str, container: dict, now: float, started: float) -> tuple[ContainerProbes, list[str]]:
        """Workers for the probes of ``container`` (spec), created at ``now`` for a container
        that started at ``started``; and the errors of probes that cannot run (each such probe
        gets a worker that always fails, so it never reports success)."""
        out = cls(uid, container["name"])
        errors = []
        for kind in KINDS:
            spec = container.get(FIELDS[kind])
            if not spec:
                continue
            try:
                probe = parse_probe(spec, kind)
            except ProbeError as exc:
                errors.append(str(exc))
                probe = Probe("invalid", {"error": str(exc)})
            out.workers[kind] = Worker(kind, probe, now, started)
        return out, errors

    @property
    def started(self) -> bool:
        """The container counts as started: its startup probe succeeded, or it has none."""
        w = self.workers.get(STARTUP)
        return w is None or w.result == SUCCESS

    def result(self, kind: str) -> str | None:
        """The current result of ``kind`` (None without such a probe)."""
        w = self.workers.get(kind)
        return w.result if w is not None else None

    def due(self, now: float) -> list[Worker]:
        """The workers to run at ``now``: each whose tick has come is advanced past it and
        returned unless that tick is skipped (module docstring); they are marked in flight."""
        out = []
        for w in self.workers.values():
            if w.next_tick() > now:
                continue
            w.advance(now)
            if w.in_flight or w.on_hold:
                continue
            if int(now - w.container_started) < w.probe.initial_delay:
                continue
            if (w.kind == STARTUP) == self.started:  # startup runs until it succeeds; the others after
                continue
            w.in_flight = True
            out.append(w)
        return out

    def next_tick(self) -> float | None:
        """The earliest next tick of any worker (None without workers)."""
        ticks = [w.next_tick() for w in self.workers.values()]
        return min(ticks) if ticks else None

    def record(self, w: Worker, raw: str, message: str = "") -> Outcome:
        """Record a finished run of ``w`` with raw result ``raw`` (SUCCESS or FAILURE)."""
        w.in_flight = False
        out = Outcome(w.kind, w.result or "", message=message)
        if w.last == raw:
            w.run += 1
        else:
            w.last, w.run = raw, 1
        threshold = w.probe.failure_threshold if raw == FAILURE else w.probe.success_threshold
        if w.run < threshold:
            return out
        out.changed = w.result != raw
        w.result = out.result = raw
        if raw == FAILURE and w.kind in (LIVENESS, STARTUP):
            w.on_hold, w.run = True, 0
            out.kill = True
        return out


#: the lifecycle hooks the kubelet runs (postStart after the container starts, preStop before it is stopped)
HOOKS = ("postStart", "preStop")


def parse_hook(spec: dict, hook: str) -> tuple[str, dict]:
    """(handler, action) of a lifecycle hook (pure): ``exec`` or ``httpGet``; anything else is a
    :class:`ProbeError` (the kubelet of Kubernetes 1.28 runs no other hook handler)."""
    if not isinstance(spec, dict):
        raise ProbeError(f"lifecycle.{hook}: not an object")
    handlers = [h for h in ("exec", "httpGet", "tcpSocket", "sleep") if spec.get(h) is not None]
    if len(handlers) != 1:
        raise ProbeError(f"lifecycle.{hook}: must have exactly one handler of exec, httpGet")
    handler = handlers[0]
    if handler not in ("exec", "httpGet"):
        raise ProbeError(f"lifecycle.{hook}.{handler}: not supported as a lifecycle handler (exec, httpGet)")
    action = spec[handler]
    if handler == "exec" and not (isinstance(action, dict) and action.get("command")):
        raise ProbeError(f"lifecycle.{hook}.exec.command: required")
    if handler == "httpGet" and not (isinstance(action, dict) and action.get("port") not in (None, "")):
        raise ProbeError(f"lifecycle.{hook}.httpGet.port: required")
    return handler, action


def hook_failure(handler: str, action: dict, container: str, pod: str, error: str, output: str = "") -> str:
    """The ``FailedPostStartHook`` / ``FailedPreStopHook`` event's message, as the kubelet words
    it; ``pod`` is ``name_namespace(uid)``."""
    if handler == "exec":
        cmd = "[" + " ".join(str(x) for x in action.get("command") or []) + "]"
        return (f'Exec lifecycle hook ({cmd}) for Container "{container}" in Pod "{pod}" failed - error: {error}, '
                f'message: "{output}"')
    if handler == "httpGet":
        return (f'HTTP lifecycle hook ({action.get("path") or ""}) for Container "{container}" in Pod "{pod}" '
                f"failed - error: {error}")
    return f'lifecycle hook for Container "{container}" in Pod "{pod}" failed - error: {error}'
