"""calico-node's allocate-tunnel-addrs thread (agent.tunneladdrs), in virtual time."""

from __future__ import annotations

import threading

import pytest

from agent.clock import FakeClock
from agent.tunneladdrs import TunnelAllocator

pytestmark = pytest.mark.unit


def run_until(alloc: TunnelAllocator, clock: FakeClock, stop: threading.Event, until: float) -> None:
    clock.call_later(until, lambda: (stop.set(), alloc.request()))
    t = threading.Thread(target=alloc.run, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "the allocator did not stop"


def test_first_pass_runs_at_once_and_marks_done():
    clock, stop, calls = FakeClock(start=0.0), threading.Event(), []

    def allocate():
        calls.append(clock.now)
        return {"ipip": "192.168.0.1", "vxlan": None}

    alloc = TunnelAllocator(allocate, stop, clock=clock)
    run_until(alloc, clock, stop, 5.0)
    assert calls == [0.0]
    assert alloc.done.is_set()
    assert alloc.status() == {"done": True, "ipip": "192.168.0.1", "vxlan": None, "passes": 1, "error": None}


def test_a_failed_pass_is_retried_with_a_doubling_back_off_and_not_marked_done_until_it_succeeds():
    clock, stop, calls = FakeClock(start=0.0), threading.Event(), []

    def allocate():
        calls.append(clock.now)
        if len(calls) < 4:
            raise ConnectionError("API server busy")
        return {"ipip": None, "vxlan": "192.168.0.64"}

    alloc = TunnelAllocator(allocate, stop, clock=clock, first_retry=0.5, max_retry=1.0)
    seen_done_before = []
    clock.call_later(1.0, lambda: seen_done_before.append(alloc.done.is_set()))
    run_until(alloc, clock, stop, 10.0)
    assert calls == [0.0, 0.5, 1.5, 2.5], calls  # 0.5, then 1.0 (capped), then 1.0
    assert seen_done_before == [False]
    assert alloc.status()["done"] and alloc.status()["vxlan"] == "192.168.0.64"
    assert alloc.status()["error"] is None


def test_request_runs_another_pass_and_nothing_runs_without_one():
    clock, stop, calls = FakeClock(start=0.0), threading.Event(), []
    alloc = TunnelAllocator(lambda: calls.append(clock.now) or {"ipip": None, "vxlan": None}, stop, clock=clock)
    clock.call_later(3.0, alloc.request)  # the pools changed
    run_until(alloc, clock, stop, 20.0)
    assert calls == [0.0, 3.0], calls
    assert alloc.passes == 2
