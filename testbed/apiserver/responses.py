"""Small shared pieces of the server's answers: JSON responses and the reported version."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from testbed.k8s.version import KUBE_VERSION  # noqa: F401 - the one definition, re-exported


def json_response(doc: Any, code: int = 200, content_type: str = "application/json",
                  headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer (``doc`` may be pre-encoded bytes)."""
    body = doc if isinstance(doc, bytes) else json.dumps(doc, separators=(",", ":")).encode()
    resp = web.Response(body=body, status=code, headers=headers)
    resp.headers["Content-Type"] = content_type
    return resp


def version_info() -> dict[str, str]:
    """The /version document."""
    major, minor, _ = KUBE_VERSION.lstrip("v").split(".")
    return {"major": major, "minor": minor, "emulationMajor": major, "emulationMinor": minor,
            "minCompatibilityMajor": major, "minCompatibilityMinor": str(int(minor) - 1),
            "gitVersion": KUBE_VERSION, "gitCommit": "calicolab", "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z", "goVersion": "python", "compiler": "calicolab",
            "platform": "linux/amd64"}
