"""calicolab IPAM: Calico block/affinity/handle semantics on the etcd datastore."""

from ipam.ipam import IPAM

__all__ = ["IPAM"]
