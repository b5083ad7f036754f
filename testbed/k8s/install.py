"""Install Calico into a lab by manifest, as the walkthrough's step 2 does.

``manifests/calico.yaml`` is a template with ``__UPPER_CASE__`` placeholders. :func:`render`
fills them from :class:`InstallSettings` (the pool, block size, IPIP/VXLAN mode,
natOutgoing, etcd endpoints, BGP timers, ...), refusing bad values by name and any
placeholder left unfilled. :func:`settings_for_lab` derives the settings from a
running lab's state (its topology file and etcd), and :func:`install_by_manifest`
applies the rendered manifest through the lab's own ``kubectl apply -f -``; the
kubelets then start calico-node (DaemonSet), calico-kube-controllers and
calico-typha (Deployments) as pods.

CLI: ``python -m testbed.k8s.install [--lab NAME] [--render]``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from datastore.duration import parse_duration
from datastore.version import CALICO_VERSION

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "manifests" / "calico.yaml"
#: the Kubernetes datastore's install, in the operator's layout (namespace calico-system)
OPERATOR_TEMPLATE = REPO / "manifests" / "calico-system.yaml"
#: A lab's BGP start-up timers (the same as testbed.lab.supervisor.LAB_BGP_TIMERS; docs/bgp.md).
DEFAULT_BGP_TIMERS = "connect_delay=0.1,connect_retry=1"
_PLACEHOLDER = re.compile(r"__([A-Z][A-Z0-9_]*)__")
#: placeholders of cni_network_config that install-cni fills on each node, left as they are
INSTALL_CNI_PLACEHOLDERS = frozenset({"KUBERNETES_NODE_NAME", "CNI_MTU", "KUBECONFIG_FILEPATH"})
IPIP_MODES = ("Always", "CrossSubnet", "Never")


class InstallError(ValueError):
    """A setting is invalid, the template is broken, or kubectl refused the manifest."""


@dataclass
class InstallSettings:
    """What the manifest is rendered from (names follow calico-node's env)."""

    etcd_endpoints: list[str]
    pool_cidr: str = "192.168.0.0/16"
    block_size: int = 26
    ipip_mode: str = "Always"
    vxlan_mode: str = "Never"
    nat_outgoing: bool = True
    ip_autodetection_method: str = "interface=eth0"
    health_port: int = 9099
    bgp_timers: str = DEFAULT_BGP_TIMERS
    leak_grace_period: str = "15m"
    typha_replicas: int = 1
    #: ``kubernetes`` (the operator's calico-system layout) needs no etcd endpoints
    datastore: str = "etcdv3"
    #: NO_DEFAULT_POOLS: the operator makes the IP pools, calico-node must not
    no_default_pools: bool = False
    #: CALICO_NETWORKING_BACKEND when set (the operator: bird unless BGP is Disabled); else
    #: vxlan for a VXLAN pool, bird otherwise (calico.yaml's choice)
    networking_backend: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise :class:`InstallError` naming the first bad setting."""
        if self.datastore not in ("etcdv3", "kubernetes"):
            raise InstallError(f"datastore: {self.datastore!r} is not etcdv3 or kubernetes")
        if self.networking_backend not in (None, "bird", "vxlan", "none"):
            raise InstallError(f"networking_backend: {self.networking_backend!r} is not bird, vxlan or none")
        if not self.etcd_endpoints and self.datastore == "etcdv3":
            raise InstallError("etcd_endpoints: at least one endpoint is needed")
        for ep in self.etcd_endpoints:
            if not re.match(r"^https?://[^\s,/]+(:\d+)?/?$", ep):
                raise InstallError(f"etcd_endpoints: {ep!r} is not an http(s)://host:port URL")
        try:
            net = ipaddress.ip_network(self.pool_cidr, strict=True)
        except ValueError as exc:
            raise InstallError(f"pool_cidr: {self.pool_cidr!r} is not a network CIDR ({exc})") from None
        if net.version != 4:
            raise InstallError(f"pool_cidr: {self.pool_cidr!r} is not IPv4")
        if not isinstance(self.block_size, int) or not 20 <= self.block_size <= 32:
            raise InstallError(f"block_size: {self.block_size!r} is outside 20..32")
        if self.block_size < net.prefixlen:
            raise InstallError(f"block_size: /{self.block_size} is larger than the pool {net}")
        if self.ipip_mode not in IPIP_MODES:
            raise InstallError(f"ipip_mode: {self.ipip_mode!r} is not one of {', '.join(IPIP_MODES)}")
        if self.vxlan_mode not in IPIP_MODES:
            raise InstallError(f"vxlan_mode: {self.vxlan_mode!r} is not one of {', '.join(IPIP_MODES)}")
        if self.ipip_mode != "Never" and self.vxlan_mode != "Never":
            raise InstallError("vxlan_mode: Cannot enable both VXLAN and IPIP on the same IPPool")
        if not isinstance(self.health_port, int) or not 1 <= self.health_port <= 65535:
            raise InstallError(f"health_port: {self.health_port!r} is not a TCP port")
        try:
            parse_duration(self.leak_grace_period)
        except ValueError as exc:
            raise InstallError(f"leak_grace_period: {self.leak_grace_period!r} is not a duration like 15m "
                               f"or 2s ({exc})") from None
        if not isinstance(self.typha_replicas, int) or self.typha_replicas < 0:
            raise InstallError(f"typha_replicas: {self.typha_replicas!r} is not a replica count")
        for key, value in {"bgp_timers": self.bgp_timers, "ip_autodetection_method":
                           self.ip_autodetection_method}.items():
            if '"' in value or "\n" in value:
                raise InstallError(f"{key}: {value!r} may not contain quotes or newlines")

    def values(self) -> dict[str, str]:
        """The placeholder values (validated)."""
        self.validate()
        out = {
            "ETCD_ENDPOINTS": ",".join(self.etcd_endpoints),
            "CALICO_BACKEND": self.networking_backend or ("bird" if self.vxlan_mode == "Never" else "vxlan"),
            "NO_DEFAULT_POOLS": "true" if self.no_default_pools else "false",
            "IP_AUTODETECTION_METHOD": self.ip_autodetection_method,
            "CALICO_IPV4POOL_CIDR": str(ipaddress.ip_network(self.pool_cidr)),
            "CALICO_IPV4POOL_BLOCK_SIZE": str(self.block_size),
            "CALICO_IPV4POOL_IPIP": self.ipip_mode,
            "CALICO_IPV4POOL_VXLAN": self.vxlan_mode,
            "CALICO_IPV4POOL_NAT_OUTGOING": "true" if self.nat_outgoing else "false",
            "FELIX_HEALTHPORT": str(self.health_port),
            "CALICOLAB_BGP_TIMERS": self.bgp_timers,
            "LEAK_GRACE_PERIOD": self.leak_grace_period,
            "TYPHA_REPLICAS": str(self.typha_replicas),
            "CALICO_VERSION": CALICO_VERSION,
        }
        out.update(self.extra)
        return out


def render(settings: InstallSettings, template: str | None = None) -> str:
    """The manifest text for ``settings``; raises :class:`InstallError` on a bad setting,
    an unknown placeholder, or a result that is not valid YAML."""
    text = TEMPLATE.read_text() if template is None else template
    values = settings.values()
    missing = sorted({m.group(1) for m in _PLACEHOLDER.finditer(text)} - set(values) - INSTALL_CNI_PLACEHOLDERS)
    if missing:
        raise InstallError(f"manifest template has placeholders without a value: {', '.join(missing)}")
    out = _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(out) if d is not None]
    except yaml.YAMLError as exc:
        raise InstallError(f"rendered manifest is not valid YAML: {exc}") from None
    for i, d in enumerate(docs):
        if not isinstance(d, dict) or "kind" not in d:
            raise InstallError(f"rendered manifest document {i} has no kind")
    return out


def settings_for_lab(state: dict, **overrides: object) -> InstallSettings:
    """Settings from a lab's state (``testbed.lab.read_state``): its topology's pool and
    calico-node env, its etcd endpoints, the lab's BGP timers (``$CALICOLAB_BGP_TIMERS``
    wins). ``overrides`` set fields of :class:`InstallSettings` (e.g. leak_grace_period)."""
    from testbed.lab.topology import load

    topo = load(state["topology"], name=state["lab"], datastore=state.get("datastore"))
    env = topo.calico_node_env()
    s = InstallSettings(
        etcd_endpoints=list(state["etcd_endpoints"]),
        pool_cidr=env["CALICO_IPV4POOL_CIDR"],
        block_size=int(env["CALICO_IPV4POOL_BLOCK_SIZE"]),
        ipip_mode=env["CALICO_IPV4POOL_IPIP"],
        vxlan_mode=env.get("CALICO_IPV4POOL_VXLAN", "Never"),
        nat_outgoing=env["CALICO_IPV4POOL_NAT_OUTGOING"] == "true",
        ip_autodetection_method=env.get("IP_AUTODETECTION_METHOD", "interface=eth0"),
        health_port=int(env.get("FELIX_HEALTHPORT", "9099")),
        bgp_timers=os.environ.get("CALICOLAB_BGP_TIMERS") or DEFAULT_BGP_TIMERS,
    )
    for key, value in overrides.items():
        if not hasattr(s, key):
            raise InstallError(f"unknown install setting {key!r}")
        setattr(s, key, value)
    return s


def kubectl_argv(lab: str, *args: str) -> list[str]:
    """The lab's kubectl, as a user runs it: ``calicolab --lab L kubectl ...``."""
    return [sys.executable, "-m", "testbed.cli", "--lab", lab, "kubectl", *args]


def install_by_manifest(lab_state: dict, timeout: float = 60.0, **overrides: object) -> list[str]:
    """Render the manifest for the lab and ``kubectl apply -f -`` it; returns kubectl's
    output lines (``daemonset.apps/calico-node created`` ...). Raises
    :class:`InstallError` with kubectl's message if the apply fails, or naming the datastore when
    the lab runs the Kubernetes one (this manifest is calico-etcd.yaml's shape: etcd only)."""
    if lab_state.get("datastore", "etcdv3") != "etcdv3":
        raise InstallError(f"manifests/calico.yaml is calico-etcd.yaml's shape (the etcd datastore); lab "
                           f"{lab_state.get('lab')} runs the {lab_state['datastore']} datastore: "
                           "`calicolab install-cni` lays Calico out in calico-system there, or start the lab "
                           "with --datastore etcdv3")
    return _apply(lab_state, render(settings_for_lab(lab_state, **overrides)), "calico.yaml", timeout)


def render_operator_layout(lab_state: dict, **overrides: object) -> str:
    """manifests/calico-system.yaml for a lab in the Kubernetes datastore, as ``up`` lays it out
    without the operator: the operator's layout (:func:`render_calico_system`, the one rendering
    the operator uses too, testbed.k8s.tigera.render) with the lab's pool, autodetection, health port
    and BGP timers, and the control plane's API address (a host-network pod has no route to
    the kubernetes Service in a lab node)."""
    from testbed.lab.kubeadm import API_PORT
    from testbed.lab.topology import load

    topo = load(lab_state["topology"], name=lab_state["lab"], datastore=lab_state.get("datastore"))
    s = settings_for_lab(lab_state, **overrides)
    s.datastore = "kubernetes"
    return render_calico_system(s, str(topo.control_plane.address), API_PORT)


def render_calico_system(settings: InstallSettings, api_host: str, api_port: int | str) -> str:
    """manifests/calico-system.yaml (the operator's layout of an Installation) rendered from
    ``settings``, with the API server's address as calico-node's, Typha's and kube-controllers'
    ``KUBERNETES_SERVICE_HOST``/``PORT`` (what the operator's ``kubernetes-services-endpoint``
    ConfigMap gives them). Raises :class:`InstallError` on a bad setting."""
    settings.extra = {**settings.extra, "KUBERNETES_SERVICE_HOST": str(api_host),
                      "KUBERNETES_SERVICE_PORT": str(api_port)}
    return render(settings, OPERATOR_TEMPLATE.read_text())


def install_operator_layout(lab_state: dict, timeout: float = 60.0, **overrides: object) -> list[str]:
    """``kubectl apply -f -`` of :func:`render_operator_layout`; returns kubectl's lines.
    Raises :class:`InstallError` with kubectl's message if the apply fails."""
    return _apply(lab_state, render_operator_layout(lab_state, **overrides), "calico-system.yaml", timeout)


def _apply(lab_state: dict, text: str, what: str, timeout: float) -> list[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(kubectl_argv(lab_state["lab"], "apply", "-f", "-"), input=text, text=True,
                          capture_output=True, timeout=timeout, env=env, cwd=str(REPO))
    if proc.returncode != 0:
        raise InstallError(f"kubectl apply -f {what} failed (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()}")
    return [line for line in proc.stdout.splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    """``python -m testbed.k8s.install [--lab NAME] [--render] [--leak-grace-period D]``."""
    ap = argparse.ArgumentParser(prog="python -m testbed.k8s.install", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lab", help="the lab (default: the only one running)")
    ap.add_argument("--render", action="store_true", help="print the manifest, do not apply it")
    ap.add_argument("--leak-grace-period", default="15m", help="kube-controllers' IPAM leak grace period")
    args = ap.parse_args(argv)
    from testbed.lab import state as labstate

    try:
        state = labstate.resolve(args.lab)
        if args.render:
            print(render(settings_for_lab(state, leak_grace_period=args.leak_grace_period)), end="")
            return 0
        for line in install_by_manifest(state, leak_grace_period=args.leak_grace_period):
            print(line)
    except (InstallError, labstate.LabError) as exc:
        print(f"install: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
