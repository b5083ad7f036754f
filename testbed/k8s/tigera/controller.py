"""The operator's reconcile loop: the Installation ``default`` -> IP pools, namespace
calico-system, TigeraStatus ``calico`` / ``ippools`` / ``apiserver``.

Three controllers in one pass, as tigera/operator v1.34.3 runs them (its own status each):

- **ippools** (pkg/controller/ippool): defaults and ``ValidatePools``, the defaults written
  back into the Installation, then the pools created, all of them, when the cluster has none.
  An invalid pool set is Degraded (InvalidConfigurationError) and nothing is made. A change
  to the pools once there are some needs the Calico API server, which calicolab does not have:
  Degraded "Unable to modify IP pools while Calico API server is unavailable", as the operator
  says without it.
- **calico** (pkg/controller/installation): ``validateCustomResource`` (with the fields
  calicolab does not implement named), "waiting for enabled IP pools to be created" until the
  pools exist, then Calico's CRDs, the FelixConfiguration ``default`` defaults (healthPort
  9099, vxlanVNI 4096) and calico-system rendered (testbed.k8s.tigera.render) and applied
  (server-side apply, owned by the Installation so deleting it removes them); Available once
  every DaemonSet and Deployment is.
- **apiserver**: an APIServer ``default`` is reported Degraded: calicolab has no Calico API
  server (the aggregated projectcalico.org/v3 API) to install.

The API is injected (``kube``: a kubeclient.Client; ``calico``: a Calico datastore client), and
so is the clock.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from testbed.k8s.tigera import installation as inst
from testbed.k8s.tigera.status import Component, merge_conditions, sync_state

GROUP = "operator.tigera.io/v1"
NAMESPACE = "calico-system"
OPERATOR_NAMESPACE = "tigera-operator"
FIELD_MANAGER = "tigera-operator"
CALICO_VERSION = "v3.28.1"
#: what calicolab says about the APIServer resource (docs/install.md)
NO_APISERVER = ("calicolab does not implement the Calico API server (Deployment calico-apiserver in namespace "
                "calico-apiserver, APIService v3.projectcalico.org): the projectcalico.org/v3 API is not served; "
                "use calicoctl, or kubectl on the crd.projectcalico.org resources")
#: re-apply the rendered objects this often even when nothing changed (a deleted object comes back)
RESYNC = 30.0


def _now(clock: Callable[[], float]) -> str:
    return datetime.datetime.fromtimestamp(clock(), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _log(msg: str) -> None:
    print(f"{datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')} {msg}", flush=True)


class Operator:
    """One reconcile pass per :meth:`reconcile` call."""

    def __init__(self, kube: Any, calico: Any, *, api_host: str, api_port: str | int,
                 render: Callable[[dict], str] | None = None, clock: Callable[[], float] = time.time,
                 log: Callable[[str], None] = _log, ensure_crds: Callable[[], None] | None = None):
        self.kube, self.calico, self.clock, self.log = kube, calico, clock, log
        self.api_host, self.api_port = api_host, api_port
        self.render = render or self._render
        self.ensure_crds = ensure_crds
        self.components = {n: Component(n) for n in ("calico", "ippools", "apiserver")}
        self.applied: tuple[str, float] | None = None  # (hash of what was applied, when)
        self.monitored: tuple[list[tuple[str, str]], list[tuple[str, str]]] = ([], [])
        self.crds_ok = self.felix_ok = False
        self.installation_uid: str | None = None
        self.rendered: tuple[str, str] | None = None  # (the spec rendered, the text)
        self.last_msgs: dict[str, str] = {}

    # ------------------------------------------------------------------ helpers
    def _render(self, spec: dict) -> str:
        from testbed.k8s.tigera.render import render_calico_system, settings_for_installation

        host, port = self.api_endpoint()
        return render_calico_system(settings_for_installation(spec), host, port)

    def api_endpoint(self) -> tuple[str, str | int]:
        """The API server address calico-system's pods get: the ConfigMap
        ``kubernetes-services-endpoint`` in namespace tigera-operator when it exists (as the
        operator reads it), else the operator's own (its ``KUBERNETES_SERVICE_HOST``/``PORT``)."""
        cm = self._get("v1", "configmaps", "kubernetes-services-endpoint", OPERATOR_NAMESPACE)
        data = (cm or {}).get("data") or {}
        if data.get("KUBERNETES_SERVICE_HOST") and data.get("KUBERNETES_SERVICE_PORT"):
            return data["KUBERNETES_SERVICE_HOST"], data["KUBERNETES_SERVICE_PORT"]
        return self.api_host, self.api_port

    def _get(self, api: str, plural: str, name: str, namespace: str | None = None) -> dict | None:
        import kubeclient

        try:
            return self.kube.get(api, plural, name, namespace)
        except kubeclient.NotFound:
            return None

    def _degrade(self, comp: str, reason: str, what: str, err: str = "") -> None:
        self.components[comp].set_degraded(reason, f"{what}: {err}")

    # ------------------------------------------------------------------ the pass
    def reconcile(self) -> None:
        """One pass of the three controllers, then the TigeraStatus objects written."""
        installation = self._get(GROUP, "installations", inst.DEFAULT_NAME)
        active = ["apiserver"]
        uid = (installation or {}).get("metadata", {}).get("uid")
        if uid != self.installation_uid:
            # a new (or no) Installation: what was applied for the old one is being garbage
            # collected; nothing is monitored until this one is rendered
            self.installation_uid, self.applied, self.monitored = uid, None, ([], [])
            for name in ("calico", "ippools"):
                self.components[name] = Component(name)
        if installation is None or installation["metadata"].get("deletionTimestamp"):
            # the operator's OnCRNotFound: every condition of calico and ippools False
            for name in ("calico", "ippools"):
                if self._get(GROUP, "tigerastatuses", name) is not None:
                    active.append(name)
        else:
            active += ["ippools", "calico"]
            spec = self.reconcile_pools(installation)
            self.reconcile_core(installation, spec)
        self.reconcile_apiserver()
        for name in active:
            self.write_status(name)
        if installation is not None and "calico" in active:
            self.write_installation_status(installation)

    def reconcile_pools(self, installation: dict) -> dict | None:
        """The IP pool controller; returns the defaulted spec (None if invalid)."""
        comp = self.components["ippools"]
        comp.ready_to_monitor = comp.synced = True
        spec = inst.fill_defaults(installation.get("spec") or {})
        try:
            inst.validate_installation(spec)
        except inst.InstallationError:
            self._degrade("ippools", "ResourceNotReady", "Waiting for Installation defaulting to occur")
            return None
        from datastore.resources import IPPool

        try:
            current = self.calico.list(IPPool)
        except Exception as exc:  # noqa: BLE001 - reported as the operator does
            self._degrade("ippools", "ResourceReadError", "error querying IP pools", str(exc))
            return None
        cur_docs = [p.to_dict() for p in current]
        spec = inst.fill_pool_defaults(spec, cur_docs)
        try:
            inst.validate_pools(spec)
            inst.validate_installation(spec)  # encapsulation vs BGP, now that the pools are defaulted
        except inst.InstallationError as exc:
            self._degrade("ippools", exc.reason, exc.what, exc.err)
            return None
        if spec != installation.get("spec"):
            try:
                installation = self.kube.patch(GROUP, "installations", inst.DEFAULT_NAME, {"spec": spec},
                                               patch_type="merge")
            except Exception as exc:  # noqa: BLE001
                self._degrade("ippools", "ResourceUpdateError", "Failed to write defaults", str(exc))
                return None
        want = spec["calicoNetwork"]["ipPools"]
        if not current:
            if want and not self._create_pools(want):
                return None
            comp.clear_degraded()
            return spec
        ours = {p.spec.cidr: p for p in current if (p.metadata.labels or {}).get(inst.MANAGED_BY[0]) == inst.MANAGED_BY[1]}
        for p in current:
            for w in want:
                if p.spec.cidr not in ours and self._same(p, w):
                    ours[p.spec.cidr] = p  # a pool equal to the Installation's: assumed ours
        for w in want:
            have = ours.get(w["cidr"])
            if have is None and any(p.spec.cidr == w["cidr"] for p in current):
                self._degrade("ippools", "ResourceValidationError", "Cannot update an IP pool not owned by the operator")
                return spec
            if have is None or not self._same(have, w):
                self._degrade("ippools", "ResourceNotReady",
                              "Unable to modify IP pools while Calico API server is unavailable")
                return spec
        if any(cidr not in {w["cidr"] for w in want} for cidr in ours):
            self._degrade("ippools", "ResourceNotReady",
                          "Unable to delete IP pools while Calico API server is unavailable")
            return spec
        comp.clear_degraded()
        return spec

    @staticmethod
    def _same(pool: Any, want: dict) -> bool:
        have = pool.to_dict().get("spec") or {}
        doc = inst.pool_resource(want)
        return pool.metadata.name == want["name"] and all(have.get(k) == v for k, v in doc["spec"].items())

    def _create_pools(self, want: list[dict]) -> bool:
        """Create every pool or none (a failure removes the ones this pass made)."""
        from datastore.resources import IPPool

        made = []
        for w in want:
            try:
                made.append(self.calico.create(IPPool.from_dict(inst.pool_resource(w))))
                self.log(f"created IPPool {w['name']} ({w['cidr']})")
            except Exception as exc:  # noqa: BLE001 - reported, and undone
                for m in made:
                    try:
                        self.calico.delete(IPPool, m.metadata.name)
                    except Exception:  # noqa: BLE001
                        pass
                self._degrade("ippools", "ResourceUpdateError", "Error creating / updating IPPools", str(exc))
                return False
        return True

    def reconcile_core(self, installation: dict, pool_spec: dict | None) -> None:
        """The core Installation controller."""
        comp = self.components["calico"]
        spec = inst.fill_defaults(installation.get("spec") or {})
        try:
            inst.validate_installation(spec)
        except inst.InstallationError as exc:
            self._degrade("calico", exc.reason, exc.what, exc.err)
            return
        if pool_spec is not None:
            spec = pool_spec
        from datastore.resources import IPPool

        try:
            pools = self.calico.list(IPPool)
        except Exception as exc:  # noqa: BLE001
            self._degrade("calico", "ResourceReadError", "error querying IP pools", str(exc))
            return
        if inst.needs_pools(spec) and not pools:
            self._degrade("calico", "ResourceNotFound", "waiting for enabled IP pools to be created")
            return
        if pool_spec is None:
            # the pools exist but the Installation's are invalid (TigeraStatus ippools says why):
            # calico-system stays as it was rendered, and is still watched
            if comp.ready_to_monitor and self.monitored != ([], []):
                self.sync("calico")
            return
        if not self.crds_ok and self.ensure_crds is not None:
            try:
                self.ensure_crds()
                self.crds_ok = True
            except Exception as exc:  # noqa: BLE001
                self._degrade("calico", "ResourceUpdateError", "Error creating / updating CRD resource", str(exc))
                return
        try:
            if not self.felix_ok:
                self.felix_defaults()
                self.felix_ok = True
        except Exception as exc:  # noqa: BLE001
            self._degrade("calico", "ResourceUpdateError", "Error updating resource", str(exc))
            return
        try:
            key = json.dumps([spec, self.api_endpoint()], sort_keys=True)
            if self.rendered is None or self.rendered[0] != key:
                self.rendered = (key, self.render(spec))
            text = self.rendered[1]
        except Exception as exc:  # noqa: BLE001
            self._degrade("calico", "ResourceRenderingError", "Error rendering calico-system", str(exc))
            return
        try:
            self.apply(text, installation)
        except Exception as exc:  # noqa: BLE001
            self._degrade("calico", "ResourceUpdateError", "Error creating / updating resource", str(exc))
            return
        comp.clear_degraded()
        comp.ready_to_monitor = True
        self.sync("calico")

    def felix_defaults(self) -> None:
        """FelixConfiguration ``default``: healthPort 9099 and vxlanVNI 4096 where unset."""
        from datastore import errors
        from datastore.resources import FelixConfiguration

        try:
            fc = self.calico.get(FelixConfiguration, "default")
        except errors.NotFound:
            fc = None
        if fc is None:
            self.calico.create(FelixConfiguration.from_dict(
                {"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration", "metadata": {"name": "default"},
                 "spec": {"healthPort": 9099, "vxlanVNI": 4096}}))
        elif fc.spec.health_port is None or fc.spec.vxlan_vni is None:
            if fc.spec.health_port is None:
                fc.spec.health_port = 9099
            if fc.spec.vxlan_vni is None:
                fc.spec.vxlan_vni = 4096
            self.calico.update(fc)

    def apply(self, text: str, installation: dict) -> None:
        """Server-side apply of the rendered objects (when they changed, or every RESYNC s)."""
        from testbed.k8s.tigera.render import objects

        digest = hashlib.sha256(text.encode()).hexdigest()
        if self.applied and self.applied[0] == digest and self.clock() - self.applied[1] < RESYNC:
            return
        owner = {"apiVersion": GROUP, "kind": "Installation", "name": installation["metadata"]["name"],
                 "uid": installation["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
        daemonsets, deployments = [], []
        for obj in objects(text):
            obj.setdefault("metadata", {})["ownerReferences"] = [owner]
            self.kube.apply(obj, field_manager=FIELD_MANAGER, force=True)
            nn = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
            if obj["kind"] == "DaemonSet":
                daemonsets.append(nn)
            elif obj["kind"] == "Deployment":
                deployments.append(nn)
        if not self.applied or self.applied[0] != digest:
            self.log(f"applied calico-system: DaemonSets {', '.join(n for _, n in daemonsets)}; "
                     f"Deployments {', '.join(n for _, n in deployments)}")
        self.applied = (digest, self.clock())
        self.monitored = (daemonsets, deployments)

    def sync(self, name: str) -> None:
        """The component's progressing / failing workloads (status.go ``syncState``)."""
        comp = self.components[name]
        dss = [d for d in (self._get("apps/v1", "daemonsets", n, ns) for ns, n in self.monitored[0]) if d]
        deps = [d for d in (self._get("apps/v1", "deployments", n, ns) for ns, n in self.monitored[1]) if d]
        comp.progressing, comp.failing = sync_state(
            dss, deps, lambda: self.kube.list("v1", "pods", NAMESPACE).get("items") or [])
        comp.synced = True

    def reconcile_apiserver(self) -> None:
        """An APIServer ``default``: Degraded (calicolab has no Calico API server)."""
        comp = self.components["apiserver"]
        if self._get(GROUP, "apiservers", inst.DEFAULT_NAME) is None:
            comp.clear_degraded()
            comp.ready_to_monitor = False
            if self._get(GROUP, "tigerastatuses", "apiserver") is not None:
                import kubeclient

                try:
                    self.kube.delete(GROUP, "tigerastatuses", "apiserver")
                except kubeclient.NotFound:
                    pass
            return
        comp.ready_to_monitor = comp.synced = True
        comp.set_degraded("NotApplicable", NO_APISERVER)

    # ------------------------------------------------------------------ status
    def write_status(self, name: str) -> None:
        """Create or update TigeraStatus ``name`` when its conditions change."""
        comp = self.components[name]
        if name == "apiserver" and not comp.ready_to_monitor:
            return
        conds = comp.conditions()
        if name in ("calico", "ippools") and self.installation_uid is None:
            conds = [(t, "False", "Unknown", "") for t in ("Available", "Progressing", "Degraded")]
        summary = "; ".join(f"{t}={s}" + (f" ({r}: {m})" if s == "True" and t != "Available" and m else "")
                            for t, s, r, m in conds)
        if self.last_msgs.get(name) != summary:
            self.log(f"tigerastatus {name}: {summary}")
            self.last_msgs[name] = summary
        ts = self._get(GROUP, "tigerastatuses", name)
        now = _now(self.clock)
        if ts is None:
            obj = {"apiVersion": GROUP, "kind": "TigeraStatus", "metadata": {"name": name}, "spec": {},
                   "status": {"conditions": merge_conditions([], conds, now)}}
            created = self.kube.create(obj, plural="tigerastatuses")
            created["status"] = obj["status"]
            self.kube.update_status(created, plural="tigerastatuses")
            return
        old = (ts.get("status") or {}).get("conditions") or []
        new = merge_conditions(old, conds, now)
        if new != old:
            ts["status"] = {"conditions": new}
            self.kube.update_status(ts, plural="tigerastatuses")

    def write_installation_status(self, installation: dict) -> None:
        """The Installation's status: variant, calicoVersion, computed (the defaulted spec) and
        conditions Ready / Progressing / Degraded from TigeraStatus ``calico``."""
        cur = self._get(GROUP, "installations", inst.DEFAULT_NAME)
        if cur is None:
            return
        comp = self.components["calico"]
        conds = [("Ready" if t == "Available" else t, s, r, m) for t, s, r, m in comp.conditions()]
        old = cur.get("status") or {}
        status = dict(old)
        status["conditions"] = merge_conditions(old.get("conditions") or [], conds, _now(self.clock))
        if comp.available():
            status.update(variant="Calico", calicoVersion=CALICO_VERSION, computed=cur.get("spec") or {})
        if status != old:
            cur["status"] = status
            self.kube.update_status(cur, plural="installations")


def run(op: Operator, interval: float = 0.5, stop: Callable[[], bool] = lambda: False) -> None:
    """Reconcile every ``interval`` s until ``stop()``; an error is logged and retried."""
    last_err = ""
    while not stop():
        try:
            op.reconcile()
            last_err = ""
        except Exception as exc:  # noqa: BLE001 - the API may be down for a moment: retry
            msg = f"reconcile failed: {type(exc).__name__}: {exc}"
            if msg != last_err:
                op.log(msg)
                last_err = msg
        time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    """``python -m testbed.k8s.tigera``: the operator, in-cluster (its ServiceAccount)."""
    import os

    import kubeclient
    from datastore.kdd import KubeClient, install_crds

    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        print("tigera-operator: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set", file=sys.stderr)
        return 2
    kube = kubeclient.Client(kubeclient.load())
    kube.config.timeout = 10.0
    calico = KubeClient(kube)
    op = Operator(kube, calico, api_host=host, api_port=port, ensure_crds=lambda: install_crds(kube))
    _log(f"tigera-operator (calicolab), Calico {CALICO_VERSION}, API {host}:{port}: watching Installation "
         f"{inst.DEFAULT_NAME} " + json.dumps({"group": GROUP}))
    run(op)
    return 0
