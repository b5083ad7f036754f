"""Helpers shared by calicolab's tests (not part of the product).

``require`` is the only sanctioned way to skip: under CI (``CI=true``) a missing
prerequisite fails loudly, because setup is supposed to provide it; elsewhere it
skips with the reason printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest


def in_ci() -> bool:
    """True when running under CI (CI=true), where nothing may be skipped for lack of setup."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip (locally) or fail (under CI) unless ``condition`` holds."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"prerequisite missing under CI (setup should provide it): {reason}")
    pytest.skip(reason)


def require_root() -> None:
    """The test needs root (namespaces, iptables, Mininet)."""
    require(os.geteuid() == 0, "needs root: run with sudo")


def require_tool(name: str) -> str:
    """The test needs the executable ``name``; returns its path."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    require(path is not None, f"needs the '{name}' command (installed by scripts/setup.sh)")
    return path or name


def unique(prefix: str) -> str:
    """A short unique name (fits interface and netns names)."""
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def sh(*args: str, check: bool = True, netns: str | None = None, timeout: float = 30) -> str:
    """Run a command (optionally inside a named netns) and return its stdout."""
    cmd = list(args)
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr.strip()}")
    return res.stdout
