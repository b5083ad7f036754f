"""kube-controllers' settings from the environment (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field

from datastore.duration import parse_duration

#: the etcd manifest's default (calico-etcd.yaml)
DEFAULT_ENABLED = "policy,namespace,serviceaccount,workloadendpoint,node"
#: v3.28.1's controllers (``runconfig.go mergeEnabledControllers``); "profile" is an alias of
#: "namespace"; flannelmigration must run alone; there is no loadbalancer controller before v3.30
KNOWN_CONTROLLERS = ("node", "policy", "namespace", "profile", "serviceaccount", "workloadendpoint",
                     "flannelmigration")
#: the ones calicolab implements
IMPLEMENTED = ("node", "policy", "namespace", "serviceaccount", "workloadendpoint")


class ConfigError(ValueError):
    """A setting is invalid (the message names it)."""


def _duration(text: str, name: str) -> float:
    """A Go duration setting (``15m``, ``2s``, ``1m30s``, ``500ms``) -> seconds."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"{name}={text!r} is not a duration like 15m, 2s, 1m30s ({exc})") from None


@dataclass
class Config:
    """What the controllers run with."""

    enabled: list[str] = field(default_factory=lambda: DEFAULT_ENABLED.split(","))
    leak_grace_period: float = 15 * 60.0
    reconciler_period: float = 5 * 60.0
    node_name_of_self: str = ""
    #: etcdv3 or kubernetes (``DATASTORE_TYPE``, resolved as Calico's apiconfig does)
    datastore_type: str = "etcdv3"

    @property
    def delete_nodes(self) -> bool:
        """The node controller deletes Calico Nodes (and their endpoints and per-node
        configuration) only in etcd mode: in the Kubernetes datastore the Calico Node is the
        Kubernetes Node (runconfig.go ``DeleteNodes``)."""
        return self.datastore_type != "kubernetes"

    @property
    def gc_interval(self) -> float:
        """Full IPAM scans every leakGracePeriod/2 (Calico's ipam.go)."""
        return self.leak_grace_period / 2 if self.leak_grace_period > 0 else 5 * 60.0

    @property
    def unimplemented(self) -> list[str]:
        """Enabled controllers calicolab does not implement (logged, never faked)."""
        return [c for c in self.enabled if c not in IMPLEMENTED]

    @property
    def not_needed(self) -> list[str]:
        """Enabled controllers with nothing to do in the Kubernetes datastore: profiles and
        WorkloadEndpoints are derived from Namespaces, ServiceAccounts and Pods, and
        Kubernetes NetworkPolicies are converted by the datastore itself (calico.md section 6)."""
        if self.datastore_type != "kubernetes":
            return []
        return [c for c in self.enabled if c in ("policy", "namespace", "serviceaccount", "workloadendpoint")]


def from_env(env: dict[str, str]) -> Config:
    """``ENABLED_CONTROLLERS``, ``LEAK_GRACE_PERIOD`` (0 disables leak GC), ``RECONCILER_PERIOD``."""
    enabled = [c.strip() for c in env.get("ENABLED_CONTROLLERS", DEFAULT_ENABLED).split(",") if c.strip()]
    for c in enabled:
        if c not in KNOWN_CONTROLLERS:
            # kube-controllers' runconfig.go wording (fatal there too)
            raise ConfigError(f"Invalid controller '{c}' provided. "
                              f"(ENABLED_CONTROLLERS; v3.28.1 knows {', '.join(KNOWN_CONTROLLERS)})")
    if "flannelmigration" in enabled and len(enabled) > 1:
        raise ConfigError("ENABLED_CONTROLLERS: cannot run flannelmigration with other controllers")
    enabled = list(dict.fromkeys("namespace" if c == "profile" else c for c in enabled))
    from datastore.base import datastore_type
    from datastore.errors import DatastoreError

    try:
        dtype = datastore_type(env)
    except DatastoreError as exc:
        raise ConfigError(str(exc)) from None
    return Config(
        datastore_type=dtype,
        enabled=enabled,
        leak_grace_period=_duration(env.get("LEAK_GRACE_PERIOD", "15m"), "LEAK_GRACE_PERIOD"),
        reconciler_period=_duration(env.get("RECONCILER_PERIOD", "5m"), "RECONCILER_PERIOD"),
    )
