"""``python -m agent.kubecontrollers``: calico-kube-controllers (etcd datastore).

Environment: DATASTORE_TYPE (etcdv3 with ETCD_ENDPOINTS, or kubernetes), ENABLED_CONTROLLERS
(node, policy, namespace/profile, serviceaccount, workloadendpoint; KUBECONFIG to read
Kubernetes through its API),
LEAK_GRACE_PERIOD (15m), RECONCILER_PERIOD (5m), LOG_LEVEL (info). ``--status-file``
(``-status-file``): the status file ``check-status`` reads (:mod:`agent.kubecontrollers.status`;
the kubelet passes one in the container's directory). Upstream's default, /status/status.json,
is not used: this process shares the machine's filesystem; without the flag no file is written.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> int:
    """Run until SIGTERM/SIGINT."""
    from kernel.preload import before_threads

    before_threads()  # before any thread imports lazily (kernel.preload)
    from agent.kubecontrollers.config import ConfigError, from_env
    from agent.kubecontrollers.controller import KubeControllers
    from agent.kubecontrollers.status import Status, run_health_checks
    from datastore import Client, errors

    args = list(sys.argv[1:] if argv is None else argv)
    # upstream's default is /status/status.json in its container's own filesystem; calicolab's
    # processes share the node's (the machine's), so without --status-file none is written
    status_path = ""
    for i, a in enumerate(args):
        if a in ("--status-file", "-status-file") and i + 1 < len(args):
            status_path = args[i + 1]
        elif a.startswith(("--status-file=", "-status-file=")):
            status_path = a.split("=", 1)[1]
    status = Status(status_path)
    status.set_ready("Startup", False, "initialized to false")
    env = dict(os.environ)
    logging.basicConfig(level=env.get("LOG_LEVEL", "info").upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s kube-controllers: %(message)s")
    try:
        cfg = from_env(env)
        client = Client.from_env(env)
    except (ConfigError, errors.DatastoreError) as exc:
        print(f"calico-kube-controllers: {exc}", file=sys.stderr)
        return 1
    status.set_ready("Startup", True, "")
    if not status_path:
        logging.getLogger(__name__).info("no --status-file: the health status is not written to a file")
    stop = threading.Event()
    logging.getLogger(__name__).info("starting: controllers %s, leak grace period %gs",
                                     ",".join(cfg.enabled), cfg.leak_grace_period)
    from agent.kubecontrollers.kubesource import from_env as kube_source
    from agent.kubecontrollers.objects import ObjectControllers
    from kubeclient import ConfigError as KubeConfigError

    kube = getattr(client, "kube", None)
    if kube is not None:  # the Kubernetes datastore: the same API client
        from agent.kubecontrollers.kubesource import ApiSource

        source = ApiSource(kube)
    else:
        try:
            source = kube_source(env)
        except KubeConfigError as exc:
            print(f"calico-kube-controllers: the Kubernetes API is needed (KUBECONFIG or the pod's in-cluster "
                  f"config): {exc}", file=sys.stderr)
            return 1
    enabled = [c for c in cfg.enabled if c not in cfg.not_needed]
    objects = ObjectControllers(client, source, enabled, cfg.reconciler_period)
    controllers = KubeControllers(client, cfg, source=source)

    def on_signal(*_: object) -> None:
        stop.set()
        controllers.dirty.set()  # wake the node controller's wait (up to a GC interval)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    api = getattr(source, "client", None)

    def datastore_ok() -> str | None:
        try:
            client.get("ClusterInformation", "default")
        except errors.NotFound:
            pass  # the datastore answered: calico-node writes it at its start
        except Exception as exc:  # noqa: BLE001 - any failure is the reason
            return str(exc)
        return None

    def apiserver_ok() -> str | None:
        try:
            api.request("GET", "/healthz", raw=True)
        except Exception as exc:  # noqa: BLE001
            return str(exc)
        return None

    if api is not None:
        threading.Thread(target=run_health_checks, args=(status, datastore_ok, apiserver_ok, stop),
                         name="health", daemon=True).start()
    else:  # Kubernetes read from the API server's etcd keys: no API server to ask
        logging.getLogger(__name__).info("no Kubernetes API client: the status file has Startup only")
    worker = threading.Thread(target=objects.run, args=(stop,), name="object-controllers", daemon=True)
    worker.start()
    controllers.run(stop)
    worker.join(timeout=5)
    return 0
