"""Errors raised by the datastore layer.

Every error carries a message a person can act on: which endpoint could not be
reached, which field of which resource is wrong, which key changed under us.
"""

from __future__ import annotations


class DatastoreError(Exception):
    """Base class of every datastore error."""


class DatastoreUnavailable(DatastoreError):
    """etcd could not be reached (connection refused, timeout, DNS)."""


class NotFound(DatastoreError):
    """The resource or key does not exist."""


class AlreadyExists(DatastoreError):
    """A create found the resource or key already present."""


class Conflict(DatastoreError):
    """A compare-and-swap failed: the object changed since it was read."""


class Compacted(DatastoreError):
    """A watch asked for a revision etcd has already compacted away."""

    def __init__(self, message: str, compact_revision: int = 0):
        super().__init__(message)
        self.compact_revision = compact_revision


class ValidationError(DatastoreError):
    """A resource failed validation; ``field`` names the offending field path."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message
