"""testbed.lab.admission: a big lab's nodes admitted a window at a time (fake clock and probe)."""

from __future__ import annotations

import pytest

from testbed.lab import admission

pytestmark = pytest.mark.unit


def test_a_lab_within_the_window_starts_every_node_at_once():
    w = admission.StartWindow(["k8s-m", "k8s-w0", "k8s-w1"], window=16)
    assert w.admit(0.0, lambda _n: False) == ["k8s-m", "k8s-w0", "k8s-w1"]
    assert w.done


def test_nodes_are_admitted_in_order_as_others_settle():
    order = ["k8s-m"] + [f"k8s-w{i}" for i in range(5)]
    settled: set[str] = set()
    w = admission.StartWindow(order, window=2, settle_timeout=15)
    assert w.admit(0.0, settled.__contains__) == ["k8s-m", "k8s-w0"]
    assert w.admit(1.0, settled.__contains__) == []  # nobody settled: nobody more
    settled.add("k8s-w0")
    assert w.admit(2.0, settled.__contains__) == ["k8s-w1"]
    settled |= {"k8s-m", "k8s-w1"}
    assert w.admit(3.0, settled.__contains__) == ["k8s-w2", "k8s-w3"]
    assert not w.done and w.settled == ["k8s-w0", "k8s-m", "k8s-w1"]
    settled.add("k8s-w3")
    assert w.admit(4.0, settled.__contains__) == ["k8s-w4"] and w.done


def test_a_node_that_never_settles_stops_holding_its_place_after_the_timeout():
    w = admission.StartWindow(["a", "b", "c"], window=1, settle_timeout=10)
    assert w.admit(0.0, lambda _n: False) == ["a"]
    assert w.admit(9.9, lambda _n: False) == []
    assert w.admit(10.0, lambda _n: False) == ["b"]
    assert w.timed_out == ["a"] and w.starting == {"b": 10.0}


def test_window_size_scales_with_cpus_and_takes_a_valid_override():
    assert admission.window_size(2) == 2 * admission.NODES_PER_CPU
    assert admission.window_size(None) == admission.NODES_PER_CPU
    assert admission.window_size(2, "5") == 5 and admission.window_size(2, "") == 2 * admission.NODES_PER_CPU
    for bad in ("0", "-3", "many"):
        with pytest.raises(ValueError, match=f"CALICOLAB_START_WINDOW={bad!r}"):
            admission.window_size(2, bad)
    with pytest.raises(ValueError, match="at least 1"):
        admission.StartWindow(["a"], window=0)
