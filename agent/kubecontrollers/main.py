"""``python -m agent.kubecontrollers``: calico-kube-controllers (etcd datastore).

Environment: ETCD_ENDPOINTS, DATASTORE_TYPE (etcdv3), ENABLED_CONTROLLERS
(node, policy, namespace/profile, serviceaccount, workloadendpoint; KUBECONFIG to read
Kubernetes through its API),
LEAK_GRACE_PERIOD (15m), RECONCILER_PERIOD (5m), LOG_LEVEL (info).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> int:
    """Run until SIGTERM/SIGINT."""
    from agent.kubecontrollers.config import ConfigError, from_env
    from agent.kubecontrollers.controller import KubeControllers
    from datastore import Client, errors

    env = dict(os.environ)
    logging.basicConfig(level=env.get("LOG_LEVEL", "info").upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s kube-controllers: %(message)s")
    try:
        cfg = from_env(env)
        client = Client.from_env(env)
    except (ConfigError, errors.DatastoreError) as exc:
        print(f"calico-kube-controllers: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    logging.getLogger(__name__).info("starting: controllers %s, leak grace period %gs",
                                     ",".join(cfg.enabled), cfg.leak_grace_period)
    from agent.kubecontrollers.kubesource import from_env as kube_source
    from agent.kubecontrollers.objects import ObjectControllers

    source = kube_source(env, client.etcd)
    objects = ObjectControllers(client, source, cfg.enabled, cfg.reconciler_period)
    worker = threading.Thread(target=objects.run, args=(stop,), name="object-controllers", daemon=True)
    worker.start()
    KubeControllers(client, cfg, source=source).run(stop)
    worker.join(timeout=5)
    return 0
