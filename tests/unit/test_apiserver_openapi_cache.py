"""The API server's OpenAPI documents are built once per group-version and stay valid while
only other groups' resources change (Calico's CRDs come right after start-up)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from testbed.apiserver import openapi

pytestmark = pytest.mark.unit


class _Registry:
    def __init__(self, rts: list) -> None:
        self.rts = rts

    def all(self) -> list:
        return list(self.rts)

    def in_group_version(self, group: str, version: str) -> list:
        return [rt for rt in self.rts if (rt.group, rt.version) == (group, version)]


def _rt(group: str, plural: str) -> SimpleNamespace:
    return SimpleNamespace(group=group, version="v1", plural=plural, crd=None)


def test_a_document_is_rebuilt_only_when_its_own_group_changes():
    server = SimpleNamespace(registry=_Registry([_rt("apps", "deployments"), _rt("", "pods")]))
    builds: list[str] = []

    def doc(name: str):
        return lambda: builds.append(name) or {"doc": name}

    def get(name: str, group: str) -> bytes:
        return openapi._encoded(server, name, doc(name), (group, "v1"))[0]

    assert get("apps", "apps") == b'{"doc":"apps"}'
    get("core", "")
    server.registry.rts.append(_rt("crd.projectcalico.org", "ippools"))  # another group's CRD
    get("apps", "apps")
    get("core", "")
    assert builds == ["apps", "core"]  # both served from the cache
    server.registry.rts.append(_rt("apps", "replicasets"))  # apps/v1 itself changed
    get("apps", "apps")
    get("core", "")
    assert builds == ["apps", "core", "apps"]
    assert openapi._registry_key(server) != openapi._registry_key(server, ("apps", "v1"))
