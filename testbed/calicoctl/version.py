"""``calicoctl version``: the client's version (and the cluster's)."""

from __future__ import annotations

VERSION = "v3.27.0-calicolab"
