"""Updates start from the watch cache's copy (as kube-apiserver's cacher hands GuaranteedUpdate
its cached object) and fall back to etcd when that copy is stale: the write's CAS decides, a
lost CAS or a no-op on the cached copy is tried again on etcd's, never answered from the cache.

The hub here is loaded once and not following etcd, so its copy is made stale on purpose by
writing etcd behind it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.etcd


def test_an_update_from_a_stale_cached_copy_is_retried_on_etcds(etcd_endpoints):
    from testbed.apiserver.handlers import Handlers, StaleCache
    from testbed.apiserver.registry import Registry
    from testbed.apiserver.storage import Storage

    async def scenario() -> None:
        storage = Storage(etcd_endpoints)
        try:
            registry = Registry()
            h = Handlers(SimpleNamespace(storage=storage, registry=registry))
            rt = registry.get("", "v1", "configmaps")
            key = rt.key("cm", "default")
            cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "default"},
                  "data": {"a": "1"}}
            rev1 = await storage.create(key, cm)
            await storage.hub._load()  # the cache at rev1, not following etcd from here
            # without a resourceVersion, or at the cached one: the cached copy, no etcd read
            e, cached = await h.for_update(rt, "cm", "default")
            assert cached and e.rev == rev1
            assert (await h.for_update(rt, "cm", "default", rv=str(rev1)))[1]
            behind = dict(cm, data={"a": "2"})
            rev2 = await storage.update(key, behind, rev1)  # etcd moves on; the cache does not see it
            # a resourceVersion the cache does not have: etcd's copy
            e2, cached2 = await h.for_update(rt, "cm", "default", rv=str(rev2))
            assert not cached2 and e2.rev == rev2 and e2.obj["data"] == {"a": "2"}
            # a write on the stale cached copy loses its CAS: StaleCache, nothing written
            with pytest.raises(StaleCache):
                await h.update_object(rt, e, dict(cm, data={"a": "3"}), cached=True)
            # a no-op on the cached copy is not answered from it (etcd's says a=2)
            with pytest.raises(StaleCache):
                await h.update_object(rt, e, dict(cm, data={"a": "1"}), cached=True)
            assert (await storage.get(key)).obj["data"] == {"a": "2"}
            # the second attempt, on etcd's copy, writes
            e3, cached3 = await h.for_update(rt, "cm", "default", fresh=True)
            assert not cached3
            out = await h.update_object(rt, e3, dict(cm, data={"a": "3"}), cached=cached3)
            assert out["data"] == {"a": "3"} and int(out["metadata"]["resourceVersion"]) > rev2
        finally:
            storage.close()

    asyncio.run(scenario())
