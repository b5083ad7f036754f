"""Install Calico into a lab by the operator, as the first seed does: ``kubectl create -f
tigera-operator.yaml``, then ``kubectl create -f custom-resources.yaml`` (the real kubectl,
through ``calicolab kubectl``), then wait until ``kubectl get tigerastatus`` says calico is
Available. ``calicolab install-cni --operator`` runs it after ``calicolab up --no-cni``.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from testbed.k8s.install import REPO, InstallError, kubectl_argv

OPERATOR_MANIFEST = REPO / "manifests" / "tigera-operator.yaml"
CUSTOM_RESOURCES = REPO / "manifests" / "custom-resources.yaml"
#: Degraded reasons that waiting does not fix (the Installation must change)
FINAL_REASONS = ("InvalidConfigurationError", "ResourceValidationError")


def _kubectl(lab: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(kubectl_argv(lab, *args), text=True, capture_output=True, timeout=timeout, env=env,
                          cwd=str(REPO))


def create(lab: str, path: Path) -> list[str]:
    """``kubectl create -f path``; returns kubectl's lines. Raises :class:`InstallError`."""
    proc = _kubectl(lab, "create", "-f", str(path))
    if proc.returncode != 0:
        raise InstallError(f"kubectl create -f {path.name} failed (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()}")
    return [ln for ln in proc.stdout.splitlines() if ln.strip()]


def tigerastatus(lab: str) -> dict[str, dict[str, dict]]:
    """What ``kubectl get tigerastatus`` lists: component -> condition type -> condition (read
    with the lab's admin kubeconfig from its control-plane node, in this process: polled
    every 0.5 s, a kubectl process each time would load a busy machine)."""
    from testbed.lab import kubeadm
    from testbed.lab import netns as nsmod
    from testbed.lab import state as labstate

    st = labstate.resolve(lab)
    conf = str(kubeadm.admin_conf(st))

    def read() -> list[dict]:
        import kubeclient

        client = kubeclient.Client(kubeclient.from_kubeconfig(conf))
        client.config.timeout = 5.0
        try:
            return client.list("operator.tigera.io/v1", "tigerastatuses").get("items") or []
        except kubeclient.KubeError:
            return []

    items = nsmod.run_in(st["hosts"][st["control_plane"]]["netns"], read)
    return {i["metadata"]["name"]: {c["type"]: c for c in (i.get("status") or {}).get("conditions") or []}
            for i in items}


def describe(name: str, conds: dict[str, dict]) -> str:
    """One progress line for a component: ``calico: Progressing (DaemonSet ... awaiting 2 nodes)``."""
    if conds.get("Available", {}).get("status") == "True":
        return f"{name}: Available"
    for typ in ("Degraded", "Progressing"):
        c = conds.get(typ) or {}
        if c.get("status") == "True":
            msg = " ".join((c.get("message") or "").split())
            return f"{name}: {typ} ({c.get('reason')}: {msg})" if msg else f"{name}: {typ} ({c.get('reason')})"
    return f"{name}: waiting"


def install_by_operator(lab: str, progress: Callable[[str], None], timeout: float = 120.0,
                        custom_resources: Path = CUSTOM_RESOURCES) -> list[str]:
    """Create the operator and the custom resources, then wait (printing each change of
    ``kubectl get tigerastatus``) until calico is Available. Returns kubectl's lines. Raises
    :class:`InstallError` when calico or ippools is Degraded for a reason waiting does not fix,
    or at the deadline, with what was last seen."""
    lines = create(lab, OPERATOR_MANIFEST)
    for ln in lines:
        progress(ln)
    more = create(lab, custom_resources)
    for ln in more:
        progress(ln)
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while True:
        st = tigerastatus(lab)
        for name in sorted(st):
            line = describe(name, st[name])
            if seen.get(name) != line:
                progress(f"tigerastatus {line}")
                seen[name] = line
        if st.get("calico", {}).get("Available", {}).get("status") == "True":
            return lines + more
        for name in ("ippools", "calico"):
            deg = st.get(name, {}).get("Degraded") or {}
            if deg.get("status") == "True" and deg.get("reason") in FINAL_REASONS:
                raise InstallError(f"tigerastatus {name} is Degraded ({deg.get('reason')}): {deg.get('message')}")
        if time.monotonic() > deadline:
            raise InstallError(f"tigerastatus calico not Available after {timeout:.0f}s; last seen: "
                               + ("; ".join(seen.values()) or "no TigeraStatus (is the tigera-operator pod running? "
                                  "kubectl get pods -n tigera-operator)"))
        time.sleep(0.5)
