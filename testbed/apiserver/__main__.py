"""``python -m testbed.apiserver --etcd-servers http://IP:2379 --bind-address IP
--secure-port 6443 --cert-dir /etc/kubernetes/pki``: run the API server.

Flags carry kube-apiserver's names; an unknown flag is an error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from testbed.apiserver.server import APIServer, Options


def _bool(v: str) -> bool:
    if v.lower() in ("true", "1", "yes"):
        return True
    if v.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {v!r} (true or false)")


def _duration(v: str) -> float:
    """A Go duration (``5m0s``, ``90s``, ``1h``, ``250ms``, ``0``) in seconds."""
    import re

    if v.strip() == "0":
        return 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", v)
    if not parts or "".join(n + u for n, u in parts) != v.strip():
        raise argparse.ArgumentTypeError(f"invalid duration {v!r} (e.g. 5m0s)")
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def parse_args(argv: list[str] | None = None) -> Options:
    """Options from kube-apiserver-style flags (``--flag value`` or ``--flag=value``)."""
    p = argparse.ArgumentParser(prog="kube-apiserver (calicolab)", allow_abbrev=False,
                                description="calicolab's Kubernetes API server over etcd")
    p.add_argument("--etcd-servers", required=True, help="comma-separated etcd URLs (http://host:port)")
    p.add_argument("--bind-address", default="0.0.0.0")
    p.add_argument("--secure-port", type=int, default=6443)
    p.add_argument("--cert-dir", default="/etc/kubernetes/pki",
                   help="the PKI directory (ca.crt, apiserver.crt/key, sa.key/pub: testbed.apiserver.pki writes it)")
    p.add_argument("--tls-cert-file", default="")
    p.add_argument("--tls-private-key-file", default="")
    p.add_argument("--client-ca-file", default="")
    p.add_argument("--service-account-key-file", default="")
    p.add_argument("--service-account-signing-key-file", default="")
    p.add_argument("--service-account-issuer", default="https://kubernetes.default.svc.cluster.local")
    p.add_argument("--service-cluster-ip-range", default="10.96.0.0/12")
    p.add_argument("--advertise-address", default="")
    p.add_argument("--anonymous-auth", type=_bool, default=False)
    p.add_argument("--kubelet-client-certificate", default="")
    p.add_argument("--kubelet-client-key", default="")
    p.add_argument("--kubelet-certificate-authority", default="")
    p.add_argument("--enable-garbage-collector", type=_bool, default=True)
    p.add_argument("--etcd-compaction-interval", type=_duration, default=300.0,
                   help="compact etcd's history this often, like kube-apiserver (Go duration; 0 disables)")
    p.add_argument("--v", "-v", type=int, default=0, help="log verbosity")
    a = p.parse_args(argv)
    if a.service_account_issuer != "https://kubernetes.default.svc.cluster.local":
        p.error("--service-account-issuer: only https://kubernetes.default.svc.cluster.local is served")
    level = logging.WARNING if a.v <= 0 else logging.INFO if a.v < 4 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    opts = Options(etcd_servers=[e.strip() for e in a.etcd_servers.split(",") if e.strip()],
                   bind_address=a.bind_address, secure_port=a.secure_port, cert_dir=a.cert_dir,
                   tls_cert_file=a.tls_cert_file, tls_private_key_file=a.tls_private_key_file,
                   client_ca_file=a.client_ca_file, service_account_key_file=a.service_account_key_file,
                   service_account_signing_key_file=a.service_account_signing_key_file,
                   service_cluster_ip_range=a.service_cluster_ip_range, advertise_address=a.advertise_address,
                   anonymous_auth=a.anonymous_auth, kubelet_client_certificate=a.kubelet_client_certificate,
                   kubelet_client_key=a.kubelet_client_key,
                   kubelet_certificate_authority=a.kubelet_certificate_authority,
                   enable_garbage_collector=a.enable_garbage_collector,
                   etcd_compaction_interval=a.etcd_compaction_interval)
    missing = [f for f in (opts.path(opts.tls_cert_file, "apiserver.crt"), opts.path(opts.tls_private_key_file,
                                                                                    "apiserver.key"),
                           opts.path(opts.client_ca_file, "ca.crt"), opts.path(opts.service_account_key_file, "sa.pub"))
               if not os.path.exists(f)]
    if missing:
        p.error("missing PKI files: " + ", ".join(missing) + " (make them with: python -m testbed.apiserver.pki "
                f"{opts.cert_dir})")
    return opts


async def serve(opts: Options) -> None:
    """Run until SIGTERM/SIGINT."""
    server = APIServer(opts)
    runner = await server.start()
    print(f"apiserver: serving on https://{opts.bind_address}:{opts.secure_port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.storage.hub.end_watches()  # as kube-apiserver: watches end at once, not after a grace
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    asyncio.run(serve(opts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
