"""The watch hub at shutdown (pure logic): clients' watches end, the server's own feeds
(garbage collector, namespace bootstrap) do not."""

from __future__ import annotations

import pytest

from testbed.apiserver.storage import ShuttingDown, WatchHub

pytestmark = pytest.mark.unit


def test_end_watches_ends_client_watches_only_and_those_opened_later():
    hub = WatchHub(storage=None)  # type: ignore[arg-type]
    client = hub.subscribe("/registry/pods/", 0, api_watch=True)
    own = hub.subscribe("/registry/", 0)
    hub.end_watches()
    assert isinstance(client.queue.get_nowait(), ShuttingDown)
    assert own.queue.empty()
    late = hub.subscribe("/registry/nodes/", 0, api_watch=True)
    assert isinstance(late.queue.get_nowait(), ShuttingDown)
    assert hub.subscribe("/registry/", 0).queue.empty()
