"""Typed errors: a Status answer becomes an :class:`ApiError` subclass by its reason."""

from __future__ import annotations

from typing import Any


class KubeError(Exception):
    """Base of every kubeclient error."""


class ConfigError(KubeError):
    """No usable configuration (kubeconfig or in-cluster)."""


class ConnectionFailed(KubeError):
    """The API server could not be reached."""


class ApiError(KubeError):
    """An error answer of the API server (a ``Status``)."""

    code = 0
    reason = ""

    def __init__(self, code: int, reason: str, message: str, status: dict[str, Any] | None = None):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.status = status or {}

    @property
    def details(self) -> dict[str, Any]:
        return self.status.get("details") or {}

    @property
    def causes(self) -> list[dict[str, Any]]:
        """Field causes of an Invalid answer."""
        return self.details.get("causes") or []


class BadRequest(ApiError):
    pass


class Unauthorized(ApiError):
    pass


class Forbidden(ApiError):
    pass


class NotFound(ApiError):
    pass


class AlreadyExists(ApiError):
    pass


class Conflict(ApiError):
    pass


class Gone(ApiError):
    """410 Expired: the resourceVersion is too old (compacted): re-list."""


class Invalid(ApiError):
    pass


class TooLarge(ApiError):
    pass


class ServerTimeout(ApiError):
    pass


class ServiceUnavailable(ApiError):
    pass


_BY_REASON = {"BadRequest": BadRequest, "Unauthorized": Unauthorized, "Forbidden": Forbidden,
              "NotFound": NotFound, "AlreadyExists": AlreadyExists, "Conflict": Conflict, "Gone": Gone,
              "Expired": Gone, "Invalid": Invalid, "RequestEntityTooLarge": TooLarge, "Timeout": ServerTimeout,
              "ServerTimeout": ServerTimeout, "ServiceUnavailable": ServiceUnavailable}
_BY_CODE = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 410: Gone,
            413: TooLarge, 422: Invalid, 503: ServiceUnavailable, 504: ServerTimeout}


def from_status(code: int, status: dict[str, Any] | None, fallback: str = "") -> ApiError:
    """The typed error of an HTTP error answer."""
    st = status if isinstance(status, dict) else {}
    reason = st.get("reason") or ""
    msg = st.get("message") or fallback or f"HTTP {code}"
    cls = _BY_REASON.get(reason) or _BY_CODE.get(code) or ApiError
    if cls is Conflict and reason == "AlreadyExists":
        cls = AlreadyExists
    return cls(code, reason, msg, st)
