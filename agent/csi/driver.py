"""The CSI driver process (Calico's ``calico/csi`` image, ``csi-driver``):
``python -m agent.csi --nodeid NODE [--endpoint /csi/csi.sock] [--loglevel warn]``.

Serves the CSI Identity and Node services (:class:`agent.csi.node.NodeService`) over gRPC on
a unix socket; the Controller service is not served (UNIMPLEMENTED), as Calico's driver
registers only Identity and Node. ``/etc/calico/csi/nodeagent.json`` is read when present
(``nodeagent_management_home``, ``log_level``, ``endpoint``), as Calico's driver reads it.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

from agent import rpc
from agent.csi import messages as m
from agent.csi.node import NODEAGENT_HOME, Config, CsiError, KernelMounter, NodeService
from agent.protowire import EMPTY

CONFIG_FILE = "/etc/calico/csi/nodeagent.json"
DEFAULT_ENDPOINT = "/csi/csi.sock"


def _unary(fn):
    """A gRPC handler calling ``fn(request)``; :class:`CsiError` becomes its status code."""
    import grpc

    def handle(req: dict, ctx) -> dict:
        try:
            return fn(req)
        except CsiError as exc:
            logging.getLogger("csi-driver").error("%s", exc)
            ctx.abort(getattr(grpc.StatusCode, exc.code), str(exc))

    return handle


def handlers(svc: NodeService) -> list:
    """The Identity and Node services of ``svc`` as grpc generic handlers."""
    identity = rpc.service(m.IDENTITY, {
        "GetPluginInfo": (EMPTY, m.GET_PLUGIN_INFO_RESPONSE, _unary(svc.get_plugin_info), False),
        "GetPluginCapabilities": (EMPTY, m.GET_PLUGIN_CAPABILITIES_RESPONSE,
                                  _unary(svc.get_plugin_capabilities), False),
        "Probe": (EMPTY, m.PROBE_RESPONSE, _unary(svc.probe), False)})
    node = rpc.service(m.NODE, {
        "NodeGetInfo": (EMPTY, m.NODE_GET_INFO_RESPONSE, _unary(svc.node_get_info), False),
        "NodeGetCapabilities": (EMPTY, m.NODE_GET_CAPABILITIES_RESPONSE, _unary(svc.node_get_capabilities), False),
        "NodePublishVolume": (m.NODE_PUBLISH_VOLUME_REQUEST, EMPTY, _unary(svc.node_publish_volume), False),
        "NodeUnpublishVolume": (m.NODE_UNPUBLISH_VOLUME_REQUEST, EMPTY, _unary(svc.node_unpublish_volume), False),
        "NodeStageVolume": (EMPTY, EMPTY, _unary(svc.node_stage_volume), False),
        "NodeUnstageVolume": (EMPTY, EMPTY, _unary(svc.node_unstage_volume), False),
        "NodeGetVolumeStats": (EMPTY, EMPTY, _unary(svc.node_get_volume_stats), False),
        "NodeExpandVolume": (EMPTY, EMPTY, _unary(svc.node_expand_volume), False)})
    return [identity, node]


def read_config(path: str = CONFIG_FILE) -> dict:
    """The driver's JSON config file ({} when absent); a file that is not JSON is an error."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise SystemExit(f"csi-driver: Unable to parse configuration at {path}: {exc}") from None


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING,
           "error": logging.ERROR, "fatal": logging.CRITICAL, "panic": logging.CRITICAL}


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(prog="csi-driver", description=__doc__.split("\n\n")[0])
    p.add_argument("--loglevel", default="", help="log level (debug, info, warn, error)")
    p.add_argument("--endpoint", default="", help=f"the unix socket to serve on (default {DEFAULT_ENDPOINT})")
    p.add_argument("--nodeid", default="", help="node ID returned by NodeGetInfo")
    p.add_argument("--config", default=CONFIG_FILE, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cfg = read_config(args.config)
    level = (args.loglevel or cfg.get("log_level") or "warn").lower()
    if level not in _LEVELS:
        print(f"csi-driver: Could not parse the log level: not a valid logrus Level: {level!r}", file=sys.stderr)
        return 1
    logging.basicConfig(level=_LEVELS[level], stream=sys.stdout,
                        format="%(asctime)s [%(levelname)s] csi-driver %(message)s")
    endpoint = args.endpoint or cfg.get("endpoint") or DEFAULT_ENDPOINT
    if endpoint.startswith("unix://"):
        endpoint = endpoint[len("unix://"):]
    config = Config(home=cfg.get("nodeagent_management_home") or NODEAGENT_HOME, node_id=args.nodeid)
    svc = NodeService(config, KernelMounter())
    try:
        server = rpc.serve_unix(endpoint, handlers(svc))
    except OSError as exc:
        print(f"csi-driver: Server could not listen at {endpoint}: {exc}", file=sys.stderr)
        return 1
    logging.getLogger("csi-driver").warning("Server listening at %s (node %s)", endpoint, args.nodeid)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1).wait()
    return 0
