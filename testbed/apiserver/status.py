"""The API server's errors, as ``metav1.Status`` objects with the real server's codes,
reasons and message wording (k8s.io/apimachinery/pkg/api/errors)."""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error answered as a Status object with HTTP ``code``."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        """The Status object for this error."""
        return status_failure(self.code, self.reason, self.message, self.details)


def status_failure(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict:
    """A ``Status`` with ``status: Failure``."""
    st: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": message, "reason": reason, "code": code}
    if details:
        st["details"] = details
    if not reason:
        del st["reason"]
    return st


def status_success(details: dict[str, Any] | None = None) -> dict:
    """A ``Status`` with ``status: Success`` (what some deletes return)."""
    st: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
    if details:
        st["details"] = details
    return st


def qualified(resource: str, group: str) -> str:
    """``pods`` or ``deployments.apps``: how messages name a resource."""
    return f"{resource}.{group}" if group else resource


def _details(name: str, group: str, kind: str) -> dict[str, Any]:
    d: dict[str, Any] = {"name": name}
    if group:
        d["group"] = group
    d["kind"] = kind
    return d


def not_found(resource: str, group: str, name: str) -> APIError:
    """404 NotFound: ``pods "x" not found``."""
    return APIError(404, "NotFound", f'{qualified(resource, group)} "{name}" not found',
                    _details(name, group, resource))


def already_exists(resource: str, group: str, name: str) -> APIError:
    """409 AlreadyExists."""
    return APIError(409, "AlreadyExists", f'{qualified(resource, group)} "{name}" already exists',
                    _details(name, group, resource))


def conflict(resource: str, group: str, name: str, why: str | None = None) -> APIError:
    """409 Conflict (stale resourceVersion)."""
    why = why or "the object has been modified; please apply your changes to the latest version and try again"
    return APIError(409, "Conflict", f'Operation cannot be fulfilled on {qualified(resource, group)} "{name}": {why}',
                    _details(name, group, resource))


class FieldError:
    """One field error of an Invalid answer (field.Error)."""

    TYPES = {
        "FieldValueRequired": "Required value",
        "FieldValueInvalid": "Invalid value",
        "FieldValueNotSupported": "Unsupported value",
        "FieldValueDuplicate": "Duplicate value",
        "FieldValueForbidden": "Forbidden",
        "FieldValueTooLong": "Too long",
        "FieldValueTypeInvalid": "Invalid value",
        "FieldValueNotFound": "Not found",
        "FieldValueTooMany": "Too many",
    }

    def __init__(self, reason: str, field: str, detail: str = "", value: Any = None, has_value: bool = False,
                 supported: list[str] | None = None):
        self.reason, self.field, self.detail, self.value, self.has_value = reason, field, detail, value, has_value
        self.supported = supported

    def message(self) -> str:
        """``Invalid value: "x": detail`` as field.Error.ErrorBody words it."""
        head = self.TYPES.get(self.reason, "Invalid value")
        parts = [head]
        if self.has_value:
            v = self.value
            parts[0] += ": " + (f'"{v}"' if isinstance(v, str) else _go_value(v))
        if self.supported is not None:
            parts.append("supported values: " + ", ".join(f'"{s}"' for s in self.supported))
        if self.detail:
            parts.append(self.detail)
        return ": ".join(parts)

    def __str__(self) -> str:
        return f"{self.field}: {self.message()}"


def _go_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def required(field: str, detail: str = "") -> FieldError:
    return FieldError("FieldValueRequired", field, detail)


def invalid_value(field: str, value: Any, detail: str) -> FieldError:
    return FieldError("FieldValueInvalid", field, detail, value, True)


def not_supported(field: str, value: Any, supported: list[str]) -> FieldError:
    return FieldError("FieldValueNotSupported", field, "", value, True, supported)


def duplicate(field: str, value: Any) -> FieldError:
    return FieldError("FieldValueDuplicate", field, "", value, True)


def forbidden(field: str, detail: str) -> FieldError:
    return FieldError("FieldValueForbidden", field, detail)


def invalid(kind: str, group: str, name: str, errs: list[FieldError]) -> APIError:
    """422 Invalid: ``Pod "x" is invalid: spec.containers[0].image: Required value``."""
    qkind = f"{kind}.{group}" if group else kind
    if len(errs) == 1:
        msg = f'{qkind} "{name}" is invalid: {errs[0]}'
    else:
        msg = f'{qkind} "{name}" is invalid: [' + ", ".join(str(e) for e in errs) + "]"
    details = _details(name, group, kind)
    details["causes"] = [{"reason": e.reason, "message": e.message(), "field": e.field} for e in errs]
    return APIError(422, "Invalid", msg, details)


def bad_request(message: str) -> APIError:
    """400 BadRequest."""
    return APIError(400, "BadRequest", message)


def method_not_allowed(message: str = "the server does not allow this method on the requested resource") -> APIError:
    """405 MethodNotAllowed."""
    return APIError(405, "MethodNotAllowed", message, {})


def unauthorized() -> APIError:
    """401 Unauthorized, as for an anonymous request."""
    return APIError(401, "Unauthorized", "Unauthorized")


def gone(message: str) -> APIError:
    """410 Expired (a compacted or too old resourceVersion)."""
    return APIError(410, "Expired", message)


def too_large(limit: int) -> APIError:
    """413 RequestEntityTooLarge."""
    return APIError(413, "RequestEntityTooLarge", f"Request entity too large: limit is {limit}")


def server_timeout(message: str) -> APIError:
    return APIError(504, "Timeout", message)


def unavailable(message: str) -> APIError:
    return APIError(503, "ServiceUnavailable", message)


def internal(message: str) -> APIError:
    return APIError(500, "InternalError", f"Internal error occurred: {message}",
                    {"causes": [{"message": message}]})


def page_not_found() -> APIError:
    """The generic 404 of an unknown path."""
    return APIError(404, "NotFound", "the server could not find the requested resource", {})


def unsupported_media(ctype: str, supported: list[str]) -> APIError:
    return APIError(415, "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types include: "
                    + ", ".join(supported))


def not_acceptable(supported: list[str]) -> APIError:
    return APIError(406, "NotAcceptable",
                    "only the following media types are accepted: " + ", ".join(supported))
