"""The supervisor's restart policies (testbed.lab.restarts), on an injected clock."""

from __future__ import annotations

import pytest

from testbed.lab.restarts import (
    BACKOFF_MAX,
    BACKOFF_RESET,
    Restarter,
    crashloop_delay,
    describe_exit,
)

pytestmark = pytest.mark.unit


def test_crashloop_backoff_is_the_kubelets():
    assert [crashloop_delay(n) for n in range(8)] == [1, 10, 20, 40, 80, 160, 300, 300]
    assert crashloop_delay(100) == BACKOFF_MAX


def test_a_pod_like_daemon_backs_off_then_forgets_after_a_long_run():
    r = Restarter("calico-node")
    assert r.policy == "kubelet CrashLoopBackOff"
    r.started(0.0)
    now = 5.0
    waits = []
    for _ in range(4):
        waits.append(r.exited(-9, now))
        assert not r.due(now + waits[-1] - 0.01) and r.due(now + waits[-1])
        now += waits[-1]
        r.restarted(now)
        now += 1.0  # crashes again a second later
    assert waits == [1, 10, 20, 40] and r.restarts == 4 and r.last_exit == -9
    # ran longer than the reset period: the back-off starts over
    assert r.exited(1, now + BACKOFF_RESET) == 1.0


def test_systemd_units_restart_after_a_fixed_delay_forever():
    r = Restarter("kubelet")
    assert r.policy == "systemd Restart=always RestartSec=10"
    r.started(0.0)
    for i in range(6):
        assert r.exited(-9, 1.0 + 20 * i) == 10.0
        r.restarted(11.0 + 20 * i)
    assert Restarter("containerd").exited(1, 3.0) == 5.0


def test_exit_descriptions():
    assert describe_exit(-9) == "signal 9 (SIGKILL)"
    assert describe_exit(1) == "status 1"
    assert describe_exit(None).startswith("an unknown status")
