"""Fixtures shared by every tier of calicolab's tests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.support import require_root, unique


@pytest.fixture
def netns() -> Iterator:
    """Factory for named network namespaces, all removed at teardown (on failure too).

    ``name = netns("pfx")`` creates ``pfx<6 hex>`` with lo up and returns its name.
    """
    require_root()
    made: list[str] = []

    def make(prefix: str = "tns") -> str:
        name = unique(prefix)
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    yield make
    for name in reversed(made):
        subprocess.run(["ip", "netns", "pids", name], capture_output=True)
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            subprocess.run(["kill", "-9", pid], capture_output=True)
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
