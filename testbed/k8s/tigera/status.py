"""TigeraStatus: what ``kubectl get tigerastatus`` shows for each of the operator's components
(pure; tigera/operator v1.34.3 ``pkg/controller/status/status.go``).

A component (``calico``, ``ippools``, ``apiserver``) is Degraded when its controller says so
(a reason such as InvalidConfigurationError and a message) or when a pod of its DaemonSets /
Deployments fails (PodFailure: crash looping, image not pulled, terminated in error);
Progressing while a DaemonSet or Deployment is not fully available; Available when it is
monitored, nothing fails and nothing progresses. Each condition keeps its
``lastTransitionTime`` until its status changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

AVAILABLE, PROGRESSING, DEGRADED = "Available", "Progressing", "Degraded"


@dataclass
class Component:
    """One TigeraStatus's inputs: the controller's explicit Degraded (reason, message), whether
    its workloads are monitored yet, and what :func:`sync_state` found."""

    name: str
    degraded: tuple[str, str] | None = None
    ready_to_monitor: bool = False
    synced: bool = False
    progressing: list[str] = field(default_factory=list)
    failing: list[str] = field(default_factory=list)

    def set_degraded(self, reason: str, message: str) -> None:
        self.degraded = (reason, message)

    def clear_degraded(self) -> None:
        self.degraded = None

    def available(self) -> bool:
        return (self.ready_to_monitor and self.synced and self.degraded is None
                and not self.failing and not self.progressing)

    def is_progressing(self) -> bool:
        return self.ready_to_monitor and self.synced and bool(self.progressing) and not self.failing

    def is_degraded(self) -> bool:
        return self.degraded is not None or (self.ready_to_monitor and self.synced and bool(self.failing))

    def conditions(self) -> list[tuple[str, str, str, str]]:
        """(type, status, reason, message) as ``updateStatus`` sets them."""
        reason = self.degraded[0] if self.degraded else "PodFailure" if self.failing else "Unknown"
        msg = "\n".join(([self.degraded[1]] if self.degraded else []) + list(self.failing))
        if not self.ready_to_monitor:
            return [(DEGRADED, "True", reason, msg) if self.degraded else (DEGRADED, "False", "Unknown", "")]
        avail = self.available()
        out = [(AVAILABLE, "True", "AllObjectsAvailable", "All objects available") if avail
               else (AVAILABLE, "False", "Unknown", "")]
        if self.is_progressing():
            out.append((PROGRESSING, "True", "ResourceNotReady", "\n".join(self.progressing)))
        else:
            out.append((PROGRESSING, "False", "AllObjectsAvailable", "All Objects Available") if avail
                       else (PROGRESSING, "False", "Unknown", ""))
        if self.is_degraded():
            out.append((DEGRADED, "True", reason, msg))
        else:
            out.append((DEGRADED, "False", "AllObjectsAvailable", "All Objects Available") if avail
                       else (DEGRADED, "False", "Unknown", ""))
        return out


def merge_conditions(old: list[dict], new: list[tuple[str, str, str, str]], now: str,
                     generation: int = 0) -> list[dict]:
    """``old`` conditions updated by ``new``: a condition's lastTransitionTime changes only when
    its status does (``set`` in status.go); conditions ``new`` does not name are kept."""
    out = [dict(c) for c in old or []]
    for typ, st, reason, msg in new:
        cond = {"type": typ, "status": st, "reason": reason, "message": msg, "lastTransitionTime": now}
        if generation:
            cond["observedGeneration"] = generation
        for i, c in enumerate(out):
            if c.get("type") == typ:
                if c.get("status") == st and c.get("lastTransitionTime"):
                    cond["lastTransitionTime"] = c["lastTransitionTime"]
                out[i] = cond
                break
        else:
            out.append(cond)
    return out


def _matches(selector: dict, labels: dict) -> bool:
    want = (selector or {}).get("matchLabels") or {}
    return bool(want) and all((labels or {}).get(k) == v for k, v in want.items())


def container_error(pod: dict, cs: dict) -> str:
    """``containerErrorMessage``: a crash looping, not pulled or failed container of ``pod``."""
    ns, name = pod["metadata"].get("namespace"), pod["metadata"]["name"]
    state = cs.get("state") or {}
    waiting = (state.get("waiting") or {}).get("reason")
    if waiting == "CrashLoopBackOff":
        return f"Pod {ns}/{name} has crash looping container: {cs.get('name')}"
    if waiting in ("ImagePullBackOff", "ErrImagePull"):
        return f"Pod {ns}/{name} failed to pull container image for: {cs.get('name')}"
    if (state.get("terminated") or {}).get("reason") == "Error":
        return f"Pod {ns}/{name} has terminated container: {cs.get('name')}"
    return ""


def pods_failing(selector: dict, namespace: str, pods: list[dict] | Callable[[], list[dict]]) -> str:
    """The first failing container among the pods ``selector`` picks in ``namespace`` (``pods``:
    the pods, or a callable listing them, called only when needed)."""
    for p in pods() if callable(pods) else pods:
        if p["metadata"].get("namespace") != namespace or not _matches(selector, p["metadata"].get("labels") or {}):
            continue
        st = p.get("status") or {}
        for cs in (st.get("initContainerStatuses") or []) + (st.get("containerStatuses") or []):
            msg = container_error(p, cs)
            if msg:
                return msg
    return ""


def sync_state(daemonsets: list[dict], deployments: list[dict],
               pods: list[dict] | Callable[[], list[dict]]) -> tuple[list[str], list[str]]:
    """(progressing, failing) messages of the workloads (``syncState``); ``pods`` is listed only
    for a workload that is not fully available."""
    if callable(pods):
        listed: list[list[dict]] = []
        lister = pods

        def pods() -> list[dict]:  # noqa: F811 - listed once, on first need
            if not listed:
                listed.append(lister())
            return listed[0]

    progressing: list[str] = []
    failing: list[str] = []
    for ds in daemonsets:
        nn = f"{ds['metadata'].get('namespace')}/{ds['metadata']['name']}"
        st, gen = ds.get("status") or {}, ds["metadata"].get("generation", 1)
        desired, updated = st.get("desiredNumberScheduled", 0), st.get("updatedNumberScheduled", 0)
        unavailable, avail = st.get("numberUnavailable", 0), st.get("numberAvailable", 0)
        observed = st.get("observedGeneration", 0)
        if updated < desired:
            progressing.append(f'DaemonSet "{nn}" update is rolling out ({updated} out of {desired} updated)')
        elif unavailable > 0:
            progressing.append(f'DaemonSet "{nn}" is not available (awaiting {unavailable} nodes)')
        elif avail == 0 and desired != 0:
            progressing.append(f'DaemonSet "{nn}" is not yet scheduled on any nodes')
        elif gen > observed:
            progressing.append(f'DaemonSet "{nn}" update is being processed (generation {gen}, '
                               f"observed generation {observed})")
        if (gen == observed and st.get("numberMisscheduled", 0) == 0 and unavailable == 0
                and desired == avail and desired == st.get("numberReady", 0)):
            continue
        f = pods_failing(ds["spec"].get("selector") or {}, ds["metadata"].get("namespace"), pods)
        if f:
            failing.append(f)
    for dep in deployments:
        nn = f"{dep['metadata'].get('namespace')}/{dep['metadata']['name']}"
        st, gen = dep.get("status") or {}, dep["metadata"].get("generation", 1)
        unavailable, avail = st.get("unavailableReplicas", 0), st.get("availableReplicas", 0)
        observed = st.get("observedGeneration", 0)
        if unavailable > 0:
            progressing.append(f'Deployment "{nn}" is not available (awaiting {unavailable} replicas)')
        elif avail == 0:
            progressing.append(f'Deployment "{nn}" is not yet scheduled on any nodes')
        elif observed < gen:
            progressing.append(f'Deployment "{nn}" update is being processed (generation {gen}, '
                               f"observed generation {observed})")
        replicas = dep["spec"].get("replicas", 1)
        if observed == gen and unavailable == 0 and replicas == avail and replicas == st.get("readyReplicas", 0):
            continue
        f = pods_failing(dep["spec"].get("selector") or {}, dep["metadata"].get("namespace"), pods)
        if f:
            failing.append(f)
    return progressing, failing
