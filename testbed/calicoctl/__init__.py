"""calicoctl front end (the real tool's syntax) over calicolab's datastores (Kubernetes API or etcd)."""

from testbed.calicoctl.main import main, run

__all__ = ["main", "run"]
