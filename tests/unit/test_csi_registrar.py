"""node-driver-registrar's wait for its CSI driver (no gRPC server: the call is counted)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from agent import rpc
from agent.csi import registrar

pytestmark = pytest.mark.unit


def test_nothing_is_called_until_the_drivers_socket_exists(tmp_path, monkeypatch, caplog):
    """A gRPC call to a missing socket costs CPU and fails; the registrar waits for the socket
    file, then asks the driver's name, and says it is still connecting once per 10 s."""
    sock = tmp_path / "csi.sock"
    calls: list[bool] = []

    def fake_call(_ch, path, *_a, **_kw):
        calls.append(sock.exists())
        assert path.endswith("/GetPluginInfo")
        return {"name": "csi.tigera.io"}

    monkeypatch.setattr(rpc, "call", fake_call)
    threading.Timer(0.3, sock.touch).start()
    caplog.set_level(logging.INFO, logger="node-driver-registrar")
    t0 = time.monotonic()
    name = registrar.driver_name(f"unix://{sock}", 1.0, threading.Event())
    assert name == "csi.tigera.io" and calls == [True]
    assert time.monotonic() - t0 >= 0.29
    said = [r.getMessage() for r in caplog.records if "Still connecting" in r.getMessage()]
    assert said == [f"Still connecting to unix://{sock} (no socket yet)"], said


@pytest.mark.parametrize("form", ["{}", "unix:{}", "unix://{}"])
def test_every_address_form_grpc_takes_names_the_same_socket(tmp_path, monkeypatch, form):
    """--csi-address as a path, ``unix:PATH`` or ``unix://PATH``: the registrar waits for that
    file (a form it did not strip would be waited for for ever)."""
    sock = tmp_path / "csi.sock"
    sock.touch()
    monkeypatch.setattr(rpc, "call", lambda *_a, **_kw: {"name": "csi.tigera.io"})
    give_up = threading.Event()  # a form it does not strip would wait until this
    timer = threading.Timer(5, give_up.set)
    timer.start()
    try:
        assert registrar.driver_name(form.format(sock), 1.0, give_up) == "csi.tigera.io"
    finally:
        timer.cancel()


def test_a_stop_while_waiting_returns_none(tmp_path):
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    assert registrar.driver_name(str(tmp_path / "never.sock"), 1.0, stop) is None
