"""The informer's retries (kubeclient.informer): 50 ms after a first failure, doubling to the
retry delay while list or watch keep failing, back to 50 ms once the API server answered."""

from __future__ import annotations

from kubeclient import errors
from kubeclient.informer import Informer


class RecordingStop:
    """Stands in for the informer's stop event: records each wait; stops after ``limit`` waits."""

    def __init__(self, limit: int):
        self.waits: list[float] = []
        self.limit = limit
        self.stopped = False

    def is_set(self) -> bool:
        return self.stopped

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        if len(self.waits) >= self.limit:
            self.stopped = True
        return self.stopped

    def set(self) -> None:
        self.stopped = True

    def clear(self) -> None:
        self.stopped = False


class FlakyClient:
    """A client whose list fails ``list_failures`` times, then answers; its watches fail on
    connect ``watch_failures`` times, then deliver one event and end, then fail for good."""

    def __init__(self, list_failures: int, watch_failures: int):
        self.list_failures, self.watch_failures = list_failures, watch_failures
        self.lists = self.watches = 0

    def list_all(self, *_a, **_kw):
        self.lists += 1
        if self.lists <= self.list_failures:
            raise errors.ConnectionFailed("cannot reach the API server: [Errno 111] Connection refused")
        return [{"metadata": {"name": "n1", "resourceVersion": "5"}}], "5"

    def watch(self, *_a, **_kw):
        self.watches += 1
        n = self.watches
        client = self

        class OneShot:
            def __iter__(self):
                if n <= client.watch_failures or n > client.watch_failures + 1:
                    raise errors.ConnectionFailed("watch: cannot reach the API server")
                yield "MODIFIED", {"metadata": {"name": "n1", "resourceVersion": "6"}}

            def close(self):
                pass

        return OneShot()


def run_informer(client: FlakyClient, waits: int) -> RecordingStop:
    inf = Informer(client, "v1", "nodes", retry_delay=0.5)
    inf._stop = RecordingStop(waits)
    inf.run()
    return inf._stop


def test_failed_lists_back_off_from_50_ms_to_the_retry_delay():
    stop = run_informer(FlakyClient(list_failures=10, watch_failures=0), waits=7)
    assert stop.waits == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5, 0.5]


def test_an_answer_resets_the_backoff():
    # 3 failed lists, a list, 2 failed watches, a watch with an event, then failures again
    client = FlakyClient(list_failures=3, watch_failures=2)
    stop = run_informer(client, waits=8)
    assert stop.waits == [0.05, 0.1, 0.2, 0.05, 0.1, 0.05, 0.1, 0.2]
    assert client.lists == 4 and client.watches >= 5


def test_first_retry_never_exceeds_the_retry_delay():
    inf = Informer(FlakyClient(0, 0), "v1", "nodes", retry_delay=0.01)
    assert inf.first_retry_delay == 0.01
