"""``calico-ipam -upgrade``: calico.yaml's ``upgrade-ipam`` init container (calico/cni image).

Calico's (``cni-plugin/pkg/upgrade/migrate.go``) moves the allocations of the ``host-local``
IPAM plugin of a cluster that ran Calico with host-local IPAM
(``/var/lib/cni/networks/k8s-pod-network``, one file per address) into calico-ipam, then
removes that directory. calicolab does the same checks with the same log lines: no
directory, nothing to do (exit 0); an empty one is removed (exit 0). A directory that holds
allocations is a cluster calicolab never makes (its nodes never ran host-local IPAM for
Calico's network): migrating it is not implemented, and the container exits 1 naming the
directory and the addresses, so the pod stays in ``Init:Error`` and nothing is half-made.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys

log = logging.getLogger("upgrade-ipam")
#: where host-local keeps Calico's network's allocations (migrate.go's ipAllocPath)
IP_ALLOC_PATH = "/var/lib/cni/networks/k8s-pod-network"
#: host-local's own files in that directory (not allocations)
_NOT_ADDRESSES = ("lock",)


def migrate(path: str = IP_ALLOC_PATH) -> tuple[int, str]:
    """What ``-upgrade`` does with ``path``: (exit code, last log line)."""
    log.info("checking host-local IPAM data dir existence...")
    if not os.path.isdir(path):
        msg = "host-local IPAM data dir not found; no migration necessary, successfully exiting..."
        log.info(msg)
        return 0, msg
    log.info("checking if host-local IPAM data dir is empty...")
    names = sorted(n for n in os.listdir(path) if n not in _NOT_ADDRESSES and not n.startswith("last_reserved_ip"))
    if not names:
        log.info("host-local IPAM data dir empty; no migration necessary...")
        log.info("removing host-local IPAM data directory...")
        shutil.rmtree(path)
        msg = "successfully removed host-local IPAM data directory!"
        log.info(msg)
        return 0, msg
    log.info("host-local IPAM data dir is not empty, migrating...")
    msg = (f"migrating host-local IPAM allocations into calico-ipam is not implemented by calicolab: {path} "
           f"holds {len(names)} ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}); nothing was changed")
    log.error(msg)
    return 1, msg


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m cni.upgrade`` (what the image's ``calico-ipam -upgrade`` runs)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s [%(levelname)s] upgrade-ipam: %(message)s")
    if argv:
        print(f"calico-ipam -upgrade: unexpected arguments {' '.join(argv)}", file=sys.stderr)
        return 2
    if not (os.environ.get("KUBERNETES_NODE_NAME") or os.environ.get("NODENAME")):
        log.error("KUBERNETES_NODE_NAME is not set (the manifest sets it from spec.nodeName)")
        return 1
    return migrate()[0]


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
