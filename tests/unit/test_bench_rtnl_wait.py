"""bench/rtnl_wait.py's summary of answer times (pure)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

_SPEC = importlib.util.spec_from_file_location("rtnl_wait", Path(__file__).resolve().parents[2] / "bench" / "rtnl_wait.py")
rtnl_wait = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(rtnl_wait)


def test_summary_counts_stalls_and_their_time():
    lat = [0.0002] * 96 + [0.05, 0.15, 0.7, 2.0]
    s = rtnl_wait.summarize(lat)
    assert s["samples"] == 100
    assert s["p50_ms"] == 0.2 and s["p90_ms"] == 0.2
    assert s["p99_ms"] == 2000.0 and s["max_ms"] == 2000.0
    assert (s["stalls"], s["stalled_s"]) == (3, 2.85)  # 0.05 s is not a stall


def test_no_samples():
    assert rtnl_wait.summarize([]) == {"samples": 0}
