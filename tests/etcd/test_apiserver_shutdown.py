"""The API server stopping (SIGTERM) ends its clients' watches at once and cleanly, as
kube-apiserver does (``--shutdown-watch-termination-grace-period`` defaults to 0): the
stream ends (its last chunk), so a watching client sees the end of the watch, not a
broken connection, and re-watches wherever it can."""

from __future__ import annotations

import threading

import pytest

pytestmark = pytest.mark.etcd


def test_sigterm_ends_open_watches_cleanly(fresh_apiserver):
    client = fresh_apiserver.client()
    rv = client.list("v1", "namespaces")["metadata"]["resourceVersion"]
    watch = client.watch("v1", "namespaces", resource_version=rv)
    seen: list[str] = []
    outcome: list[str] = []
    started = threading.Event()

    def follow() -> None:
        try:
            for typ, obj in watch:
                seen.append(f"{typ} {obj['metadata']['name']}")
                started.set()
            outcome.append("ended")
        except Exception as exc:  # noqa: BLE001 - what the client saw is the verdict
            outcome.append(f"{type(exc).__name__}: {exc}")
        finally:
            started.set()

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    client.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "w1"}})
    assert started.wait(10), "the watch saw nothing"
    assert seen == ["ADDED w1"], seen
    fresh_apiserver.proc.terminate()
    t.join(20)
    assert not t.is_alive(), "the watch was still open after the API server was told to stop"
    assert outcome == ["ended"], outcome
    assert fresh_apiserver.proc.wait(20) == 0
    watch.close()
