"""A bound token's ServiceAccount check (pure: the watch cache and storage are fakes).

kube-apiserver's token getter reads its informer and falls back to a live GET on a miss,
so a token for a ServiceAccount created a moment ago authenticates before the cache has
seen the create (CI once failed on that window)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from testbed.apiserver.handlers import Handlers
from testbed.apiserver.registry import Registry

pytestmark = pytest.mark.unit


def _handlers(cache: dict, stored: dict):
    async def get(key):
        if isinstance(stored.get(key), Exception):
            raise stored[key]
        return stored.get(key)

    return SimpleNamespace(registry=Registry(), storage=SimpleNamespace(hub=SimpleNamespace(cache=cache), get=get))


def _entry(uid: str):
    return SimpleNamespace(obj={"metadata": {"name": "app", "namespace": "shop", "uid": uid}})


def _valid(h, uid="u1") -> bool:
    claims = {"kubernetes.io": {"namespace": "shop", "serviceaccount": {"name": "app", "uid": uid}}}
    return asyncio.run(Handlers.service_account_valid(h, claims))


def test_a_service_account_not_yet_in_the_cache_is_read_from_storage():
    key = Registry().get("", "v1", "serviceaccounts").key("app", "shop")
    assert _valid(_handlers({}, {key: _entry("u1")}))  # just created: only storage has it
    assert _valid(_handlers({key: _entry("u1")}, {}))  # the cache alone answers
    assert not _valid(_handlers({}, {}))  # gone everywhere
    # deleted and made again under the same name: the old token's uid no longer matches
    assert not _valid(_handlers({key: _entry("u2")}, {key: _entry("u2")}))
    # the cache still has the old object, storage has the new one the token was issued for
    assert _valid(_handlers({key: _entry("u0")}, {key: _entry("u1")}))
    # storage unreachable: the token cannot be checked, so it does not authenticate
    assert not _valid(_handlers({}, {key: OSError("etcd down")}))
