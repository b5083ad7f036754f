"""calicolab's Calico datastore: typed v3 resources, Calico's etcd key layout, and an etcd v3 client.

This is the only package that talks to etcd. Typical use::

    from datastore import Client, errors
    client = Client.from_env()              # ETCD_ENDPOINTS, DATASTORE_TYPE=etcdv3
    pool = client.get("IPPool", "default-ipv4-ippool")
"""

from datastore import errors
from datastore.client import Client, WatchEvent, WatchStream

__all__ = ["Client", "WatchEvent", "WatchStream", "errors"]
