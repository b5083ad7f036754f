"""calicoctl front end (the real tool's syntax) over calicolab's etcd datastore."""

from testbed.calicoctl.main import main, run

__all__ = ["main", "run"]
