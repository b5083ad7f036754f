"""node-driver-registrar (Calico's ``calico/node-driver-registrar`` image): registers a CSI
driver with the kubelet through the kubelet's plugin-registration directory.

``python -m agent.csi.registrar --csi-address=/csi/csi.sock
--kubelet-registration-path=/var/lib/kubelet/plugins/csi.tigera.io/csi.sock``:

1. waits for the driver's socket, then asks the driver its name (CSI ``GetPluginInfo`` on
   ``--csi-address``), retrying while it does not answer yet;
2. serves the kubelet's ``pluginregistration.Registration`` service on
   ``<--plugin-registration-path>/<driver>-reg.sock`` (default ``/registration``):
   ``GetInfo`` answers ``{type: CSIPlugin, name: <driver>, endpoint:
   <--kubelet-registration-path>, supported_versions: ["1.0.0"]}`` and
   ``NotifyRegistrationStatus`` logs the kubelet's verdict; a registration the kubelet
   refuses ends the process with status 1 (the container restarts), as the upstream
   registrar does.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

from agent import rpc
from agent.csi import messages as m
from agent.protowire import EMPTY

log = logging.getLogger("node-driver-registrar")
SUPPORTED_VERSIONS = ["1.0.0"]


#: how often the registrar says it is still waiting for the driver (the upstream one: 10 s)
STILL_CONNECTING_EVERY = 10.0


def driver_name(csi_address: str, timeout: float, stop: threading.Event,
                clock=time.monotonic) -> str | None:
    """The CSI driver's name (GetPluginInfo), retried until it answers or ``stop``.

    Until the driver's socket exists nothing is called: a gRPC call to a missing socket costs
    ~0.9 ms of CPU, and at a big lab's start each registrar waited seconds for its driver,
    calling every 0.2 s. "Still connecting" is logged every 10 s, as the upstream registrar's
    connection helper logs it, not on each try."""
    path = rpc.unix_path(csi_address)
    ch = None
    said = float("-inf")
    try:
        while not stop.is_set():
            why = "no socket yet"
            if os.path.exists(path):
                ch = ch or rpc.channel(csi_address)
                try:
                    info = rpc.call(ch, f"/{m.IDENTITY}/GetPluginInfo", EMPTY, m.GET_PLUGIN_INFO_RESPONSE,
                                    timeout=timeout)
                    if info.get("name"):
                        return info["name"]
                    log.error("the driver at %s answered GetPluginInfo without a name", csi_address)
                    why = "no name"
                except rpc.RpcError as exc:
                    why = exc.code
            now = clock()
            if now - said >= STILL_CONNECTING_EVERY:
                log.info("Still connecting to unix://%s (%s)", path, why)
                said = now
            stop.wait(0.2 if ch is not None else 0.05)
        return None
    finally:
        if ch is not None:
            ch.close()


class Registration:
    """The Registration service: GetInfo and NotifyRegistrationStatus."""

    def __init__(self, name: str, endpoint: str, on_refused):
        self.name, self.endpoint, self.on_refused = name, endpoint, on_refused
        self.registered = threading.Event()

    def get_info(self, _req: dict, _ctx=None) -> dict:
        log.info("Received GetInfo call: %s", self.name)
        return {"type": m.CSI_PLUGIN, "name": self.name, "endpoint": self.endpoint,
                "supported_versions": list(SUPPORTED_VERSIONS)}

    def notify(self, req: dict, _ctx=None) -> dict:
        log.info("Received NotifyRegistrationStatus call: %s", req)
        if req.get("plugin_registered"):
            self.registered.set()
        else:
            log.error("Registration process failed with error: %s, restarting registration container.",
                      req.get("error"))
            self.on_refused()
        return {}

    def handler(self):
        return rpc.service(m.REGISTRATION, {
            "GetInfo": (EMPTY, m.PLUGIN_INFO, self.get_info, False),
            "NotifyRegistrationStatus": (m.REGISTRATION_STATUS, EMPTY, self.notify, False)})


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(prog="csi-node-driver-registrar", description=__doc__.split("\n\n")[0])
    p.add_argument("--csi-address", default="/run/csi/socket", help="the CSI driver's socket (in this container)")
    p.add_argument("--kubelet-registration-path", default="",
                   help="the driver's socket as the kubelet (the node) sees it")
    p.add_argument("--plugin-registration-path", default="/registration",
                   help="the kubelet's plugin registration directory (in this container)")
    p.add_argument("--timeout", default="1s", help="timeout of a call to the driver (e.g. 1s)")
    p.add_argument("--v", default="0", help="log verbosity (>= 4: debug)")
    args = p.parse_args(argv)
    level = logging.DEBUG if args.v.isdigit() and int(args.v) >= 4 else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s node-driver-registrar %(levelname)s %(message)s")
    if not args.kubelet_registration_path:
        print("csi-node-driver-registrar: kubelet-registration-path is a required parameter", file=sys.stderr)
        return 1
    from datastore.duration import parse_duration

    try:
        timeout = parse_duration(args.timeout, bare_seconds=True)
    except ValueError:
        print(f"csi-node-driver-registrar: invalid --timeout {args.timeout!r}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    exit_code = [0]

    def refused() -> None:
        exit_code[0] = 1
        stop.set()

    name = driver_name(args.csi_address, timeout, stop)
    if name is None:
        return 0
    log.info("CSI driver name: %s", name)
    reg = Registration(name, args.kubelet_registration_path, refused)
    sock = os.path.join(args.plugin_registration_path, f"{name}-reg.sock")
    try:
        server = rpc.serve_unix(sock, [reg.handler()], workers=2)
    except OSError as exc:
        print(f"csi-node-driver-registrar: failed to listen on socket {sock}: {exc}", file=sys.stderr)
        return 1
    log.info("Registration Server started at: %s", sock)
    while not stop.wait(1.0):
        if not os.path.exists(sock):  # the kubelet's directory was emptied: serve again
            log.warning("registration socket %s is gone; serving it again", sock)
            server.stop(0)
            server = rpc.serve_unix(sock, [reg.handler()], workers=2)
    server.stop(grace=0.5).wait()
    try:
        os.unlink(sock)
    except FileNotFoundError:
        pass
    return exit_code[0]


if __name__ == "__main__":
    sys.exit(main())
