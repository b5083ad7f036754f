"""calicolab's Calico datastore: typed v3 resources, Calico's etcd key layout, and an etcd v3 client.

This is the only package that talks to etcd. Typical use::

    from datastore import Client, errors
    client = Client.from_env()              # ETCD_ENDPOINTS, DATASTORE_TYPE=etcdv3
    pool = client.get("IPPool", "default-ipv4-ippool")

``Client``, ``WatchEvent`` and ``WatchStream`` are loaded on first use: a process that needs
only a small module of the package (the kubelet's ``datastore.duration``) does not pay for
the client and its ~170 resource dataclasses at start-up.
"""

from typing import TYPE_CHECKING, Any

from datastore import errors

if TYPE_CHECKING:
    from datastore.client import Client, WatchEvent, WatchStream

__all__ = ["Client", "WatchEvent", "WatchStream", "errors"]

_LAZY = frozenset({"Client", "WatchEvent", "WatchStream"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from datastore import client

        return getattr(client, name)
    raise AttributeError(f"module 'datastore' has no attribute {name!r}")
