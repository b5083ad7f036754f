"""Errors of the Kubernetes object store, worded as the API server and kubectl word them."""

from __future__ import annotations


class K8sError(Exception):
    """Base of every error the object store raises; ``reason`` is the API status reason."""

    reason = "InternalError"


class NotFound(K8sError):
    """The object does not exist (``pods "x" not found``)."""

    reason = "NotFound"

    def __init__(self, resource: str, name: str):
        self.resource, self.name = resource, name
        super().__init__(f'{resource} "{name}" not found')


class AlreadyExists(K8sError):
    """An object with that name exists already."""

    reason = "AlreadyExists"

    def __init__(self, resource: str, name: str):
        self.resource, self.name = resource, name
        super().__init__(f'{resource} "{name}" already exists')


class Conflict(K8sError):
    """The object changed since it was read (resourceVersion mismatch)."""

    reason = "Conflict"

    def __init__(self, resource: str, name: str):
        self.resource, self.name = resource, name
        super().__init__(
            f'Operation cannot be fulfilled on {resource} "{name}": the object has been '
            "modified; please apply your changes to the latest version and try again"
        )


class Invalid(K8sError):
    """A manifest failed validation; ``field`` is the path of the bad field."""

    reason = "Invalid"

    def __init__(self, field: str, message: str, where: str = ""):
        self.field, self.message, self.where = field, message, where
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}{field}: {message}" if field else f"{prefix}{message}")


class Unavailable(K8sError):
    """The datastore (etcd) cannot be reached."""

    reason = "ServiceUnavailable"
